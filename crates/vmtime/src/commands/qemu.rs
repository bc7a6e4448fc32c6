//! `vmtime qemu`: gives a stock guest under an unmodified QEMU a vmclock device on a page file
//! (the one `vmtime relay` writes), so that the guest's own `ptp_vmclock` binds to it.
//!
//! The file is shared into the guest as an `ivshmem-plain` PCI device (memory-backend-file,
//! share=on), and an ACPI SSDT added with `-acpitable file=…` declares the vmclock device
//! (`_HID "AMZNC10C"`, `_CID "VMCLOCK"`) whose `_CRS` is that device's memory BAR, read by AML
//! from its PCI configuration space when the guest evaluates `_CRS`. See docs/GUESTS.md.
//!
//! The vmclock device is declared *inside* the ivshmem device's ACPI node (the node with its
//! `_ADR` under `\_SB.PCI0`): Linux then makes the PCI device its parent and nests the vmclock
//! resource inside the BAR, instead of claiming the same range first and making the PCI core
//! move the BAR. The AML is built with rust-vmm's `acpi_tables` crate (the one Cloud
//! Hypervisor uses), not by hand: it encodes names, package lengths and resource templates.

use acpi_tables::aml::{
    self, Add, And, CreateQWordField, Device, Else, Equal, FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule,
    If, Local, Method, Name, Notify, OpRegion, OpRegionSpace, Or, Path as AmlPath, ResourceTemplate, Return, Scope,
    ShiftLeft, Store,
};
use acpi_tables::{Aml, AmlSink};
use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The guest's page file (what `vmtime relay --guest-page` writes): a power of two ≥ 4096 bytes.
    #[arg(long)]
    page: PathBuf,
    /// Where to write the SSDT (default: the page path + ".ssdt.aml").
    #[arg(long)]
    ssdt: Option<PathBuf>,
    /// The ivshmem device's PCI slot on the root bus (1–31; the SSDT names this slot).
    #[arg(long, default_value = "4")]
    slot: crate::values::PciSlot,
    /// Print the QEMU arguments as a JSON array (default: one shell-quoted argument pair per line).
    #[arg(long)]
    json: bool,
    /// A guest that may be migrated or saved: ivshmem `master=on` (without it QEMU blocks both),
    /// and no `readonly=on` (an incoming migration or `loadvm` must write the page's RAM; the
    /// relay then rewrites it, docs/GUESTS.md).
    #[arg(long)]
    migratable: bool,
    /// A doorbell, so that the guest's vmclock device notifies: QEMU serves a UART's chardev on
    /// this Unix socket, `vmtime relay --doorbell` (the same path) writes one byte to it after
    /// every guest page, and the SSDT's Generic Event Device (`ACPI0013`) turns the UART's
    /// receive interrupt into `Notify (VCLK, 0x80)`. The guest must leave that UART to ACPI: its
    /// 8250 driver must not claim it (e.g. `8250.nr_uarts=N` with N the UARTs before it).
    /// See docs/GUESTS.md.
    #[arg(long, value_name = "SOCKET")]
    notify: Option<PathBuf>,
    /// The doorbell UART's I/O base (a free 16550 slot: 0x2f8 is COM2, 0x3e8 COM3, 0x2e8 COM4).
    #[arg(long, default_value = "0x2f8", requires = "notify")]
    notify_io: crate::values::UartIoBase,
    /// The doorbell UART's ISA interrupt (3–15 except 8 and 9; COM2 uses 3).
    #[arg(long, default_value = "3", requires = "notify")]
    notify_irq: crate::values::IsaIrq,
}

/// PCI vendor and device ID of QEMU's ivshmem (Red Hat 0x1af4, 0x1110), as config dword 0.
pub const IVSHMEM_ID: u32 = 0x1110_1af4;

/// What the SSDT describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SsdtSpec {
    /// Migratable (`master=on`, writable) rather than read-only.
    pub migratable: bool,
    /// PCI slot on the root bus (function 0).
    pub slot: u8,
    /// Bytes of the region the vmclock device covers (the page file's size).
    pub len: u64,
    /// A doorbell UART whose receive interrupt notifies the vmclock device.
    pub doorbell: Option<Doorbell>,
}

/// The doorbell: a 16550 UART that QEMU feeds from a socket, whose received-data interrupt the
/// SSDT's Generic Event Device turns into `Notify (VCLK, 0x80)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Doorbell {
    /// The UART's I/O base (its receive buffer register; the interrupt enable register is +1).
    pub io: u16,
    /// Its ISA interrupt (edge-triggered, active high).
    pub irq: u8,
}

