//! The seqlock that guards the page: a fenced reader that never spins forever, and the writer
//! order producers must follow.
//!
//! The page is accessed as 32-bit atomic words (`seq_count` is one whole word at 0x0c), so every
//! access is an atomic of one size and the protocol is data-race free in the Rust memory model,
//! whatever the other side is (a hypervisor, another process, a thread).
//!
//! Writer: `seq` odd (relaxed) → release fence → body (relaxed) → release fence → `seq` even.
//! Reader: `seq` (acquire) → body (relaxed) → [ordered counter read] → acquire fence → `seq`
//! again (relaxed); the copy (and the counter) are consistent when both reads are equal and even.

#[cfg(not(loom))]
pub use core::sync::atomic::{fence, AtomicU32, Ordering};
#[cfg(loom)]
pub use loom::sync::atomic::{fence, AtomicU32, Ordering};

use crate::abi::{VmclockAbi, ABI_SIZE, PAGE_SIZE};
use crate::error::ReadError;
use crate::snapshot::Snapshot;
use zerocopy::IntoBytes;

/// Number of 32-bit words in the v1 structure.
pub const WORDS: usize = ABI_SIZE / 4;
/// Index of the `seq_count` word.
pub const SEQ_WORD: usize = 0x0c / 4;

/// Memory holding a vmclock page, seen as 32-bit atomic words.
pub trait PageMemory {
    /// At least the first [`WORDS`] words of the page.
    fn words(&self) -> &[AtomicU32];
    /// How many bytes of the region are available (the `size` field may not claim more).
    fn available(&self) -> usize;
}

impl<T: PageMemory + ?Sized> PageMemory for &T {
    fn words(&self) -> &[AtomicU32] {
        (**self).words()
    }
    fn available(&self) -> usize {
        (**self).available()
    }
}

impl<T: WritableMemory + ?Sized> WritableMemory for &T {}

/// Memory a [`Writer`] may store to. Read-only mappings do not implement it.
pub trait WritableMemory: PageMemory {}

/// A page in ordinary memory, for tests, simulations and producers that share it by threads.
#[derive(Debug)]
pub struct PageBuf {
    words: Box<[AtomicU32]>,
    available: usize,
}

impl PageBuf {
    /// A zeroed 4096-byte page.
    pub fn new() -> Self {
        Self::with_available(PAGE_SIZE)
    }

    /// A page whose region claims `available` bytes (for validation tests).
    pub fn with_available(available: usize) -> Self {
        let words = (0..WORDS.max(available.div_ceil(4))).map(|_| AtomicU32::new(0)).collect();
        PageBuf { words, available }
    }

    /// Stores raw bytes at the start of the page without the seqlock (set-up and tests only).
    pub fn store_bytes(&self, bytes: &[u8]) {
        for (i, chunk) in bytes.chunks(4).enumerate() {
            let mut w = [0u8; 4];
            w[..chunk.len()].copy_from_slice(chunk);
            self.words[i].store(u32::from_ne_bytes(w), Ordering::Relaxed);
        }
    }
}

impl WritableMemory for PageBuf {}

impl Default for PageBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl PageMemory for PageBuf {
    fn words(&self) -> &[AtomicU32] {
        &self.words
    }
    fn available(&self) -> usize {
        self.available
    }
}

/// The structure as loaded: [`WORDS`] words whose native-endian bytes are the page's bytes.
pub type RawWords = [u32; WORDS];

/// One attempt: a consistent copy of the structure, or `None` if the writer was busy.
#[inline]
pub fn try_read(words: &[AtomicU32]) -> Option<RawWords> {
    let mut out = [0u32; WORDS];
    try_read_into(words, &mut out).then_some(out)
}

/// The reader's protocol over the first `out.len()` words (the count word is [`SEQ_WORD`]):
/// acquire load of the count, relaxed copy, acquire fence, relaxed re-load. Returns whether the
/// copy is consistent. Its length is free so that the loom model checks this very function on a
/// small region.
#[inline]
pub fn try_read_into(words: &[AtomicU32], out: &mut [u32]) -> bool {
    let words = &words[..out.len()];
    let seq1 = words[SEQ_WORD].load(Ordering::Acquire);
    if u32::from_le(seq1) & 1 != 0 {
        return false;
    }
    for (dst, w) in out.iter_mut().zip(words) {
        *dst = w.load(Ordering::Relaxed);
    }
    fence(Ordering::Acquire);
    let seq2 = words[SEQ_WORD].load(Ordering::Relaxed);
    seq1 == seq2
}

/// The reader's protocol with the counter read inside it, as the spec's read procedure and the
/// Linux driver do: acquire load of the count, relaxed copy of `out.len()` words starting at word
/// `first`, then `read_counter()` (its own instruction sequence orders it after the copy:
/// [`crate::counter::read`]), acquire fence, relaxed re-load of the count. Returns the counter
/// value when the copy is consistent, so the copy and the counter belong to one page version:
/// a page updated (a migration, a restore) after the copy but before the counter read is seen
/// as a changed count, and the caller retries, instead of pairing a stale page with a counter of
/// the new one.
#[inline(always)]
pub fn try_read_with_counter(
    words: &[AtomicU32],
    first: usize,
    out: &mut [u32],
    read_counter: impl FnOnce() -> u64,
) -> Option<u64> {
    let seq1 = words[SEQ_WORD].load(Ordering::Acquire);
    if u32::from_le(seq1) & 1 != 0 {
        return None;
    }
    let n = out.len();
    for (dst, w) in out.iter_mut().zip(&words[first..first + n]) {
        *dst = w.load(Ordering::Relaxed);
    }
    let counter = read_counter();
    fence(Ordering::Acquire);
    let seq2 = words[SEQ_WORD].load(Ordering::Relaxed);
    (seq1 == seq2).then_some(counter)
}

