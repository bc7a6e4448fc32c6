//! The configuration file (default /etc/vmtime/vmtime.toml) and each daemon's resolved settings.
//!
//! One TOML file with the sections `[host]`, `[relay]`, `[sync]`, `[feed.chrony]`,
//! `[feed.clockbound]` and `[metrics]`. Each daemon
//! section has one key per command-line option of its daemon, with the same name (`--interval-ms`
//! is `interval_ms`) and the same validated type (crate::values), so a flag and its key cannot
//! disagree on what is allowed. Unknown keys and sections are refused (`deny_unknown_fields`).
//! A value comes from, in order: the flag, the file, the default.
//!
//! The merge is done on TOML tables: the flags the user gave are serialised (absent options and
//! false switches are left out), laid over the file's section, and the result is deserialised
//! into the settings, which range-checks every value once more. The same function re-reads the
//! file on SIGHUP ([`host`], [`relay`], [`sync`] return the new settings or an error that keeps
//! the old ones).

use crate::values::*;
use anyhow::{anyhow, bail, Context, Result};
use clap::{ArgAction::SetTrue, Args as ClapArgs, Subcommand, ValueEnum};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Where the daemons look for their configuration when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/vmtime/vmtime.toml";

/// A log level (`--log-level`, `log_level`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// What the daemon does (the default).
    #[default]
    Info,
    /// Details of each decision.
    Debug,
    /// Everything.
    Trace,
}

impl std::fmt::Display for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        })
    }
}

/// The leap second smearing hint the host publishes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Smearing {
    /// No smearing: the leap second is inserted or deleted (the default).
    #[default]
    Strict,
    /// Smeared linearly over 24 h from noon to noon.
    NoonLinear,
    /// UTC-SLS: smeared over the last 1000 s of the day.
    UtcSls,
}

/// The timescale of a PTP clock source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Timescale {
    /// UTC (like ptp_kvm).
    Utc,
    /// TAI (like vmclock's PTP clock).
    Tai,
}

