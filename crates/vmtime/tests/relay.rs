//! `vmtime host` + `vmtime relay` on this machine: the guest page checks out, migration and
//! restore change the markers exactly when they should, and the markers survive a relay restart.
mod common;
use common::*;
use std::path::Path;

fn start_relay(dir: &Path, extra: &[&str]) -> Daemon {
    let host = dir.join("host.page");
    let guest = dir.join("guest.page");
    let mut args = vec![
        "relay",
        "--host-page",
        host.to_str().unwrap(),
        "--guest-page",
        guest.to_str().unwrap(),
        "--duration-s",
        "120",
    ];
    args.extend_from_slice(extra);
    spawn_answering(&args, Path::new(&socket(&guest))).0
}

fn markers(page: &Path) -> (u64, u64) {
    let f = show(page)["fields"].clone();
    (f["disruption_marker"].as_u64().unwrap(), f["vm_generation_counter"].as_u64().unwrap())
}

#[test]
fn relay_follows_migrates_restores_and_remembers() {
    let dir = tempfile::tempdir().unwrap();
    let (host, guest) = (dir.path().join("host.page"), dir.path().join("guest.page"));
    let (_h, _) = start_host(&host);
    wait_calibrated(&host);
    let marker0;
    {
        let _r = start_relay(dir.path(), &[]);
        let g = wait_calibrated(&guest);
        let flag_names = g["fields"]["flag_names"].as_array().unwrap().clone();
        assert!(flag_names.iter().any(|n| n == "VM_GEN_COUNTER_PRESENT"));
        // This relay cannot notify the guest: a guest told to wait in poll() would wait forever.
        assert!(!flag_names.iter().any(|n| n == "NOTIFICATION_PRESENT"), "{flag_names:?}");
        // Identity map: the guest page is this machine's clock too, and checks out.
        let r = json(&["check", guest.to_str().unwrap(), "--samples", "2000", "--tolerance", "2000", "--json"]);
        assert_eq!(r["passed"], true, "{r}");
        marker0 = markers(&guest);

        // Live migration to a host with another TSC offset: the marker changes, the generation
        // does not, and the reference counter moves by the offset.
        let st = json(&["status", "--socket", &socket(&guest), "--request", "migrated 1000", "--json"]);
        assert_eq!(st["role"], "relay");
        let after = markers(&guest);
        assert_eq!(after, (marker0.0.wrapping_add(1), marker0.1));
        let (h, g) = (show(&host)["fields"].clone(), show(&guest)["fields"].clone());
        // Only when the host published nothing new from the status to after the guest's read
        // (a new host page relayed between the two reads moves the guest's reference).
        let h_after = show(&host)["fields"]["seq_count"].as_u64().unwrap();
        if h["seq_count"].as_u64().unwrap() == st["last_host_seq"].as_u64().unwrap()
            && h_after == h["seq_count"].as_u64().unwrap()
        {
            assert_eq!(g["counter_value"].as_u64().unwrap(), h["counter_value"].as_u64().unwrap().wrapping_add(1000));
        }
    } // the relay stops here
      // A restart keeps the markers (from its state file) …
    {
        let _r = start_relay(dir.path(), &["--tsc-offset", "1000"]);
        assert_eq!(markers(&guest), (marker0.0.wrapping_add(1), marker0.1));
    }
    // … and a restore from a snapshot changes both.
    let _r = start_relay(dir.path(), &["--tsc-offset", "1000", "--restored"]);
    assert_eq!(markers(&guest), (marker0.0.wrapping_add(2), marker0.1.wrapping_add(1)));
}

