//! The daemons' figures: one typed struct per daemon, rendered as its Prometheus metrics
//! ([`Expose`]) and as its `vmtime status` answer ([`Figures`]). Metric names and status keys are
//! stable: alert rules (packaging/prometheus) and tests read them.

use crate::ops::metrics::{age, Expose, Exposition};
use crate::ops::runtime::{Figures, RunFigures};
use std::fmt::Write;
use std::time::{Duration, Instant};

/// Clock status names, in the ABI's order.
const STATUSES: &[&str] = &["UNKNOWN", "INITIALIZING", "SYNCHRONIZED", "FREERUNNING", "UNRELIABLE"];

/// `vmtime host`.
#[derive(Clone, Debug, Default)]
pub struct HostMetrics {
    pub published: u64,
    /// When the kernel clock was last observed (at least every --interval-ms, page or not).
    pub last_observation: Option<Instant>,
    pub disruptions: u64,
    /// The page as last published.
    pub written: PageFigures,
    /// Page − kernel clock at the last observation, ns.
    pub error_ns: Option<f64>,
    pub pairing_ns: Option<f64>,
    /// The page published.
    pub page: String,
    /// The page as last published.
    pub snap: Option<vmclock::Snapshot>,
    pub clocksource: String,
    /// Where TAI − UTC comes from, in words.
    pub tai: String,
    /// Whether the kernel's own page was readable at the last observation (None: not used).
    pub kernel_page_readable: Option<bool>,
    /// How the kernel's NTP state is had: read with adjtimex, or not (a seccomp filter).
    pub kernel_state: &'static str,
    /// The adjtimex read is refused (a seccomp filter): the page is FREERUNNING, 16 s bound.
    pub timex_denied: bool,
    /// The publisher's tunables in force.
    pub config: vmtime_core::host::HostConfig,
    pub stats: vmtime_core::host::HostStats,
    pub poll_every: Duration,
    /// The longest time between two turns of the publishing path (adjtimex poll, observation,
    /// page write) since the start: what a client could at most have delayed a page by.
    pub max_gap: Duration,
    /// The runtime's figures.
    pub run: RunFigures,
}

impl Figures for HostMetrics {
    fn run(&mut self) -> &mut RunFigures {
        &mut self.run
    }
    fn status(&self, _now: Instant) -> serde_json::Value {
        use vmclock::abi;
        let snap = self.snap;
        serde_json::json!({
            "tunables": {
                "threshold_ns": self.config.threshold_ns,
                "tolerance_ppb": self.config.tolerance_ppb,
                "interval_ms": self.config.interval_ns / 1_000_000,
            },
            "kernel_page_readable": self.kernel_page_readable,
            "kernel_page_usable": self.kernel_page_readable.map(|_| !self.stats.kernel_page.unusable),
            "kernel_state": self.kernel_state,
            "page": self.page,
            "clocksource": self.clocksource,
            "tai": self.tai,
            "seq_count": snap.map(|s| s.seq_count()),
            "status": snap.and_then(|s| s.clock_status()).map(abi::status_name),
            "time_type": snap.map(|s| abi::time_type_name(s.time_type())),
            "tai_minus_utc": snap.and_then(|s| s.tai_minus_utc()),
            "disruption_marker": snap.map(|s| s.disruption_marker()),
            "maxerror_ns": snap.and_then(|s| s.time_maxerror_ns()),
            "leap_indicator": snap.and_then(|s| s.leap_indicator()).map(abi::leap_name),
            "loop": { "max_gap_ms": self.max_gap.as_secs_f64() * 1e3, "poll_ms": self.poll_every.as_secs_f64() * 1e3 },
            "stats": self.stats,
        })
    }
    fn status_line(&self, line: &mut String) {
        if self.published > 0 {
            let unread = if self.timex_denied { " (kernel NTP state unreadable: FREERUNNING, 16 s bound)" } else { "" };
            let _ = write!(line, "publishing {}{unread}", self.page);
        }
    }
}

impl HostMetrics {
    /// Takes the figures of a page just published.
    pub fn published_page(&mut self, page: &impl vmclock::seqlock::PageMemory, stats: &vmtime_core::host::HostStats) {
        self.published = stats.published;
        self.disruptions = stats.disruptions;
        self.error_ns = Some(stats.last_error_ns);
        self.pairing_ns = Some(stats.pairing_ns);
        if let Some(s) = self.written.page(page) {
            self.snap = Some(s);
        }
    }
}

