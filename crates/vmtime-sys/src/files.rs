//! Safe files for the daemons: private runtime directories, page files, state files, sockets'
//! paths and single-writer locks. Every daemon and every query goes through here, so the rules
//! hold everywhere:
//!
//! - a page path is a regular file holding a vmclock page (or a zero-filled file a VMM made for
//!   one), or a new file: anything else is refused with a message naming the path and what is
//!   there;
//! - nothing is written through a symbolic link (`O_NOFOLLOW`, and `lstat` before a rename);
//! - new files are written under an `O_EXCL` temporary name in the target directory, fsynced,
//!   renamed, and the directory fsynced;
//! - a file found where a daemon publishes, keeps its state or its lock must be this user's or
//!   root's, writable by its owner only, with one name ([`check_trusted`]): what another user
//!   planted first (in /tmp, say) is refused, never adopted;
//! - directories are keyed on the uid, created 0700, and an existing one is checked for its owner
//!   and mode;
//! - the page and the state are held with an exclusive `flock`; a second writer is refused with
//!   the holder's pid (from `/proc/locks`).
//!
//! The syscalls are `rustix`'s (safe wrappers, no `unsafe` needed here).

use rustix::fs::{self as rfs, AtFlags, FileType, FlockOperation, Mode, OFlags, RenameFlags, CWD};
use rustix::io::Errno;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use vmclock::abi::{MAGIC, PAGE_SIZE};

/// What went wrong with a file or directory: one line naming the path, the cause and the fix.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Something other than a page is at a page path.
    #[error("{path}: {found} is there, not a vmclock page: refusing to {action} it (give the path of a new file or of a vmclock page file)")]
    NotAPage { path: String, found: String, action: &'static str },
    /// Something other than a regular file where a state or lock file belongs.
    #[error("{path}: {found} is there, not a {what}: remove it or give another path")]
    WrongKind { path: String, found: String, what: &'static str },
    /// A symbolic link where vmtime writes.
    #[error("{path} is a symbolic link: vmtime never writes through one (give the link's target path instead)")]
    Symlink { path: String },
    /// A directory with the wrong owner or mode.
    #[error("{path}: {why}: {fix}")]
    UnsafeDir { path: String, why: String, fix: String },
    /// Another process holds the lock.
    #[error("{path} is in use by another writer ({holder}): stop it first, or give another path")]
    Locked { path: String, holder: String },
    /// Something else is at a socket path.
    #[error("{path}: {found} is there, not a socket: refusing to remove it (give another --socket path, or remove it yourself)")]
    NotASocket { path: String, found: String },
    /// A live daemon already answers on the socket.
    #[error("{path}: another daemon is listening there: stop it first, or give another socket path")]
    SocketInUse { path: String },
    /// A file too large for what it should hold.
    #[error(
        "{path} is {len} bytes, more than the {max} a {what} can be: it is not one (remove it or give another path)"
    )]
    TooLarge { path: String, len: u64, max: u64, what: &'static str },
    /// A file vmtime would publish time through (or read its own state or lock from) that is
    /// not its own: another user owns it, others may write it, or it has a second name.
    #[error("{path}: {detail}")]
    Untrusted {
        path: String,
        /// What it is, its owner and mode, why it is refused and the fix.
        detail: String,
    },
    /// A file in the way of an output that is not one vmtime may replace.
    #[error("{path}: {found} is there, not {what}: refusing to replace it (remove it yourself, or give another path)")]
    NotReplaceable { path: String, found: String, what: &'static str },
    /// A system call failed (out of descriptors: with the remedy).
    #[error("cannot {op} {path}: {err}{hint}", hint = crate::limit_hint(.err))]
    Io { op: &'static str, path: String, err: io::Error },
}

impl FileError {
    fn io(op: &'static str, path: &Path, err: impl Into<io::Error>) -> Self {
        FileError::Io { op, path: path.display().to_string(), err: err.into() }
    }
}

type Result<T> = std::result::Result<T, FileError>;

fn disp(p: &Path) -> String {
    p.display().to_string()
}

/// What a file type is called in messages.
pub fn kind_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a fifo",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "a file of unknown type",
    }
}

