//! Log lines: `tracing` events written to stderr, one line each, in words.
//!
//! - On a terminal or into a file: `2026-11-23T10:22:46.123456Z  INFO message key=value`.
//! - Under journald (`JOURNAL_STREAM` names this process's stderr, as systemd sets it): no
//!   timestamp (the journal adds its own) and a `<N>` syslog priority prefix, which journald turns
//!   into the entry's priority, so `journalctl -p warning` works.
//!
//! `tracing` with a subscriber of our own (no spans are used: an event is formatted and written
//! in one `write`) rather than hand-written `eprintln!`: levels, filtering and the
//! journald/terminal switch in one place, and the daemons' call sites stay one line each. Fields
//! are written with `Display`; a field given with `?` (Debug) is a bug at the call site (the
//! developers' guide forbids Debug in user text).

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU8, Ordering};
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::{span, Event, Level, Metadata, Subscriber};

pub use crate::ops::config::LogLevel;

fn filter(level: LogLevel) -> LevelFilter {
    match level {
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    }
}

/// Where the lines go, which decides their shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// A terminal or a file: timestamp and level word.
    Plain,
    /// journald's stream: `<N>` priority prefix, no timestamp.
    Journal,
}

/// journald when `JOURNAL_STREAM` ("DEV:INODE") names the file stderr is: systemd sets it for a
/// service's stdout/stderr, and a shell started from such a service inherits it, hence the
/// comparison rather than the mere presence.
pub fn detect_style() -> Style {
    use std::os::unix::fs::MetadataExt;
    let Some(js) = std::env::var_os("JOURNAL_STREAM") else { return Style::Plain };
    let Some((dev, ino)) = js.to_str().and_then(|s| s.split_once(':')) else { return Style::Plain };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) if dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino()) => Style::Journal,
        // /proc not mounted: trust the variable.
        Err(_) => Style::Journal,
        Ok(_) => Style::Plain,
    }
}

/// The installed subscriber's level ([`set_level`] changes it).
static LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Info as u8);

fn level_of(n: u8) -> LogLevel {
    [LogLevel::Error, LogLevel::Warn, LogLevel::Info, LogLevel::Debug, LogLevel::Trace]
        .into_iter()
        .find(|l| *l as u8 == n)
        .unwrap_or(LogLevel::Info)
}

/// Installs the subscriber. Called once, by `main`; a second call (tests) is ignored. A daemon
/// that learns its level later (from its configuration, or on SIGHUP) calls [`set_level`].
pub fn init(level: LogLevel) {
    let lines = Lines { style: detect_style(), level: &LEVEL, out: Box::new(to_stderr) };
    if tracing::subscriber::set_global_default(lines).is_ok() {
        set_level(level);
    }
}

fn to_stderr(line: &[u8]) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_all(line);
}

/// Sets the level from now on (a daemon's configured `log_level`, re-read on SIGHUP).
pub fn set_level(level: LogLevel) {
    LEVEL.store(level as u8, Ordering::Relaxed);
    // The callsites' cached interest and tracing's global maximum follow the new level.
    tracing::callsite::rebuild_interest_cache();
}

/// Where a subscriber's lines go: stderr, or a test's buffer.
type Sink = Box<dyn Fn(&[u8]) + Send + Sync>;

/// The subscriber: each event at or above the level, one line, written whole.
struct Lines {
    style: Style,
    level: &'static AtomicU8,
    out: Sink,
}

impl Lines {
    fn filter(&self) -> LevelFilter {
        filter(level_of(self.level.load(Ordering::Relaxed)))
    }
}

impl Subscriber for Lines {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= self.filter()
    }
    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.filter())
    }
    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }
    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn event(&self, event: &Event<'_>) {
        if self.enabled(event.metadata()) {
            (self.out)(line(self.style, event, std::time::SystemTime::now()).as_bytes());
        }
    }
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}
}

/// An instant as RFC 3339 UTC with microseconds: `2026-11-23T10:22:46.123456Z`.
fn timestamp(t: std::time::SystemTime, w: &mut String) {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let (year, month, day) = vmclock::time::civil_from_days(days);
    let _ = write!(
        w,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_micros()
    );
}

