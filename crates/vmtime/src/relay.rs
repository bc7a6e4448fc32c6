//! `vmtime relay`: follows a host page and publishes one guest's page in the guest's counter
//! domain, owning its disruption marker and generation counter (see `vmtime_core::relay`).

use crate::config::{LogLevel, RelaySettings};
use crate::values::*;
use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use serde::Serialize;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use vmclock::seqlock::{self, PageMemory};
use vmclock::{Mapping, PageBuilder, WritableMapping};
use vmtime_core::relay::{CounterMap, GuestPageWriter, GuestRelay, GuestState};
use vmtime_sys::event;

/// `vmtime relay`'s flags: each one, except the one-shot --migrated and --restored, is also a
/// key of the configuration's `[relay]` section; a flag overrides the file.
#[derive(ClapArgs, Debug, Serialize)]
pub struct Args {
    /// The configuration file (default: /etc/vmtime/vmtime.toml, if it exists).
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// The host page to follow (from `vmtime host`).
    #[arg(long)]
    host_page: Option<PathBuf>,
    /// The guest page to publish (a file the VMM shares with the guest, e.g. an ivshmem backend).
    #[arg(long)]
    guest_page: Option<PathBuf>,
    /// KVM's TSC offset for this guest (added after scaling, mod 2^64; negative values wrap).
    #[arg(long)]
    tsc_offset: Option<TscOffset>,
    /// The TSC scaling ratio (guest ticks per host tick).
    #[arg(long)]
    tsc_ratio: Option<TscRatio>,
    /// Fraction bits of KVM's ratio (Intel 48, AMD 32).
    #[arg(long)]
    tsc_frac_bits: Option<FracBits>,
    /// Where the guest's markers are kept across restarts (default: guest page + ".state.json").
    #[arg(long)]
    state: Option<PathBuf>,
    /// The guest has just been live-migrated in: change its disruption marker (this run only).
    #[arg(long)]
    #[serde(skip)]
    migrated: bool,
    /// The guest has just been restored from a snapshot: change both markers (this run only).
    #[arg(long)]
    #[serde(skip)]
    restored: bool,
    /// The VMM does not notify the guest (NOTIFICATION_PRESENT clear).
    #[arg(long)]
    no_notify: bool,
    /// Exit after this many seconds.
    #[arg(long)]
    duration_s: Option<DurationS>,
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, value_enum)]
    log_level: Option<LogLevel>,
    /// Serve Prometheus metrics on this loopback address (default: [metrics] listen; off).
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
}

impl Args {
    /// The settings: these flags over the configuration file over the defaults. Called again on
    /// SIGHUP: an error there keeps the old settings.
    pub fn settings(&self) -> Result<RelaySettings> {
        crate::config::relay(self.config.as_deref(), self)
    }
}

/// Parses an offset given on the control socket: the same rules as --tsc-offset.
fn parse_offset(s: &str) -> Result<u64> {
    s.parse::<TscOffset>().map(TscOffset::get).map_err(|e| anyhow::anyhow!("TSC offset {s:?}: {e}"))
}

/// The KVM map for an offset, a ratio and its fraction bits, and a notice when the ratio had to
/// be rounded to the nearest value KVM can hold (a multiple of 2^-frac_bits). A ratio that does
/// not fit in 64 bits with that many fraction bits is refused.
pub fn counter_map(offset: u64, ratio: TscRatio, frac_bits: FracBits) -> Result<(CounterMap, Option<String>)> {
    let bits = frac_bits.get();
    let scaled = ratio.get() * 2f64.powi(bits as i32);
    let r = scaled.round();
    if !(r >= 1.0 && r < 2f64.powi(64)) {
        bail!(
            "--tsc-ratio {} with --tsc-frac-bits {bits}: the ratio must lie in [2^-{bits}, 2^{}) to fit KVM's 64-bit fixed point; lower --tsc-frac-bits",
            ratio.get(),
            64 - bits as u32
        );
    }
    let notice = (r != scaled).then(|| {
        format!(
            "--tsc-ratio {} is not a multiple of 2^-{bits}: using {} ({:#x} / 2^{bits}), the nearest KVM can hold",
            ratio.get(),
            r / 2f64.powi(bits as i32),
            r as u64
        )
    });
    Ok((CounterMap::new(offset, r as u64, bits)?, notice))
}

fn save(path: &Path, st: &GuestState) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(st)?).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot save {}", path.display()))
}

struct Relay<F: FnMut(u32)> {
    host: crate::page::FollowedPage,
    writer: GuestPageWriter<WritableMapping, F>,
    state_path: PathBuf,
    subscribers: Vec<UnixStream>,
    last_host_seq: Option<u32>,
    relayed: u64,
    last_latency_us: f64,
}

