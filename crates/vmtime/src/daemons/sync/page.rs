//! `vmtime sync` on a vmclock page: the discipline of CLOCK_REALTIME against the page's
//! counter map, woken by the device's notification or the publisher's socket, with looks at the
//! markers between observations.

use super::*;

/// The device's notifications, checked: a 6.13–6.19 driver's `poll()` is always readable.
/// (Sync's and the feeds'.)
pub(crate) struct DeviceNotes {
    pub(crate) device: Option<File>,
    pub(super) check: NotifyCheck,
    /// The seq_count the device's read() last returned (what the driver's poll() compares with).
    pub(super) acked: Option<u32>,
    /// Whether the device was woken (notified) since its page was last read: its `poll()`
    /// alone cannot say (`vmtime_sys::event::WakeProbe`).
    pub(super) probe: Option<vmtime_sys::event::WakeProbe>,
    /// The device set aside because its notifications stopped, watched for them to come back.
    pub(crate) silenced: Option<File>,
    rearm: Rearm,
}

impl DeviceNotes {
    /// The notifications of the page at `source`, when it is a device that notifies
    /// (NOTIFICATION_PRESENT): its file, opened once more (each open file has its own seq).
    /// No notifications: the markers are checked at the cadence.
    pub(crate) fn none() -> Self {
        DeviceNotes::with(None, None)
    }

    pub(crate) fn of(page: &crate::page::FollowedPage, first: &vmclock::Snapshot, source: &Path) -> Result<Self> {
        let device = (page.reader().is_device() && first.has(flags::NOTIFICATION_PRESENT))
            .then(|| File::open(source))
            .transpose()?;
        let probe = device.as_ref().and_then(|d| vmtime_sys::event::WakeProbe::new(d.as_fd()).ok());
        Ok(DeviceNotes::with(device, probe))
    }

    /// Notifications from `device` (none: the markers are checked), with its wake-up probe.
    pub(super) fn with(device: Option<File>, probe: Option<vmtime_sys::event::WakeProbe>) -> Self {
        DeviceNotes {
            device,
            check: NotifyCheck::default(),
            acked: None,
            probe,
            silenced: None,
            rearm: Rearm::default(),
        }
    }

    /// A look (the markers checked, the device set aside as silent) found the page at `seq`:
    /// whether the device notifies again ([`Rearm`]); then it is waited on again.
    pub(crate) fn look_silenced(&mut self, now_ns: i128, seq: u32) -> bool {
        let Some(d) = &self.silenced else { return false };
        let woken = self.probe.as_ref().is_some_and(|p| p.woke().unwrap_or(false));
        let step = self.rearm.look(now_ns, seq, self.acked, woken);
        if step == RearmStep::Wait {
            return false;
        }
        // Judged: read() acknowledges the page, and the probe forgets the wake-up.
        if let Some((seq, _)) = acknowledge(d, self.probe.as_ref()) {
            self.acked = Some(seq);
        }
        if step != RearmStep::Trust {
            return false;
        }
        tracing::info!(
            "the vmclock device notifies again ({} pages in a row): waiting on its notifications instead of checking the markers",
            Rearm::NEEDED
        );
        self.device = self.silenced.take();
        self.check = NotifyCheck::default();
        true
    }

