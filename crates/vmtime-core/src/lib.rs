//! The sans-IO logic of vmtime. Inputs in, results and `#[must_use]` actions out; nothing here
//! reads a clock or touches the system.
//!
//! Each state machine is driven the same way: construct it from its settings, hand it an
//! observation the caller made (pages, (clock, counter, clock) samples, the kernel's NTP state),
//! and carry out the action it returns. The examples below use a made-up 1 GHz counter.
//!
//! **Host publisher** ([`host::Publisher`]): the first observation fixes the RAW baseline; later
//! ones return the page to write.
//!
//! ```
//! use vmtime_core::host::{HostAction, HostConfig, Observation, Publisher, Sampled};
//! use vmtime_core::kernel::KernelTimex;
//! use vmtime_core::AbaSample;
//!
//! const NS: i128 = 1_000_000_000;
//! const TAI0: i128 = 1_795_000_037 * NS; // CLOCK_TAI at counter 0
//! let kernel = KernelTimex { tick: 10_000, maxerror_us: 100, esterror_us: 10, tai: 37, ..KernelTimex::default() };
//! let at = |t: i128| {
//!     let c = t as u64; // 1 GHz: one tick per ns
//!     let raw = AbaSample { before_ns: t - 5, counter: c, after_ns: t + 5 };
//!     let tai = [AbaSample { before_ns: TAI0 + t - 5, counter: c, after_ns: TAI0 + t + 5 }];
//!     (raw, tai)
//! };
//! let mut p = Publisher::new(HostConfig::default());
//! let (raw, samples) = at(NS);
//! let obs = Observation { raw, clock: Sampled::Tai, samples: &samples, kernel, kernel_page: None };
//! assert_eq!(p.handle_observation(&obs), None); // the baseline
//! let (raw, samples) = at(3 * NS);
//! let obs = Observation { raw, clock: Sampled::Tai, samples: &samples, kernel, kernel_page: None };
//! let Some(HostAction::Publish { page, reason, .. }) = p.handle_observation(&obs) else { panic!("no page") };
//! // The caller writes `page` under the seqlock and notifies; here, read it back.
//! let snap = vmclock::Snapshot::new(page, 4096).unwrap();
//! assert_eq!(snap.tai_minus_utc(), Some(37));
//! println!("published: {reason}");
//! ```
//!
//! **Relay** ([`relay::GuestRelay`]): a host page in, the guest's page out (through the guest's
//! counter map, with the guest's own markers).
//!
//! ```
//! use vmclock::abi::{counter_id, status};
//! use vmclock::{PageBuilder, Period, Snapshot, Tai, Timestamp};
//! use vmtime_core::relay::{CounterMap, GuestRelay};
//!
//! let host = PageBuilder::new()
//!     .reference(counter_id::X86_TSC, 1_000, Timestamp::<Tai>::from_parts(1_795_000_037, 0), Period::from_hz(1_000_000_000).unwrap())
//!     .tai_minus_utc(37)
//!     .status(status::SYNCHRONIZED)
//!     .maxerror(1_000, 1 << 20)
//!     .build();
//! let host = Snapshot::new(host, 4096).unwrap();
//! // The guest's counter reads 5 more than the host's; its markers start at 1000.
//! let mut relay = GuestRelay::new(CounterMap::offset_only(5), 1000, true);
//! let guest = relay.guest_page(&host).unwrap(); // write it into the guest's page
//! assert_eq!((guest.counter_value.get(), guest.disruption_marker.get()), (1_005, 1000));
//! // After a migration the next page carries a new marker.
//! relay.migrated_in(CounterMap::offset_only(99));
//! assert_eq!(relay.guest_page(&host).unwrap().disruption_marker.get(), 1001);
//! ```
//!
//! **Guest discipline** ([`sync::Discipline`]): a page and samples of the guest kernel in, the
//! `adjtimex` calls to make out.
//!
//! ```
//! use vmclock::abi::{counter_id, status};
//! use vmclock::{PageBuilder, Period, Snapshot, Tai, Timestamp};
//! use vmtime_core::kernel::KernelTimex;
//! use vmtime_core::sync::{Discipline, SyncAction, SyncConfig, SyncObservation};
//! use vmtime_core::AbaSample;
//!
//! const NS: i128 = 1_000_000_000;
//! // The page: TAI 1_795_000_037 s (UTC 1_795_000_000 s) at counter 10^13, 1 GHz.
//! let page = PageBuilder::new()
//!     .reference(counter_id::X86_TSC, 10_000_000_000_000, Timestamp::<Tai>::from_parts(1_795_000_037, 0), Period::from_hz(1_000_000_000).unwrap())
//!     .tai_minus_utc(37)
//!     .status(status::SYNCHRONIZED)
//!     .maxerror(1_000, 0)
//!     .build();
//! let page = Snapshot::new(page, 4096).unwrap();
//! // The guest's CLOCK_REALTIME is 3 s behind at that counter.
//! let c = 10_000_000_000_000;
//! let rt = 1_795_000_000 * NS - 3 * NS;
//! let samples = [AbaSample { before_ns: rt - 5, counter: c, after_ns: rt + 5 }];
//! let raw = AbaSample { before_ns: -5, counter: c, after_ns: 5 };
//! let mut d = Discipline::new(SyncConfig::default());
//! let actions = d.handle_observation(&SyncObservation { page, raw, samples: &samples, kernel: KernelTimex::default() });
//! // At start-up a large offset is stepped; the caller makes each call with adjtimex.
//! assert!(actions.contains(&SyncAction::Step { delta_ns: 3_000_000_000 }), "{actions:?}");
//! for a in &actions {
//!     println!("would {a}");
//! }
//! ```
//!
//! **Feeds** ([`feed::chrony::ChronyFeed`], [`feed::clockbound::ClockBoundFeed`]): the page
//! before and after a burst of (REALTIME, counter, REALTIME) samples in, a sample to send or a
//! segment to write out.
//!
//! ```
//! use vmclock::abi::status;
//! use vmclock::{PageBuilder, Period, Snapshot, Timestamp, Utc};
//! use vmtime_core::feed::chrony::{ChronyAction, ChronyFeed};
//! use vmtime_core::feed::clockbound::{CbStatus, ClockBoundConfig, ClockBoundFeed};
//! use vmtime_core::feed::Observation;
//! use vmtime_core::AbaSample;
//!
//! const NS: i128 = 1_000_000_000;
//! // A page on this CPU's counter, UTC 1_790_000_000 s + 250 µs at counter 10^9.
//! let page = PageBuilder::new()
//!     .reference(vmclock::counter::NATIVE, 1_000_000_000, Timestamp::<Utc>::from_parts(1_790_000_000, ((250_000u128 << 64) / 1_000_000_000) as u64), Period::from_hz(1_000_000_000).unwrap())
//!     .status(status::SYNCHRONIZED)
//!     .maxerror(1_000, 1 << 20)
//!     .build();
//! let page = Snapshot::new(page, 4096).unwrap();
//! // CLOCK_REALTIME 1_790_000_000 s at that counter: the page is 250 µs ahead.
//! let t = 1_790_000_000 * NS;
//! let samples = [AbaSample { before_ns: t - 10, counter: 1_000_000_000, after_ns: t + 10 }];
//! let obs = Observation { before: page, after: page, samples: &samples, mono_ns: 0 };
//! let mut feed = ChronyFeed::new(NS);
//! match feed.handle(&obs) {
//!     // Send `s.to_bytes()` to chronyd's SOCK refclock.
//!     ChronyAction::Send(s) => assert!((s.offset - 250e-6).abs() < 1e-7, "{}", s.offset),
//!     // Nothing this time, for the reason given (on a CPU without a counter vmclock knows).
//!     ChronyAction::Hold(h) => println!("holding: {}", h.describe()),
//! }
//! // ClockBound: a body for each segment, always (Unknown when nothing can be claimed); the
//! // caller writes `eb.to_bytes()` into shm0 and `eb3.to_bytes()` into shm1.
//! let mut cb = ClockBoundFeed::new(ClockBoundConfig::default());
//! let eb = cb.handle(&obs, 0);
//! let eb3 = cb.v3(&eb);
//! if eb.status == CbStatus::Synchronized {
//!     assert!(eb.bound_ns >= 250_000, "the bound covers the page's offset: {}", eb.bound_ns);
//! }
//! assert_eq!(eb3.status, eb.status);
//! ```
#![forbid(unsafe_code)]

