//! Opening a page for the commands: map it and take consistent copies.

use anyhow::{Context, Result};
use std::path::Path;
use vmclock::seqlock::{self, PageMemory};
use vmclock::{abi::ABI_SIZE, Mapping, ReadError};

/// A mapped page (device or file).
pub struct Page {
    pub map: Mapping,
}

impl Page {
    pub fn open(path: &Path) -> Result<Page> {
        let map = Mapping::open(path).with_context(|| format!("cannot map {}", path.display()))?;
        Ok(Page { map })
    }

    /// A consistent copy of the structure's bytes, validated or not.
    pub fn bytes(&self) -> Result<[u8; ABI_SIZE], ReadError> {
        let words = seqlock::read_raw(&self.map, seqlock::DEFAULT_MAX_WAIT)?;
        let mut bytes = [0u8; ABI_SIZE];
        for (b, w) in bytes.chunks_exact_mut(4).zip(words) {
            b.copy_from_slice(&w.to_ne_bytes());
        }
        Ok(bytes)
    }

    pub fn available(&self) -> usize {
        self.map.available()
    }
}
