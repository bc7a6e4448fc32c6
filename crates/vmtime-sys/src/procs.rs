//! The processes of this machine, as /proc lists them (for `vmtime sync`'s check for other time
//! daemons: `vmtime_core::rival`). Bounded: at most [`MAX_PROCESSES`] entries, 4 KiB of each
//! command line; processes that exit while being read are skipped.

use std::io::Read;
use std::path::Path;
use vmtime_core::rival::Process;

/// The most processes read.
pub const MAX_PROCESSES: usize = 65_536;
const MAX_CMDLINE: u64 = 4096;

/// Lists the processes under `proc_root` (normally `/proc`).
pub fn list_in(proc_root: &Path) -> std::io::Result<Vec<Process>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(proc_root)?.flatten().take(MAX_PROCESSES) {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let dir = entry.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else { continue };
        let mut raw = Vec::new();
        if let Ok(f) = std::fs::File::open(dir.join("cmdline")) {
            let _ = f.take(MAX_CMDLINE).read_to_end(&mut raw);
        }
        let cmdline =
            raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        out.push(Process { pid, comm: comm.trim_end_matches('\n').to_string(), cmdline });
    }
    Ok(out)
}

/// Lists this machine's processes.
pub fn list() -> std::io::Result<Vec<Process>> {
    list_in(Path::new("/proc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_comm_and_cmdline_and_skips_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("412");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("comm"), "chronyd\n").unwrap();
        std::fs::write(p.join("cmdline"), b"/usr/sbin/chronyd\0-x\0").unwrap();
        std::fs::create_dir(d.path().join("self")).unwrap();
        std::fs::create_dir(d.path().join("77")).unwrap(); // exited: no comm
        let v = list_in(d.path()).unwrap();
        assert_eq!(
            v,
            vec![Process { pid: 412, comm: "chronyd".into(), cmdline: vec!["/usr/sbin/chronyd".into(), "-x".into()] }]
        );
    }

    #[test]
    fn this_process_is_listed() {
        let me = std::process::id();
        assert!(list().unwrap().iter().any(|p| p.pid == me));
    }
}
