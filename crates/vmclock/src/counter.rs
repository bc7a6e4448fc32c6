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

/// Reads the counter ordered after every earlier load (so after the seqlock's copy), as the
/// kernel's `rdtsc_ordered()` does: RDTSCP where the CPU has it (the kernel's choice then), else
/// LFENCE; RDTSC (LFENCE is dispatch-serialising on every CPU Linux uses it on). Whether RDTSCP
/// exists is asked once (std caches the CPUID answer), not per read.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn read() -> u64 {
    if has_rdtscp() {
        read_rdtscp()
    } else {
        read_lfence_rdtsc()
    }
}

/// Asks CPUID once when the program (or library) is loaded, so no counter read ever pays for it:
/// in a VM, CPUID traps to the hypervisor (tens of µs), which would skew whatever the first read
/// is paired with (a calibration, a cross-timestamp).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[used]
#[link_section = ".init_array"]
static DETECT_AT_LOAD: extern "C" fn() = {
    extern "C" fn detect() {
        has_rdtscp();
    }
    detect
};

/// Whether RDTSCP exists: 0 not asked yet, 1 no, 2 yes.
#[cfg(target_arch = "x86_64")]
static RDTSCP: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);

/// Whether this CPU has RDTSCP (CPUID 0x8000_0001 EDX bit 27), asked once (at load on Linux)
/// and remembered.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn has_rdtscp() -> bool {
    use core::sync::atomic::Ordering;
    #[cold]
    #[inline(never)]
    fn ask() -> bool {
        use core::arch::x86_64::__cpuid;
        // Leaf 0x8000_0000 gives the highest extended leaf; 0x8000_0001 is asked only if it exists.
        let yes = __cpuid(0x8000_0000).eax >= 0x8000_0001 && __cpuid(0x8000_0001).edx & (1 << 27) != 0;
        RDTSCP.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
        yes
    }
    match RDTSCP.load(Ordering::Relaxed) {
        0 => ask(),
        v => v == 2,
    }
}

/// RDTSCP: waits for every earlier instruction and load, then reads the TSC.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn read_rdtscp() -> u64 {
    let mut aux = 0u32;
    // SAFETY: only called where RDTSCP exists (checked by the caller, or a benchmark on this CPU);
    // it writes `aux`, a valid local, and touches no other memory.
    unsafe { core::arch::x86_64::__rdtscp(&mut aux) }
}

/// LFENCE; RDTSC: the TSC read after every earlier load has completed.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn read_lfence_rdtsc() -> u64 {
    use core::arch::x86_64::{_mm_lfence, _rdtsc};
    // SAFETY: LFENCE is SSE2, part of the x86_64 baseline; it has no memory effects.
    unsafe { _mm_lfence() };
    // SAFETY: RDTSC has no preconditions on x86_64 (Linux leaves CR4.TSD clear for user space).
    unsafe { _rdtsc() }
}

/// Reads the virtual counter as the arm64 kernel does (`__arch_counter_get_cntvct` then
/// `arch_counter_enforce_ordering`): an ISB so the read is not taken ahead of earlier
/// instructions, then a dummy load that depends on the value, so that later loads (the
/// seqlock's second `seq_count` read, after its acquire fence) are ordered after the read.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
pub fn read() -> u64 {
    let v: u64;
    // SAFETY: CNTVCT_EL0 is readable from EL0 on Linux (the kernel enables it for the vDSO).
    // The dummy load reads the 8 bytes at the stack pointer (v ^ v = 0 added to sp), which are
    // always mapped and readable, into the zero register; nothing is written.
    unsafe {
        core::arch::asm!(
            "isb",
            "mrs {v}, cntvct_el0",
            "eor {t}, {v}, {v}",
            "add {t}, sp, {t}",
            "ldr xzr, [{t}]",
            v = out(reg) v,
            t = out(reg) _,
            options(nostack, preserves_flags, readonly),
        )
    };
    v
}

/// No counter on this architecture; always 0 (pages are refused: `NATIVE` is INVALID).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub fn read() -> u64 {
    0
}

#[cfg(all(test, target_arch = "x86_64", target_os = "linux"))]
mod tests {
    #[test]
    fn cpuid_was_asked_when_the_program_was_loaded() {
        assert_ne!(super::RDTSCP.load(core::sync::atomic::Ordering::Relaxed), 0);
    }
}

#[cfg(all(test, any(target_arch = "x86_64", target_arch = "aarch64")))]
mod read_tests {
    /// The ordered read runs (on arm64: ISB, MRS CNTVCT_EL0, the dependent dummy load) and the
    /// counter moves forward.
    #[test]
    fn the_counter_moves_forward() {
        let a = super::read();
        let mut b = super::read();
        for _ in 0..1_000_000 {
            if b > a {
                break;
            }
            b = super::read();
        }
        assert!(b > a, "{a} then {b}");
    }
}