impl Expose for HostMetrics {
    fn render(&self, now: Instant, e: &mut Exposition) {
        e.build_info("host");
        self.written.render(now, e, "host", "host page", &self.run);
        e.gauge(
            "vmtime_host_last_observation_age_seconds",
            "Time since the kernel clock was last observed (the page is checked against it then, republished only if it drifted).",
            age(now, self.last_observation),
        );
        e.counter("vmtime_host_pages_published_total", "Pages published since the daemon started.", self.published);
        e.gauge(
            "vmtime_host_loop_gap_max_seconds",
            "Largest gap between two turns of the publishing loop in the last 10 s (a stall delays pages).",
            self.run.loop_gap_max.map(|d| d.as_secs_f64()),
        );
        e.counter(
            "vmtime_host_disruptions_total",
            "Disruption marker changes (clock steps, counter changes, resumes).",
            self.disruptions,
        );
        e.gauge(
            "vmtime_host_page_error_seconds",
            "Page time minus the kernel clock, measured at the last observation.",
            self.error_ns.map(|n| n / 1e9),
        );
        e.gauge(
            "vmtime_host_pairing_seconds",
            "Half-width of the last (clock, counter, clock) pairing.",
            self.pairing_ns.map(|n| n / 1e9),
        );
    }
}

/// What a daemon shows of the page it writes (the host's page, a relay's guest page), as last
/// written.
#[derive(Clone, Copy, Debug, Default)]
pub struct PageFigures {
    pub last_publish: Option<Instant>,
    pub maxerror_ns: Option<u64>,
    pub esterror_ns: Option<u64>,
    pub status: Option<&'static str>,
}

impl PageFigures {
    /// Takes the figures of the page just written; the page as read back.
    fn page(&mut self, page: &impl vmclock::seqlock::PageMemory) -> Option<vmclock::Snapshot> {
        self.last_publish = Some(Instant::now());
        let s = vmclock::seqlock::read(page, vmclock::seqlock::DEFAULT_MAX_WAIT).ok()?;
        self.maxerror_ns = s.time_maxerror_ns();
        self.esterror_ns = s.time_esterror_ns();
        self.status = s.clock_status().map(vmclock::abi::status_name);
        Some(s)
    }

    /// `vmtime_ROLE_page_age_seconds`, `_page_maxerror_seconds`, `_page_esterror_seconds`,
    /// `_clock_status`, and the subscribers to the page's notifications (`_subscribers`,
    /// `_subscribers_dropped_total`); `page` names the page in the help texts.
    fn render(&self, now: Instant, e: &mut Exposition, role: &str, page: &str, run: &RunFigures) {
        let name = |n: &str| format!("vmtime_{role}_{n}");
        e.gauge(
            &name("page_age_seconds"),
            &format!("Time since the {page} was last written."),
            age(now, self.last_publish),
        );
        e.gauge(
            &name("page_maxerror_seconds"),
            &format!("The {page}'s maximum error at its reference point (time_maxerror)."),
            self.maxerror_ns.map(|n| n as f64 / 1e9),
        );
        e.gauge(
            &name("page_esterror_seconds"),
            &format!("The {page}'s estimated error at its reference point (time_esterror)."),
            self.esterror_ns.map(|n| n as f64 / 1e9),
        );
        e.state_set(&name("clock_status"), &format!("The {page}'s clock_status."), "status", STATUSES, self.status);
        e.gauge(
            &name("subscribers"),
            &format!("Processes subscribed to {page} notifications."),
            Some(run.subscribers as f64),
        );
        e.counter(
            &name("subscribers_dropped_total"),
            "Subscribers dropped because a notification could not be written.",
            run.server.dropped_subscribers,
        );
    }
}

/// `vmtime relay`.
#[derive(Clone, Debug, Default)]
pub struct RelayMetrics {
    pub relayed: u64,
    /// The host page cannot be read: the guest page keeps its last update.
    pub holdover: bool,
    pub disruptions: u64,
    /// The guest page as last written.
    pub written: PageFigures,
    pub latency_us: Option<f64>,
    /// The host page followed.
    pub host_page: String,
    /// The guest page written.
    pub guest_page: String,
    /// The guest's state (markers, map) as last saved.
    pub state: Option<vmtime_core::relay::GuestState>,
    pub last_host_seq: Option<u32>,
    pub guest_seq: Option<u32>,
    /// Waiting for the counter map to be confirmed (the guest page was overwritten).
    pub map_pending: bool,
    /// Overwrites seen (the guest page written by someone else).
    pub overwrites: u64,
    /// Subscribed to the host daemon's notifications (else polling the host page every 1 ms).
    pub host_notified: bool,
    /// The time between two looks at the guest page for another writer, ms.
    pub guard_ms: u64,
    /// The doorbell's counts (--doorbell), and whether it is connected.
    pub doorbell: Option<vmtime_sys::doorbell::DoorbellFigures>,
    pub doorbell_connected: bool,
    /// The runtime's figures.
    pub run: RunFigures,
}

impl Figures for RelayMetrics {
    fn run(&mut self) -> &mut RunFigures {
        &mut self.run
    }
    fn status(&self, _now: Instant) -> serde_json::Value {
        serde_json::json!({
            "host_page": self.host_page,
            "state": self.state,
            "relayed": self.relayed,
            "last_host_seq": self.last_host_seq,
            "guest_seq": self.guest_seq,
            "guest_status": self.written.status,
            "last_latency_us": self.latency_us.unwrap_or(0.0),
            "holdover": self.holdover,
            "map_pending": self.map_pending,
            "overwrites": self.overwrites,
            "host_notified": self.host_notified,
            "guard_ms": self.guard_ms,
            "doorbell": self.doorbell.map(|d| serde_json::json!({
                "connected": self.doorbell_connected,
                "rung": d.rung,
                "sent": d.sent,
                "dropped": d.dropped,
                "connects": d.connects,
            })),
        })
    }
    fn status_line(&self, line: &mut String) {
        if self.relayed > 0 {
            let _ = write!(line, "relaying {} to {}", self.host_page, self.guest_page);
        }
    }
}

