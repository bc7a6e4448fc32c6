//! Publishing a page file atomically: written in full under a temporary name, mode 0444, then
//! renamed over the target, so a reader never sees a partial page.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Creates (or atomically replaces) `path` with `contents` and mode 0444, and returns the file
/// still open for reading and writing: only its holder can write to it (by mapping it).
pub fn create(path: &Path, contents: &[u8]) -> io::Result<File> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the page path has no file name"))?;
    let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = OpenOptions::new().read(true).write(true).create_new(true).mode(0o444).open(&tmp)?;
    let result = f.write_all(contents).and_then(|_| f.sync_all()).and_then(|_| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|_| f)
}

/// Opens an existing page file (mode 0444) for writing, for a daemon taking over its own page
/// after a restart: readers keep their mappings of the same file. The owner may write a file
/// it owns once it adds the write bit, which is removed again at once.
pub fn open_existing(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)?;
    let mode = meta.permissions().mode();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | 0o200))?;
    let f = OpenOptions::new().read(true).write(true).open(path);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_read_only_and_replaces() {
        let dir = std::env::temp_dir().join(format!("vmtime-pagefile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("page");
        let f = create(&p, &[1u8; 4096]).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o444);
        assert!(f.metadata().unwrap().len() == 4096);
        create(&p, &[2u8; 4096]).unwrap();
        assert_eq!(std::fs::read(&p).unwrap()[0], 2);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file left");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
