//! `vmtime sync --once`: one bounded step from the page or PHC, then exit, and the samples an
//! observation takes under one page version (shared with the daemon).

use super::*;

/// `--once` failed: one line naming the source and the reason, exit status 1.
pub(super) fn once_failed(source: &Path, why: impl std::fmt::Display) -> Result<ExitCode> {
    eprintln!("vmtime sync --once: {}: {why}; the clock is left as it is", source.display());
    Ok(ExitCode::from(1))
}

/// `vmtime sync --once`: the source the settings name, opened as the daemon opens it; one
/// bounded step from it, or one line saying why not (exit status 1).
pub(super) fn once(a: &SyncSettings) -> Result<ExitCode> {
    let path = match pick_source(a)? {
        Ok(path) => path,
        Err(info) => return phc_once(PhcSync::open(a, info, None)?),
    };
    match open_page_source(&path) {
        Err(e) => once_failed(&path, e),
        Ok(Source::Page(page, _)) => page_once(a, &page),
        Ok(Source::Phc(info, markers)) => phc_once(PhcSync::open(a, info, markers)?),
        Ok(Source::MarkersOnly(_)) => {
            once_failed(&path, "it carries markers only and this machine has no PHC: no time source")
        }
    }
}

/// `--once` on a page: one observation (its samples paired with one version of the page: a page
/// updated meanwhile, a migration or restore, is observed again), then the step, TAI offset,
/// leap state and bounds of `vmtime_core::oneshot::once`.
pub(super) fn page_once(a: &SyncSettings, page: &crate::page::FollowedPage) -> Result<ExitCode> {
    let source = page.path();
    let kernel = kernel_state(a.dry_run)?;
    let (p, (raw, samples)) = match sample_page(page, &mut 0) {
        Ok(Some(x)) => x,
        Ok(None) => return once_failed(source, "the page changed during every one of 4 observations"),
        Err(e) => return once_failed(source, format!("{e:#}")),
    };
    crate::page::warn_legacy_tai(source, &p);
    let obs = SyncObservation { page: p, raw, samples: &samples, kernel };
    let once = match vmtime_core::oneshot::once(discipline_config(a), &obs, vmclock::counter::NATIVE) {
        Ok(o) => o,
        Err(e) => return once_failed(source, e),
    };
    if let Err(why) = apply_once(&once.actions, a.dry_run) {
        return once_failed(source, why);
    }
    let what = match once.step_ns() {
        Some(d) if a.dry_run => format!("would step by {:+.3} µs", d as f64 / 1e3),
        Some(d) => format!("stepped by {:+.3} µs", d as f64 / 1e3),
        None => "within 1 µs: not stepped".to_string(),
    };
    println!(
        "vmtime sync --once: {}: offset {:+.0} ns, {what}; bound {:.0} ns (marker {:#x}){}",
        source.display(),
        once.offset_ns,
        once.bound_ns,
        p.disruption_marker(),
        if a.dry_run { " (dry run: nothing was changed)" } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}

/// `--once`'s actions: printed in a dry run, else applied; the first failure in words.
pub(super) fn apply_once(actions: &[SyncAction], dry_run: bool) -> Result<(), String> {
    for act in actions {
        if dry_run {
            println!("dry run: would {act}");
        } else if let Err(e) = vmtime_sys::timex::apply(act) {
            return Err(format!("cannot {act} ({e}; vmtime sync needs CAP_SYS_TIME)"));
        }
    }
    Ok(())
}

/// An observation's samples: the tightest CLOCK_MONOTONIC_RAW one, and 64 of CLOCK_REALTIME.
pub(super) type Samples = (vmtime_core::AbaSample, Vec<vmtime_core::AbaSample>);

/// One observation's samples (CLOCK_MONOTONIC_RAW, and CLOCK_REALTIME against the counter),
/// paired with the page that was current while they were taken: if its seq_count moved
/// meanwhile, they are taken again (None after 4 tries). `reads` counts the page's reads.
pub(super) fn sample_page(
    page: &crate::page::FollowedPage,
    reads: &mut u64,
) -> Result<Option<(vmclock::Snapshot, Samples)>> {
    sample_under_page(
        4,
        || {
            *reads += 1;
            page.read().map_err(anyhow::Error::from)
        },
        || -> Result<_> {
            let raw = tightest(ClockId::MonotonicRaw, 16)?;
            let samples = (0..64).map(|_| aba_sample(ClockId::Realtime)).collect::<std::io::Result<Vec<_>>>()?;
            Ok((raw, samples))
        },
        || page.read().map_or(u32::MAX, |p| p.seq_count()),
    )
}
