//! The kernel's NTP state as `adjtimex(2)` reports it, and what follows from it: whether the
//! kernel is synchronised, its leap-second state, and the rate of its clock relative to
//! CLOCK_MONOTONIC_RAW.
//!
//! Rate model (kernel/time/ntp.c): every second the kernel advances CLOCK_REALTIME by
//! `tick_length` = tick·USER_HZ·1000 ns + freq·1000/2^16 ns + the PLL's chunk of the remaining
//! offset, `offset >> (SHIFT_PLL + constant)` with SHIFT_PLL = 2, while CLOCK_MONOTONIC_RAW
//! advances by 10^9 ns. So REALTIME runs at `tick_length / 10^9` times the raw rate.

use serde::Serialize;

/// `STA_PLL`.
pub const STA_PLL: i32 = 0x0001;
/// `STA_INS`: insert a leap second at the next midnight UTC.
pub const STA_INS: i32 = 0x0010;
/// `STA_DEL`: delete a leap second at the next midnight UTC.
pub const STA_DEL: i32 = 0x0020;
/// `STA_UNSYNC`: the clock is not synchronised.
pub const STA_UNSYNC: i32 = 0x0040;
/// `STA_FREQHOLD`.
pub const STA_FREQHOLD: i32 = 0x0080;
/// `STA_NANO`: offsets in ns.
pub const STA_NANO: i32 = 0x2000;
/// `TIME_OK`.
pub const TIME_OK: i32 = 0;
/// `TIME_INS`: a leap second will be inserted at midnight.
pub const TIME_INS: i32 = 1;
/// `TIME_DEL`: a leap second will be deleted at midnight.
pub const TIME_DEL: i32 = 2;
/// `TIME_OOP`: the inserted leap second is in progress.
pub const TIME_OOP: i32 = 3;
/// `TIME_WAIT`: a leap second has just happened.
pub const TIME_WAIT: i32 = 4;
/// `TIME_ERROR`: not synchronised.
pub const TIME_ERROR: i32 = 5;
/// USER_HZ: `tick` is µs per 1/USER_HZ s.
pub const USER_HZ: i64 = 100;
/// The kernel's maxerror limit (NTP_PHASE_LIMIT): 16 s, in µs.
pub const MAXERROR_LIMIT_US: i64 = 16_000_000;
/// The PLL's fixed shift.
pub const SHIFT_PLL: i64 = 2;

/// What `adjtimex` (modes 0) reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize)]
pub struct KernelTimex {
    /// The return value (TIME_OK … TIME_ERROR).
    pub state: i32,
    /// Frequency offset, 2^-16 ppm.
    pub freq: i64,
    /// Remaining PLL offset, ns (converted from µs when STA_NANO is clear).
    pub offset_ns: i64,
    /// PLL time constant as the kernel holds it.
    pub constant: i64,
    /// µs per 1/USER_HZ s (10_000 nominal).
    pub tick: i64,
    /// STA_* bits.
    pub status: i32,
    /// Maximum error, µs.
    pub maxerror_us: i64,
    /// Estimated error, µs.
    pub esterror_us: i64,
    /// TAI − UTC (0: unset).
    pub tai: i32,
}

impl KernelTimex {
    /// What is assumed when the kernel's NTP state cannot be read (a seccomp filter that denies
    /// `adjtimex`, as container runtimes' and systemd-nspawn's do without CAP_SYS_TIME): nothing
    /// is known of it, so the clock is taken as the kernel reports a clock no daemon vouches
    /// for: not synchronised (`STA_UNSYNC`, `TIME_ERROR`), maxerror and esterror at the kernel's
    /// 16 s ceiling, nominal rate (tick 10 000, freq 0), no leap second announced, TAI − UTC
    /// unset. A publisher fed this says FREERUNNING with a 16 s bound: honest whatever the
    /// kernel's real state (the rate the kernel applies, at most ±500 ppm from its frequency
    /// and PLL, is inside the page's default tolerance, and the page is republished when it
    /// drifts from the sampled clock).
    pub fn unreadable() -> Self {
        KernelTimex {
            state: TIME_ERROR,
            freq: 0,
            offset_ns: 0,
            constant: 0,
            tick: 10_000,
            status: STA_UNSYNC,
            maxerror_us: MAXERROR_LIMIT_US,
            esterror_us: MAXERROR_LIMIT_US,
            tai: 0,
        }
    }

    /// Synchronised: STA_UNSYNC clear and maxerror below 16 s.
    pub fn synchronized(&self) -> bool {
        self.status & STA_UNSYNC == 0 && self.maxerror_us < MAXERROR_LIMIT_US
    }

