//! Check `show`.

use super::{Lab, SEC};
use anyhow::{ensure, Result};
use vmclock::abi::{self};

impl Lab {
    /// 1. QEMU's own vmclock page, through the kernel's driver, decoded in the guest.
    pub(super) fn show(&mut self) -> Result<String> {
        self.vm.sh_ok("insmod /lib/ptp_vmclock.ko", 10 * SEC)?;
        let out = self.vm.sh_ok("vmtime show /dev/vmclock0 --json", 10 * SEC);
        self.vm.sh_ok("rmmod ptp_vmclock", 10 * SEC)?;
        let v: serde_json::Value = serde_json::from_str(&out?)?;
        let f = &v["fields"];
        ensure!(f["magic"] == abi::MAGIC, "bad magic: {}", f["magic"]);
        Ok(format!(
            "/dev/vmclock0: version {}, counter {}, status {}, disruption_marker {:#x} (QEMU fills only these)",
            f["version"],
            f["counter_id"]["name"],
            f["clock_status"]["name"],
            f["disruption_marker"].as_u64().unwrap_or(0)
        ))
    }
}
