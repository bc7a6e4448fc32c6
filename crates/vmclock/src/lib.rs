//! The Linux vmclock ABI, exactly.
//!
//! * [`abi`]: the page layout (`struct vmclock_abi`, version 1, 112 bytes, little-endian),
//!   proven by const assertions, and every named constant.
//! * [`Snapshot`]: a validated copy; absent fields are `None`, never zero.
//! * [`seqlock`]: the fenced reader (bounded wait, never spins forever) and writer.
//! * [`time`]: typed fixed-point instants ([`Timestamp<Tai>`], [`Timestamp<Utc>`]).
//! * [`Clock`]: bounded `now()` from a mapped page with no system call.
//! * [`PageBuilder`]: writes valid pages for producers, tests and demos.
//! * [`realtime`]: readings on CLOCK_REALTIME's scale (ns, rounded outwards), the C API's error
//!   codes and texts, a caller's cap ([`realtime::now_within`]) and the bound of a past
//!   CLOCK_REALTIME timestamp ([`realtime::bound_realtime`]).
//!
//! No I/O beyond mapping a page.
#![cfg_attr(loom, allow(dead_code, unused_imports))]

pub mod abi;
pub mod builder;
#[cfg(not(loom))]
pub mod clock;
pub mod counter;
pub mod error;
#[cfg(not(loom))]
pub mod guard;
#[cfg(all(feature = "vm-memory", not(loom)))]
pub mod guest_memory;
#[cfg(not(loom))]
pub mod map;
#[cfg(not(loom))]
pub mod realtime;
pub mod seqlock;
pub mod snapshot;
#[doc(hidden)]
pub mod test_support;
pub mod time;

pub use abi::VmclockAbi;
pub use builder::{PageBuilder, Period};
#[cfg(not(loom))]
pub use clock::{now_at, Cached, Clock, Now};
pub use error::{ClockError, PageError, ReadError, TimeError};
#[cfg(not(loom))]
pub use map::{Mapping, WritableMapping};
pub use seqlock::{PageBuf, PageMemory, WritableMemory, Writer};
pub use snapshot::{Bounded, PageTime, Reference, Snapshot};
pub use time::{Monotonic, Span, Tai, Timescale, Timestamp, Utc};
