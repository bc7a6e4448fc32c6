//! Reading a page someone else writes, without ever dying of it.
//!
//! A device (`/dev/vmclock0`) cannot shrink: it is mapped once and read with the seqlock. A
//! regular file can be truncated or replaced at any moment by whoever owns it, and touching a
//! mapped page beyond the end of a file is SIGBUS. So a page *file* is never mapped by a
//! follower: it is read with `pread` into private memory. The seqlock's protocol over copies: a
//! copy is taken twice; it is consistent when the two copies are equal and the count is even
//! (the count is read in the first copy before the body and again in the second after it, so no
//! write began or ended between them). A short file is an error the follower handles (holdover),
//! never a signal.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use vmclock::abi::{ABI_SIZE, PAGE_SIZE};
use vmclock::seqlock::{self, RawWords, WORDS};
use vmclock::{Mapping, ReadError, Snapshot};

/// Why a page could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The file is shorter than the structure (truncated by its owner, or not a page).
    #[error("{path} is only {len} bytes now (a page needs {ABI_SIZE}): holding over until it is a page again")]
    Short { path: String, len: u64 },
    /// No consistent copy within the wait (a writer stuck mid-update).
    #[error("{path}: no consistent copy ({err})")]
    Busy { path: String, err: ReadError },
    /// The copy is not a valid page.
    #[error("{path}: {err}")]
    Invalid { path: String, err: ReadError },
    /// A system call failed.
    #[error("cannot read {path}: {err}")]
    Io { path: String, err: io::Error },
    /// A page file every user may write: any of them could set the time a daemon passes on.
    #[error("{path}: a page file every user may write (mode {mode:04o}): any of them could set the time read from it; a daemon does not follow it (chmod o-w {path}, or give its publisher's own page)")]
    WorldWritable { path: String, mode: u32 },
    /// A page file in a directory others may write (not sticky): any of them could replace it.
    #[error("{path}: its directory {dir} (mode {mode:04o}) lets other users replace it: a daemon does not follow a page there (chmod go-w {dir}, or give its publisher's own page)")]
    OpenDir { path: String, dir: String, mode: u32 },
    /// The path no longer names the file followed, and what is there now cannot be read as a
    /// page (removed, or replaced by a fifo, a directory, junk): the old file is an orphan its
    /// publisher may no longer be writing, so it is not read either.
    #[error("{path} no longer names the page followed until now ({why}): holding over until a page is there again")]
    Lost { path: String, why: String },
}

enum Source {
    Device(Mapping),
    File(File),
    /// A file on sysfs: a PCI memory BAR (`/sys/bus/pci/devices/…/resourceN`, e.g. an ivshmem
    /// page in a guest) can only be mapped (`pread` fails with EIO), and the kernel fixes its size.
    Sysfs(Mapping),
}

/// statfs f_type of sysfs (linux/magic.h).
const SYSFS_MAGIC: u64 = 0x6265_6572;

fn on_sysfs(f: &File) -> bool {
    rustix::fs::fstatfs(f).is_ok_and(|s| s.f_type as u64 == SYSFS_MAGIC)
}

/// A page to read: a device mapped once, or a file read with `pread`.
pub struct PageReader {
    path: PathBuf,
    source: Source,
    dev_ino: (u64, u64),
    /// The mode of a regular file (not sysfs) that every user may write.
    world_writable: Option<u32>,
}

impl std::fmt::Debug for PageReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageReader").field("path", &self.path).finish_non_exhaustive()
    }
}

