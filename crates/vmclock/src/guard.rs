//! A guard against SIGBUS on a page *file* that shrinks or is truncated while it is mapped.
//!
//! Loading from a mapped page of a file that no longer covers it raises SIGBUS, which would kill
//! the reader. A mapped device (`/dev/vmclock0`) cannot shrink; a page file can (a careless
//! `truncate`, a full disk, another program). [`protect`] registers a mapping; the first
//! protection installs a SIGBUS handler (process-wide, once).
//!
//! **What the handler takes.** Only a fault the kernel raised for a load beyond the end of a
//! file mapping — `si_code == BUS_ADRERR`, which user space cannot send to another process
//! (`kill`, `sigqueue` and `tgkill` give `si_code <= 0`, and the kernel refuses a positive code
//! from another process) — whose address lies in a registered mapping. For that one it marks the
//! mapping gone, maps an anonymous zero page over the faulting page and returns: the load is
//! retried and reads zeros, so the next validation fails (bad magic) instead of the process
//! dying, and [`Protection::gone`] says why. (The mark comes before the zero page, so a reader
//! that saw zeros and then asks [`Protection::gone`] is told.)
//!
//! **Everything else** (a signal sent with `kill`/`sigqueue`/`tgkill`, whatever its `si_addr`
//! says; another kind of bus error; a fault outside the registered mappings) goes on exactly as
//! if the guard were not installed: to the handler installed before (as `SA_SIGINFO` or plain,
//! `SA_RESETHAND` honoured; its `sa_mask` is not applied); if that was the default action, the
//! default is restored and the same signal (same `siginfo`) is raised again at this thread, so
//! the process ends with SIGBUS as it would have; if it was ignored, a sent signal stays ignored
//! and a synchronous fault takes the default action, as the kernel forces for those.
//!
//! At most [`MAX_GUARDED`] mappings are registered at once ([`GuardError::Full`] beyond: the
//! caller refuses to map rather than map unguarded). The handler does no allocation and takes no
//! lock: a fixed table of atomics, `mmap`, `sigaction` and `rt_tgsigqueueinfo`, all
//! async-signal-safe. Applications that must own SIGBUS themselves simply do not call
//! [`protect`] (and one that installs its own handler later replaces the guard).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// How many mappings can be guarded at once.
pub const MAX_GUARDED: usize = 64;
const SLOTS: usize = MAX_GUARDED;

/// Why a mapping cannot be guarded.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// [`MAX_GUARDED`] mappings are guarded already.
    #[error(
        "{MAX_GUARDED} page-file mappings are guarded already: drop one first (a device such as /dev/vmclock0 needs no guard)"
    )]
    Full,
    /// The SIGBUS handler cannot be installed.
    #[error("cannot install the SIGBUS handler: {0}")]
    Install(io::Error),
}

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
/// handler cannot be installed or [`MAX_GUARDED`] mappings are protected already.
pub fn protect(start: *const u8, len: usize) -> Result<Protection, GuardError> {
    INSTALL.get_or_init(install).map_err(|e| GuardError::Install(io::Error::from_raw_os_error(e)))?;
    for (i, s) in TABLE.iter().enumerate() {
        if s.start.compare_exchange(0, start as usize, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            s.gone.store(false, Ordering::Release);
            s.len.store(len, Ordering::Release);
            return Ok(Protection { slot: i });
        }
    }
    Err(GuardError::Full)
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
    let Some(&(old, page)) = PREVIOUS.get() else { return };
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
    let info_ref = unsafe { &*info };
    let code = info_ref.si_code;
    // Only the kernel's "beyond the end of the file" fault; a sent signal's si_addr is whatever
    // the sender wrote and is never looked at.
    if code == libc::BUS_ADRERR {
        // SAFETY: for a kernel-generated SIGBUS, si_addr is the faulting address.
        let addr = unsafe { info_ref.si_addr() } as usize;
        for s in TABLE.iter() {
            let (start, len) = (s.start.load(Ordering::Acquire), s.len.load(Ordering::Acquire));
            if start != 0 && addr >= start && addr < start + len {
                // Marked before the zero page appears: whoever reads zeros from it and then
                // asks `gone` is told.
                s.gone.store(true, Ordering::SeqCst);
                let at = addr & !(page - 1);
                // SAFETY: replaces exactly one page of our own registered read-only mapping with
                // an anonymous zero page (MAP_FIXED at a page-aligned address inside it); mmap is
                // a plain system call, safe in a signal handler.
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
                    return;
                }
            }
        }
    }
    pass_on(sig, info, ctx, &old);
}

/// The signal as it would have been handled without the guard (see the module's documentation).
fn pass_on(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void, old: &libc::sigaction) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
    let code = unsafe { (*info).si_code };
    let handler = old.sa_sigaction;
    if handler == libc::SIG_IGN {
        // A synchronous fault cannot be ignored: the kernel forces the default action on it.
        let synchronous = matches!(code, libc::BUS_ADRALN | libc::BUS_ADRERR | libc::BUS_OBJERR | libc::BUS_MCEERR_AR);
        if synchronous {
            default_and_raise(sig, info);
        }
        return;
    }
    if handler == libc::SIG_DFL {
        default_and_raise(sig, info);
        return;
    }
    if old.sa_flags & libc::SA_RESETHAND != 0 {
        // SAFETY: an all-zero sigaction is SIG_DFL with no flags; sigaction is async-signal-safe.
        let dfl: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: installs the default action; both pointers are valid for the call.
        unsafe { libc::sigaction(sig, &dfl, std::ptr::null_mut()) };
    }
    if old.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the saved action is a three-argument handler (SA_SIGINFO), called as the
        // kernel would have.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(handler) };
        f(sig, info, ctx);
    } else {
        // SAFETY: the saved action is a one-argument handler.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
        f(sig);
    }
}

/// Restores the default action and raises the same signal, with the same siginfo, at this
/// thread: delivered as soon as the handler returns (SIGBUS is not blocked in it), so the
/// process ends as it would have without the guard.
fn default_and_raise(sig: libc::c_int, info: *mut libc::siginfo_t) {
    // SAFETY: an all-zero sigaction is SIG_DFL with no flags.
    let dfl: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: installs the default action; both pointers are valid; async-signal-safe.
    unsafe { libc::sigaction(sig, &dfl, std::ptr::null_mut()) };
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // SAFETY: queues `info` (valid, from the kernel) to this very thread; the kernel accepts any
    // si_code for a signal a process sends to itself. A plain system call.
    let r = unsafe { libc::syscall(libc::SYS_rt_tgsigqueueinfo, pid, tid, sig, info) };
    if r != 0 {
        // SAFETY: raise is async-signal-safe.
        unsafe { libc::raise(sig) };
    }
}
