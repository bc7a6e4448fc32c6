//! Operations plumbing shared by the daemons: configuration, logging, metrics, systemd
//! supervision and the control socket.

pub mod config;
pub mod control;
pub mod figures;
pub mod logging;
pub mod metrics;
pub mod runtime;
pub mod systemd;