fn lstat(path: &Path) -> std::result::Result<Option<rfs::Stat>, Errno> {
    match rfs::statat(CWD, path, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(s) => Ok(Some(s)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn parent_of(path: &Path) -> &Path {
    path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

// ---------------------------------------------------------------------------------------------
// Directories

/// vmtime's runtime directory for this uid (not created here): `/run/vmtime` for root, else
/// `$XDG_RUNTIME_DIR/vmtime` when that directory is this user's own, else `/tmp/vmtime-UID`.
pub fn runtime_dir() -> PathBuf {
    let uid = euid();
    if uid == 0 {
        return PathBuf::from("/run/vmtime");
    }
    // A systemd service with RuntimeDirectory=vmtime (User=vmtime) is handed its directory in
    // $RUNTIME_DIRECTORY (the first of a colon-separated list): used when it is this user's and
    // not writable by others.
    if let Some(d) = std::env::var_os("RUNTIME_DIRECTORY")
        .and_then(|v| v.to_str().and_then(|s| s.split(':').next()).filter(|s| !s.is_empty()).map(PathBuf::from))
    {
        let ours =
            d.is_absolute() && rfs::stat(&d).is_ok_and(|s| s.st_uid == uid && s.st_mode & 0o022 == 0 && is_dir(&s));
        if ours {
            return d;
        }
    }
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        let ours =
            x.is_absolute() && rfs::stat(&x).is_ok_and(|s| s.st_uid == uid && s.st_mode & 0o077 == 0 && is_dir(&s));
        if ours {
            return x.join("vmtime");
        }
    }
    PathBuf::from(format!("/tmp/vmtime-{uid}"))
}

/// The runtime directory of a dry run (not created here): this uid's own temporary directory
/// `/tmp/vmtime-UID` for root, so that a daemon run by hand with `--dry-run` never creates or
/// uses `/run/vmtime`; [`runtime_dir`] for anyone else (never a system path).
pub fn dry_run_dir() -> PathBuf {
    match euid() {
        0 => std::env::temp_dir().join("vmtime-0"),
        _ => runtime_dir(),
    }
}

/// The system daemons' runtime directory (`RuntimeDirectory=vmtime` of the units).
pub const SYSTEM_RUNTIME_DIR: &str = "/run/vmtime";

/// Whose runtime directory a file was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// This user's own ([`runtime_dir`]).
    Own,
    /// The system daemons' `/run/vmtime`.
    System,
}

/// Where a query (status, watch, a relay's default host page) looks for `name`: this user's
/// runtime directory, then the system daemons' `/run/vmtime` if `name` is there and the
/// directory is safe: not writable by others and owned by root or by the `vmtime` system user
/// (the units' `User=vmtime` owns it: systemd gives a `RuntimeDirectory=` to the service's
/// user). Creates nothing.
pub fn find_runtime_file(name: &str) -> PathBuf {
    locate_runtime_file(name).0
}

/// [`find_runtime_file`], saying which directory it is in.
pub fn locate_runtime_file(name: &str) -> (PathBuf, Found) {
    let mut trusted = vec![0];
    trusted.extend(system_user_uid("vmtime"));
    locate_in(name, &runtime_dir(), Path::new(SYSTEM_RUNTIME_DIR), &trusted)
}

fn locate_in(name: &str, own_dir: &Path, system: &Path, trusted: &[u32]) -> (PathBuf, Found) {
    let own = own_dir.join(name);
    if own_dir != system && lstat(&own).ok().flatten().is_none() {
        let owner = lstat(system).ok().flatten().map(|s| s.st_uid);
        let safe = owner.is_some_and(|o| trusted.contains(&o) && check_dir(system, o).is_ok());
        if safe && lstat(&system.join(name)).ok().flatten().is_some() {
            return (system.join(name), Found::System);
        }
    }
    (own, Found::Own)
}

/// The uid of a user in `/etc/passwd` (where `systemd-sysusers` and `adduser --system` put the
/// `vmtime` user), if it is there.
fn system_user_uid(user: &str) -> Option<u32> {
    let mut text = String::new();
    File::open("/etc/passwd").ok()?.take(4 << 20).read_to_string(&mut text).ok()?;
    passwd_uid(&text, user)
}

fn passwd_uid(passwd: &str, user: &str) -> Option<u32> {
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next() == Some(user)).then(|| f.nth(1)?.parse().ok()).flatten()
    })
}

fn is_dir(s: &rfs::Stat) -> bool {
    FileType::from_raw_mode(s.st_mode) == FileType::Directory
}

/// Checks an existing directory vmtime keeps its files in: a real directory (not a link),
/// owned by `owner` (this uid, or root for `/run/vmtime`), writable by nobody else.
pub fn check_dir(dir: &Path, owner: u32) -> Result<()> {
    let s = match lstat(dir) {
        Ok(Some(s)) => s,
        Ok(None) => return Err(FileError::io("use directory", dir, Errno::NOENT)),
        Err(e) => return Err(FileError::io("inspect", dir, e)),
    };
    let d = disp(dir);
    let t = FileType::from_raw_mode(s.st_mode);
    if t != FileType::Directory {
        return Err(FileError::UnsafeDir {
            path: d.clone(),
            why: format!("{} is there, not a directory", kind_name(t)),
            fix: format!("remove it (rm {d}) and start again"),
        });
    }
    if s.st_uid != owner {
        return Err(FileError::UnsafeDir {
            path: d.clone(),
            why: format!(
                "owned by uid {}, not uid {owner}: anyone who owns it can forge the time kept there",
                s.st_uid
            ),
            fix: format!("remove it (rm -r {d}) or give it to uid {owner} (chown {owner} {d}; chmod 700 {d})"),
        });
    }
    if s.st_mode & 0o022 != 0 {
        return Err(FileError::UnsafeDir {
            path: d.clone(),
            why: format!("mode {:o} lets other users replace its files", s.st_mode & 0o7777),
            fix: format!("chmod 700 {d}"),
        });
    }
    Ok(())
}

/// A daemon's runtime directory: created 0700 (whatever the umask) if missing, else checked.
/// `/run/vmtime` must be root's when running as root.
pub fn ensure_private_dir(dir: &Path) -> Result<()> {
    let uid = euid();
    if lstat(dir).map_err(|e| FileError::io("inspect", dir, e))?.is_none() {
        let parent = parent_of(dir);
        if lstat(parent).map_err(|e| FileError::io("inspect", parent, e))?.is_none() {
            ensure_private_dir(parent)?;
        }
        match rfs::mkdirat(CWD, dir, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(FileError::io("create directory", dir, e)),
        }
        // The umask may have removed bits, never added any; set exactly 0700 on what we made.
        let fd = rfs::openat(
            CWD,
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| FileError::io("open directory", dir, e))?;
        let s = rfs::fstat(&fd).map_err(|e| FileError::io("inspect", dir, e))?;
        if s.st_uid == uid {
            rfs::fchmod(&fd, Mode::from_raw_mode(0o700)).map_err(|e| FileError::io("chmod", dir, e))?;
        }
    }
    check_dir(dir, uid)
}