/// An ISA IRQ descriptor (ACPI 6.5 §6.4.2.1): one interrupt, edge-triggered, active high,
/// exclusive (acpi_tables has only the extended descriptor).
struct IsaIrq(u8);

impl Aml for IsaIrq {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(0x23); // small item, IRQ, 3 bytes follow
        sink.word(1u16 << self.0); // the mask
        sink.byte(0x01); // edge-triggered, active high, exclusive
    }
}

/// The four-character ACPI name of the ivshmem device's node: "VT" + slot in hex.
fn node_name(slot: u8) -> String {
    format!("VT{slot:02X}")
}

/// A QWordMemory descriptor (consumer, fixed, cacheable, read-only) of `len` bytes at 0: the
/// `_CRS` method fills in the address. acpi_tables' `AddressSpace` marks itself a producer (it
/// is made for host bridges); a device consumes its memory.
struct QWordMemory {
    len: u64,
}

/// Byte offsets of _MIN and _MAX inside the descriptor (ACPI 6.5 §6.4.3.5.1).
const QWORD_MIN: u8 = 14;
const QWORD_MAX: u8 = 22;

impl Aml for QWordMemory {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(0x8a); // QWord Address Space Descriptor
        sink.word(43); // length of what follows
        sink.byte(0); // memory
        sink.byte(0b1101); // MaxFixed, MinFixed, PosDecode, Consumer
        sink.byte(0b0010); // Cacheable, read-only (the guest only reads the page)
        sink.qword(0); // granularity
        sink.qword(0); // _MIN (filled in)
        sink.qword(self.len - 1); // _MAX (filled in)
        sink.qword(0); // translation
        sink.qword(self.len); // _LEN
    }
}

/// The SSDT (a whole table, header and checksum included) for `spec`.
pub fn ssdt(spec: SsdtSpec) -> Result<Vec<u8>> {
    if !(1..=31).contains(&spec.slot) {
        bail!("PCI slot {} is out of range: use 1–31 (a slot on the root bus)", spec.slot);
    }
    if spec.len < 4096 || !spec.len.is_power_of_two() {
        bail!("a region of {} bytes cannot be an ivshmem BAR: it must be a power of two ≥ 4096", spec.len);
    }
    if let Some(d) = spec.doorbell {
        if crate::values::UartIoBase::new(d.io).is_none() {
            bail!("{:#x} is not a doorbell UART's I/O base: {}", d.io, crate::values::UartIoBase::allowed());
        }
        if crate::values::IsaIrq::new(d.irq).is_none() {
            bail!("ISA interrupt {} cannot be the doorbell's: {}", d.irq, crate::values::IsaIrq::allowed());
        }
    }
    let mut body = Vec::new();
    // QEMU's DSDT already has a node for a device on the root bus ("S" + devfn in hex, with its
    // _ADR) when its machine describes that slot; a second node with the same _ADR would not be
    // the PCI device's companion. So the device goes inside QEMU's node when it exists, else
    // inside a node of our own (decided by the guest when it loads the table).
    let qemu_node = format!("S{:02X}_", spec.slot << 3);
    let qemu_path = AmlPath::new(&format!("\\_SB_.PCI0.{qemu_node}"));
    let exists = CondRefOf(&qemu_path);
    let inside_qemu = Raw(contents(spec, false));
    let in_scope = Scope::new(AmlPath::new(&format!("\\_SB_.PCI0.{qemu_node}")), vec![&inside_qemu]);
    let ours = Raw(contents(spec, true));
    let own_node = Device::new(AmlPath::new(&node_name(spec.slot)), vec![&ours]);
    let pci0 = Scope::new("\\_SB_.PCI0".into(), vec![&own_node]);
    let if_qemu = If::new(&exists, vec![&in_scope]);
    let otherwise = Else::new(vec![&pci0]);
    if_qemu.to_aml_bytes(&mut body);
    otherwise.to_aml_bytes(&mut body);
    Ok(table(&body))
}

/// AML bytes made elsewhere.
struct Raw(Vec<u8>);

impl Aml for Raw {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

/// `CondRefOf (name)`: whether a name exists (acpi_tables has no such operator).
struct CondRefOf<'a>(&'a AmlPath);

impl Aml for CondRefOf<'_> {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(0x5b);
        sink.byte(0x12);
        self.0.to_aml_bytes(sink);
        sink.byte(0); // no target
    }
}

