//! `vmtime relay`: follows a host page and publishes one guest's page in the guest's counter
//! domain, owning its disruption marker and generation counter (see `vmtime_core::relay`).

use crate::ops::config::{DaemonArgs, RelayFlags, RelaySettings};
use crate::ops::runtime::{Answer, Daemon, Flow, Runtime, Turn};
use crate::values::*;
use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use vmclock::seqlock::{self, PageMemory};
use vmclock::{Mapping, WritableMapping, Writer};
use vmtime_core::overwrite::{Guard, Verdict, Written};
use vmtime_core::relay::{CounterMap, GuestRelay, GuestState};
use vmtime_sys::event;
use vmtime_sys::files::{self, LockFile, PageFile};
use vmtime_sys::serve::{self, Poller, Reply, Subscription, Token};

/// `vmtime relay`'s flags: each one, except the one-shot --migrated and --restored, is also a
/// key of the configuration's `[relay]` section; a flag overrides the file.
#[derive(ClapArgs, Debug, Serialize)]
pub struct Args {
    #[command(flatten)]
    #[serde(flatten)]
    keys: RelayFlags,
    /// The guest has just been live-migrated in: change its disruption marker (this run only).
    #[arg(long)]
    #[serde(skip)]
    migrated: bool,
    /// The guest has just been restored from a snapshot: change both markers (this run only).
    #[arg(long)]
    #[serde(skip)]
    restored: bool,
    /// Accepted for old command lines: without --doorbell this relay has no way to notify the
    /// guest, so NOTIFICATION_PRESENT is clear. Not a configuration key.
    #[arg(long, hide = true)]
    #[serde(skip)]
    no_notify: bool,
    #[command(flatten)]
    #[serde(flatten)]
    pub daemon: DaemonArgs,
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

/// Saves the state durably (fsync, rename, directory fsync; mode 0600) before anything that
/// depends on it is published.
fn save(path: &Path, st: &GuestState) -> Result<()> {
    files::write_state(path, &serde_json::to_vec_pretty(st)?)?;
    Ok(())
}

/// How often the guest page is compared with the relay's last write while polling the host
/// page (the same wake-up), and for [`ALERT_FOR`] after an overwrite: a page overwritten again
/// (a migration's RAM stream writes it during the copy and once more at the end) is rewritten
/// within this.
const GUARD_EVERY: Duration = Duration::from_millis(1);

/// How often the guest page (and the host page's `seq_count`) is looked at while the host daemon
/// notifies and nothing has overwritten the page for [`ALERT_FOR`]: each look is a few loads
/// from the two mapped pages, but a wake-up every 1 ms cost more CPU (~1.5 % of a core on this
/// machine kind) than the subscription saves. A first overwrite is seen within this; the
/// resume that must not come before the rewrite waits for it (the destination is started with
/// `-S` and resumed once the relay holds the page: docs/GUESTS.md).
const GUARD_AT_REST: Duration = Duration::from_millis(20);

/// After an overwrite the guard looks every [`GUARD_EVERY`] for this long.
const ALERT_FOR: Duration = Duration::from_secs(60);

struct Relay {
    host: crate::page::FollowedPage,
    relay: GuestRelay,
    writer: Writer<WritableMapping>,
    /// The guest page and the state, locked for the daemon's life (one writer each).
    _guest_file: PageFile,
    _state_lock: LockFile,
    /// The state as last saved: a page that needs another one is published only after it is
    /// on disk.
    saved: GuestState,
    state_path: PathBuf,
    last_host_seq: Option<u32>,
    relayed: u64,
    /// The host page cannot be read (truncated, stuck writer, invalid): the guest page keeps
    /// its last update, whose bounds grow with time, until it can.
    holding: bool,
    /// A guest update the subscribers have not been told of.
    pending_notify: Option<u32>,
    /// The host daemon's socket, and the subscription to its notifications while it answers.
    host_socket: PathBuf,
    host_sub: Option<Subscription>,
    t_sub: Option<Token>,
    last_turn: Instant,
    /// The last look at the pages (a turn's or one between turns).
    last_look: Instant,
    /// The guard looks every GUARD_EVERY until then (an overwrite was seen).
    alert_until: Option<Instant>,
    last_file_check: Instant,
    /// The last failure to relay (logged once per cause).
    last_error: String,
    /// The relay's last write into the guest page, to see another writer's.
    guard: Guard,
    /// The VMM's doorbell (--doorbell): rung after every guest page.
    doorbell: Option<vmtime_sys::doorbell::Doorbell>,
    /// The doorbell's last failure, logged once until a ring goes through.
    doorbell_error: Option<String>,
    /// The figures (metrics and status).
    m: crate::ops::figures::RelayMetrics,
}

impl Relay {
    fn relay(&mut self, force: bool, woke: Instant) -> Result<()> {
        let host = match self.host.read() {
            Ok(h) => h,
            Err(e) => {
                if !std::mem::replace(&mut self.holding, true) {
                    tracing::warn!("{e}: the guest page keeps its last update (holdover)");
                }
                return Ok(());
            }
        };
        crate::page::warn_legacy_tai(self.host.path(), &host);
        if !force && self.last_host_seq == Some(host.seq_count()) && !self.holding {
            return Ok(());
        }
        let before = self.saved;
        let was_unconvertible = self.relay.unconvertible();
        // A host page the guest could not read or should not believe (vmtime_core::relay::
        // host_fault) is not relayed: the guest page keeps its last update, as when the host
        // page cannot be read.
        let page = match self.relay.guest_page_at(&host, Some(vmclock::counter::read())) {
            Ok(p) => p,
            Err(e) => {
                self.last_host_seq = Some(host.seq_count());
                if !std::mem::replace(&mut self.holding, true) {
                    tracing::warn!(
                        "{}: {e}: the guest page keeps its last update (holdover)",
                        self.host.path().display()
                    );
                }
                return Ok(());
            }
        };
        if std::mem::take(&mut self.holding) {
            tracing::info!("the host page is usable again: relaying");
        }
        let unconvertible = self.relay.unconvertible();
        if unconvertible && !was_unconvertible {
            tracing::warn!(
                "the host page is {} without a valid TAI offset, the guest page {}: it cannot be converted, so the guest page says UNRELIABLE until it can",
                vmclock::abi::time_type_name(host.time_type()),
                vmclock::abi::time_type_name(self.relay.state().constants.map_or(0, |c| c.1))
            );
        } else if was_unconvertible && !unconvertible {
            tracing::info!("the host page can be converted to the guest's time type again");
        }
        let after = *self.relay.state();
        if after != self.saved {
            // Includes the host marker last relayed: a relay restarted on another host's page
            // (or after the host's marker changed while it was down) then changes the guest's.
            // On disk (fsync) before the page that carries it: markers never go backwards.
            save(&self.state_path, &after)?;
            self.saved = after;
        }
        let seq = self.publish(&page);
        self.last_host_seq = Some(host.seq_count());
        self.relayed += 1;
        self.pending_notify = Some(seq);
        let disrupted = before.disruption_marker != after.disruption_marker;
        self.m.relayed_page(self.writer.memory(), self.relayed, woke.elapsed().as_secs_f64() * 1e6, disrupted);
        self.m.last_host_seq = self.last_host_seq;
        self.m.state = Some(after);
        if (before.disruption_marker, before.vm_generation) != (after.disruption_marker, after.vm_generation) {
            tracing::info!(
                "guest page {seq}: disruption marker {:#x}, generation {}",
                after.disruption_marker,
                after.vm_generation
            );
        }
        Ok(())
    }

