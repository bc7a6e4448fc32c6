//! The OS side of the feeds: chrony's SOCK refclock socket and ClockBound's shared-memory
//! segment (layouts and decisions in `vmtime_core::feed`).

use crate::files::FileError;
use rustix::fs::{self as rfs, AtFlags, FileType, FlockOperation, Mode, OFlags, RenameFlags, CWD};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU16, AtomicU64, Ordering};
use vmtime_core::feed::clockbound::{Layout, HEADER_SIZE, LAYOUT_V2, MAGIC};

/// A datagram socket that sends to chronyd's SOCK refclock socket (which chronyd creates).
#[derive(Debug)]
pub struct ChronySocket {
    sock: UnixDatagram,
    path: PathBuf,
}

impl ChronySocket {
    /// An unbound datagram socket aimed at `path`.
    pub fn new(path: &Path) -> io::Result<Self> {
        let sock = UnixDatagram::unbound()?;
        sock.set_nonblocking(true)?;
        Ok(ChronySocket { sock, path: path.to_path_buf() })
    }

    /// Sends one sample. Fails when chronyd is not listening (ENOENT, ECONNREFUSED) or its
    /// queue is full (WouldBlock): the caller drops the sample, never waits.
    pub fn send(&self, sample: &[u8]) -> io::Result<()> {
        let n = self.sock.send_to(sample, &self.path)?;
        if n != sample.len() {
            return Err(io::Error::other("short datagram"));
        }
        Ok(())
    }

    /// Why a send failed, in words, from the error and what is at the path now.
    pub fn diagnose(&self, err: &io::Error) -> SendProblem {
        let found = rfs::statat(CWD, &self.path, AtFlags::empty()).ok().map(|st| FileType::from_raw_mode(st.st_mode));
        SendProblem::of(err, found)
    }
}

/// Why chronyd did not get a sample: each names the cause and what to do (logged when it
/// changes, not at every interval).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendProblem {
    /// Nothing at the path.
    #[error(
        "no socket there: is chronyd running with `refclock SOCK PATH` naming this path? (retrying each interval)"
    )]
    Missing,
    /// A file that is not a socket (chronyd replaces it when it starts).
    #[error("{0} is there, not chronyd's socket: give the path of chrony.conf's `refclock SOCK` line (chronyd replaces the file when it starts; retrying each interval)")]
    NotASocket(&'static str),
    /// A socket that nobody has open (chronyd stopped and left it).
    #[error("nobody listens on this socket: chronyd is not running, or uses another path (retrying each interval)")]
    NoListener,
    /// The listener's queue is full: it does not read.
    #[error("chronyd is not reading its samples (its queue is full): samples are dropped until it reads again")]
    QueueFull,
    /// The socket or its directory may not be written by this user.
    #[error("permission denied: run the feed as root (chronyd creates its SOCK socket as root, mode 0755, before it drops privileges)")]
    PermissionDenied,
    /// Anything else.
    #[error("cannot send ({0}) (retrying each interval)")]
    Other(rustix::io::Errno),
}

impl SendProblem {
    /// The problem for a send error and the file type at the path (`None`: nothing there).
    pub fn of(err: &io::Error, found: Option<FileType>) -> Self {
        let errno = rustix::io::Errno::from_io_error(err);
        match (errno, found) {
            (Some(rustix::io::Errno::ACCESS | rustix::io::Errno::PERM), _) => SendProblem::PermissionDenied,
            (Some(rustix::io::Errno::AGAIN | rustix::io::Errno::NOBUFS), _) => SendProblem::QueueFull,
            (_, None) => SendProblem::Missing,
            (_, Some(FileType::Socket)) if errno == Some(rustix::io::Errno::CONNREFUSED) => SendProblem::NoListener,
            (_, Some(t)) if t != FileType::Socket => SendProblem::NotASocket(crate::files::kind_name(t)),
            (Some(e), _) => SendProblem::Other(e),
            (None, _) => SendProblem::Other(rustix::io::Errno::IO),
        }
    }
}

