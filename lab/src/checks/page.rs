//! Reading vmclock pages: files on this machine, and QEMU's own page through the gdbstub.

use crate::vm::QEMU_VMCLOCK_ADDR;
use anyhow::Result;
use std::path::Path;
use vmclock::abi::{self};
use vmclock::{Period, Snapshot};

pub(crate) fn read_page(p: &Path) -> Result<Snapshot> {
    let m = vmclock::Mapping::open(p)?;
    Ok(vmclock::seqlock::read(&m, vmclock::seqlock::DEFAULT_MAX_WAIT)?)
}

/// A page's counter period.
pub(crate) fn period_of(page: &Snapshot) -> Result<Period> {
    let r = page.reference()?;
    Ok(Period { frac: r.period, shift: r.shift })
}

/// QEMU's vmclock page, read through the gdbstub (the region is a whole page).
pub(super) fn qemu_page(gdb: &mut crate::vm::Gdb) -> Result<Snapshot> {
    let bytes: [u8; abi::ABI_SIZE] =
        gdb.read_phys(QEMU_VMCLOCK_ADDR, abi::ABI_SIZE)?.try_into().map_err(|_| anyhow::anyhow!("short read"))?;
    Ok(Snapshot::decode(&bytes, abi::PAGE_SIZE)?)
}
