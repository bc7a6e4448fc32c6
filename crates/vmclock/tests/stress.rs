//! Seqlock stress: one writer publishes at full speed pages whose fields are all functions of
//! one value; several readers must never see a mix. Bounded by the writer's count, not by time.
#![cfg(not(loom))]
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use vmclock::abi::{self, flags};
use vmclock::seqlock::{self, PageMemory};
use vmclock::{PageBuf, PageBuilder, Period, Snapshot, Tai, Timestamp, Writer};

fn page_for(v: u64) -> vmclock::VmclockAbi {
    PageBuilder::new()
        .reference(
            abi::counter_id::X86_TSC,
            v,
            Timestamp::<Tai>::from_parts(v.wrapping_mul(3), !v),
            Period { frac: v | 1 << 63, shift: 29 },
        )
        .disruption_marker(v ^ 0x5555_5555_5555_5555)
        .maxerror(v.rotate_left(17), v.rotate_left(31))
        .esterror(v.rotate_left(7), v.rotate_left(45))
        .vm_generation(v.wrapping_add(11))
        .tai_offset_raw((v % 1000) as i16 - 500)
        .status((v % 5) as u8)
        .leap((v % 6) as u8)
        .build()
}

fn consistent(s: &Snapshot) -> bool {
    let v = s.counter_value().unwrap();
    let mut expect = page_for(v);
    expect.seq_count = s.raw().seq_count;
    *s.raw() == expect && s.has(flags::VM_GEN_COUNTER_PRESENT)
}

#[test]
fn readers_never_see_a_mix() {
    const WRITES: u64 = 300_000;
    const READERS: usize = 3;
    let buf = PageBuf::new();
    let mut writer = Writer::new(&buf);
    writer.publish(&page_for(0));
    let done = AtomicBool::new(false);
    // Each reader's count of consistent reads so far: the writer keeps publishing until every
    // reader has checked some reads while it writes (on a loaded machine a reader thread may not
    // run at all during the first WRITES pages).
    let seen: [AtomicU64; READERS] = std::array::from_fn(|_| AtomicU64::new(0));
    const MIN_READS: u64 = 100;
    let (total, busy_total, writes) = std::thread::scope(|scope| {
        let readers: Vec<_> = (0..READERS)
            .map(|i| {
                let (done, buf, seen) = (&done, &buf, &seen[i]);
                scope.spawn(move || {
                    let (mut checked, mut busy, mut last) = (0u64, 0u64, 0u64);
                    while !done.load(Ordering::Relaxed) {
                        match seqlock::try_read(buf.words()) {
                            Some(words) => {
                                let s = Snapshot::from_words(words, buf.available()).expect("valid page");
                                assert!(consistent(&s), "torn read: {:?}", s.raw());
                                let v = s.counter_value().unwrap();
                                assert!(v >= last, "went back from {last} to {v}");
                                last = v;
                                checked += 1;
                                seen.store(checked, Ordering::Relaxed);
                            }
                            None => busy += 1,
                        }
                    }
                    (checked, busy)
                })
            })
            .collect();
        let mut v = 0;
        while v < WRITES || seen.iter().any(|s| s.load(Ordering::Relaxed) < MIN_READS) {
            v += 1;
            let seq = writer.publish(&page_for(v));
            assert_eq!(seq % 2, 0);
        }
        done.store(true, Ordering::Relaxed);
        let (t, b) = readers.into_iter().map(|r| r.join().unwrap()).fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
        (t, b, v)
    });
    eprintln!("seqlock stress: {writes} writes, {total} consistent reads checked, {busy_total} busy attempts retried");
    assert!(total >= READERS as u64 * MIN_READS);
    let final_snap = seqlock::read(&buf, seqlock::DEFAULT_MAX_WAIT).unwrap();
    assert_eq!(final_snap.counter_value(), Some(writes));
}

