//! What a man page says beyond the `--help` text that `clap_mangen` renders: EXAMPLES, FILES,
//! EXIT STATUS and SEE ALSO, for `vmtime(1)` and every subcommand's page.

/// The extra sections of one page.
#[derive(Debug, Default)]
pub struct Extra {
    /// (command line, what it does).
    pub examples: Vec<(&'static str, &'static str)>,
    /// (path, what it is).
    pub files: Vec<(&'static str, &'static str)>,
    /// (status, meaning).
    pub exit: Vec<(&'static str, &'static str)>,
    /// Other pages, "vmtime-host(1)".
    pub see_also: Vec<&'static str>,
}

const CONFIG: (&str, &str) =
    ("/etc/vmtime/vmtime.toml", "the configuration file: one section per daemon (docs/CONFIG.md)");
const HOST_PAGE: (&str, &str) = (
    "/run/vmtime/host.page",
    "the host page of a host daemon run by root, with its control socket host.page.sock; \
     other users: $XDG_RUNTIME_DIR/vmtime/ or /tmp/vmtime-UID/",
);
const GUEST_PAGE: (&str, &str) = ("/dev/vmclock0", "a guest's page, from the Linux ptp_vmclock driver");
const DOCS: (&str, &str) = ("/usr/share/doc/vmtime/", "README.md and OPERATIONS.md (install, run, metrics, alerts)");
const ERROR: (&str, &str) = ("2", "an error: bad command line, unreadable page, refused input (one line on stderr)");
const STOPPED: (&str, &str) = ("0", "stopped by SIGTERM or SIGINT, or after --duration-s");
const DONE: (&str, &str) = ("0", "success");
const PAGE_DEFAULT: &str = "PAGE defaults to /dev/vmclock0; where that is absent and this machine publishes a host page (a running vmtime host), that page";

