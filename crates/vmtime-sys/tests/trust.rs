//! Issue 20 at the OS boundary: whose files are trusted (`files::check_trusted` and its users),
//! outputs that never write through links, devices or fifos (`files::replace_output`), inputs
//! that never block (`files::read_small_regular`), and a followed page whose path no longer names
//! it (`follow::FollowedPage`).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;
use vmtime_sys::files::{self, FileError, Recognise};
use vmtime_sys::follow::{FollowError, FollowedPage};

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn page_bytes() -> Vec<u8> {
    vmclock::PageBuilder::new().page_bytes().to_vec()
}

fn mkfifo(p: &Path) {
    rustix::fs::mkfifoat(rustix::fs::CWD, p, rustix::fs::Mode::from_raw_mode(0o600)).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs `f` on another thread and fails the test if it has not returned within 60 s (a hang
/// detector for opens that used to block on a fifo, not a synchronisation).
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("{what} blocked"))
}

#[test]
fn files_of_another_user_or_that_others_may_write_are_never_adopted() {
    let d = tempfile::tempdir().unwrap();
    // Root's own page, writable by group or others: refused for its mode, whoever we are.
    let p = d.path().join("open.page");
    std::fs::write(&p, page_bytes()).unwrap();
    for mode in [0o666, 0o664, 0o646] {
        chmod(&p, mode);
        let e = files::open_or_create_page(&p, &page_bytes()).unwrap_err();
        assert!(matches!(e, FileError::Untrusted { .. }), "{e}");
        assert!(e.to_string().contains(&format!("mode {mode:04o}")) && e.to_string().contains("chmod go-w"), "{e}");
        assert!(files::check_page_path(&p).is_err());
    }
    chmod(&p, 0o644);
    files::open_or_create_page(&p, &page_bytes()).unwrap();

    // A second name: refused (its other directory may be anyone's).
    let q = d.path().join("q.page");
    std::fs::write(&q, page_bytes()).unwrap();
    chmod(&q, 0o644);
    std::fs::hard_link(&q, d.path().join("q2")).unwrap();
    let e = files::open_page(&q).unwrap_err();
    assert!(e.to_string().contains("2 names (hard links)"), "{e}");

    // State and lock files: the same rule.
    let st = d.path().join("s.json");
    std::fs::write(&st, b"{}").unwrap();
    chmod(&st, 0o622);
    assert!(matches!(files::read_state(&st).unwrap_err(), FileError::Untrusted { .. }));
    let lk = d.path().join("s.lock");
    std::fs::write(&lk, b"").unwrap();
    chmod(&lk, 0o666);
    assert!(matches!(files::LockFile::acquire(&lk).unwrap_err(), FileError::Untrusted { .. }));

    if !is_root() {
        println!("SKIP (the rest): needs root to give files to uid 65534");
        return;
    }
    for (path, mode) in [(&p, 0o644), (&st, 0o600), (&lk, 0o600)] {
        chmod(path, mode);
        std::os::unix::fs::chown(path, Some(65534), None).unwrap();
    }
    let before = std::fs::read(&p).unwrap();
    let e = files::open_or_create_page(&p, &page_bytes()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("owned by uid 65534") && msg.contains("belongs to another user") && msg.contains("rm "),
        "{msg}"
    );
    assert_eq!(std::fs::read(&p).unwrap(), before);
    assert_eq!(std::fs::metadata(&p).unwrap().uid(), 65534, "left as it was");
    assert!(files::read_state(&st).unwrap_err().to_string().contains("a state file owned by uid 65534"));
    assert!(files::LockFile::acquire(&lk).unwrap_err().to_string().contains("a lock file owned by uid 65534"));
    // A new page where there was none: ours.
    let n = d.path().join("new.page");
    let (_f, prev) = files::open_or_create_page(&n, &page_bytes()).unwrap();
    assert!(prev.is_none());
    assert_eq!(std::fs::metadata(&n).unwrap().uid(), 0);
}

