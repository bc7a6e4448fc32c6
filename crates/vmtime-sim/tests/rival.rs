//! `vmtime sync`'s watch for other time daemons, against the real discipline on the simulated
//! kernel: its own actions over a long run (calibration, slews, a leap second) are never taken
//! for interference, and a change made by "another process" is noticed at the next read.

use vmtime_core::kernel::{STA_PLL, STA_UNSYNC};
use vmtime_core::rival::{ClockWatch, Interference};
use vmtime_core::sync::SyncConfig;
use vmtime_sim::sync_run::SyncRun;
use vmtime_sim::SimHost;

const NS: i128 = 1_000_000_000;
const MS: i128 = 1_000_000;

/// Runs `secs` seconds, checking the kernel before each second and recording every action.
fn run_watched(r: &mut SyncRun, w: &mut ClockWatch, secs: u32) -> Result<(), Interference> {
    let mut seen = r.actions.len();
    for _ in 0..secs {
        w.check(&r.guest.timex())?;
        r.run_for(NS, NS, 10 * MS);
        for (_, a) in &r.actions[seen..] {
            w.applied(a);
        }
        seen = r.actions.len();
    }
    w.check(&r.guest.timex())
}

#[test]
fn its_own_discipline_is_never_interference_and_another_daemon_is_noticed() {
    // 40 s before a leap second insertion at the end of 2026-12-31, kernel 3 ms off.
    let midnight = 20_819 * 86_400 * NS;
    let g = SimHost::new(11, midnight - 40 * NS + 37 * NS, 2_500_000_000, 30_000, 37, 3 * MS);
    let mut r = SyncRun::new(g, SyncConfig::default());
    r.spec.leap_at = Some((midnight, 1));
    // The simulated kernel boots with STA_PLL set and its apply() keeps it, where
    // vmtime_sys::timex::apply clears it at the first SetState: start from a kernel without it.
    r.guest.tx.status &= !STA_PLL;
    let mut w = ClockWatch::new();
    run_watched(&mut r, &mut w, 120).expect("no interference from its own actions");
    assert!(r.actions.len() > 10, "the discipline acted: {}", r.actions.len());
    assert_eq!(r.guest.tx.status & STA_UNSYNC, 0, "synchronised");
    assert_eq!(r.guest.tx.tai, 38, "the leap second was inserted on the way");

    // Another daemon sets the frequency.
    r.guest.set_freq_ppb(12_000);
    let e = run_watched(&mut r, &mut w, 1).unwrap_err();
    assert!(matches!(e, Interference::Frequency { .. }), "{e}");

    // Another daemon turns the kernel PLL on.
    let mut w = ClockWatch::new();
    run_watched(&mut r, &mut w, 3).unwrap();
    r.guest.tx.status |= STA_PLL;
    let e = run_watched(&mut r, &mut w, 1).unwrap_err();
    assert!(e.to_string().contains("set STA_PLL"), "{e}");
}
