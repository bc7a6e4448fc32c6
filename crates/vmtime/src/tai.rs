//! Where the TAI − UTC offset comes from on this machine: the kernel (adjtimex `tai`), else the
//! system leap-second list. The choice is vmtime-core's ([`vmtime_core::leapsecs::choose`]);
//! this reads the list.

use std::path::Path;
pub use vmtime_core::leapsecs::Found;

/// tzdata's copy of the IERS list.
pub const LEAP_SECONDS_LIST: &str = "/usr/share/zoneinfo/leap-seconds.list";

/// Looks for TAI − UTC at Unix time `now_s`.
pub fn find(kernel_tai: i32, list: &Path, now_s: i64) -> Found {
    let name = list.display().to_string();
    if kernel_tai != 0 {
        return vmtime_core::leapsecs::choose(kernel_tai, &name, Ok(""), now_s);
    }
    match std::fs::read_to_string(list) {
        Ok(t) => vmtime_core::leapsecs::choose(kernel_tai, &name, Ok(&t), now_s),
        Err(e) => vmtime_core::leapsecs::choose(kernel_tai, &name, Err(&e), now_s),
    }
}