impl<F: FnMut(u32)> Relay<F> {
    fn relay(&mut self, force: bool, woke: Instant) -> Result<()> {
        let host = seqlock::read(&self.host.map, seqlock::DEFAULT_MAX_WAIT).context("reading the host page")?;
        crate::page::warn_legacy_tai(&self.host.path, &host);
        if !force && self.last_host_seq == Some(host.seq_count()) {
            return Ok(());
        }
        let before = *self.writer.relay().state();
        let seq = self.writer.update(&host)?;
        self.last_latency_us = woke.elapsed().as_secs_f64() * 1e6;
        self.last_host_seq = Some(host.seq_count());
        self.relayed += 1;
        let after = *self.writer.relay().state();
        if before != after {
            // Includes the host marker last relayed: a relay restarted on another host's page
            // (or after the host's marker changed while it was down) then changes the guest's.
            save(&self.state_path, &after)?;
        }
        if (before.disruption_marker, before.vm_generation) != (after.disruption_marker, after.vm_generation) {
            eprintln!(
                "guest page {seq}: disruption marker {:#x}, generation {}",
                after.disruption_marker, after.vm_generation
            );
        }
        let msg = format!("{seq}\n");
        self.subscribers.retain_mut(|s| s.write_all(msg.as_bytes()).is_ok());
        Ok(())
    }

    /// Remaps the host page if its file was replaced, and relays the new file's page (its
    /// seq_count says nothing against the old file's).
    fn follow_host_file(&mut self) -> Result<()> {
        if self.host.refresh()? {
            eprintln!("the host page was replaced: following the new file");
            self.relay(true, Instant::now())?;
        }
        Ok(())
    }

    fn status_json(&mut self) -> serde_json::Value {
        let st = *self.writer.relay().state();
        let g = seqlock::read(self.writer.memory(), seqlock::DEFAULT_MAX_WAIT).ok();
        serde_json::json!({
            "role": "relay",
            "host_page": self.host.path.display().to_string(),
            "state": st,
            "relayed": self.relayed,
            "last_host_seq": self.last_host_seq,
            "guest_seq": g.map(|s| s.seq_count()),
            "guest_status": g.and_then(|s| s.clock_status()).map(vmclock::abi::status_name),
            "last_latency_us": self.last_latency_us,
            "subscribers": self.subscribers.len(),
        })
    }

    fn control(&mut self, conn: UnixStream) -> Result<()> {
        let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
        let mut line = String::new();
        BufReader::new(&conn).read_line(&mut line)?;
        let mut conn = conn;
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["status"] => writeln!(conn, "{}", self.status_json())?,
            ["subscribe"] => {
                let seq = self.writer.memory().words()[vmclock::seqlock::SEQ_WORD].load(std::sync::atomic::Ordering::Acquire);
                writeln!(conn, "{}", u32::from_le(seq))?;
                self.subscribers.push(conn);
            }
            ["migrated", rest @ ..] => {
                let map = match rest {
                    [] => self.writer.relay().state().map,
                    [off] => CounterMap { offset: parse_offset(off)?, ..self.writer.relay().state().map },
                    [off, ratio, bits] => {
                        let ratio = ratio.parse::<TscRatio>().map_err(|e| anyhow::anyhow!("ratio {ratio:?}: {e}"))?;
                        let bits = bits.parse::<FracBits>().map_err(|e| anyhow::anyhow!("fraction bits {bits:?}: {e}"))?;
                        counter_map(parse_offset(off)?, ratio, bits)?.0
                    }
                    _ => bail!("usage: migrated [OFFSET [RATIO FRAC_BITS]]"),
                };
                self.writer.relay().migrated_in(map);
                self.relay(true, Instant::now())?;
                writeln!(conn, "{}", self.status_json())?;
            }
            ["restored"] => {
                self.writer.relay().restored_from_snapshot();
                self.relay(true, Instant::now())?;
                writeln!(conn, "{}", self.status_json())?;
            }
            _ => writeln!(conn, "{{\"error\": \"unknown request: send status, subscribe, migrated [OFFSET [RATIO BITS]] or restored\"}}")?,
        }
        Ok(())
    }
}

/// Subscribes to the host daemon's notifications, if it is there.
fn subscribe_host(host_page: &Path) -> Option<UnixStream> {
    let (_, s) = crate::status::request(&crate::host::socket_for(host_page), "subscribe").ok()?;
    s.set_nonblocking(true).ok()?;
    Some(s)
}

