//! The guest page's guard: a relay is the only writer of its guest page, so a page that is not
//! what it last wrote was written by someone else.
//!
//! The one who writes it in practice is the VMM: QEMU copies an ivshmem page file's contents in
//! its RAM stream (`master=on`) and writes them into the destination's file when a migration
//! arrives, and `loadvm` writes the snapshot's page into the file. Either way the guest then
//! resumes under the counter map of another host (or of another moment) and under a disruption
//! marker it has already seen: its calibration is wrong and nothing tells it so. The relay looks
//! at its page at a short cadence, compares it with a record of its own last write
//! ([`Written`]: `seq_count`, `disruption_marker` and a checksum of the rest), and on any
//! difference (a torn look included: the relay never leaves its page mid-write) reports an
//! [`Overwrite`]. [`crate::relay::GuestRelay::overwritten`] then makes the guest's next page say
//! so: a marker the guest has not seen, and no time until the new counter map is confirmed.
//!
//! Sans-IO: the caller reads the page (one seqlock attempt, no waiting) and hands in the bytes.

use vmclock::abi::{VmclockAbi, ABI_SIZE};

/// Byte offset of `seq_count` in the page (it is not part of the body's checksum: the writer sets
/// it around the body).
const SEQ_AT: core::ops::Range<usize> = 12..16;

/// FNV-1a (64-bit) over the page's structure without its `seq_count`: cheap, and any change of
/// a byte changes it.
pub fn body_sum(bytes: &[u8; ABI_SIZE]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, b) in bytes.iter().enumerate() {
        if SEQ_AT.contains(&i) {
            continue;
        }
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// What the relay last wrote into its guest page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    /// The even `seq_count` the write ended with.
    pub seq_count: u32,
    /// The disruption marker it carried.
    pub disruption_marker: u64,
    /// [`body_sum`] of the structure written.
    pub body_sum: u64,
}

impl Written {
    /// The record of `page`, published with the final `seq_count` `seq`.
    pub fn of(page: &VmclockAbi, seq: u32) -> Self {
        let bytes: [u8; ABI_SIZE] = zerocopy::IntoBytes::as_bytes(page).try_into().expect("exact size");
        Written { seq_count: seq, disruption_marker: page.disruption_marker.get(), body_sum: body_sum(&bytes) }
    }
}

/// The first difference found between the page and the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Difference {
    /// The page was mid-write or changed during the look (odd or moving `seq_count`): nobody
    /// but the relay may write it, and the relay was not writing.
    Unstable,
    /// Another `seq_count`.
    SeqCount {
        /// What the relay wrote.
        wrote: u32,
        /// What the page holds.
        found: u32,
    },
    /// Another disruption marker (same `seq_count`).
    Marker {
        /// What the relay wrote.
        wrote: u64,
        /// What the page holds.
        found: u64,
    },
    /// The same `seq_count` and marker, another body.
    Body,
}

impl core::fmt::Display for Difference {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Difference::Unstable => write!(f, "its seq_count is odd or moving, and this relay is not writing it"),
            Difference::SeqCount { wrote, found } => write!(f, "seq_count {found}, this relay wrote {wrote}"),
            Difference::Marker { wrote, found } => {
                write!(f, "disruption marker {found:#x}, this relay wrote {wrote:#x}")
            }
            Difference::Body => write!(f, "its fields differ from what this relay wrote (same seq_count and marker)"),
        }
    }
}

/// The guest page was written by someone else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overwrite {
    /// What differs.
    pub difference: Difference,
    /// The marker the page holds now (what the guest may have read last), if it could be read.
    pub found_marker: Option<u64>,
    /// The VM generation the page holds now, if it could be read: the guest's, when a migration
    /// brought the page along (a live migration keeps the guest's generation).
    pub found_generation: Option<u64>,
}

/// What one look at the guest page found.
#[must_use = "an overwritten page must be rewritten at once"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The page is what the relay last wrote (or the relay has not written yet).
    Ours,
    /// Someone else wrote it.
    Overwritten(Overwrite),
}

/// Compares looks at the guest page with the relay's last write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Guard {
    last: Option<Written>,
}

impl Guard {
    /// A guard with no write recorded yet (every look is [`Verdict::Ours`] until one is).
    pub fn new() -> Self {
        Guard { last: None }
    }

    /// Records a write of the relay's.
    pub fn wrote(&mut self, w: Written) {
        self.last = Some(w);
    }

    /// The last write recorded.
    pub fn last(&self) -> Option<Written> {
        self.last
    }

