//! Linux system interfaces for vmtime. This crate and `vmclock` are the only ones with `unsafe`;
//! every block names the invariant it relies on.
//!
//! Nothing here writes a clock unless the function says so in its name (`*_write`), and none of
//! those exist in this build's read-only modules.

pub mod clock;
pub mod event;
pub mod feed;
pub mod files;
pub mod follow;
pub mod pagefile;
pub mod phc;
pub mod serve;
pub mod signals;
pub mod timex;

pub use clock::{aba_sample, gettime, AbaSample, ClockId};
pub use timex::{read_timex, KernelTimex};