impl RelayMetrics {
    /// Takes the figures of a guest page just written.
    pub fn relayed_page(
        &mut self,
        page: &impl vmclock::seqlock::PageMemory,
        relayed: u64,
        latency_us: f64,
        disrupted: bool,
    ) {
        self.relayed = relayed;
        self.latency_us = Some(latency_us);
        self.disruptions += u64::from(disrupted);
        if let Some(s) = self.written.page(page) {
            self.guest_seq = Some(s.seq_count());
        }
    }
}

impl Expose for RelayMetrics {
    fn render(&self, now: Instant, e: &mut Exposition) {
        e.build_info("relay");
        self.written.render(now, e, "relay", "guest page", &self.run);
        e.counter("vmtime_relay_guest_pages_total", "Guest pages written (relayed host pages).", self.relayed);
        e.gauge(
            "vmtime_relay_holdover",
            "1 while the host page cannot be read and the guest page keeps its last update.",
            Some(f64::from(u8::from(self.holdover))),
        );
        e.counter(
            "vmtime_relay_disruptions_total",
            "Guest disruption marker changes (host disruptions, migrations, restores).",
            self.disruptions,
        );
        e.gauge(
            "vmtime_relay_latency_seconds",
            "From the host's notification to the guest page written, last update.",
            self.latency_us.map(|u| u / 1e6),
        );
    }
}

/// `vmtime sync`.
#[derive(Clone, Debug, Default)]
pub struct SyncMetrics {
    pub offset_ns: Option<f64>,
    pub frequency_ppb: Option<f64>,
    pub maxerror_ns: Option<f64>,
    pub steps: u64,
    pub disruptions: u64,
    pub updates: u64,
    /// The discipline's state word ("synchronised", "holdover", …).
    pub state: Option<&'static str>,
    pub last_good: Option<Instant>,
    pub dry_run: bool,
    /// The source (a page, or a PTP clock).
    pub source: String,
    /// The single-instance lock held (None: a dry run takes none).
    pub lock: Option<String>,
    /// The discipline's step policy (a page source).
    pub step_policy: Option<vmtime_core::sync::SyncConfig>,
    /// The discipline's own status (a page source).
    pub discipline: Option<vmtime_core::sync::SyncStatus>,
    /// The source page as last read.
    pub source_status: Option<&'static str>,
    pub disruption_marker: Option<u64>,
    pub vm_generation_counter: Option<u64>,
    /// Woken by the device's notifications.
    pub notified: bool,
    /// Observations redone because the page changed while their samples were taken.
    pub observations_redone: u64,
    /// Checks of the page's markers between observations (a page source).
    pub marker_checks: Option<u64>,
    /// The interval of those checks, ms (None: woken by the device's notifications).
    pub check_ms: Option<u64>,
    /// A page of markers only and no PHC: no time source.
    pub markers_only: bool,
    /// Generation hooks run (markers only).
    pub hooks_run: u64,
    /// The NTP cross-check (`--cross-check-ntp`), when configured.
    pub cross_check: Option<vmtime_core::crosscheck::CrossStatus>,
    /// The runtime's figures.
    pub run: RunFigures,
}

impl SyncMetrics {
    /// The source page as just read.
    pub fn page_seen(&mut self, p: &vmclock::Snapshot) {
        self.source_status = p.clock_status().map(vmclock::abi::status_name);
        self.disruption_marker = Some(p.disruption_marker());
        self.vm_generation_counter = p.vm_generation_counter();
    }
}

impl SyncMetrics {
    /// The source page could not be read (or gives no time).
    pub fn page_lost(&mut self) {
        self.source_status = None;
        self.disruption_marker = None;
        self.vm_generation_counter = None;
    }
}