/// Refuses a `--socket` that can never become chronyd's socket (a directory: chronyd could not
/// bind there either). Anything else is accepted: chronyd creates or replaces it when it starts.
pub fn check_chrony_socket_path(path: &Path) -> Result<(), FileError> {
    use std::os::unix::ffi::OsStrExt;
    // sockaddr_un's sun_path holds 108 bytes with the final NUL (chronyd refuses a longer
    // path: "path ... is too long"; sendto could never reach it).
    if path.as_os_str().as_bytes().len() > 107 {
        return Err(FileError::UnsafeDir {
            path: path.display().to_string(),
            why: format!("{} bytes long, more than the 107 a Unix socket path may have", path.as_os_str().len()),
            fix: "give chronyd and the feed a shorter path".into(),
        });
    }
    match rfs::statat(CWD, path, AtFlags::empty()) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
            Err(FileError::NotASocket { path: path.display().to_string(), found: "a directory".into() })
        }
        _ => Ok(()),
    }
}

/// Only a file of ours (or root's) that only its owner may write, with one name, is reused.
fn owned_safely(path: &Path, st: &rfs::Stat) -> Result<(), FileError> {
    let disp = || path.display().to_string();
    let me = rustix::process::geteuid().as_raw();
    if st.st_mode & 0o022 != 0 || (st.st_uid != me && st.st_uid != 0) {
        return Err(FileError::UnsafeDir {
            path: disp(),
            why: format!("the segment is owned by uid {} with mode {:o}", st.st_uid, st.st_mode & 0o7777),
            fix: "remove it (the feed creates a new one) or make it yours with mode 0644".into(),
        });
    }
    // A second name for the file (a hard link) is a way to it that the directory's checks
    // do not cover: write only a file that has one name.
    if st.st_nlink != 1 {
        return Err(FileError::UnsafeDir {
            path: disp(),
            why: format!("the file has {} names (hard links)", st.st_nlink),
            fix: "remove it: the feed creates a new one".into(),
        });
    }
    Ok(())
}

/// ClockBound's segment file, mapped for writing: the header, then one `ClockErrorBound`
/// guarded by the header's generation (odd while written, never 0 once written). The layout is
/// 2.x's (`shm0`) or 3.x's (`shm1`): the same header, another version word and body.
#[derive(Debug)]
pub struct ClockBoundSegment {
    ptr: NonNull<u8>,
    path: PathBuf,
    layout: Layout,
    /// The open file, holding the lock.
    _lock: std::fs::File,
}

// SAFETY: the mapping is shared memory written only through atomics by the one owner (`&mut`
// for writes); the pointer stays valid until drop.
unsafe impl Send for ClockBoundSegment {}

impl ClockBoundSegment {
    /// Opens `path` if it already is a segment of this layout (clients that mapped it keep
    /// following it), else creates it (under an `O_EXCL` temporary name, mode 0644, renamed
    /// over nothing). Nothing is written through a symbolic link, anything else at the path is
    /// refused, and the file is locked (`flock`) against a second feed. Its generation is 0
    /// (not readable) until the first write.
    pub fn open_or_create(path: &Path) -> Result<Self, FileError> {
        Self::open_or_create_as(path, LAYOUT_V2)
    }