/// What goes inside the ivshmem device's node: its config space and the vmclock device
/// (and its `_ADR` when the node is ours).
fn contents(spec: SsdtSpec, with_adr: bool) -> Vec<u8> {
    // Config space of the ivshmem device: ID, command register, BAR2 (64-bit, low then high).
    // The names start with "VT" so as not to meet QEMU's own inside its node.
    let pcfg = OpRegion::new("VTPC".into(), OpRegionSpace::PCIConfig, &0u8, &0x40u8);
    let fields_d = aml::Field::new(
        "VTPC".into(),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::Preserve,
        vec![
            FieldEntry::Named(*b"VTID", 32),
            FieldEntry::Reserved(0x18 * 8 - 32),
            FieldEntry::Named(*b"VTB2", 32),
            FieldEntry::Named(*b"VTB3", 32),
        ],
    );
    let fields_w = aml::Field::new(
        "VTPC".into(),
        FieldAccessType::Word,
        FieldLockRule::NoLock,
        FieldUpdateRule::Preserve,
        vec![FieldEntry::Reserved(32), FieldEntry::Named(*b"VTCM", 16)],
    );
    let adr = u32::from(spec.slot) << 16;
    let adr_name = Name::new("_ADR".into(), &adr);
    let (pvid, bar2, bar3, pcmd) =
        (AmlPath::new("VTID"), AmlPath::new("VTB2"), AmlPath::new("VTB3"), AmlPath::new("VTCM"));
    let (rbuf_p, bmin, bmax) = (AmlPath::new("RBUF"), AmlPath::new("BMIN"), AmlPath::new("BMAX"));
    // The vmclock device, present only while the slot holds an ivshmem device.
    let present = Equal::new(&pvid, &IVSHMEM_ID);
    let ret_on = Return::new(&0x0fu8);
    let if_present = If::new(&present, vec![&ret_on]);
    let ret_off = Return::new(&aml::ZERO);
    let sta = Method::new("_STA".into(), 0, false, vec![&if_present, &ret_off]);

    let rbuf_tpl = QWordMemory { len: spec.len };
    let rtemplate = ResourceTemplate::new(vec![&rbuf_tpl]);
    let rbuf = Name::new("RBUF".into(), &rtemplate);
    let min_f = CreateQWordField::new(&bmin, &rbuf_p, &QWORD_MIN);
    let max_f = CreateQWordField::new(&bmax, &rbuf_p, &QWORD_MAX);
    // BMIN = (BAR3 << 32) | (BAR2 & ~0xF): the BAR's address, its flag bits masked.
    let l0 = Local(0);
    let hi = ShiftLeft::new(&l0, &bar3, &32u8);
    let lo_mask = 0xffff_fff0u32;
    let l1 = Local(1);
    let lo = And::new(&l1, &bar2, &lo_mask);
    let both = Or::new(&bmin, &l0, &l1);
    let last = spec.len - 1;
    let max = Add::new(&bmax, &bmin, &last);
    // Memory decoding on (bit 1 of the command register): the guest kernel binds no driver to
    // the ivshmem device, and the vmclock driver reads the BAR.
    let cmd = Or::new(&pcmd, &pcmd, &2u8);
    let ret_buf = Return::new(&rbuf_p);
    let crs = Method::new("_CRS".into(), 0, true, vec![&rbuf, &min_f, &max_f, &hi, &lo, &both, &max, &cmd, &ret_buf]);

    let hid = Name::new("_HID".into(), &"AMZNC10C");
    let cid = Name::new("_CID".into(), &"VMCLOCK");
    let ddn = Name::new("_DDN".into(), &"VMCLOCK on a vmtime page");
    let uid = Name::new("_UID".into(), &aml::ZERO);
    let vclk = Device::new("VCLK".into(), vec![&hid, &cid, &ddn, &uid, &sta, &crs]);

    let mut out = Vec::new();
    if with_adr {
        adr_name.to_aml_bytes(&mut out);
    }
    for part in [&pcfg as &dyn Aml, &fields_d, &fields_w, &vclk] {
        part.to_aml_bytes(&mut out);
    }
    if let Some(d) = spec.doorbell {
        doorbell(d).to_aml_bytes(&mut out);
    }
    out
}

