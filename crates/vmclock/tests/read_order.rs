//! The counter is read inside the seqlock (spec, Linux driver): a page that changes between the
//! copy and the counter read (a migration or restore at the worst moment) is seen, and the read
//! retried, so a time never pairs a stale page with a counter of the new one.
#![cfg(not(loom))]
use std::cell::Cell;
use vmclock::abi::{self, status};
use vmclock::seqlock::{self, PageMemory};
use vmclock::{now_at, Clock, PageBuf, PageBuilder, Period, Tai, Timestamp, Writer};

/// The page before (marker 1: counter 1_000 at T) and after a migration (marker 2: the counter
/// jumped to 5_000_000 and the new page says so).
fn page(marker: u64, counter: u64) -> vmclock::VmclockAbi {
    PageBuilder::new()
        .reference(
            vmclock::counter::NATIVE,
            counter,
            Timestamp::<Tai>::from_parts(1_795_000_037, 0),
            Period::from_hz(1_000_000_000).unwrap(),
        )
        .tai_minus_utc(37)
        .status(status::SYNCHRONIZED)
        .maxerror(1_000, 1 << 20)
        .disruption_marker(marker)
        .build()
}

/// A page memory and a counter that models the race deterministically: the first counter read
/// happens "after" the hypervisor republished the page (the copy was already taken).
struct Race<'a> {
    writer: std::cell::RefCell<Writer<&'a PageBuf>>,
    reads: Cell<u32>,
}

impl Race<'_> {
    fn counter(&self) -> u64 {
        let n = self.reads.get();
        self.reads.set(n + 1);
        if n == 0 {
            // Between the copy and this counter read: the migration lands.
            self.writer.borrow_mut().publish(&page(2, 5_000_000));
        }
        5_000_123 // a counter of the new host
    }
}

#[test]
fn a_page_changed_between_copy_and_counter_is_never_paired_with_the_new_counter() {
    if vmclock::counter::NATIVE == abi::counter_id::INVALID {
        return; // no counter on this architecture: Clock refuses every page
    }
    // The old order (copy validated first, counter read after): stale page, new counter.
    let buf = PageBuf::new();
    let mut w = Writer::new(&buf);
    w.publish(&page(1, 1_000));
    let race = Race { writer: std::cell::RefCell::new(w), reads: Cell::new(0) };
    let snap = seqlock::read(&buf, seqlock::DEFAULT_MAX_WAIT).unwrap();
    let old = now_at(&snap, race.counter()).unwrap();
    assert_eq!(old.disruption_marker, 1, "the old order pairs the stale page...");
    assert_eq!(old.counter, 5_000_123, "... with the new counter");
    // 5 ms of a 1 GHz counter read against the old page's reference: the time is off by 5 ms,
    // and nothing in the result says so (the marker is the old one).
    assert!(old.raw > (1_795_000_037u128 << 64) + (4u128 << 64) / 1000);

    // The spec's order: seq, copy, counter, fence, seq. The same race is seen and retried.
    let buf = PageBuf::new();
    let mut w = Writer::new(&buf);
    w.publish(&page(1, 1_000));
    let clock = Clock::new(&buf);
    assert_eq!(clock.now_with_counter(|| 1_000).unwrap().disruption_marker, 1); // constants checked
    let race = Race { writer: std::cell::RefCell::new(w), reads: Cell::new(0) };
    let now = clock.now_with_counter(|| race.counter()).unwrap();
    assert_eq!(race.reads.get(), 2, "the first attempt was discarded");
    assert_eq!(now.disruption_marker, 2, "the time comes from the page current at the counter read");
    assert_eq!(now.counter, 5_000_123);
    let new = seqlock::read(&buf, seqlock::DEFAULT_MAX_WAIT).unwrap();
    assert_eq!(now, now_at(&new, 5_000_123).unwrap(), "exactly the new page's time at that counter");
    let t = now.tai().unwrap();
    assert_eq!((t.time.sec(), t.time.subsec_nanos() / 10), (1_795_000_037, 12), "123 ns after the new reference");
    assert!(buf.available() >= 4096);
}

/// The fast path checks the constant fields once, but a page whose constant word changes (a
/// non-conforming producer) is checked again, never read with stale constants.
#[test]
fn constant_fields_are_checked_once_and_again_if_they_change() {
    if vmclock::counter::NATIVE == abi::counter_id::INVALID {
        return;
    }
    let buf = PageBuf::new();
    let mut w = Writer::new(&buf);
    w.publish(&page(1, 0));
    let clock = Clock::new(&buf);
    assert_eq!(clock.now_with_counter(|| 0).unwrap().time_type, abi::time_type::TAI);
    let mut utc = page(1, 0);
    utc.time_type = abi::time_type::UTC;
    w.publish(&utc);
    assert_eq!(clock.now_with_counter(|| 0).unwrap().time_type, abi::time_type::UTC);
    let mut foreign = page(1, 0);
    foreign.counter_id = if vmclock::counter::NATIVE == abi::counter_id::X86_TSC {
        abi::counter_id::ARM_VCNT
    } else {
        abi::counter_id::X86_TSC
    };
    w.publish(&foreign);
    assert!(clock.now_with_counter(|| 0).is_err(), "another CPU's counter is refused");
    // Absent error fields (size ends before time_maxerror_nanosec) are unbounded, not zero.
    let buf = PageBuf::new();
    let mut w = Writer::new(&buf);
    let mut short = page(1, 0);
    short.size.set(0x60);
    w.publish(&short);
    let n = Clock::new(&buf).now_with_counter(|| 0).unwrap();
    assert_eq!(n.maxerror, None);
}