    /// Writes a guest page (seqlock), remembers it for the guard, and rings the doorbell: the
    /// new even seq_count is in the page before the byte is sent.
    fn publish(&mut self, page: &vmclock::abi::VmclockAbi) -> u32 {
        let seq = self.writer.publish(page);
        self.guard.wrote(Written::of(page, seq));
        if let Some(d) = self.doorbell.as_mut() {
            let ring = d.ring(Instant::now());
            let problem = match ring {
                vmtime_sys::doorbell::Ring::Sent => None,
                vmtime_sys::doorbell::Ring::Full => {
                    Some("the socket is full (the VMM or the guest does not take the bytes): rings are dropped".to_string())
                }
                vmtime_sys::doorbell::Ring::NotConnected(Some(e))
                    if std::io::Error::from(e).kind() == std::io::ErrorKind::PermissionDenied =>
                {
                    Some(format!(
                        "cannot connect ({e}): the socket (or its directory) must be writable by this relay's user; give it to a group both the VMM and the relay are in (retrying at the next page, at most every {} ms)",
                        vmtime_sys::doorbell::RETRY.as_millis()
                    ))
                }
                vmtime_sys::doorbell::Ring::NotConnected(Some(e)) => Some(format!(
                    "cannot connect ({e}): is the VMM running with `vmtime qemu --notify` on this socket? (retrying at the next page, at most every {} ms)",
                    vmtime_sys::doorbell::RETRY.as_millis()
                )),
                vmtime_sys::doorbell::Ring::NotConnected(None) => None,
            };
            match problem {
                Some(p) if self.doorbell_error.as_ref() != Some(&p) => {
                    tracing::warn!("doorbell {}: {p}", d.path().display());
                    self.doorbell_error = Some(p);
                }
                None if ring == vmtime_sys::doorbell::Ring::Sent && self.doorbell_error.take().is_some() => {
                    tracing::info!("doorbell {}: ringing again", d.path().display());
                }
                _ => {}
            }
            self.m.doorbell = Some(d.figures());
            self.m.doorbell_connected = d.connected();
        }
        seq
    }

