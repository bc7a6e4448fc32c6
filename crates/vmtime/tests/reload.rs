//! SIGHUP applies what can change live and names what needs a restart, end to end with a
//! configuration file of our own: `vmtime host` only reads the clock, `vmtime sync` runs with
//! `--dry-run`. The test waits on the daemons' own log lines and status, never on sleeps.
mod common;
use common::*;
use std::path::Path;

fn status(socket: &Path) -> serde_json::Value {
    json(&["status", "--socket", socket.to_str().unwrap(), "--json"])
}

#[test]
fn sighup_applies_live_settings_and_names_those_needing_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vmtime.toml");
    let page = dir.path().join("host.page");
    let hsock = dir.path().join("host.sock");
    let ssock = dir.path().join("sync.sock");
    std::fs::write(&cfg, "[host]\nquiet = true\nthreshold_ns = 30\n[sync]\nmax_step_s = 2\n").unwrap();
    let c = cfg.to_str().unwrap();
    let (host, hlog) = spawn_answering(
        &["host", "--config", c, "--page", page.to_str().unwrap(), "--socket", hsock.to_str().unwrap()],
        &hsock,
    );
    let (sync, slog) = spawn_answering(
        &["sync", "--config", c, "--source", page.to_str().unwrap(), "--socket", ssock.to_str().unwrap(), "--dry-run"],
        &ssock,
    );
    assert_eq!(status(&hsock)["tunables"]["threshold_ns"], 30);
    assert_eq!(status(&ssock)["step_policy"]["max_step_ns"], 2_000_000_000i64);

    // Live: the host's threshold and tolerance, sync's step limit, start-up window and log
    // level. Restart only: the host's smearing hint (a constant of its page), sync's PHC timescale.
    std::fs::write(
        &cfg,
        "[host]\nquiet = true\nthreshold_ns = 45\ntolerance_ppm = 100\nsmearing = \"utc-sls\"\n\
         [sync]\nmax_step_s = 0.25\nmakestep_updates = 5\nlog_level = \"debug\"\nphc_timescale = \"tai\"\n",
    )
    .unwrap();
    hup(&host);
    let line = wait_line(&hlog, "SIGHUP", LINE_WITHIN);
    assert!(line.contains("applied threshold_ns = 45, tolerance_ppm = 100.0"), "{line}");
    assert!(line.contains("need a restart of vmtime host: smearing = \"utc-sls\" (in force: \"strict\")"), "{line}");
    let h = status(&hsock);
    assert_eq!(
        (h["tunables"]["threshold_ns"].as_u64(), h["tunables"]["tolerance_ppb"].as_u64()),
        (Some(45), Some(100_000))
    );
    assert_eq!(h["restart_needed"], serde_json::json!(["smearing = \"utc-sls\" (in force: \"strict\")"]));
    hup(&sync);
    let line = wait_line(&slog, "SIGHUP", LINE_WITHIN);
    assert!(line.contains("applied log_level = \"debug\", makestep_updates = 5, max_step_s = 0.25"), "{line}");
    assert!(line.contains("need a restart of vmtime sync: phc_timescale = \"tai\" (in force: unset)"), "{line}");
    let s = status(&ssock);
    assert_eq!(s["step_policy"]["max_step_ns"], 250_000_000i64);
    assert_eq!(s["step_policy"]["step_updates"], 5);
    assert_eq!(s["restart_needed"], serde_json::json!(["phc_timescale = \"tai\" (in force: unset)"]));
    assert_eq!(s["reload_requests"], 1);

    // A bad file keeps the settings in force, and says why.
    std::fs::write(&cfg, "[sync]\nmax_step_s = -1\n").unwrap();
    hup(&sync);
    let line = wait_line(&slog, "SIGHUP", LINE_WITHIN);
    assert!(line.contains("max_step_s: -1 is refused") && line.contains("keeping the settings in force"), "{line}");
    let s = status(&ssock);
    assert_eq!((s["reload_requests"].as_u64(), s["step_policy"]["max_step_ns"].as_i64()), (Some(2), Some(250_000_000)));

    // The same file again: nothing changed.
    std::fs::write(&cfg, "[host]\nquiet = true\nthreshold_ns = 45\ntolerance_ppm = 100\n").unwrap();
    hup(&host);
    let line = wait_line(&hlog, "SIGHUP", LINE_WITHIN);
    assert!(line.contains("SIGHUP: configuration re-read, unchanged"), "{line}");
    assert_eq!(status(&hsock)["restart_needed"], serde_json::json!([]));

    // The relay: its log level is applied; its counter map (a constant of the guest's page) waits.
    let guest = dir.path().join("guest.page");
    let (relay, rlog) = spawn_answering(
        &["relay", "--config", c, "--host-page", page.to_str().unwrap(), "--guest-page", guest.to_str().unwrap()],
        Path::new(&socket(&guest)),
    );
    std::fs::write(&cfg, "[relay]\nlog_level = \"warn\"\ntsc_offset = 5\n").unwrap();
    hup(&relay);
    let line = wait_line(&rlog, "SIGHUP", LINE_WITHIN);
    assert!(
        line.contains("applied log_level = \"warn\"; these changes need a restart of vmtime relay: tsc_offset"),
        "{line}"
    );
    let r = status(Path::new(&socket(&guest)));
    assert_eq!(r["restart_needed"].as_array().map(|a| a.len()), Some(1), "{r}");
    assert!(r["restart_needed"][0].as_str().unwrap().starts_with("tsc_offset = "), "{r}");
}
