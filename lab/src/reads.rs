//! The guest's application reads, logged for judging: `vmtime-lab reads` (in the guest) reads
//! the time through the driver's mmap (`vmclock::Clock` on /dev/vmclock0, the counter read
//! inside the seqlock, as every application does) every `--every-us`, and appends one record per
//! read to a log in shared memory (an ivshmem BAR the host maps as a file; with `master=on` it
//! travels with the VM, so the destination's file holds the whole log).
//!
//! The host judges each bounded read against its own clock at the instant the guest read its
//! counter: it harvests the records while the VM is stopped (so every record since the last
//! harvest was made in the segment that just ended, under that segment's measured counter map).
//!
//! Log layout (little-endian): word64 0 = records written; records of [`RECORD`] bytes from
//! byte 64: guest counter (u64), UTC time ns (i64), bound half-width ns (u64; 0 = no bound: the
//! page was not SYNCHRONIZED/FREERUNNING or gave no maxerror), disruption marker (u64), status
//! (u64), the ClockBound 2.x segment's clock_status at that read (i64; -1 without one), and how
//! many datagrams the chrony feed had sent to the socket this process listens on (u64), and the
//! guest's CLOCK_REALTIME read just after the page (i64 ns: what `vmtime sync` made of it).

use anyhow::{Context, Result};
use std::path::Path;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::time::Duration;

pub const RECORD: usize = 64;
const HEAD: usize = 64;

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// The page to read (through the driver's mmap).
    #[arg(long)]
    page: std::path::PathBuf,
    /// The log (an ivshmem BAR's sysfs resource2).
    #[arg(long)]
    log: std::path::PathBuf,
    /// The spacing of reads, µs.
    #[arg(long, default_value_t = 500)]
    every_us: u64,
    /// A ClockBound 2.x segment (`vmtime feed clockbound`'s shm0): its clock_status is logged.
    #[arg(long)]
    clockbound: Option<std::path::PathBuf>,
    /// Listen here as chronyd would (a datagram socket `vmtime feed chrony --socket` sends
    /// to): the samples received are counted.
    #[arg(long)]
    chrony_socket: Option<std::path::PathBuf>,
}

/// One read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Read {
    pub counter: u64,
    pub time_ns: i64,
    pub half_ns: u64,
    pub marker: u64,
    pub status: u64,
    /// ClockBound's clock_status (0 Unknown, 1 Synchronized, 2 FreeRunning, 3 Disrupted; -1 none).
    pub cb_status: i64,
    /// chrony samples received so far.
    pub chrony: u64,
    /// The guest's CLOCK_REALTIME just after the read, ns.
    pub realtime_ns: i64,
}

impl Read {
    pub fn bounded(&self) -> bool {
        self.half_ns > 0
    }
}

/// The guest side: reads forever (until the VM is gone), one record per read.
pub fn serve(a: &Args) -> Result<()> {
    let clock = vmclock::Clock::open(&a.page).with_context(|| format!("open {}", a.page.display()))?;
    // A sysfs resource file can only be mapped (the kernel fixes its size): all of it.
    let log = vmtime_sys::files::SharedWords::map(&a.log).with_context(|| format!("map {}", a.log.display()))?;
    let cap = (log.words().len() * 8 - HEAD) / RECORD;
    let mut n = get64(&log, 0);
    let chrony = match &a.chrony_socket {
        Some(p) => {
            let _ = std::fs::remove_file(p);
            let s = std::os::unix::net::UnixDatagram::bind(p).with_context(|| format!("bind {}", p.display()))?;
            s.set_nonblocking(true)?;
            Some(s)
        }
        None => None,
    };
    let mut samples = 0u64;
    let mut buf = [0u8; 256];
    loop {
        if let Some(s) = &chrony {
            while s.recv(&mut buf).is_ok() {
                samples += 1;
            }
        }
        // The segment's clock_status (offset 68, native-endian i32), -1 when it cannot be read.
        let cb = a.clockbound.as_ref().map_or(-1, |p| {
            std::fs::read(p)
                .ok()
                .filter(|b| b.len() >= 72)
                .map_or(-1, |b| i64::from(i32::from_ne_bytes(b[68..72].try_into().expect("4 bytes"))))
        });
        if n as usize >= cap {
            return Ok(()); // full: the host has what it needs
        }
        let r = match clock.now() {
            Ok(now) => {
                let (t, half) = match now.utc() {
                    Ok(b) if now.is_reliable() => {
                        let half =
                            b.maxerror.and_then(|m| m.checked_mul(1_000_000_000)).map_or(0, |x| (x >> 64) as u64 + 1);
                        (b.time.as_nanos() as i64, half)
                    }
                    Ok(b) => (b.time.as_nanos() as i64, 0),
                    Err(_) => (0, 0),
                };
                Read {
                    counter: now.counter,
                    time_ns: t,
                    half_ns: half,
                    marker: now.disruption_marker,
                    status: u64::from(now.status),
                    cb_status: cb,
                    chrony: samples,
                    realtime_ns: realtime(),
                }
            }
            Err(_) => Read {
                counter: vmclock::counter::read(),
                time_ns: 0,
                half_ns: 0,
                marker: 0,
                status: 255,
                cb_status: cb,
                chrony: samples,
                realtime_ns: realtime(),
            },
        };
        let at = HEAD + n as usize * RECORD;
        write_record(&log, at, &r);
        n += 1;
        put64(&log, 0, n);
        std::thread::sleep(Duration::from_micros(a.every_us));
    }
}