    /// What a host publisher says once, at start, when this clock is not synchronised: why every
    /// bound it publishes is about ±16 s and its status FREERUNNING, and the fix. `None` when
    /// synchronised.
    pub fn unsynchronised_advice(&self) -> Option<String> {
        if self.synchronized() {
            return None;
        }
        let why = if self.status & STA_UNSYNC != 0 {
            format!("adjtimex says STA_UNSYNC, maxerror {:.1} s", self.maxerror_us as f64 / 1e6)
        } else {
            format!("adjtimex says maxerror {:.1} s, at the kernel's 16 s limit", self.maxerror_us as f64 / 1e6)
        };
        Some(format!(
            "this machine's clock is not synchronised ({why}): no NTP daemon disciplines it, so the page can \
             promise nothing better: every bound is about ±16 s and its status FREERUNNING. Fix: run chrony \
             or ntpd on this host (Debian: apt install chrony); the page follows once the kernel is \
             synchronised, with no restart"
        ))
    }

    /// The PLL's correction during the current second, ns. At each second the kernel takes
    /// `chunk = offset >> s` (s = SHIFT_PLL + constant) and reports `offset − chunk`, so the
    /// chunk in force is the reported offset / (2^s − 1).
    pub fn pll_chunk_ns(&self) -> i64 {
        let s = (SHIFT_PLL + self.constant.clamp(0, 30)) as u32;
        self.offset_ns / ((1i64 << s) - 1)
    }

    /// The kernel clock's length of one raw second, in 2^-16 ns: tick·USER_HZ·1000·2^16 +
    /// freq·1000 + pll_chunk·2^16.
    pub fn second_length_q16(&self) -> i128 {
        ((self.tick as i128 * USER_HZ as i128 * 1000) << 16)
            + self.freq as i128 * 1000
            + ((self.pll_chunk_ns() as i128) << 16)
    }

    /// The rate relative to CLOCK_MONOTONIC_RAW minus one, in parts per 10^9 (for display).
    pub fn rate_ppb(&self) -> f64 {
        self.second_length_q16() as f64 / 65536.0 - 1e9
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unsynchronised_clock_is_explained_with_the_fix() {
        let synced = KernelTimex { tick: 10_000, maxerror_us: 50_000, ..Default::default() };
        assert_eq!(synced.unsynchronised_advice(), None);
        let unsync = KernelTimex { status: STA_UNSYNC, maxerror_us: 16_000_000, ..synced };
        let a = unsync.unsynchronised_advice().expect("advice");
        assert!(a.contains("STA_UNSYNC, maxerror 16.0 s"), "{a}");
        assert!(a.contains("±16 s") && a.contains("FREERUNNING") && a.contains("run chrony or ntpd"), "{a}");
        // STA_UNSYNC clear, but maxerror grown to the limit (the NTP daemon stopped long ago).
        let stale = KernelTimex { maxerror_us: MAXERROR_LIMIT_US, ..synced };
        assert!(stale.unsynchronised_advice().expect("advice").contains("maxerror 16.0 s, at the kernel's 16 s limit"));
    }

    #[test]
    fn nominal_and_adjusted_rates() {
        let mut tx = KernelTimex { tick: 10_000, ..Default::default() };
        assert_eq!(tx.second_length_q16(), 1_000_000_000i128 << 16);
        tx.freq = 65536 * 12; // +12 ppm
        assert!((tx.rate_ppb() - 12_000.0).abs() < 1e-6);
        tx.freq = 0;
        tx.tick = 10_001; // +100 ppm
        assert!((tx.rate_ppb() - 100_000.0).abs() < 1e-6);
        tx.tick = 10_000;
        tx.offset_ns = -1_500;
        tx.constant = 2; // the kernel took 1/16 of −1600: −100 ns this second, −1500 left
        assert_eq!(tx.pll_chunk_ns(), -100);
        assert!((tx.rate_ppb() + 100.0).abs() < 1e-6);
    }

    #[test]
    fn an_unreadable_state_is_unsynchronised_at_the_ceiling_and_nominal_rate() {
        let tx = KernelTimex::unreadable();
        assert!(!tx.synchronized());
        assert_eq!(tx.maxerror_us, MAXERROR_LIMIT_US);
        assert_eq!(tx.esterror_us, MAXERROR_LIMIT_US);
        assert_eq!(tx.second_length_q16(), 1_000_000_000i128 << 16);
        assert_eq!((tx.state, tx.status & (STA_INS | STA_DEL), tx.tai), (TIME_ERROR, 0, 0));
    }
}
