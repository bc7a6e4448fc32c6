//! Where the TAI − UTC offset comes from on this machine: the kernel (adjtimex `tai`), else the
//! system leap-second list.

use std::path::Path;
use vmtime_core::leapsecs::{LeapSeconds, TaiOffset};

/// tzdata's copy of the IERS list.
pub const LEAP_SECONDS_LIST: &str = "/usr/share/zoneinfo/leap-seconds.list";

/// The offset and how far it can be trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// Known now, from `source`.
    Known { offset: i16, source: String },
    /// Only a stale value: the list expired.
    Stale { offset: i16, why: String },
    /// Nothing at all.
    Unknown { why: String },
}

/// Looks for TAI − UTC at Unix time `now_s`.
pub fn find(kernel_tai: i32, list: &Path, now_s: i64) -> Found {
    if kernel_tai != 0 {
        return Found::Known { offset: kernel_tai as i16, source: "the kernel (adjtimex tai)".into() };
    }
    let text = match std::fs::read_to_string(list) {
        Ok(t) => t,
        Err(e) => {
            return Found::Unknown {
                why: format!("the kernel's TAI offset is unset and {} cannot be read: {e}", list.display()),
            }
        }
    };
    match LeapSeconds::parse(&text) {
        Err(e) => {
            Found::Unknown { why: format!("the kernel's TAI offset is unset and {} is malformed: {e}", list.display()) }
        }
        Ok(l) => match l.offset_at(now_s) {
            TaiOffset::Known(offset) => Found::Known { offset, source: list.display().to_string() },
            TaiOffset::Expired { last, expired } => {
                let d = vmclock::time::civil_from_days(expired.div_euclid(86_400));
                Found::Stale {
                    offset: last,
                    why: format!(
                        "the kernel's TAI offset is unset and {} expired on {:04}-{:02}-{:02} (its last value is {last} s)",
                        list.display(),
                        d.0,
                        d.1,
                        d.2
                    ),
                }
            }
        },
    }
}
