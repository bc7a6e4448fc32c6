//! A running KVM guest's TSC map, from KVM's debugfs: what `vmtime relay` needs after KVM gave
//! the guest a new TSC offset (a migration's destination, a restore, a guest write to the TSC).
//!
//! The layout, as Linux creates it (virt/kvm/kvm_main.c, arch/x86/kvm/debugfs.c):
//!
//! ```text
//! /sys/kernel/debug/kvm/<pid>-<fd>/            one per VM: the pid that created it, the VM's fd
//!     vcpu<N>/tsc-offset                       "%lld\n": the offset added after scaling (signed)
//!     vcpu<N>/tsc-scaling-ratio                "%llu\n": only where the CPU scales the TSC
//!     vcpu<N>/tsc-scaling-ratio-frac-bits      "%llu\n": 48 on Intel, 32 on AMD
//! ```
//!
//! Reading debugfs needs root (it is mounted 0700). Tests point `root` at a fixture tree.

use std::path::{Path, PathBuf};
use thiserror::Error;

/// Where Linux mounts KVM's debugfs directory.
pub const DEBUGFS_KVM: &str = "/sys/kernel/debug/kvm";

/// One vCPU's TSC map: `guest = ((host · ratio) >> frac_bits) + offset` (mod 2^64).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuTsc {
    /// The vCPU's number (`vcpuN`).
    pub vcpu: u32,
    /// The offset, as KVM prints it (signed); `as u64` is the wrapping offset the relay takes.
    pub offset: i64,
    /// The scaling ratio and its fraction bits, where the CPU scales the TSC.
    pub scaling: Option<(u64, u8)>,
}

/// Why the map cannot be read.
#[derive(Debug, Error)]
pub enum KvmError {
    /// No VM directory for the pid.
    #[error("no KVM VM of process {pid} under {root} (is it a KVM guest's QEMU? debugfs is readable by root only)")]
    NoVm {
        /// The pid asked for.
        pid: u32,
        /// The debugfs directory searched.
        root: PathBuf,
    },
    /// More than one VM directory for the pid (a process with two VMs).
    #[error("process {pid} has {count} KVM VMs under {root} ({names}): give the VM's directory")]
    ManyVms {
        /// The pid asked for.
        pid: u32,
        /// How many.
        count: usize,
        /// Their names.
        names: String,
        /// The debugfs directory searched.
        root: PathBuf,
    },
    /// The VM has no vCPU directories.
    #[error("{dir} has no vcpuN directories")]
    NoVcpus {
        /// The VM's directory.
        dir: PathBuf,
    },
    /// A file is missing, unreadable or not the number KVM prints.
    #[error("{path}: {why}")]
    Bad {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The directory cannot be listed.
    #[error("{path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn list(dir: &Path) -> Result<Vec<(String, PathBuf)>, KvmError> {
    let rd = std::fs::read_dir(dir).map_err(|source| KvmError::Io { path: dir.to_path_buf(), source })?;
    let mut v = Vec::new();
    for e in rd {
        let e = e.map_err(|source| KvmError::Io { path: dir.to_path_buf(), source })?;
        if let Some(name) = e.file_name().to_str() {
            v.push((name.to_string(), e.path()));
        }
    }
    v.sort();
    Ok(v)
}

/// The VM directory of process `pid` under `root` (`<pid>-<fd>`).
pub fn vm_dir(root: &Path, pid: u32) -> Result<PathBuf, KvmError> {
    let prefix = format!("{pid}-");
    let vms: Vec<_> = list(root)?
        .into_iter()
        .filter(|(n, p)| n.strip_prefix(&prefix).is_some_and(|fd| fd.parse::<u32>().is_ok()) && p.is_dir())
        .collect();
    match vms.as_slice() {
        [] => Err(KvmError::NoVm { pid, root: root.to_path_buf() }),
        [(_, p)] => Ok(p.clone()),
        many => Err(KvmError::ManyVms {
            pid,
            count: many.len(),
            names: many.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", "),
            root: root.to_path_buf(),
        }),
    }
}

/// A debugfs number: one line, at most 32 bytes (KVM prints one integer).
fn number<T: std::str::FromStr>(path: &Path) -> Result<T, KvmError> {
    let bad = |why: String| KvmError::Bad { path: path.to_path_buf(), why };
    let mut buf = Vec::new();
    use std::io::Read;
    std::fs::File::open(path)
        .and_then(|f| f.take(33).read_to_end(&mut buf))
        .map_err(|e| bad(format!("cannot read: {e}")))?;
    if buf.len() > 32 {
        return Err(bad("longer than the one number KVM prints".into()));
    }
    let s = std::str::from_utf8(&buf).map_err(|_| bad("not text".into()))?;
    s.trim().parse().map_err(|_| bad(format!("{:?} is not the integer KVM prints", s.trim())))
}