/// The directory that will hold a file a daemon writes (`page`, `state`, `socket`): a missing
/// one is created 0700 (with missing parents); an existing one must not be writable by other
/// users unless it is sticky (like /tmp). In a sticky directory other users cannot replace or
/// remove this daemon's files, but they can create any name first: O_NOFOLLOW, O_EXCL and
/// [`check_trusted`] refuse what they planted.
pub fn ensure_dir_for(file: &Path) -> Result<()> {
    dir_for(file, true)
}

/// [`ensure_dir_for`] for a one-shot command's output (an SSDT, a simulation's files): the
/// directory's owner is not judged (a user's own directory, written with sudo, is fine).
pub fn ensure_output_dir_for(file: &Path) -> Result<()> {
    dir_for(file, false)
}

fn dir_for(file: &Path, judge_owner: bool) -> Result<()> {
    let dir = parent_of(file);
    match lstat(dir) {
        Ok(None) => ensure_private_dir(dir),
        Ok(Some(s)) => {
            // A link to a directory is fine for a directory the user named; only files are
            // never followed.
            let s = if FileType::from_raw_mode(s.st_mode) == FileType::Symlink {
                rfs::stat(dir).map_err(|e| FileError::io("inspect", dir, e))?
            } else {
                s
            };
            let d = disp(dir);
            if !is_dir(&s) {
                return Err(FileError::UnsafeDir {
                    path: d,
                    why: format!("{} is there, not a directory", kind_name(FileType::from_raw_mode(s.st_mode))),
                    fix: "give a path in a directory".into(),
                });
            }
            let sticky = s.st_mode & 0o1000 != 0;
            if s.st_mode & 0o022 != 0 && !sticky {
                return Err(FileError::UnsafeDir {
                    path: d.clone(),
                    why: format!("mode {:o} lets other users replace its files", s.st_mode & 0o7777),
                    fix: format!("chmod go-w {d}, or use a private directory"),
                });
            }
            // A directory's owner may rename or remove any file in it (a sticky one too): a
            // daemon's page, state or lock in another user's directory is that user's to swap.
            let me = euid();
            if judge_owner && s.st_uid != me && s.st_uid != 0 {
                return Err(FileError::UnsafeDir {
                    path: d.clone(),
                    why: format!(
                        "owned by uid {}, who may replace or remove the files vmtime keeps there (uid {me})",
                        s.st_uid
                    ),
                    fix: format!("use a directory of uid {me}'s or root's (or chown {me} {d})"),
                });
            }
            Ok(())
        }
        Err(e) => Err(FileError::io("inspect", dir, e)),
    }
}

// ---------------------------------------------------------------------------------------------
// Whose files are trusted

/// Checks a file that already exists where a daemon publishes time (a page), keeps its state or
/// its lock, as chrony's privilege separation would: it must belong to this user or to root,
/// be writable by its owner only, and have one name. A file another user planted first (in a
/// sticky directory like /tmp anyone may create names) fails, and is never adopted: whoever
/// owns or may write it could rewrite the time (or the markers) published through it.
/// `s` is the `fstat` of the open file (or the `lstat` of the path); `what` names it ("a page
/// file").
pub fn check_trusted(s: &rfs::Stat, path: &Path, what: &'static str) -> Result<()> {
    trusted(s, path, what, true)
}

/// [`check_trusted`] for an input a daemon reads but never makes (its configuration): the
/// same rule, and a fix that does not suggest removing it.
pub fn check_trusted_input(s: &rfs::Stat, path: &Path, what: &'static str) -> Result<()> {
    trusted(s, path, what, false)
}

fn trusted(s: &rfs::Stat, path: &Path, what: &'static str, daemon_makes_it: bool) -> Result<()> {
    let me = euid();
    let mode = s.st_mode & 0o7777;
    let d = disp(path);
    let links = if s.st_nlink > 1 { format!(", {} names (hard links)", s.st_nlink) } else { String::new() };
    let rm = format!("rm {d}: the daemon then creates its own");
    let (why, fix) = if s.st_uid != me && s.st_uid != 0 {
        (
            format!("it belongs to another user (uid {}), who could rewrite it at any time", s.st_uid),
            if daemon_makes_it {
                format!("remove it ({rm}) or, if you trust it, chown {me} {d}; chmod go-w {d}")
            } else {
                format!("if you trust it, chown {me} {d}; chmod go-w {d}")
            },
        )
    } else if mode & 0o022 != 0 {
        (
            format!("mode {mode:04o} lets {} write it", if mode & 0o002 != 0 { "every user" } else { "its group" }),
            if daemon_makes_it { format!("chmod go-w {d}, or remove it ({rm})") } else { format!("chmod go-w {d}") },
        )
    } else if s.st_nlink > 1 {
        (
            "a second name is a way to it that the checks of its directory do not cover".to_string(),
            if daemon_makes_it {
                format!("remove it ({rm})")
            } else {
                "give it one name (cp it, then use the copy)".to_string()
            },
        )
    } else {
        return Ok(());
    };
    let never = if daemon_makes_it { "vmtime never adopts such a file" } else { "vmtime does not read such a file" };
    let detail = format!("{what} owned by uid {} with mode {mode:04o}{links}: {why}; {never}: {fix}", s.st_uid);
    Err(FileError::Untrusted { path: d, detail })
}

// ---------------------------------------------------------------------------------------------
// Locks

