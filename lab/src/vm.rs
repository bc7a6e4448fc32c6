//! The VM: one QEMU process we start (and end, by its pid), its QMP monitor, the guest's
//! command shell on its second serial port, and QEMU's gdbstub for writing guest-physical memory.
//!
//! QEMU connects to sockets the lab listens on (QMP, the shell), so nothing waits for a socket
//! file to appear; every wait has a deadline and ends early if QEMU exits.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where QEMU and the guest's files are.
pub struct VmConfig {
    pub qemu: PathBuf,
    /// QEMU's library path, module directory and firmware directories (a package tree).
    pub lib_path: String,
    pub module_dir: PathBuf,
    pub firmware: Vec<PathBuf>,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub work: PathBuf,
    /// The guest's RTC at power-on (a wrong clock for sync to correct).
    pub rtc_base: String,
    /// ivshmem backing files (read-write, master; their size is the file's) and their PCI slots.
    pub shared: Vec<(PathBuf, u8)>,
    /// QEMU's own vmclock device (`-device vmclock`).
    pub qemu_vmclock: bool,
    /// More arguments (what `vmtime qemu` prints).
    pub extra: Vec<String>,
    /// This machine's TSC frequency, kHz: the guest's too under TCG. Given to the guest kernel
    /// (`tsc_early_khz`), whose own calibration against emulated timers can be off by several
    /// times on a busy machine (seen: a guest clock running 8× fast), beyond what adjtimex can
    /// correct.
    pub tsc_khz: u64,
    /// A qcow2 image for savevm/loadvm.
    pub state_disk: PathBuf,
    /// More on the guest kernel's command line (e.g. `8250.nr_uarts=2`: the doorbell UART is
    /// left to ACPI).
    pub append: String,
}

pub struct Vm {
    child: Child,
    qmp: BufReader<UnixStream>,
    shell: BufReader<UnixStream>,
    /// The last command's sequence number (lab/guest/shell).
    seq: u64,
    pub console: PathBuf,
    gdb_path: PathBuf,
}