impl PageReader {
    /// Opens a page for reading (follows links: reading is harmless). The open never waits: a
    /// fifo put at the path (by mistake, or by whoever may replace the page file) is refused at
    /// once rather than blocking until someone writes to it.
    pub fn open(path: &Path) -> Result<Self, FollowError> {
        use std::os::unix::fs::OpenOptionsExt;
        let io_err = |err| FollowError::Io { path: path.display().to_string(), err };
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(io_err)?;
        let m = f.metadata().map_err(io_err)?;
        let source = if m.file_type().is_char_device() {
            Source::Device(Mapping::map(&f, false).map_err(|e| {
                io_err(io::Error::new(
                    e.kind(),
                    format!("a character device that cannot be mapped ({e}): not a vmclock device (give /dev/vmclock0 or a page file)"),
                ))
            })?)
        } else if m.file_type().is_file() && on_sysfs(&f) {
            Source::Sysfs(Mapping::map(&f, false).map_err(io_err)?)
        } else if m.file_type().is_file() {
            Source::File(f)
        } else {
            return Err(io_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a vmclock device or page file (a directory, fifo or socket)",
            )));
        };
        let world_writable = (matches!(source, Source::File(_)) && m.mode() & 0o002 != 0).then_some(m.mode() & 0o7777);
        Ok(PageReader { path: path.to_path_buf(), source, dev_ino: (m.dev(), m.ino()), world_writable })
    }

    /// The path it was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Refuses a page file every user may write ([`FollowError::WorldWritable`]), or one in a
    /// directory others may write that is not sticky ([`FollowError::OpenDir`]): the rules the
    /// publishers keep for their own pages.
    fn trusted(&self) -> Result<(), FollowError> {
        if let Some(mode) = self.world_writable {
            return Err(FollowError::WorldWritable { path: self.name(), mode });
        }
        if matches!(self.source, Source::File(_)) {
            let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            if let Ok(m) = std::fs::metadata(dir) {
                let mode = m.mode() & 0o7777;
                if mode & 0o022 != 0 && mode & 0o1000 == 0 {
                    return Err(FollowError::OpenDir { path: self.name(), dir: dir.display().to_string(), mode });
                }
            }
        }
        Ok(())
    }

    /// Whether it is a device (which has its own notification by `poll`).
    pub fn is_device(&self) -> bool {
        matches!(self.source, Source::Device(_))
    }

    /// The device's open file, if it is one (for its notification).
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    /// A consistent copy of the structure and how many bytes of the page exist.
    pub fn read_raw(&self) -> Result<(RawWords, usize), FollowError> {
        match &self.source {
            Source::Device(m) | Source::Sysfs(m) => {
                let w = seqlock::read_raw(m, seqlock::DEFAULT_MAX_WAIT)
                    .map_err(|err| FollowError::Busy { path: self.name(), err })?;
                Ok((w, PAGE_SIZE))
            }
            Source::File(f) => self.read_file(f),
        }
    }

    fn read_file(&self, f: &File) -> Result<(RawWords, usize), FollowError> {
        let io_err = |err| FollowError::Io { path: self.name(), err };
        let start = std::time::Instant::now();
        let mut attempts = 0u32;
        loop {
            let len = f.metadata().map_err(io_err)?.len();
            if len < ABI_SIZE as u64 {
                return Err(FollowError::Short { path: self.name(), len });
            }
            let a = pread_words(f).map_err(io_err)?;
            let b = pread_words(f).map_err(io_err)?;
            match (a, b) {
                (Some(a), Some(b)) if a == b && u32::from_le(a[seqlock::SEQ_WORD]) & 1 == 0 => {
                    return Ok((a, (len as usize).min(PAGE_SIZE)));
                }
                // Not a page at all (another magic): no writer to wait for; validation names it.
                (Some(a), Some(b)) if a == b && u32::from_le(a[0]) != vmclock::abi::MAGIC => {
                    return Ok((a, (len as usize).min(PAGE_SIZE)));
                }
                (None, _) | (_, None) => {
                    let len = f.metadata().map_err(io_err)?.len();
                    return Err(FollowError::Short { path: self.name(), len });
                }
                _ => {}
            }
            attempts += 1;
            let waited = start.elapsed();
            if waited >= seqlock::DEFAULT_MAX_WAIT {
                let err = ReadError::Timeout { attempts, waited_us: waited.as_micros() as u64 };
                return Err(FollowError::Busy { path: self.name(), err });
            }
            if attempts > 16 {
                std::thread::yield_now();
            }
        }
    }

    /// The page's markers (`seq_count`, `disruption_marker`, `vm_generation_counter`) now,
    /// cheaply and without waiting: for a device or a BAR, loads from the mapping under the
    /// seqlock (no system call); for a file, two `pread`s. `None` when a writer is mid-update,
    /// the copies differ, or the bytes are not a valid page: the caller looks again at its next
    /// check, and its next full read says what is wrong.
    pub fn markers(&self) -> Option<vmtime_core::cadence::Markers> {
        let (w, available) = match &self.source {
            Source::Device(m) | Source::Sysfs(m) => {
                let words = vmclock::seqlock::PageMemory::words(m);
                ((0..4).find_map(|_| seqlock::try_read(words))?, PAGE_SIZE)
            }
            Source::File(f) => {
                let a = pread_words(f).ok()??;
                let b = pread_words(f).ok()??;
                if a != b || u32::from_le(a[seqlock::SEQ_WORD]) & 1 != 0 {
                    return None;
                }
                (a, PAGE_SIZE)
            }
        };
        Snapshot::from_words(w, available).ok().map(|p| vmtime_core::cadence::Markers::of(&p))
    }

    /// A consistent, validated snapshot.
    pub fn read(&self) -> Result<Snapshot, FollowError> {
        let (w, available) = self.read_raw()?;
        Snapshot::from_words(w, available).map_err(|e| FollowError::Invalid { path: self.name(), err: e.into() })
    }

    /// The structure's bytes (validated or not) and how many bytes of the page exist.
    pub fn bytes(&self) -> Result<([u8; ABI_SIZE], usize), FollowError> {
        let (w, available) = self.read_raw()?;
        let mut bytes = [0u8; ABI_SIZE];
        for (b, w) in bytes.chunks_exact_mut(4).zip(w) {
            b.copy_from_slice(&w.to_ne_bytes());
        }
        Ok((bytes, available))
    }

    /// Whether the file at the path is another one than this reader's (replaced by a rename).
    pub fn replaced(&self) -> bool {
        std::fs::metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) != self.dev_ino)
    }
}

