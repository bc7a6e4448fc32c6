//! `vmtime show PAGE`: every field with its name and meaning, validation, and the time now.

use crate::page::Page;
use crate::values::AnyU64;
use anyhow::Result;
use clap::Args as ClapArgs;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use vmclock::abi::{self, field, flags, VmclockAbi};
use vmclock::{PageTime, Snapshot};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The page: /dev/vmclock0 or a page file [default: /dev/vmclock0; where that is absent
    /// and this machine publishes a host page (vmtime host), that page].
    pub(crate) page: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Compute the time at this counter value instead of now.
    #[arg(long)]
    pub(crate) counter: Option<AnyU64>,
}

/// A value with its name.
#[derive(Serialize)]
struct Named {
    value: u64,
    name: &'static str,
}

#[derive(Serialize)]
struct Fields {
    magic: u32,
    size: u32,
    version: u16,
    counter_id: Named,
    time_type: Named,
    seq_count: u32,
    disruption_marker: u64,
    flags: u64,
    flag_names: Vec<&'static str>,
    unknown_flags: u64,
    // Optional fields: null when beyond `size` (absent is not zero).
    clock_status: Option<Named>,
    leap_second_smearing_hint: Option<Named>,
    /// The field as stored: UTC − TAI (−37), or a legacy positive TAI − UTC.
    tai_offset_sec: Option<i16>,
    /// TAI − UTC (positive: 37), when TAI_OFFSET_VALID (a legacy positive value as it is).
    tai_minus_utc: Option<i16>,
    /// Whether the stored value is in the legacy convention (positive: TAI − UTC).
    tai_offset_legacy: bool,
    leap_indicator: Option<Named>,
    counter_period_shift: Option<u8>,
    counter_value: Option<u64>,
    counter_period_frac_sec: Option<u64>,
    counter_period_esterror_rate_frac_sec: Option<u64>,
    counter_period_maxerror_rate_frac_sec: Option<u64>,
    time_sec: Option<u64>,
    time_frac_sec: Option<u64>,
    time_esterror_nanosec: Option<u64>,
    time_maxerror_nanosec: Option<u64>,
    vm_generation_counter: Option<u64>,
}

#[derive(Serialize)]
struct TimeNow {
    counter: u64,
    timescale: &'static str,
    time: String,
    time_ns: u128,
    maxerror_ns: Option<u128>,
    esterror_ns: Option<u128>,
    earliest_ns: Option<u128>,
    latest_ns: Option<u128>,
    utc: Option<String>,
    tai: Option<String>,
}

#[derive(Serialize)]
struct Report {
    path: String,
    valid: bool,
    error: Option<String>,
    fields: Fields,
    frequency_hz: Option<f64>,
    period_esterror_ppb: Option<f64>,
    period_maxerror_ppb: Option<f64>,
    time_error: Option<String>,
    now: Option<TimeNow>,
}

fn named(value: u8, name: fn(u8) -> &'static str) -> Named {
    Named { value: value as u64, name: name(value) }
}