    /// Judges one look at the page: `bytes` is a consistent copy of its structure (one seqlock
    /// attempt), or `None` when the attempt saw an odd or moving `seq_count`.
    pub fn look(&self, bytes: Option<&[u8; ABI_SIZE]>) -> Verdict {
        let Some(w) = self.last else { return Verdict::Ours };
        let Some(b) = bytes else {
            return Verdict::Overwritten(Overwrite {
                difference: Difference::Unstable,
                found_marker: None,
                found_generation: None,
            });
        };
        let page = VmclockAbi::from_le_bytes(b);
        let (seq, marker) = (page.seq_count.get(), page.disruption_marker.get());
        let difference = if seq != w.seq_count {
            Difference::SeqCount { wrote: w.seq_count, found: seq }
        } else if marker != w.disruption_marker {
            Difference::Marker { wrote: w.disruption_marker, found: marker }
        } else if body_sum(b) != w.body_sum {
            Difference::Body
        } else {
            return Verdict::Ours;
        };
        let generation_present = page.flags.get() & vmclock::abi::flags::VM_GEN_COUNTER_PRESENT != 0;
        Verdict::Overwritten(Overwrite {
            difference,
            found_marker: Some(marker),
            found_generation: generation_present.then(|| page.vm_generation_counter.get()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmclock::abi::{counter_id, flags, status};
    use vmclock::{PageBuilder, Period, Tai, Timestamp};

    fn page(marker: u64, seq: u32, counter: u64) -> VmclockAbi {
        let mut p = PageBuilder::new()
            .reference(counter_id::X86_TSC, counter, Timestamp::<Tai>::from_parts(1_795_000_037, 0), {
                Period::from_hz(2_500_000_000).unwrap()
            })
            .tai_minus_utc(37)
            .status(status::SYNCHRONIZED)
            .maxerror(1_000, 1 << 20)
            .disruption_marker(marker)
            .vm_generation(9)
            .flag(flags::VM_GEN_COUNTER_PRESENT, true)
            .build();
        p.seq_count.set(seq);
        p
    }

    fn bytes(p: &VmclockAbi) -> [u8; ABI_SIZE] {
        zerocopy::IntoBytes::as_bytes(p).try_into().unwrap()
    }

    #[test]
    fn nothing_written_yet_is_ours() {
        let g = Guard::new();
        assert_eq!(g.look(None), Verdict::Ours);
        assert_eq!(g.look(Some(&bytes(&page(1, 2, 3)))), Verdict::Ours);
    }

    #[test]
    fn the_page_as_written_is_ours() {
        let mut g = Guard::new();
        let p = page(5, 8, 1_000);
        g.wrote(Written::of(&p, 8));
        assert_eq!(g.look(Some(&bytes(&p))), Verdict::Ours);
    }

    #[test]
    fn every_kind_of_foreign_write_is_seen() {
        let mut g = Guard::new();
        let mine = page(5, 8, 1_000);
        g.wrote(Written::of(&mine, 8));
        // The source's page, brought by a migration: another seq_count and marker.
        let theirs = page(0x77, 40, 9_999);
        let Verdict::Overwritten(o) = g.look(Some(&bytes(&theirs))) else { panic!("not seen") };
        assert_eq!(o.difference, Difference::SeqCount { wrote: 8, found: 40 });
        assert_eq!((o.found_marker, o.found_generation), (Some(0x77), Some(9)));
        // Same seq_count, another marker.
        let Verdict::Overwritten(o) = g.look(Some(&bytes(&page(6, 8, 1_000)))) else { panic!("not seen") };
        assert_eq!(o.difference, Difference::Marker { wrote: 5, found: 6 });
        // Same seq_count and marker (two relays can agree on both): another counter map.
        let Verdict::Overwritten(o) = g.look(Some(&bytes(&page(5, 8, 1_001)))) else { panic!("not seen") };
        assert_eq!(o.difference, Difference::Body);
        // Any single byte outside seq_count.
        for i in (0..ABI_SIZE).filter(|i| !SEQ_AT.contains(i)) {
            let mut b = bytes(&mine);
            b[i] ^= 0x01;
            assert!(matches!(g.look(Some(&b)), Verdict::Overwritten(_)), "byte {i} changed unseen");
        }
        // A page the relay is not writing but which is odd or moving (a copy caught mid-write).
        let Verdict::Overwritten(o) = g.look(None) else { panic!("not seen") };
        assert_eq!((o.difference, o.found_marker), (Difference::Unstable, None));
    }

    #[test]
    fn a_page_without_a_generation_reports_none() {
        let mut g = Guard::new();
        g.wrote(Written::of(&page(5, 8, 1_000), 8));
        let mut p = page(5, 10, 1_000);
        p.flags.set(p.flags.get() & !flags::VM_GEN_COUNTER_PRESENT);
        let Verdict::Overwritten(o) = g.look(Some(&bytes(&p))) else { panic!("not seen") };
        assert_eq!(o.found_generation, None);
    }

    #[test]
    fn the_checksum_ignores_only_seq_count() {
        let p = page(5, 8, 1_000);
        let mut q = p;
        q.seq_count.set(1_000);
        assert_eq!(body_sum(&bytes(&p)), body_sum(&bytes(&q)));
        assert_ne!(body_sum(&bytes(&p)), body_sum(&bytes(&page(5, 8, 1_001))));
    }
}