/// The structure's words by `pread`; `None` when the file is shorter.
fn pread_words(f: &File) -> io::Result<Option<RawWords>> {
    let mut buf = [0u8; ABI_SIZE];
    let mut got = 0;
    while got < ABI_SIZE {
        match f.read_at(&mut buf[got..], got as u64) {
            Ok(0) => return Ok(None),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let mut w = [0u32; WORDS];
    for (w, b) in w.iter_mut().zip(buf.chunks_exact(4)) {
        *w = u32::from_ne_bytes(b.try_into().expect("4 bytes"));
    }
    Ok(Some(w))
}

/// A page file mapped read-only for the cheap checks of its markers (a few loads, no system
/// call), guarded against SIGBUS ([`vmclock::guard`]): a file truncated under it reads as zeros,
/// which is no page, and the guard says so. The full reads stay `pread`s.
#[derive(Debug)]
struct FileProbe {
    // Declared first: unregistered before the mapping is unmapped.
    guard: vmclock::guard::Protection,
    map: Mapping,
}

impl FileProbe {
    fn of(f: &File) -> Option<FileProbe> {
        let map = Mapping::map(f, false).ok()?;
        let (start, len) = map.region();
        let guard = vmclock::guard::protect(start, len).ok()?;
        Some(FileProbe { guard, map })
    }
}

/// A page followed across its publisher's restarts: when the file at the path is replaced (a
/// new inode), the new one is opened. When the path names nothing readable as a page any more
/// (removed, or replaced by a fifo, a directory, a socket), the old file is not followed as an
/// orphan: reads fail ([`FollowError::Lost`]) until a page is there again, so every follower
/// (relay, feeds, sync) holds over alike.
#[derive(Debug)]
pub struct FollowedPage {
    reader: PageReader,
    lost: Option<String>,
    /// For a page file: its mapping for the marker checks (made at the first check).
    probe: Option<FileProbe>,
}

impl FollowedPage {
    /// Opens the page at `path`. A daemon passes on the time it reads here, so a page *file*
    /// every user may write (mode o+w) is refused: anyone could set that time. (Whose file it
    /// is cannot be judged here: a host's page belongs to the host's user.)
    pub fn open(path: &Path) -> Result<Self, FollowError> {
        let reader = PageReader::open(path)?;
        reader.trusted()?;
        Ok(FollowedPage { reader, lost: None, probe: None })
    }

    /// The reader of the current file.
    pub fn reader(&self) -> &PageReader {
        &self.reader
    }

    /// The path followed.
    pub fn path(&self) -> &Path {
        self.reader.path()
    }

    /// Re-opens the path if its file was replaced; returns whether a new file is followed.
    /// A path that names nothing readable as a page now makes reads fail until it does again.
    pub fn refresh(&mut self) -> bool {
        if self.reader.is_device() {
            return false;
        }
        match std::fs::metadata(&self.reader.path) {
            Ok(m) if (m.dev(), m.ino()) == self.reader.dev_ino => {
                self.lost = None;
                false
            }
            Err(e) => {
                self.lost = Some(if e.kind() == io::ErrorKind::NotFound {
                    "nothing is there".to_string()
                } else {
                    e.to_string()
                });
                false
            }
            Ok(_) => match PageReader::open(&self.reader.path).and_then(|r| r.trusted().map(|()| r)) {
                Ok(r) => {
                    self.reader = r;
                    self.lost = None;
                    self.probe = None;
                    true
                }
                Err(FollowError::Io { err, .. }) => {
                    self.lost = Some(err.to_string());
                    false
                }
                Err(e) => {
                    self.lost = Some(e.to_string());
                    false
                }
            },
        }
    }

    /// A consistent, validated snapshot of the current file.
    pub fn read(&self) -> Result<Snapshot, FollowError> {
        if let Some(why) = &self.lost {
            return Err(FollowError::Lost { path: self.reader.name(), why: why.clone() });
        }
        self.reader.read()
    }

    /// The markers now, cheaply: loads from the mapped page, no system call. A device or a BAR
    /// is mapped already ([`PageReader::markers`]); a page file is mapped for these checks at the
    /// first one, under the SIGBUS guard (where the guard cannot be had, two `pread`s). A file
    /// replaced by its publisher is found at the next full read ([`FollowedPage::refresh`]).
    pub fn markers(&mut self) -> Option<vmtime_core::cadence::Markers> {
        let Source::File(f) = &self.reader.source else { return self.reader.markers() };
        if self.probe.as_ref().is_some_and(|p| p.guard.gone()) {
            self.probe = None; // truncated under us: look again by pread until it is replaced
            return self.reader.markers();
        }
        if self.probe.is_none() {
            self.probe = FileProbe::of(f);
        }
        match &self.probe {
            Some(p) => {
                let words = vmclock::seqlock::PageMemory::words(&p.map);
                let w = (0..4).find_map(|_| seqlock::try_read(words))?;
                let snap = Snapshot::from_words(w, PAGE_SIZE).ok()?;
                (!p.guard.gone()).then(|| vmtime_core::cadence::Markers::of(&snap))
            }
            None => self.reader.markers(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_is_refused_at_once_not_waited_on() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("fifo");
        rustix::fs::mkfifoat(rustix::fs::CWD, &p, rustix::fs::Mode::from_raw_mode(0o600)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let q = p.clone();
        std::thread::spawn(move || tx.send(PageReader::open(&q).map(|_| ()).map_err(|e| e.to_string())));
        // A hang detector, not a synchronisation: the open either returns or blocks forever.
        let r = match rx.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(r) => r,
            Err(_) => {
                // Unblock the opener (a writer arrives) so the process can end, then fail.
                let _w = std::fs::OpenOptions::new().write(true).open(&p);
                panic!("opening a fifo as a page blocked");
            }
        };
        let e = r.unwrap_err();
        assert!(e.contains("not a vmclock device or page file"), "{e}");
    }

    #[test]
    fn a_device_that_is_not_vmclock_is_named() {
        if !rustix::process::geteuid().is_root() {
            return; // mknod needs root
        }
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("null");
        // /dev/null's numbers (1, 3), made here: it cannot be mapped.
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &p,
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o600),
            rustix::fs::makedev(1, 3),
        )
        .unwrap();
        let e = PageReader::open(&p).unwrap_err().to_string();
        assert!(e.contains("not a vmclock device") && e.contains("/dev/vmclock0"), "{e}");
    }

    #[test]
    fn a_file_that_is_not_a_page_is_named_as_such_not_waited_on() {
        // Text whose bytes 12..16 make an odd "seq_count": not a writer stuck mid-update.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("text");
        std::fs::write(&p, "root:x:0:0:root:/root:/bin/bash\n".repeat(8)).unwrap();
        let mut b = std::fs::read(&p).unwrap();
        b[12] |= 1;
        std::fs::write(&p, &b).unwrap();
        let e = PageReader::open(&p).unwrap().read().unwrap_err();
        assert!(matches!(e, FollowError::Invalid { .. }), "{e}");
        assert!(e.to_string().contains("magic"), "{e}");
    }

    #[test]
    fn markers_of_a_page_file_are_loads_that_survive_truncation() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("page");
        let page = vmclock::PageBuilder::new().disruption_marker(5).page_bytes();
        std::fs::write(&p, &page).unwrap();
        let mut f = FollowedPage::open(&p).unwrap();
        let m = f.markers().expect("markers");
        assert_eq!(m.disruption_marker, 5);
        assert!(f.probe.is_some(), "a page file is mapped for the checks");
        // Written in place: the mapping sees it.
        let w = vmclock::Mapping::open_rw(&p).unwrap();
        let mut bytes = page.clone();
        bytes[0x10..0x18].copy_from_slice(&9u64.to_le_bytes());
        vmclock::seqlock::publish_words(vmclock::seqlock::PageMemory::words(&w), &bytes[..ABI_SIZE]);
        let m2 = f.markers().expect("markers");
        assert_eq!((m2.disruption_marker, m2.seq_count), (9, m.seq_count + 2));
        drop(w);
        // Truncated to nothing: a load beyond the file is caught by the guard, not a SIGBUS.
        std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(0).unwrap();
        assert_eq!(f.markers(), None);
        assert_eq!(f.markers(), None);
        // A page again (same file): read again.
        std::fs::write(&p, &page).unwrap();
        assert_eq!(f.markers().map(|m| m.disruption_marker), Some(5));
    }

    #[test]
    fn a_truncated_file_is_an_error_not_a_signal() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("page");
        std::fs::write(&p, vmclock::PageBuilder::new().page_bytes()).unwrap();
        let r = PageReader::open(&p).unwrap();
        r.read_raw().unwrap();
        std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(10).unwrap();
        let e = r.read_raw().unwrap_err();
        assert!(matches!(e, FollowError::Short { len: 10, .. }), "{e}");
        std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(0).unwrap();
        assert!(matches!(r.read_raw().unwrap_err(), FollowError::Short { len: 0, .. }));
    }
}
