//! The one-shot commands.

pub mod check;
pub mod gen;
pub mod generate;
pub mod kvm_tsc;
pub mod man;
pub mod now;
pub mod phc;
pub mod qemu;
pub mod show;
pub mod sim;
pub mod status;
pub mod waitsync;
pub mod watch;