/// The writer's protocol over the first `body.len() / 4` words: count odd (relaxed), release
/// fence, every other word (relaxed), release fence, count even (relaxed). Returns the new even
/// count. A count left odd by a writer that died mid-update is completed, not reused. The
/// caller must be the only writer.
pub fn publish_words(words: &[AtomicU32], body: &[u8]) -> u32 {
    let words = &words[..body.len() / 4];
    let seq = u32::from_le(words[SEQ_WORD].load(Ordering::Relaxed));
    let odd = seq | 1;
    let even = odd.wrapping_add(1);
    words[SEQ_WORD].store(odd.to_le(), Ordering::Relaxed);
    fence(Ordering::Release);
    for (i, (w, src)) in words.iter().zip(body.chunks_exact(4)).enumerate() {
        if i != SEQ_WORD {
            w.store(u32::from_ne_bytes(src.try_into().expect("4 bytes")), Ordering::Relaxed);
        }
    }
    fence(Ordering::Release);
    words[SEQ_WORD].store(even.to_le(), Ordering::Relaxed);
    even
}

/// Reads a consistent copy of the structure, retrying while the writer is busy.
/// `give_up(attempts)` is asked after each failed attempt and ends the wait with
/// [`ReadError::Timeout`] when it returns the time waited (µs).
#[inline]
pub fn read_raw_with(
    mem: &impl PageMemory,
    mut give_up: impl FnMut(u32) -> Option<u64>,
) -> Result<RawWords, ReadError> {
    let mut attempts = 0u32;
    loop {
        if let Some(bytes) = try_read(mem.words()) {
            return Ok(bytes);
        }
        attempts += 1;
        if let Some(waited_us) = give_up(attempts) {
            return Err(ReadError::Timeout { attempts, waited_us });
        }
        core::hint::spin_loop();
    }
}

/// [`read_raw_with`], then validation: a consistent [`Snapshot`].
#[inline]
pub fn read_with(mem: &impl PageMemory, give_up: impl FnMut(u32) -> Option<u64>) -> Result<Snapshot, ReadError> {
    let raw = read_raw_with(mem, give_up)?;
    Ok(Snapshot::from_words(raw, mem.available())?)
}

/// The kernel driver's limit: 100 ms of an odd or changing `seq_count`.
pub const DEFAULT_MAX_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// A `give_up` policy for [`read_raw_with`]: fail after `max_wait` of a busy writer. The clock
/// is consulted only after every 64 failed attempts, so the uncontended path makes no call; after
/// 1024 attempts the thread yields between tries.
#[cfg(not(loom))]
#[inline]
pub fn deadline(max_wait: std::time::Duration) -> impl FnMut(u32) -> Option<u64> {
    let mut start = None;
    #[inline(never)]
    #[cold]
    fn slow(start: &mut Option<std::time::Instant>, max_wait: std::time::Duration, attempts: u32) -> Option<u64> {
        let t0 = *start.get_or_insert_with(std::time::Instant::now);
        let waited = t0.elapsed();
        if waited >= max_wait {
            return Some(waited.as_micros() as u64);
        }
        if attempts >= 1024 {
            std::thread::yield_now();
        }
        None
    }
    move |attempts| if attempts % 64 != 0 { None } else { slow(&mut start, max_wait, attempts) }
}

/// Reads a consistent snapshot, giving up after `max_wait` of a busy writer.
#[cfg(not(loom))]
#[inline]
pub fn read(mem: &impl PageMemory, max_wait: std::time::Duration) -> Result<Snapshot, ReadError> {
    read_with(mem, deadline(max_wait))
}

/// Reads a consistent copy of the structure (not validated), giving up after `max_wait`.
#[cfg(not(loom))]
pub fn read_raw(mem: &impl PageMemory, max_wait: std::time::Duration) -> Result<RawWords, ReadError> {
    read_raw_with(mem, deadline(max_wait))
}

/// The single writer of a page. It is not `Clone`: one page, one writer.
#[derive(Debug)]
pub struct Writer<M: WritableMemory> {
    mem: M,
}

impl<M: WritableMemory> Writer<M> {
    /// Takes the memory as its writer. The caller guarantees no other writer exists.
    pub fn new(mem: M) -> Self {
        Writer { mem }
    }

    /// The memory, for readers in the same process.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// The current `seq_count`.
    pub fn seq_count(&self) -> u32 {
        u32::from_le(self.mem.words()[SEQ_WORD].load(Ordering::Relaxed))
    }

    /// Publishes `abi` (its `seq_count` is ignored) under the seqlock and returns the new even
    /// count (see [`publish_words`]).
    pub fn publish(&mut self, abi: &VmclockAbi) -> u32 {
        publish_words(self.mem.words(), abi.as_bytes())
    }

    /// Gives the memory back.
    pub fn into_inner(self) -> M {
        self.mem
    }
}