    /// The device was readable: acknowledges with read() and says whether the page changed.
    /// `seq_now` reads the page's seq_count when read() fails. After [`NotifyCheck::LIMIT`]
    /// readable wake-ups in a row with nothing new, the device is no longer polled.
    pub(crate) fn readable(&mut self, seq_now: impl Fn() -> u32) -> bool {
        let Some(d) = &self.device else { return false };
        // Whether a notification woke the device, asked before read() consumes its state.
        let woken = self.probe.as_ref().map(|p| p.woke().unwrap_or(true));
        // read() acknowledges this seq_count to the driver and says which it is: the driver's
        // poll() wakes a file only for a seq other than the one it last read.
        let (seq, notifies) = match acknowledge(d, self.probe.as_ref()) {
            Some((seq, flags)) => (seq, flags & flags::NOTIFICATION_PRESENT != 0),
            None => (seq_now(), true),
        };
        if !notifies {
            // The driver's poll() then says POLLHUP, always: not a notification.
            tracing::warn!(
                "the vmclock page no longer says NOTIFICATION_PRESENT: checking the markers every 40 ms instead"
            );
            self.device = None;
            return false;
        }
        let last = self.acked.replace(seq);
        match self.check.readable(last, seq) {
            Wakeup::Update => {
                // Found readable without a wake-up (the wait ended for another reason): a page
                // the device did not announce. Two in a row: the notifications stopped.
                if woken.is_some_and(|w| self.check.page_found(w) == Silence::Missed) {
                    tracing::warn!(
                        "the vmclock device did not notify its last {} pages (seq_count now {seq}): checking the markers every 40 ms instead (is the VMM's doorbell or the guest's GED interrupt working?)",
                        NotifyCheck::SILENT_LIMIT
                    );
                    self.silenced = self.device.take();
                }
                true
            }
            Wakeup::Spurious => false,
            Wakeup::NoPoll => {
                tracing::warn!(
                    "the vmclock driver's poll() is always readable (Linux 6.13–6.19 has no .poll): observing on the interval instead"
                );
                self.device = None;
                false
            }
        }
    }
}

/// Reads the device's page (`read()` acknowledges its `seq_count` to the driver) and makes the
/// probe forget the wake-ups before it: the page's (seq_count, flags), None when the read fails.
fn acknowledge(d: &File, probe: Option<&vmtime_sys::event::WakeProbe>) -> Option<(u32, u64)> {
    let mut buf = [0u8; abi::ABI_SIZE];
    let page = match d.read_at(&mut buf, 0) {
        Ok(n) if n >= 0x20 => Some((
            u32::from_le_bytes([buf[12], buf[13], buf[14], buf[15]]),
            u64::from_le_bytes(buf[0x18..0x20].try_into().unwrap_or_default()),
        )),
        _ => None,
    };
    if let Some(p) = probe {
        let _ = p.woke();
    }
    page
}

/// The first vmclock device, if any.
pub(super) fn find_device() -> Option<PathBuf> {
    (0..8).map(|i| PathBuf::from(format!("/dev/vmclock{i}"))).find(|p| p.exists())
}

pub(super) struct Sync {
    pub(super) page: crate::page::FollowedPage,
    pub(super) notes: DeviceNotes,
    pub(super) discipline: Discipline,
    pub(super) dry_run: bool,
    pub(super) hook: Option<String>,
    pub(super) applied: u64,
    pub(super) last_marker: Option<u64>,
    /// Dry run: the last line printed for each kind of action (only changes are printed).
    pub(super) printed: std::collections::HashMap<std::mem::Discriminant<SyncAction>, String>,
    /// Observations redone because the page changed while their samples were taken.
    pub(super) redone: u64,
    /// The publisher's socket, when the source is a page file beside one.
    pub(super) publisher: PathBuf,
    pub(super) sub: Option<Subscription>,
    pub(super) t_note: Option<Token>,
    /// The cross-check's socket in this turn's poll.
    pub(super) t_cross: Option<Token>,
    pub(super) is_device: bool,
    pub(super) next_obs: Instant,
    /// When the last observation started.
    pub(super) last_obs: Instant,
    /// When a page file was last looked for a replacement between observations.
    pub(super) last_refresh: Instant,
    /// A look moved the next observation nearer: the look asks for a turn (the runtime then
    /// waits for the new time).
    pub(super) rescheduled: bool,
    pub(super) last_resubscribe: Instant,
    /// How long after the last attempt the publisher's socket is tried again (1 s, doubling to
    /// 16 s while nobody answers).
    pub(super) resubscribe_every: Duration,
    /// The figures offered to the metrics server.
    pub(super) m: crate::ops::figures::SyncMetrics,
    /// Changes to the kernel's NTP state that this daemon did not make.
    pub(super) rival: Option<ClockWatch>,
    /// The NTP cross-check, when configured.
    pub(super) cross: Option<crate::daemons::crosscheck::NtpCross>,
    /// The checks of the page's markers between observations.
    pub(super) cadence: Cadence,
    /// A check between turns ([`Daemon::look`]) found the page disrupted: observe at the turn.
    pub(super) looked_disrupted: bool,
}