#[test]
fn a_relay_restarted_on_another_host_page_changes_the_guest_marker() {
    // Found by the lab: the host marker last relayed was never saved, so a relay restarted on
    // another host's page (different marker) kept the guest's marker.
    let dir = tempfile::tempdir().unwrap();
    let (host, guest) = (dir.path().join("host.page"), dir.path().join("guest.page"));
    let host_page = |marker: u64| {
        let m = marker.to_string();
        let h = host.to_str().unwrap();
        vmtime(&["gen", h, "--counter-hz", "1000000000", "--maxerror-ns", "1000", "--disruption-marker", &m]);
    };
    host_page(7);
    let first;
    {
        let _r = start_relay(dir.path(), &[]);
        // The relay writes the guest page before it answers on its control socket.
        first = markers(&guest).0;
    }
    // Another host's page (its own marker) replaces the file while the relay is down.
    host_page(9);
    let _r = start_relay(dir.path(), &[]);
    let second = markers(&guest).0;
    assert_ne!(second, first, "the guest's marker must change with the host's");
}

#[test]
fn the_guest_page_has_its_constant_fields_from_the_start() {
    // Started together: the host has not calibrated yet. The guest page must still carry its
    // counter and time type (a guest driver reads them once, at probe), never counter INVALID.
    let dir = tempfile::tempdir().unwrap();
    let (host, guest) = (dir.path().join("host.page"), dir.path().join("guest.page"));
    let (_h, _) = start_host(&host);
    let _r = start_relay(dir.path(), &[]);
    let first = show(&guest)["fields"].clone();
    assert_eq!(first["counter_id"]["name"], "X86_TSC", "{first}");
    let g = wait_calibrated(&guest);
    assert_eq!(g["fields"]["time_type"], first["time_type"], "time_type is constant");
    assert_eq!(g["fields"]["counter_id"], first["counter_id"]);
}

/// Issue 20, item 7: a host page vmtime calls invalid (a shift of 160) or whose time type turned
/// MONOTONIC is not relayed: the relay holds over and says so in its status; the guest page
/// stays readable with its last update; a good host page again is relayed.
#[test]
fn a_bad_host_page_makes_the_relay_hold_over() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let (host, guest) = (dir.path().join("host.page"), dir.path().join("guest.page"));
    let h = host.to_str().unwrap();
    vmtime_ok(&["gen", h, "--counter-hz", "1000000000", "--maxerror-ns", "1000"].map(String::from));
    let _r = start_relay(dir.path(), &[]);
    let status = || json(&["status", "--socket", &socket(&guest), "--json"]);
    let good = std::fs::read(&host).unwrap();
    let seq0 = u32::from_le_bytes(good[12..16].try_into().unwrap());
    let f = std::fs::OpenOptions::new().write(true).open(&host).unwrap();
    // In place, as a publisher would (the byte, then a new even seq_count).
    let write = |at: u64, byte: u8, seq: u32| {
        f.write_all_at(&[byte], at).unwrap();
        f.write_all_at(&seq.to_le_bytes(), 12).unwrap();
    };
    let wait = |want: bool, seq: u32| {
        let until = std::time::Instant::now() + LINE_WITHIN;
        loop {
            let st = status();
            if st["holdover"] == want && st["last_host_seq"] == seq {
                return st;
            }
            assert!(std::time::Instant::now() < until, "holdover never {want}: {st}");
            std::thread::yield_now();
        }
    };
    wait(false, seq0);
    for (at, byte) in [(39u64, 160u8), (11, 2)] {
        // counter_period_shift = 160, then time_type = MONOTONIC.
        let seq = seq0 + 2 + 2 * at as u32;
        write(at, byte, seq);
        let st = wait(true, seq);
        assert_eq!(st["guest_status"], "SYNCHRONIZED", "{st}");
        // The guest page keeps its last update: the good host page's, relayed before.
        let g = show(&guest);
        assert_eq!(g["fields"]["seq_count"], st["guest_seq"], "{g}");
        assert_eq!(g["fields"]["counter_period_shift"], good[39], "{g}");
        assert_eq!(g["fields"]["time_type"]["name"], "TAI", "{g}");
        let now = vmtime(&["now", guest.to_str().unwrap(), "--json"]);
        assert!(now.status.success(), "{}", String::from_utf8_lossy(&now.stderr));
        write(at, good[at as usize], seq + 2);
        wait(false, seq + 2);
    }
}

