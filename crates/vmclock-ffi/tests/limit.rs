//! The 64-file limit of `vmclock_open` (the SIGBUS guard's table), alone in its own test
//! process: the table is process-wide, so no other test may hold places in it meanwhile.
use std::ffi::{c_int, CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use vmclock::{vmclock_close, vmclock_now, vmclock_open, vmclock_strerror, VMCLOCK_E_INVALID, VMCLOCK_E_LIMIT};
use vmclock_rs::abi;

fn open(p: &Path) -> (*mut vmclock::vmclock, c_int) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut err = 0;
    // SAFETY: a NUL-terminated path and a local int.
    (unsafe { vmclock_open(c.as_ptr(), &mut err) }, err)
}

fn read(h: *mut vmclock::vmclock) -> c_int {
    let mut n = vmclock::vmclock_now::default();
    // SAFETY: an open handle and a local struct.
    unsafe { vmclock_now(h, &mut n) }
}

#[test]
fn the_65th_page_file_is_refused_with_a_limit_code_until_one_is_closed() {
    if vmclock_rs::counter::NATIVE == abi::counter_id::INVALID {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("page");
    let page = vmclock_rs::test_support::synchronized_tai(
        vmclock_rs::counter::NATIVE,
        vmclock_rs::counter::read(),
        1_000_000_000,
    )
    .page_bytes();
    std::fs::write(&p, page).unwrap();
    let mut handles: Vec<_> = (0..64)
        .map(|i| {
            let (h, err) = open(&p);
            assert!(!h.is_null(), "open {i}: {err}");
            h
        })
        .collect();
    // The 65th: refused with its own code, not mapped unguarded.
    let (h, err) = open(&p);
    assert!(h.is_null());
    assert_eq!(err, VMCLOCK_E_LIMIT);
    // SAFETY: vmclock_strerror returns a static NUL-terminated string.
    let text = unsafe { CStr::from_ptr(vmclock_strerror(err)) }.to_str().unwrap();
    assert!(text.contains("64 handles on page files") && text.contains("close one"), "{text}");
    // The 64 open ones still read.
    assert!(handles.iter().all(|&h| read(h) == 0));
    // A device does not count: one made with mknod here (the kernel's zero device: it maps,
    // but it is not a page), refused as invalid, not for the limit.
    let dev = dir.path().join("zero");
    let made = std::process::Command::new("mknod").arg(&dev).args(["c", "1", "5"]).status().unwrap();
    assert!(made.success(), "mknod (the tests run as root)");
    let (h, err) = open(&dev);
    assert!(h.is_null());
    assert_eq!(err, VMCLOCK_E_INVALID);
    // One closed: the next open works again.
    // SAFETY: a handle from vmclock_open, closed once.
    unsafe { vmclock_close(handles.pop().unwrap()) };
    let (h, err) = open(&p);
    assert!(!h.is_null(), "{err}");
    assert_eq!(read(h), 0);
    handles.push(h);
    for h in handles {
        // SAFETY: as above.
        unsafe { vmclock_close(h) };
    }
}