impl Sync {
    /// Says so when the page's disruption marker is not the one seen last.
    fn warn_marker(&mut self, page: &vmclock::Snapshot) {
        if self.last_marker.is_some_and(|m| m != page.disruption_marker()) {
            tracing::warn!(
                "disruption marker changed: {:#x} → {:#x}",
                self.last_marker.unwrap_or(0),
                page.disruption_marker()
            );
        }
        self.last_marker = Some(page.disruption_marker());
    }

    fn apply(&mut self, actions: Vec<SyncAction>) -> Result<()> {
        for a in actions {
            self.applied += 1;
            if self.dry_run {
                // The kernel is not changed, so the same action comes back: print changes only.
                let line = a.to_string();
                let kind = std::mem::discriminant(&a);
                if matches!(a, SyncAction::Step { .. } | SyncAction::RunHook) || self.printed.get(&kind) != Some(&line)
                {
                    println!("dry run: would {line}");
                    self.printed.insert(kind, line);
                }
                continue;
            }
            match a {
                SyncAction::RunHook => run_hook(&self.hook, false),
                a => {
                    vmtime_sys::timex::apply(&a).with_context(|| {
                        format!("cannot {a} (vmtime sync needs CAP_SYS_TIME; use --dry-run to watch)")
                    })?;
                    if let Some(w) = &mut self.rival {
                        w.applied(&a);
                    }
                }
            }
            if matches!(a, SyncAction::Step { .. }) {
                tracing::info!("{a}");
            }
        }
        Ok(())
    }

    /// Logs what the discipline refused (a source beyond the kernel's range, a step beyond the
    /// limit) and when it recovers.
    fn log_notices(&mut self) {
        for n in self.discipline.take_notices() {
            match n {
                vmtime_core::sync::SyncNotice::Recovered => tracing::info!("{}: {n}", self.page.path().display()),
                _ => tracing::warn!("{}: {n}", self.page.path().display()),
            }
        }
    }

    fn observe(&mut self) -> Result<()> {
        self.page.refresh();
        let kernel = kernel_state(self.dry_run)?;
        if let Some(w) = &mut self.rival {
            w.check(&kernel).map_err(Interfered)?;
        }
        // A page that cannot be read (a truncated file, a stuck writer) is a lost source:
        // holdover, never a crash. The samples are paired with the page that was current while
        // they were taken: if the seq_count moved meanwhile, the observation is taken again.
        let mut tries = 0u64;
        let got = sample_page(&self.page, &mut tries);
        self.redone += tries.saturating_sub(1);
        let (page, (raw, samples)) = match got {
            Ok(Some((p, s))) if gives_time(&p, vmclock::counter::NATIVE) => (p, s),
            other => {
                let a = match &other {
                    // Read whole, but no time for this counter (no time fields, no counter):
                    // its markers still count, so the page with time that follows a new
                    // marker is observed at once.
                    Ok(Some((p, _))) => {
                        self.m.page_seen(p);
                        self.warn_marker(p);
                        self.cadence.seen_at(crate::daemons::mono_ns()?, Markers::of(p));
                        self.discipline.handle_timeless_page(p, &kernel)
                    }
                    _ => {
                        self.m.page_lost();
                        self.discipline.handle_source_lost(&kernel)
                    }
                };
                self.log_notices();
                self.m.discipline(self.discipline.status(), false);
                return self.apply(a);
            }
        };
        self.warn_marker(&page);
        // A new marker found here (before any check did) makes the checks urgent too.
        self.cadence.seen_at(crate::daemons::mono_ns()?, Markers::of(&page));
        self.m.page_seen(&page);
        crate::page::warn_legacy_tai(self.page.path(), &page);
        let a = self.discipline.handle_observation(&SyncObservation { page, raw, samples: &samples, kernel });
        self.log_notices();
        self.m.discipline(self.discipline.status(), true);
        self.apply(a)
    }
}

