//! Reading this CPU's counter: the TSC on x86_64, CNTVCT_EL0 on aarch64. No system call.

use crate::abi::counter_id;

/// The page `counter_id` this CPU's counter corresponds to (INVALID where there is none).
#[cfg(target_arch = "x86_64")]
pub const NATIVE: u8 = counter_id::X86_TSC;
/// The page `counter_id` this CPU's counter corresponds to (INVALID where there is none).
#[cfg(target_arch = "aarch64")]
pub const NATIVE: u8 = counter_id::ARM_VCNT;
/// The page `counter_id` this CPU's counter corresponds to (INVALID where there is none).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub const NATIVE: u8 = counter_id::INVALID;

/// Reads the counter, ordered after every earlier load (so after the seqlock copy): LFENCE then
/// RDTSC, as the kernel's `rdtsc_ordered()` does on CPUs where LFENCE is dispatch-serialising.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn read() -> u64 {
    use core::arch::x86_64::{_mm_lfence, _rdtsc};
    // SAFETY: LFENCE is SSE2, part of the x86_64 baseline; it has no memory effects.
    unsafe { _mm_lfence() };
    // SAFETY: RDTSC has no preconditions on x86_64 (Linux leaves CR4.TSD clear for user space).
    unsafe { _rdtsc() }
}

/// Reads the virtual counter after an ISB, so it is not read ahead of earlier instructions.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
pub fn read() -> u64 {
    let v: u64;
    // SAFETY: CNTVCT_EL0 is readable from EL0 on Linux (the kernel enables it for the vDSO);
    // ISB and MRS touch no memory and the asm uses no stack.
    unsafe { core::arch::asm!("isb", "mrs {v}, cntvct_el0", v = out(reg) v, options(nostack, preserves_flags)) };
    v
}

/// No counter on this architecture; always 0 (pages are refused: `NATIVE` is INVALID).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub fn read() -> u64 {
    0
}