fn accept(l: &UnixListener, child: &mut Child, what: &str, timeout: Duration) -> Result<UnixStream> {
    l.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(st) = child.try_wait()? {
                    bail!("QEMU exited ({st}) before connecting its {what}");
                }
                if Instant::now() > deadline {
                    bail!("QEMU did not connect its {what} within {timeout:?}");
                }
                vmtime_sys::event::poll_readable(&[std::os::fd::AsRawFd::as_raw_fd(l)], 100)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

impl Vm {
    pub fn start(c: &VmConfig) -> Result<Vm> {
        let qmp_path = c.work.join("qmp.sock");
        let shell_path = c.work.join("shell.sock");
        let gdb_path = c.work.join("gdb.sock");
        let console = c.work.join("console.log");
        for p in [&qmp_path, &shell_path, &gdb_path] {
            let _ = std::fs::remove_file(p);
        }
        let qmp_l = UnixListener::bind(&qmp_path)?;
        let shell_l = UnixListener::bind(&shell_path)?;
        let mut cmd = Command::new(&c.qemu);
        cmd.env("LD_LIBRARY_PATH", &c.lib_path).env("QEMU_MODULE_DIR", &c.module_dir);
        for f in &c.firmware {
            cmd.arg("-L").arg(f);
        }
        cmd.args(["-accel", "tcg", "-cpu", "max", "-m", "384", "-smp", "1", "-nodefaults", "-display", "none"])
            .args(["-no-reboot", "-machine", "q35"])
            .arg("-kernel")
            .arg(&c.kernel)
            .arg("-initrd")
            .arg(&c.initrd)
            .arg("-append")
            .arg(format!(
                "console=ttyS0 panic=-1 quiet loglevel=4 tsc=reliable clocksource=tsc tsc_early_khz={}{}{}",
                c.tsc_khz,
                if c.append.is_empty() { "" } else { " " },
                c.append
            ))
            .args(["-rtc", &format!("base={},clock=host", c.rtc_base)])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-chardev")
            .arg(format!("socket,id=shell,path={},server=off", shell_path.display()))
            .args(["-serial", "chardev:shell"])
            .arg("-chardev")
            .arg(format!("socket,id=qmp,path={},server=off", qmp_path.display()))
            .args(["-mon", "chardev=qmp,mode=control"])
            .arg("-gdb")
            .arg(format!("unix:{},server=on,wait=off", gdb_path.display()))
            .arg("-drive")
            .arg(format!("if=none,id=state,format=qcow2,file={}", c.state_disk.display()));
        if c.qemu_vmclock {
            cmd.args(["-device", "vmclock"]);
        }
        for (i, (f, slot)) in c.shared.iter().enumerate() {
            cmd.arg("-object")
                .arg(format!(
                    "memory-backend-file,id=shm{i},mem-path={},size={},share=on",
                    f.display(),
                    std::fs::metadata(f).map(|m| m.len()).unwrap_or(4096)
                ))
                .arg("-device")
                // master=on: this side owns the memory, so the VM may be saved and loaded.
                .arg(format!("ivshmem-plain,memdev=shm{i},master=on,addr={slot:#x}"));
        }
        cmd.args(&c.extra);
        let log = std::fs::File::create(c.work.join("qemu.log"))?;
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let mut child = cmd.spawn().with_context(|| format!("start {}", c.qemu.display()))?;
        let boot = Duration::from_secs(30);
        let qmp = accept(&qmp_l, &mut child, "QMP monitor", boot);
        let shell = qmp.and_then(|q| Ok((q, accept(&shell_l, &mut child, "guest shell serial port", boot)?)));
        let (qmp, shell) = match shell {
            Ok(s) => s,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        let mut vm = Vm { child, qmp: BufReader::new(qmp), shell: BufReader::new(shell), seq: 0, console, gdb_path };
        vm.qmp.get_ref().set_read_timeout(Some(Duration::from_secs(60)))?;
        let greeting = vm.qmp_line()?;
        if !greeting.contains("QMP") {
            bail!("not a QMP greeting: {greeting}");
        }
        vm.qmp("qmp_capabilities", serde_json::json!({}))?;
        Ok(vm)
    }

    fn qmp_line(&mut self) -> Result<String> {
        let mut l = String::new();
        if self.qmp.read_line(&mut l)? == 0 {
            bail!("QEMU closed its QMP monitor");
        }
        Ok(l)
    }

    /// One QMP command; asynchronous events in between are skipped.
    pub fn qmp(&mut self, execute: &str, arguments: serde_json::Value) -> Result<serde_json::Value> {
        let req = serde_json::json!({ "execute": execute, "arguments": arguments });
        writeln!(self.qmp.get_mut(), "{req}")?;
        loop {
            let v: serde_json::Value = serde_json::from_str(&self.qmp_line()?)?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                bail!("QMP {execute}: {e}");
            }
        }
    }

    /// An HMP command through QMP (savevm and loadvm have no QMP form in QEMU 10's stable set).
    pub fn hmp(&mut self, line: &str) -> Result<String> {
        let out = self.qmp("human-monitor-command", serde_json::json!({ "command-line": line }))?;
        let text = out.as_str().unwrap_or_default().to_string();
        if text.to_lowercase().contains("error") {
            bail!("{line}: {text}");
        }
        Ok(text)
    }

    /// Waits for the guest's shell to say it is ready.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        self.shell.get_ref().set_read_timeout(Some(timeout))?;
        loop {
            let mut l = String::new();
            match self.shell.read_line(&mut l) {
                Ok(0) => bail!("the guest's shell port closed"),
                Ok(_) if l.trim() == "@ready" => return Ok(()),
                Ok(_) => {}
                Err(e) => {
                    bail!("the guest did not reach its shell within {timeout:?} ({e}); see {}", self.console.display())
                }
            }
        }
    }

    /// Runs one shell command line in the guest; its output and exit status. The line goes
    /// framed with its MD5 (lab/guest/shell): a line the serial port garbled is refused by the
    /// guest and sent again, and output whose MD5 does not match is asked for again.
    pub fn sh(&mut self, line: &str, timeout: Duration) -> Result<(String, i32)> {
        use md5::{Digest, Md5};
        let hex = |b: &[u8]| -> String { Md5::digest(b).iter().map(|x| format!("{x:02x}")).collect() };
        debug_assert!(!line.contains('\n'));
        self.seq += 1;
        let seq = self.seq;
        let frame = format!("\n@cmd {seq} {} {line}\n", hex(line.as_bytes()));
        let mut why = String::new();
        for _attempt in 0..6 {
            self.shell.get_mut().write_all(frame.as_bytes())?;
            // The guest acknowledges (or refuses) the frame at once.
            self.shell.get_ref().set_read_timeout(Some(Duration::from_secs(10)))?;
            let acked = loop {
                let mut l = String::new();
                match self.shell.read_line(&mut l) {
                    Ok(0) => bail!("the guest's shell port closed during: {line}"),
                    Ok(_) if l.trim_end() == format!("@ack {seq}") => break true,
                    Ok(_) if l.trim_end() == format!("@nak {seq}") => break false,
                    Ok(_) => {}
                    Err(_) => break false,
                }
            };
            if !acked {
                why = "the guest refused or did not acknowledge the command (garbled on the serial line)".into();
                continue;
            }
            // Output, then "\n@done SEQ STATUS MD5".
            self.shell.get_ref().set_read_timeout(Some(timeout))?;
            let marker = format!("\n@done {seq} ");
            let mut buf = Vec::new();
            let done = loop {
                let mut l = Vec::new();
                match self.shell.read_until(b'\n', &mut l) {
                    Ok(0) => bail!("the guest's shell port closed during: {line}"),
                    Ok(_) => {
                        buf.extend_from_slice(&l);
                        if let Some(at) = find(&buf, marker.as_bytes()) {
                            if buf.ends_with(b"\n") {
                                break Some(at);
                            }
                        }
                    }
                    Err(e) => bail!("no answer from the guest within {timeout:?} to: {line} ({e})"),
                }
            };
            let at = done.expect("found");
            let tail = String::from_utf8_lossy(&buf[at + marker.len()..]).trim().to_string();
            let mut parts = tail.split(' ');
            let rc = parts.next().and_then(|r| r.parse().ok()).unwrap_or(-1);
            let sum = parts.next().unwrap_or_default();
            let out = &buf[..at];
            if hex(out) == sum {
                return Ok((String::from_utf8_lossy(out).into_owned(), rc));
            }
            why = "the output's MD5 did not match (garbled on the serial line)".into();
        }
        bail!("`{line}`: {why}, 6 times")
    }

    /// Like `sh`, but a non-zero status is an error carrying the output.
    pub fn sh_ok(&mut self, line: &str, timeout: Duration) -> Result<String> {
        let (out, rc) = self.sh(line, timeout)?;
        if rc != 0 {
            bail!("`{line}` exited {rc}: {}", out.trim());
        }
        Ok(out)
    }

    /// Connects QEMU's gdbstub (this stops the VM) in physical-memory mode.
    pub fn gdb(&mut self) -> Result<Gdb> {
        let s = UnixStream::connect(&self.gdb_path).context("connect QEMU's gdbstub")?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut g = Gdb { s };
        let stop = g.request("?")?;
        if !stop.starts_with('T') && !stop.starts_with('S') {
            bail!("gdbstub: unexpected stop reply {stop}");
        }
        let r = g.request("Qqemu.PhyMemMode:1")?;
        if r != "OK" {
            bail!("gdbstub: physical memory mode refused ({r})");
        }
        Ok(g)
    }

    /// The guest's shell came over from `other` (a migration): carry on its command numbers
    /// (the shell re-sends a number's output instead of running it twice).
    pub fn continue_seq(&mut self, other: &Vm) {
        self.seq = other.seq;
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.qmp("quit", serde_json::json!({}));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A gdb remote-protocol client: just enough to write memory and leave.
pub struct Gdb {
    s: UnixStream,
}

impl Gdb {
    fn request(&mut self, body: &str) -> Result<String> {
        let sum = body.bytes().fold(0u8, |a, b| a.wrapping_add(b));
        write!(self.s, "${body}#{sum:02x}")?;
        // '+' acknowledges; then the reply packet "$...#xx", which we acknowledge.
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        let mut inside = false;
        loop {
            self.s.read_exact(&mut byte).context("gdbstub reply")?;
            match (inside, byte[0]) {
                (false, b'$') => inside = true,
                (false, _) => {}
                (true, b'#') => {
                    let mut cs = [0u8; 2];
                    self.s.read_exact(&mut cs)?;
                    self.s.write_all(b"+")?;
                    return Ok(String::from_utf8_lossy(&reply).into_owned());
                }
                (true, b) => reply.push(b),
            }
        }
    }

    /// Writes `bytes` at guest-physical `addr`.
    pub fn write_phys(&mut self, addr: u64, bytes: &[u8]) -> Result<()> {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let r = self.request(&format!("M{addr:x},{:x}:{hex}", bytes.len()))?;
        if r != "OK" {
            bail!("gdbstub: memory write at {addr:#x} refused ({r})");
        }
        Ok(())
    }

    /// Reads `len` bytes at guest-physical `addr`.
    pub fn read_phys(&mut self, addr: u64, len: usize) -> Result<Vec<u8>> {
        let r = self.request(&format!("m{addr:x},{len:x}"))?;
        (0..r.len() / 2)
            .map(|i| u8::from_str_radix(&r[2 * i..2 * i + 2], 16).context("gdbstub: bad memory reply"))
            .collect()
    }
}

/// The guest-physical address of QEMU's vmclock page (its ACPI device, x86).
pub const QEMU_VMCLOCK_ADDR: u64 = 0xfeff_b000;
