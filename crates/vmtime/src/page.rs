//! Opening a page for the commands. Reads go through `vmtime_sys::follow`: a device is mapped,
//! a page file is read with `pread`, so a file truncated under a reader is an error, never a
//! SIGBUS.

use anyhow::Result;
use std::path::{Path, PathBuf};
use vmclock::abi::ABI_SIZE;
use vmtime_sys::follow::{FollowError, PageReader};

pub use vmtime_sys::follow::FollowedPage;

/// A page (device or file) to read.
#[derive(Debug)]
pub struct Page {
    reader: PageReader,
    pub path: PathBuf,
}

impl Page {
    pub fn open(path: &Path) -> Result<Page> {
        Ok(Page { reader: PageReader::open(path)?, path: path.to_path_buf() })
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

/// Warns, once per page path in this process, when a page holds its TAI offset in the legacy
/// convention (a positive `tai_offset_sec`, meaning TAI − UTC, as the RFC `/dev/vmclock_host`
/// and older vmtime pages wrote it). The value is still used, as TAI − UTC. Returns whether a
/// warning was printed.
pub fn warn_legacy_tai(page: &Path, snap: &vmclock::Snapshot) -> bool {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static WARNED: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    if !snap.tai_offset_is_legacy() {
        return false;
    }
    let mut warned = WARNED.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if !warned.insert(page.to_path_buf()) {
        return false;
    }
    eprintln!("{}", legacy_tai_message(page, snap));
    true
}

/// The one line [`warn_legacy_tai`] prints.
pub fn legacy_tai_message(page: &Path, snap: &vmclock::Snapshot) -> String {
    let v = snap.tai_offset_raw().unwrap_or_default();
    format!(
        "vmtime: warning: {} stores tai_offset_sec = +{v}, the legacy sign (TAI − UTC); the driver and spec v1.1 store UTC − TAI (−{v}): reading it as TAI − UTC = {v} s; fix the page's producer",
        page.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmclock::abi::{counter_id, flags};
    use vmclock::{PageBuilder, Period, Snapshot, Tai, Timestamp};

    fn page(raw: i16) -> Snapshot {
        let b = PageBuilder::new()
            .reference(
                counter_id::X86_TSC,
                0,
                Timestamp::<Tai>::from_parts(1_795_000_037, 0),
                Period::from_hz(1 << 30).unwrap(),
            )
            .tai_offset_raw(raw);
        Snapshot::new(b.build(), 4096).unwrap()
    }

    #[test]
    fn legacy_tai_warns_once_per_page() {
        let (a, b) = (Path::new("/nonexistent/legacy-a"), Path::new("/nonexistent/legacy-b"));
        assert!(!warn_legacy_tai(a, &page(-37)), "the driver's convention is not legacy");
        assert!(warn_legacy_tai(a, &page(37)));
        assert!(!warn_legacy_tai(a, &page(37)), "once per page, not per read");
        assert!(warn_legacy_tai(b, &page(37)), "another page warns on its own");
        let m = legacy_tai_message(a, &page(37));
        assert!(m.contains("/nonexistent/legacy-a") && m.contains("+37") && m.contains("UTC − TAI"), "{m}");
        // A positive value with TAI_OFFSET_VALID clear is not read at all: no warning.
        let abi = PageBuilder::new().tai_offset_raw(37).flag(flags::TAI_OFFSET_VALID, false).build();
        assert!(!warn_legacy_tai(Path::new("/nonexistent/legacy-c"), &Snapshot::new(abi, 4096).unwrap()));
    }
}
