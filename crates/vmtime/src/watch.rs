//! `vmtime watch PAGE`: prints each update of a page with the fields that changed. Waits on the
//! publisher's socket when there is one (PAGE.sock), else polls the page.

use crate::page::Page;
use crate::values::{Count, PollMs};
use anyhow::Result;
use clap::Args as ClapArgs;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The page: /dev/vmclock0 or a page file.
    #[arg(default_value = crate::DEFAULT_GUEST_PAGE)]
    page: PathBuf,
    /// Stop after this many updates.
    #[arg(long)]
    count: Option<Count>,
    /// Poll interval when no notification is available, ms.
    #[arg(long, default_value = "10")]
    poll_ms: PollMs,
}

fn changes(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else { return vec![] };
    n.iter().filter(|(k, v)| o.get(*k) != Some(v) && *k != "seq_count").map(|(k, v)| format!("{k}={v}")).collect()
}

pub fn run(a: Args) -> Result<ExitCode> {
    let page = Page::open(&a.page)?;
    let read = || -> Result<serde_json::Value> { Ok(crate::show::fields_json(&page.bytes()?, page.available())) };
    let mut last = read()?;
    println!("seq {}: {}", last["seq_count"], crate::show::one_line(&last));
    let socket = crate::host::socket_for(&a.page);
    let mut sub = crate::status::request(&socket, "subscribe").ok().map(|(_, s)| BufReader::new(s));
    if sub.is_some() {
        eprintln!("(notified by {})", socket.display());
    }
    let mut seen = 0u64;
    while a.count.is_none_or(|c| seen < c.get()) {
        match sub.as_mut() {
            Some(r) => {
                let mut line = String::new();
                if r.read_line(&mut line)? == 0 {
                    eprintln!("the publisher went away");
                    return Ok(ExitCode::from(1));
                }
            }
            None => std::thread::sleep(Duration::from_millis(a.poll_ms.get())),
        }
        let now = read()?;
        if now["seq_count"] != last["seq_count"] {
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
