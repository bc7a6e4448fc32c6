//! Helpers shared by the daemon tests: start a daemon we own, wait on its own output and
//! notifications (never on sleeps), and stop it by its pid.
#![allow(dead_code)]
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

pub fn vmtime(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmtime")).args(args).output().expect("run vmtime")
}

pub fn json(args: &[&str]) -> serde_json::Value {
    let out = vmtime(args);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{args:?}: {}", String::from_utf8_lossy(&out.stderr)))
}

/// A daemon started by the test; killed (by its pid) when dropped.
pub struct Daemon(Child);

impl Daemon {
    /// Owns a child started by the test.
    pub fn from_child(c: Child) -> Self {
        Daemon(c)
    }
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `vmtime ARGS` and returns once a stderr line contains `ready` (the daemon prints it
/// when its socket is listening).
pub fn start(args: &[&str], ready: &str) -> (Daemon, Vec<String>) {
    let mut child =
        Command::new(env!("CARGO_BIN_EXE_vmtime")).args(args).stderr(Stdio::piped()).spawn().expect("start daemon");
    let mut lines = Vec::new();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    loop {
        let mut l = String::new();
        assert!(err.read_line(&mut l).unwrap() > 0, "the daemon exited: {lines:?}");
        let done = l.contains(ready);
        lines.push(l);
        if done {
            break;
        }
    }
    // Keep draining stderr so the daemon never blocks on a full pipe.
    std::thread::spawn(move || for _ in err.lines() {});
    (Daemon(child), lines)
}

pub fn start_host(page: &Path) -> (Daemon, Vec<String>) {
    start(&["host", "--page", page.to_str().unwrap(), "--quiet", "--duration-s", "120"], "control socket")
}

pub fn socket(page: &Path) -> String {
    format!("{}.sock", page.display())
}

/// Subscribes to a daemon's notifications.
pub fn subscribe(page: &Path) -> BufReader<UnixStream> {
    let mut s = UnixStream::connect(socket(page)).expect("connect");
    writeln!(s, "subscribe").unwrap();
    BufReader::new(s)
}

pub fn show(page: &Path) -> serde_json::Value {
    json(&["show", page.to_str().unwrap(), "--json"])
}

/// Waits (on notifications) until the page is calibrated (SYNCHRONIZED or FREERUNNING).
pub fn wait_calibrated(page: &Path) -> serde_json::Value {
    let mut r = subscribe(page);
    for _ in 0..50 {
        let mut seq = String::new();
        assert!(r.read_line(&mut seq).unwrap() > 0, "the daemon hung up");
        let v = show(page);
        let st = v["fields"]["clock_status"]["name"].as_str().unwrap_or("").to_string();
        if st == "SYNCHRONIZED" || st == "FREERUNNING" {
            return v;
        }
    }
    panic!("no calibrated page after 50 updates");
}
