//! Log lines: `tracing` events written to stderr, one line each, in words.
//!
//! - On a terminal or into a file: `2026-11-23T10:22:46.123456Z  INFO message key=value`.
//! - Under journald (`JOURNAL_STREAM` names this process's stderr, as systemd sets it): no
//!   timestamp (the journal adds its own) and a `<N>` syslog priority prefix, which journald turns
//!   into the entry's priority, so `journalctl -p warning` works.
//!
//! `tracing` + `tracing-subscriber` (the `fmt` layer with a formatter of our own) rather than
//! hand-written `eprintln!`: levels, filtering and the journald/terminal switch in one place, and
//! the daemons' call sites stay one line each. Fields are written with `Display`; a field given
//! with `?` (Debug) is a bug at the call site (the developers' guide forbids Debug in user text).

use std::fmt::{self, Write as _};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

pub use crate::ops::config::LogLevel;

fn filter(level: LogLevel) -> tracing_subscriber::filter::LevelFilter {
    use tracing_subscriber::filter::LevelFilter;
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

/// Changes the level of the installed subscriber (see [`set_level`]).
static LEVEL: std::sync::OnceLock<
    tracing_subscriber::reload::Handle<tracing_subscriber::filter::LevelFilter, tracing_subscriber::Registry>,
> = std::sync::OnceLock::new();

/// Installs the subscriber. Called once, by `main`; a second call (tests) is ignored. A daemon
/// that learns its level later (from its configuration, or on SIGHUP) calls [`set_level`].
pub fn init(level: LogLevel) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let style = detect_style();
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter(level));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).event_format(LineFormat { style });
    if tracing_subscriber::registry().with(filter).with(fmt).try_init().is_ok() {
        let _ = LEVEL.set(handle);
    }
}

/// Sets the level from now on (a daemon's configured `log_level`, re-read on SIGHUP).
pub fn set_level(level: LogLevel) {
    if let Some(h) = LEVEL.get() {
        let _ = h.modify(|f| *f = filter(level));
    }
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
#[derive(Debug)]
struct LineFormat {
    style: Style,
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let level = event.metadata().level();
        match self.style {
            Style::Journal => write!(w, "<{}>", syslog_priority(level))?,
            Style::Plain => {
                SystemTime.format_time(&mut w)?;
                write!(w, " {level:>5} ")?;
            }
        }
        let mut v = LineVisitor::default();
        event.record(&mut v);
        // One line per event, whatever the message holds.
        let line = v.line.replace(['\n', '\r'], " ");
        writeln!(w, "{line}")
    }
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
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    fn capture(style: Style, level: LogLevel, f: impl FnOnce()) -> String {
        let buf = Buf::default();
        let sub = tracing_subscriber::fmt()
            .with_max_level(filter(level))
            .with_writer(buf.clone())
            .event_format(LineFormat { style })
            .finish();
        tracing::subscriber::with_default(sub, f);
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
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
        assert_eq!(rest, "DEBUG opened path=/run/x\n");
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
        use tracing::level_filters::LevelFilter;
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
