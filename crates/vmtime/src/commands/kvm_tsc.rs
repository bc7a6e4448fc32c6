//! `vmtime kvm-tsc`: a running KVM guest's TSC map (per vCPU, from KVM's debugfs, given its
//! QEMU's pid), printed as the relay's flags, or told to its relay once KVM has set it.
//!
//! After an incoming migration (or a restore) KVM gives the guest a new TSC offset when QEMU
//! loads the vCPUs' state, right after the RAM (and with it the page) has arrived. The relay has
//! seen its page overwritten by then and holds the guest's page without time
//! (docs/RELAY.md); `--tell` waits (bounded) until the relay says so *and* the offset differs
//! from the one the fresh QEMU started with, then tells the relay the new map.

use crate::values::{DurationS, ProcessId};
use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use vmtime_sys::kvm::{self, VcpuTsc};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The pid of the guest's QEMU (the process that created the VM).
    #[arg(long)]
    pid: ProcessId,
    /// KVM's debugfs directory.
    #[arg(long, default_value = kvm::DEBUGFS_KVM)]
    debugfs: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Tell this relay's control socket (GUEST.page.sock) the map, once its page was overwritten
    /// and the offset has changed from the one read at start: "migrated" or "restored".
    #[arg(long, value_names = ["SOCKET", "WHAT"], num_args = 2)]
    tell: Option<Vec<String>>,
    /// How long --tell waits (a migration's or a restore's whole length), seconds.
    #[arg(long, default_value = "600")]
    timeout_s: DurationS,
}

/// The one map of the guest: every vCPU must agree (KVM keeps them equal unless the guest wrote
/// one vCPU's TSC; a relay describes one counter per guest).
fn one_map(v: &[VcpuTsc]) -> Result<VcpuTsc> {
    let first = v[0];
    if let Some(d) = v.iter().find(|x| (x.offset, x.scaling) != (first.offset, first.scaling)) {
        bail!(
            "vCPU {} has TSC offset {} (scaling {:?}), vCPU {} has {} ({:?}): one page cannot describe both (did the guest write one vCPU's TSC?)",
            first.vcpu,
            first.offset,
            first.scaling,
            d.vcpu,
            d.offset,
            d.scaling
        );
    }
    Ok(first)
}

/// The words after "migrated"/"restored" on the relay's control socket: OFFSET [RATIO BITS].
fn map_words(m: &VcpuTsc) -> String {
    match m.scaling {
        Some((ratio, bits)) => format!("{} {} {bits}", m.offset, ratio as f64 / 2f64.powi(i32::from(bits))),
        None => m.offset.to_string(),
    }
}

fn relay_flags(m: &VcpuTsc) -> String {
    match m.scaling {
        Some((ratio, bits)) => format!(
            "--tsc-offset {} --tsc-ratio {} --tsc-frac-bits {bits}",
            m.offset,
            ratio as f64 / 2f64.powi(i32::from(bits))
        ),
        None => format!("--tsc-offset {}", m.offset),
    }
}

pub fn run(a: Args) -> Result<ExitCode> {
    let read = || -> Result<VcpuTsc> { one_map(&kvm::guest_tsc(&a.debugfs, a.pid.get())?) };
    let Some(tell) = a.tell.as_deref() else {
        let all = kvm::guest_tsc(&a.debugfs, a.pid.get())?;
        let m = one_map(&all)?;
        if a.json {
            let vcpus: Vec<_> = all
                .iter()
                .map(|v| {
                    serde_json::json!({"vcpu": v.vcpu, "offset": v.offset, "scaling_ratio": v.scaling.map(|s| s.0),
                        "frac_bits": v.scaling.map(|s| s.1)})
                })
                .collect();
            println!(
                "{}",
                serde_json::json!({ "vcpus": vcpus, "relay_args": relay_flags(&m), "control": map_words(&m) })
            );
        } else {
            for v in &all {
                println!("vcpu{} tsc-offset {} scaling {:?}", v.vcpu, v.offset, v.scaling);
            }
            println!("vmtime relay {}", relay_flags(&m));
        }
        return Ok(ExitCode::SUCCESS);
    };
    let [socket, what] = tell else { bail!("--tell SOCKET WHAT") };
    if what != "migrated" && what != "restored" {
        bail!("--tell {socket} {what}: WHAT is migrated or restored");
    }
    let socket = PathBuf::from(socket);
    let start = read().context("the TSC map before the incoming state")?;
    let end = Instant::now() + Duration::from_secs(a.timeout_s.get());
    loop {
        let (line, _) = vmtime_sys::serve::request(&socket, "status", crate::ops::control::CLIENT_TIMEOUT)?;
        let st: serde_json::Value = serde_json::from_str(&line).context("the relay's status is not JSON")?;
        let pending = st["map_pending"].as_bool() == Some(true);
        let now = read()?;
        if pending && now.offset != start.offset {
            let req = format!("{what} {}", map_words(&now));
            let (answer, _) = vmtime_sys::serve::request(&socket, &req, crate::ops::control::CLIENT_TIMEOUT)?;
            let v: serde_json::Value = serde_json::from_str(&answer).context("the relay's answer is not JSON")?;
            if let Some(e) = v.get("error") {
                bail!("the relay refused `{req}`: {e}");
            }
            println!("told {}: {req}", socket.display());
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() >= end {
            bail!(
                "in {} s the relay's page was {} and the TSC offset {}: nothing told",
                a.timeout_s,
                if pending { "overwritten" } else { "not overwritten" },
                if now.offset != start.offset { "changed" } else { "unchanged" }
            );
        }
        std::thread::sleep(Duration::from_millis(2)); // polls the relay and debugfs, bounded above
    }
}
