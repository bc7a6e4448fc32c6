//! `vmtime watch PAGE`: prints each update of a page with the fields that changed. Waits on the
//! publisher's socket when there is one (PAGE.sock), else polls the page. A host page may stay
//! the same for minutes (it is republished only when it drifted), so while nothing changes a
//! state line goes to stderr every `--heartbeat-s`: watch is alive, and the page still says this.

use crate::page::FollowedPage;
use crate::values::{Count, DurationS, PollMs};
use anyhow::Result;
use clap::Args as ClapArgs;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use vmtime_sys::serve::{self, Poller, Subscription};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The page: /dev/vmclock0 or a page file [default: /dev/vmclock0; where that is absent
    /// and this machine publishes a host page (vmtime host), that page].
    page: Option<PathBuf>,
    /// Stop after this many updates.
    #[arg(long)]
    count: Option<Count>,
    /// Poll interval when no notification is available, ms.
    #[arg(long, default_value = "10")]
    poll_ms: PollMs,
    /// While the page stays the same, a state line on stderr this often, s.
    #[arg(long, default_value = "10")]
    heartbeat_s: DurationS,
}

fn changes(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else { return vec![] };
    n.iter().filter(|(k, v)| o.get(*k) != Some(v) && *k != "seq_count").map(|(k, v)| format!("{k}={v}")).collect()
}

pub fn run(a: Args) -> Result<ExitCode> {
    let path = crate::paths::page_or_default(a.page);
    let mut page = FollowedPage::open(&path)?;
    let read = |page: &FollowedPage| -> Result<serde_json::Value> {
        let (bytes, available) = page.reader().bytes()?;
        Ok(crate::commands::show::fields_json(&bytes, available))
    };
    let mut last = read(&page)?;
    println!("seq {}: {}", last["seq_count"], crate::commands::show::one_line(&last));
    let socket = crate::paths::socket_for(&path);
    // The subscription is a wake-up only: the page is read after each one, and also every
    // poll interval when the publisher is silent or gone (it may be stuck; the page is not).
    let mut sub = Subscription::open(&socket, crate::ops::control::CLIENT_TIMEOUT).ok();
    let poll = Duration::from_millis(a.poll_ms.get());
    let heartbeat = Duration::from_secs(a.heartbeat_s.get());
    eprintln!(
        "(watching {}: {}; each update on stdout, and while none comes a state line every {} s on stderr)",
        path.display(),
        if sub.is_some() {
            format!("notified by {}", socket.display())
        } else {
            format!("polled every {} ms", poll.as_millis())
        },
        heartbeat.as_secs()
    );
    let mut quiet_since = Instant::now();
    let mut beat = Instant::now();
    let mut poller = Poller::new();
    let mut seen = 0u64;
    let mut unreadable = false;
    while a.count.is_none_or(|c| seen < c.get()) {
        poller.clear();
        let t = sub.as_ref().map(|s| poller.add(s.fd(), serve::READABLE));
        poller.wait(Some(if sub.is_some() { poll.max(Duration::from_secs(1)) } else { poll }))?;
        if t.is_some_and(|t| poller.readable(t)) && !sub.as_mut().is_some_and(|s| s.drain()) {
            eprintln!("the publisher went away: polling the page every {} ms", poll.as_millis());
            sub = None;
        }
        if page.refresh() {
            eprintln!("the page file was replaced: following the new file");
        }
        let now = match read(&page) {
            Ok(v) => v,
            Err(e) => {
                // A truncated or unreadable page: say so once, keep watching.
                if !std::mem::replace(&mut unreadable, true) {
                    eprintln!("{e:#}");
                }
                continue;
            }
        };
        unreadable = false;
        if now["seq_count"] == last["seq_count"] && beat.elapsed() >= heartbeat {
            beat = Instant::now();
            eprintln!(
                "seq {}: unchanged for {} s: {}",
                now["seq_count"],
                quiet_since.elapsed().as_secs(),
                crate::commands::show::one_line(&now)
            );
        }
        if now["seq_count"] != last["seq_count"] {
            quiet_since = Instant::now();
            beat = Instant::now();
            seen += 1;
            let ch = changes(&last, &now);
            println!(
                "seq {}: {}",
                now["seq_count"],
                if ch.is_empty() { "no field changed".into() } else { ch.join(" ") }
            );
            last = now;
        }
    }
    Ok(ExitCode::SUCCESS)
}