/// Who holds a lock on the file open as `fd`, from `/proc/locks` ("pid N", or a description).
///
/// `/proc/locks` names a file by its superblock's device and inode. `fstat` may report another
/// device for the same file (btrfs subvolumes, overlayfs), so when no line matches both, a single
/// FLOCK line for the inode alone is taken.
///
/// `/proc/locks` is generated a page at a time: a lock taken or dropped between two `read`s can
/// shift the list so that a line is never seen (std's `read_to_string` starts with a 32-byte probe
/// read, which made that happen under parallel tests). So it is read with large reads, and read
/// again, up to three times, when no line names the file.
pub(crate) fn lock_holder(fd: impl AsFd) -> String {
    use std::io::Read;
    let Ok(s) = rfs::fstat(fd) else { return "pid unknown".into() };
    let mut found = String::from("pid unknown");
    for _ in 0..3 {
        let mut buf = Vec::with_capacity(1 << 16);
        if std::fs::File::open("/proc/locks").and_then(|mut f| f.read_to_end(&mut buf)).is_err() {
            break;
        }
        found = holder_in(&String::from_utf8_lossy(&buf), rfs::major(s.st_dev), rfs::minor(s.st_dev), s.st_ino);
        if found != "pid unknown" {
            break;
        }
    }
    found
}

fn holder_in(locks: &str, major: u32, minor: u32, ino: u64) -> String {
    let want = format!("{major:02x}:{minor:02x}:{ino}");
    let ino_suffix = format!(":{ino}");
    let mut by_ino = Vec::new();
    for line in locks.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"; a blocked waiter's line starts "1: ->".
        if w.len() < 6 || w[1] != "FLOCK" {
            continue;
        }
        if w[5] == want {
            return format!("pid {}", w[4]);
        }
        if w[5].ends_with(&ino_suffix) && w[5].matches(':').count() == 2 && !by_ino.contains(&w[4]) {
            by_ino.push(w[4]);
        }
    }
    match by_ino.as_slice() {
        [pid] => format!("pid {pid}"),
        _ => "pid unknown".into(),
    }
}

fn lock(fd: impl AsFd, path: &Path) -> Result<()> {
    match rfs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(()),
        Err(Errno::WOULDBLOCK) => Err(FileError::Locked { path: disp(path), holder: lock_holder(&fd) }),
        Err(e) => Err(FileError::io("lock", path, e)),
    }
}

/// An exclusive lock on `path` (created 0600 if missing, never through a link), held until
/// the value is dropped: the lock of a state file, whose contents are replaced by renames.
#[derive(Debug)]
pub struct LockFile {
    _fd: OwnedFd,
}

impl LockFile {
    /// Takes the lock or says who holds it.
    pub fn acquire(path: &Path) -> Result<Self> {
        let fd = rfs::openat(
            CWD,
            path,
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| match e {
            Errno::LOOP => FileError::Symlink { path: disp(path) },
            e => FileError::io("open lock file", path, e),
        })?;
        let s = rfs::fstat(&fd).map_err(|e| FileError::io("inspect", path, e))?;
        let t = FileType::from_raw_mode(s.st_mode);
        if t != FileType::RegularFile {
            return Err(FileError::WrongKind { path: disp(path), found: kind_name(t).into(), what: "lock file" });
        }
        // A lock file planted (and locked) by another user would stop this daemon for good,
        // with a misleading "in use by another writer": named for what it is.
        check_trusted(&s, path, "a lock file")?;
        lock(&fd, path)?;
        Ok(LockFile { _fd: fd })
    }
}

// ---------------------------------------------------------------------------------------------
// Page files

/// What is at a page path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageTarget {
    /// Nothing: a new file may be created.
    Absent,
    /// A regular file holding a vmclock page (its magic), at least one page long.
    Page,
    /// A regular file of at least one page whose first page is all zeros (a VMM's new memory
    /// backend for the guest's page).
    Zeroed,
}

/// Inspects a page path without following a link: refuses anything that is not a vmclock page
/// file or a new path, naming what is there. `action` says what would be done ("replace", "write").
pub fn inspect_page(path: &Path, action: &'static str) -> Result<PageTarget> {
    let s = match lstat(path) {
        Ok(None) => return Ok(PageTarget::Absent),
        Ok(Some(s)) => s,
        Err(e) => return Err(FileError::io("inspect", path, e)),
    };
    let t = FileType::from_raw_mode(s.st_mode);
    match t {
        FileType::RegularFile => {}
        FileType::Symlink => return Err(FileError::Symlink { path: disp(path) }),
        t => return Err(FileError::NotAPage { path: disp(path), found: kind_name(t).into(), action }),
    }
    let fd =
        rfs::openat(CWD, path, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| FileError::io("open", path, e))?;
    classify(&File::from(fd), path, action)
}

fn classify(f: &File, path: &Path, action: &'static str) -> Result<PageTarget> {
    use std::os::unix::fs::FileExt;
    let len = f.metadata().map_err(|e| FileError::io("inspect", path, e))?.len();
    let not_page = |found: String| FileError::NotAPage { path: disp(path), found, action };
    if len < PAGE_SIZE as u64 {
        return Err(not_page(format!("a regular file of {len} bytes (a page file has at least {PAGE_SIZE})")));
    }
    let mut first = vec![0u8; PAGE_SIZE];
    f.read_exact_at(&mut first, 0).map_err(|e| FileError::io("read", path, e))?;
    if first[..4] == MAGIC.to_le_bytes() {
        Ok(PageTarget::Page)
    } else if first.iter().all(|&b| b == 0) {
        Ok(PageTarget::Zeroed)
    } else {
        Err(not_page("a regular file that is not a vmclock page (no vmclock magic)".into()))
    }
}