/// Declares a daemon's settings once: each key with its doc (also its flag's `--help`), its
/// flag's attributes, its kind and its default. It makes the section's struct (`deny_unknown_fields`;
/// every key defaulted), its `Default`, and the flags struct a daemon's `Args` flattens: one
/// flag per key, of the same name, absent unless given. The keys every daemon has
/// (`duration_s`, `log_level`, `metrics_listen`: [`DaemonArgs`]) are added, and the runtime's
/// [`crate::ops::runtime::Settings`] and [`Section`] implemented.
///
/// Kinds: `key` (a value with a default), `maybe` (no value unless given), `switch` (false
/// unless given; its flag, `#[arg(long, action = SetTrue)]`, takes no value). A flag not given
/// is left out of the flags laid over the file (a switch's false too: [`flag_table`]).
macro_rules! daemon_settings {
    (
        $(#[$meta:meta])*
        $settings:ident, $flags:ident, $section:literal $(, check = $check:path)? {
            $(
                $(#[doc = $doc:literal])*
                #[arg($($arg:tt)*)]
                $kind:ident $name:ident: $ty:ty = $default:expr,
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $settings {
            $(
                $(#[doc = $doc])*
                pub $name: daemon_settings!(@setting $kind $ty),
            )*
            /// Exit after this long (tests, measurements).
            pub duration_s: Option<DurationS>,
            /// Log level.
            pub log_level: LogLevel,
            /// Serve metrics here (default: [metrics] listen; none: off).
            pub metrics_listen: Option<SocketAddr>,
        }

        impl Default for $settings {
            fn default() -> Self {
                $settings { $($name: $default,)* duration_s: None, log_level: LogLevel::Info, metrics_listen: None }
            }
        }

        #[doc = concat!("The flags of `[", $section, "]`: one per key, of the same name; a flag given overrides the file.")]
        #[derive(ClapArgs, Debug, Default, Serialize)]
        pub struct $flags {
            $(
                $(#[doc = $doc])*
                #[arg($($arg)*)]
                pub $name: Option<$ty>,
            )*
        }

        impl crate::ops::runtime::Settings for $settings {
            fn log_level(&self) -> LogLevel {
                self.log_level
            }
            fn metrics_listen(&self) -> Option<SocketAddr> {
                self.metrics_listen
            }
            fn duration_s(&self) -> Option<u64> {
                self.duration_s.map(DurationS::get)
            }
        }

        impl Section for $settings {
            const SECTION: &'static str = $section;
            fn metrics_listen_mut(&mut self) -> &mut Option<SocketAddr> {
                &mut self.metrics_listen
            }
            fn check_flags(&self) -> Result<(), String> {
                let checks: &[fn(&Self, bool) -> Result<(), String>] = &[$($check)?];
                checks.iter().try_for_each(|c| c(self, true))
            }
        }
    };
    (@setting key $ty:ty) => { $ty };
    (@setting maybe $ty:ty) => { Option<$ty> };
    (@setting switch $ty:ty) => { bool };
}

daemon_settings! {
    /// `[host]`: `vmtime host`.
    HostSettings, HostFlags, "host" {
        /// Where to publish the page (default: /run/vmtime/host.page for root, else
        /// $XDG_RUNTIME_DIR/vmtime/host.page or /tmp/vmtime-UID/host.page).
        #[arg(long)]
        maybe page: PathBuf = None,
        /// Control socket (default: the page path + ".sock").
        #[arg(long)]
        maybe socket: PathBuf = None,
        /// Longest time between full observations, ms.
        #[arg(long)]
        key interval_ms: IntervalMs = IntervalMs::new(1000).expect("in range"),
        /// How often the kernel's NTP state is read (cheap adjtimex) while it is changing, ms.
        #[arg(long)]
        key poll_ms: PollMs = PollMs::new(10).expect("in range"),
        /// How often it is read once it has been still for 10 s, ms (the page's maxerror covers
        /// what an unseen frequency change can do in this long: 500 ppm of it at the defaults).
        #[arg(long)]
        key idle_poll_ms: PollMs = PollMs::new(100).expect("in range"),
        /// Republish when the page is this far off the kernel clock, ns.
        #[arg(long)]
        key threshold_ns: ThresholdNs = ThresholdNs::new(20).expect("in range"),
        /// Rate tolerance of the kernel clock against true time, ppm (the page's period maximum
        /// error rate; 500 is the kernel's own MAXFREQ).
        #[arg(long)]
        key tolerance_ppm: TolerancePpm = TolerancePpm::from_fine(500_000).expect("in range"),
        /// TAI − UTC in s, positive (37 in 2026); the page stores its negation, UTC − TAI, as the
        /// driver and spec v1.1 read it (default: the kernel's, else the system leap-second list if
        /// current).
        #[arg(long)]
        maybe tai_offset: TaiUtcS = None,
        /// leap_second_smearing_hint to publish.
        #[arg(long, value_enum)]
        key smearing: Smearing = Smearing::Strict,
        /// The kernel's own vmclock page (RFC "/dev/vmclock_host"): used as the source of the
        /// counter-to-clock relation when present; vmtime adds bounds, leap state, status and markers.
        #[arg(long)]
        key vmclock_host: PathBuf = PathBuf::from("/dev/vmclock_host"),
        /// Ignore the kernel's page even when it exists (sample the clock instead).
        #[arg(long, action = SetTrue)]
        switch no_vmclock_host: bool = false,
        /// No live status line.
        #[arg(long, action = SetTrue)]
        switch quiet: bool = false,
    }
}

daemon_settings! {
    /// `[relay]`: `vmtime relay` (one instance per guest; `--guest-page` is usually given by the
    /// service instance).
    RelaySettings, RelayFlags, "relay" {
        /// The host page to follow (from `vmtime host`; default: the host's default page).
        #[arg(long)]
        maybe host_page: PathBuf = None,
        /// The host daemon's control socket, for its notifications (default: the host page +
        /// ".sock"; without one answering, the host page is polled every 1 ms).
        #[arg(long)]
        maybe host_socket: PathBuf = None,
        /// The guest page to publish (a file the VMM shares with the guest, e.g. an ivshmem backend).
        #[arg(long)]
        maybe guest_page: PathBuf = None,
        /// KVM's TSC offset for this guest (added after scaling, mod 2^64; negative values wrap).
        #[arg(long)]
        key tsc_offset: TscOffset = "0".parse().expect("in range"),
        /// The TSC scaling ratio (guest ticks per host tick).
        #[arg(long)]
        key tsc_ratio: TscRatio = "1".parse().expect("in range"),
        /// Fraction bits of KVM's ratio (Intel 48, AMD 32).
        #[arg(long)]
        key tsc_frac_bits: FracBits = FracBits::new(48).expect("in range"),
        /// Where the guest's markers are kept across restarts (default: guest page + ".state.json").
        #[arg(long)]
        maybe state: PathBuf = None,
        /// The VMM's doorbell socket (`vmtime qemu --notify SOCKET`): the guest page says
        /// NOTIFICATION_PRESENT, and one byte is written to this socket after every page (the
        /// VMM turns it into the guest's vmclock notification). Without it the guest polls.
        #[arg(long, value_name = "SOCKET")]
        maybe doorbell: PathBuf = None,
    }
}

daemon_settings! {
    /// `[sync]`: `vmtime sync`.
    SyncSettings, SyncFlags, "sync" {
        /// The source: a vmclock device or page file, or a PTP clock (default: the first
        /// /dev/vmclock*, else a pure PHC).
        #[arg(long)]
        maybe source: PathBuf = None,
        /// Print the actions instead of applying them: nothing is changed.
        #[arg(long, action = SetTrue)]
        switch dry_run: bool = false,
        /// Interval between observations, ms: the shortest, and the longest a new page waits to be
        /// observed (the markers are checked every 40 ms, or the device or publisher notifies).
        #[arg(long)]
        key interval_ms: IntervalMs = IntervalMs::new(1000).expect("in range"),
        /// The longest interval between observations at rest, ms: after start-up it doubles from
        /// interval_ms after each update whose offset was within 50 µs (beyond the measurement's
        /// own width), up to this; any other update, a disruption or a holdover brings it back to
        /// interval_ms. A new page is observed within interval_ms whatever the interval. Equal to
        /// interval_ms (or less): a fixed interval. At most 30 s (the alert on the last good
        /// observation's age).
        #[arg(long)]
        key max_interval_ms: MaxIntervalMs = MaxIntervalMs::new(16_000).expect("in range"),
        /// Step instead of slewing when the offset exceeds this during the first updates, ns
        /// (chrony's makestep).
        #[arg(long)]
        key makestep_ns: MakestepNs = MakestepNs::new(1_000_000).expect("in range"),
        /// How many first updates may step, by any amount (a changed disruption marker or VM
        /// generation allows that too).
        #[arg(long)]
        key makestep_updates: MakestepUpdates = MakestepUpdates::new(3).expect("in range"),
        /// Outside start-up, a marker change and the return from holdover, an offset larger than
        /// this (a page gone wrong or hostile) is refused and the clock holds over, s (steps of
        /// 0.001; default 2: a missed leap second is still corrected). Applied live on SIGHUP.
        #[arg(long)]
        key max_step_s: MaxStepS = MaxStepS::from_fine(2_000).expect("in range"),
        /// Command run (by sh -c) when the VM generation changes: reseed entropy, reset connections.
        #[arg(long)]
        maybe hook: String = None,
        /// Control socket (default: sync.sock beside the host page's default).
        #[arg(long)]
        maybe socket: PathBuf = None,
        /// The timescale of a PHC source, used only when the machine cannot tell: its vmclock page,
        /// the kernel's timescale attribute and a driver of fixed timescale (ptp_kvm: UTC) come first.
        #[arg(long, value_enum)]
        maybe phc_timescale: Timescale = None,
        /// TAI − UTC in s (positive: 37), to read a TAI PHC when neither the kernel (adjtimex) nor
        /// the page has it.
        #[arg(long)]
        maybe tai_offset: TaiUtcS = None,
        /// Start even while another time daemon (chronyd, ntpd, systemd-timesyncd, …) runs or the
        /// kernel's PLL is on, and keep running when another process changes the clock's state.
        #[arg(long, action = SetTrue)]
        switch allow_other_daemon: bool = false,
        /// A second opinion: an NTP server, ADDRESS:PORT (no names: nothing is looked up), asked every
        /// 16–64 s (backing off to 1024 s while it does not answer). It never steers the clock; when
        /// it and the page disagree beyond both their bounds, the kernel's maxerror is widened to
        /// cover it, the clock is left unsynchronised, and `status` says `"cross_check": {"state":
        /// "disagree", …}`. A vmclock page source only.
        #[arg(long, value_name = "ADDRESS:PORT")]
        maybe cross_check_ntp: SocketAddr = None,
    }
}

/// Whether ClockBound clients compare the segment's marker with /dev/vmclock0's
/// (`--disruption-support`, `disruption_support`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DisruptionSupport {
    /// On when the source is /dev/vmclock0 (the device the clients compare markers with).
    #[default]
    Auto,
    /// Clients compare the segment's marker with /dev/vmclock0's and say Unknown when they differ.
    On,
    /// Clients go by the segment's status alone.
    Off,
}

/// Which ClockBound segments `vmtime feed clockbound` maintains (`--layout`, `layout`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
pub enum Layout {
    /// `shm0` only, for ClockBound 2.x clients (time from CLOCK_REALTIME).
    #[value(name = "2")]
    #[serde(rename = "2")]
    V2,
    /// `shm1` only, for ClockBound 3.x clients (time from the counter, on the page's map).
    #[value(name = "3")]
    #[serde(rename = "3")]
    V3,
    /// Both, as ClockBound 3's own daemon writes them.
    #[default]
    #[serde(rename = "both")]
    Both,
}

/// The socket of `refclock SOCK` in docs/OPERATIONS.md's chrony.conf line (the `/run/chrony.NAME.sock`
/// form of chrony's own example).
pub const DEFAULT_CHRONY_SOCKET: &str = "/run/chrony.vmclock0.sock";

daemon_settings! {
    /// `[feed.chrony]`: `vmtime feed chrony`.
    FeedChronySettings, FeedChronyFlags, "feed.chrony" {
        /// The page: a vmclock device or page file.
        #[arg(long)]
        key source: PathBuf = PathBuf::from(crate::paths::DEFAULT_GUEST_PAGE),
        /// chronyd's SOCK refclock socket: the PATH of chrony.conf's `refclock SOCK PATH` (chronyd
        /// creates it, as root: run the feed as root).
        #[arg(long)]
        key socket: PathBuf = PathBuf::from(DEFAULT_CHRONY_SOCKET),
        /// The feed's control socket, for `vmtime status` (default: feed-chrony.sock in the
        /// runtime directory).
        #[arg(long)]
        maybe control_socket: PathBuf = None,
        /// Interval between samples, ms.
        #[arg(long)]
        key interval_ms: FeedIntervalMs = FeedIntervalMs::new(1000).expect("in range"),
        /// (CLOCK_REALTIME, counter, CLOCK_REALTIME) samples per measurement.
        #[arg(long)]
        key burst: Burst = Burst::new(16).expect("in range"),
    }
}

daemon_settings! {
    /// `[feed.clockbound]`: `vmtime feed clockbound`.
    FeedClockBoundSettings, FeedClockBoundFlags, "feed.clockbound", check = FeedClockBoundSettings::check {
        /// The page: a vmclock device or page file.
        #[arg(long)]
        key source: PathBuf = PathBuf::from(crate::paths::DEFAULT_GUEST_PAGE),
        /// The directory of the segments (`shm0` and/or `shm1` in it, as --layout says).
        #[arg(long)]
        key dir: PathBuf = PathBuf::from("/var/run/clockbound"),
        /// Which segments: 2 (`shm0`, ClockBound 2.x clients), 3 (`shm1`, 3.x clients) or both.
        #[arg(long, value_enum)]
        key layout: Layout = Layout::Both,
        /// Interval between updates, ms.
        #[arg(long)]
        key interval_ms: FeedIntervalMs = FeedIntervalMs::new(1000).expect("in range"),
        /// (CLOCK_REALTIME, counter, CLOCK_REALTIME) samples per measurement.
        #[arg(long)]
        key burst: Burst = Burst::new(16).expect("in range"),
        /// How long the segments stay valid without an update, ms (at least two intervals, less
        /// than 32767 intervals).
        #[arg(long)]
        key life_ms: LifeMs = LifeMs::new(5000).expect("in range"),
        /// Drift allowed to CLOCK_REALTIME beyond the rate measured, ppb (ClockBound assumes 15 ppm).
        #[arg(long)]
        key drift_margin_ppb: DriftPpb = DriftPpb::new(15_000).expect("in range"),
        /// Whether clients compare the segment's marker with /dev/vmclock0's.
        #[arg(long, value_enum)]
        key disruption_support: DisruptionSupport = DisruptionSupport::Auto,
        /// The feed's control socket, for `vmtime status` (default: feed-clockbound.sock in the
        /// segments' directory).
        #[arg(long)]
        maybe control_socket: PathBuf = None,
        /// A second opinion: an NTP server, ADDRESS:PORT (no names), asked every 16–64 s; while it and
        /// the page disagree beyond both bounds, every bound written covers the disagreement and the
        /// status is FreeRunning (as `vmtime sync --cross-check-ntp`).
        #[arg(long, value_name = "ADDRESS:PORT")]
        maybe cross_check_ntp: SocketAddr = None,
    }
}

impl FeedClockBoundSettings {
    /// The checks across keys: the segment outlives two intervals (so an interval is at most
    /// half the longest life), and is void before its generation comes back to the same value.
    /// `flags`: name the flags (the pair came from the command line over a valid file), else
    /// the keys.
    fn check(&self, flags: bool) -> Result<(), String> {
        let (life, interval) = (self.life_ms.get(), self.interval_ms.get());
        let max = LifeMs::MAX;
        if 2 * interval > max {
            return Err(if flags {
                format!("--interval-ms {interval}: at most {} for the ClockBound feed (the segment's life, --life-ms, at most {max} ms, must cover two intervals)", max / 2)
            } else {
                format!("interval_ms = {interval} is too long for the ClockBound feed: at most {} (the segment's life, life_ms, at most {max} ms, must cover two intervals)", max / 2)
            });
        }
        if life < 2 * interval {
            return Err(if flags {
                format!("--life-ms {life}: give at least two intervals ({} ms) and at most {max}", 2 * interval)
            } else {
                format!(
                    "life_ms = {life} is shorter than two intervals (interval_ms = {interval}): give at least {}",
                    2 * interval
                )
            });
        }
        // The segment's generation (u16, by two per update, never 0) comes back to a value every
        // 32767 updates, and clock-bound-client keeps its copy while the generation it read is
        // the one it sees: a client that reads rarely could take a bound that old for the
        // current one. It must be void by then.
        let wrap_ms = GENERATION_PERIOD * interval;
        if life >= wrap_ms {
            let (l, i) = if flags { ("--life-ms ", "--interval-ms ") } else { ("life_ms = ", "interval_ms = ") };
            return Err(format!(
                "{l}{life} with {i}{interval}: the segment's generation comes back to the same value after {GENERATION_PERIOD} updates ({wrap_ms} ms), and a segment must be void by then: give a {} below {wrap_ms}, or a longer {}",
                l.trim_end_matches([' ', '=']),
                i.trim_end_matches([' ', '='])
            ));
        }
        Ok(())
    }
}

/// Updates after which a ClockBound segment's generation (even, never 0, u16) has the same value
/// again.
const GENERATION_PERIOD: u64 = 32767;

/// `[feed]`: the feeds, a subsection each.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeedSettings {
    /// `[feed.chrony]`.
    pub chrony: FeedChronySettings,
    /// `[feed.clockbound]`.
    pub clockbound: FeedClockBoundSettings,
}

/// `[metrics]`: the Prometheus endpoint, off by default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// Where every daemon serves metrics unless its section says `metrics_listen` (none: off).
    pub listen: Option<SocketAddr>,
    /// Allow an address that is not loopback.
    pub allow_non_loopback: bool,
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// `[host]`.
    pub host: HostSettings,
    /// `[relay]`.
    pub relay: RelaySettings,
    /// `[sync]`.
    pub sync: SyncSettings,
    /// `[metrics]`.
    pub metrics: MetricsSettings,
    /// `[feed.chrony]`, `[feed.clockbound]`.
    pub feed: FeedSettings,
}

/// A metrics address is loopback, or allowed not to be.
fn check_metrics(key: &str, addr: Option<SocketAddr>, m: &MetricsSettings) -> Result<()> {
    match addr {
        Some(a) if !a.ip().is_loopback() && !m.allow_non_loopback => bail!(
            "{key} = \"{a}\" is not a loopback address: metrics are served on 127.0.0.1 or [::1] unless [metrics] allow_non_loopback = true"
        ),
        _ => Ok(()),
    }
}

impl FileConfig {
    /// Checks across keys: the metrics addresses.
    fn validate(&self) -> Result<()> {
        check_metrics("[metrics] listen", self.metrics.listen, &self.metrics)?;
        check_metrics("[host] metrics_listen", self.host.metrics_listen, &self.metrics)?;
        check_metrics("[relay] metrics_listen", self.relay.metrics_listen, &self.metrics)?;
        check_metrics("[sync] metrics_listen", self.sync.metrics_listen, &self.metrics)?;
        check_metrics("[feed.chrony] metrics_listen", self.feed.chrony.metrics_listen, &self.metrics)?;
        check_metrics("[feed.clockbound] metrics_listen", self.feed.clockbound.metrics_listen, &self.metrics)?;
        self.feed.clockbound.check(false).map_err(|m| anyhow!("[feed.clockbound] {m}"))
    }
}

/// A message on one line.
fn one_line(m: &str) -> String {
    m.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

/// One line for a TOML syntax error: the line number and the message.
fn syntax_error(path: &Path, text: &str, e: &toml::de::Error) -> anyhow::Error {
    let msg = one_line(e.message());
    let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    match line {
        Some(l) => anyhow!("{} line {l}: {msg}", path.display()),
        None => anyhow!("{}: {msg}", path.display()),
    }
}

/// Deserialises with the key's path in the message: "[host] interval_ms: 0 is refused; allowed: …"
/// (a subsection's key: "[feed.chrony] interval_ms: …").
fn typed<T: DeserializeOwned>(v: toml::Value) -> Result<T, String> {
    let e = match T::deserialize(v.clone()) {
        Ok(t) => return Ok(t),
        Err(e) => e,
    };
    let path = match &v {
        toml::Value::Table(t) => failing_path::<T>(t).join("."),
        _ => String::new(),
    };
    let msg = one_line(e.message());
    Err(match path.rsplit_once('.') {
        Some((section, key)) => format!("[{section}] {key}: {msg}"),
        None if path.is_empty() => msg,
        None => format!("{path}: {msg}"),
    })
}

/// Where deserialising `T` from `root` fails: the keys down to the first one whose value is
/// refused, in the order the deserialiser visits them (the table's), found by deserialising the
/// path to one key at a time (no key refused alone: the failure is not at a key, []).
fn failing_path<T: DeserializeOwned>(root: &toml::Table) -> Vec<String> {
    /// `root` reduced to the one branch `path` → `leaf`.
    fn branch(path: &[String], leaf: toml::Value) -> toml::Value {
        path.iter().rev().fold(leaf, |v, k| toml::Value::Table(toml::Table::from_iter([(k.clone(), v)])))
    }
    let refused = |path: &[String], leaf: toml::Value| T::deserialize(branch(path, leaf)).is_err();
    let mut path: Vec<String> = Vec::new();
    let mut table = root;
    loop {
        let Some((k, v)) = table.iter().find(|(k, v)| {
            let mut p = path.clone();
            p.push((*k).clone());
            refused(&p, (*v).clone())
        }) else {
            return path;
        };
        path.push(k.clone());
        // A table refused as a whole (a value expected there): the failure is at this key.
        match v.as_table() {
            Some(t) if !refused(&path, toml::Value::Table(toml::Table::new())) => table = t,
            _ => return path,
        }
    }
}

/// A loaded configuration file: its raw tables (for merging with flags) and its checked values.
#[derive(Debug)]
pub struct Loaded {
    /// The file read, or None when the default file does not exist.
    pub path: Option<PathBuf>,
    /// The file as TOML.
    pub table: toml::Table,
    /// The file's values, defaults filled in.
    pub file: FileConfig,
}

/// Reads a configuration file as TOML: its path and table, or None when `explicit` is None and
/// the default file does not exist (then everything is default). `explicit` must exist.
fn read_table(explicit: Option<&Path>) -> Result<Option<(PathBuf, toml::Table)>> {
    let path = explicit.unwrap_or(Path::new(DEFAULT_PATH));
    let text = match crate::values::read_config_text(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => return Ok(None),
        Err(e) => bail!("cannot read the configuration {}: {e}", path.display()),
    };
    let table: toml::Table = text.parse().map_err(|e| syntax_error(path, &text, &e))?;
    Ok(Some((path.to_path_buf(), table)))
}

/// Reads and checks a configuration file. `explicit` is the `--config` given: it must exist;
/// the default file may be absent (then everything is default).
pub fn load(explicit: Option<&Path>) -> Result<Loaded> {
    let Some((path, table)) = read_table(explicit)? else {
        return Ok(Loaded { path: None, table: toml::Table::new(), file: FileConfig::default() });
    };
    let file: FileConfig = typed(toml::Value::Table(table.clone())).map_err(|m| anyhow!("{}: {m}", path.display()))?;
    file.validate().map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(Loaded { path: Some(path), table, file })
}

/// The guest binary's view of the file (`vmtime-guest`, which has `sync` but no host, relay or
/// feeds): `[sync]` and `[metrics]` are checked key by key exactly as by [`load`]; the other
/// daemons' sections, whose code the guest binary leaves out, must be tables but their keys are
/// not checked. An unknown section is refused, as by [`load`].
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[allow(dead_code, reason = "the other sections are read to be checked as tables, not used")]
struct GuestFile {
    host: toml::Table,
    relay: toml::Table,
    sync: SyncSettings,
    metrics: MetricsSettings,
    feed: GuestFeed,
}

/// `[feed]` for the guest binary: its subsections' names only.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[allow(dead_code, reason = "read to be checked as tables, not used")]
struct GuestFeed {
    chrony: toml::Table,
    clockbound: toml::Table,
}

/// The flags the user gave, as a TOML table: absent options and false switches left out.
fn flag_table(flags: &impl Serialize) -> Result<toml::Table> {
    let mut t = toml::Table::try_from(flags).context("the flags cannot be written as TOML")?;
    t.retain(|_, v| !matches!(v, toml::Value::Boolean(false)));
    Ok(t)
}

/// A daemon's settings: the flags over the file's section over the defaults, and the metrics
/// address from `[metrics] listen` when neither gives one.
fn resolve<S: DeserializeOwned>(
    loaded: &Loaded,
    section: &str,
    flags: &impl Serialize,
    metrics: impl FnOnce(&mut S) -> &mut Option<SocketAddr>,
) -> Result<S> {
    resolve_in(loaded.path.as_deref(), &loaded.table, &loaded.file.metrics, section, flags, metrics)
}

/// [`resolve`] on a file's table and its checked `[metrics]`.
fn resolve_in<S: DeserializeOwned>(
    path: Option<&Path>,
    table: &toml::Table,
    file_metrics: &MetricsSettings,
    section: &str,
    flags: &impl Serialize,
    metrics: impl FnOnce(&mut S) -> &mut Option<SocketAddr>,
) -> Result<S> {
    // A subsection ("feed.chrony") is looked up table by table.
    let mut found = Some(table);
    for part in section.split('.') {
        found = found.and_then(|t| t.get(part)).and_then(toml::Value::as_table);
    }
    let mut merged = found.cloned().unwrap_or_default();
    merged.extend(flag_table(flags)?);
    let mut s: S = typed(toml::Value::Table(merged)).map_err(|m| match path {
        Some(p) => anyhow!("{}: [{section}] {m}", p.display()),
        None => anyhow!("[{section}] {m}"),
    })?;
    let addr = metrics(&mut s);
    if addr.is_none() {
        *addr = file_metrics.listen;
    }
    check_metrics("--metrics-listen", *addr, file_metrics)?;
    Ok(s)
}

/// What a SIGHUP reload changes: the keys whose value differs between the settings in force and
/// the file re-read, split into those the daemon applies at once and those that need a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reload {
    /// Changed and applied now: "key = new value".
    pub applied: Vec<String>,
    /// Changed but kept until the daemon restarts: "key = new value (in force: old value)".
    pub restart: Vec<String>,
}

fn toml_value(v: Option<&toml::Value>) -> String {
    v.map_or_else(|| "unset".to_string(), |v| v.to_string())
}

/// Compares two settings key by key (as TOML, so every key counts, even one added later):
/// `live` names the keys the daemon can apply without a restart.
pub fn reload_diff(current: &impl Serialize, new: &impl Serialize, live: &[&str]) -> Result<Reload> {
    let old = toml::Table::try_from(current).context("the settings cannot be written as TOML")?;
    let new = toml::Table::try_from(new).context("the settings cannot be written as TOML")?;
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut r = Reload::default();
    for k in keys {
        let (o, n) = (old.get(k), new.get(k));
        if o == n {
            continue;
        }
        if live.contains(&k.as_str()) {
            r.applied.push(format!("{k} = {}", toml_value(n)));
        } else {
            r.restart.push(format!("{k} = {} (in force: {})", toml_value(n), toml_value(o)));
        }
    }
    Ok(r)
}

impl Reload {
    /// The log line, in words.
    pub fn describe(&self, daemon: &str) -> String {
        match (self.applied.is_empty(), self.restart.is_empty()) {
            (true, true) => "SIGHUP: configuration re-read, unchanged".into(),
            (false, true) => format!("SIGHUP: applied {}", self.applied.join(", ")),
            (true, false) => format!(
                "SIGHUP: nothing applied; these changes need a restart of vmtime {daemon}: {}",
                self.restart.join(", ")
            ),
            (false, false) => format!(
                "SIGHUP: applied {}; these changes need a restart of vmtime {daemon}: {}",
                self.applied.join(", "),
                self.restart.join(", ")
            ),
        }
    }
}

/// A SIGHUP reload: the settings to keep in force (`current` with the `live` keys taken from
/// `new`) and what changed. The result is checked once more as a whole.
pub fn reload<S: Serialize + DeserializeOwned>(current: &S, new: &S, live: &[&str]) -> Result<(S, Reload)> {
    let diff = reload_diff(current, new, live)?;
    let mut merged = toml::Table::try_from(current).context("the settings cannot be written as TOML")?;
    let new = toml::Table::try_from(new).context("the settings cannot be written as TOML")?;
    for k in live {
        match new.get(*k) {
            Some(v) => merged.insert(k.to_string(), v.clone()),
            None => merged.remove(*k),
        };
    }
    let s = typed(toml::Value::Table(merged)).map_err(|m| anyhow!("{m}"))?;
    Ok((s, diff))
}

/// A daemon's SIGHUP: `reread` is its settings read again (flags over the file over the
/// defaults). The changed keys named in `live` are applied, the others named in one log line as
/// needing a restart of `vmtime DAEMON`. Returns the settings now in force and the changes that
/// await a restart; None when the file is bad (logged, the settings in force are kept).
pub fn on_sighup<S: Serialize + DeserializeOwned>(
    daemon: &str,
    current: &S,
    reread: Result<S>,
    live: &[&str],
) -> Option<(S, Vec<String>)> {
    match reread.and_then(|new| reload(current, &new, live)) {
        Ok((now, r)) => {
            if r.restart.is_empty() {
                tracing::info!("{}", r.describe(daemon));
            } else {
                tracing::warn!("{}", r.describe(daemon));
            }
            Some((now, r.restart))
        }
        Err(e) => {
            tracing::warn!("SIGHUP: {e:#}; keeping the settings in force");
            None
        }
    }
}

/// The flags every daemon takes, beside its own: each one but `--config` is also a key of its
/// section (flattened into each daemon's `Args`, and into the flags laid over the file).
#[derive(ClapArgs, Debug, Default, Serialize)]
pub struct DaemonArgs {
    /// The configuration file (default: /etc/vmtime/vmtime.toml, if it exists).
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Exit after this many seconds (tests, measurements).
    #[arg(long)]
    pub duration_s: Option<DurationS>,
    /// The global `--log-level` (main sets it; a key of the configuration too).
    #[arg(skip)]
    pub log_level: Option<LogLevel>,
    /// Serve Prometheus metrics on this loopback address (default: [metrics] listen; off).
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
}

impl DaemonArgs {
    /// The settings of the daemon whose flags, these included, are `flags`: [`settings`] with
    /// `--config` (also its SIGHUP reload).
    pub fn settings<S: Section>(&self, flags: &impl Serialize) -> Result<S> {
        settings(self.config.as_deref(), flags)
    }
}

/// A daemon's section of the file: its name, and the checks across its keys.
pub trait Section: DeserializeOwned {
    /// "host", "feed.chrony", …
    const SECTION: &'static str;
    /// `metrics_listen`, filled from `[metrics] listen` when neither the flag nor the section
    /// gives it.
    fn metrics_listen_mut(&mut self) -> &mut Option<SocketAddr>;
    /// The checks across keys once the flags are laid over the file (which was checked alone
    /// by [`load`]): an error names the flags.
    fn check_flags(&self) -> Result<(), String> {
        Ok(())
    }
}

/// A daemon's settings: `flags` (its whole `Args`, serialised) over its section of the file
/// `config` over the defaults. Also its SIGHUP reload: an error keeps the settings in force.
pub fn settings<S: Section>(config: Option<&Path>, flags: &impl Serialize) -> Result<S> {
    let s: S = resolve(&load(config)?, S::SECTION, flags, S::metrics_listen_mut)?;
    s.check_flags().map_err(|m| anyhow!("{m}"))?;
    Ok(s)
}

/// `vmtime sync`'s settings in the guest binary (also its SIGHUP reload): as [`settings`], but of
/// the file only `[sync]` and `[metrics]` are checked key by key ([`GuestFile`]), so that the
/// other daemons' deserialisers stay out of the guest binary.
pub fn sync_guest(config: Option<&Path>, flags: &impl Serialize) -> Result<SyncSettings> {
    let metrics = SyncSettings::metrics_listen_mut;
    let s: SyncSettings = match read_table(config)? {
        None => {
            resolve_in(None, &toml::Table::new(), &MetricsSettings::default(), SyncSettings::SECTION, flags, metrics)?
        }
        Some((path, table)) => {
            let file: GuestFile =
                typed(toml::Value::Table(table.clone())).map_err(|m| anyhow!("{}: {m}", path.display()))?;
            check_metrics("[metrics] listen", file.metrics.listen, &file.metrics)
                .and_then(|()| check_metrics("[sync] metrics_listen", file.sync.metrics_listen, &file.metrics))
                .map_err(|e| anyhow!("{}: {e}", path.display()))?;
            resolve_in(Some(&path), &table, &file.metrics, SyncSettings::SECTION, flags, metrics)?
        }
    };
    s.check_flags().map_err(|m| anyhow!("{m}"))?;
    Ok(s)
}

/// `vmtime config`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Check a configuration file: print the effective configuration (TOML, defaults filled in),
    /// or one line naming the key and what is allowed (exit status 2).
    Check {
        /// The file (default: /etc/vmtime/vmtime.toml).
        path: Option<PathBuf>,
    },
    /// Print the default configuration (TOML).
    Defaults,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let file = match a.command {
        Cmd::Check { path } => {
            let loaded = load(Some(path.as_deref().unwrap_or(Path::new(DEFAULT_PATH))))?;
            loaded.file
        }
        Cmd::Defaults => FileConfig::default(),
    };
    print!("{}", toml::to_string(&file).context("the configuration cannot be written as TOML")?);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    /// (section, its keys) for each table holding keys, subsections ("feed.chrony") included.
    fn sections(t: &toml::Table) -> Vec<(String, Vec<String>)> {
        fn walk(name: &str, t: &toml::Table, out: &mut Vec<(String, Vec<String>)>) {
            let keys: Vec<String> = t.iter().filter(|(_, v)| !v.is_table()).map(|(k, _)| k.clone()).collect();
            if !keys.is_empty() {
                out.push((name.to_string(), keys));
            }
            for (k, v) in t.iter().filter_map(|(k, v)| Some((k, v.as_table()?))) {
                walk(&if name.is_empty() { k.clone() } else { format!("{name}.{k}") }, v, out);
            }
        }
        let mut out = Vec::new();
        walk("", t, &mut out);
        out
    }

    fn err(text: &str) -> String {
        let f = file(text);
        format!("{:#}", load(Some(f.path())).unwrap_err())
    }

    #[test]
    fn the_shipped_file_is_the_defaults() {
        let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../../packaging/vmtime.toml");
        let loaded = load(Some(Path::new(shipped))).unwrap();
        assert_eq!(loaded.file, FileConfig::default());
        // Every key is written out in the shipped file (commented or not) so none is undocumented.
        let text = std::fs::read_to_string(shipped).unwrap();
        let defaults = toml::Table::try_from(FileConfig::default()).unwrap();
        for (section, keys) in sections(&defaults) {
            let start = text.find(&format!("\n[{section}]\n")).unwrap_or_else(|| panic!("[{section}] missing"));
            let end = text[start + 1..].find("\n[").map_or(text.len(), |e| start + 1 + e);
            for key in keys {
                assert!(
                    text[start..end].contains(&format!("{key} =")),
                    "[{section}] {key} missing from the shipped file"
                );
            }
        }
    }

    #[test]
    fn every_key_is_documented() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/CONFIG.md")).unwrap();
        let mut all = FileConfig::default();
        // Keys without a default are absent from the serialised defaults: give them values.
        all.host.page = Some("/p".into());
        all.host.socket = Some("/s".into());
        all.host.tai_offset = TaiUtcS::new(37);
        all.host.duration_s = DurationS::new(1);
        all.host.metrics_listen = Some("127.0.0.1:1".parse().unwrap());
        all.relay.host_page = Some("/p".into());
        all.relay.host_socket = Some("/s".into());
        all.relay.guest_page = Some("/p".into());
        all.relay.state = Some("/p".into());
        all.relay.doorbell = Some("/d".into());
        all.relay.duration_s = DurationS::new(1);
        all.relay.metrics_listen = Some("127.0.0.1:1".parse().unwrap());
        all.sync.source = Some("/p".into());
        all.sync.hook = Some("true".into());
        all.sync.socket = Some("/s".into());
        all.sync.duration_s = DurationS::new(1);
        all.sync.phc_timescale = Some(Timescale::Utc);
        all.sync.tai_offset = TaiUtcS::new(37);
        all.sync.metrics_listen = Some("127.0.0.1:1".parse().unwrap());
        all.metrics.listen = Some("127.0.0.1:1".parse().unwrap());
        all.feed.chrony.duration_s = DurationS::new(1);
        all.feed.chrony.control_socket = Some("/s".into());
        all.feed.clockbound.control_socket = Some("/s".into());
        all.feed.chrony.metrics_listen = Some("127.0.0.1:1".parse().unwrap());
        all.feed.clockbound.duration_s = DurationS::new(1);
        all.feed.clockbound.metrics_listen = Some("127.0.0.1:1".parse().unwrap());
        let all = toml::Table::try_from(all).unwrap();
        let all = sections(&all);
        assert!(all.iter().any(|(s, _)| s == "feed.clockbound"), "subsections are checked");
        for (section, keys) in &all {
            let start =
                doc.find(&format!("## `[{section}]`")).unwrap_or_else(|| panic!("[{section}] not in CONFIG.md"));
            let end = doc[start + 1..].find("\n## ").map_or(doc.len(), |e| start + 1 + e);
            for key in keys {
                assert!(
                    doc[start..end].contains(&format!("| `{key}` |")),
                    "[{section}] {key} is not in docs/CONFIG.md"
                );
            }
        }
    }

    #[test]
    fn bad_values_name_the_key_and_the_range() {
        let e = err("[host]\ninterval_ms = 0\n");
        assert!(e.ends_with("[host] interval_ms: 0 is refused; allowed: an integer in [10, 600000] (ms)"), "{e}");
        let e = err("[host]\ntolerance_ppm = nan\n");
        assert!(e.contains("[host] tolerance_ppm: NaN is refused; allowed: a number in [0.001, 100000] (ppm)"), "{e}");
        let e = err("[sync]\nmakestep_ns = -1\n");
        assert!(e.contains("[sync] makestep_ns: -1 is refused"), "{e}");
        let e = err("[relay]\ntsc_ratio = 1e30\n");
        assert!(e.contains("[relay] tsc_ratio: 1000000000000000000000000000000 is refused"), "{e}");
        let e = err("[host]\nintervl_ms = 5\n");
        assert!(e.contains("[host] intervl_ms: unknown field `intervl_ms`"), "{e}");
        let e = err("[hots]\n");
        assert!(e.contains("unknown field `hots`"), "{e}");
        let e = err("[host]\nsmearing = \"fast\"\n");
        assert!(e.contains("[host] smearing: unknown variant `fast`"), "{e}");
        let e = err("[host\n");
        assert!(e.contains("line 1:"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }

    /// The guest binary's reading of a file gives the same `[sync]` settings and the same errors
    /// as the full binary's, except in the keys of the sections the guest binary leaves out.
    #[test]
    fn the_guest_binary_reads_sync_as_the_full_binary_does() {
        #[derive(Serialize)]
        struct Flags {
            interval_ms: Option<u32>,
        }
        let none = Flags { interval_ms: None };
        let both = |text: &str, flags: &Flags| {
            let f = file(text);
            let full = settings::<SyncSettings>(Some(f.path()), flags).map_err(|e| format!("{e:#}"));
            let guest = sync_guest(Some(f.path()), flags).map_err(|e| format!("{e:#}"));
            (full, guest)
        };
        for text in [
            "",
            "[sync]\ninterval_ms = 250\nmakestep_ns = 5000\ndry_run = true\nhook = \"true\"\n",
            "[sync]\nmetrics_listen = \"127.0.0.1:9100\"\n[host]\ninterval_ms = 100\n[feed.chrony]\n",
            "[metrics]\nlisten = \"127.0.0.1:9100\"\n",
            "[sync]\ninterval_ms = 0\n",
            "[sync]\nintervl_ms = 5\n",
            "[sync]\nphc_timescale = \"gps\"\n",
            "[hots]\n",
            "[feed.chrny]\n",
            "[sync\n",
            "[metrics]\nlisten = \"0.0.0.0:9100\"\n",
            "[sync]\nmetrics_listen = \"192.0.2.1:9100\"\n",
            "[metrics]\nallow_non_loopback = true\n[sync]\nmetrics_listen = \"192.0.2.1:9100\"\n",
        ] {
            let (full, guest) = both(text, &none);
            assert_eq!(full, guest, "{text}");
        }
        assert!(both("[sync]\ninterval_ms = 0\n", &none).1.unwrap_err().contains("[sync] interval_ms: 0 is refused"));
        assert!(both("[feed.chrny]\n", &none).1.unwrap_err().contains("unknown field `chrny`"));
        // A flag over the file, and a flag out of range, named.
        let (full, guest) = both("[sync]\ninterval_ms = 250\n", &Flags { interval_ms: Some(500) });
        assert_eq!(full.as_ref().map(|s| s.interval_ms.get()), Ok(500));
        assert_eq!(full, guest);
        let (full, guest) = both("", &Flags { interval_ms: Some(5) });
        assert_eq!(full, guest);
        assert!(guest.unwrap_err().contains("interval_ms: 5 is refused"));
        // No file at all: the defaults.
        let missing = tempfile::tempdir().unwrap();
        let path = missing.path().join("none.toml");
        assert_eq!(
            settings::<SyncSettings>(Some(&path), &none).map_err(|e| format!("{e:#}")),
            sync_guest(Some(&path), &none).map_err(|e| format!("{e:#}"))
        );
        // The one difference: another daemon's key is not checked by the guest binary.
        let (full, guest) = both("[host]\ninterval_ms = 0\n", &none);
        assert!(full.unwrap_err().contains("[host] interval_ms: 0 is refused"));
        assert_eq!(guest, Ok(SyncSettings::default()));
        assert!(both("host = 5\n", &none).1.is_err(), "a section is a table");
    }

    /// The key paths of the one-line errors are those serde_path_to_error finds (what `typed`
    /// used before it found them itself, to keep that crate out of the guest binary).
    #[test]
    fn the_key_paths_are_serde_path_to_errors() {
        fn old<T: DeserializeOwned>(v: toml::Value) -> Result<T, String> {
            serde_path_to_error::deserialize::<_, T>(v).map_err(|e| {
                let path = e.path().to_string();
                let msg = one_line(e.inner().message());
                match path.rsplit_once('.') {
                    Some((section, key)) => format!("[{section}] {key}: {msg}"),
                    None if path == "." || path.is_empty() => msg,
                    None => format!("{path}: {msg}"),
                }
            })
        }
        let files = [
            "",
            "[host]\ninterval_ms = 0\n",
            "[host]\ntolerance_ppm = nan\n",
            "[sync]\nmakestep_ns = -1\n",
            "[relay]\ntsc_ratio = 1e30\n",
            "[host]\nintervl_ms = 5\n",
            "[hots]\n",
            "host = 5\n",
            "[host]\nsmearing = \"fast\"\n",
            "[sync]\ninterval_ms = 250\nmakestep_ns = \"x\"\nzzz = 1\n",
            "[sync]\nzzz = 1\ninterval_ms = 0\n",
            "[sync.interval_ms]\n",
            "[sync.nested]\nx = 1\n",
            "[feed.chrony]\ninterval_ms = 0\n",
            "[feed.chrny]\n",
            "[feed]\nchrony = 3\n",
            "[feed.clockbound]\nlayout = \"4\"\n",
            "[metrics]\nlisten = \"localhost\"\n",
            "[metrics]\nlisten = 5\nallow_non_loopback = \"yes\"\n",
            "[relay]\nstate = 5\n[host]\npage = \"/p\"\n",
            "[sync]\nhook = 5\n[aaa]\n",
            "a = 1\n[sync]\nhook = 5\n",
            "[sync]\nphc_timescale = \"TAI\"\ntai_offset = 37\n",
            "[sync]\ndry_run = 1\n",
            "[host]\ntai_offset = 3.5\n",
        ];
        for text in files {
            let v = toml::Value::Table(text.parse::<toml::Table>().unwrap());
            assert_eq!(typed::<FileConfig>(v.clone()), old::<FileConfig>(v.clone()), "{text}");
            assert_eq!(typed::<GuestFile>(v.clone()).err(), old::<GuestFile>(v.clone()).err(), "{text}");
            if let Some(t) = v.get("sync") {
                assert_eq!(typed::<SyncSettings>(t.clone()), old::<SyncSettings>(t.clone()), "{text}");
            }
            if let Some(t) = v.get("feed").and_then(|f| f.get("clockbound")) {
                let (new, was) = (typed::<FeedClockBoundSettings>(t.clone()), old::<FeedClockBoundSettings>(t.clone()));
                assert_eq!(new, was, "{text}");
            }
        }
    }

    #[test]
    fn metrics_are_loopback_unless_allowed() {
        let e = err("[metrics]\nlisten = \"0.0.0.0:9100\"\n");
        assert!(e.contains("[metrics] listen = \"0.0.0.0:9100\" is not a loopback address"), "{e}");
        let e = err("[sync]\nmetrics_listen = \"192.0.2.1:9100\"\n");
        assert!(e.contains("[sync] metrics_listen"), "{e}");
        let f = file("[metrics]\nlisten = \"0.0.0.0:9100\"\nallow_non_loopback = true\n");
        assert!(load(Some(f.path())).is_ok());
        let e = err("[metrics]\nlisten = \"localhost\"\n");
        assert!(e.contains("[metrics] listen: invalid socket address"), "{e}");
    }

    #[derive(Serialize, Default)]
    struct Flags {
        interval_ms: Option<IntervalMs>,
        quiet: bool,
        metrics_listen: Option<SocketAddr>,
    }

    #[test]
    fn flags_override_the_file_which_overrides_the_defaults() {
        let f = file("[host]\ninterval_ms = 500\npoll_ms = 20\nquiet = true\n[metrics]\nlisten = \"127.0.0.1:9100\"\n");
        let none = Flags::default();
        let s: HostSettings = settings(Some(f.path()), &none).unwrap();
        assert_eq!((s.interval_ms.get(), s.poll_ms.get(), s.quiet), (500, 20, true));
        assert_eq!(s.threshold_ns, HostSettings::default().threshold_ns);
        assert_eq!(s.metrics_listen, Some("127.0.0.1:9100".parse().unwrap()));
        let flags = Flags {
            interval_ms: IntervalMs::new(700),
            quiet: false,
            metrics_listen: Some("127.0.0.1:9200".parse().unwrap()),
        };
        let s: HostSettings = settings(Some(f.path()), &flags).unwrap();
        assert_eq!((s.interval_ms.get(), s.poll_ms.get(), s.quiet), (700, 20, true));
        assert_eq!(s.metrics_listen, Some("127.0.0.1:9200".parse().unwrap()));
        let flags = Flags { metrics_listen: Some("10.0.0.1:9200".parse().unwrap()), ..Flags::default() };
        let e = format!("{:#}", settings::<HostSettings>(Some(f.path()), &flags).unwrap_err());
        assert!(e.contains("--metrics-listen = \"10.0.0.1:9200\" is not a loopback address"), "{e}");
    }

    /// The flags as the command line gives them: a switch given is true (never left out: `--dry-run`
    /// must reach the settings), one not given is absent, as is an option not given; the file's
    /// values stand for what no flag gives.
    #[test]
    fn flags_given_reach_the_settings_and_absent_ones_leave_the_file() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            keys: SyncFlags,
        }
        let parse = |args: &[&str]| {
            let cli =
                <Cli as clap::Parser>::try_parse_from(std::iter::once("sync").chain(args.iter().copied())).unwrap();
            flag_table(&cli.keys).unwrap()
        };
        let t = parse(&["--dry-run", "--interval-ms", "50"]);
        assert_eq!(t.get("dry_run"), Some(&toml::Value::Boolean(true)));
        assert_eq!(t.get("interval_ms"), Some(&toml::Value::Integer(50)));
        assert!(parse(&[]).is_empty(), "nothing given, nothing laid over the file: {:?}", parse(&[]));
        let f = file("[sync]\ndry_run = true\nmax_step_s = 0.5\n");
        let s: SyncSettings = settings(Some(f.path()), &<Cli as clap::Parser>::parse_from(["sync"]).keys).unwrap();
        assert!(s.dry_run, "a switch not given leaves the file's true");
        assert_eq!(s.max_step_s.fine(), 500);
        let empty = file("");
        let s: SyncSettings =
            settings(Some(empty.path()), &<Cli as clap::Parser>::parse_from(["sync", "--dry-run"]).keys).unwrap();
        assert!(s.dry_run);
    }

    #[test]
    fn reload_applies_live_keys_and_names_the_rest() {
        let old = SyncSettings::default();
        let mut new = old.clone();
        new.max_step_s = MaxStepS::from_fine(500).unwrap();
        new.source = Some("/elsewhere".into());
        new.dry_run = true;
        let (now, r) = reload(&old, &new, &["max_step_s", "log_level"]).unwrap();
        assert_eq!(now.max_step_s.fine(), 500, "applied");
        assert_eq!((now.source, now.dry_run), (None, false), "kept until a restart");
        assert_eq!(r.applied, vec!["max_step_s = 0.5"]);
        assert_eq!(r.restart, vec!["dry_run = true (in force: false)", "source = \"/elsewhere\" (in force: unset)"]);
        assert_eq!(
            r.describe("sync"),
            "SIGHUP: applied max_step_s = 0.5; these changes need a restart of vmtime sync: dry_run = true (in force: false), source = \"/elsewhere\" (in force: unset)"
        );
        let (_, r) = reload(&old, &old, &["max_step_s"]).unwrap();
        assert_eq!(r.describe("sync"), "SIGHUP: configuration re-read, unchanged");
        assert!(on_sighup("sync", &old, Err(anyhow!("bad")), &[]).is_none(), "a bad file keeps the settings");
    }

    #[test]
    fn a_huge_file_is_refused_without_reading_it_all() {
        let f = file(&"#".repeat(2 << 20));
        let e = format!("{:#}", load(Some(f.path())).unwrap_err());
        assert!(e.ends_with("larger than 1024 KiB: not a vmtime text file"), "{e}");
    }

    #[test]
    fn an_explicit_file_must_exist() {
        let e = format!("{:#}", load(Some(Path::new("/nonexistent/vmtime.toml"))).unwrap_err());
        assert!(e.starts_with("cannot read the configuration /nonexistent/vmtime.toml: "), "{e}");
    }
}
