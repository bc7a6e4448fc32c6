//! The C side: builds libvmclock (this crate, the dev profile), compiles examples/now.c and
//! examples/bench.c with `cc` against libvmclock.a and libvmclock.so, and runs them on a page of
//! this machine's clock.
use std::path::{Path, PathBuf};
use std::process::Command;
use vmclock_rs::abi::{self, flags};
use vmclock_rs::{PageBuilder, Period, Timestamp, Utc};

fn realtime_ns() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

/// A (CLOCK_REALTIME, counter) pair: the counter read between two clock reads, the tightest of 16.
fn pair() -> (u128, u64) {
    (0..16)
        .map(|_| {
            let a = realtime_ns();
            let c = vmclock_rs::counter::read();
            let b = realtime_ns();
            (b - a, a + (b - a) / 2, c)
        })
        .min()
        .map(|(_, t, c)| (t, c))
        .unwrap()
}

/// A UTC page of this machine's clock (counter frequency calibrated over 200 ms with tight pairs),
/// maxerror 1 ms. Written just before each run, so the period's calibration error has little time
/// to grow.
fn page(dir: &Path) -> PathBuf {
    let (t0, c0) = pair();
    std::thread::sleep(std::time::Duration::from_millis(200)); // a calibration baseline, not a synchronisation
    let (t1, c1) = pair();
    // Seconds per tick = (t1 − t0) ns / 1e9 / (c1 − c0) ticks.
    let period = Period::from_ratio(t1 - t0, (c1 - c0) as u128 * 1_000_000_000).unwrap();
    let p = dir.join("page");
    let bytes = PageBuilder::new()
        .reference(vmclock_rs::counter::NATIVE, c1, Timestamp::<Utc>::from_nanos(t1), period)
        .tai_minus_utc(37)
        .maxerror(1_000_000, 0)
        .status(abi::status::SYNCHRONIZED)
        .flag(flags::TIME_MONOTONIC, true)
        .page_bytes();
    std::fs::write(&p, bytes).unwrap();
    p
}

/// target/<profile>, from this test's own path (target/<profile>/deps/c-…).
fn profile_dir() -> PathBuf {
    std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_path_buf()
}

fn build_lib() -> PathBuf {
    let dir = profile_dir();
    let target = dir.parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .args(["build", "-q", "-p", "vmclock-ffi", "--target-dir"])
        .arg(target)
        .status()
        .expect("run cargo build");
    assert!(st.success(), "cargo build -p vmclock-ffi failed");
    assert!(dir.join("libvmclock.a").exists() && dir.join("libvmclock.so").exists());
    dir
}

fn cc(out: &Path, src: &str, lib: &[&str]) {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    cc_file(out, &manifest.join("examples").join(src), lib);
}

fn cc_file(out: &Path, src: &Path, lib: &[&str]) {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let st = Command::new("cc")
        .arg("-O2")
        .arg("-Wall")
        .arg("-Wextra")
        .arg("-Werror")
        .arg("-I")
        .arg(manifest.join("include"))
        .arg(src)
        .args(lib)
        .arg("-o")
        .arg(out)
        .status()
        .expect("run cc");
    assert!(st.success(), "cc {} failed", src.display());
}

fn field(out: &str, name: &str) -> i128 {
    out.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in {out}"))
}

