//! Opening a page for the commands. Reads go through `vmtime_sys::follow`: a device is mapped,
//! a page file is read with `pread`, so a file truncated under a reader is an error, never a
//! SIGBUS.

use anyhow::Result;
use std::path::Path;
use vmclock::abi::ABI_SIZE;
use vmtime_sys::follow::{FollowError, PageReader};

pub use vmtime_sys::follow::FollowedPage;

/// A page (device or file) to read.
pub struct Page {
    reader: PageReader,
}

impl Page {
    pub fn open(path: &Path) -> Result<Page> {
        Ok(Page { reader: PageReader::open(path)? })
    }

    /// A consistent copy of the structure's bytes, validated or not.
    pub fn bytes(&self) -> Result<[u8; ABI_SIZE], FollowError> {
        self.reader.bytes().map(|(b, _)| b)
    }

    /// A consistent, validated snapshot.
    pub fn snapshot(&self) -> Result<vmclock::Snapshot, FollowError> {
        self.reader.read()
    }

    /// How many bytes of the page exist (re-checked: a file may shrink).
    pub fn available(&self) -> usize {
        self.reader.bytes().map_or(0, |(_, a)| a)
    }
}
