//! The IETF/IERS `leap-seconds.list` (tzdata ships it as
//! `/usr/share/zoneinfo/leap-seconds.list`): TAI − UTC over time, and the file's expiry.
//!
//! Lines: `NTP_SECONDS  TAI_MINUS_UTC  # comment`; `#@ NTP_SECONDS` is the expiry; `#$` the last
//! update. NTP seconds count from 1900-01-01; Unix = NTP − 2_208_988_800.

use thiserror::Error;

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
pub const NTP_UNIX_OFFSET: i64 = 2_208_988_800;

/// A parsed list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeapSeconds {
    /// (Unix time the offset takes effect, TAI − UTC from then on), ascending.
    pub entries: Vec<(i64, i16)>,
    /// Unix time after which the list no longer vouches for the future.
    pub expires: i64,
}

/// A malformed list.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LeapError {
    /// A line could not be read.
    #[error("line {line}: {why}")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        why: &'static str,
    },
    /// No `#@` line.
    #[error("the list has no expiry line (#@)")]
    NoExpiry,
    /// No entries.
    #[error("the list has no leap-second entries")]
    Empty,
}

/// What the list says of TAI − UTC at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaiOffset {
    /// Known: the list is current at that instant.
    Known(i16),
    /// The list expired before that instant; this is its last value, which may be stale.
    Expired {
        /// The last value of the list.
        last: i16,
        /// When the list expired (Unix s).
        expired: i64,
    },
}

impl LeapSeconds {
    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<Self, LeapError> {
        let mut entries = Vec::new();
        let mut expires = None;
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let syntax = |why| LeapError::Syntax { line: line_no, why };
            if let Some(rest) = line.strip_prefix("#@") {
                let ntp: i64 = rest.trim().parse().map_err(|_| syntax("bad expiry"))?;
                expires = Some(ntp - NTP_UNIX_OFFSET);
                continue;
            }
            let body = line.split('#').next().unwrap_or("").trim();
            if body.is_empty() {
                continue;
            }
            let mut it = body.split_whitespace();
            let ntp: i64 = it.next().and_then(|s| s.parse().ok()).ok_or_else(|| syntax("bad NTP time"))?;
            let off: i16 = it.next().and_then(|s| s.parse().ok()).ok_or_else(|| syntax("bad offset"))?;
            let unix = ntp - NTP_UNIX_OFFSET;
            if entries.last().is_some_and(|&(t, _)| t >= unix) {
                return Err(syntax("entries out of order"));
            }
            entries.push((unix, off));
        }
        if entries.is_empty() {
            return Err(LeapError::Empty);
        }
        Ok(LeapSeconds { entries, expires: expires.ok_or(LeapError::NoExpiry)? })
    }

    /// TAI − UTC at Unix time `t` (UTC seconds). Before the first entry (1972) the list says
    /// nothing useful; the first value is returned as known, as chrony does.
    pub fn offset_at(&self, t: i64) -> TaiOffset {
        let idx = self.entries.partition_point(|&(start, _)| start <= t);
        let value = self.entries[idx.saturating_sub(1)].1;
        if t < self.expires {
            TaiOffset::Known(value)
        } else {
            TaiOffset::Expired { last: value, expired: self.expires }
        }
    }

    /// The next leap second after `t`, if the list announces one: (Unix time of the first second
    /// after the leap, +1 for an insertion or −1 for a deletion).
    pub fn next_after(&self, t: i64) -> Option<(i64, i8)> {
        let idx = self.entries.partition_point(|&(start, _)| start <= t);
        let (start, off) = *self.entries.get(idx)?;
        let prev = self.entries[idx.checked_sub(1)?].1;
        Some((start, (off - prev).signum() as i8))
    }
}

/// Where TAI − UTC was found, and how far it can be trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// Known now, from `source`.
    Known {
        /// TAI − UTC, s.
        offset: i16,
        /// Where it came from, for the log.
        source: String,
    },
    /// Only a stale value: the list expired.
    Stale {
        /// The list's last TAI − UTC, s.
        offset: i16,
        /// Why it is stale, for the log.
        why: String,
    },
    /// Nothing at all.
    Unknown {
        /// Why, for the log.
        why: String,
    },
}