fn fields(a: &VmclockAbi, present_size: u32) -> Fields {
    let p = |f: abi::Field| f.present_in(present_size);
    let (flag_names, unknown_flags) = flags::names(a.flags.get());
    let tai_valid = p(field::TAI_OFFSET) && a.flags.get() & flags::TAI_OFFSET_VALID != 0;
    Fields {
        magic: a.magic.get(),
        size: a.size.get(),
        version: a.version.get(),
        counter_id: named(a.counter_id, abi::counter_name),
        time_type: named(a.time_type, abi::time_type_name),
        seq_count: a.seq_count.get(),
        disruption_marker: a.disruption_marker.get(),
        flags: a.flags.get(),
        flag_names,
        unknown_flags,
        clock_status: p(field::CLOCK_STATUS).then(|| named(a.clock_status, abi::status_name)),
        leap_second_smearing_hint: p(field::SMEARING_HINT)
            .then(|| named(a.leap_second_smearing_hint, abi::smearing_name)),
        tai_offset_sec: p(field::TAI_OFFSET).then(|| a.tai_offset_sec.get() as i16),
        tai_minus_utc: tai_valid.then(|| abi::tai_offset::tai_minus_utc(a.tai_offset_sec.get() as i16)).flatten(),
        tai_offset_legacy: tai_valid && abi::tai_offset::is_legacy(a.tai_offset_sec.get() as i16),
        leap_indicator: p(field::LEAP_INDICATOR).then(|| named(a.leap_indicator, abi::leap_name)),
        counter_period_shift: p(field::PERIOD_SHIFT).then_some(a.counter_period_shift),
        counter_value: p(field::COUNTER_VALUE).then(|| a.counter_value.get()),
        counter_period_frac_sec: p(field::PERIOD).then(|| a.counter_period_frac_sec.get()),
        counter_period_esterror_rate_frac_sec: p(field::PERIOD_ESTERROR)
            .then(|| a.counter_period_esterror_rate_frac_sec.get()),
        counter_period_maxerror_rate_frac_sec: p(field::PERIOD_MAXERROR)
            .then(|| a.counter_period_maxerror_rate_frac_sec.get()),
        time_sec: p(field::TIME_SEC).then(|| a.time_sec.get()),
        time_frac_sec: p(field::TIME_FRAC).then(|| a.time_frac_sec.get()),
        time_esterror_nanosec: p(field::TIME_ESTERROR).then(|| a.time_esterror_nanosec.get()),
        time_maxerror_nanosec: p(field::TIME_MAXERROR).then(|| a.time_maxerror_nanosec.get()),
        vm_generation_counter: p(field::VM_GENERATION).then(|| a.vm_generation_counter.get()),
    }
}

/// A period-unit rate as parts per billion of the period.
fn ppb(rate: u64, period: u64) -> f64 {
    rate as f64 / period as f64 * 1e9
}

fn time_now(snap: &Snapshot, counter: u64) -> Result<TimeNow, vmclock::TimeError> {
    let t: PageTime = snap.time_at(counter)?;
    let raw = t.raw();
    let ns = |x: u128| vmclock::Timestamp::<vmclock::Tai>::from_raw(x).as_nanos();
    let maxerror = t.maxerror();
    Ok(TimeNow {
        counter,
        timescale: t.timescale(),
        time: t.display(),
        time_ns: ns(raw),
        maxerror_ns: maxerror.map(vmclock::snapshot::frac_to_nanos_ceil),
        esterror_ns: t.esterror().map(vmclock::snapshot::frac_to_nanos_ceil),
        earliest_ns: maxerror.map(|e| ns(raw.saturating_sub(e))),
        latest_ns: maxerror.map(|e| ns(raw.saturating_add(e))),
        utc: snap.utc_at(counter).ok().map(|b| b.time.to_string()),
        tai: snap.tai_at(counter).ok().map(|b| b.time.to_string()),
    })
}

fn report(path: &str, bytes: &[u8; abi::ABI_SIZE], available: usize, counter: Option<u64>) -> Report {
    let a = VmclockAbi::from_le_bytes(bytes);
    let validated = Snapshot::decode(bytes, available);
    if let Ok(s) = &validated {
        crate::page::warn_legacy_tai(std::path::Path::new(path), s);
    }
    // For an invalid page, show what its bytes say as far as they are available.
    let present_size = a.size.get().min(available as u32);
    let fields = fields(&a, present_size);
    let (mut frequency_hz, mut period_esterror_ppb, mut period_maxerror_ppb) = (None, None, None);
    let (mut time_error, mut now) = (None, None);
    if let Ok(snap) = &validated {
        if let (Some(period), Some(shift)) = (snap.counter_period(), snap.counter_period_shift()) {
            if period != 0 {
                frequency_hz = Some(2f64.powi(64 + shift as i32) / period as f64);
                period_esterror_ppb = snap.period_esterror().map(|r| ppb(r, period));
                period_maxerror_ppb = snap.period_maxerror().map(|r| ppb(r, period));
            }
        }
        let c = counter.unwrap_or_else(vmclock::counter::read);
        let counter_ok = counter.is_some() || snap.counter_id() == vmclock::counter::NATIVE;
        match time_now(snap, c) {
            Ok(t) if counter_ok => now = Some(t),
            Ok(_) => {
                time_error = Some(format!(
                    "the page's counter is {} but this CPU reads {}: give --counter to evaluate it",
                    abi::counter_name(snap.counter_id()),
                    abi::counter_name(vmclock::counter::NATIVE)
                ))
            }
            Err(e) => time_error = Some(e.to_string()),
        }
    }
    Report {
        path: path.to_string(),
        valid: validated.is_ok(),
        error: validated.err().map(|e| e.to_string()),
        fields,
        frequency_hz,
        period_esterror_ppb,
        period_maxerror_ppb,
        time_error,
        now,
    }
}

