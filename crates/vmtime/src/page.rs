//! Opening a page for the commands: map it and take consistent copies.

use anyhow::{Context, Result};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
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

/// A page file mapped read-only that follows its publisher: when the file at `path` is replaced
/// (a new inode), it is mapped again. A device keeps its inode and is mapped once.
pub struct FollowedPage {
    pub path: PathBuf,
    pub map: Mapping,
    ino: u64,
}

impl FollowedPage {
    pub fn open(path: &Path) -> Result<Self> {
        let map = Mapping::open(path).with_context(|| format!("cannot map {}", path.display()))?;
        let ino = std::fs::metadata(path)?.ino();
        Ok(FollowedPage { path: path.to_path_buf(), map, ino })
    }

    /// Maps the file again if it was replaced; returns whether it was.
    pub fn refresh(&mut self) -> Result<bool> {
        let ino = std::fs::metadata(&self.path).map(|m| m.ino()).unwrap_or(self.ino);
        if ino == self.ino {
            return Ok(false);
        }
        self.map = Mapping::open(&self.path).with_context(|| format!("cannot map {}", self.path.display()))?;
        self.ino = ino;
        Ok(true)
    }
}