/// The doorbell's Generic Event Device (`ACPI0013`, Linux's drivers/acpi/evged.c), beside VCLK:
///
/// ```text
/// Device (VDBL) {
///     Name (_HID, "ACPI0013")
///     Name (_UID, Zero)
///     Name (_CRS, ResourceTemplate () { IRQ (Edge, ActiveHigh, Exclusive) {irq} })
///     OperationRegion (VDBR, SystemIO, io, 8)
///     Field (VDBR, ByteAcc, NoLock, Preserve) { VRBR, 8, VIER, 8 }
///     Method (_INI) { VIER = One }            // the UART's received-data interrupt on
///     Method (_EVT, 1, Serialized) {
///         Local0 = VRBR                       // take the byte: the interrupt goes down
///         VIER = One                          // (again, should anything have cleared it)
///         Notify (VCLK, 0x80)                 // VCLK: found in the parent scope
///     }
/// }
/// ```
///
/// QEMU's 16550 raises its interrupt without MCR.OUT2, and without a FIFO it takes the next
/// byte from the socket only once this one is read: one interrupt, one Notify, per byte.
fn doorbell(d: Doorbell) -> Raw {
    let hid = Name::new("_HID".into(), &"ACPI0013");
    let uid = Name::new("_UID".into(), &aml::ZERO);
    let irq = IsaIrq(d.irq);
    let crs_tpl = ResourceTemplate::new(vec![&irq]);
    let crs = Name::new("_CRS".into(), &crs_tpl);
    let io = d.io;
    let region = OpRegion::new("VDBR".into(), OpRegionSpace::SystemIO, &io, &8u8);
    let fields = aml::Field::new(
        "VDBR".into(),
        FieldAccessType::Byte,
        FieldLockRule::NoLock,
        FieldUpdateRule::Preserve,
        vec![FieldEntry::Named(*b"VRBR", 8), FieldEntry::Named(*b"VIER", 8)],
    );
    let (rbr, ier, vclk) = (AmlPath::new("VRBR"), AmlPath::new("VIER"), AmlPath::new("VCLK"));
    let arm = Store::new(&ier, &aml::ONE);
    let ini = Method::new("_INI".into(), 0, false, vec![&arm]);
    let l0 = Local(0);
    let take = Store::new(&l0, &rbr);
    let notify = Notify::new(&vclk, &0x80u8);
    let evt = Method::new("_EVT".into(), 1, true, vec![&take, &arm, &notify]);
    let dev = Device::new("VDBL".into(), vec![&hid, &uid, &crs, &region, &fields, &ini, &evt]);
    let mut out = Vec::new();
    dev.to_aml_bytes(&mut out);
    Raw(out)
}

/// An SSDT around `body`: revision 2 (64-bit AML integers: the BAR may lie above 4 GiB).
fn table(body: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(36 + body.len());
    t.extend_from_slice(b"SSDT");
    t.extend_from_slice(&((36 + body.len()) as u32).to_le_bytes());
    t.push(2); // revision
    t.push(0); // checksum, below
    t.extend_from_slice(b"VMTIME"); // OEM ID
    t.extend_from_slice(b"VMCLOCK "); // OEM table ID
    t.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
    t.extend_from_slice(acpi_tables::CREATOR_ID.as_slice());
    t.extend_from_slice(acpi_tables::CREATOR_REVISION.as_slice());
    t.extend_from_slice(body);
    let sum = t.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    t[9] = sum.wrapping_neg();
    t
}

/// QEMU's arguments for a page file of `len` bytes at `page`, and the SSDT at `ssdt`.
pub fn qemu_args(page: &Path, ssdt: &Path, spec: SsdtSpec) -> Vec<String> {
    vec![
        "-object".into(),
        format!(
            "memory-backend-file,id=vmtime-page,mem-path={},size={},share=on{}",
            qemu_escape(page),
            spec.len,
            if spec.migratable { "" } else { ",readonly=on" }
        ),
        "-device".into(),
        format!(
            "ivshmem-plain,id=vmtime-ivshmem,memdev=vmtime-page,{}addr={:#x}",
            if spec.migratable { "master=on," } else { "" },
            spec.slot
        ),
        "-acpitable".into(),
        format!("file={}", qemu_escape(ssdt)),
    ]
}

/// QEMU's arguments for the doorbell: a chardev served on `socket` (QEMU listens; the relay
/// connects; `wait=off`: QEMU starts without it) feeding an ISA 16550 at the doorbell's port
/// and interrupt.
pub fn doorbell_args(socket: &Path, d: Doorbell) -> Vec<String> {
    vec![
        "-chardev".into(),
        format!("socket,id=vmtime-doorbell,path={},server=on,wait=off", qemu_escape(socket)),
        "-device".into(),
        format!("isa-serial,chardev=vmtime-doorbell,iobase={:#x},irq={}", d.io, d.irq),
    ]
}