/// Every field of a page's bytes as a flat JSON object (absent fields are null).
pub fn fields_json(bytes: &[u8; abi::ABI_SIZE], available: usize) -> serde_json::Value {
    let a = VmclockAbi::from_le_bytes(bytes);
    serde_json::to_value(fields(&a, a.size.get().min(available as u32))).unwrap_or_default()
}

/// A short summary of a page's fields.
pub fn one_line(f: &serde_json::Value) -> String {
    format!(
        "status {} time_type {} marker {} tai_minus_utc {} maxerror_ns {} leap {}",
        f["clock_status"]["name"],
        f["time_type"]["name"],
        f["disruption_marker"],
        f["tai_minus_utc"],
        f["time_maxerror_nanosec"],
        f["leap_indicator"]["name"]
    )
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "absent (beyond size)".to_string(), |x| x.to_string())
}

fn status_meaning(s: u64) -> &'static str {
    match s as u8 {
        abi::status::UNKNOWN => "nothing is known of the clock",
        abi::status::INITIALIZING => "the host is still calibrating",
        abi::status::SYNCHRONIZED => "the host clock is synchronised to a reference",
        abi::status::FREERUNNING => "the host clock runs without a reference (holdover)",
        abi::status::UNRELIABLE => "the time data must not be used",
        _ => "reserved value",
    }
}

fn leap_meaning(l: u64) -> &'static str {
    match l as u8 {
        abi::leap::NONE => "no known nearby leap second",
        abi::leap::PRE_POS => "a leap second will be inserted at the end of the month",
        abi::leap::PRE_NEG => "a leap second will be deleted at the end of the month",
        abi::leap::POS => "the inserted second 23:59:60 is in progress",
        abi::leap::POST_POS => "a leap second was recently inserted",
        abi::leap::POST_NEG => "a leap second was recently deleted",
        _ => "reserved value",
    }
}