    /// Checks what is at `path` without creating or opening anything for writing: nothing, or
    /// a regular file (not a link) of this user's or root's that only its owner may write, with
    /// one name. A feed with two segments checks both before it creates either, so a refusal
    /// leaves no new file behind.
    pub fn check_path(path: &Path, layout: Layout) -> Result<(), FileError> {
        let disp = || path.display().to_string();
        match rfs::statat(CWD, path, AtFlags::SYMLINK_NOFOLLOW) {
            Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(FileError::Io { op: "inspect", path: disp(), err: e.into() }),
            Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                FileType::RegularFile => owned_safely(path, &st),
                FileType::Symlink => Err(FileError::UnsafeDir {
                    path: disp(),
                    why: "a symbolic link is there (the feed never writes through one)".into(),
                    fix: "remove it: the feed creates the segment".into(),
                }),
                t => Err(FileError::WrongKind {
                    path: disp(),
                    found: crate::files::kind_name(t).into(),
                    what: layout.name,
                }),
            },
        }
    }

    /// The same for a segment of `layout`.
    pub fn open_or_create_as(path: &Path, layout: Layout) -> Result<Self, FileError> {
        let size = layout.segment_size();
        let disp = || path.display().to_string();
        let io = |op: &'static str, e: rustix::io::Errno| FileError::Io { op, path: disp(), err: e.into() };
        let symlink = || FileError::UnsafeDir {
            path: disp(),
            why: "a symbolic link is there (the feed never writes through one)".into(),
            fix: "remove it: the feed creates the segment".into(),
        };
        match rfs::statat(CWD, path, AtFlags::SYMLINK_NOFOLLOW) {
            Err(rustix::io::Errno::NOENT) => match create(path, layout) {
                // Another feed created it since the check: open it (and find its lock) below.
                Err(FileError::Io { err, .. }) if err.kind() == io::ErrorKind::AlreadyExists => {}
                Err(FileError::Io { err, .. }) if err.kind() == io::ErrorKind::PermissionDenied => {
                    return Err(denied(path, "cannot create the segment in its directory"))
                }
                r => r?,
            },
            Err(e) => return Err(io("inspect", e)),
            Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                FileType::RegularFile => {}
                FileType::Symlink => return Err(symlink()),
                t => {
                    return Err(FileError::WrongKind {
                        path: disp(),
                        found: crate::files::kind_name(t).into(),
                        what: layout.name,
                    })
                }
            },
        }
        let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = rfs::openat(CWD, path, flags, Mode::empty()).map_err(|e| match e {
            rustix::io::Errno::LOOP => symlink(),
            rustix::io::Errno::ACCESS | rustix::io::Errno::PERM => denied(path, "cannot open the segment for writing"),
            e => io("open for writing", e),
        })?;
        rfs::flock(&fd, FlockOperation::NonBlockingLockExclusive).map_err(|e| match e {
            rustix::io::Errno::WOULDBLOCK => FileError::Locked {
                path: disp(),
                holder: format!("vmtime feed clockbound, {}", crate::files::lock_holder(&fd)),
            },
            e => io("lock", e),
        })?;
        // The segment is mapped shared and written in place: a file someone else may write to
        // could be truncated under the mapping (SIGBUS in the feed) or overwritten between two
        // updates. Only a file of ours (or root's) that only its owner may write is reused.
        let st = rfs::fstat(&fd).map_err(|e| io("inspect", e))?;
        owned_safely(path, &st)?;
        let f = std::fs::File::from(fd);
        let mut b = Vec::new();
        std::io::Read::by_ref(&mut &f).take(size as u64 + 1).read_to_end(&mut b).map_err(|e| FileError::Io {
            op: "read",
            path: disp(),
            err: e,
        })?;
        let ours = b.len() == size
            && b[0..8] == layout.header_bytes(0)[0..8]
            && u16::from_ne_bytes([b[12], b[13]]) == layout.version
            && u32::from_ne_bytes([b[8], b[9], b[10], b[11]]) == size as u32;
        if !ours {
            let found = if st.st_size as usize != size {
                format!("a file of {} bytes (a {} has {size})", st.st_size, layout.name)
            } else {
                format!("a file of {size} bytes without its magic, size and version")
            };
            return Err(FileError::WrongKind { path: disp(), found, what: layout.name });
        }
        // Exactly `size` bytes long: checked above, under our lock.
        let ptr = crate::files::map_shared_rw(&f, size, &disp())?;
        Ok(ClockBoundSegment { ptr, path: path.to_path_buf(), layout, _lock: f })
    }

    /// The segment's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn generation_word(&self) -> &AtomicU16 {
        // SAFETY: offset 14 of a page-aligned mapping of the segment's size (≥ 16) is 2-aligned
        // and in bounds; the mapping outlives `&self`; all accesses in this process are atomic.
        unsafe { &*self.ptr.as_ptr().wrapping_add(14).cast::<AtomicU16>() }
    }

    fn body_words(&self) -> &[AtomicU64] {
        // SAFETY: offset 16 is 8-aligned (the mapping is page-aligned) and the layout's body
        // size bytes from it lie within the mapping (header + body); AtomicU64 has u64's size
        // and alignment.
        unsafe {
            std::slice::from_raw_parts(
                self.ptr.as_ptr().wrapping_add(HEADER_SIZE).cast::<AtomicU64>(),
                self.layout.body_size / 8,
            )
        }
    }

    /// The current generation.
    pub fn generation(&self) -> u16 {
        self.generation_word().load(Ordering::Acquire)
    }

    /// The segment's layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The body last written, if the segment was ever written (generation not 0). The feed is
    /// the only writer (it holds the lock). A body left half-written by a feed that died (odd
    /// generation) is returned as found: each 8-byte word is stored whole, so each field comes
    /// from one of the last two writes (a marker in it is one the feed had seen).
    pub fn body(&self) -> Option<Vec<u8>> {
        if self.generation() == 0 {
            return None;
        }
        let mut b = vec![0u8; self.layout.body_size];
        for (chunk, w) in b.chunks_exact_mut(8).zip(self.body_words()) {
            chunk.copy_from_slice(&w.load(Ordering::Relaxed).to_ne_bytes());
        }
        Some(b)
    }

    /// Writes one body under the generation: odd, fence, body, even (0 skipped on wrap). The
    /// body is the layout's size (a shorter one leaves the rest as it was; the feed's bodies
    /// are arrays of exactly that size).
    pub fn write(&mut self, body: &[u8]) {
        debug_assert_eq!(body.len(), self.layout.body_size, "a body of another layout");
        let g = self.generation_word();
        let cur = g.load(Ordering::Relaxed);
        let odd = if cur % 2 == 0 { cur.wrapping_add(1) } else { cur };
        g.store(odd, Ordering::Relaxed);
        fence(Ordering::Release);
        for (w, chunk) in self.body_words().iter().zip(body.chunks_exact(8)) {
            w.store(u64::from_ne_bytes(chunk.try_into().expect("8 bytes")), Ordering::Relaxed);
        }
        let mut even = odd.wrapping_add(1);
        if even == 0 {
            even = 2;
        }
        g.store(even, Ordering::Release);
    }
}