/// A page file held by its one writer: open for reading and writing, exclusively locked until
/// dropped. Map it with `vmclock::Mapping::map(page.file(), true)`.
#[derive(Debug)]
pub struct PageFile {
    file: File,
}

impl PageFile {
    /// The open file (keep the `PageFile` alive: it holds the lock).
    pub fn file(&self) -> &File {
        &self.file
    }
}

fn random_tmp(dir: &Path, name: &std::ffi::OsStr) -> PathBuf {
    let r = crate::event::random_u64().unwrap_or_else(|_| u64::from(std::process::id()) << 20);
    let mut n = std::ffi::OsString::from(".");
    n.push(name);
    n.push(format!(".{r:016x}.tmp"));
    dir.join(n)
}

/// Writes `contents` to a new file beside `path` (`O_EXCL`, mode `mode` whatever the umask),
/// fsyncs it, and renames it to `path`: over nothing (`RENAME_NOREPLACE`) when `replace` is
/// false. The directory is fsynced after. Returns the open file, locked when `lock_it`.
fn write_new(path: &Path, contents: &[u8], mode: u32, replace: bool, lock_it: bool) -> Result<File> {
    let dir = parent_of(path);
    let name = path.file_name().ok_or_else(|| FileError::io("write", path, Errno::ISDIR))?;
    let tmp = random_tmp(dir, name);
    let fd = rfs::openat(
        CWD,
        &tmp,
        OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )
    .map_err(|e| FileError::io("create a new file in the directory of", path, e))?;
    let mut f = File::from(fd);
    let result = (|| {
        if lock_it {
            lock(&f, path)?;
        }
        rfs::fchmod(&f, Mode::from_raw_mode(mode)).map_err(|e| FileError::io("set the mode of a new", path, e))?;
        f.write_all(contents).map_err(|e| FileError::io("write a new", path, e))?;
        f.sync_all().map_err(|e| FileError::io("fsync a new", path, e))?;
        let flags = if replace { RenameFlags::empty() } else { RenameFlags::NOREPLACE };
        let renamed = match rfs::renameat_with(CWD, &tmp, CWD, path, flags) {
            // A filesystem without RENAME_NOREPLACE: link(2) never replaces either.
            Err(Errno::INVAL) if !replace => rfs::linkat(CWD, &tmp, CWD, path, AtFlags::empty())
                .and_then(|_| rfs::unlinkat(CWD, &tmp, AtFlags::empty())),
            r => r,
        };
        renamed.map_err(|e| match e {
            Errno::EXIST => FileError::io("create (something appeared there meanwhile)", path, e),
            e => FileError::io("rename a new file to", path, e),
        })?;
        sync_dir(dir);
        Ok(())
    })();
    if result.is_err() {
        let _ = rfs::unlinkat(CWD, &tmp, AtFlags::empty());
    }
    result.map(|_| f)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = rfs::openat(CWD, dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()) {
        let _ = rfs::fsync(d);
    }
}

/// Creates a new page file at `path` with `contents` (mode 0444, locked), replacing only a
/// vmclock page file that no other writer holds. Used by `gen` and a publisher's first start.
pub fn create_page(path: &Path, contents: &[u8]) -> Result<PageFile> {
    let target = inspect_page(path, "replace")?;
    if target != PageTarget::Absent {
        // Someone's page: not while its writer runs.
        let fd = rfs::openat(CWD, path, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| FileError::io("open", path, e))?;
        lock(&fd, path)?;
    }
    let file = write_new(path, contents, 0o444, target != PageTarget::Absent, true)?;
    Ok(PageFile { file })
}

/// Opens an existing page file in place (its readers keep their mappings) for its one writer:
/// a regular file, not a link, holding a vmclock page or zeros (`inspect_page`), locked
/// exclusively. A read-only (0444) page of one's own is opened by adding the owner's write bit
/// for the moment of the open.
pub fn open_page(path: &Path) -> Result<PageFile> {
    let ro =
        rfs::openat(CWD, path, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| match e {
            Errno::LOOP => FileError::Symlink { path: disp(path) },
            e => FileError::io("open", path, e),
        })?;
    let ro_stat = rfs::fstat(&ro).map_err(|e| FileError::io("inspect", path, e))?;
    let t = FileType::from_raw_mode(ro_stat.st_mode);
    if t != FileType::RegularFile {
        return Err(FileError::NotAPage { path: disp(path), found: kind_name(t).into(), action: "write" });
    }
    check_trusted(&ro_stat, path, "a page file")?;
    let ro = File::from(ro);
    classify(&ro, path, "write")?;
    let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let rw = match rfs::openat(CWD, path, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ACCESS) if ro_stat.st_uid == euid() => {
            let mode = ro_stat.st_mode & 0o7777;
            rfs::fchmod(&ro, Mode::from_raw_mode(mode | 0o200)).map_err(|e| FileError::io("chmod", path, e))?;
            let rw = rfs::openat(CWD, path, flags, Mode::empty());
            let _ = rfs::fchmod(&ro, Mode::from_raw_mode(mode));
            rw.map_err(|e| FileError::io("open for writing", path, e))?
        }
        Err(e) => return Err(FileError::io("open for writing", path, e)),
    };
    let rw_stat = rfs::fstat(&rw).map_err(|e| FileError::io("inspect", path, e))?;
    if (rw_stat.st_dev, rw_stat.st_ino) != (ro_stat.st_dev, ro_stat.st_ino) {
        return Err(FileError::io("open (it was replaced while being opened)", path, Errno::AGAIN));
    }
    drop(ro);
    lock(&rw, path)?;
    // Checked again under the lock: another writer may have just finished with it.
    let file = File::from(rw);
    classify(&file, path, "write")?;
    Ok(PageFile { file })
}