fn print_human(r: &Report) {
    let f = &r.fields;
    let row = |name: &str, value: String, meaning: &str| {
        if meaning.is_empty() {
            println!("  {name:<38} {value}");
        } else {
            println!("  {name:<38} {value:<22} {meaning}");
        }
    };
    match &r.error {
        None => println!("{}: valid vmclock page", r.path),
        Some(e) => println!("{}: INVALID: {e}", r.path),
    }
    row("magic", format!("{:#010x}", f.magic), if f.magic == abi::MAGIC { "\"VCLK\"" } else { "not \"VCLK\"" });
    row("size", f.size.to_string(), "bytes of the region holding the structure");
    row("version", f.version.to_string(), "");
    row(
        "counter_id",
        format!("{} {}", f.counter_id.value, f.counter_id.name),
        &format!("this CPU: {}", abi::counter_name(vmclock::counter::NATIVE)),
    );
    row("time_type", format!("{} {}", f.time_type.value, f.time_type.name), "");
    row(
        "seq_count",
        f.seq_count.to_string(),
        if f.seq_count % 2 == 0 { "even: stable" } else { "odd: update in progress" },
    );
    row(
        "disruption_marker",
        format!("{:#x}", f.disruption_marker),
        "changes when the counter's calibration is disrupted",
    );
    row("flags", format!("{:#x}", f.flags), &f.flag_names.join(" | "));
    if f.unknown_flags != 0 {
        row("", format!("{:#x}", f.unknown_flags), "unknown bits");
    }
    match &f.clock_status {
        Some(s) => row("clock_status", format!("{} {}", s.value, s.name), status_meaning(s.value)),
        None => row("clock_status", opt::<u8>(&None), ""),
    }
    match &f.leap_second_smearing_hint {
        Some(s) => row(
            "leap_second_smearing_hint",
            format!("{} {}", s.value, s.name),
            "a hint only: the page's time is never smeared",
        ),
        None => row("leap_second_smearing_hint", opt::<u8>(&None), ""),
    }
    let tai_valid = f.flags & flags::TAI_OFFSET_VALID != 0;
    let tai_meaning = match (f.tai_offset_sec, f.tai_minus_utc) {
        (None, _) => String::new(),
        (Some(_), None) if !tai_valid => "not valid (TAI_OFFSET_VALID clear)".to_string(),
        (Some(_), None) => "valid but unusable (no TAI − UTC has this magnitude)".to_string(),
        (Some(_), Some(o)) if f.tai_offset_legacy => {
            format!("legacy sign (positive: TAI − UTC, as the RFC host wrote it): TAI − UTC = {o} s")
        }
        (Some(_), Some(o)) => format!("UTC − TAI as stored, valid: TAI − UTC = {o} s"),
    };
    row("tai_offset_sec", opt(&f.tai_offset_sec), &tai_meaning);
    match &f.leap_indicator {
        Some(s) => row("leap_indicator", format!("{} {}", s.value, s.name), leap_meaning(s.value)),
        None => row("leap_indicator", opt::<u8>(&None), ""),
    }
    row("counter_period_shift", opt(&f.counter_period_shift), "");
    row("counter_value", opt(&f.counter_value), "the counter of the reference pair");
    let freq = r.frequency_hz.map(|hz| format!("{:.3} ns/tick, {:.3} Hz", 1e9 / hz, hz)).unwrap_or_default();
    row(
        "counter_period_frac_sec",
        f.counter_period_frac_sec.map(|v| format!("{v:#018x}")).unwrap_or_else(|| opt::<u8>(&None)),
        &freq,
    );
    let valid = |bit: u64, extra: Option<f64>| -> String {
        let v = if f.flags & bit != 0 { "valid" } else { "not valid" };
        extra.map_or(v.to_string(), |x| format!("{v}, {x:.3} ppb"))
    };
    row(
        "counter_period_esterror_rate_frac_sec",
        opt(&f.counter_period_esterror_rate_frac_sec),
        &valid(flags::PERIOD_ESTERROR_VALID, r.period_esterror_ppb),
    );
    row(
        "counter_period_maxerror_rate_frac_sec",
        opt(&f.counter_period_maxerror_rate_frac_sec),
        &valid(flags::PERIOD_MAXERROR_VALID, r.period_maxerror_ppb),
    );
    row("time_sec", opt(&f.time_sec), "");
    row("time_frac_sec", f.time_frac_sec.map(|v| format!("{v:#018x}")).unwrap_or_else(|| opt::<u8>(&None)), "2^-64 s");
    row("time_esterror_nanosec", opt(&f.time_esterror_nanosec), &valid(flags::TIME_ESTERROR_VALID, None));
    row("time_maxerror_nanosec", opt(&f.time_maxerror_nanosec), &valid(flags::TIME_MAXERROR_VALID, None));
    row(
        "vm_generation_counter",
        opt(&f.vm_generation_counter),
        if f.flags & flags::VM_GEN_COUNTER_PRESENT != 0 {
            "maintained (VM_GEN_COUNTER_PRESENT)"
        } else {
            "not maintained"
        },
    );
    if let Some(t) = &r.now {
        println!("time at counter {}:", t.counter);
        println!("  {:<38} {}", "time", t.time);
        if let Some(u) = &t.utc {
            if t.timescale != "UTC" {
                println!("  {:<38} {u}", "as UTC");
            }
        }
        if let Some(u) = &t.tai {
            if t.timescale != "TAI" {
                println!("  {:<38} {u}", "as TAI");
            }
        }
        match t.maxerror_ns {
            Some(e) => println!(
                "  {:<38} ±{e} ns (earliest {} ns, latest {} ns)",
                "maximum error",
                t.earliest_ns.unwrap(),
                t.latest_ns.unwrap()
            ),
            None => println!("  {:<38} unknown (the page does not bound it)", "maximum error"),
        }
        if let Some(e) = t.esterror_ns {
            println!("  {:<38} ±{e} ns", "estimated error");
        }
    }
    if let Some(e) = &r.time_error {
        println!("time: none: {e}");
    }
}

pub fn run(a: Args) -> Result<ExitCode> {
    let path = crate::paths::page_or_default(a.page);
    let page = Page::open(&path)?;
    let bytes = page.bytes().map_err(anyhow::Error::from)?;
    let r = report(&path.display().to_string(), &bytes, page.available(), a.counter.map(AnyU64::get));
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_human(&r);
    }
    Ok(if r.valid { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