impl Drop for ClockBoundSegment {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from a successful mmap of the layout's segment size and no borrow
        // outlives self.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.layout.segment_size());
        }
    }
}

/// A new segment at `path`: header with generation 0 and a zero body, written under an
/// `O_EXCL` temporary name (mode 0644 whatever the umask), fsynced, renamed over nothing.
fn create(path: &Path, layout: Layout) -> Result<(), FileError> {
    let disp = || path.display().to_string();
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| FileError::Io {
        op: "create",
        path: disp(),
        err: io::Error::new(io::ErrorKind::InvalidInput, "no file name"),
    })?;
    let tmp = dir.join(format!(".{}.{:016x}.tmp", name.to_string_lossy(), crate::event::random_u64().unwrap_or(0)));
    let fd = rfs::openat(
        CWD,
        &tmp,
        OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .map_err(|e| FileError::Io { op: "create a new file in the directory of", path: disp(), err: e.into() })?;
    let mut seg = vec![0u8; layout.segment_size()];
    seg[..HEADER_SIZE].copy_from_slice(&layout.header_bytes(0));
    let mut f = std::fs::File::from(fd);
    let r = rfs::fchmod(&f, Mode::from_raw_mode(0o644))
        .map_err(io::Error::from)
        .and_then(|_| f.write_all(&seg))
        .and_then(|_| f.sync_all())
        .and_then(|_| rfs::renameat_with(CWD, &tmp, CWD, path, RenameFlags::NOREPLACE).map_err(io::Error::from));
    if let Err(err) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(FileError::Io { op: "create", path: disp(), err });
    }
    Ok(())
}

/// Permission denied on the segment or its directory: what to do.
fn denied(path: &Path, what: &str) -> FileError {
    FileError::UnsafeDir {
        path: path.display().to_string(),
        why: format!("permission denied: {what}"),
        fix: "run the feed as root (clients look in /var/run/clockbound), or give --dir a directory you own".into(),
    }
}