/// The one choice of TAI − UTC source at Unix time `now_s`: the kernel's (adjtimex `tai`) when it
/// is set (non-zero), else the leap-second list named `list`, whose text is `text` (or the error
/// reading it gave).
pub fn choose(kernel_tai: i32, list: &str, text: Result<&str, &dyn std::fmt::Display>, now_s: i64) -> Found {
    if kernel_tai != 0 {
        return Found::Known { offset: kernel_tai as i16, source: "the kernel (adjtimex tai)".into() };
    }
    let text = match text {
        Ok(t) => t,
        Err(e) => {
            return Found::Unknown { why: format!("the kernel's TAI offset is unset and {list} cannot be read: {e}") }
        }
    };
    match LeapSeconds::parse(text) {
        Err(e) => Found::Unknown { why: format!("the kernel's TAI offset is unset and {list} is malformed: {e}") },
        Ok(l) => match l.offset_at(now_s) {
            TaiOffset::Known(offset) => Found::Known { offset, source: list.to_string() },
            TaiOffset::Expired { last, expired } => {
                let d = vmclock::time::civil_from_days(expired.div_euclid(86_400));
                Found::Stale {
                    offset: last,
                    why: format!(
                        "the kernel's TAI offset is unset and {list} expired on {:04}-{:02}-{:02} (its last value is {last} s)",
                        d.0, d.1, d.2
                    ),
                }
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
#\tcomment
#$\t3676924800
#@\t3991593600
2272060800\t10\t# 1 Jan 1972
2287785600\t11\t# 1 Jul 1972
3644697600\t36\t# 1 Jul 2015
3692217600\t37\t# 1 Jan 2017
#h\t49db2447 571e5e1b
";

    #[test]
    fn parses_and_answers() {
        let l = LeapSeconds::parse(SAMPLE).unwrap();
        assert_eq!(l.expires, 1_782_604_800); // 2026-06-28
        assert_eq!(l.entries.len(), 4);
        assert_eq!(l.offset_at(1_483_228_800 - 1), TaiOffset::Known(36)); // 2016-12-31T23:59:59
        assert_eq!(l.offset_at(1_483_228_800), TaiOffset::Known(37)); // 2017-01-01
        assert_eq!(l.offset_at(1_795_000_000), TaiOffset::Expired { last: 37, expired: 1_782_604_800 });
        assert_eq!(l.next_after(1_400_000_000), Some((1_435_708_800, 1)));
        assert_eq!(l.next_after(1_500_000_000), None);
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(LeapSeconds::parse(""), Err(LeapError::Empty));
        assert_eq!(LeapSeconds::parse("2272060800 10\n"), Err(LeapError::NoExpiry));
        assert!(matches!(LeapSeconds::parse("#@ 1\nabc 10\n"), Err(LeapError::Syntax { line: 2, .. })));
        assert!(matches!(LeapSeconds::parse("#@ 1\n20 10\n10 11\n"), Err(LeapError::Syntax { line: 3, .. })));
    }

    #[test]
    fn chooses_the_kernel_then_the_list() {
        let unreadable: &dyn std::fmt::Display = &"No such file";
        // The kernel's offset wins whenever it is set, whatever the list says.
        assert_eq!(
            choose(37, "L", Err(unreadable), 0),
            Found::Known { offset: 37, source: "the kernel (adjtimex tai)".into() }
        );
        // Unset kernel: the list, current before its expiry, stale after it.
        assert_eq!(choose(0, "L", Ok(SAMPLE), 1_700_000_000), Found::Known { offset: 37, source: "L".into() });
        assert_eq!(
            choose(0, "L", Ok(SAMPLE), 1_795_000_000),
            Found::Stale {
                offset: 37,
                why: "the kernel's TAI offset is unset and L expired on 2026-06-28 (its last value is 37 s)".into()
            }
        );
        // Unset kernel and no usable list: unknown, saying why.
        assert_eq!(
            choose(0, "L", Err(unreadable), 0),
            Found::Unknown { why: "the kernel's TAI offset is unset and L cannot be read: No such file".into() }
        );
        assert!(matches!(choose(0, "L", Ok(""), 0), Found::Unknown { why } if why.contains("L is malformed")));
    }
}