impl Figures for SyncMetrics {
    fn run(&mut self) -> &mut RunFigures {
        &mut self.run
    }
    fn status(&self, _now: Instant) -> serde_json::Value {
        let discipline = match (&self.discipline, self.markers_only) {
            (Some(d), false) => serde_json::to_value(d).unwrap_or_default(),
            _ => serde_json::json!({ "state": self.state }),
        };
        let mut v = serde_json::json!({
            "source": self.source,
            "dry_run": self.dry_run,
            "lock": self.lock,
            "discipline": discipline,
            "source_status": self.source_status,
            "disruption_marker": self.disruption_marker,
            "vm_generation_counter": self.vm_generation_counter,
            "notified": self.notified,
            "observations_redone": self.observations_redone,
            "updates": self.updates,
            "steps": self.steps,
            "offset_ns": self.offset_ns,
        });
        if let Some(m) = v.as_object_mut() {
            if let Some(p) = &self.step_policy {
                m.insert("step_policy".into(), serde_json::to_value(p).unwrap_or_default());
            }
            if self.markers_only {
                m.insert("hooks_run".into(), self.hooks_run.into());
            }
            if let Some(c) = self.marker_checks {
                m.insert("marker_checks".into(), c.into());
                m.insert("check_ms".into(), self.check_ms.into());
            }
            if let Some(c) = &self.cross_check {
                m.insert("cross_check".into(), serde_json::to_value(c).unwrap_or_default());
            }
        }
        v
    }
    /// Following its source once it has made an update; with markers only, watching them once
    /// the page has been read.
    fn status_line(&self, line: &mut String) {
        if self.markers_only && self.disruption_marker.is_some() {
            let _ = write!(line, "watching the markers of {} (no time source)", self.source);
        } else if !self.markers_only && self.updates > 0 {
            let _ = write!(line, "following {}", self.source);
        }
    }
}

/// The cross-check's states.
const CROSS_STATES: &[&str] = &["unknown", "agree", "disagree", "no_reply"];

/// The discipline's states as `vmtime status` prints them.
const SYNC_STATES: &[&str] = &["starting", "synchronised", "following a free-running source", "holdover"];

impl SyncMetrics {
    /// Takes the discipline's figures after an observation (`good`: of a valid source).
    pub fn discipline(&mut self, st: &vmtime_core::sync::SyncStatus, good: bool) {
        if good {
            self.last_good = Some(Instant::now());
            self.offset_ns = Some(st.offset_ns);
            self.maxerror_ns = st.source_maxerror_ns;
        }
        self.frequency_ppb = Some(st.frequency_ppb + st.slew_ppb);
        self.steps = u64::from(st.steps);
        self.disruptions = u64::from(st.disruptions);
        self.updates = st.updates;
        self.state = Some(st.state);
        self.discipline = Some(*st);
    }
}

impl SyncMetrics {
    /// A PTP clock measurement the servo has used (offset in ns).
    pub fn phc_measured(&mut self, offset_ns: f64) {
        self.offset_ns = Some(offset_ns);
        self.updates += 1;
        self.last_good = Some(Instant::now());
        self.state = Some("synchronised");
    }

    /// An action of the PTP servo (its steps and frequency).
    pub fn phc_action(&mut self, a: &vmtime_core::sync::SyncAction) {
        use vmtime_core::sync::SyncAction;
        match *a {
            SyncAction::Step { .. } => self.steps += 1,
            // tick: µs per 1/100 s (10 000 nominal, 100 ppm per µs); freq: 2^-16 ppm.
            SyncAction::SetFrequency { tick, freq } => {
                self.frequency_ppb = Some((tick - 10_000) as f64 * 100_000.0 + freq as f64 * 1000.0 / 65536.0)
            }
            _ => {}
        }
    }
}

impl Expose for SyncMetrics {
    fn render(&self, now: Instant, e: &mut Exposition) {
        e.build_info("sync");
        e.gauge(
            "vmtime_sync_offset_seconds",
            "Kernel clock minus the source at the last observation.",
            self.offset_ns.map(|n| n / 1e9),
        );
        e.gauge(
            "vmtime_sync_frequency_ratio",
            "Frequency correction applied to the kernel clock, as a ratio (1e-6 is 1 ppm).",
            self.frequency_ppb.map(|p| p / 1e9),
        );
        e.gauge(
            "vmtime_sync_interval_seconds",
            "Time from the last observation to the next one (a vmclock page: doubles at rest up to max_interval_ms).",
            self.discipline.filter(|_| !self.markers_only).map(|d| d.interval_s),
        );
        e.gauge(
            "vmtime_sync_source_maxerror_seconds",
            "The source page's maximum error at the last observation.",
            self.maxerror_ns.map(|n| n / 1e9),
        );
        e.counter("vmtime_sync_steps_total", "Steps of the kernel clock.", self.steps);
        e.counter("vmtime_sync_disruptions_total", "Disruption marker changes seen on the source.", self.disruptions);
        e.counter("vmtime_sync_updates_total", "Observations used to update the kernel clock.", self.updates);
        e.gauge(
            "vmtime_sync_holdover",
            "1 while the source is lost and the clock runs on its last frequency.",
            Some(f64::from(u8::from(self.state == Some("holdover")))),
        );
        e.state_set("vmtime_sync_state", "The discipline's state.", "state", SYNC_STATES, self.state);
        e.gauge(
            "vmtime_sync_last_good_observation_age_seconds",
            "Time since the last observation of a valid source.",
            age(now, self.last_good),
        );
        e.gauge(
            "vmtime_sync_dry_run",
            "1 when the daemon changes nothing (--dry-run).",
            Some(f64::from(u8::from(self.dry_run))),
        );
        if let Some(c) = &self.cross_check {
            e.state_set(
                "vmtime_sync_cross_check_state",
                "The NTP cross-check's verdict on the page.",
                "state",
                CROSS_STATES,
                Some(c.state),
            );
            e.gauge(
                "vmtime_sync_cross_check_disagree",
                "1 while the NTP server and the page disagree beyond both their bounds.",
                Some(f64::from(u8::from(c.state == "disagree"))),
            );
            e.gauge(
                "vmtime_sync_cross_check_offset_seconds",
                "The NTP server minus the page at the last answer.",
                c.offset_ns.map(|n| n / 1e9),
            );
            e.counter("vmtime_sync_cross_check_queries_total", "NTP queries sent.", c.queries);
            e.counter("vmtime_sync_cross_check_replies_total", "NTP answers used.", c.replies);
            e.counter("vmtime_sync_cross_check_timeouts_total", "NTP queries not answered in time.", c.timeouts);
            e.counter(
                "vmtime_sync_cross_check_episodes_total",
                "Times the NTP server and the page started to disagree.",
                c.episodes,
            );
        }
    }
}