fn realtime() -> i64 {
    vmtime_sys::clock::gettime(vmtime_sys::clock::ClockId::Realtime).map_or(i64::MIN, |t| t as i64)
}

fn put64(m: &vmtime_sys::files::SharedWords, byte: usize, v: u64) {
    // Little-endian in the file (x86 guests and hosts).
    m.words()[byte / 8].store(v.to_le(), Release);
}

fn get64(m: &vmtime_sys::files::SharedWords, byte: usize) -> u64 {
    u64::from_le(m.words()[byte / 8].load(Acquire))
}

fn write_record(m: &vmtime_sys::files::SharedWords, at: usize, r: &Read) {
    for (i, v) in
        [r.counter, r.time_ns as u64, r.half_ns, r.marker, r.status, r.cb_status as u64, r.chrony, r.realtime_ns as u64]
            .into_iter()
            .enumerate()
    {
        put64(m, at + 8 * i, v);
    }
}

/// The host side: the log file, harvested while the VM is stopped.
pub struct Log {
    path: std::path::PathBuf,
    /// Records already taken.
    pub taken: u64,
}

impl Log {
    pub fn new(path: &Path) -> Log {
        Log { path: path.to_path_buf(), taken: 0 }
    }

    /// Follows the guest to another file (the destination's, after a migration).
    pub fn moved_to(&mut self, path: &Path) {
        self.path = path.to_path_buf();
    }

    /// The records written since the last harvest. After a `loadvm` the count may be lower than
    /// what was taken (the snapshot's log): then it restarts from there.
    pub fn harvest(&mut self) -> Result<Vec<Read>> {
        let bytes = std::fs::read(&self.path).with_context(|| format!("read {}", self.path.display()))?;
        let u = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let n = u(0).min(((bytes.len() - HEAD) / RECORD) as u64);
        if n < self.taken {
            self.taken = n;
        }
        let out = (self.taken..n)
            .map(|i| {
                let at = HEAD + i as usize * RECORD;
                Read {
                    counter: u(at),
                    time_ns: u(at + 8) as i64,
                    half_ns: u(at + 16),
                    marker: u(at + 24),
                    status: u(at + 32),
                    cb_status: u(at + 40) as i64,
                    chrony: u(at + 48),
                    realtime_ns: u(at + 56) as i64,
                }
            })
            .collect();
        self.taken = n;
        Ok(out)
    }

    /// The last record written, read while the guest runs (the file is the BAR's memory).
    pub fn peek_last(&self) -> Result<Option<Read>> {
        use std::os::unix::fs::FileExt as _;
        let f = std::fs::File::open(&self.path)?;
        let mut head = [0u8; 8];
        f.read_exact_at(&mut head, 0)?;
        let n = u64::from_le_bytes(head);
        if n == 0 {
            return Ok(None);
        }
        let mut b = [0u8; RECORD];
        f.read_exact_at(&mut b, (HEAD + (n as usize - 1) * RECORD) as u64)?;
        let u = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        Ok(Some(Read {
            counter: u(0),
            time_ns: u(8) as i64,
            half_ns: u(16),
            marker: u(24),
            status: u(32),
            cb_status: u(40) as i64,
            chrony: u(48),
            realtime_ns: u(56) as i64,
        }))
    }

    /// After a `loadvm` (the VM stopped): the log is the snapshot's; what follows is new.
    pub fn rewind(&mut self) -> Result<()> {
        let mut head = [0u8; 8];
        use std::io::Read as _;
        std::fs::File::open(&self.path)?.read_exact(&mut head)?;
        self.taken = u64::from_le_bytes(head);
        Ok(())
    }
}