fn check_now_output(out: &str) {
    let (t, e, l) = (field(out, "time_ns "), field(out, "earliest_ns "), field(out, "latest_ns "));
    assert!(e <= t && t <= l && l - e <= 2_000_002, "{out}");
    assert_eq!(field(out, "tai_minus_utc "), 37);
    assert!(out.contains("status SYNCHRONIZED"), "{out}");
    // The page is this machine's clock, written just before: CLOCK_REALTIME read right after is
    // within its 1 ms maxerror (either side: the calibration may be a little fast or slow).
    let d = field(out, "clock_realtime_minus_page_ns ");
    assert!((-1_000_000..1_000_000).contains(&d), "CLOCK_REALTIME − page = {d} ns");
    // The cap (1 ms either side is within 10 ms) and the bound of the CLOCK_REALTIME timestamp
    // taken after the reading: earlier than the reading's bound, at least as wide, and holding
    // the timestamp (this machine's clock is the page's, within its 1 ms).
    assert!(out.contains("within_10ms ok"), "{out}");
    let (pe, pl) = (field(out, "realtime_earliest_ns "), field(out, "realtime_latest_ns "));
    assert!(pe <= pl && pl - pe >= l - e, "{out}");
    assert!(pe <= t + d && t + d <= pl, "the timestamp {} outside [{pe}, {pl}]", t + d);
    // vmclock_now_bounds, read after the others: the same flags and status, bounds of the same
    // width (±1 ns of rounding; the page's maxerror has no rate) that moved forward.
    let (be, bl) = (field(out, "bounds_earliest_ns "), field(out, "bounds_latest_ns "));
    assert!(e <= be && l <= bl && (bl - be - (l - e)).abs() <= 1, "{out}");
    let all = i128::from(vmclock::VMCLOCK_NOW_BOUNDED | vmclock::VMCLOCK_NOW_TAI_VALID | vmclock::VMCLOCK_NOW_RELIABLE);
    assert_eq!(field(out, "bounds_flags "), all, "{out}");
    assert!(out.contains("bounds_status SYNCHRONIZED"), "{out}");
    // The inline read, after those: the same flags, bounds of the same width (±1 ns) that moved
    // forward.
    let (ie, il) = (field(out, "inline_earliest_ns "), field(out, "inline_latest_ns "));
    assert!(be <= ie && bl <= il && (il - ie - (bl - be)).abs() <= 1, "{out}");
    assert_eq!(field(out, "inline_flags "), all, "{out}");
}

#[test]
fn c_example_runs_against_the_static_and_the_shared_library() {
    if vmclock_rs::counter::NATIVE == abi::counter_id::INVALID {
        return;
    }
    let lib = build_lib();
    let dir = tempfile::tempdir().unwrap();
    let stat = dir.path().join("now-static");
    cc(&stat, "now.c", &[lib.join("libvmclock.a").to_str().unwrap(), "-lpthread", "-ldl", "-lm"]);
    let shared = dir.path().join("now-shared");
    cc(&shared, "now.c", &["-L", lib.to_str().unwrap(), "-lvmclock"]);
    let p = page(dir.path());
    let out = Command::new(&stat).arg(&p).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    check_now_output(&String::from_utf8_lossy(&out.stdout));

    // The shared library's SONAME is libvmclock.so.0: install it under that name, as a package does.
    let readelf = Command::new("readelf").arg("-d").arg(lib.join("libvmclock.so")).output().expect("run readelf");
    assert!(String::from_utf8_lossy(&readelf.stdout).contains("[libvmclock.so.0]"), "no SONAME libvmclock.so.0");
    let installed = dir.path().join("lib");
    std::fs::create_dir(&installed).unwrap();
    std::fs::copy(lib.join("libvmclock.so"), installed.join("libvmclock.so.0")).unwrap();
    let p = page(dir.path());
    let out = Command::new(&shared).arg(&p).env("LD_LIBRARY_PATH", &installed).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    check_now_output(&String::from_utf8_lossy(&out.stdout));

    // Errors come back as codes and messages, never a crash.
    let out = Command::new(&stat).arg(dir.path().join("absent")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open or map the page"));

    // The benchmark program runs (briefly: its figures come from the release build, see
    // docs/BENCHMARKS.md).
    let bench = dir.path().join("bench");
    cc(&bench, "bench.c", &[lib.join("libvmclock.a").to_str().unwrap(), "-lpthread", "-ldl", "-lm"]);
    let out = Command::new(&bench).arg(&p).arg("1000").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ratio ") && stdout.contains("ratio_bounds ") && stdout.contains("ratio_inline "),
        "{stdout}"
    );
}