/// A path inside a QEMU option value: commas are doubled.
fn qemu_escape(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

fn shell_quote(s: &str) -> String {
    if s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_=,./:+@".contains(&b)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The largest file `vmtime qemu` replaces as an earlier SSDT (its own are a few hundred bytes).
const MAX_SSDT: u64 = 64 * 1024;

/// Whether `b` is an ACPI SSDT: its signature, and a length field that is its length.
pub fn is_ssdt(b: &[u8]) -> bool {
    b.len() >= 36 && &b[..4] == b"SSDT" && u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as usize == b.len()
}

pub fn run(a: Args) -> Result<ExitCode> {
    let meta = std::fs::metadata(&a.page).with_context(|| {
        format!("page file {}: cannot read it; start `vmtime relay --guest-page` first", a.page.display())
    })?;
    let doorbell = a.notify.as_ref().map(|_| Doorbell { io: a.notify_io.get(), irq: a.notify_irq.get() });
    let spec = SsdtSpec { slot: a.slot.get(), len: meta.len(), migratable: a.migratable, doorbell };
    if !meta.is_file() {
        bail!("page file {}: not a regular file", a.page.display());
    }
    let table = ssdt(spec).with_context(|| format!("page file {}", a.page.display()))?;
    let out = a.ssdt.unwrap_or_else(|| {
        let mut s = a.page.as_os_str().to_owned();
        s.push(".ssdt.aml");
        PathBuf::from(s)
    });
    // Never through a link, into a device or a fifo, over the page, or over a file that is not
    // an SSDT: a new file (O_EXCL temporary, fsync, rename), as the daemons write theirs.
    let ssdt_only = vmtime_sys::files::Recognise { max: MAX_SSDT, is_one: &is_ssdt };
    vmtime_sys::files::replace_output(
        &out,
        &table,
        0o644,
        "an ACPI SSDT",
        Some(ssdt_only),
        &[("the guest page given with --page", &a.page)],
    )
    .with_context(|| format!("cannot write the SSDT (--ssdt {})", out.display()))?;
    let page = std::path::absolute(&a.page)?;
    let out = std::path::absolute(&out)?;
    let mut args = qemu_args(&page, &out, spec);
    if let (Some(sock), Some(d)) = (&a.notify, doorbell) {
        args.extend(doorbell_args(&std::path::absolute(sock)?, d));
    }
    if a.json {
        println!("{}", serde_json::to_string(&args)?);
    } else {
        for pair in args.chunks(2) {
            println!("{} {} \\", pair[0], shell_quote(&pair[1]));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_a_valid_header_and_checksum() {
        let t = ssdt(SsdtSpec { doorbell: None, migratable: false, slot: 4, len: 4096 }).unwrap();
        assert_eq!(&t[0..4], b"SSDT");
        assert_eq!(u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize, t.len());
        assert_eq!(t[8], 2, "revision 2: 64-bit integers");
        assert_eq!(t.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0, "checksum");
        let find = |needle: &[u8]| t.windows(needle.len()).any(|w| w == needle);
        assert!(find(b"AMZNC10C\0") && find(b"VMCLOCK\0"));
        assert!(find(b"VT04"), "the ivshmem node is named after its slot");
        // _ADR is slot << 16.
        assert!(find(&[0x08, b'_', b'A', b'D', b'R', 0x0c, 0x00, 0x00, 0x04, 0x00]));
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!(ssdt(SsdtSpec { doorbell: None, migratable: false, slot: 0, len: 4096 }).is_err());
        assert!(ssdt(SsdtSpec { doorbell: None, migratable: false, slot: 32, len: 4096 }).is_err());
        assert!(ssdt(SsdtSpec { doorbell: None, migratable: false, slot: 4, len: 4095 }).is_err());
        assert!(ssdt(SsdtSpec { doorbell: None, migratable: false, slot: 4, len: 6144 }).is_err());
        assert!(ssdt(SsdtSpec { doorbell: None, migratable: false, slot: 4, len: 8192 }).is_ok());
    }

    #[test]
    fn qemu_args_escape_commas() {
        let a = qemu_args(
            Path::new("/a,b/page"),
            Path::new("/t.aml"),
            SsdtSpec { doorbell: None, migratable: false, slot: 5, len: 4096 },
        );
        assert!(a[1].contains("mem-path=/a,,b/page,size=4096,share=on,readonly=on"), "{}", a[1]);
        assert!(a[3].ends_with("memdev=vmtime-page,addr=0x5"), "{}", a[3]);
        // Migratable: master=on, writable (QEMU blocks migration without master=on, and an
        // incoming migration cannot load into a read-only mapping).
        let m = qemu_args(
            Path::new("/p"),
            Path::new("/t.aml"),
            SsdtSpec { doorbell: None, migratable: true, slot: 5, len: 4096 },
        );
        assert!(m[1].ends_with("size=4096,share=on"), "{}", m[1]);
        assert!(m[3].ends_with("memdev=vmtime-page,master=on,addr=0x5"), "{}", m[3]);
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}

#[cfg(test)]
mod doorbell_tests {
    use super::*;

    fn find(t: &[u8], needle: &[u8]) -> Option<usize> {
        t.windows(needle.len()).position(|w| w == needle)
    }

    #[test]
    fn the_doorbell_is_a_generic_event_device_on_the_uart() {
        let spec = SsdtSpec { doorbell: Some(Doorbell { io: 0x3e8, irq: 5 }), migratable: false, slot: 4, len: 4096 };
        let t = ssdt(spec).unwrap();
        assert_eq!(t.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0, "checksum");
        // Twice: once inside QEMU's node for the slot, once inside the table's own node.
        let hid = b"\x08_HID\x0dACPI0013\0";
        let first = find(&t, hid).expect("a GED");
        assert!(find(&t[first + 1..], hid).is_some(), "one in each branch");
        // IRQ descriptor: IRQ 5 (mask 0x0020), edge, active high, exclusive.
        assert!(find(&t, &[0x23, 0x20, 0x00, 0x01]).is_some());
        // OperationRegion (VDBR, SystemIO, 0x03E8, 8).
        assert!(find(&t, &[0x5b, 0x80, b'V', b'D', b'B', b'R', 0x01, 0x0b, 0xe8, 0x03, 0x0a, 0x08]).is_some());
        // Notify (VCLK, 0x80).
        assert!(find(&t, &[0x86, b'V', b'C', b'L', b'K', 0x0a, 0x80]).is_some());
        // _EVT takes one argument and is serialized; _INI arms the interrupt (VIER = One).
        assert!(find(&t, b"_EVT\x09").is_some());
        assert!(find(&t, &[0x70, 0x01, b'V', b'I', b'E', b'R']).is_some());
        // The same table without the doorbell has none of it.
        let plain = ssdt(SsdtSpec { doorbell: None, ..spec }).unwrap();
        assert!(find(&plain, b"ACPI0013").is_none() && find(&plain, b"VDBR").is_none());
    }

    #[test]
    fn doorbell_ports_and_interrupts_are_checked() {
        use crate::values::{IsaIrq, UartIoBase};
        let io = |s: &str| s.parse::<UartIoBase>().map(UartIoBase::get);
        assert_eq!(io("0x2f8"), Ok(0x2f8));
        assert_eq!(io("1000"), Ok(1000));
        assert!(io("0x2f9").is_err(), "not 8-aligned");
        assert!(io("0x10000").is_err());
        assert!(io("0x20").is_err(), "the PIC's ports");
        assert_eq!("3".parse::<IsaIrq>().map(IsaIrq::get), Ok(3));
        for bad in ["0", "2", "8", "9", "16", "x", "-3"] {
            assert!(bad.parse::<IsaIrq>().is_err(), "{bad}");
        }
        let bad = SsdtSpec { doorbell: Some(Doorbell { io: 0x2f8, irq: 9 }), migratable: false, slot: 4, len: 4096 };
        assert!(ssdt(bad).is_err());
    }

    #[test]
    fn doorbell_args_serve_a_socket_into_an_isa_uart() {
        let a = doorbell_args(Path::new("/r,un/db.sock"), Doorbell { io: 0x2f8, irq: 3 });
        assert_eq!(a[0], "-chardev");
        assert_eq!(a[1], "socket,id=vmtime-doorbell,path=/r,,un/db.sock,server=on,wait=off");
        assert_eq!(a[2], "-device");
        assert_eq!(a[3], "isa-serial,chardev=vmtime-doorbell,iobase=0x2f8,irq=3");
    }
}
