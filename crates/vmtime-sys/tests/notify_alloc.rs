//! The publishing path's one call into the server, `Server::notify`, allocates nothing, even
//! while it drops a subscriber that fell behind: every allocation of this test binary is
//! counted, and the count does not move across 1000 notifications.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use vmtime_sys::serve::{Limits, Poller, Reply, Server};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator, which upholds the
// GlobalAlloc contract; the counter is a relaxed atomic with no effect on memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout, as the caller guarantees it is valid.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from `alloc` above (the system allocator) with this layout.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `p` came from this allocator with layout `l`; forwarded unchanged.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

#[test]
fn notify_allocates_nothing_even_when_it_drops_a_subscriber() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("n.sock");
    let mut s = Server::bind_unix(&path, 0o600, None, Limits::default()).unwrap();
    let mut p = Poller::new();
    let mut clients: Vec<UnixStream> = (0..3).map(|_| UnixStream::connect(&path).unwrap()).collect();
    for c in &mut clients {
        c.write_all(b"subscribe\n").unwrap();
    }
    for _ in 0..50 {
        if s.subscribers() == 3 {
            break;
        }
        p.clear();
        s.register(&mut p);
        p.wait(Some(Duration::from_millis(100))).unwrap();
        s.handle(&p, |_| Reply::Subscribe("0".into()));
    }
    assert_eq!(s.subscribers(), 3);
    // Two read everything (drained between notifications, outside the counted region); the
    // third never reads and is dropped.
    let mut buf = vec![0u8; 1 << 16];
    for c in &clients[..2] {
        c.set_nonblocking(true).unwrap();
    }
    let mut counted = 0;
    for seq in 0..1000u32 {
        let before = ALLOCS.load(Ordering::Relaxed);
        s.notify(seq);
        counted += ALLOCS.load(Ordering::Relaxed) - before;
        for c in &mut clients[..2] {
            while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
        }
    }
    assert_eq!(s.stats().dropped_subscribers, 1);
    assert_eq!(s.subscribers(), 2);
    assert_eq!(counted, 0, "notify allocated {counted} times");
}