/// Why a feed held (sent no sample, or wrote a segment without a bound): the core's reasons
/// (`vmtime_core::feed::Hold`), in its order.
pub const HOLD_REASONS: &[&str] = &[
    "unreliable",
    "no_time",
    "changed_during_measurement",
    "disrupted",
    "no_samples",
    "out_of_range",
    "unreadable",
    "realtime_stepped",
    "no_maxerror",
    "unbounded",
    "jump",
];

/// The label of a hold reason (`None`: the page could not be read).
pub fn hold_reason(h: Option<vmtime_core::feed::Hold>) -> &'static str {
    use vmtime_core::feed::Hold;
    match h {
        Some(Hold::Unreliable) => "unreliable",
        Some(Hold::NoTime) => "no_time",
        Some(Hold::ChangedDuringMeasurement) => "changed_during_measurement",
        Some(Hold::Disrupted) => "disrupted",
        Some(Hold::NoSamples) => "no_samples",
        Some(Hold::OutOfRange) => "out_of_range",
        Some(Hold::Unreadable) | None => "unreadable",
        Some(Hold::RealtimeStepped) => "realtime_stepped",
        Some(Hold::NoMaxError) => "no_maxerror",
        Some(Hold::Unbounded) => "unbounded",
        Some(Hold::Jump) => "jump",
    }
}

/// What both feeds count: their turns held by reason, and the page as they see it.
#[derive(Clone, Debug, Default)]
pub struct FeedCommon {
    /// Turns held, by [`HOLD_REASONS`] index.
    pub held: [u64; HOLD_REASONS.len()],
    /// When the page's content (seq_count or file) was last seen to change.
    pub page_changed: Option<Instant>,
    last_seq: Option<u32>,
    /// The page read.
    pub source: String,
    /// What the last turn did, in words (systemd's STATUS line).
    pub state: String,
    /// Woken by the vmclock device's notifications (7.0+ driver, NOTIFICATION_PRESENT): no
    /// marker checks while so.
    pub notified: bool,
    /// Checks of the page's markers between turns (every 40 ms while not notified).
    pub marker_checks: u64,
    /// The runtime's figures.
    pub run: RunFigures,
}

impl FeedCommon {
    /// A turn held for `reason` (`None`: the page could not be read).
    pub fn held(&mut self, reason: Option<vmtime_core::feed::Hold>) {
        let label = hold_reason(reason);
        if let Some(i) = HOLD_REASONS.iter().position(|r| *r == label) {
            self.held[i] += 1;
        }
    }

    /// The page read at a turn (its seq_count).
    pub fn page_seen(&mut self, seq: u32, now: Instant) {
        if self.last_seq != Some(seq) {
            self.last_seq = Some(seq);
            self.page_changed = Some(now);
        }
    }

    fn render(&self, feed: &str, now: Instant, e: &mut Exposition) {
        let held: Vec<(&str, u64)> = HOLD_REASONS.iter().copied().zip(self.held).collect();
        e.counters(
            &format!("vmtime_feed_{feed}_held_total"),
            "Turns that gave no time, by reason (the page unreliable, unreadable, disrupted, …).",
            "reason",
            &held,
        );
        e.gauge(
            &format!("vmtime_feed_{feed}_page_age_seconds"),
            "Time since the page's content was last seen to change (a quiet host republishes only when its clock drifts).",
            age(now, self.page_changed),
        );
        e.gauge(
            &format!("vmtime_feed_{feed}_loop_gap_max_seconds"),
            "Largest gap between two turns of the feed's loop in the last 10 s.",
            self.run.loop_gap_max.map(|d| d.as_secs_f64()),
        );
    }

    /// The status keys both feeds have.
    fn status(&self, now: Instant) -> serde_json::Value {
        let held: serde_json::Map<String, serde_json::Value> =
            HOLD_REASONS.iter().zip(self.held).map(|(r, n)| (r.to_string(), n.into())).collect();
        serde_json::json!({
            "source": self.source,
            "state": self.state,
            "held": held,
            "page_age_s": age(now, self.page_changed),
            "notified": self.notified,
            "marker_checks": self.marker_checks,
        })
    }
}