/// What a publisher would find at `path`, checked without opening anything for writing or
/// creating anything: a new path, or a page (or zero-filled) file of this user's or root's that
/// only its owner may write ([`check_trusted`]). Lets a daemon refuse before it makes a lock or
/// a state file beside the page.
pub fn check_page_path(path: &Path) -> Result<PageTarget> {
    let target = inspect_page(path, "write")?;
    if target != PageTarget::Absent {
        match lstat(path) {
            Ok(Some(s)) => check_trusted(&s, path, "a page file")?,
            Ok(None) => {}
            Err(e) => return Err(FileError::io("inspect", path, e)),
        }
    }
    Ok(target)
}

/// A publisher's page: the page file found at `path` taken over in place when it is a vmclock
/// page of this user's or root's that only its owner may write (returns its first page's bytes
/// too), else a new page with `blank`. Anything else is refused ([`check_page_path`]).
pub fn open_or_create_page(path: &Path, blank: &[u8]) -> Result<(PageFile, Option<Vec<u8>>)> {
    match check_page_path(path)? {
        PageTarget::Absent => Ok((create_page(path, blank)?, None)),
        PageTarget::Zeroed => Ok((open_page(path)?, None)),
        PageTarget::Page => {
            use std::os::unix::fs::FileExt;
            let p = open_page(path)?;
            let mut bytes = vec![0u8; PAGE_SIZE];
            p.file.read_exact_at(&mut bytes, 0).map_err(|e| FileError::io("read", path, e))?;
            Ok((p, Some(bytes)))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// State files

/// The largest state file read (a relay's is a few hundred bytes).
pub const MAX_STATE: u64 = 64 * 1024;

/// Reads a state file: `Ok(None)` only when it does not exist (ENOENT); any other problem
/// (permissions, a link, not a regular file, too large, an I/O error) is an error.
pub fn read_state(path: &Path) -> Result<Option<Vec<u8>>> {
    let fd = match rfs::openat(
        CWD,
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(Errno::LOOP) => return Err(FileError::Symlink { path: disp(path) }),
        Err(e) => return Err(FileError::io("read state", path, e)),
    };
    let s = rfs::fstat(&fd).map_err(|e| FileError::io("inspect", path, e))?;
    let t = FileType::from_raw_mode(s.st_mode);
    if t != FileType::RegularFile {
        return Err(FileError::WrongKind { path: disp(path), found: kind_name(t).into(), what: "state file" });
    }
    // Another user's state would choose the markers this daemon publishes.
    check_trusted(&s, path, "a state file")?;
    if s.st_size as u64 > MAX_STATE {
        return Err(FileError::TooLarge {
            path: disp(path),
            len: s.st_size as u64,
            max: MAX_STATE,
            what: "state file",
        });
    }
    let mut v = Vec::new();
    File::from(fd).take(MAX_STATE + 1).read_to_end(&mut v).map_err(|e| FileError::io("read state", path, e))?;
    Ok(Some(v))
}

/// Saves a state file durably before anything depends on it: a new 0600 file (whatever the
/// umask) written under an `O_EXCL` name, fsynced, renamed over `path` (never through a link:
/// a link at `path` is refused), directory fsynced. Returns only once it is on disk.
pub fn write_state(path: &Path, contents: &[u8]) -> Result<()> {
    match lstat(path) {
        Ok(None) => {}
        Ok(Some(s)) => {
            let t = FileType::from_raw_mode(s.st_mode);
            if t == FileType::Symlink {
                return Err(FileError::Symlink { path: disp(path) });
            }
            if t != FileType::RegularFile {
                return Err(FileError::WrongKind { path: disp(path), found: kind_name(t).into(), what: "state file" });
            }
        }
        Err(e) => return Err(FileError::io("inspect", path, e)),
    }
    write_new(path, contents, 0o600, true, false).map(drop)
}

/// Whether `a` and `b` reach the same existing file, following links (a symbolic link to a
/// page is the page): compared by device and inode, not by name.
pub fn same_inode(a: &Path, b: &Path) -> bool {
    match (rfs::stat(a), rfs::stat(b)) {
        (Ok(x), Ok(y)) => (x.st_dev, x.st_ino) == (y.st_dev, y.st_ino),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Small inputs and outputs

/// Reads a small text input (a configuration, a scenario) of at most `max` bytes without ever
/// waiting: opened `O_NONBLOCK` (a fifo at the path does not block the open, nor a daemon's
/// SIGHUP), and only a regular file is read (links are followed: a configuration may be one).
/// A missing file is `ErrorKind::NotFound`, a larger one `FileTooLarge`; anything else is
/// named ("a fifo is there, not a regular file").
pub fn read_small_regular(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    read_small(path, max, None)
}

/// [`read_small_regular`] for a file that decides what a daemon does (its configuration: the
/// step limits, the command `sync` runs as its hook): it must also pass [`check_trusted`]
/// (this user's or root's, writable by its owner only), as sshd's StrictModes has it; else
/// `ErrorKind::PermissionDenied` with the refusal's one line.
pub fn read_small_trusted(path: &Path, max: u64, what: &'static str) -> io::Result<Vec<u8>> {
    read_small(path, max, Some(what))
}

fn read_small(path: &Path, max: u64, trusted: Option<&'static str>) -> io::Result<Vec<u8>> {
    let fd = rfs::openat(CWD, path, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC, Mode::empty())?;
    let s = rfs::fstat(&fd)?;
    let t = FileType::from_raw_mode(s.st_mode);
    if t != FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is there, not a regular file", kind_name(t)),
        ));
    }
    if let Some(what) = trusted {
        if let Err(e) = check_trusted_input(&s, path, what) {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, e.to_string()));
        }
    }
    let too_large = || io::Error::new(io::ErrorKind::FileTooLarge, format!("more than the {max} bytes it may have"));
    if s.st_size as u64 > max {
        return Err(too_large());
    }
    let mut v = Vec::new();
    File::from(fd).take(max + 1).read_to_end(&mut v)?;
    if v.len() as u64 > max {
        return Err(too_large());
    }
    Ok(v)
}