/// The conformance vectors from C: examples/vectors.c reads testdata/vectors.json itself and
/// checks every case through vmclock_read_page and vmclock_strerror.
#[test]
fn c_program_agrees_with_every_vector() {
    let lib = build_lib();
    let dir = tempfile::tempdir().unwrap();
    let prog = dir.path().join("vectors");
    cc(&prog, "vectors.c", &[lib.join("libvmclock.a").to_str().unwrap(), "-lpthread", "-ldl", "-lm"]);
    let vectors = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/vectors.json");
    let out = Command::new(&prog).arg(&vectors).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let line = stdout.lines().last().unwrap_or_default();
    assert!(line.starts_with("vectors: ") && line.ends_with(" passed, 0 failed"), "{stdout}");
    // A wrong expectation is caught: one case's latest bound moved by 1 ns.
    let text = std::fs::read_to_string(&vectors).unwrap();
    let bad = dir.path().join("bad.json");
    let changed = text.replacen("\"latest_ns\": 1795000000000001001", "\"latest_ns\": 1795000000000001002", 1);
    assert_ne!(changed, text);
    std::fs::write(&bad, changed).unwrap();
    let out = Command::new(&prog).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL counter/tai/at-reference"));
}

/// A small PRNG (xorshift64*), so that the cases are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// tests/reader.c, built against libvmclock.a, run over `commands`; its output lines.
fn run_reader(dir: &Path, commands: &str) -> Vec<String> {
    let lib = build_lib();
    let prog = dir.join("reader");
    if !prog.exists() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reader.c");
        cc_file(&prog, &src, &[lib.join("libvmclock.a").to_str().unwrap(), "-lpthread", "-ldl", "-lm"]);
    }
    let cmds = dir.join("commands");
    std::fs::write(&cmds, commands).unwrap();
    let out = Command::new(&prog).arg(&cmds).output().unwrap();
    assert!(out.status.success(), "reader: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

fn bounds_line(b: &vmclock::vmclock_bounds) -> String {
    format!(
        "{} {} {} {} {} {} {}",
        b.earliest_ns, b.latest_ns, b.disruption_marker, b.flags, b.tai_minus_utc, b.status, b.reserved
    )
}

/// What vmclock_now_bounds gives for the page at `path` and `counter` (the library's own read
/// with that counter value), as reader.c prints it.
fn expected(path: &Path, counter: u64) -> Result<String, i32> {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let mut err = 0;
    // SAFETY: a NUL-terminated path and a local int.
    let h = unsafe { vmclock::vmclock_open(c.as_ptr(), &mut err) };
    if h.is_null() {
        return Err(err);
    }
    let mut out = std::mem::MaybeUninit::uninit();
    // SAFETY: an open handle, closed below.
    let rc = vmclock::now_bounds_at(unsafe { &*h }, counter, &mut out);
    // SAFETY: the handle from vmclock_open, closed once.
    unsafe { vmclock::vmclock_close(h) };
    if rc != 0 {
        return Err(rc);
    }
    // SAFETY: now_bounds_at returned 0, so it wrote `out`.
    Ok(bounds_line(&unsafe { out.assume_init() }))
}

/// The inline reader (vmclock.h, compiled by `cc` into tests/reader.c) gives exactly what
/// vmclock_now_bounds gives for the same page and counter, wherever it answers: 1,500 random
/// pages (UTC and TAI, any period and shift, random bounds, every VALID combination, any TAI
/// offset, every leap indicator, any status), each published by a library read and then read
/// inline at counters at, near, far from and before the reference and at the edges of u64.
#[test]
fn inline_reader_equals_vmclock_now_bounds_over_random_pages() {
    if vmclock_rs::counter::NATIVE != abi::counter_id::X86_TSC {
        return; // the inline arithmetic exists on x86_64 only (elsewhere every read is a call)
    }
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut commands = String::new();
    let mut cases = Vec::new();
    for i in 0..1_500u64 {
        let now = vmclock_rs::counter::read();
        // The reference just before now (so the publishing read, at the real counter, succeeds
        // for most pages), or anywhere.
        let cv = if rng.below(8) == 0 { rng.next() } else { now.wrapping_sub(rng.below(1 << 36)) };
        let sec = match rng.below(6) {
            0 => rng.next(),
            1 => rng.below(40),
            2 => 9_223_372_030 + rng.below(10),
            _ => 1_700_000_000 + rng.below(200_000_000),
        };
        // Mostly a real counter's (1 to 4 GHz, the shift giving the most precision or less) with
        // small error rates, else anything.
        let real = rng.below(4) != 0;
        let (shift, period, bounds) = if real {
            let hz = 1_000_000_000 + rng.below(3_000_000_000) as u128;
            let shift = 24 + rng.below(8) as u8;
            let period = ((1u128 << (64 + shift)) / hz) as u64;
            let b = [rng.below(1_000_000_000), rng.below(period >> 10), rng.below(1_000_000), rng.below(period >> 10)];
            (shift, period, b)
        } else {
            let shift = match rng.below(4) {
                0 => rng.below(128) as u8,
                1 => 0,
                2 => 63,
                _ => 32 + rng.below(8) as u8,
            };
            let period = match rng.below(3) {
                0 => rng.next(),
                1 => 0,
                _ => rng.next() >> rng.below(64),
            };
            let b = match rng.below(2) {
                0 => [rng.next(), rng.next(), rng.next(), rng.next()],
                _ => [rng.below(1_000_000), rng.below(1 << 40), rng.below(1_000_000), rng.below(1 << 40)],
            };
            (shift, period, b)
        };
        let valid = if rng.below(4) != 0 { 0x1f } else { rng.below(32) as u8 };
        let tai_raw = match rng.below(4) {
            0 | 1 => -37,
            2 => 37,
            _ => rng.next() as i16,
        };
        let leap = if rng.below(3) == 0 { rng.below(7) as u8 } else { 0 };
        let p = vmclock_rs::Period { frac: period, shift };
        let bytes = vmclock_rs::test_support::random_page(
            rng.below(2) == 0,
            sec,
            rng.next(),
            cv,
            p,
            bounds,
            valid,
            tai_raw,
            leap,
        )
        .status(rng.below(6) as u8)
        .disruption_marker(rng.next())
        .page_bytes();
        let path = dir.path().join(format!("p{i}"));
        std::fs::write(&path, bytes).unwrap();
        commands += &format!("page {}\nwarm\n", path.display());
        for _ in 0..8 {
            let c = match rng.below(10) {
                0 => cv,
                8 | 9 => cv.wrapping_add(rng.below(1 << 30)),
                1 => cv.wrapping_add(rng.below(3)),
                2 => cv.wrapping_add(rng.below(1 << 36)),
                3 => cv.wrapping_add(rng.below(1 << 50)),
                4 => cv.wrapping_sub(1 + rng.below(1000)),
                5 => cv.wrapping_add(1 << 63),
                6 => now.wrapping_add(rng.below(1 << 20)),
                _ => rng.next(),
            };
            commands += &format!("c {c}\n");
            cases.push((path.clone(), c));
        }
    }
    let out = run_reader(dir.path(), &commands);
    let answers: Vec<&String> = out.iter().filter(|l| l.starts_with("ok") || *l == "declined").collect();
    assert_eq!(answers.len(), cases.len(), "{out:?}");
    let mut served = 0;
    for ((path, counter), line) in cases.iter().zip(answers) {
        if let Some(fields) = line.strip_prefix("ok ") {
            served += 1;
            let want = expected(path, *counter);
            assert_eq!(Ok(fields.to_owned()), want, "page {} at counter {counter}", path.display());
        }
    }
    // Most pages are ordinary (bounded, near now): the inline path must serve many of the cases.
    assert!(served >= cases.len() / 5, "only {served} of {} cases served inline", cases.len());
    println!("inline reader: {served} of {} cases served inline, all equal to vmclock_now_bounds", cases.len());
}

/// The page the benches read (TAI, bounded, a 2.5 GHz counter, the reference now): after the
/// publishing library read, the inline reader serves it at the counter now.
#[test]
fn inline_reader_serves_the_bench_page() {
    if vmclock_rs::counter::NATIVE != abi::counter_id::X86_TSC {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("page");
    let c1 = vmclock_rs::counter::read();
    let bytes = vmclock_rs::test_support::synchronized_tai(vmclock_rs::counter::NATIVE, c1, 2_500_000_000)
        .esterror(100, 10)
        .page_bytes();
    std::fs::write(&path, bytes).unwrap();
    // The page's figures are whole ns and a tick is 0.4 ns: at a whole number of ns from the
    // reference (ΔC a multiple of 5) the bounds are whole ns, which the inline arithmetic leaves
    // to the library (within its tolerance of a whole ns). Any other ΔC is served.
    let mut now = vmclock_rs::counter::read();
    if (now - c1) % 5 == 0 {
        now += 1;
    }
    let out = run_reader(dir.path(), &format!("page {}\nc {now}\nwarm\nc {now}\n", path.display()));
    assert_eq!(out[0], "open 0");
    assert_eq!(out[1], "declined", "nothing published before the first library read");
    assert_eq!(out[2], "warm 0");
    let want = expected(&path, now).unwrap();
    assert_eq!(out[3], format!("ok {want}"));
}

/// A page file at `name` in `dir` with `seq_count` set.
fn page_with(dir: &Path, name: &str, b: PageBuilder, seq: u32) -> PathBuf {
    let mut bytes = b.page_bytes();
    bytes[12..16].copy_from_slice(&seq.to_le_bytes());
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// The fields after the rc of an "inline", "lib" or "off" line, and the rc.
fn rc_of(line: &str) -> (i32, &str) {
    let mut it = line.splitn(3, ' ');
    it.next();
    let rc = it.next().unwrap().parse().unwrap();
    (rc, it.next().unwrap_or(""))
}

/// Each reason the inline reader does not answer sends the read to the library, which gives
/// vmclock_now_bounds' answer (or its code): nothing published yet, a new page version, a page
/// being written, a counter before the reference or beyond the constants' range, a leap second
/// ahead, a page the inline arithmetic does not serve (unbounded, MONOTONIC, TAI without its
/// offset, a counter slower than 1 GHz), a header the library does not serve, a page file gone.
#[test]
fn inline_reader_falls_back_to_the_library() {
    if vmclock_rs::counter::NATIVE != abi::counter_id::X86_TSC {
        return;
    }
    use vmclock_rs::test_support::synchronized_tai;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let native = vmclock_rs::counter::NATIVE;
    let cv = vmclock_rs::counter::read();
    let tai = |c: u64| synchronized_tai(native, c, 2_500_000_000).esterror(100, 10);
    let live = page_with(d, "live", tai(cv), 2);
    let v2 = page_with(d, "v2", tai(cv).disruption_marker(99).maxerror(5_000, 3), 4);
    let busy = page_with(d, "busy", tai(cv).disruption_marker(99), 5);
    // Counter distances whose bounds are not whole ns (a whole ns is the library's: the inline
    // arithmetic declines within its tolerance of one).
    let at = |c: u64| format!("c {c}\n");
    let mut cmds = format!("page {}\n", live.display());
    let mut want: Vec<Option<String>> = Vec::new();
    // 1. Nothing published before the first library read.
    cmds += &at(cv + 1_234_567);
    want.push(None);
    cmds += "warm\n";
    cmds += &at(cv + 1_234_567);
    want.push(Some(expected(&live, cv + 1_234_567).unwrap()));
    // 2. Before the reference, and beyond the constants' range (2^56 ticks).
    cmds += &at(cv - 1);
    want.push(None);
    cmds += &at(cv + (1 << 57));
    want.push(None);
    // 3. A new version: declined until the library has read (and published) it.
    cmds += &format!("copy {}\n", v2.display());
    cmds += &at(cv + 1_234_567);
    want.push(None);
    cmds += "warm\n";
    cmds += &at(cv + 1_234_567);
    want.push(Some(expected(&v2, cv + 1_234_567).unwrap()));
    // 4. A writer holding the seqlock (odd seq_count): declined; the library waits 100 ms and
    // gives VMCLOCK_E_BUSY, and so does the inline read.
    cmds += &format!("copy {}\n", busy.display());
    cmds += &at(cv + 1_234_567);
    want.push(None);
    cmds += "inline\n";
    let out = run_reader(d, &cmds);
    let answers: Vec<&String> = out.iter().filter(|l| l.starts_with("ok") || *l == "declined").collect();
    assert_eq!(answers.len(), want.len(), "{out:?}");
    for (i, (got, w)) in answers.iter().zip(&want).enumerate() {
        match w {
            None => assert_eq!(*got, "declined", "case {i}: {out:?}"),
            Some(f) => assert_eq!(**got, format!("ok {f}"), "case {i}"),
        }
    }
    assert_eq!(rc_of(out.last().unwrap()).0, vmclock::VMCLOCK_E_BUSY, "{out:?}");

    // 5. A leap second 0.5 s after the reference (UTC 2026-12-31 23:59:59.5, PRE_POS): served
    // before the edge, declined past it (where the library steps the time back 1 s).
    let leap = PageBuilder::new()
        .reference(
            native,
            cv,
            Timestamp::<Utc>::from_parts(1_798_761_599, 1 << 63),
            Period::from_hz(2_500_000_000).unwrap(),
        )
        .maxerror(1_000, 1)
        .tai_minus_utc(37)
        .leap(abi::leap::PRE_POS)
        .status(abi::status::SYNCHRONIZED);
    let leap = page_with(d, "leap", leap, 2);
    let before = cv + 1_000_000_001; // 0.4 s
    let past = cv + 1_500_000_001; // 0.6 s
    let out = run_reader(d, &format!("page {}\nwarm\n{}{}", leap.display(), at(before), at(past)));
    assert_eq!(out[2], format!("ok {}", expected(&leap, before).unwrap()));
    assert_eq!(out[3], "declined");
    let stepped = expected(&leap, past).unwrap();
    let e: i64 = stepped.split(' ').next().unwrap().parse().unwrap();
    assert!(e < 1_798_761_600_000_000_000, "the library's time past the edge is stepped back: {stepped}");

    // 6. Pages the inline arithmetic does not serve: every read is the library's.
    let unbounded = tai(cv).flag(flags::TIME_MAXERROR_VALID, false).flag(flags::PERIOD_MAXERROR_VALID, false);
    let monotonic = tai(cv).constants(native, abi::time_type::MONOTONIC);
    let no_offset = tai(cv).flag(flags::TAI_OFFSET_VALID, false);
    let slow = synchronized_tai(native, cv, 500_000_000);
    for (name, b) in [("unbounded", unbounded), ("monotonic", monotonic), ("no-offset", no_offset), ("slow", slow)] {
        let p = page_with(d, name, b, 2);
        let out = run_reader(d, &format!("page {}\nwarm\n{}inline\nlib\n", p.display(), at(cv + 1_234_567)));
        assert_eq!(out[2], "declined", "{name}: {out:?}");
        let (inline_rc, inline) = rc_of(&out[3]);
        let (lib_rc, lib) = rc_of(&out[4]);
        assert_eq!(inline_rc, lib_rc, "{name}: {out:?}");
        if lib_rc == 0 {
            // Read at different instants: the flags, TAI offset, status and marker agree.
            let tail = |s: &str| s.split(' ').skip(2).collect::<Vec<_>>().join(" ");
            assert_eq!(tail(inline), tail(lib), "{name}: {out:?}");
        }
        match name {
            "unbounded" | "slow" => assert_eq!(lib_rc, 0, "{name}: {out:?}"),
            _ => assert_eq!(lib_rc, vmclock::VMCLOCK_E_NO_UTC, "{name}: {out:?}"),
        }
    }

    // 7. A reader for a header the library does not serve reads through the library; 8. a page
    // file that is gone gives VMCLOCK_E_GONE, inline as from the library.
    let gone = page_with(d, "gone", tai(cv), 2);
    let out =
        run_reader(d, &format!("page {}\nwarm\noff\ntruncate\n{}inline\nlib\n", gone.display(), at(cv + 1_234_567)));
    assert_eq!(rc_of(&out[2]).0, 0, "{out:?}");
    assert_eq!(out[4], "declined", "{out:?}");
    assert_eq!(rc_of(&out[5]).0, vmclock::VMCLOCK_E_GONE, "{out:?}");
    assert_eq!(rc_of(&out[6]).0, vmclock::VMCLOCK_E_GONE, "{out:?}");
}

/// vmclock.h compiles warning-free (-Wall -Wextra -pedantic -Werror) as C99, C11 and C++11,
/// with the inline reader and without it (VMCLOCK_NO_INLINE_READER), with and without
/// optimisation.
#[test]
fn header_compiles_cleanly_as_c99_c11_and_cxx() {
    let dir = tempfile::tempdir().unwrap();
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("include");
    let src = "#include \"vmclock.h\"\nint f(const struct vmclock *c, struct vmclock_bounds *b) {\n  return vmclock_now_bounds_inline(vmclock_reader_of(c), b);\n}\n";
    for (compiler, file, std) in [("cc", "t.c", "-std=c99"), ("cc", "t.c", "-std=c11"), ("c++", "t.cc", "-std=c++11")] {
        let path = dir.path().join(file);
        std::fs::write(&path, src).unwrap();
        for extra in [&["-O2"][..], &["-O0"], &["-O2", "-DVMCLOCK_NO_INLINE_READER"]] {
            let out = Command::new(compiler)
                .args([std, "-Wall", "-Wextra", "-pedantic", "-Werror", "-c", "-o"])
                .arg(dir.path().join("t.o"))
                .arg("-I")
                .arg(&include)
                .args(extra)
                .arg(&path)
                .output()
                .unwrap_or_else(|e| panic!("run {compiler}: {e}"));
            assert!(out.status.success(), "{compiler} {std} {extra:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

/// At the rounding edges: pages whose earliest (or latest) at one counter lies within a few
/// units of 2^-64 ns on either side of a whole ns, up to 2^40 units away, where the inline
/// arithmetic's approximation (within ΔC + 2^31 units) could round the other way. Every inline
/// answer must still be the library's (near the edge the inline reader declines); a tolerance
/// smaller than the approximation's error fails here.
#[test]
fn inline_reader_is_exact_at_the_rounding_edges() {
    if vmclock_rs::counter::NATIVE != abi::counter_id::X86_TSC {
        return;
    }
    use vmclock_rs::time::nanos_to_frac_ceil;
    let dir = tempfile::tempdir().unwrap();
    let cv = vmclock_rs::counter::read();
    let (shift, maxerror_ns) = (29u8, 7_777u64);
    let mut commands = String::new();
    let mut cases = Vec::new();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for i in 0..400u64 {
        let hz = 1_000_000_000 + rng.below(3_000_000_000) as u128;
        let period = ((1u128 << (64 + shift)) / hz) as u64;
        let rate = rng.below(period >> 12);
        let d = 1 + rng.below(1 << 28);
        let x = (period as u128 * d as u128) >> shift;
        let y = (rate as u128 * d as u128 + (1u128 << shift) - 1) >> shift;
        let tt = nanos_to_frac_ceil(maxerror_ns);
        // The bound's fraction of a ns (2^-64 ns units) placed at `target` from a whole ns.
        let magnitude: i128 = [0, 1, 1 << 10, 1 << 20, 1 << 28, 1 << 31, 1 << 33, 1 << 40][(i % 8) as usize];
        let target = if i % 16 < 8 { magnitude } else { -magnitude };
        let k = 1_000_000_000i128 + rng.below(1 << 30) as i128;
        let whole = (k << 64) + target; // the bound · 10^9, in 2^-64 ns
        let frac = (whole as u128).div_ceil(1_000_000_000); // the bound's fraction of a second, ≥
        let bound = (1_800_000_000u128 << 64) + frac;
        let latest = i % 32 >= 16;
        // earliest = T − M + x − y, latest = T + M + x + y (2^-64 s).
        let t = if latest { bound - tt - x - y } else { bound + tt - x + y };
        let page = PageBuilder::new()
            .reference(vmclock_rs::counter::NATIVE, cv, Timestamp::<Utc>::from_raw(t), Period { frac: period, shift })
            .maxerror(maxerror_ns, rate)
            .tai_minus_utc(37)
            .status(abi::status::SYNCHRONIZED);
        let path = page_with(dir.path(), &format!("e{i}"), page, 2);
        commands += &format!("page {}\nwarm\nc {}\n", path.display(), cv + d);
        cases.push((path, cv + d));
    }
    let out = run_reader(dir.path(), &commands);
    let answers: Vec<&String> = out.iter().filter(|l| l.starts_with("ok") || *l == "declined").collect();
    assert_eq!(answers.len(), cases.len(), "{out:?}");
    let (mut served, mut declined) = (0, 0);
    for ((path, counter), line) in cases.iter().zip(answers) {
        match line.strip_prefix("ok ") {
            Some(fields) => {
                served += 1;
                assert_eq!(
                    Ok(fields.to_owned()),
                    expected(path, *counter),
                    "page {} at counter {counter}",
                    path.display()
                );
            }
            None => declined += 1,
        }
    }
    // Far from the edge (2^33 units and more) the inline reader serves; at it, it declines.
    assert!(served > 0 && declined > 0, "served {served}, declined {declined}");
    println!("rounding edges: {served} served (all equal to vmclock_now_bounds), {declined} declined");
}