/// The extra sections for the page of `name` ("vmtime", "vmtime-host", "vmtime-feed-chrony", …).
pub fn extra(name: &str) -> Extra {
    let mut e = Extra::default();
    match name {
        "vmtime" => {
            e.examples = vec![
                ("vmtime host", "publish this machine's clock as a vmclock page (a daemon; reads the clock only)"),
                ("vmtime check /run/vmtime/host.page --samples 10000", "the host page against the kernel clock"),
                ("vmtime now", "bounded time from the guest's /dev/vmclock0"),
                ("vmtime status", "ask the running host daemon for its state"),
            ];
            e.files = vec![CONFIG, HOST_PAGE, GUEST_PAGE, DOCS];
            e.exit = vec![DONE, ("1", "a check or validation failed (check, show, sim, phc read)"), ERROR];
            e.see_also = vec![
                "vmtime-host(1)",
                "vmtime-relay(1)",
                "vmtime-sync(1)",
                "vmtime-feed(1)",
                "vmtime-status(1)",
                "vmtime-check(1)",
                "chronyd(8)",
            ];
        }
        "vmtime-host" => {
            e.examples = vec![
                ("vmtime host", "as root: publish /run/vmtime/host.page (the unit vmtime-host.service runs this)"),
                ("vmtime host --page /tmp/host.page --duration-s 60", "a page of one's own for a minute"),
                ("vmtime host --metrics-listen 127.0.0.1:9861", "also serve Prometheus metrics"),
            ];
            e.files = vec![HOST_PAGE, CONFIG, ("/usr/lib/systemd/system/vmtime-host.service", "its unit")];
            e.exit = vec![STOPPED, ERROR];
            e.see_also =
                vec!["vmtime-relay(1)", "vmtime-status(1)", "vmtime-check(1)", "vmtime-watch(1)", "chronyd(8)"];
        }
        "vmtime-relay" => {
            e.examples = vec![(
                "vmtime relay --host-page /run/vmtime/host.page --guest-page /run/vmtime/guests/vm1.page --tsc-offset -123456789",
                "write guest vm1's page in its TSC domain",
            )];
            e.files = vec![
                ("/run/vmtime/guests/NAME.page", "a guest's page, for its VMM to map (vmtime-relay@NAME.service)"),
                ("/var/lib/vmtime/relay/NAME.state.json", "the guest's markers, kept across restarts"),
                (
                    "/etc/vmtime/relay/NAME.conf",
                    "the unit's VMTIME_RELAY_ARGS for guest NAME (its TSC offset and ratio)",
                ),
                HOST_PAGE,
                CONFIG,
            ];
            e.exit = vec![STOPPED, ERROR];
            e.see_also = vec!["vmtime-host(1)", "vmtime-qemu(1)", "vmtime-status(1)"];
        }
        "vmtime-sync" => {
            e.examples = vec![
                ("vmtime sync --dry-run", "in a guest: what it would do to CLOCK_REALTIME, changing nothing"),
                ("vmtime sync", "as root in a guest: keep CLOCK_REALTIME on /dev/vmclock0 (vmtime-sync.service)"),
            ];
            e.files = vec![GUEST_PAGE, ("/run/vmtime/sync.sock", "its control socket (root)"), CONFIG];
            e.exit =
                vec![STOPPED, ERROR, ("3", "another time daemon (chronyd, ntpd, systemd-timesyncd) adjusts the clock")];
            e.see_also = vec!["vmtime-now(1)", "vmtime-status(1)", "adjtimex(2)"];
        }
        "vmtime-feed" | "vmtime-feed-chrony" | "vmtime-feed-clockbound" => {
            if name != "vmtime-feed-clockbound" {
                e.examples.push((
                    "vmtime feed chrony --source /dev/vmclock0 --socket /run/chrony.vmclock0.sock",
                    "as root: samples for chrony.conf's `refclock SOCK /run/chrony.vmclock0.sock refid VMCK poll 0 filter 1`",
                ));
                e.files.push(("/run/chrony.vmclock0.sock", "chronyd's SOCK refclock socket (chronyd creates it)"));
            }
            if name != "vmtime-feed-chrony" {
                e.examples.push((
                    "vmtime feed clockbound --source /dev/vmclock0",
                    "ClockBound 2.x and 3.x segments for their unmodified clients",
                ));
                e.files.push(("/var/run/clockbound/shm0, shm1", "ClockBound's shared-memory segments (2.x, 3.x)"));
            }
            e.files.extend([GUEST_PAGE, CONFIG]);
            e.exit = vec![STOPPED, ERROR];
            e.see_also = vec!["vmtime-now(1)", "chronyd(8)", "chronyc(1)"];
        }
        "vmtime-status" => {
            e.examples = vec![
                ("vmtime status", "the host daemon's state (its default socket)"),
                ("vmtime status --socket /run/vmtime/sync.sock --json", "the sync daemon's, as JSON"),
            ];
            e.files = vec![HOST_PAGE, ("/run/vmtime/sync.sock", "the sync daemon's socket")];
            e.exit = vec![DONE, ERROR];
            e.see_also = vec!["vmtime-host(1)", "vmtime-relay(1)", "vmtime-sync(1)"];
        }
        "vmtime-check" => {
            e.examples = vec![
                ("vmtime check --samples 10000", "the page (see FILES) against CLOCK_REALTIME"),
                ("vmtime check /run/vmtime/host.page --json", "the host page, as JSON"),
            ];
            e.files = vec![GUEST_PAGE, HOST_PAGE];
            e.exit = vec![
                ("0", "PASS: every page time lies in its window"),
                ("1", "FAIL"),
                ERROR,
                ("3", "not yet calibrated: the page is INITIALIZING"),
            ];
            e.see_also = vec!["vmtime-show(1)", "vmtime-now(1)", "vmtime-host(1)"];
        }
        "vmtime-show" | "vmtime-now" | "vmtime-watch" => {
            let ex: (&str, &str) = match name {
                "vmtime-show" => ("vmtime show --json", "every field of the page, as JSON"),
                "vmtime-now" => ("vmtime now", "earliest, time, latest and status from the page"),
                _ => {
                    ("vmtime watch /run/vmtime/host.page", "each update of the host page, with the fields that changed")
                }
            };
            e.examples = vec![ex];
            e.files = vec![GUEST_PAGE, HOST_PAGE];
            e.exit = if name == "vmtime-show" {
                vec![DONE, ("1", "the page is not valid"), ERROR]
            } else {
                vec![DONE, ERROR]
            };
            e.see_also = vec!["vmtime-check(1)", "vmtime-show(1)", "vmtime-now(1)", "vmtime-watch(1)"]
                .into_iter()
                .filter(|p| !p.starts_with(&format!("{name}(")))
                .collect();
        }
        _ => {
            e.exit = match name {
                "vmtime-sim" => vec![DONE, ("1", "the simulation found a bound or monotonicity violation"), ERROR],
                "vmtime-phc-read" => vec![DONE, ("1", "no method could read the clock"), ERROR],
                _ => vec![DONE, ERROR],
            };
            e.examples = match name {
                "vmtime-gen" => vec![("vmtime gen /tmp/demo.page", "a page of this machine's clock in a file")],
                "vmtime-qemu" => vec![(
                    "vmtime qemu --page /run/vmtime/guests/vm1.page --ssdt /run/vmtime/vm1.ssdt.aml",
                    "the SSDT and QEMU arguments giving a stock guest that page",
                )],
                "vmtime-sim" => {
                    vec![("vmtime sim steady --duration 10m --out /tmp/sim", "ten simulated minutes, CSV and plots")]
                }
                "vmtime-phc" | "vmtime-phc-list" => vec![("vmtime phc list", "every /dev/ptp* and how it reads")],
                "vmtime-phc-read" => {
                    vec![("vmtime phc read /dev/ptp0 -n 10", "its offset to CLOCK_REALTIME, 10 times")]
                }
                "vmtime-config" | "vmtime-config-check" => {
                    vec![("vmtime config check", "check /etc/vmtime/vmtime.toml and print the effective configuration")]
                }
                "vmtime-config-defaults" => vec![("vmtime config defaults", "the defaults, as TOML")],
                _ => vec![],
            };
            e.files = match name {
                n if n.starts_with("vmtime-config") => vec![CONFIG],
                n if n.starts_with("vmtime-phc") => vec![("/dev/ptp*", "the PTP hardware clocks")],
                _ => vec![],
            };
            e.see_also = vec!["vmtime(1)"];
        }
    }
    if name != "vmtime" && !e.see_also.contains(&"vmtime(1)") {
        e.see_also.insert(0, "vmtime(1)");
    }
    if e.examples.is_empty() {
        e.examples.push(("vmtime --help", "every command and its options"));
    }
    if matches!(name, "vmtime-show" | "vmtime-now" | "vmtime-check" | "vmtime-watch") {
        e.files.push(("PAGE", PAGE_DEFAULT));
    }
    e
}