/// How [`replace_output`] recognises an earlier output it may replace: at most `max` bytes, and
/// `is_one(contents)`.
pub struct Recognise<'a> {
    /// The largest earlier output.
    pub max: u64,
    /// Whether these contents are an earlier output.
    pub is_one: &'a dyn Fn(&[u8]) -> bool,
}

impl std::fmt::Debug for Recognise<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recognise").field("max", &self.max).finish_non_exhaustive()
    }
}

/// Writes an output file (an SSDT, a simulation's trace) at `path`, under the rules of the
/// daemons' files: a new file under an `O_EXCL` temporary name, mode `mode`, fsynced and
/// renamed into place. What is already there is replaced only if it is a regular file (never a
/// link, a device, a fifo: nothing is opened that could block or write elsewhere), recognised
/// by `recognise` when given as an earlier output of the same kind (`what`, "an ACPI SSDT"),
/// and never when it is one of `protect` (compared by inode: e.g. the page itself; each with
/// what it is called in the refusal, "the guest page given with --page").
pub fn replace_output(
    path: &Path,
    contents: &[u8],
    mode: u32,
    what: &'static str,
    recognise: Option<Recognise<'_>>,
    protect: &[(&str, &Path)],
) -> Result<()> {
    ensure_output_dir_for(path)?;
    let d = disp(path);
    let refuse = |found: String| FileError::NotReplaceable { path: d.clone(), found, what };
    let existing = match lstat(path) {
        Ok(None) => None,
        Ok(Some(s)) => Some(s),
        Err(e) => return Err(FileError::io("inspect", path, e)),
    };
    for (name, p) in protect {
        if same_inode(path, p) {
            return Err(refuse(name.to_string()));
        }
    }
    if let Some(s) = existing {
        let t = FileType::from_raw_mode(s.st_mode);
        if t == FileType::Symlink {
            return Err(FileError::Symlink { path: d });
        }
        if t != FileType::RegularFile {
            return Err(refuse(kind_name(t).to_string()));
        }
        if let Some(Recognise { max, is_one }) = recognise {
            let fd = rfs::openat(
                CWD,
                path,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| FileError::io("open", path, e))?;
            let st = rfs::fstat(&fd).map_err(|e| FileError::io("inspect", path, e))?;
            if (st.st_dev, st.st_ino) != (s.st_dev, s.st_ino) {
                return Err(FileError::io("open (it was replaced meanwhile)", path, Errno::AGAIN));
            }
            if st.st_size as u64 > max {
                return Err(refuse(format!("a file of {} bytes", st.st_size)));
            }
            let mut old = Vec::new();
            File::from(fd).take(max + 1).read_to_end(&mut old).map_err(|e| FileError::io("read", path, e))?;
            if !is_one(&old) {
                return Err(refuse(format!("a regular file of {} bytes", old.len())));
            }
        }
    }
    write_new(path, contents, mode, existing.is_some(), false).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ops::Not;
    use std::os::unix::fs::PermissionsExt;

    fn blank() -> Vec<u8> {
        vmclock::PageBuilder::new().page_bytes().to_vec()
    }

    #[test]
    fn a_lock_holder_is_found_by_device_and_inode_or_by_a_unique_inode() {
        let locks = "1: FLOCK  ADVISORY  WRITE 4242 00:2d:5678 0 EOF\n\
                     1: -> FLOCK  ADVISORY  WRITE 4343 00:2d:5678 0 EOF\n\
                     2: POSIX  ADVISORY  WRITE 99 08:01:777 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 11 08:01:15678 0 EOF\n";
        assert_eq!(holder_in(locks, 0, 0x2d, 5678), "pid 4242");
        // btrfs and overlayfs: fstat reports another device than /proc/locks does.
        assert_eq!(holder_in(locks, 0, 0x31, 5678), "pid 4242");
        assert_eq!(holder_in(locks, 8, 1, 777), "pid unknown", "only FLOCK locks are ours");
        let two = "1: FLOCK  ADVISORY  WRITE 5 00:2d:9 0 EOF\n2: FLOCK  ADVISORY  WRITE 6 00:2e:9 0 EOF\n";
        assert_eq!(holder_in(two, 0, 0x30, 9), "pid unknown", "an inode alone must be unique");
        assert_eq!(holder_in(two, 0, 0x2e, 9), "pid 6");
    }

    #[test]
    fn a_lock_holder_is_found_while_other_threads_take_and_drop_locks() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("page");
        let _held = create_page(&p, &blank()).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let churn: Vec<_> = (0..4)
            .map(|i| {
                let (stop, path) = (stop.clone(), d.path().join(format!("churn{i}")));
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        drop(LockFile::acquire(&path).unwrap());
                    }
                })
            })
            .collect();
        let want = format!("pid {}", std::process::id());
        let misses = (0..2000).filter(|_| open_page(&p).unwrap_err().to_string().contains(&want).not()).count();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        churn.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(misses, 0, "the holder was missed in {misses} of 2000 looks");
    }

    #[test]
    fn new_page_is_0444_locked_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("page");
        let f = create_page(&p, &blank()).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o444);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        let e = open_page(&p).unwrap_err();
        assert!(matches!(e, FileError::Locked { .. }), "{e}");
        assert!(e.to_string().contains(&format!("pid {}", std::process::id())), "{e}");
        drop(f);
        open_page(&p).unwrap();
    }

    #[test]
    fn a_query_finds_the_system_daemons_file_when_the_user_has_none() {
        // The system directory as systemd makes it for User=vmtime: owned by that user, 0755.
        let d = tempfile::tempdir().unwrap();
        let own = d.path().join("own");
        let system = d.path().join("system");
        std::fs::create_dir(&system).unwrap();
        std::fs::set_permissions(&system, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(system.join("host.page.sock"), b"").unwrap();
        let me = euid();
        let vmtime_user = [0, me];
        // Found there, and said so.
        assert_eq!(
            locate_in("host.page.sock", &own, &system, &vmtime_user),
            (system.join("host.page.sock"), Found::System)
        );
        // The user's own file comes first.
        std::fs::create_dir(&own).unwrap();
        std::fs::write(own.join("host.page.sock"), b"").unwrap();
        assert_eq!(locate_in("host.page.sock", &own, &system, &vmtime_user), (own.join("host.page.sock"), Found::Own));
        std::fs::remove_file(own.join("host.page.sock")).unwrap();
        // Not there: the user's own path (the error names it).
        assert_eq!(locate_in("sync.sock", &own, &system, &vmtime_user), (own.join("sync.sock"), Found::Own));
        // A directory owned by a user that is neither root nor vmtime, or writable by others,
        // is not trusted.
        let not_vmtime = [me.wrapping_add(1)];
        assert_eq!(locate_in("host.page.sock", &own, &system, &not_vmtime).1, Found::Own);
        std::fs::set_permissions(&system, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(locate_in("host.page.sock", &own, &system, &vmtime_user).1, Found::Own);
    }

    #[test]
    fn the_vmtime_users_uid_comes_from_its_passwd_line() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nvmtimex:x:7:7::/:/bin/false\nvmtime:x:996:993:vmtime:/nonexistent:/usr/sbin/nologin\n";
        assert_eq!(passwd_uid(passwd, "vmtime"), Some(996));
        assert_eq!(passwd_uid(passwd, "root"), Some(0));
        assert_eq!(passwd_uid(passwd, "nobody"), None);
        assert_eq!(passwd_uid("vmtime:x:notanumber:1::/:", "vmtime"), None);
    }
}