impl Sync {
    /// The markers' check, when due: loads from the mapped page (no system call beyond the
    /// vDSO's clock). Whether it says observe now.
    fn check_markers(&mut self) -> bool {
        let Ok(mono) = crate::daemons::mono_ns() else { return false };
        if !self.cadence.due(mono) {
            return false;
        }
        // A page file replaced by its publisher is mapped again at an observation; while the
        // interval is long, it is looked for every interval_ms (one stat).
        if self.discipline.resting() && !self.is_device && self.last_refresh.elapsed() >= self.base_interval() {
            self.last_refresh = Instant::now();
            if self.page.refresh() {
                tracing::debug!("{} was replaced: observing now", self.page.path().display());
                return true;
            }
        }
        let pending = self.discipline.disruption_pending();
        let markers = self.page.markers();
        let look = self.cadence.look(mono, markers, pending);
        // A device set aside as silent: do its notifications come back?
        if let Some(m) = markers.filter(|_| self.notes.silenced.is_some()) {
            if self.notes.look_silenced(mono, m.seq_count) {
                self.cadence.set_notified(true);
                // A turn, so that the runtime waits on the device again.
                self.rescheduled = true;
            }
        }
        let now = look.observe_now(pending);
        if now {
            tracing::debug!("the page's check found {look:?}: observing now");
        } else if look == Look::Updated && self.discipline.resting() {
            // A new page while the interval has grown: observed within the shortest interval of
            // the last observation (at once if that is past), not at the long one.
            let sooner = self.last_obs + self.base_interval();
            if Instant::now() >= sooner {
                return true;
            }
            if sooner < self.next_obs {
                self.next_obs = sooner;
                // A turn all the same, so that the runtime waits for the nearer observation.
                self.rescheduled = true;
            }
        }
        now
    }

    /// The configured (shortest) interval between observations.
    fn base_interval(&self) -> Duration {
        Duration::from_nanos(self.discipline.config().interval_ns.clamp(1, i128::from(u64::MAX)) as u64)
    }
}