/// Creates the segment's directory if it is missing (mode 0755: clients of any user read the
/// segment) and refuses a path that is not a directory, or one that others may write to.
pub fn ensure_segment_dir(dir: &Path) -> Result<(), FileError> {
    use std::os::unix::fs::DirBuilderExt;
    let disp = || dir.display().to_string();
    // Create only what is missing: a file, fifo or link already at the path is named below
    // for what it is, not reported as "File exists".
    if matches!(rfs::statat(CWD, dir, AtFlags::SYMLINK_NOFOLLOW), Err(rustix::io::Errno::NOENT)) {
        if let Err(e) = std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dir) {
            if e.kind() == io::ErrorKind::PermissionDenied {
                return Err(denied(dir, "cannot create the directory"));
            }
            return Err(FileError::Io { op: "create the directory", path: disp(), err: e });
        }
    }
    let st = rfs::statat(CWD, dir, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| FileError::Io {
        op: "inspect",
        path: disp(),
        err: e.into(),
    })?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => {}
        FileType::Symlink => return Err(FileError::Symlink { path: disp() }),
        t => {
            return Err(FileError::WrongKind {
                path: disp(),
                found: crate::files::kind_name(t).into(),
                what: "directory",
            })
        }
    }
    let me = rustix::process::geteuid().as_raw();
    if st.st_mode & 0o022 != 0 || (st.st_uid != me && st.st_uid != 0) {
        return Err(FileError::UnsafeDir {
            path: disp(),
            why: format!("owned by uid {} with mode {:o}", st.st_uid, st.st_mode & 0o7777),
            fix: format!(
                "give a directory owned by you or root that only its owner may write to (chown {me} {d}; chmod 755 {d}: ClockBound's own setup makes it chrony:chrony 0775), or another --dir",
                d = disp()
            ),
        });
    }
    Ok(())
}

const _: () = assert!(MAGIC[0] == 0x414D_5A4E);

#[cfg(test)]
mod tests {
    use super::*;
    use vmtime_core::feed::clockbound::{v3, BODY_SIZE, SEGMENT_SIZE};