    /// Compares the guest page with this relay's last write. A page written by someone else (QEMU
    /// loading a migration's or a snapshot's RAM into the file) is a disruption for the guest:
    /// a new marker and no time until the counter map is confirmed, written at once.
    fn guard_guest_page(&mut self) -> Result<()> {
        let Verdict::Overwritten(o) = self.guard.look(self.guest_bytes().as_ref()) else { return Ok(()) };
        self.alert_until = Some(Instant::now() + ALERT_FOR);
        self.m.overwrites += 1;
        self.relay.overwritten(&o);
        tracing::warn!(
            "the guest page was written by someone else ({}): a migration or a restore; the guest gets disruption marker {:#x} and no time until the counter map is confirmed (`migrated OFFSET` or `restored OFFSET` on the control socket)",
            o.difference,
            self.relay.state().disruption_marker
        );
        let written = self.relayed;
        self.relay(true, Instant::now())?;
        if self.relayed == written {
            // The host page cannot be read (holdover): the guest still must not keep the page
            // that was written over its own. The placeholder: the markers, UNRELIABLE, no time.
            let after = *self.relay.state();
            save(&self.state_path, &after)?;
            self.saved = after;
            let page = self.relay.placeholder().context("the guest page's constants are fixed at start")?.build();
            let seq = self.publish(&page);
            self.pending_notify = Some(seq);
        }
        self.m.map_pending = self.relay.map_pending();
        Ok(())
    }

