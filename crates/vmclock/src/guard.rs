//! A guard against SIGBUS on a page *file* that shrinks or is truncated while it is mapped.
//!
//! Loading from a mapped page of a file that no longer covers it raises SIGBUS, which would kill
//! the reader. A mapped device (`/dev/vmclock0`) cannot shrink; a page file can (a careless
//! `truncate`, a full disk, another program). [`protect`] registers a mapping; the first
//! protection installs a SIGBUS handler (process-wide, once) which, for a fault inside a
//! registered mapping, maps an anonymous zero page over the faulting page and returns: the load
//! is retried and reads zeros, so the next validation fails (bad magic) instead of the process
//! dying, and [`Protection::gone`] says why. A fault anywhere else is passed on to the handler
//! that was installed before (or, if that was the default, the default action is restored and
//! the fault repeats with it, exactly as without this guard).
//!
//! The handler does no allocation and takes no lock: a fixed table of atomics and one `mmap`.
//! Applications that must own SIGBUS themselves simply do not call [`protect`].

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

const SLOTS: usize = 64;

struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
    gone: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot { start: AtomicUsize::new(0), len: AtomicUsize::new(0), gone: AtomicBool::new(false) };
static TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];
/// The action before ours, and the system page size (set once, before the handler can run).
static PREVIOUS: OnceLock<(libc::sigaction, usize)> = OnceLock::new();
static INSTALL: OnceLock<Result<(), i32>> = OnceLock::new();

/// A registered mapping; unregistered on drop (before the mapping is unmapped).
#[derive(Debug)]
pub struct Protection {
    slot: usize,
}

impl Protection {
    /// Whether a fault was caught in this mapping: the file shrank or went away, and the page now
    /// reads as zeros.
    pub fn gone(&self) -> bool {
        TABLE[self.slot].gone.load(Ordering::Acquire)
    }
}

impl Drop for Protection {
    fn drop(&mut self) {
        let s = &TABLE[self.slot];
        s.len.store(0, Ordering::Release);
        s.gone.store(false, Ordering::Release);
        s.start.store(0, Ordering::Release);
    }
}

/// Protects `len` bytes mapped at `start` (see the module's documentation). Fails when the
/// handler cannot be installed or 64 mappings are protected already.
pub fn protect(start: *const u8, len: usize) -> io::Result<Protection> {
    INSTALL.get_or_init(install).map_err(io::Error::from_raw_os_error)?;
    for (i, s) in TABLE.iter().enumerate() {
        if s.start.compare_exchange(0, start as usize, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            s.gone.store(false, Ordering::Release);
            s.len.store(len, Ordering::Release);
            return Ok(Protection { slot: i });
        }
    }
    Err(io::Error::other("more than 64 page files are protected"))
}

fn install() -> Result<(), i32> {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
    // SAFETY: an all-zero sigaction is a valid value for the kernel to overwrite.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: reading the current action into a valid, writable sigaction.
    if unsafe { libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) } != 0 {
        return Err(io::Error::last_os_error().raw_os_error().unwrap_or(libc::EINVAL));
    }
    let _ = PREVIOUS.set((old, page));
    // SAFETY: as above.
    let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
    new.sa_sigaction = on_sigbus as *const () as usize;
    new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
    // SAFETY: installs a valid handler; `new` and the null old pointer are valid for the call.
    if unsafe { libc::sigaction(libc::SIGBUS, &new, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error().raw_os_error().unwrap_or(libc::EINVAL));
    }
    Ok(())
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
    let info_ref = unsafe { &*info };
    // SAFETY: si_addr is the field SIGBUS fills (the faulting address).
    let addr = unsafe { info_ref.si_addr() } as usize;
    let Some(&(old, page)) = PREVIOUS.get() else { return };
    for s in TABLE.iter() {
        let (start, len) = (s.start.load(Ordering::Acquire), s.len.load(Ordering::Acquire));
        if start != 0 && addr >= start && addr < start + len {
            let at = addr & !(page - 1);
            // SAFETY: replaces exactly one page of our own registered read-only mapping with an
            // anonymous zero page (MAP_FIXED at a page-aligned address inside it); mmap is a
            // plain system call, safe in a signal handler.
            let p = unsafe {
                libc::mmap(
                    at as *mut libc::c_void,
                    page,
                    libc::PROT_READ,
                    libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                s.gone.store(true, Ordering::Release);
                return;
            }
        }
    }
    // Not ours: the previous handler, or the previous (default) action with the fault repeated.
    if old.sa_sigaction == libc::SIG_DFL || old.sa_sigaction == libc::SIG_IGN {
        // SAFETY: restores the action saved at install; sigaction is async-signal-safe.
        unsafe { libc::sigaction(libc::SIGBUS, &old, std::ptr::null_mut()) };
    } else if old.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the saved action is a three-argument handler (SA_SIGINFO), called as the
        // kernel would have.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(old.sa_sigaction) };
        f(sig, info, ctx);
    } else {
        // SAFETY: the saved action is a one-argument handler.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(old.sa_sigaction) };
        f(sig);
    }
}