/// A whole file mapped shared, read-write, as 64-bit atomic words: a region another process or
/// a VM shares with this one (the lab's read log on an ivshmem BAR, a sysfs `resourceN` file,
/// which can only be mapped). Its length is the file's, a multiple of 8 bytes.
#[derive(Debug)]
pub struct SharedWords {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory accessed only through atomics; nothing in it is
// tied to the creating thread.
unsafe impl Send for SharedWords {}
// SAFETY: every access is through `&[AtomicU64]`.
unsafe impl Sync for SharedWords {}

impl SharedWords {
    /// Maps all of `path` (a regular or sysfs file of at least 8 bytes, opened read-write).
    pub fn map(path: &Path) -> Result<SharedWords> {
        let disp = || path.display().to_string();
        let f = std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(|e| FileError::Io {
            op: "open",
            path: disp(),
            err: e,
        })?;
        let len = f.metadata().map_err(|e| FileError::Io { op: "stat", path: disp(), err: e })?.len();
        let len = usize::try_from(len).unwrap_or(0) & !7;
        if len == 0 {
            return Err(FileError::Io { op: "map", path: disp(), err: io::Error::other("shorter than 8 bytes") });
        }
        let ptr = map_shared_rw(&f, len, &disp())?;
        Ok(SharedWords { ptr, len })
    }

    /// The region as words.
    pub fn words(&self) -> &[std::sync::atomic::AtomicU64] {
        // SAFETY: `ptr` is page-aligned (mmap) and valid for `len` bytes (a multiple of 8) until
        // drop, which needs `&mut self`; AtomicU64 has u64's size and alignment; every access in
        // this process is atomic (other processes are outside the abstract machine).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<std::sync::atomic::AtomicU64>(), self.len / 8) }
    }
}

impl Drop for SharedWords {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from a successful mmap of `len` bytes; no borrow outlives self.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// A fresh shared read-write mapping of the first `len` bytes of `f`, which the caller has
/// opened for reading and writing and checked to be at least `len` bytes long.
pub(crate) fn map_shared_rw(f: &File, len: usize, path: &str) -> std::result::Result<NonNull<u8>, FileError> {
    let fail = |err| FileError::Io { op: "map", path: path.to_string(), err };
    // SAFETY: a fresh shared mapping (addr null) of `len` bytes of a file opened read-write that
    // is at least that long (the caller's check); checked for MAP_FAILED before use.
    let p = unsafe {
        libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, f.as_raw_fd(), 0)
    };
    if p == libc::MAP_FAILED {
        return Err(fail(io::Error::last_os_error()));
    }
    NonNull::new(p.cast::<u8>()).ok_or_else(|| fail(io::Error::other("mmap returned null")))
}