/// Reads the guest page's (marker, generation, status name, seq_count) as `vmtime show` decodes it.
fn guest_fields(page: &Path) -> (u64, u64, String, u64) {
    let f = show(page)["fields"].clone();
    (
        f["disruption_marker"].as_u64().unwrap(),
        f["vm_generation_counter"].as_u64().unwrap(),
        f["clock_status"]["name"].as_str().unwrap_or("").to_string(),
        f["seq_count"].as_u64().unwrap(),
    )
}

/// Waits (bounded, polling the file: the relay has nothing to notify a file reader with) until
/// the guest page satisfies `ok`.
fn wait_page(page: &Path, what: &str, ok: impl Fn(&(u64, u64, String, u64)) -> bool) -> (u64, u64, String, u64) {
    let end = std::time::Instant::now() + LINE_WITHIN;
    loop {
        let f = guest_fields(page);
        if ok(&f) {
            return f;
        }
        assert!(std::time::Instant::now() < end, "{what}: the guest page is still {f:?}");
        std::thread::sleep(std::time::Duration::from_millis(5)); // polls a file, bounded above
    }
}

#[test]
fn a_guest_page_written_over_by_a_migration_gets_a_new_marker_at_once_and_no_time_until_the_map_is_told() {
    // What QEMU does when a migration arrives (ivshmem master=on): it writes the source's page
    // (its marker, its counter map) into the destination's page file, in place.
    let dir = tempfile::tempdir().unwrap();
    let (host, guest) = (dir.path().join("host.page"), dir.path().join("guest.page"));
    let (_h, _) = start_host(&host);
    wait_calibrated(&host);
    let (_r, rx) = spawn_answering(
        &["relay", "--host-page", host.to_str().unwrap(), "--guest-page", guest.to_str().unwrap()],
        Path::new(&socket(&guest)),
    );
    wait_calibrated(&guest);
    // At rest, notified by the host: the guard looks every 20 ms (not a 1 ms wake-up).
    let end = std::time::Instant::now() + LINE_WITHIN;
    loop {
        let st = json(&["status", "--socket", &socket(&guest), "--json"]);
        if st["host_notified"] == true {
            assert_eq!(st["guard_ms"], 20, "{st}");
            break;
        }
        assert!(std::time::Instant::now() < end, "never subscribed to the host: {st}");
        std::thread::sleep(std::time::Duration::from_millis(20)); // polls a condition, bounded
    }
    // The source's page: another relay's, marker 0x5150 generation 77, another offset.
    let source = dir.path().join("source.page");
    let mut args = gen_ahead_args(dir.path(), &source, 0);
    args.extend(["--disruption-marker", "20816", "--vm-generation", "77"].map(String::from));
    vmtime_ok(&args);
    let mut bytes = std::fs::read(&source).unwrap();
    bytes[12..16].copy_from_slice(&1000u32.to_le_bytes()); // a source's seq_count
    {
        use std::io::{Seek, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&guest).unwrap();
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        f.write_all(&bytes).unwrap();
    }
    wait_line(&rx, "written by someone else", LINE_WITHIN);
    let (marker, generation, status, seq) = wait_page(&guest, "rewritten after the overwrite", |f| f.0 != 20816);
    assert_eq!(marker, 20817, "one past the marker the guest may have read");
    assert_eq!(generation, 77, "a live migration keeps the guest's generation");
    assert_eq!(status, "UNRELIABLE", "no time until the counter map is known");
    assert!(seq > 1000, "seq_count moves on from the page found ({seq})");
    let st = json(&["status", "--socket", &socket(&guest), "--json"]);
    assert_eq!((st["map_pending"].as_bool(), st["overwrites"].as_u64()), (Some(true), Some(1)), "{st}");
    assert_eq!(st["guard_ms"], 1, "after an overwrite the guard looks every 1 ms: {st}");
    // Host updates meanwhile keep it so.
    std::thread::sleep(std::time::Duration::from_millis(1500)); // lets the host publish; a negative check
    assert_eq!(guest_fields(&guest).2, "UNRELIABLE");
    // The destination's map is told: time again, the same marker (no second disruption).
    let st = json(&["status", "--socket", &socket(&guest), "--request", "migrated 1000", "--json"]);
    assert_eq!(st["map_pending"], false, "{st}");
    let (m2, g2, status2, _) = wait_page(&guest, "time after the map", |f| f.2 != "UNRELIABLE");
    assert_eq!((m2, g2), (20817, 77));
    assert!(status2 == "SYNCHRONIZED" || status2 == "FREERUNNING", "{status2}");
    // A snapshot's page written back (loadvm): seen again, and `restored OFFSET` changes the
    // generation and gives the map.
    {
        use std::io::{Seek, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&guest).unwrap();
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        f.write_all(&bytes).unwrap();
    }
    wait_page(&guest, "rewritten after the second overwrite", |f| f.0 != 20816 && f.2 == "UNRELIABLE");
    json(&["status", "--socket", &socket(&guest), "--request", "restored 2000", "--json"]);
    let (m3, g3, status3, _) = wait_page(&guest, "time after restored", |f| f.2 != "UNRELIABLE");
    assert!(m3 != 20816 && m3 != 20817, "{m3:#x}");
    assert_eq!(g3, 78, "a restore changes the generation");
    assert!(status3 == "SYNCHRONIZED" || status3 == "FREERUNNING", "{status3}");
    // `hold`: the map is about to change (a VM paused under TCG): a new marker, no time, until
    // the map is told.
    json(&["status", "--socket", &socket(&guest), "--request", "hold", "--json"]);
    let (m4, _, status4, _) = wait_page(&guest, "held", |f| f.2 == "UNRELIABLE");
    assert_eq!((m4, status4.as_str()), (m3.wrapping_add(1), "UNRELIABLE"));
    json(&["status", "--socket", &socket(&guest), "--request", "migrated 3000", "--json"]);
    let (m5, _, _, _) = wait_page(&guest, "time after hold", |f| f.2 != "UNRELIABLE");
    assert_eq!(m5, m4, "the map after a hold changes the marker no further");
}