/// Adds `more`'s keys to the JSON object `v`.
fn with(mut v: serde_json::Value, more: serde_json::Value) -> serde_json::Value {
    if let (Some(m), serde_json::Value::Object(more)) = (v.as_object_mut(), more) {
        m.extend(more);
    }
    v
}

/// `vmtime feed chrony`.
#[derive(Clone, Debug, Default)]
pub struct FeedChronyMetrics {
    pub common: FeedCommon,
    /// chronyd's socket.
    pub socket: String,
    /// Samples chronyd's socket took.
    pub sent: u64,
    /// Samples that could not be sent (chronyd not running, its queue full).
    pub send_failures: u64,
    /// 1 while sending fails.
    pub send_failing: bool,
    /// The offset of the last sample, page − CLOCK_REALTIME, ns.
    pub last_offset_ns: Option<f64>,
    /// When chronyd last took a sample.
    pub last_sent: Option<Instant>,
}

impl Expose for FeedChronyMetrics {
    fn render(&self, now: Instant, e: &mut Exposition) {
        e.build_info("feed-chrony");
        e.counter("vmtime_feed_chrony_samples_sent_total", "Samples chronyd's SOCK socket took.", self.sent);
        e.counter(
            "vmtime_feed_chrony_send_failures_total",
            "Samples that could not be sent (chronyd not running or not listening on the socket, its queue full).",
            self.send_failures,
        );
        e.gauge(
            "vmtime_feed_chrony_send_failing",
            "1 while chronyd's socket takes no sample.",
            Some(f64::from(u8::from(self.send_failing))),
        );
        e.gauge(
            "vmtime_feed_chrony_last_offset_seconds",
            "Offset of the last sample: page time minus CLOCK_REALTIME (chrony's reference minus system time).",
            self.last_offset_ns.map(|n| n / 1e9),
        );
        e.gauge(
            "vmtime_feed_chrony_last_sample_age_seconds",
            "Time since chronyd last took a sample.",
            age(now, self.last_sent),
        );
        self.common.render("chrony", now, e);
    }
}

/// ClockBound's status names, in its order.
const CB_STATUSES: &[&str] = &["UNKNOWN", "SYNCHRONIZED", "FREE_RUNNING", "DISRUPTED"];

/// ClockBound's name for a status.
pub fn cb_status_name(s: vmtime_core::feed::clockbound::CbStatus) -> &'static str {
    use vmtime_core::feed::clockbound::CbStatus;
    match s {
        CbStatus::Unknown => "UNKNOWN",
        CbStatus::Synchronized => "SYNCHRONIZED",
        CbStatus::FreeRunning => "FREE_RUNNING",
        CbStatus::Disrupted => "DISRUPTED",
    }
}

/// `vmtime feed clockbound`.
#[derive(Clone, Debug, Default)]
pub struct FeedClockBoundMetrics {
    pub common: FeedCommon,
    /// The segments written.
    pub segments: String,
    /// Segments written.
    pub writes: u64,
    /// When the segment was last written.
    pub last_write: Option<Instant>,
    /// When a segment with a bound (SYNCHRONIZED or FREE_RUNNING) was last written.
    pub last_bounded: Option<Instant>,
    /// The last segment's bound, ns (0 when it carries none).
    pub bound_ns: Option<i64>,
    /// The last segment's drift, ppb.
    pub drift_ppb: Option<u32>,
    /// The last segment's status.
    pub status: Option<&'static str>,
    /// The NTP cross-check (`--cross-check-ntp`), when configured.
    pub cross_check: Option<vmtime_core::crosscheck::CrossStatus>,
}

impl FeedClockBoundMetrics {
    /// A segment just written.
    pub fn written(&mut self, eb: &vmtime_core::feed::clockbound::ErrorBound, now: Instant) {
        use vmtime_core::feed::clockbound::CbStatus;
        self.writes += 1;
        self.last_write = Some(now);
        self.bound_ns = Some(eb.bound_ns);
        self.drift_ppb = Some(eb.max_drift_ppb);
        self.status = Some(cb_status_name(eb.status));
        if matches!(eb.status, CbStatus::Synchronized | CbStatus::FreeRunning) {
            self.last_bounded = Some(now);
        }
    }
}

