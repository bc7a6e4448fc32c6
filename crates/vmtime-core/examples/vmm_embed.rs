//! How a Rust VMM (Firecracker's or Cloud Hypervisor's vmclock device) embeds
//! `vmtime_core::relay` over its own guest memory (feature `vm-memory`). See docs/GUESTS.md.
//!
//! The VMM already owns: the guest memory (`vm-memory`'s `GuestMemoryMmap`), the guest-physical
//! address its vmclock device's ACPI `_CRS` (or device tree `reg`) gives the guest, the guest's
//! TSC offset and scaling ratio (it set them with KVM_SET_TSC_KHZ / KVM_VCPU_TSC_OFFSET), and a
//! way to notify the guest (an interrupt, or an ACPI Notify). vmtime adds the page itself: it
//! follows the host page `vmtime host` publishes and writes the guest's page under the seqlock,
//! owning the guest's disruption marker and generation counter across migrations, snapshot
//! restores and VMM restarts.
//!
//! Run: `cargo run -p vmtime-core --features vm-memory --example vmm_embed [HOST_PAGE]`
//! (without HOST_PAGE it uses a page made here, as `vmtime host` would publish).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmclock::abi::{counter_id, status, PAGE_SIZE};
use vmclock::guest_memory::GuestPage;
use vmclock::{PageBuilder, Period, Snapshot, Tai, Timestamp};
use vmtime_core::relay::{CounterMap, GuestPageWriter, GuestRelay, GuestState};

/// Where this VMM's vmclock device lives in guest-physical memory (Firecracker and QEMU on x86
/// reserve a page below 4 GiB for it; any RAM or device page the guest is told about works).
const VMCLOCK_GPA: u64 = 0xfeff_b000 - 0xfe00_0000; // inside this example's 32 MiB of "RAM"

fn host_page(path: Option<&str>) -> Result<Snapshot, Box<dyn std::error::Error>> {
    if let Some(p) = path {
        let m = vmclock::Mapping::open(std::path::Path::new(p))?;
        return Ok(vmclock::seqlock::read(&m, vmclock::seqlock::DEFAULT_MAX_WAIT)?);
    }
    let page = PageBuilder::new()
        .reference(
            counter_id::X86_TSC,
            1_000_000,
            Timestamp::<Tai>::from_parts(1_795_000_037, 0),
            Period::from_hz(2_500_000_000).ok_or("period")?,
        )
        .tai_minus_utc(37)
        .status(status::SYNCHRONIZED)
        .maxerror(1_000, 1 << 20)
        .build();
    Ok(Snapshot::new(page, PAGE_SIZE)?)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let host_path = std::env::args().nth(1);
    // The VMM's guest memory (here 32 MiB of anonymous memory).
    let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 32 << 20)])?;

    // The guest's counter map, as the VMM programmed KVM: guest_tsc = ((host_tsc · ratio) >>
    // 48) + offset on Intel (32 fraction bits on AMD; an offset only on arm64).
    let tsc_offset = 12_345_678_u64.wrapping_neg(); // KVM_VCPU_TSC_OFFSET, as the VMM read it back
    let tsc_ratio = 1u64 << 48; // 1.0: no scaling (KVM's default when the guest TSC kHz = host's)
    let map = CounterMap::new(tsc_offset, tsc_ratio, 48)?;

    // One relay per guest. The seed starts both markers: a fresh random value per VM.
    let seed = 0x5eed_0000_0000_0001;
    let relay = GuestRelay::new(map, seed, true);
    let mut notified = Vec::new();
    let mut writer = GuestPageWriter::new(relay, GuestPage::new(&mem, GuestAddress(VMCLOCK_GPA))?, |seq| {
        // Firecracker: trigger the vmclock device's interrupt; Cloud Hypervisor / QEMU-style
        // ACPI: Notify (VCLK, 0x80). Here we only record it.
        notified.push(seq);
    });

    // On every new host page (the VMM polls or waits on `vmtime host`'s socket): relay it.
    let host = host_page(host_path.as_deref())?;
    let seq = writer.update(&host)?;

    // Live migration in: the destination VMM sets the new TSC offset and relays again; the
    // guest's disruption marker changes once.
    let before = writer.relay().state().disruption_marker;
    writer.relay().migrated_in(CounterMap::new(tsc_offset.wrapping_add(999), tsc_ratio, 48)?);
    let seq2 = writer.update(&host)?;
    let after = writer.relay().state().disruption_marker;

    // A snapshot restore changes the generation counter too; the state is saved with the VM
    // (serde), so a VMM restart does not move either marker back.
    writer.relay().restored_from_snapshot();
    writer.update(&host)?;
    let saved: GuestState = *writer.relay().state();
    let _restarted = GuestRelay::from_state(saved);

    // What the guest sees at VMCLOCK_GPA (its ptp_vmclock maps exactly this page).
    let mut bytes = vec![0u8; PAGE_SIZE];
    mem.read_slice(&mut bytes, GuestAddress(VMCLOCK_GPA))?;
    let guest = Snapshot::from_bytes(&bytes)?;
    assert_eq!(guest.counter_value(), host.counter_value().map(|c| map.guest(c).wrapping_add(999)));
    assert_eq!(after, before.wrapping_add(1));
    drop(writer);
    println!(
        "guest page at {VMCLOCK_GPA:#x}: seq {} (updates {seq}, {seq2}), marker {:#x}, generation {:?}, \
         counter_value {:?}; notifications sent {notified:?}",
        guest.seq_count(),
        guest.disruption_marker(),
        guest.vm_generation_counter(),
        guest.counter_value(),
    );
    Ok(())
}