/// Drains a non-blocking subscription; false when the publisher hung up.
fn drain(s: &mut UnixStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    let a = args.settings()?;
    let Some(guest_page) = a.guest_page.clone() else {
        bail!("no guest page: give --guest-page PATH (or [relay] guest_page in the configuration)");
    };
    let host_path = a.host_page.unwrap_or_else(crate::host::default_page);
    let (map, notice) = counter_map(a.tsc_offset.get(), a.tsc_ratio, a.tsc_frac_bits)?;
    if let Some(n) = notice {
        tracing::warn!("{n}");
    }
    let state_path = a.state.unwrap_or_else(|| {
        let mut s = guest_page.as_os_str().to_owned();
        s.push(".state.json");
        PathBuf::from(s)
    });
    let mut relay = match std::fs::read(&state_path) {
        Ok(bytes) => {
            let st: GuestState = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a relay state", state_path.display()))?;
            let mut r = GuestRelay::from_state(GuestState { notify: !a.no_notify, ..st });
            if st.map != map && !args.migrated {
                eprintln!(
                    "warning: the TSC map changed since the last run without --migrated: treating it as a migration"
                );
                r.migrated_in(map);
            }
            r
        }
        Err(_) => GuestRelay::new(map, event::random_u64()?, !a.no_notify),
    };
    if args.migrated {
        relay.migrated_in(map);
    }
    if args.restored {
        relay.restored_from_snapshot();
    }
    save(&state_path, relay.state())?;

    let host = crate::page::FollowedPage::open(&host_path)
        .context("no host page to follow (is vmtime host running? --host-page names it)")?;
    let guest_file = match vmtime_sys::pagefile::open_existing(&guest_page) {
        Ok(f) if f.metadata()?.len() >= vmclock::abi::PAGE_SIZE as u64 => f,
        _ => vmtime_sys::pagefile::create(&guest_page, &PageBuilder::new().page_bytes())
            .with_context(|| format!("cannot create the guest page {}", guest_page.display()))?,
    };
    let mem = Mapping::map(&guest_file, true)
        .and_then(WritableMapping::new)
        .with_context(|| format!("cannot map {} for writing", guest_page.display()))?;
    let guest_socket = crate::host::socket_for(&guest_page);
    let _ = std::fs::remove_file(&guest_socket);
    let listener =
        UnixListener::bind(&guest_socket).with_context(|| format!("cannot listen on {}", guest_socket.display()))?;
    listener.set_nonblocking(true)?;
    let mut r = Relay {
        host,
        writer: GuestPageWriter::new(relay, mem, |_| {}),
        state_path,
        subscribers: Vec::new(),
        last_host_seq: None,
        relayed: 0,
        last_latency_us: 0.0,
    };
    let st = *r.writer.relay().state();
    eprintln!("vmtime relay: {} → {}", host_path.display(), guest_page.display());
    eprintln!("  map: guest = ((host · {}) >> {}) + {:#x}", st.map.ratio, st.map.frac_bits, st.map.offset);
    eprintln!(
        "  disruption marker {:#x}, generation {}, state {}",
        st.disruption_marker,
        st.vm_generation,
        r.state_path.display()
    );
    eprintln!("  control socket {} (status, subscribe, migrated, restored)", guest_socket.display());
    r.relay(true, Instant::now())?;

    let mut host_sub = subscribe_host(&host_path);
    eprintln!("  following the host by {}", if host_sub.is_some() { "notification" } else { "polling every 1 ms" });
    let end = a.duration_s.map(|s| Instant::now() + Duration::from_secs(s.get()));
    let mut last_file_check = Instant::now();
    loop {
        let mut fds = vec![listener.as_raw_fd()];
        if let Some(s) = &host_sub {
            fds.push(s.as_raw_fd());
        }
        let timeout = if host_sub.is_some() { 1000 } else { 1 };
        let ready = event::poll_readable(&fds, timeout)?;
        let woke = Instant::now();
        if ready.get(1).copied().unwrap_or(false) {
            if !drain(host_sub.as_mut().expect("polled")) {
                eprintln!("the host daemon went away: polling the page");
                host_sub = None;
            }
            r.relay(false, woke)?;
        } else if host_sub.is_none() {
            r.relay(false, woke)?;
        }
        if ready[0] {
            while let Ok((conn, _)) = listener.accept() {
                let _ = conn.set_nonblocking(false);
                let reply_to = conn.try_clone();
                if let Err(e) = r.control(conn) {
                    // The requester gets the error as JSON too.
                    let msg = format!("{e:#}");
                    eprintln!("control request failed: {msg}");
                    if let Ok(mut c) = reply_to {
                        let _ = writeln!(c, "{}", serde_json::json!({ "error": msg }));
                    }
                }
            }
        }
        if last_file_check.elapsed() >= Duration::from_secs(1) {
            last_file_check = Instant::now();
            r.follow_host_file()?;
            if host_sub.is_none() {
                host_sub = subscribe_host(&host_path);
            }
        }
        if end.is_some_and(|e| Instant::now() >= e) {
            break;
        }
    }
    let _ = std::fs::remove_file(&guest_socket);
    Ok(ExitCode::SUCCESS)
}
