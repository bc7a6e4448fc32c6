//! `vmtime qemu` end to end: the SSDT it writes is decoded by ACPICA's own disassembler
//! (Debian's acpica-tools `iasl -d`, which scripts/test installs), and the QEMU arguments name
//! the page file, the ivshmem slot and the table.
use std::process::Command;

fn vmtime(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vmtime")).args(args).output().expect("run vmtime")
}

/// `iasl -d FILE` → the .dsl text; None when iasl is not installed (allowed only outside
/// scripts/test, which sets VMTIME_REQUIRE_IASL=1).
fn disassemble(aml: &std::path::Path) -> Option<String> {
    match Command::new("iasl").arg("-d").arg(aml).output() {
        Ok(out) => {
            assert!(out.status.success(), "iasl -d failed: {}", String::from_utf8_lossy(&out.stderr));
            Some(std::fs::read_to_string(aml.with_extension("dsl")).expect("iasl wrote the .dsl"))
        }
        Err(e) => {
            assert!(std::env::var_os("VMTIME_REQUIRE_IASL").is_none(), "iasl is required: {e}");
            eprintln!("iasl not installed ({e}): the SSDT is checked without ACPICA's disassembler");
            None
        }
    }
}

#[test]
fn ssdt_decodes_with_acpica_and_describes_the_ivshmem_bar() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("guest.page");
    std::fs::write(&page, vec![0u8; 8192]).unwrap();
    let aml = dir.path().join("vmclock.aml");
    let out =
        vmtime(&["qemu", "--page", page.to_str().unwrap(), "--ssdt", aml.to_str().unwrap(), "--slot", "6", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let args: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(args.len(), 6, "{args:?}");
    assert!(args[1].contains(&format!("mem-path={},size=8192,share=on", page.display())), "{}", args[1]);
    assert_eq!(args[3], "ivshmem-plain,id=vmtime-ivshmem,memdev=vmtime-page,addr=0x6");
    assert_eq!(args[5], format!("file={}", aml.display()));
    let table = std::fs::read(&aml).unwrap();
    assert_eq!(&table[..4], b"SSDT");
    let Some(dsl) = disassemble(&aml) else { return };
    let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let dsl = squash(&dsl);
    for want in [
        "DefinitionBlock (\"\", \"SSDT\", 2, \"VMTIME\", \"VMCLOCK \", 0x00000001)",
        // Inside QEMU's node for slot 6 (devfn 0x30) when it has one, else in a node of ours.
        "If (CondRefOf (\\_SB.PCI0.S30)) { Scope (\\_SB.PCI0.S30) { OperationRegion (VTPC, PCI_Config, Zero, 0x40)",
        "Else { Scope (\\_SB.PCI0) { Device (VT06) { Name (_ADR, 0x00060000)",
        "VTID, 32, Offset (0x18), VTB2, 32, VTB3, 32",
        "Offset (0x04), VTCM, 16",
        "Device (VCLK) { Name (_HID, \"AMZNC10C\")",
        "Name (_CID, \"VMCLOCK\")",
        "If ((VTID == 0x11101AF4)) { Return (0x0F) } Return (Zero)",
        "QWordMemory (ResourceConsumer, PosDecode, MinFixed, MaxFixed, Cacheable, ReadOnly, 0x0000000000000000, \
         // Granularity 0x0000000000000000, // Range Minimum 0x0000000000001FFF, // Range Maximum \
         0x0000000000000000, // Translation Offset 0x0000000000002000, // Length",
        "Local0 = (VTB3 << 0x20) Local1 = (VTB2 & 0xFFFFFFF0) BMIN = (Local0 | Local1) BMAX = (BMIN + 0x1FFF) \
         VTCM |= 0x02 Return (RBUF)",
    ] {
        assert!(dsl.contains(&squash(want)), "missing {want:?} in:\n{dsl}");
    }
    // The two branches declare the same device once each.
    assert_eq!(dsl.matches("Device (VCLK)").count(), 2);
}

#[test]
fn a_page_ivshmem_cannot_share_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("odd.page");
    std::fs::write(&page, vec![0u8; 5000]).unwrap();
    let out = vmtime(&["qemu", "--page", page.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("odd.page") && err.contains("power of two"), "{err}");
    let out = vmtime(&["qemu", "--page", dir.path().join("missing").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("vmtime relay"), "{err}");
}

/// `--notify`: a Generic Event Device on the doorbell UART's interrupt, whose event method takes
/// the UART's byte and notifies VCLK (0x80); and QEMU's arguments serve the UART's chardev on
/// the socket the relay's --doorbell connects to.
#[test]
fn notify_adds_a_generic_event_device_on_the_doorbell_uart() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("guest.page");
    std::fs::write(&page, vec![0u8; 4096]).unwrap();
    let aml = dir.path().join("vmclock.aml");
    let sock = dir.path().join("doorbell.sock");
    let (p, a, s) = (page.to_str().unwrap(), aml.to_str().unwrap(), sock.to_str().unwrap());
    let out = vmtime(&[
        "qemu",
        "--page",
        p,
        "--ssdt",
        a,
        "--notify",
        s,
        "--notify-io",
        "0x3e8",
        "--notify-irq",
        "5",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let args: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(args.len(), 10, "{args:?}");
    assert_eq!(args[7], format!("socket,id=vmtime-doorbell,path={s},server=on,wait=off"));
    assert_eq!(args[9], "isa-serial,chardev=vmtime-doorbell,iobase=0x3e8,irq=5");
    let Some(dsl) = disassemble(&aml) else { return };
    let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let dsl = squash(&dsl);
    for want in [
        "Device (VDBL) { Name (_HID, \"ACPI0013\" /* Generic Event Device */)",
        "IRQ (Edge, ActiveHigh, Exclusive, ) {5}",
        "OperationRegion (VDBR, SystemIO, 0x03E8, 0x08) Field (VDBR, ByteAcc, NoLock, Preserve) { VRBR, 8, VIER, 8 }",
        "Method (_INI, 0, NotSerialized) // _INI: Initialize { VIER = One }",
        "Method (_EVT, 1, Serialized) // _EVT: Event { Local0 = VRBR",
        "VIER = One Notify (VCLK, 0x80)",
    ] {
        assert!(dsl.contains(&squash(want)), "missing {want:?} in:\n{dsl}");
    }
    assert_eq!(dsl.matches("Device (VDBL)").count(), 2, "beside VCLK in both branches");
    // Without --notify: no doorbell.
    let out = vmtime(&["qemu", "--page", p, "--ssdt", a, "--json"]);
    assert!(out.status.success());
    let plain = disassemble(&aml).unwrap();
    assert!(!plain.contains("ACPI0013") && !plain.contains("VDBR"));
    // A port or an interrupt a UART cannot use is refused in one line.
    for bad in [["--notify-irq", "9"], ["--notify-io", "0x2f9"]] {
        let out = vmtime(&["qemu", "--page", p, "--ssdt", a, "--notify", s, bad[0], bad[1]]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(bad[1]), "{err}");
    }
}
