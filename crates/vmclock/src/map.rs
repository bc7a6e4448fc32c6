//! Mapping a page file or device (`/dev/vmclock0`, a published page) into memory.

use crate::abi::{ABI_SIZE, PAGE_SIZE};
use crate::seqlock::{AtomicU32, PageMemory, WritableMemory};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::ptr::NonNull;

/// One page of a file or device, mapped shared. Read-only unless opened for writing. The page
/// is the system's (`sysconf(_SC_PAGESIZE)`: 4 KiB, or 16/64 KiB on arm64), as the driver maps
/// `/dev/vmclockN`.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    available: usize,
    writable: bool,
    device: bool,
}

/// Open flags: never wait in `open` (a fifo), never take a controlling terminal.
const NO_WAIT: i32 = libc::O_NONBLOCK | libc::O_NOCTTY;

/// The system page size (`sysconf(_SC_PAGESIZE)`), at least 4096.
pub fn system_page_size() -> usize {
    // SAFETY: sysconf has no preconditions; a failure returns -1, handled below.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n >= PAGE_SIZE && n.is_power_of_two()).unwrap_or(PAGE_SIZE)
}

// SAFETY: the mapping is plain shared memory accessed only through atomics; the pointer is
// valid for the lifetime of the value on any thread.
unsafe impl Send for Mapping {}
// SAFETY: as above: all access goes through `&[AtomicU32]`, which is `Sync`.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the first page of `path` read-only. A regular file must not be empty (a mapped page
    /// wholly beyond the end of a file faults); a character device (`/dev/vmclock0`) is mapped
    /// as exactly one page at offset 0, as its driver requires.
    /// The open never waits: a fifo at the path is refused (it is empty) rather than blocking
    /// until someone writes to it.
    pub fn open(path: &Path) -> io::Result<Self> {
        Self::map(&OpenOptions::new().read(true).custom_flags(NO_WAIT).open(path)?, false)
    }

    /// Maps the first page of `path` for reading and writing (a producer's own page file, which
    /// must already be at least one page long).
    pub fn open_rw(path: &Path) -> io::Result<Self> {
        Self::map(&OpenOptions::new().read(true).write(true).custom_flags(NO_WAIT).open(path)?, true)
    }

    /// Maps the first system page of an open file.
    pub fn map(file: &File, writable: bool) -> io::Result<Self> {
        let meta = file.metadata()?;
        let ft = meta.file_type();
        if ft.is_dir() {
            // mmap would say "No such device": the cause, with its errno (the C API passes it on).
            return Err(io::Error::from_raw_os_error(libc::EISDIR));
        }
        if !(ft.is_file() || ft.is_char_device()) {
            // Named for what it is: a fifo would read as an empty file. Not a page (InvalidData).
            let found = if ft.is_fifo() {
                "a fifo"
            } else if ft.is_socket() {
                "a socket"
            } else if ft.is_block_device() {
                "a block device"
            } else {
                "a file of unknown type"
            };
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{found} is there, not a vmclock device or page file (give /dev/vmclock0 or a page file)"),
            ));
        }
        let len = system_page_size();
        let available = if meta.file_type().is_char_device() {
            len
        } else {
            let file_len = meta.len();
            if file_len == 0 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "the file is empty"));
            }
            if writable && file_len < PAGE_SIZE as u64 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a writable page file must be at least 4096 bytes",
                ));
            }
            usize::try_from(file_len).unwrap_or(usize::MAX).min(len)
        };
        let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        // SAFETY: a fresh mapping (addr null) of one system page of a valid open fd; the kernel
        // checks the fd's mode against `prot`. The result is checked for MAP_FAILED before use.
        // Only the first ABI_SIZE bytes are ever accessed, which lie in the file's first page (a
        // file is at least one byte long), so no access falls beyond its end.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, file.as_raw_fd(), 0) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mapping { ptr, len, available, writable, device: meta.file_type().is_char_device() })
    }

    /// The mapping's address and length (for [`crate::guard::protect`]).
    pub fn region(&self) -> (*const u8, usize) {
        (self.ptr.as_ptr(), PAGE_SIZE)
    }

    /// Whether the mapping may be written.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// Whether what was mapped is a character device (which cannot shrink) rather than a file
    /// (which can: see [`crate::guard`]). Decided from the file that was mapped, not the path,
    /// which may name something else by now.
    pub fn is_device(&self) -> bool {
        self.device
    }
}

impl PageMemory for Mapping {
    fn words(&self) -> &[AtomicU32] {
        // SAFETY: `ptr` is page-aligned (mmap) and valid for `len` ≥ 4096 bytes until `drop`, which
        // needs `&mut self`, so it outlives the returned borrow. AtomicU32 has the size and
        // alignment of u32. Concurrent writers in other processes or the hypervisor are outside
        // the Rust abstract machine; within this process every access is atomic. A read-only
        // mapping is only ever loaded from (atomic loads of ≤ word size on read-only memory are
        // allowed); only `WritableMapping`, checked at construction, implements WritableMemory.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<AtomicU32>(), ABI_SIZE / 4) }
    }
    fn available(&self) -> usize {
        self.available
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from a successful mmap of `len` bytes and no borrow of it outlives self.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// A mapping proven writable: the only way to give a file mapping to a [`crate::Writer`].
#[derive(Debug)]
pub struct WritableMapping(Mapping);

impl WritableMapping {
    /// Accepts only a mapping opened for writing.
    pub fn new(m: Mapping) -> io::Result<Self> {
        if m.writable {
            Ok(WritableMapping(m))
        } else {
            Err(io::Error::new(io::ErrorKind::PermissionDenied, "the mapping is read-only"))
        }
    }
}

impl PageMemory for WritableMapping {
    fn words(&self) -> &[AtomicU32] {
        self.0.words()
    }
    fn available(&self) -> usize {
        self.0.available()
    }
}

impl WritableMemory for WritableMapping {}