    #[test]
    fn segment_generation_moves_by_two_and_is_reused() {
        let dir = tempfile_dir();
        let p = dir.join("shm0");
        let mut s = ClockBoundSegment::open_or_create(&p).unwrap();
        assert_eq!(s.generation(), 0);
        s.write(&[7u8; BODY_SIZE]);
        assert_eq!(s.generation(), 2);
        drop(s);
        let mut s = ClockBoundSegment::open_or_create(&p).unwrap();
        assert_eq!(s.generation(), 2, "an existing segment is reused");
        s.write(&[9u8; BODY_SIZE]);
        let b = std::fs::read(&p).unwrap();
        assert_eq!(b.len(), SEGMENT_SIZE);
        assert_eq!(u16::from_ne_bytes([b[14], b[15]]), 4);
        assert!(b[HEADER_SIZE..].iter().all(|&x| x == 9));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_3x_segment_is_created_reused_and_kept_apart_from_a_2x_one() {
        let dir = tempfile_dir();
        let (p0, p1) = (dir.join("shm0"), dir.join("shm1"));
        let mut s1 = ClockBoundSegment::open_or_create_as(&p1, v3::LAYOUT).unwrap();
        assert_eq!(s1.layout(), v3::LAYOUT);
        s1.write(&[5u8; v3::BODY_SIZE]);
        let b = std::fs::read(&p1).unwrap();
        assert_eq!(b.len(), 104);
        assert_eq!(b[..14], v3::LAYOUT.header_bytes(0)[..14]);
        assert_eq!(u16::from_ne_bytes([b[12], b[13]]), 0x0303);
        assert_eq!(u16::from_ne_bytes([b[14], b[15]]), 2);
        assert!(b[HEADER_SIZE..].iter().all(|&x| x == 5));
        drop(s1);
        let mut s1 = ClockBoundSegment::open_or_create_as(&p1, v3::LAYOUT).unwrap();
        assert_eq!(s1.generation(), 2, "an existing 3.x segment is reused");
        s1.write(&[6u8; v3::BODY_SIZE]);
        drop(s1);
        drop(ClockBoundSegment::open_or_create(&p0).unwrap());
        // Neither layout is taken for the other: the file is left as it was.
        let e = ClockBoundSegment::open_or_create(&p1).unwrap_err();
        assert!(e.to_string().contains("not a ClockBound 2 segment"), "{e}");
        let e = ClockBoundSegment::open_or_create_as(&p0, v3::LAYOUT).unwrap_err();
        assert!(e.to_string().contains("not a ClockBound 3 segment"), "{e}");
        assert_eq!(std::fs::read(&p1).unwrap().len(), 104);
        assert_eq!(std::fs::read(&p0).unwrap().len(), SEGMENT_SIZE);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn segment_paths_are_checked() {
        let dir = tempfile_dir();
        let link = dir.join("link");
        std::os::unix::fs::symlink(dir.join("elsewhere"), &link).unwrap();
        let e = ClockBoundSegment::open_or_create(&link).unwrap_err();
        assert!(e.to_string().contains("a symbolic link is there") && e.to_string().contains("remove it"), "{e}");
        let other = dir.join("other");
        std::fs::write(&other, b"not a segment").unwrap();
        let e = ClockBoundSegment::open_or_create(&other).unwrap_err();
        assert!(e.to_string().contains("a file of 13 bytes (a ClockBound 2 segment has 80)"), "{e}");
        assert_eq!(std::fs::read(&other).unwrap(), b"not a segment", "left as it was");
        assert!(matches!(ClockBoundSegment::open_or_create(&dir), Err(FileError::WrongKind { .. })));
        let p = dir.join("shm0");
        let _held = ClockBoundSegment::open_or_create(&p).unwrap();
        let e = ClockBoundSegment::open_or_create(&p).unwrap_err();
        assert!(matches!(e, FileError::Locked { .. }), "{e}");
        // flock locks belong to the open file: /proc/locks names this process as the holder.
        assert!(e.to_string().contains(&format!("pid {}", std::process::id())), "{e}");
        ensure_segment_dir(&dir.join("a/b")).unwrap();
        assert!(matches!(ensure_segment_dir(&link), Err(FileError::Symlink { .. }) | Err(FileError::Io { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_segment_dir_that_is_not_a_directory_is_named_for_what_it_is() {
        let dir = tempfile_dir();
        let file = dir.join("file");
        std::fs::write(&file, b"x").unwrap();
        let e = ensure_segment_dir(&file).unwrap_err();
        assert!(matches!(e, FileError::WrongKind { .. }), "{e}");
        assert!(e.to_string().contains("a regular file"), "{e}");
        let fifo = dir.join("fifo");
        rfs::mkfifoat(CWD, &fifo, Mode::from_raw_mode(0o600)).unwrap();
        let e = ensure_segment_dir(&fifo).unwrap_err();
        assert!(e.to_string().contains("a fifo"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_segment_others_may_write_is_not_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile_dir();
        let p = dir.join("shm0");
        drop(ClockBoundSegment::open_or_create(&p).unwrap());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = ClockBoundSegment::open_or_create(&p).unwrap_err();
        assert!(matches!(e, FileError::UnsafeDir { .. }), "{e}");
        assert!(e.to_string().contains("mode 666"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        if rustix::process::geteuid().is_root() {
            rustix::fs::chown(&p, Some(rustix::process::Uid::from_raw(4242)), None).unwrap();
            let e = ClockBoundSegment::open_or_create(&p).unwrap_err();
            assert!(e.to_string().contains("owned by uid 4242"), "{e}");
            rustix::fs::chown(&p, Some(rustix::process::Uid::ROOT), None).unwrap();
        }
        ClockBoundSegment::open_or_create(&p).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn segments_of_the_wrong_size_or_with_other_names_are_refused_and_left_intact() {
        let dir = tempfile_dir();
        let p = dir.join("shm0");
        // Too big, too small, the right size with another magic: named with their size.
        for (bytes, says) in [
            (vec![0u8; 4096], "a file of 4096 bytes (a ClockBound 2 segment has 80)"),
            (vec![0u8; 40], "a file of 40 bytes"),
            (vec![0xffu8; SEGMENT_SIZE], "a file of 80 bytes without its magic"),
        ] {
            std::fs::write(&p, &bytes).unwrap();
            let e = ClockBoundSegment::open_or_create(&p).unwrap_err();
            assert!(e.to_string().contains(says), "{e}");
            assert_eq!(std::fs::read(&p).unwrap(), bytes, "left as it was");
        }
        std::fs::remove_file(&p).unwrap();
        // A real segment with a second name (a hard link): refused, both names left.
        drop(ClockBoundSegment::open_or_create(&p).unwrap());
        std::fs::hard_link(&p, dir.join("other-name")).unwrap();
        let e = ClockBoundSegment::open_or_create(&p).unwrap_err();
        assert!(e.to_string().contains("has 2 names (hard links)"), "{e}");
        std::fs::remove_file(dir.join("other-name")).unwrap();
        let mut s = ClockBoundSegment::open_or_create(&p).unwrap();
        assert_eq!(s.body(), None, "never written");
        s.write(&[3u8; BODY_SIZE]);
        assert_eq!(s.body(), Some(vec![3u8; BODY_SIZE]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn segment_dirs_others_may_write_or_own_and_odd_files_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile_dir();
        let d = dir.join("cb");
        ensure_segment_dir(&d).unwrap();
        assert_eq!(
            std::fs::metadata(&d).unwrap().permissions().mode() & 0o7777,
            0o755,
            "readable by clients of any user"
        );
        for mode in [0o777, 0o1777, 0o775, 0o757] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = ensure_segment_dir(&d).unwrap_err();
            assert!(e.to_string().contains(&format!("mode {mode:o}")), "{e}");
            // ClockBound's own setup (chrony:chrony 0775): the fix is named.
            assert!(e.to_string().contains(&format!("chmod 755 {}", d.display())), "{e}");
        }
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        if rustix::process::geteuid().is_root() {
            rustix::fs::chown(&d, Some(rustix::process::Uid::from_raw(4242)), None).unwrap();
            let e = ensure_segment_dir(&d).unwrap_err();
            assert!(e.to_string().contains("owned by uid 4242"), "{e}");
            rustix::fs::chown(&d, Some(rustix::process::Uid::ROOT), None).unwrap();
        }
        ensure_segment_dir(&d).unwrap();
        let p = d.join("shm0");
        rfs::mkfifoat(CWD, &p, Mode::from_raw_mode(0o600)).unwrap();
        let e = ClockBoundSegment::open_or_create(&p).unwrap_err();
        assert!(e.to_string().contains("a fifo is there"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn chrony_send_problems_are_named() {
        use rustix::io::Errno;
        let e = |n: Errno| io::Error::from(n);
        assert_eq!(SendProblem::of(&e(Errno::NOENT), None), SendProblem::Missing);
        assert_eq!(
            SendProblem::of(&e(Errno::CONNREFUSED), Some(FileType::RegularFile)),
            SendProblem::NotASocket("a regular file")
        );
        assert_eq!(SendProblem::of(&e(Errno::CONNREFUSED), Some(FileType::Socket)), SendProblem::NoListener);
        assert_eq!(SendProblem::of(&e(Errno::AGAIN), Some(FileType::Socket)), SendProblem::QueueFull);
        assert_eq!(SendProblem::of(&e(Errno::ACCESS), Some(FileType::Socket)), SendProblem::PermissionDenied);
        // And against real files: a socket nobody listens on any more, a regular file.
        let dir = tempfile_dir();
        let path = dir.join("chrony.sock");
        drop(UnixDatagram::bind(&path).unwrap());
        let s = ChronySocket::new(&path).unwrap();
        let err = s.send(&[0u8; 40]).unwrap_err();
        assert_eq!(s.diagnose(&err), SendProblem::NoListener, "{err}");
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"x").unwrap();
        let err = s.send(&[0u8; 40]).unwrap_err();
        assert_eq!(s.diagnose(&err), SendProblem::NotASocket("a regular file"), "{err}");
        assert!(check_chrony_socket_path(&path).is_ok(), "chronyd replaces a file when it starts");
        let long = PathBuf::from(format!("/tmp/{}.sock", "x".repeat(103)));
        let e = check_chrony_socket_path(&long).unwrap_err();
        assert!(e.to_string().contains("113 bytes long, more than the 107"), "{e}");
        assert!(check_chrony_socket_path(&PathBuf::from(format!("/tmp/{}.sock", "x".repeat(97)))).is_ok());
        let e = check_chrony_socket_path(&dir).unwrap_err();
        assert!(e.to_string().contains("a directory is there, not a socket"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn chrony_socket_reports_no_listener() {
        let dir = tempfile_dir();
        let s = ChronySocket::new(&dir.join("absent.sock")).unwrap();
        assert!(s.send(&[0u8; 40]).is_err());
        let rx = UnixDatagram::bind(dir.join("chrony.sock")).unwrap();
        ChronySocket::new(&dir.join("chrony.sock")).unwrap().send(&[5u8; 40]).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(rx.recv(&mut buf).unwrap(), 40);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "vmtime-feed-{}-{}",
            std::process::id(),
            crate::event::random_u64().unwrap()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
