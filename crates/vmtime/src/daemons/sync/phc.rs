//! `vmtime sync` on a PTP clock: the PI servo against the PHC, and a page of markers only
//! beside it (its VM generation runs the hook; its disruption marker makes the next measurement
//! step).

use super::*;

/// The PHC path: measurements every interval, the PI servo, the same actions. `markers` is a
/// vmclock page that carries markers only (QEMU, Firecracker): its VM generation runs the hook
/// and its disruption marker makes the next measurement step.
pub(super) struct PhcSync {
    dev: PathBuf,
    d: vmtime_sys::phc::PhcFile,
    own_page: Option<vmclock::Mapping>,
    markers: Option<crate::page::FollowedPage>,
    /// A measurement every interval; between them the markers page (if any) is looked at, at
    /// the cadence (or notified): a new disruption marker makes the next measurement come at
    /// once, and step.
    pace: MarkerPace,
    clock_name: String,
    servo: vmtime_core::phc::PhcServo,
    watch: MarkerWatch,
    rival: Option<ClockWatch>,
    dry_run: bool,
    hook: Option<String>,
    tai_offset: Option<i16>,
    interval: Duration,
    printed: String,
    m: crate::ops::figures::SyncMetrics,
}

impl PhcSync {
    pub(super) fn open(
        a: &SyncSettings,
        info: vmtime_sys::phc::PhcInfo,
        markers: Option<crate::page::FollowedPage>,
    ) -> Result<Self> {
        use vmtime_core::phc::{decide_timescale, pure_source, PhcServo, PhcServoConfig};
        let dev = info.dev.clone();
        let clock_name = info.clock_name.clone();
        let mut d = vmtime_sys::phc::PhcFile::open(&dev).with_context(|| format!("cannot open {}", dev.display()))?;
        // The page of the vmclock device that registered this PHC, if any: its status, TAI − UTC,
        // and a reading against it decide the PHC's timescale.
        let own_page = vmtime_sys::phc::vmclock_device(&info, std::path::Path::new("/dev"))
            .and_then(|p| vmclock::Mapping::open(&p).ok());
        let kernel = kernel_state(a.dry_run)?;
        let facts = vmtime_core::phc::TimescaleFacts {
            attribute: None, // no released kernel has the PTP timescale attributes yet
            page: own_page.as_ref().and_then(|m| vmtime_sys::phc::compare_with_page(&mut d, m, kernel.tai)),
            driver: pure_source(&clock_name).flatten(),
            configured: timescale_of(a.phc_timescale),
        };
        let (timescale, by) = match decide_timescale(&facts) {
            Ok(t) => t,
            Err(e) => bail!("{} ({clock_name}): {e}", dev.display()),
        };
        let scale = match timescale {
            vmtime_core::phc::PhcTimescale::Utc => "UTC",
            vmtime_core::phc::PhcTimescale::Tai => "TAI",
        };
        if facts.configured.is_some_and(|c| c != timescale) {
            tracing::warn!("{}: --phc-timescale ignored: {by} shows the PHC keeps {scale}", dev.display());
        }
        tracing::info!(
            "vmtime sync: {} ({clock_name}, {scale} by {by}) → CLOCK_REALTIME{}",
            dev.display(),
            if a.dry_run { " (dry run: nothing is changed)" } else { "" }
        );
        if let Some(m) = &markers {
            tracing::info!("{} carries markers only: watching them for the hook and for steps", m.path().display());
        }
        let interval = Duration::from_millis(a.interval_ms.get());
        let pace = MarkerPace::new(interval, markers.as_ref(), markers.as_ref().map_or(dev.as_path(), |m| m.path()));
        Ok(PhcSync {
            m: sync_figures(a, &dev, Some("starting")),
            dev,
            d,
            own_page,
            pace,
            markers,
            clock_name,
            servo: PhcServo::new(PhcServoConfig { timescale, ..PhcServoConfig::default() }),
            watch: MarkerWatch::default(),
            rival: (!a.allow_other_daemon).then(ClockWatch::new),
            dry_run: a.dry_run,
            hook: a.hook.clone(),
            tai_offset: a.tai_offset.map(TaiUtcS::get),
            interval,
            printed: String::new(),
        })
    }

    fn say(&mut self, act: &SyncAction, how: &str) {
        let line = format!("dry run: would {act} (offset {:+.1} ns{how})", self.servo.last_offset_ns);
        if matches!(act, SyncAction::Step { .. }) || line != self.printed {
            println!("{line}");
            self.printed = line;
        }
    }

    /// Before a measurement: the kernel's state (another daemon's changes refused), the markers
    /// page's news, and the source's facts handed to the servo.
    fn prepare(&mut self) -> Result<(vmtime_core::kernel::KernelTimex, vmtime_core::phc::PhcSourceState)> {
        use vmtime_core::phc::PhcSourceState;
        let tx = kernel_state(self.dry_run)?;
        if let Some(w) = &mut self.rival {
            w.check(&tx).map_err(Interfered)?;
        }
        if let Some(m) = &self.markers {
            if let Ok(p) = m.read() {
                self.pace.cadence.seen(Markers::of(&p));
                let c = self.watch.observe(&p);
                if c.disrupted {
                    tracing::info!("disruption marker changed: {:#x}; stepping from the PHC", p.disruption_marker());
                    self.servo.disrupted();
                }
                if c.new_generation {
                    run_hook(&self.hook, self.dry_run);
                }
            }
        }
        let page =
            self.own_page.as_ref().and_then(|m| vmclock::seqlock::read(m, vmclock::seqlock::DEFAULT_MAX_WAIT).ok());
        let src = PhcSourceState::from_facts(page.as_ref(), tx.tai, self.tai_offset);
        self.servo.set_source(src);
        Ok((tx, src))
    }

