//! packaging/libvirt/qemu-hook, called with the arguments and stdin libvirt gives it (an incoming
//! migration on the destination: migrate, prepare, start, started; then the source's release),
//! against a real `vmtime relay` and a KVM debugfs fixture tree in a temp dir.
mod common;
use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct Env {
    guests: PathBuf,
    pids: PathBuf,
    debugfs: PathBuf,
}

const XML: &str = "<domain type='kvm'><name>vm1</name><devices/></domain>\n";

/// Runs the hook as libvirt does: GUEST OP SUB EXTRA, the domain XML on stdin.
fn hook(e: &Env, args: &[&str]) -> std::process::Output {
    let mut c = Command::new(repo().join("packaging/libvirt/qemu-hook"))
        .args(args)
        .env("VMTIME", env!("CARGO_BIN_EXE_vmtime"))
        .env("VMTIME_GUESTS_DIR", &e.guests)
        .env("LIBVIRT_QEMU_RUN_DIR", &e.pids)
        .env("VMTIME_KVM_DEBUGFS", &e.debugfs)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the hook");
    c.stdin.take().unwrap().write_all(XML.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    // migrate and restore are XML filters: empty output leaves the XML unchanged.
    assert!(out.stdout.is_empty(), "{args:?} printed {:?}", String::from_utf8_lossy(&out.stdout));
    out
}

fn set_offset(e: &Env, pid: u32, offset: i64) {
    for cpu in 0..2 {
        let d = e.debugfs.join(format!("{pid}-17/vcpu{cpu}"));
        std::fs::create_dir_all(&d).unwrap();
        // Written whole and renamed: the waiter never reads half a number.
        let tmp = d.join("tsc-offset.tmp");
        std::fs::write(&tmp, format!("{offset}\n")).unwrap();
        std::fs::rename(&tmp, d.join("tsc-offset")).unwrap();
    }
}

#[test]
fn an_incoming_migration_through_libvirts_hook_gives_the_relay_kvms_new_map() {
    let dir = tempfile::tempdir().unwrap();
    let e = Env { guests: dir.path().join("guests"), pids: dir.path().join("qemu"), debugfs: dir.path().join("kvm") };
    for d in [&e.guests, &e.pids, &e.debugfs] {
        std::fs::create_dir_all(d).unwrap();
    }
    let host = dir.path().join("host.page");
    let page = e.guests.join("vm1.page");
    let (_h, _) = start_host(&host);
    wait_calibrated(&host);
    let (_r, rx) = spawn_answering(
        &["relay", "--host-page", host.to_str().unwrap(), "--guest-page", page.to_str().unwrap(), "--tsc-offset", "-1"],
        Path::new(&socket(&page)),
    );
    wait_calibrated(&page);
    let sock = format!("{}.sock", page.display());
    // A guest without a vmtime page: nothing happens.
    hook(&e, &["other", "migrate", "begin", "-"]);
    assert!(!e.guests.join("other.incoming").exists());
    // The destination: libvirt's calls in order. QEMU (pid 4242) starts with its own offset.
    let pid = 4242;
    std::fs::write(e.pids.join("vm1.pid"), format!("{pid}")).unwrap();
    set_offset(&e, pid, 1_000);
    hook(&e, &["vm1", "migrate", "begin", "-"]);
    hook(&e, &["vm1", "prepare", "begin", "-"]);
    hook(&e, &["vm1", "start", "begin", "-"]);
    hook(&e, &["vm1", "started", "begin", "-"]);
    // The state arrives: the page overwritten by the source's, then KVM's new offset.
    let source = dir.path().join("source.page");
    let mut args = gen_ahead_args(dir.path(), &source, 0);
    args.extend(["--disruption-marker", "500", "--vm-generation", "3"].map(String::from));
    vmtime_ok(&args);
    let mut bytes = std::fs::read(&source).unwrap();
    bytes[12..16].copy_from_slice(&88u32.to_le_bytes());
    {
        use std::io::{Seek, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&page).unwrap();
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        f.write_all(&bytes).unwrap();
    }
    wait_line(&rx, "written by someone else", LINE_WITHIN);
    set_offset(&e, pid, -987_654_321);
    // The waiter tells the relay: time again under KVM's new map, the marker one past the
    // source's, no second change.
    let end = std::time::Instant::now() + LINE_WITHIN;
    let st = loop {
        let st = json(&["status", "--socket", &sock, "--json"]);
        if st["map_pending"] == false {
            break st;
        }
        let log = std::fs::read_to_string(e.guests.join("vm1.hook.log")).unwrap_or_default();
        assert!(std::time::Instant::now() < end, "the relay was never told the map: {st}; hook log: {log}");
        std::thread::sleep(std::time::Duration::from_millis(10)); // polls the relay, bounded above
    };
    assert_eq!(st["state"]["map"]["offset"].as_u64(), Some((-987_654_321i64) as u64), "{st}");
    assert_eq!(st["state"]["disruption_marker"].as_u64(), Some(501), "{st}");
    assert_eq!(st["state"]["vm_generation"].as_u64(), Some(3), "{st}");
    let log = std::fs::read_to_string(e.guests.join("vm1.hook.log")).unwrap();
    assert!(log.contains("told") && log.contains("migrated -987654321"), "{log}");
    assert!(!e.guests.join("vm1.incoming").exists(), "the flag is consumed at started");
    // A plain start later (no migrate/restore before it) tells nothing; release forgets.
    hook(&e, &["vm1", "started", "begin", "-"]);
    hook(&e, &["vm1", "restore", "begin", "-"]);
    assert_eq!(std::fs::read_to_string(e.guests.join("vm1.incoming")).unwrap().trim(), "restored");
    hook(&e, &["vm1", "release", "end", "migrated"]);
    assert!(!e.guests.join("vm1.incoming").exists());
    // Operations it does not act on pass quietly, with what libvirt gives as EXTRA.
    for op in
        [["stopped", "end", "-"], ["reconnect", "begin", "-"], ["attach", "begin", "-"], ["release", "end", "shutdown"]]
    {
        hook(&e, &["vm1", op[0], op[1], op[2]]);
    }
}

#[test]
fn kvm_tsc_prints_the_relays_flags_and_refuses_disagreeing_vcpus() {
    let dir = tempfile::tempdir().unwrap();
    let vm = dir.path().join("77-9");
    for (cpu, off) in [(0, "-5"), (1, "-5")] {
        std::fs::create_dir_all(vm.join(format!("vcpu{cpu}"))).unwrap();
        std::fs::write(vm.join(format!("vcpu{cpu}/tsc-offset")), format!("{off}\n")).unwrap();
        std::fs::write(vm.join(format!("vcpu{cpu}/tsc-scaling-ratio")), format!("{}\n", 3u64 << 47)).unwrap();
        std::fs::write(vm.join(format!("vcpu{cpu}/tsc-scaling-ratio-frac-bits")), "48\n").unwrap();
    }
    let root = dir.path().to_str().unwrap();
    let v = json(&["kvm-tsc", "--pid", "77", "--debugfs", root, "--json"]);
    assert_eq!(v["relay_args"], "--tsc-offset -5 --tsc-ratio 1.5 --tsc-frac-bits 48", "{v}");
    assert_eq!(v["vcpus"].as_array().unwrap().len(), 2);
    std::fs::write(vm.join("vcpu1/tsc-offset"), "-6\n").unwrap();
    let out = vmtime(&["kvm-tsc", "--pid", "77", "--debugfs", root]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("one page cannot describe both"));
    let out = vmtime(&["kvm-tsc", "--pid", "78", "--debugfs", root]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no KVM VM of process 78"));
}
