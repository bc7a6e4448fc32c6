//! The `vmtime` binary's crate, as a library so its daemons and commands are tested without
//! spawning processes.
//!
//! - [`daemons`]: the long-running services (`host`, `relay`, `sync`, `feed chrony|clockbound`):
//!   each one's decisions and wiring; the logic itself is in `vmtime_core`.
//! - [`commands`]: the one-shot commands (`show`, `check`, `now`, `gen`, `status`, `watch`, …).
//! - [`ops`]: operations plumbing shared by the daemons: configuration, logging, metrics,
//!   systemd supervision, the control socket.
//! - [`paths`]: where pages, sockets, states and locks live by convention.
//! - [`values`]: the validated value types of flags and configuration keys.
//! - [`cli`], [`guest_cli`]: the command lines of the full binary (clap) and of the guest binary
//!   (by hand, tested against clap's).
#![forbid(unsafe_code)]

pub mod cli;
pub mod commands;
pub mod daemons;
pub mod guest_cli;
pub mod ops;
pub mod page;
pub mod paths;
pub mod tai;
pub mod values;
