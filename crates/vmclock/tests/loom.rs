//! Exhaustive model of the seqlock under the C11 memory model (loom), on the library's own
//! `try_read_into` / `try_read_with_counter` / `publish_words` over a 5-word region (count at
//! word 3, body on both sides).
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p vmclock --test loom --release`.
#![cfg(loom)]
use loom::sync::atomic::{AtomicU32, Ordering};
use loom::sync::Arc;
use vmclock::seqlock::{publish_words, try_read_into, try_read_with_counter, SEQ_WORD};

const N: usize = 5;

/// The region's bytes for version `v`: every body word is `v`, the count word 0 (ignored).
fn body(v: u32) -> [u8; N * 4] {
    let mut b = [0u8; N * 4];
    for (i, w) in b.chunks_exact_mut(4).enumerate() {
        if i != SEQ_WORD {
            w.copy_from_slice(&v.to_ne_bytes());
        }
    }
    b
}

fn region() -> Arc<Vec<AtomicU32>> {
    Arc::new((0..N).map(|i| AtomicU32::new(if i == SEQ_WORD { 0 } else { 1 })).collect())
}

/// Reads at most 3 times; a consistent copy must be wholly version 1 or wholly version 2.
fn read_and_check(words: &[AtomicU32]) -> bool {
    for _ in 0..3 {
        let mut out = [0u32; N];
        if try_read_into(words, &mut out) {
            let vals: Vec<u32> = out.iter().enumerate().filter(|(i, _)| *i != SEQ_WORD).map(|(_, v)| *v).collect();
            assert!(vals == [1; N - 1] || vals == [2; N - 1], "torn read: {vals:?}");
            return true;
        }
        loom::thread::yield_now();
    }
    false
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(f);
}

#[test]
fn reader_sees_old_or_new_never_a_mix() {
    model(|| {
        let words = region();
        let w = {
            let words = words.clone();
            loom::thread::spawn(move || assert_eq!(publish_words(&words, &body(2)), 2))
        };
        read_and_check(&words);
        w.join().unwrap();
        // After the writer, a read is consistent and new.
        let mut out = [0u32; N];
        assert!(try_read_into(&words, &mut out));
        assert_eq!(out[0], 2);
    });
}

/// The model has teeth: a writer that stores the body before making the count odd is caught.
#[test]
#[should_panic(expected = "torn read")]
fn broken_writer_is_caught() {
    model(|| {
        let words = region();
        let w = {
            let words = words.clone();
            loom::thread::spawn(move || {
                for (i, w) in words.iter().enumerate() {
                    if i != SEQ_WORD {
                        w.store(2, Ordering::Relaxed);
                    }
                }
                words[SEQ_WORD].store(2, Ordering::Release);
            })
        };
        read_and_check(&words);
        w.join().unwrap();
    });
}

/// A reader without the acquire fence is caught too (the fence is load-bearing).
#[test]
#[should_panic(expected = "torn read")]
fn reader_without_fence_is_caught() {
    model(|| {
        let words = region();
        let w = {
            let words = words.clone();
            loom::thread::spawn(move || {
                publish_words(&words, &body(2));
            })
        };
        let seq1 = words[SEQ_WORD].load(Ordering::Acquire);
        if seq1 & 1 == 0 {
            let vals: Vec<u32> = (0..N).filter(|&i| i != SEQ_WORD).map(|i| words[i].load(Ordering::Relaxed)).collect();
            let seq2 = words[SEQ_WORD].load(Ordering::Relaxed);
            if seq1 == seq2 {
                assert!(vals == [1; N - 1] || vals == [2; N - 1], "torn read: {vals:?}");
            }
        }
        w.join().unwrap();
    });
}

/// A migration: the writer publishes the new page, then the counter moves to the new host's
/// domain (modelled as a location the writer stores after the page, read with acquire as the
/// ordered counter read). The copy and the counter come from one page version: a reader that
/// sees the new counter never accepts the old page.
fn migration_model(read: fn(&[AtomicU32], &AtomicU32) -> Option<(u32, u32)>) {
    model(move || {
        let words = region();
        let counter = Arc::new(AtomicU32::new(0));
        let w = {
            let (words, counter) = (words.clone(), counter.clone());
            loom::thread::spawn(move || {
                publish_words(&words, &body(2));
                counter.store(1, Ordering::Release);
            })
        };
        if let Some((page, c)) = read(&words, &counter) {
            assert!(!(c == 1 && page == 1), "stale page with the new counter");
        }
        w.join().unwrap();
    });
}

#[test]
fn counter_inside_the_seqlock_never_pairs_a_stale_page() {
    migration_model(|words, counter| {
        let mut out = [0u32; N];
        let c = try_read_with_counter(words, 0, &mut out, || counter.load(Ordering::Acquire) as u64)?;
        Some((out[0], c as u32))
    });
}

/// The old order (a consistent copy first, the counter after the second count read) is caught.
#[test]
#[should_panic(expected = "stale page with the new counter")]
fn counter_after_the_seqlock_is_caught() {
    migration_model(|words, counter| {
        let mut out = [0u32; N];
        if !try_read_into(words, &mut out) {
            return None;
        }
        Some((out[0], counter.load(Ordering::Acquire)))
    });
}