impl Expose for FeedClockBoundMetrics {
    fn render(&self, now: Instant, e: &mut Exposition) {
        e.build_info("feed-clockbound");
        e.counter("vmtime_feed_clockbound_segment_writes_total", "Updates of ClockBound's segment.", self.writes);
        e.gauge(
            "vmtime_feed_clockbound_segment_age_seconds",
            "Time since the segment was last written.",
            age(now, self.last_write),
        );
        e.gauge(
            "vmtime_feed_clockbound_last_bounded_age_seconds",
            "Time since a segment with a bound (SYNCHRONIZED or FREE_RUNNING) was last written.",
            age(now, self.last_bounded),
        );
        e.gauge(
            "vmtime_feed_clockbound_bound_seconds",
            "The last segment's bound on CLOCK_REALTIME's error at its as_of (0: none).",
            self.bound_ns.map(|n| n as f64 / 1e9),
        );
        e.gauge(
            "vmtime_feed_clockbound_drift_ratio",
            "The last segment's growth of the bound per second (1e-6 is 1 ppm).",
            self.drift_ppb.map(|p| f64::from(p) / 1e9),
        );
        e.state_set(
            "vmtime_feed_clockbound_status",
            "The last segment's clock status.",
            "status",
            CB_STATUSES,
            self.status,
        );
        self.common.render("clockbound", now, e);
    }
}

impl Figures for FeedChronyMetrics {
    fn run(&mut self) -> &mut RunFigures {
        &mut self.common.run
    }
    fn status(&self, now: Instant) -> serde_json::Value {
        let own = serde_json::json!({
            "socket": self.socket,
            "samples_sent": self.sent,
            "send_failures": self.send_failures,
            "send_failing": self.send_failing,
            "last_offset_ns": self.last_offset_ns,
            "last_sample_age_s": age(now, self.last_sent),
        });
        with(self.common.status(now), own)
    }
    fn status_line(&self, line: &mut String) {
        line.push_str(&self.common.state);
    }
}