    /// One measurement and the servo's actions.
    fn measure(&mut self) -> Result<()> {
        use vmtime_core::phc::read_best;
        let (tx, _) = self.prepare()?;
        let actions = match read_best(&mut self.d, 25) {
            Ok((m, _)) => {
                let acts = self.servo.handle_measurement(&m, tx.tick, tx.freq, self.interval.as_secs_f64());
                self.m.phc_measured(self.servo.last_offset_ns);
                if self.dry_run {
                    let how = match m.method {
                        vmtime_core::phc::Method::Precise => " by PTP_SYS_OFFSET_PRECISE",
                        vmtime_core::phc::Method::Extended => " by PTP_SYS_OFFSET_EXTENDED",
                        vmtime_core::phc::Method::Basic => " by PTP_SYS_OFFSET",
                    };
                    for act in &acts {
                        self.say(act, how);
                    }
                }
                acts
            }
            Err(failed) => {
                let first = failed.first().map(|(_, e)| e.as_str()).unwrap_or("no reading");
                tracing::warn!("{}: no reading method works ({first}): holdover", self.dev.display());
                self.servo.handle_failure(tx.maxerror_us, tx.esterror_us)
            }
        };
        for act in actions {
            self.m.phc_action(&act);
            if self.dry_run {
                self.say(&act, "");
            } else {
                vmtime_sys::timex::apply(&act).with_context(|| format!("cannot {act}"))?;
                if let Some(w) = &mut self.rival {
                    w.applied(&act);
                }
            }
        }
        Ok(())
    }
}

impl Daemon for PhcSync {
    type Settings = SyncSettings;
    type Figures = crate::ops::figures::SyncMetrics;
    const NAME: &'static str = "sync";
    const STOPPED: &'static str = "the clock is left as it is";
    const LIVE: &'static [&'static str] = LIVE_PHC;

    fn next_turn(&self) -> Option<Instant> {
        Some(self.pace.next())
    }

    fn register(&mut self, p: &mut vmtime_sys::serve::Poller) {
        self.pace.register(p);
    }

    fn next_look(&self) -> Option<Instant> {
        self.pace.next_look()
    }

    fn look(&mut self, _now: Instant) -> bool {
        self.pace.look(self.markers.as_mut(), false)
    }

    fn turn(&mut self, t: &mut Turn<'_>) -> Result<Flow> {
        if !self.pace.take(t, self.markers.as_mut(), false)? {
            return Ok(Flow::Continue);
        }
        stopped_by(self.measure())
    }

    fn reconfigure(&mut self, _now: &SyncSettings) {}

    fn figures(&mut self) -> &mut crate::ops::figures::SyncMetrics {
        &mut self.m
    }
}

/// `--once` on a PTP clock: one reading, its step (when more than 1 µs off), the TAI offset and
/// the bounds; after a real step, one more reading gives the bounds of the clock as now set.
pub(super) fn phc_once(mut p: PhcSync) -> Result<ExitCode> {
    use vmtime_core::phc::read_best;
    let dev = p.dev.clone();
    let mut once_again = false;
    loop {
        let (tx, src) = match p.prepare() {
            Ok(x) => x,
            Err(e) => return once_failed(&dev, format!("{e:#}")),
        };
        let m = match read_best(&mut p.d, 25) {
            Ok((m, _)) => m,
            Err(failed) => {
                let first = failed.first().map(|(_, e)| e.as_str()).unwrap_or("no reading");
                return once_failed(&dev, format!("no reading method works ({first})"));
            }
        };
        let acts = p.servo.handle_measurement(&m, tx.tick, tx.freq, p.interval.as_secs_f64());
        if p.servo.in_holdover() {
            return once_failed(&dev, "the source cannot be used now (UNRELIABLE, or TAI without TAI − UTC)");
        }
        let stepped = acts.iter().find_map(|x| match x {
            SyncAction::Step { delta_ns } => Some(*delta_ns),
            _ => None,
        });
        let mut acts: Vec<_> = acts.into_iter().filter(|x| !matches!(x, SyncAction::SetFrequency { .. })).collect();
        if let Some(t) = src.tai_minus_utc.filter(|&t| i32::from(t) != tx.tai) {
            acts.push(SyncAction::SetTai(i32::from(t)));
        }
        if let Err(why) = apply_once(&acts, p.dry_run) {
            return once_failed(&dev, why);
        }
        if stepped.is_some() && !p.dry_run && !once_again {
            once_again = true;
            continue;
        }
        println!(
            "vmtime sync --once: {} ({}): offset {:+.0} ns, {}{}",
            dev.display(),
            p.clock_name,
            p.servo.last_offset_ns,
            match stepped {
                Some(d) if p.dry_run => format!("would step by {:+.3} µs", d as f64 / 1e3),
                Some(d) => format!("stepped by {:+.3} µs", d as f64 / 1e3),
                None if once_again => "stepped before".to_string(),
                None => "not stepped".to_string(),
            },
            if p.dry_run { " (dry run: nothing was changed)" } else { "" }
        );
        return Ok(ExitCode::SUCCESS);
    }
}