/// Text for roff: backslashes doubled, hyphens as `\-` (so they copy as ASCII), a line starting
/// with '.' or '\'' escaped.
fn esc(s: &str) -> String {
    let s = s.replace('\\', "\\e").replace('-', "\\-");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}

/// The sections in roff, to append to the page `clap_mangen` rendered.
pub fn roff(e: &Extra) -> String {
    let mut out = String::new();
    out.push_str(".SH EXAMPLES\n");
    for (cmd, what) in &e.examples {
        out.push_str(&format!(".TP\n.B {}\n{}\n", esc(cmd), esc(what)));
    }
    if !e.files.is_empty() {
        out.push_str(".SH FILES\n");
        for (path, what) in &e.files {
            out.push_str(&format!(".TP\n.I {}\n{}\n", esc(path), esc(what)));
        }
    }
    out.push_str(".SH \"EXIT STATUS\"\n");
    for (code, what) in &e.exit {
        out.push_str(&format!(".TP\n.B {code}\n{}\n", esc(what)));
    }
    out.push_str(".SH \"SEE ALSO\"\n");
    let refs: Vec<String> = e
        .see_also
        .iter()
        .map(|r| match r.split_once('(') {
            Some((page, sec)) => format!(".BR {} ({}", esc(page), sec),
            None => format!(".B {}", esc(r)),
        })
        .collect();
    let n = refs.len();
    for (i, r) in refs.into_iter().enumerate() {
        out.push_str(&r);
        out.push_str(if i + 1 < n { ",\n" } else { "\n" });
    }
    out.push_str("The documents: /usr/share/doc/vmtime/ (docs/*.md in the source tree).\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_has_examples_exit_status_and_see_also() {
        for name in ["vmtime", "vmtime-host", "vmtime-check", "vmtime-phc-read", "vmtime-anything"] {
            let r = roff(&extra(name));
            for s in [".SH EXAMPLES", ".SH \"EXIT STATUS\"", ".SH \"SEE ALSO\""] {
                assert!(r.contains(s), "{name}: no {s}\n{r}");
            }
        }
        let check = roff(&extra("vmtime-check"));
        assert!(check.contains(".B 3\nnot yet calibrated"), "{check}");
        assert!(check.contains(".SH FILES"));
        assert!(roff(&extra("vmtime-host")).contains(".BR vmtime\\-relay (1),"));
    }

    #[test]
    fn roff_escapes_what_would_be_read_as_requests() {
        assert_eq!(esc("--json"), "\\-\\-json");
        assert_eq!(esc(".hidden"), "\\&.hidden");
        assert_eq!(esc("a\\b"), "a\\eb");
    }
}