/// Issue 20, item 7 at the daemon: random byte mutations of the host page written in place under
/// a running relay (6 seeds × 40); after the relay has seen each one, the guest page as a guest
/// reads it is valid, and when it says it may be relied on its TAI computes and is believable.
#[test]
fn every_guest_page_the_relay_publishes_is_readable_under_host_mutations() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let (host, guest) = (dir.path().join("host.page"), dir.path().join("guest.page"));
    let h = host.to_str().unwrap();
    vmtime_ok(
        &["gen", h, "--counter-hz", "1000000000", "--maxerror-ns", "1000", "--tai-offset", "37"].map(String::from),
    );
    let good = std::fs::read(&host).unwrap();
    let _r = start_relay(dir.path(), &[]);
    let clock = vmclock::Clock::open(&guest).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&host).unwrap();
    let mut seq = u32::from_le_bytes(good[12..16].try_into().unwrap());
    let (mut reliable, mut checked) = (0, 0);
    for seed in 1..=6u64 {
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut bytes = good.clone();
        for i in 0..40 {
            if i % 10 == 0 {
                bytes = good.clone();
            }
            for _ in 0..1 + next() % 3 {
                let at = 16 + (next() % 96) as usize;
                bytes[at] = match next() % 3 {
                    0 => 0xff,
                    1 => bytes[at].wrapping_add(1),
                    _ => next() as u8,
                };
            }
            seq += 2;
            bytes[12..16].copy_from_slice(&seq.to_le_bytes());
            f.write_all_at(&bytes[..112], 0).unwrap();
            // Wait until the relay has judged this version of the host page.
            let until = std::time::Instant::now() + LINE_WITHIN;
            loop {
                let st = json(&["status", "--socket", &socket(&guest), "--json"]);
                if st["last_host_seq"] == seq {
                    break;
                }
                // A host page vmtime cannot read at all (bad size, version) is held over too.
                if st["holdover"] == true && vmclock::Snapshot::from_bytes(&bytes).is_err() {
                    break;
                }
                assert!(
                    std::time::Instant::now() < until,
                    "seed {seed} step {i}: the relay never took seq {seq}: {st}"
                );
                std::thread::yield_now();
            }
            let snap = clock.snapshot().unwrap_or_else(|e| panic!("seed {seed} step {i}: guest page unreadable: {e}"));
            checked += 1;
            if matches!(
                snap.clock_status(),
                Some(vmclock::abi::status::SYNCHRONIZED | vmclock::abi::status::FREERUNNING)
            ) {
                reliable += 1;
                let now = clock.now().unwrap_or_else(|e| panic!("seed {seed} step {i}: {e}: {:?}", snap.raw()));
                let tai = now.tai().unwrap_or_else(|e| panic!("seed {seed} step {i}: {e}: {:?}", snap.raw()));
                let utc_s = (tai.time.raw() >> 64) as i64 - 37;
                assert!((1_788_220_800..8_277_292_036).contains(&utc_s), "seed {seed} step {i}: {utc_s}");
            }
        }
    }
    assert!(checked == 240 && reliable > 50, "checked {checked}, reliable {reliable}");
}