impl Figures for FeedClockBoundMetrics {
    fn run(&mut self) -> &mut RunFigures {
        &mut self.common.run
    }
    fn status(&self, now: Instant) -> serde_json::Value {
        let own = serde_json::json!({
            "segments": self.segments,
            "segment_writes": self.writes,
            "segment_status": self.status,
            "bound_ns": self.bound_ns,
            "drift_ppb": self.drift_ppb,
            "segment_age_s": age(now, self.last_write),
            "cross_check": self.cross_check,
        });
        with(self.common.status(now), own)
    }
    fn status_line(&self, line: &mut String) {
        line.push_str(&self.common.state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::metrics::render;

    fn line_of(f: &impl Figures) -> String {
        let mut line = String::new();
        f.status_line(&mut line);
        line
    }

    /// systemd's STATUS line comes from the figures: empty (no READY=1 yet) until the daemon's
    /// first useful work, then what it does.
    #[test]
    fn the_status_line_follows_the_figures() {
        let mut host = HostMetrics { page: "/run/vmtime/host.page".into(), ..Default::default() };
        assert_eq!(line_of(&host), "", "nothing published yet");
        host.published = 1;
        assert_eq!(line_of(&host), "publishing /run/vmtime/host.page");
        host.timex_denied = true;
        assert_eq!(
            line_of(&host),
            "publishing /run/vmtime/host.page (kernel NTP state unreadable: FREERUNNING, 16 s bound)"
        );
        let mut relay =
            RelayMetrics { host_page: "/h.page".into(), guest_page: "/g.page".into(), ..Default::default() };
        assert_eq!(line_of(&relay), "");
        relay.relayed = 1;
        assert_eq!(line_of(&relay), "relaying /h.page to /g.page");
        let mut sync = SyncMetrics { source: "/dev/vmclock0".into(), ..Default::default() };
        assert_eq!(line_of(&sync), "", "no update yet");
        sync.updates = 1;
        assert_eq!(line_of(&sync), "following /dev/vmclock0");
        let mut markers = SyncMetrics { source: "/dev/vmclock0".into(), markers_only: true, ..Default::default() };
        assert_eq!(line_of(&markers), "", "the page not read yet");
        markers.disruption_marker = Some(7);
        assert_eq!(line_of(&markers), "watching the markers of /dev/vmclock0 (no time source)");
        let mut chrony = FeedChronyMetrics::default();
        assert_eq!(line_of(&chrony), "");
        chrony.common.state = "sending /dev/vmclock0 to /run/chrony.vmclock0.sock".into();
        assert_eq!(line_of(&chrony), "sending /dev/vmclock0 to /run/chrony.vmclock0.sock");
    }

    #[test]
    fn values_and_families() {
        let t0 = Instant::now();
        let m = HostMetrics {
            published: 12,
            written: PageFigures {
                last_publish: Some(t0),
                maxerror_ns: Some(1_500),
                status: Some("SYNCHRONIZED"),
                ..Default::default()
            },
            ..Default::default()
        };
        let text = render(&m, t0 + Duration::from_millis(250));
        assert!(text.contains("\nvmtime_host_page_age_seconds 0.25\n"), "{text}");
        assert!(
            text.contains("# TYPE vmtime_host_pages_published_total counter\nvmtime_host_pages_published_total 12\n")
        );
        assert!(text.contains("\nvmtime_host_page_maxerror_seconds 0.0000015\n"));
        assert!(text.contains("vmtime_host_clock_status{status=\"SYNCHRONIZED\"} 1\n"));
        assert!(text.contains("vmtime_host_clock_status{status=\"FREERUNNING\"} 0\n"));
        // Unknown values are left out, not written as 0.
        assert!(!text.contains("vmtime_host_page_esterror_seconds"));
    }

    #[test]
    fn feed_figures_by_reason_and_status() {
        use vmtime_core::feed::clockbound::{CbStatus, ErrorBound};
        use vmtime_core::feed::Hold;
        let t0 = Instant::now();
        let mut m = FeedChronyMetrics { sent: 3, last_offset_ns: Some(-2500.0), ..Default::default() };
        m.common.held(Some(Hold::Disrupted));
        m.common.held(Some(Hold::Disrupted));
        m.common.held(None);
        m.common.page_seen(4, t0);
        m.common.page_seen(4, t0 + Duration::from_secs(3)); // unchanged: the age keeps growing
        let text = render(&m, t0 + Duration::from_secs(5));
        assert!(text.contains("\nvmtime_feed_chrony_samples_sent_total 3\n"), "{text}");
        assert!(text.contains("\nvmtime_feed_chrony_held_total{reason=\"disrupted\"} 2\n"), "{text}");
        assert!(text.contains("\nvmtime_feed_chrony_held_total{reason=\"unreadable\"} 1\n"), "{text}");
        assert!(text.contains("\nvmtime_feed_chrony_held_total{reason=\"unreliable\"} 0\n"), "{text}");
        assert!(text.contains("\nvmtime_feed_chrony_last_offset_seconds -0.0000025\n"), "{text}");
        assert!(text.contains("\nvmtime_feed_chrony_page_age_seconds 5\n"), "{text}");
        assert!(!text.contains("last_sample_age"), "nothing sent yet is left out: {text}");

        let mut c = FeedClockBoundMetrics::default();
        let eb = ErrorBound {
            as_of_ns: 0,
            void_after_ns: 1,
            bound_ns: 1_500,
            disruption_marker: 0,
            max_drift_ppb: 16_000,
            status: CbStatus::FreeRunning,
            disruption_support: false,
        };
        c.written(&eb, t0);
        c.written(&ErrorBound { status: CbStatus::Disrupted, bound_ns: 0, ..eb }, t0 + Duration::from_secs(1));
        let text = render(&c, t0 + Duration::from_secs(2));
        assert!(text.contains("\nvmtime_feed_clockbound_segment_writes_total 2\n"), "{text}");
        assert!(text.contains("vmtime_feed_clockbound_status{status=\"DISRUPTED\"} 1\n"), "{text}");
        assert!(text.contains("vmtime_feed_clockbound_status{status=\"FREE_RUNNING\"} 0\n"), "{text}");
        assert!(text.contains("\nvmtime_feed_clockbound_last_bounded_age_seconds 2\n"), "{text}");
        assert!(text.contains("\nvmtime_feed_clockbound_segment_age_seconds 1\n"), "{text}");
        assert!(text.contains("\nvmtime_feed_clockbound_drift_ratio 0.000016\n"), "{text}");
    }

    #[test]
    fn the_phc_servos_actions_count() {
        use vmtime_core::sync::SyncAction;
        let mut m = SyncMetrics::default();
        m.phc_action(&SyncAction::Step { delta_ns: 5 });
        m.phc_action(&SyncAction::SetFrequency { tick: 10_001, freq: 65_536 });
        m.phc_measured(-12.5);
        assert_eq!((m.steps, m.updates, m.frequency_ppb, m.offset_ns), (1, 1, Some(101_000.0), Some(-12.5)));
        let text = render(&m, Instant::now());
        assert!(text.contains("\nvmtime_sync_frequency_ratio 0.000101\n"), "{text}");
        assert!(text.contains("vmtime_sync_state{state=\"synchronised\"} 1\n"));
    }

    #[test]
    fn the_cross_check_is_exposed_when_configured() {
        use crate::ops::metrics::render;
        let now = Instant::now();
        let none = render(&SyncMetrics::default(), now);
        assert!(!none.contains("cross_check"), "not configured: no series");
        assert!(SyncMetrics::default().status(now).get("cross_check").is_none());
        let c = vmtime_core::crosscheck::CrossStatus {
            state: "disagree",
            offset_ns: Some(5e8),
            server: "127.0.0.1:123".into(),
            queries: 3,
            replies: 2,
            episodes: 1,
            ..Default::default()
        };
        let m = SyncMetrics { cross_check: Some(c), ..Default::default() };
        let text = render(&m, now);
        assert!(text.contains("vmtime_sync_cross_check_disagree 1\n"), "{text}");
        assert!(text.contains("vmtime_sync_cross_check_offset_seconds 0.5\n"), "{text}");
        assert!(text.contains("vmtime_sync_cross_check_state{state=\"disagree\"} 1\n"), "{text}");
        assert!(text.contains("vmtime_sync_cross_check_episodes_total 1\n"), "{text}");
        let st = m.status(now);
        assert_eq!(st["cross_check"]["state"], "disagree");
        assert_eq!(st["cross_check"]["server"], "127.0.0.1:123");
    }
}