pub mod cadence;
pub mod check;
pub mod crosscheck;
pub mod feed;
pub mod host;
pub mod kernel;
pub mod leapsecs;
pub mod oneshot;
pub mod overwrite;
pub mod phc;
pub mod relay;
pub mod rival;
pub mod sanity;
pub mod stats;
pub mod sync;

/// ns since an epoch → 64.64 fixed-point seconds, rounded down or (`ceil`) up.
pub(crate) fn ns_to_frac(ns: i128, ceil: bool) -> i128 {
    const NS: i128 = 1_000_000_000;
    let (s, r) = (ns.div_euclid(NS), ns.rem_euclid(NS));
    let f = r << 64;
    (s << 64) + if ceil { (f + NS - 1) / NS } else { f / NS }
}

/// One (kernel clock, counter, kernel clock) reading: the counter was read at an instant
/// between `before_ns` and `after_ns` of the kernel clock (ns since its epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbaSample {
    /// The clock before the counter read, ns.
    pub before_ns: i128,
    /// The counter.
    pub counter: u64,
    /// The clock after the counter read, ns.
    pub after_ns: i128,
}

impl AbaSample {
    /// The width of the window, ns.
    pub fn window_ns(&self) -> i128 {
        self.after_ns - self.before_ns
    }
    /// The middle of the window, ns (rounded down).
    pub fn mid_ns(&self) -> i128 {
        self.before_ns + self.window_ns().div_euclid(2)
    }
}
