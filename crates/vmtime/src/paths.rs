//! Where things live, in one place: a page's control socket, a relay's state and its lock, the
//! host and sync daemons' default runtime files. The daemons and the commands that find them
//! (`status`, `watch`, `relay`, `sync`) all ask here. Nothing here creates a file.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use vmtime_sys::files;

/// The default page of a guest (the Linux driver's device).
pub const DEFAULT_GUEST_PAGE: &str = "/dev/vmclock0";

/// The page a reading command (show, check, now, watch) reads when none is given: the guest's
/// /dev/vmclock0; where that is absent and this machine publishes a host page (a `vmtime host`
/// runs here, at its default path), that page, said in one line on stderr.
pub fn page_or_default(p: Option<PathBuf>) -> PathBuf {
    if let Some(p) = p {
        return p;
    }
    let guest = PathBuf::from(DEFAULT_GUEST_PAGE);
    if std::fs::symlink_metadata(&guest).is_ok() {
        return guest;
    }
    let host = find_host_page();
    if std::fs::symlink_metadata(&host).is_ok() {
        eprintln!("vmtime: no {DEFAULT_GUEST_PAGE} (not a guest): reading this machine's host page {}", host.display());
        return host;
    }
    guest
}

/// `path` with `suffix` appended to its last component.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(OsStr::new(suffix));
    PathBuf::from(s)
}

/// The control socket that goes with a page (host and relay: the page path + ".sock").
pub fn socket_for(page: &Path) -> PathBuf {
    with_suffix(page, ".sock")
}

/// Where a relay keeps a guest's markers by default: the guest page + ".state.json".
pub fn state_for(guest_page: &Path) -> PathBuf {
    with_suffix(guest_page, ".state.json")
}

/// The lock file beside a state file (one relay per state).
pub fn lock_for(state: &Path) -> PathBuf {
    with_suffix(state, ".lock")
}

/// The default page path of a host daemon run by this uid (`vmtime_sys::files::runtime_dir`:
/// /run/vmtime for root, else the user's own runtime directory).
pub fn default_host_page() -> PathBuf {
    files::runtime_dir().join("host.page")
}

/// The host page a query (status, relay) looks at by default: this user's, else root's
/// /run/vmtime/host.page when that directory is safe.
pub fn find_host_page() -> PathBuf {
    files::find_runtime_file("host.page")
}

/// The runtime directory of a sync: a dry run's never is a system path (`files::dry_run_dir`).
pub fn sync_dir(dry_run: bool) -> PathBuf {
    if dry_run {
        files::dry_run_dir()
    } else {
        files::runtime_dir()
    }
}

/// The default control socket of a sync.
pub fn sync_socket(dry_run: bool) -> PathBuf {
    sync_dir(dry_run).join("sync.sock")
}

/// The lock file every real sync of this uid takes, whatever its socket: two daemons must never
/// discipline one clock.
pub fn sync_lock() -> PathBuf {
    files::runtime_dir().join("sync.lock")
}

/// The default control socket of a feed (`feed-chrony`, `feed-clockbound`), in this uid's
/// runtime directory.
pub fn feed_socket(feed: &str) -> PathBuf {
    files::runtime_dir().join(format!("{feed}.sock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conventions() {
        let p = Path::new("/run/vmtime/g1.page");
        assert_eq!(socket_for(p), Path::new("/run/vmtime/g1.page.sock"));
        assert_eq!(state_for(p), Path::new("/run/vmtime/g1.page.state.json"));
        assert_eq!(lock_for(&state_for(p)), Path::new("/run/vmtime/g1.page.state.json.lock"));
        assert_eq!(sync_lock(), files::runtime_dir().join("sync.lock"));
        assert_ne!(sync_dir(true), files::runtime_dir().join("never"), "a path, not a system default");
    }
}
