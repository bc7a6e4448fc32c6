//! The files the Debian package installs: the systemd units (checked by `systemd-analyze verify`
//! when this machine has it; scripts/test-packaging makes sure it does), their command lines
//! against the CLI, and the udev rule (syntax, and every pure PTP source it must cover).
mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

const UNITS: [&str; 3] = ["vmtime-host.service", "vmtime-relay@.service", "vmtime-sync.service"];
/// The feeds' units (`vmtime feed chrony`, `vmtime feed clockbound`).
const FEED_UNITS: [&str; 2] = ["vmtime-feed-chrony.service", "vmtime-feed-clockbound.service"];

fn unit(name: &str) -> String {
    std::fs::read_to_string(repo().join("packaging/systemd").join(name)).unwrap()
}

/// `Key=value` lines of a unit (all of them, in order).
fn values<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    text.lines().filter_map(|l| l.strip_prefix(key)?.strip_prefix('=')).collect()
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Runs `systemd-analyze verify` on copies of the units whose ExecStart names the binary under
/// test (verify insists the binary exists); returns its whole output.
fn verify(dir: &Path, units: &[(&str, String)]) -> (bool, String) {
    let mut paths = Vec::new();
    for (name, text) in units {
        let text = text.replace("/usr/bin/vmtime", env!("CARGO_BIN_EXE_vmtime"));
        // A template is verified through an instance.
        let name = name.replace("@.service", "@guest1.service");
        std::fs::write(dir.join(&name), text).unwrap();
        paths.push(dir.join(name));
    }
    let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).args(&paths).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn units_pass_systemd_analyze_verify() {
    if !have("systemd-analyze") {
        eprintln!("SKIP: systemd-analyze is not installed (scripts/test-packaging installs systemd)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let units: Vec<(&str, String)> = UNITS.iter().chain(&FEED_UNITS).map(|n| (*n, unit(n))).collect();
    let (ok, out) = verify(dir.path(), &units);
    assert!(ok && out.trim().is_empty(), "systemd-analyze verify: {out}");
    // The check sees mistakes: a misspelt setting is reported.
    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    let broken = unit(UNITS[0]).replace("ProtectSystem=strict", "ProtectSystem=strickt");
    let (_, out) = verify(&bad, &[(UNITS[0], broken)]);
    assert!(out.contains("ProtectSystem") || out.contains("protect system"), "{out}");
}

#[test]
fn units_have_the_production_settings() {
    for name in UNITS {
        let u = unit(name);
        assert_eq!(values(&u, "Type"), ["notify"], "{name}");
        assert!(!values(&u, "WatchdogSec").is_empty(), "{name}");
        for key in ["ProtectSystem=strict", "PrivateTmp=yes", "NoNewPrivileges=yes", "ProtectHome=yes"] {
            assert!(u.lines().any(|l| l == key), "{name}: {key}");
        }
        assert!(values(&u, "RuntimeDirectory").iter().any(|v| v.split(' ').any(|d| d == "vmtime")), "{name}");
        assert!(!values(&u, "RestrictAddressFamilies").is_empty(), "{name}");
        assert!(!values(&u, "SystemCallFilter").is_empty(), "{name}");
        assert_eq!(values(&u, "User"), ["vmtime"], "{name}");
    }
    let host = unit("vmtime-host.service");
    assert_eq!(values(&host, "CapabilityBoundingSet"), [""], "host: no capability");
    let sync = unit("vmtime-sync.service");
    assert_eq!(values(&sync, "CapabilityBoundingSet"), ["CAP_SYS_TIME"]);
    assert_eq!(values(&sync, "AmbientCapabilities"), ["CAP_SYS_TIME"]);
    assert!(!sync.contains("ProtectClock"), "sync changes the clock");
    let conflicts = values(&sync, "Conflicts").join(" ");
    for d in ["chrony.service", "chronyd.service", "ntp.service", "ntpsec.service", "systemd-timesyncd.service"] {
        assert!(conflicts.split(' ').any(|c| c == d), "sync conflicts with {d}");
    }
    assert_eq!(values(&sync, "RestartPreventExitStatus"), ["3"], "another daemon: exit 3, no restart");
}

/// The effective default configuration (`vmtime config defaults`).
fn defaults() -> toml::Table {
    let out = vmtime(&["config", "defaults"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().parse().unwrap()
}

#[test]
fn feed_units_are_hardened_with_exactly_the_access_they_need() {
    for name in FEED_UNITS {
        let u = unit(name);
        assert_eq!(values(&u, "Type"), ["notify"], "{name}");
        assert_eq!(values(&u, "NotifyAccess"), ["main"], "{name}");
        assert!(!values(&u, "WatchdogSec").is_empty(), "{name}");
        for key in [
            "ProtectSystem=strict",
            "PrivateTmp=yes",
            "NoNewPrivileges=yes",
            "ProtectHome=yes",
            "ProtectClock=yes",
            "DevicePolicy=closed",
            "DeviceAllow=char-misc r",
            "IPAddressDeny=any",
            "IPAddressAllow=localhost",
            "SystemCallFilter=~@clock",
        ] {
            assert!(u.lines().any(|l| l == key), "{name}: {key}");
        }
        // No capability at all: neither feed changes a clock or overrides a file permission.
        assert_eq!(values(&u, "CapabilityBoundingSet"), [""], "{name}");
        assert_eq!(values(&u, "AmbientCapabilities"), [""], "{name}");
    }
    let d = defaults();
    // chrony: the SOCK socket chronyd binds while still root (mode 0755 under systemd's umask)
    // can be written only by uid 0, so the feed keeps uid 0 and nothing else; the chrony.conf line
    // in the unit names the socket the feed sends to by default, outside chronyd's 0770
    // /run/chrony (which uid 0 without CAP_DAC_OVERRIDE could not enter).
    let c = unit("vmtime-feed-chrony.service");
    assert_eq!(values(&c, "User"), ["root"]);
    let socket = d["feed"]["chrony"]["socket"].as_str().unwrap();
    assert!(!socket.starts_with("/run/chrony/"), "{socket}");
    assert!(c.contains(&format!("refclock SOCK {socket} ")), "the unit's chrony.conf line names {socket}");
    assert!(values(&c, "After").join(" ").split(' ').any(|x| x == "chrony.service"), "after chronyd made the socket");
    // ClockBound: the vmtime user; the segment's directory is the unit's runtime directory,
    // readable by every client, kept across restarts; ClockBound's own daemon cannot run beside it.
    let b = unit("vmtime-feed-clockbound.service");
    assert_eq!((values(&b, "User"), values(&b, "Group")), (vec!["vmtime"], vec!["vmtime"]));
    assert_eq!(values(&b, "RuntimeDirectory"), ["clockbound"]);
    assert_eq!(values(&b, "RuntimeDirectoryMode"), ["0755"]);
    assert_eq!(values(&b, "RuntimeDirectoryPreserve"), ["yes"]);
    assert_eq!(values(&b, "Conflicts"), ["clockbound.service"]);
    let dir = d["feed"]["clockbound"]["dir"].as_str().unwrap();
    assert_eq!(dir.replacen("/var/run/", "/run/", 1), "/run/clockbound", "the default directory is the unit's");
    assert!(!values(&b, "ExecStart")[0].contains("--dir"), "the directory comes from the configuration");
}

#[test]
fn unit_command_lines_are_accepted_by_the_cli() {
    for name in UNITS.iter().chain(&FEED_UNITS) {
        let name = *name;
        let u = unit(name);
        let exec = values(&u, "ExecStart")[0];
        let args: Vec<String> = exec
            .split_whitespace()
            .skip(1)
            .filter(|a| !a.starts_with('$'))
            .map(|a| a.replace("%i", "guest1"))
            .chain(["--help".to_string()])
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = vmtime(&args);
        assert!(out.status.success(), "{name}: {exec}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// One rule line: `KEY[{attr}]OP"value"` items separated by ", ".
fn parse_rule(line: &str) -> Result<Vec<(String, String, String)>, String> {
    const MATCH: &[&str] = &["KERNEL", "SUBSYSTEM", "ATTR", "ATTRS", "DRIVER", "ACTION"];
    const ASSIGN: &[&str] = &["GROUP", "MODE", "OWNER", "TAG", "SYMLINK"];
    let mut items = Vec::new();
    for item in line.split(", ") {
        let op_at = item.find(['=', '!', '+']).ok_or(format!("no operator in {item:?}"))?;
        let (key, rest) = item.split_at(op_at);
        let op = ["==", "!=", "+=", "="]
            .into_iter()
            .find(|o| rest.starts_with(o))
            .ok_or(format!("bad operator in {item:?}"))?;
        let value = rest[op.len()..]
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .ok_or(format!("unquoted value in {item:?}"))?;
        if value.contains('"') {
            return Err(format!("quote inside {item:?}"));
        }
        let base = key.split('{').next().unwrap();
        if key.contains('{') && !(key.ends_with('}') && matches!(base, "ATTR" | "ATTRS")) {
            return Err(format!("bad attribute key {key:?}"));
        }
        match op {
            "==" | "!=" if MATCH.contains(&base) => {}
            "=" | "+=" if ASSIGN.contains(&base) => {}
            _ => return Err(format!("{op} does not go with {key}")),
        }
        if base == "MODE" && !(value.len() == 4 && value.chars().all(|c| ('0'..='7').contains(&c))) {
            return Err(format!("MODE {value:?} is not octal"));
        }
        items.push((key.to_string(), op.to_string(), value.to_string()));
    }
    Ok(items)
}

/// udev's glob (`*`, `?`) match.
fn glob(pattern: &str, s: &str) -> bool {
    match (pattern.chars().next(), s.chars().next()) {
        (None, None) => true,
        (Some('*'), _) => {
            glob(&pattern[1..], s) || (!s.is_empty() && glob(pattern, &s[s.chars().next().unwrap().len_utf8()..]))
        }
        (Some('?'), Some(c)) => glob(&pattern[1..], &s[c.len_utf8()..]),
        (Some(p), Some(c)) if p == c => glob(&pattern[p.len_utf8()..], &s[c.len_utf8()..]),
        _ => false,
    }
}

#[test]
fn the_udev_rule_is_well_formed_and_covers_every_pure_source() {
    let path = repo().join("packaging/udev/60-vmtime.rules");
    let text = std::fs::read_to_string(&path).unwrap();
    let rules: Vec<Vec<(String, String, String)>> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| parse_rule(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert!(!rules.is_empty());
    for r in &rules {
        // Group read, nothing for others: never a+r.
        assert!(r.contains(&("GROUP".into(), "=".into(), "vmtime".into())), "{r:?}");
        assert!(r.contains(&("MODE".into(), "=".into(), "0640".into())), "{r:?}");
        assert!(r.iter().any(|(k, _, _)| k == "SUBSYSTEM"), "each rule names its subsystem: {r:?}");
    }
    // The self-check of the parser: malformed lines are refused.
    assert!(parse_rule("KERNEL=\"vmclock*\", GROUP=\"vmtime\"").is_err(), "= is no match");
    assert!(parse_rule("KERNEL==\"vmclock*\", MODE=\"0644").is_err());
    assert!(parse_rule("KERNEL==\"x\", MODE=\"a+r\"").is_err());

    let ptp_names: Vec<&str> = rules
        .iter()
        .filter(|r| r.iter().any(|(k, _, v)| k == "SUBSYSTEM" && v == "ptp"))
        .filter_map(|r| r.iter().find(|(k, _, _)| k == "ATTR{clock_name}").map(|(_, _, v)| v.as_str()))
        .collect();
    // Every name the discipline accepts as a pure source is readable by the daemons, and the
    // rule opens no PTP clock that is not one.
    let known = [
        "KVM virtual PTP",
        "ptp_vmw",
        "hyperv",
        "VMclock",
        "vmclock0",
        "vmclock3",
        "Virtio PTP type 0/variant 0",
        "s390 STCKE Clock",
        "s390 Physical Clock",
    ];
    for name in known {
        assert!(vmtime_core::phc::pure_source(name).is_some(), "{name} is a pure source");
        assert!(ptp_names.iter().any(|p| glob(p, name)), "the rule covers {name}");
    }
    for p in &ptp_names {
        let example = p.replace('*', "0");
        assert!(vmtime_core::phc::pure_source(&example).is_some(), "{p} is not a pure source");
    }
    assert!(!ptp_names.iter().any(|p| glob(p, "e1000e")), "a NIC's PTP clock stays closed");
    let misc = rules.iter().find(|r| r.iter().any(|(k, _, v)| k == "SUBSYSTEM" && v == "misc")).expect("vmclock rule");
    let kernel = &misc.iter().find(|(k, _, _)| k == "KERNEL").unwrap().2;
    assert!(glob(kernel, "vmclock0") && glob(kernel, "vmclock_host"));

    // udevadm verify (systemd 254+) where this machine has it.
    let has_verify = Command::new("udevadm").args(["verify", "--help"]).output().is_ok_and(|o| o.status.success());
    if has_verify {
        let o = Command::new("udevadm").args(["verify", "--no-style"]).arg(&path).output().unwrap();
        assert!(
            o.status.success(),
            "udevadm verify: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    } else {
        eprintln!("no `udevadm verify` here (systemd < 254 or no udev): the syntax check above stands alone");
    }
}

#[test]
fn only_the_vmtime_user_owns_the_shared_runtime_directory() {
    // systemd gives a unit's RuntimeDirectory= to the unit's User= (recursively, at each start):
    // a unit running as another user that names /run/vmtime would take it, and every page and
    // socket in it, from the vmtime daemons (seen in the booted container of
    // scripts/test-systemd: the daemons could no longer remove their sockets).
    for name in UNITS.iter().chain(&FEED_UNITS) {
        let u = unit(name);
        let dirs: Vec<&str> = values(&u, "RuntimeDirectory").iter().flat_map(|v| v.split(' ')).collect();
        let user = values(&u, "User");
        if dirs.iter().any(|d| *d == "vmtime" || d.starts_with("vmtime/")) {
            assert_eq!(user, ["vmtime"], "{name} shares /run/vmtime but runs as {user:?}");
        }
        // Every ExecReload sends the main process SIGHUP (systemctl reload).
        assert_eq!(values(&u, "ExecReload"), ["/bin/kill -HUP $MAINPID"], "{name}");
    }
}