impl Daemon for Sync {
    type Settings = SyncSettings;
    type Figures = crate::ops::figures::SyncMetrics;
    const NAME: &'static str = "sync";
    const STOPPED: &'static str = "the clock is left as it is; the socket is removed";
    const LIVE: &'static [&'static str] = LIVE;

    /// The next observation, the end of a slew or the cross-check's next query; while a page
    /// file's publisher does not answer, the next attempt to subscribe again (1–16 s).
    fn next_turn(&self) -> Option<Instant> {
        let now = Instant::now();
        let raw_now = vmtime_sys::gettime(ClockId::MonotonicRaw).unwrap_or(0);
        let slew = self.discipline.next_deadline().map(|d| now + Duration::from_nanos((d - raw_now).max(0) as u64));
        let cross = self.cross.as_ref().map(crate::daemons::crosscheck::NtpCross::deadline);
        let resubscribe =
            (!self.is_device && self.sub.is_none()).then(|| self.last_resubscribe + self.resubscribe_every);
        [Some(self.next_obs), slew, cross, resubscribe].into_iter().flatten().min()
    }

    /// The markers' check between observations (none when the device notifies).
    fn next_look(&self) -> Option<Instant> {
        crate::daemons::next_check(&self.cadence)
    }

    /// Loads from the mapped page; a turn only when they say observe now.
    fn look(&mut self, _now: Instant) -> bool {
        self.looked_disrupted |= self.check_markers();
        self.looked_disrupted || std::mem::take(&mut self.rescheduled)
    }

    fn register(&mut self, p: &mut Poller) {
        self.t_note = if let Some(d) = &self.notes.device {
            Some(p.add(d.as_fd(), serve::READABLE))
        } else {
            self.sub.as_ref().map(|x| p.add(x.fd(), serve::READABLE))
        };
        self.t_cross = self.cross.as_ref().map(|c| p.add(c.sock.fd(), serve::READABLE));
    }

    fn turn(&mut self, t: &mut Turn<'_>) -> Result<Flow> {
        let mut notified = self.t_note.is_some_and(|x| t.readable(x));
        if notified {
            if self.notes.device.is_some() {
                let page = &self.page;
                notified = self.notes.readable(|| page.read().map_or(u32::MAX, |p| p.seq_count()));
                self.cadence.set_notified(self.notes.device.is_some());
            } else if !self.sub.as_mut().is_some_and(|x| x.drain()) {
                tracing::warn!("the publisher went away: polling the page");
                self.sub = None;
            }
        }
        // The second opinion: never waited on; its verdict reaches the next update's bounds.
        if let Some(c) = &mut self.cross {
            if self.t_cross.is_some_and(|x| t.readable(x)) {
                c.readable(&self.page);
            }
            c.log();
            self.discipline.set_cross_check(c.cc.widen_ns());
            self.m.cross_check = Some(c.cc.status().clone());
        }
        // The markers' check between observations (where a look between turns has not made it).
        if std::mem::take(&mut self.looked_disrupted) || self.check_markers() {
            notified = true;
        }
        if notified || Instant::now() >= self.next_obs {
            self.last_obs = Instant::now();
            if let Flow::Stop(code) = stopped_by(self.observe())? {
                return Ok(Flow::Stop(code));
            }
            let next = self.discipline.poll_interval_ns().clamp(1, i128::from(u64::MAX)) as u64;
            self.next_obs = Instant::now() + Duration::from_nanos(next);
        }
        let a2 = self.discipline.handle_tick(vmtime_sys::gettime(ClockId::MonotonicRaw)?);
        self.apply(a2)?;
        // A query (or a timeout) when due, after the observation: the answer is then read as
        // soon as it comes, by the next wait, not after an observation's work.
        if let Some(c) = &mut self.cross {
            c.tick(&self.page);
            c.log();
            self.m.cross_check = Some(c.cc.status().clone());
        }
        if !self.is_device && self.sub.is_none() && self.last_resubscribe.elapsed() >= self.resubscribe_every {
            self.last_resubscribe = Instant::now();
            // A short wait: the loop never stalls on a publisher that accepts but never answers.
            self.sub = Subscription::reopen(&self.publisher);
            // Tried again 1 s later, backing off to 16 s while nobody answers (the marker looks
            // see every page meanwhile): a page with no publisher (a PCI BAR) costs no turn a second.
            self.resubscribe_every = if self.sub.is_some() {
                Duration::from_secs(1)
            } else {
                (self.resubscribe_every * 2).min(Duration::from_secs(16))
            };
        }
        self.m.notified = self.notes.device.is_some();
        self.m.observations_redone = self.redone;
        self.m.marker_checks = Some(self.cadence.checks());
        self.m.check_ms = (!self.cadence.notified()).then(|| (self.cadence.check_ns() / 1_000_000) as u64);
        Ok(Flow::Continue)
    }

    fn reconfigure(&mut self, now: &SyncSettings) {
        let cfg = discipline_config(now);
        self.m.step_policy = Some(cfg.clone());
        self.discipline.reconfigure(cfg);
        self.hook = now.hook.clone();
        self.next_obs = self.next_obs.min(Instant::now() + Duration::from_millis(now.interval_ms.get()));
    }

    fn figures(&mut self) -> &mut crate::ops::figures::SyncMetrics {
        &mut self.m
    }
}