/// Accepts one connection on `listener` within 20 s (a thread: the test never waits unbounded).
fn accept_within(listener: std::os::unix::net::UnixListener) -> std::os::unix::net::UnixStream {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(listener.accept().map(|(s, _)| s));
    });
    rx.recv_timeout(std::time::Duration::from_secs(20)).expect("the relay connected to the doorbell").unwrap()
}

/// Reads doorbell bytes until `n` in all have come (each read bounded by 20 s).
fn read_rings(peer: &mut std::os::unix::net::UnixStream, got: &mut u64, n: u64) {
    use std::io::Read;
    peer.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 256];
    while *got < n {
        let k = peer.read(&mut buf).expect("a ring within 20 s");
        assert!(k > 0, "the relay closed the doorbell");
        assert!(buf[..k].iter().all(|&b| b == 1));
        *got += k as u64;
    }
}

/// `--doorbell`: the guest page says NOTIFICATION_PRESENT, and every page written (host
/// updates, and the rewrite after a migration) is followed by one byte on the socket, which
/// stands in for QEMU's chardev server.
#[test]
fn a_relay_with_a_doorbell_notifies_after_every_page() {
    let dir = tempfile::tempdir().unwrap();
    let (host, guest) = (dir.path().join("host.page"), dir.path().join("guest.page"));
    let sock = dir.path().join("doorbell.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let (_h, _) = start_host(&host);
    wait_calibrated(&host);
    let _r = start_relay(dir.path(), &["--doorbell", sock.to_str().unwrap()]);
    let mut peer = accept_within(listener);
    let g = wait_calibrated(&guest);
    let flag_names = g["fields"]["flag_names"].as_array().unwrap().clone();
    assert!(flag_names.iter().any(|n| n == "NOTIFICATION_PRESENT"), "{flag_names:?}");
    let status = |req: &str| json(&["status", "--socket", &socket(&guest), "--request", req, "--json"]);
    let st = status("status");
    let d = &st["doorbell"];
    assert_eq!(d["connected"], true, "{st}");
    assert_eq!(d["rung"], st["relayed"], "one ring per page: {st}");
    assert_eq!(d["dropped"], 0, "{st}");
    let mut got = 0;
    read_rings(&mut peer, &mut got, d["sent"].as_u64().unwrap());
    // A migration: the page rewritten under a new marker, and rung for.
    let before = markers(&guest);
    let st = status("migrated 1000");
    assert_ne!(markers(&guest).0, before.0);
    let sent = st["doorbell"]["sent"].as_u64().unwrap();
    assert!(sent > got, "the rewrite rang: {st}");
    read_rings(&mut peer, &mut got, sent);
    // The VMM goes away: the relay goes on publishing (never stalls), dropping its rings.
    drop(peer);
    let before = markers(&guest);
    let st = status("migrated 2000");
    assert_ne!(markers(&guest).0, before.0, "published without its VMM");
    assert_eq!(st["doorbell"]["connected"], false, "{st}");
    assert!(st["doorbell"]["dropped"].as_u64().unwrap() >= 1, "{st}");
    assert_eq!(st["doorbell"]["rung"], st["relayed"], "{st}");
}
