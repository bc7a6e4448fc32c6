//! The daemons: each one's decisions and wiring.

pub mod feed;
pub mod feed_service;
pub mod host;
pub mod relay;
pub mod sync;