/// The syslog priority journald reads from a `<N>` prefix.
pub fn syslog_priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// One event → one line.
fn line(style: Style, event: &Event<'_>, now: std::time::SystemTime) -> String {
    let level = event.metadata().level();
    let mut w = String::new();
    match style {
        Style::Journal => {
            let _ = write!(w, "<{}>", syslog_priority(level));
        }
        Style::Plain => {
            timestamp(now, &mut w);
            let _ = write!(w, " {level:>5} ");
        }
    }
    let mut v = LineVisitor::default();
    event.record(&mut v);
    // One line per event, whatever the message holds.
    w.push_str(&v.line.replace(['\n', '\r'], " "));
    w.push('\n');
    w
}

/// The message first, then `key=value` for each other field.
#[derive(Default)]
struct LineVisitor {
    line: String,
}

impl LineVisitor {
    fn field(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        if field.name() == "message" {
            if self.line.is_empty() {
                let _ = self.line.write_fmt(value);
            } else {
                self.line = format!("{value} {}", self.line);
            }
        } else {
            if !self.line.is_empty() {
                self.line.push(' ');
            }
            let _ = write!(self.line, "{}={}", field.name(), value);
        }
    }
}

impl Visit for LineVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, format_args!("{value}"));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // The message arrives here as `fmt::Arguments`, whose Debug is its Display.
        self.field(field, format_args!("{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn capture(style: Style, level: LogLevel, f: impl FnOnce()) -> String {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let level: &'static AtomicU8 = Box::leak(Box::new(AtomicU8::new(level as u8)));
        let sub = Lines { style, level, out: Box::new(move |b| sink.lock().unwrap().extend_from_slice(b)) };
        tracing::subscriber::with_default(sub, f);
        let out = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        out
    }

    #[test]
    fn journal_lines_carry_the_priority_and_no_timestamp() {
        let out = capture(Style::Journal, LogLevel::Info, || {
            tracing::warn!(seq = 7, "page published\nlate");
            tracing::info!("started");
            tracing::debug!("not shown at info");
        });
        assert_eq!(out, "<4>page published late seq=7\n<6>started\n");
    }

    #[test]
    fn plain_lines_start_with_an_rfc3339_timestamp_and_the_level() {
        let out = capture(Style::Plain, LogLevel::Debug, || tracing::debug!(path = "/run/x", "opened"));
        let (ts, rest) = out.split_once(' ').unwrap();
        assert!(ts.len() >= 20 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "timestamp {ts}");
        assert_eq!(rest, " DEBUG opened path=/run/x\n".trim_start());
        let out = capture(Style::Plain, LogLevel::Info, || tracing::info!("x"));
        assert_eq!(&out[27..], "  INFO x\n", "{out}");
    }

    #[test]
    fn timestamps_are_utc_civil_dates() {
        let at = |s: u64, us: u32| {
            let mut w = String::new();
            timestamp(std::time::UNIX_EPOCH + std::time::Duration::new(s, us * 1000), &mut w);
            w
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(at(1_798_761_599, 999_999), "2026-12-31T23:59:59.999999Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000000Z");
    }

    #[test]
    fn the_level_filters() {
        let out = capture(Style::Journal, LogLevel::Error, || {
            tracing::warn!("w");
            tracing::error!("e");
        });
        assert_eq!(out, "<3>e\n");
    }

    #[test]
    fn the_level_can_change_after_start() {
        init(LogLevel::Info);
        set_level(LogLevel::Debug);
        assert_eq!(LevelFilter::current(), LevelFilter::DEBUG);
        set_level(LogLevel::Error);
        assert_eq!(LevelFilter::current(), LevelFilter::ERROR);
    }

    #[test]
    fn journal_stream_of_another_file_is_not_journald() {
        // Unit-test the parse: a JOURNAL_STREAM that cannot name our stderr gives Plain. (The
        // variable is process-wide, so only this test touches it.)
        std::env::set_var("JOURNAL_STREAM", "0:0");
        let s = detect_style();
        std::env::remove_var("JOURNAL_STREAM");
        assert_eq!(s, Style::Plain);
        assert_eq!(detect_style(), Style::Plain);
    }
}
