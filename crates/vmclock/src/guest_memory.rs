//! A vmclock page inside a rust-vmm guest memory (`vm-memory`'s `GuestMemoryMmap`), so a VMM
//! can publish a guest's page in place (feature `vm-memory`).
//!
//! Writes go through the same seqlock as every other page. They bypass vm-memory's dirty-page
//! bitmap: a VMM that tracks dirty pages for live migration should mark the page dirty after
//! each update (the relay rewrites it after a migration anyway).

use crate::abi::{ABI_SIZE, PAGE_SIZE};
use crate::seqlock::{AtomicU32, PageMemory, WritableMemory};
use std::ptr::NonNull;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// The page at a guest physical address of a guest memory.
#[derive(Debug)]
pub struct GuestPage {
    // Holds the regions (shared, reference-counted) so `ptr` stays valid.
    _mem: GuestMemoryMmap,
    ptr: NonNull<u8>,
}

// SAFETY: the page is plain shared memory accessed only through atomics; `_mem` keeps the
// mapping alive for the value's lifetime, on any thread.
unsafe impl Send for GuestPage {}
// SAFETY: as above: all access goes through `&[AtomicU32]`.
unsafe impl Sync for GuestPage {}

/// Why a guest page cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum GuestPageError {
    /// The page is not wholly inside one region of guest memory.
    #[error("guest page at {0:#x}: {1}")]
    Memory(u64, vm_memory::GuestMemoryError),
    /// The address is not 4-byte aligned.
    #[error("guest page at {0:#x} is not 4-byte aligned")]
    Unaligned(u64),
}

impl GuestPage {
    /// The 4096 bytes at `addr` of `mem` (which must lie in one region). `mem` is cloned, which
    /// only shares its regions.
    pub fn new(mem: &GuestMemoryMmap, addr: GuestAddress) -> Result<Self, GuestPageError> {
        if addr.0 % 4 != 0 {
            return Err(GuestPageError::Unaligned(addr.0));
        }
        let slice = mem.get_slice(addr, PAGE_SIZE).map_err(|e| GuestPageError::Memory(addr.0, e))?;
        let ptr = NonNull::new(slice.ptr_guard_mut().as_ptr()).expect("a mapped slice is not null");
        Ok(GuestPage { _mem: mem.clone(), ptr })
    }
}

impl PageMemory for GuestPage {
    fn words(&self) -> &[AtomicU32] {
        // SAFETY: `ptr` points at PAGE_SIZE bytes of one mapped region (checked by get_slice),
        // 4-byte aligned (checked in `new`; regions are page-aligned), kept mapped by `_mem` for
        // as long as `self` lives. The guest may touch the page concurrently: every access here
        // is atomic, and the seqlock makes the guest's reads consistent.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<AtomicU32>(), ABI_SIZE / 4) }
    }
    fn available(&self) -> usize {
        PAGE_SIZE
    }
}

impl WritableMemory for GuestPage {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::counter_id;
    use crate::{PageBuilder, Period, Tai, Timestamp, Writer};
    use vm_memory::Bytes;

    #[test]
    fn publishes_into_guest_memory() {
        let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let addr = GuestAddress(0xfe000);
        let mut w = Writer::new(GuestPage::new(&mem, addr).unwrap());
        let page = PageBuilder::new()
            .reference(
                counter_id::X86_TSC,
                5,
                Timestamp::<Tai>::from_parts(9, 0),
                Period::from_hz(1_000_000_000).unwrap(),
            )
            .build();
        assert_eq!(w.publish(&page), 2);
        // What the guest sees through vm-memory's own accessors.
        let mut bytes = [0u8; PAGE_SIZE];
        mem.read_slice(&mut bytes, addr).unwrap();
        let s = crate::Snapshot::from_bytes(&bytes).unwrap();
        assert_eq!((s.seq_count(), s.counter_value(), s.time_sec()), (2, Some(5), Some(9)));
        assert!(GuestPage::new(&mem, GuestAddress((1 << 20) - 100)).is_err(), "crosses the end");
        assert!(matches!(GuestPage::new(&mem, GuestAddress(2)), Err(GuestPageError::Unaligned(2))));
    }
}