    /// The guest page's structure now (one seqlock attempt; `None`: odd or moving seq_count).
    fn guest_bytes(&self) -> Option<[u8; vmclock::abi::ABI_SIZE]> {
        seqlock::try_read(self.writer.memory().words()).map(|w| {
            let mut b = [0u8; vmclock::abi::ABI_SIZE];
            for (chunk, word) in b.chunks_exact_mut(4).zip(w) {
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            b
        })
    }

    /// The look between turns while the host daemon notifies: whether the guest page is not
    /// what this relay wrote, or the host page has another seq_count than the one relayed (a
    /// notification lost or never sent), or the host page is being held over. Loads only.
    fn pages_changed(&mut self) -> bool {
        if self.guard.look(self.guest_bytes().as_ref()) != Verdict::Ours || self.holding {
            return true;
        }
        self.host.markers().map(|m| m.seq_count) != self.last_host_seq
    }

    /// The time between two looks at the guest page.
    fn guard_every(&self, now: Instant) -> Duration {
        if self.host_sub.is_none() || self.alert_until.is_some_and(|t| now < t) {
            GUARD_EVERY
        } else {
            GUARD_AT_REST
        }
    }

    /// The counter map of a control request's words: none (the map in force), an offset (the
    /// ratio in force), or an offset, a ratio and its fraction bits.
    fn map_from(&self, words: &[&str], what: &str) -> Result<CounterMap> {
        Ok(match words {
            [] => self.relay.state().map,
            [off] => CounterMap { offset: parse_offset(off)?, ..self.relay.state().map },
            [off, ratio, bits] => {
                let ratio = ratio.parse::<TscRatio>().map_err(|e| anyhow::anyhow!("ratio {ratio:?}: {e}"))?;
                let bits = bits.parse::<FracBits>().map_err(|e| anyhow::anyhow!("fraction bits {bits:?}: {e}"))?;
                counter_map(parse_offset(off)?, ratio, bits)?.0
            }
            _ => bail!("usage: {what} [OFFSET [RATIO FRAC_BITS]]"),
        })
    }

    /// Follows the host page's file if it was replaced, and relays the new file's page (its
    /// seq_count says nothing against the old file's).
    fn follow_host_file(&mut self) -> Result<()> {
        if self.host.refresh() {
            tracing::info!("the host page was replaced: following the new file");
            self.relay(true, Instant::now())?;
        }
        Ok(())
    }

    /// A control request beyond `status`.
    fn control(&mut self, line: &str) -> Result<Answer> {
        let words: Vec<&str> = line.split_whitespace().collect();
        Ok(match words.as_slice() {
            ["subscribe"] => {
                let seq =
                    self.writer.memory().words()[vmclock::seqlock::SEQ_WORD].load(std::sync::atomic::Ordering::Acquire);
                Answer::Reply(Reply::Subscribe(u32::from_le(seq).to_string()))
            }
            ["migrated", rest @ ..] => {
                let map = self.map_from(rest, "migrated")?;
                self.relay.migrated_in(map);
                self.relay(true, Instant::now())?;
                self.m.map_pending = self.relay.map_pending();
                Answer::Status
            }
            ["hold"] => {
                // The map is about to change and nobody can tell it yet: no time until it is.
                self.relay.map_changing();
                self.relay(true, Instant::now())?;
                self.m.map_pending = self.relay.map_pending();
                Answer::Status
            }
            ["restored", rest @ ..] => {
                // The map the restored guest runs under: the one given, else the one in force.
                let map = self.map_from(rest, "restored")?;
                self.relay.restored_from_snapshot();
                self.relay.confirm_map(map);
                self.relay(true, Instant::now())?;
                self.m.map_pending = self.relay.map_pending();
                Answer::Status
            }
            _ => Answer::Unknown,
        })
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    let a: RelaySettings = args.daemon.settings(&args)?;
    let (migrated, restored) = (args.migrated, args.restored);
    let Some(guest_page) = a.guest_page.clone() else {
        bail!("no guest page: give --guest-page PATH (or [relay] guest_page in the configuration)");
    };
    let host_path = a.host_page.clone().unwrap_or_else(crate::paths::find_host_page);
    let (map, notice) = counter_map(a.tsc_offset.get(), a.tsc_ratio, a.tsc_frac_bits)?;
    if let Some(n) = notice {
        tracing::warn!("{n}");
    }
    let state_path = a.state.clone().unwrap_or_else(|| crate::paths::state_for(&guest_page));
    files::ensure_dir_for(&guest_page)?;
    files::ensure_dir_for(&state_path)?;
    // A relay whose guest page is its host page (or a link to it) would relay its own output,
    // changing markers at every turn: compared by inode, whatever the names.
    if files::same_inode(&host_path, &guest_page) {
        bail!(
            "--host-page {} and --guest-page {} are the same file: the relay would follow its own output; give the guest its own page",
            host_path.display(),
            guest_page.display()
        );
    }
    for (flag, p) in [("--host-page", &host_path), ("--guest-page", &guest_page)] {
        if files::same_inode(p, &state_path) {
            bail!("--state {} is the {flag} {}: give the state its own file", state_path.display(), p.display());
        }
    }
    let host = crate::page::FollowedPage::open(&host_path).map_err(|e| match e {
        vmtime_sys::follow::FollowError::WorldWritable { .. } | vmtime_sys::follow::FollowError::OpenDir { .. } => {
            anyhow::anyhow!("--host-page: {e}")
        }
        e => anyhow::anyhow!("no host page to follow: {e:#} (is vmtime host running? --host-page names its page)"),
    })?;
    // The guest page and the state checked before anything is made beside them (the state's
    // lock): a device, a link or a file another user planted is refused and leaves nothing
    // behind. (The state is read again under the lock.)
    files::check_page_path(&guest_page)?;
    files::read_state(&state_path)?;
    // One relay per state and per guest page: both locked for the daemon's life.
    let state_lock = LockFile::acquire(&crate::paths::lock_for(&state_path))?;
    // Only "no such file" means a first start; any other problem stops here (a lost state
    // would silently reuse or reset the guest's markers).
    let mut relay = match files::read_state(&state_path)? {
        Some(bytes) => {
            let st: GuestState = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a relay state", state_path.display()))?;
            // NOTIFICATION_PRESENT only with a doorbell to ring (a guest told to wait for
            // notifications that never come would wait forever).
            let mut r = GuestRelay::from_state(GuestState { notify: a.doorbell.is_some(), ..st });
            if st.map != map && !migrated {
                tracing::warn!("the TSC map changed since the last run without --migrated: treating it as a migration");
                r.migrated_in(map);
            }
            r
        }
        None => GuestRelay::new(map, event::random_u64()?, a.doorbell.is_some()),
    };
    if migrated {
        relay.migrated_in(map);
    }
    if restored {
        relay.restored_from_snapshot();
        relay.confirm_map(map);
    }

    // The guest page's constant fields are fixed when it is created, from the host page now
    // (or kept from the saved state): a host restarted with another time type changes nothing.
    let now = host.read().context("reading the host page")?;
    let (counter_id, time_type) = relay.fix_constants(now.counter_id(), now.time_type());
    let placeholder = relay.placeholder_for(Some(&now)).expect("the constants are fixed");
    // The guest page is written in place (the VMM maps it): a vmclock page or a zero-filled
    // file, or a new file (created with its constants); anything else is refused (before any
    // state is written).
    let (guest_file, _) = files::open_or_create_page(&guest_page, &placeholder.page_bytes())?;
    let mem = WritableMapping::new(Mapping::map(guest_file.file(), true)?)?;
    save(&state_path, relay.state())?;
    let guest_socket = crate::paths::socket_for(&guest_page);
    let host_socket = a.host_socket.clone().unwrap_or_else(|| crate::paths::socket_for(&host_path));
    let rt = Runtime::start(a.clone(), move || args.daemon.settings(&args), &guest_socket)?;
    let saved = *relay.state();
    let now = Instant::now();
    let m = crate::ops::figures::RelayMetrics {
        host_page: host_path.display().to_string(),
        guest_page: guest_page.display().to_string(),
        state: Some(saved),
        ..Default::default()
    };
    let mut r = Relay {
        host,
        relay,
        writer: Writer::new(mem),
        _guest_file: guest_file,
        _state_lock: state_lock,
        guard: Guard::new(),
        doorbell: a.doorbell.as_deref().map(vmtime_sys::doorbell::Doorbell::new),
        doorbell_error: None,
        saved,
        state_path,
        last_host_seq: None,
        relayed: 0,
        holding: false,
        pending_notify: None,
        host_sub: None,
        t_sub: None,
        host_socket,
        last_turn: now,
        last_look: now,
        alert_until: None,
        last_file_check: now,
        last_error: String::new(),
        m,
    };
    let st = *r.relay.state();
    tracing::info!("vmtime relay: {} → {}", host_path.display(), guest_page.display());
    if let Some(d) = &a.doorbell {
        tracing::info!("notifying the guest: NOTIFICATION_PRESENT, a byte to {} after every page", d.display());
    }
    tracing::info!("map: guest = ((host · {}) >> {}) + {:#x}", st.map.ratio, st.map.frac_bits, st.map.offset);
    tracing::info!(
        "guest page: counter {}, time type {} (constant for the page's life)",
        vmclock::abi::counter_name(counter_id),
        vmclock::abi::time_type_name(time_type)
    );
    tracing::info!(
        "disruption marker {:#x}, generation {}, state {}",
        st.disruption_marker,
        st.vm_generation,
        r.state_path.display()
    );
    r.relay(true, Instant::now())?;
    r.host_sub = crate::ops::control::subscribe(&r.host_socket);
    match r.host_sub {
        Some(_) => tracing::info!("following the host by notification ({})", r.host_socket.display()),
        None => tracing::warn!(
            "following the host by polling its page every 1 ms: no host daemon answers at {} (--host-socket names it)",
            r.host_socket.display()
        ),
    }
    rt.run(&mut r)
}

impl Daemon for Relay {
    type Settings = RelaySettings;
    type Figures = crate::ops::figures::RelayMetrics;
    const NAME: &'static str = "relay";
    const STOPPED: &'static str = "the guest page stays valid; the socket is removed";
    /// The log level is applied on SIGHUP; the pages, the sockets, the state, the counter map
    /// (constants of the guest's page) and the metrics address need a restart.
    const LIVE: &'static [&'static str] = &["log_level"];
    const REQUESTS: &'static str =
        "status, subscribe, hold, migrated [OFFSET [RATIO BITS]] or restored [OFFSET [RATIO BITS]]";

    /// Without notifications the host page is polled every 1 ms (and the guest page looked at
    /// in the same turn); with them, a turn on each notification, on a look that finds a page
    /// changed, and every second (the host page's file, the subscription).
    fn next_turn(&self) -> Option<Instant> {
        Some(match self.host_sub {
            Some(_) => self.last_file_check + Duration::from_secs(1),
            None => self.last_turn + Duration::from_millis(1),
        })
    }

    /// While notified: the looks at both pages, every GUARD_AT_REST (GUARD_EVERY after an
    /// overwrite).
    fn next_look(&self) -> Option<Instant> {
        self.host_sub.as_ref()?;
        Some(self.last_look + self.guard_every(self.last_look))
    }

    fn look(&mut self, now: Instant) -> bool {
        self.last_look = now;
        self.pages_changed()
    }

    fn register(&mut self, p: &mut Poller) {
        self.t_sub = self.host_sub.as_ref().map(|s| p.add(s.fd(), serve::READABLE));
    }

    fn turn(&mut self, t: &mut Turn<'_>) -> Result<Flow> {
        let woke = t.now();
        self.last_turn = woke;
        self.last_look = woke;
        let notified = self.t_sub.is_some_and(|x| t.readable(x));
        if notified && !self.host_sub.as_mut().is_some_and(|s| s.drain()) {
            tracing::warn!("the host daemon went away: polling the page every 1 ms until it is back");
            self.host_sub = None;
        }
        // A publisher that stays silent is not trusted to notify: the page is read anyway.
        let silent = self.host_sub.as_ref().is_none_or(|s| s.last_notified().elapsed() >= Duration::from_secs(2));
        let mut result = self.guard_guest_page();
        if notified || silent {
            result = result.and(self.relay(false, woke));
        }
        if self.last_file_check.elapsed() >= Duration::from_secs(1) {
            self.last_file_check = Instant::now();
            result = result.and(self.follow_host_file());
            if self.host_sub.is_none() {
                // A short wait: the loop never stalls on a publisher that accepts but never answers.
                self.host_sub = Subscription::reopen(&self.host_socket);
                if self.host_sub.is_some() {
                    tracing::info!("following the host by notification again ({})", self.host_socket.display());
                }
            }
        }
        if let Some(seq) = self.pending_notify.take() {
            t.notify(seq);
        }
        // A failure (the state cannot be saved: the page that needs it is not published) is
        // logged once per cause; the guest page holds over until it works again.
        match result {
            Err(e) if format!("{e:#}") != self.last_error => {
                self.last_error = format!("{e:#}");
                tracing::error!("cannot relay: {}", self.last_error);
            }
            Err(_) => {}
            Ok(()) => self.last_error.clear(),
        }
        self.m.holdover = self.holding;
        self.m.last_host_seq = self.last_host_seq;
        self.m.host_notified = self.host_sub.is_some();
        self.m.guard_ms = self.guard_every(woke).as_millis() as u64;
        Ok(Flow::Continue)
    }

    /// A failure is answered as `{"error": …}`.
    fn answer(&mut self, request: &str) -> Answer {
        match self.control(request) {
            Ok(a) => a,
            Err(e) => Answer::Reply(Reply::Line(serve::error_json(&format!("{e:#}")))),
        }
    }

    fn reconfigure(&mut self, _now: &RelaySettings) {}

    fn figures(&mut self) -> &mut crate::ops::figures::RelayMetrics {
        &mut self.m
    }
}