/// Every vCPU's TSC map of the VM in `dir` (a `<pid>-<fd>` directory), by vCPU number.
pub fn vm_tsc(dir: &Path) -> Result<Vec<VcpuTsc>, KvmError> {
    let mut out = Vec::new();
    for (name, path) in list(dir)? {
        let Some(n) = name.strip_prefix("vcpu").and_then(|n| n.parse::<u32>().ok()) else { continue };
        let offset = number::<i64>(&path.join("tsc-offset"))?;
        let ratio = path.join("tsc-scaling-ratio");
        let scaling = if ratio.exists() {
            let bits = number::<u8>(&path.join("tsc-scaling-ratio-frac-bits"))?;
            if bits > 63 {
                return Err(KvmError::Bad {
                    path: path.join("tsc-scaling-ratio-frac-bits"),
                    why: format!("{bits} fraction bits (at most 63)"),
                });
            }
            Some((number::<u64>(&ratio)?, bits))
        } else {
            None
        };
        out.push(VcpuTsc { vcpu: n, offset, scaling });
    }
    out.sort_by_key(|v| v.vcpu);
    if out.is_empty() {
        return Err(KvmError::NoVcpus { dir: dir.to_path_buf() });
    }
    Ok(out)
}

/// Every vCPU's TSC map of process `pid`'s VM (its QEMU), from KVM's debugfs under `root`
/// ([`DEBUGFS_KVM`] on a host).
pub fn guest_tsc(root: &Path, pid: u32) -> Result<Vec<VcpuTsc>, KvmError> {
    vm_tsc(&vm_dir(root, pid)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vcpu(vm: &Path, n: u32, offset: &str, scaling: Option<(&str, &str)>) {
        let d = vm.join(format!("vcpu{n}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("tsc-offset"), offset).unwrap();
        std::fs::write(d.join("guest_mode"), "0\n").unwrap();
        if let Some((r, b)) = scaling {
            std::fs::write(d.join("tsc-scaling-ratio"), r).unwrap();
            std::fs::write(d.join("tsc-scaling-ratio-frac-bits"), b).unwrap();
        }
    }

    #[test]
    fn reads_every_vcpu_of_the_pids_vm() {
        let root = tempfile::tempdir().unwrap();
        let vm = root.path().join("4242-11");
        // KVM prints the offset signed (%lld): a destination's offset is often negative.
        vcpu(&vm, 0, "-123456789012\n", Some(("281474976710656\n", "48\n")));
        vcpu(&vm, 1, "-123456789012\n", Some(("281474976710656\n", "48\n")));
        vcpu(&vm, 10, "-123456789012\n", Some(("281474976710656\n", "48\n")));
        // Another process's VM, and a pid that only shares a prefix.
        vcpu(&root.path().join("4243-9"), 0, "5\n", None);
        vcpu(&root.path().join("42420-9"), 0, "6\n", None);
        std::fs::write(root.path().join("4242-stats"), "").unwrap();
        let t = guest_tsc(root.path(), 4242).unwrap();
        assert_eq!(t.iter().map(|v| v.vcpu).collect::<Vec<_>>(), [0, 1, 10]);
        assert!(t.iter().all(|v| v.offset == -123_456_789_012 && v.scaling == Some((1 << 48, 48))));
        assert_eq!(t[0].offset as u64, 0u64.wrapping_sub(123_456_789_012));
        // Without TSC scaling (no ratio files): an offset only.
        assert_eq!(guest_tsc(root.path(), 4243).unwrap(), [VcpuTsc { vcpu: 0, offset: 5, scaling: None }]);
    }

    #[test]
    fn refuses_what_it_cannot_vouch_for() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        assert!(matches!(guest_tsc(r, 1), Err(KvmError::NoVm { pid: 1, .. })));
        vcpu(&r.join("7-10"), 0, "1\n", None);
        vcpu(&r.join("7-12"), 0, "1\n", None);
        let e = guest_tsc(r, 7).unwrap_err();
        assert!(matches!(e, KvmError::ManyVms { count: 2, .. }), "{e}");
        assert!(e.to_string().contains("7-10, 7-12"), "{e}");
        std::fs::create_dir_all(r.join("8-3")).unwrap();
        assert!(matches!(guest_tsc(r, 8), Err(KvmError::NoVcpus { .. })));
        vcpu(&r.join("9-3"), 0, "twelve\n", None);
        let e = guest_tsc(r, 9).unwrap_err();
        assert!(e.to_string().contains("tsc-offset") && e.to_string().contains("twelve"), "{e}");
        vcpu(&r.join("10-3"), 0, &"1".repeat(40), None);
        assert!(guest_tsc(r, 10).unwrap_err().to_string().contains("longer"));
        vcpu(&r.join("11-3"), 0, "1\n", Some(("1\n", "64\n")));
        assert!(guest_tsc(r, 11).unwrap_err().to_string().contains("64 fraction bits"));
        // A vCPU without its offset file.
        std::fs::create_dir_all(r.join("12-3/vcpu0")).unwrap();
        assert!(guest_tsc(r, 12).unwrap_err().to_string().contains("cannot read"));
    }
}