#[test]
fn dead_writer_times_out() {
    let buf = PageBuf::new();
    buf.store_bytes(&vmclock::PageBuilder::new().page_bytes());
    // A writer that died mid-update leaves seq_count odd.
    buf.store_bytes(&{
        let mut b = PageBuilder::new().page_bytes();
        b[0x0c] = 1;
        b
    });
    let t0 = std::time::Instant::now();
    let err = seqlock::read(&buf, std::time::Duration::from_millis(20)).unwrap_err();
    assert!(matches!(err, vmclock::ReadError::Timeout { .. }), "{err}");
    assert!(t0.elapsed() >= std::time::Duration::from_millis(20));
    assert!(err.to_string().contains("writer stuck"));
    // The next writer completes the odd count instead of reusing it.
    let mut w = Writer::new(buf);
    assert_eq!(w.publish(&PageBuilder::new().build()), 2);
    assert!(seqlock::read(w.memory(), seqlock::DEFAULT_MAX_WAIT).is_ok());
}

/// A page on this CPU's counter for `Clock`: every field a function of `v` (reference counter
/// `v`, a second per version, marker `v`).
fn clock_page_for(v: u64) -> vmclock::VmclockAbi {
    vmclock::test_support::synchronized_tai(vmclock::counter::NATIVE, v, 1_000_000_000)
        .reference(
            vmclock::counter::NATIVE,
            v,
            Timestamp::<Tai>::from_parts(1_795_000_000 + v, v.rotate_left(40)),
            Period::from_hz(1_000_000_000 + v % 1000).unwrap(),
        )
        .maxerror(1_000 + v % 7, 100 + v % 11)
        .esterror(100 + v % 13, 10)
        .disruption_marker(v)
        .build()
}

/// Readers sharing one `Clock` (and so its cache of the page's constants, filled and refilled
/// by whichever reader sees a new version first) while the writer publishes: every reading is
/// exactly the reading of the version its marker names, at the counter it was read with.
#[test]
fn clock_readers_sharing_the_cache_never_see_a_mix() {
    if vmclock::counter::NATIVE == abi::counter_id::INVALID {
        return;
    }
    const WRITES: u64 = 50_000;
    const READERS: usize = 2;
    const MIN_READS: u64 = 100;
    const COUNTER: u64 = 1 << 40;
    let buf = PageBuf::new();
    let mut writer = Writer::new(&buf);
    writer.publish(&clock_page_for(1));
    let clock = vmclock::Clock::new(&buf);
    let done = AtomicBool::new(false);
    let seen: [AtomicU64; READERS] = std::array::from_fn(|_| AtomicU64::new(0));
    let (total, busy, writes) = std::thread::scope(|scope| {
        let readers: Vec<_> = (0..READERS)
            .map(|i| {
                let (done, clock, seen) = (&done, &clock, &seen[i]);
                scope.spawn(move || {
                    let (mut checked, mut busy, mut last) = (0u64, 0u64, 0u64);
                    while !done.load(Ordering::Relaxed) {
                        let now = match clock.now_with_counter(|| COUNTER) {
                            Ok(now) => now,
                            // The writer changed the page throughout the 100 ms wait (a debug
                            // build's full copy on a loaded machine): the documented refusal.
                            Err(vmclock::ClockError::Read(vmclock::ReadError::Timeout { .. })) => {
                                busy += 1;
                                continue;
                            }
                            Err(e) => panic!("no reading: {e:?}"),
                        };
                        let v = now.disruption_marker;
                        let snap = Snapshot::new(clock_page_for(v), 4096).unwrap();
                        assert_eq!(now, vmclock::now_at(&snap, COUNTER).unwrap(), "version {v}");
                        assert_eq!(now.tai(), snap.tai_at(COUNTER));
                        assert!(v >= last, "went back from {last} to {v}");
                        last = v;
                        checked += 1;
                        seen.store(checked, Ordering::Relaxed);
                    }
                    (checked, busy)
                })
            })
            .collect();
        let mut v = 1;
        while v < WRITES || seen.iter().any(|s| s.load(Ordering::Relaxed) < MIN_READS) {
            v += 1;
            writer.publish(&clock_page_for(v));
            if v >= WRITES {
                // Past the planned count and a reader still short of its reads: let it run.
                std::thread::yield_now();
            }
        }
        done.store(true, Ordering::Relaxed);
        let (t, b) = readers.into_iter().map(|r| r.join().unwrap()).fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
        (t, b, v)
    });
    eprintln!("clock stress: {writes} writes, {total} readings checked, {busy} refused as busy");
    assert!(total >= READERS as u64 * MIN_READS);
    // Quiet now: the last version, from the cache.
    let now = clock.now_with_counter(|| COUNTER).unwrap();
    assert_eq!(now.disruption_marker, writes);
}