#[test]
fn outputs_replace_only_what_they_recognise_and_never_block() {
    let d = tempfile::tempdir().unwrap();
    let is_x = |b: &[u8]| b.starts_with(b"X1");
    let rec = || Some(Recognise { max: 100, is_one: &is_x });
    let out = d.path().join("out");
    files::replace_output(&out, b"X1 first", 0o644, "an X", rec(), &[]).unwrap();
    let ino = std::fs::metadata(&out).unwrap().ino();
    files::replace_output(&out, b"X1 second", 0o644, "an X", rec(), &[]).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), b"X1 second");
    assert_ne!(std::fs::metadata(&out).unwrap().ino(), ino, "a new file, renamed");
    assert_eq!(std::fs::metadata(&out).unwrap().mode() & 0o777, 0o644);

    // Not recognised, too large, protected, a link, a fifo: refused, left as they were.
    let other = d.path().join("other");
    std::fs::write(&other, b"notes").unwrap();
    let e = files::replace_output(&other, b"X1", 0o644, "an X", rec(), &[]).unwrap_err();
    assert!(e.to_string().contains("a regular file of 5 bytes is there, not an X"), "{e}");
    std::fs::write(&other, vec![b'X'; 200]).unwrap();
    assert!(files::replace_output(&other, b"X1", 0o644, "an X", rec(), &[]).is_err());
    let e = files::replace_output(&out, b"X1", 0o644, "an X", rec(), &[("the page", &out)]).unwrap_err();
    assert!(e.to_string().contains("the page is there"), "{e}");
    let link = d.path().join("link");
    std::os::unix::fs::symlink(&out, &link).unwrap();
    let e = files::replace_output(&link, b"X1", 0o644, "an X", rec(), &[]).unwrap_err();
    assert!(matches!(e, FileError::Symlink { .. }), "{e}");
    assert_eq!(std::fs::read(&out).unwrap(), b"X1 second");
    let fifo = d.path().join("fifo");
    mkfifo(&fifo);
    let f2 = fifo.clone();
    let e = bounded("replace_output on a fifo", move || {
        files::replace_output(&f2, b"X1", 0o644, "an X", None, &[]).unwrap_err().to_string()
    });
    assert!(e.contains("a fifo is there"), "{e}");
    let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(!names.iter().any(|n| n.to_string_lossy().ends_with(".tmp")), "{names:?}");
}

#[test]
fn small_inputs_are_regular_files_read_without_waiting() {
    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("fifo");
    mkfifo(&fifo);
    let f2 = fifo.clone();
    let e = bounded("read_small_regular on a fifo", move || files::read_small_regular(&f2, 1024).unwrap_err());
    assert!(e.to_string().contains("a fifo is there, not a regular file"), "{e}");
    let e = files::read_small_regular(d.path(), 1024).unwrap_err();
    assert!(e.to_string().contains("a directory is there"), "{e}");
    let big = d.path().join("big");
    std::fs::write(&big, vec![b'a'; 2000]).unwrap();
    assert_eq!(files::read_small_regular(&big, 1024).unwrap_err().kind(), std::io::ErrorKind::FileTooLarge);
    assert_eq!(files::read_small_regular(&big, 4096).unwrap().len(), 2000);
    let missing = d.path().join("missing");
    assert_eq!(files::read_small_regular(&missing, 10).unwrap_err().kind(), std::io::ErrorKind::NotFound);
    // A link to a regular file is read (a configuration may be one).
    let link = d.path().join("link");
    std::os::unix::fs::symlink(&big, &link).unwrap();
    assert_eq!(files::read_small_regular(&link, 4096).unwrap().len(), 2000);
}

#[test]
fn a_followed_page_whose_path_names_no_page_any_more_is_lost_not_followed() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("host.page");
    let bytes = vmclock::PageBuilder::new().disruption_marker(1).page_bytes();
    std::fs::write(&p, &bytes).unwrap();
    let mut f = FollowedPage::open(&p).unwrap();
    f.read().unwrap();
    // The path now names a fifo; the old file (still open here) is an orphan.
    let fifo = d.path().join("fifo");
    mkfifo(&fifo);
    std::fs::rename(&fifo, &p).unwrap();
    assert!(!f.refresh());
    let e = f.read().unwrap_err();
    assert!(matches!(e, FollowError::Lost { .. }), "{e}");
    assert!(e.to_string().contains("no longer names the page followed"), "{e}");
    // Removed: still lost.
    std::fs::remove_file(&p).unwrap();
    assert!(!f.refresh());
    assert!(f.read().is_err());
    // A page there again: followed.
    let tmp = d.path().join("tmp");
    std::fs::write(&tmp, &bytes).unwrap();
    std::fs::rename(&tmp, &p).unwrap();
    assert!(f.refresh());
    f.read().unwrap();
}
