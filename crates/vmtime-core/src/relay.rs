//! The VMM relay: turns the host page into each guest's page, in the guest's counter domain, and
//! owns each guest's disruption marker and generation counter.
//!
//! KVM gives a guest `guest_tsc = ((host_tsc · ratio) >> frac_bits) + offset` (mod 2^64; Intel
//! uses 48 fraction bits, AMD 32; arm64 an offset only). The guest page keeps the host's
//! reference time, maps `counter_value`, divides the period by the ratio (renormalising the
//! shift to keep 64 significant bits), scales the period error rates likewise, and widens the
//! time bounds by what the mapping's truncation can add (one guest tick, rounded up to ns).

use serde::{Deserialize, Serialize};
use thiserror::Error;
use vmclock::abi::{flags, VmclockAbi};
use vmclock::seqlock::WritableMemory;
use vmclock::{Snapshot, Writer};

/// `guest = ((host · ratio) >> frac_bits) + offset`, mod 2^64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterMap {
    /// Added after scaling (wrapping).
    pub offset: u64,
    /// Scale factor in 2^-frac_bits units (1 << frac_bits is 1.0).
    pub ratio: u64,
    /// Fraction bits of `ratio` (KVM: 48 on Intel, 32 on AMD).
    pub frac_bits: u8,
}

/// Why a map or a transform is refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RelayError {
    /// A ratio of 0, or fraction bits beyond 63.
    #[error("invalid counter map: ratio {ratio} with {frac_bits} fraction bits")]
    BadMap {
        /// The ratio.
        ratio: u64,
        /// The fraction bits.
        frac_bits: u8,
    },
    /// The guest period does not fit the page's representation.
    #[error("the guest period cannot be represented (ratio too far from 1)")]
    PeriodRange,
    /// The host page's counter period is 0: it relates no counter to time, whatever the map.
    #[error("the host page's counter period is 0 (counter_period_frac_sec and shift relate no counter to time): it cannot be mapped to the guest's counter")]
    ZeroPeriod,
    /// The host page claims time the guest could not read or should not believe: it is not
    /// relayed (the guest page keeps its last update: holdover).
    #[error("the host page is not relayed: {0}")]
    BadHostPage(HostFault),
}

/// Why a host page that claims time (a counter and the time fields) is not relayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostFault {
    /// Its counter-to-time relation cannot be used (a shift of 128 or more, a reserved time
    /// type).
    Unusable(vmclock::TimeError),
    /// Its time type is not one the guest page's can be given in (MONOTONIC for a UTC or TAI
    /// guest page).
    TimeType {
        /// The host page's.
        host: u8,
        /// The guest page's.
        guest: u8,
    },
    /// Its time at its reference is outside the believable range, or overflows.
    Implausible(Option<crate::sanity::Implausible>),
}

impl std::fmt::Display for HostFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostFault::Unusable(e) => write!(f, "its time cannot be used ({e})"),
            HostFault::TimeType { host, guest } => write!(
                f,
                "its time type changed to {} and the guest page's is {}",
                vmclock::abi::time_type_name(*host),
                vmclock::abi::time_type_name(*guest)
            ),
            HostFault::Implausible(Some(why)) => write!(f, "{why}"),
            HostFault::Implausible(None) => f.write_str("its time overflows"),
        }
    }
}

/// Whether a host page may be relayed to a guest page of time type `guest_time_type`: a page
/// without time (no counter, or no time fields) always may; one that claims time must give a
/// usable relation, in a time type the guest page's can be given in, at a believable time: at its
/// reference, and at `now`, the host counter's current value when the caller knows it (a
/// reference counter far from now puts the time guests read far from the reference's).
pub fn host_fault(host: &Snapshot, guest_time_type: u8, now: Option<u64>) -> Option<HostFault> {
    use vmclock::abi::time_type;
    if host.counter_id() == vmclock::abi::counter_id::INVALID || host.time_frac_sec().is_none() {
        return None;
    }
    let r = match host.reference() {
        Ok(r) => r,
        Err(e) => return Some(HostFault::Unusable(e)),
    };
    let convertible = |t: u8| matches!(t, time_type::UTC | time_type::TAI);
    if r.time_type != guest_time_type && !(convertible(r.time_type) && convertible(guest_time_type)) {
        return Some(HostFault::TimeType { host: r.time_type, guest: guest_time_type });
    }
    if r.time_type == time_type::MONOTONIC {
        return None;
    }
    // UTC there: a TAI page without its offset is judged by its TAI (37 s off at most: nothing
    // the range cares about).
    for c in std::iter::once(r.counter_value).chain(now) {
        let t = match host.utc_at(c) {
            Ok(u) => u.time.raw(),
            Err(_) => match r.time_at(c) {
                Ok(t) => t.raw(),
                Err(_) => return Some(HostFault::Implausible(None)),
            },
        };
        if let Err(e) = crate::sanity::check_utc(i128::try_from(t).unwrap_or(i128::MAX)) {
            return Some(HostFault::Implausible(Some(e)));
        }
    }
    None
}

impl CounterMap {
    /// The identity: the guest sees the host counter.
    pub const IDENTITY: CounterMap = CounterMap { offset: 0, ratio: 1, frac_bits: 0 };

    /// A map, checked.
    pub fn new(offset: u64, ratio: u64, frac_bits: u8) -> Result<Self, RelayError> {
        if ratio == 0 || frac_bits > 63 {
            return Err(RelayError::BadMap { ratio, frac_bits });
        }
        Ok(CounterMap { offset, ratio, frac_bits })
    }

    /// An offset only (arm64, or no TSC scaling).
    pub fn offset_only(offset: u64) -> Self {
        CounterMap { offset, ratio: 1, frac_bits: 0 }
    }

    /// The guest counter for a host counter value, exactly as KVM computes it.
    #[inline]
    pub fn guest(&self, host: u64) -> u64 {
        (((host as u128 * self.ratio as u128) >> self.frac_bits) as u64).wrapping_add(self.offset)
    }

    /// Whether this is the identity.
    pub fn is_identity(&self) -> bool {
        self.offset == 0 && self.ratio == 1u64 << self.frac_bits
    }
}

/// round(n / d · 2^k) normalised into [2^63, 2^64), with its k. `None` for n = 0.
fn normalise(n: u128, d: u64) -> Option<(u64, i32)> {
    if n == 0 || d == 0 {
        return None;
    }
    let d128 = d as u128;
    let mut q = n / d128;
    let mut k = 0i32;
    if q >> 64 != 0 {
        // Too large: divide by 2^j with j chosen so the quotient has 65 bits, then round.
        let j = 128 - q.leading_zeros() as i32 - 65;
        let q65 = n / (d128 << j); // d < 2^64 and j ≤ 63: fits
        let m = (q65 + 1) >> 1;
        return if m >> 64 != 0 { Some(((m >> 1) as u64, -j - 2)) } else { Some((m as u64, -j - 1)) };
    }
    let mut r = n % d128;
    while q >> 64 == 0 {
        q <<= 1;
        r <<= 1;
        if r >= d128 {
            r -= d128;
            q |= 1;
        }
        k += 1;
    }
    // q has 65 bits at scale 2^k: round off the last one.
    let m = (q + 1) >> 1;
    if m >> 64 != 0 {
        Some(((m >> 1) as u64, k - 2))
    } else {
        Some((m as u64, k - 1))
    }
}

/// ceil(a · 2^e / d), saturating at u64::MAX.
fn scale_ceil(a: u64, e: i32, d: u64) -> u64 {
    if a == 0 {
        return 0;
    }
    let (num, den) = if e >= 0 {
        if 64 - a.leading_zeros() as i32 + e > 127 {
            return u64::MAX;
        }
        ((a as u128) << e, d as u128)
    } else {
        if -e >= 64 {
            return 1; // tiny but not zero: stay conservative
        }
        (a as u128, (d as u128) << -e)
    };
    u64::try_from(num.div_ceil(den)).unwrap_or(u64::MAX)
}

/// The guest page for a host page under `map` (markers and the two embedder flags are the
/// caller's). A host page without time is copied as it is, except that a legacy TAI offset
/// (positive, TAI − UTC) is written in the driver's convention (UTC − TAI, negative).
pub fn transform(host: &Snapshot, map: &CounterMap) -> Result<VmclockAbi, RelayError> {
    let mut g = *host.raw();
    if host.tai_offset_is_legacy() {
        if let Some(v) = host.tai_minus_utc() {
            g.tai_offset_sec.set(vmclock::abi::tai_offset::stored(v) as u16);
        }
    }
    let Ok(r) = host.reference() else {
        return Ok(g);
    };
    if map.is_identity() {
        return Ok(g);
    }
    if r.period == 0 {
        return Err(RelayError::ZeroPeriod);
    }
    // P_g = P_h · 2^fb / ratio (units 2^-(64+s_h)), renormalised to units 2^-(64+s_g).
    let n = (r.period as u128) << map.frac_bits;
    let (frac, k) = normalise(n, map.ratio).ok_or(RelayError::PeriodRange)?;
    let shift = r.shift as i32 + k;
    if !(0..=127).contains(&shift) {
        return Err(RelayError::PeriodRange);
    }
    g.counter_value.set(map.guest(r.counter_value));
    g.counter_period_frac_sec.set(frac);
    g.counter_period_shift = shift as u8;
    let e = map.frac_bits as i32 + k;
    let est = g.counter_period_esterror_rate_frac_sec.get();
    g.counter_period_esterror_rate_frac_sec.set(scale_ceil(est, e, map.ratio));
    let max = g.counter_period_maxerror_rate_frac_sec.get();
    g.counter_period_maxerror_rate_frac_sec.set(scale_ceil(max, e, map.ratio));
    // The mapping truncates: a guest counter can lag the exact image of a host counter by less
    // than one guest tick, at the reference and at the reading. Widen by one tick, in ns, up.
    let tick_ns = ((frac as u128 * 1_000_000_000) >> (64 + shift as u32).min(127)) as u64 + 1;
    for (field, valid) in [
        (&mut g.time_maxerror_nanosec, flags::TIME_MAXERROR_VALID),
        (&mut g.time_esterror_nanosec, flags::TIME_ESTERROR_VALID),
    ] {
        if host.has(valid) {
            field.set(field.get().saturating_add(tick_ns));
        }
    }
    Ok(g)
}

/// What a relay remembers for one guest; serialisable, so markers survive a VMM restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestState {
    /// The guest's counter map.
    pub map: CounterMap,
    /// The guest's disruption marker.
    pub disruption_marker: u64,
    /// The guest's VM generation counter.
    pub vm_generation: u64,
    /// The host marker last relayed (a host disruption is the guest's too).
    pub last_host_marker: Option<u64>,
    /// Whether the embedder notifies the guest (NOTIFICATION_PRESENT).
    pub notify: bool,
    /// The guest page's constant fields (counter_id, time_type), fixed when the page is created
    /// and kept across host and relay restarts (`None` in state saved by older versions: fixed
    /// by the next host page).
    #[serde(default)]
    pub constants: Option<(u8, u8)>,
    /// The guest page was overwritten (a migration or a restore brought another page along) and
    /// the counter map in force is not known yet: the guest's pages carry no time until it is
    /// confirmed ([`GuestRelay::migrated_in`], [`GuestRelay::confirm_map`]).
    #[serde(default)]
    pub map_pending: bool,
}

/// One guest's relay: markers and transform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestRelay {
    state: GuestState,
    unconvertible: bool,
    /// The host page's (counter_id, time_type) last relayed.
    last_host_constants: Option<(u8, u8)>,
}

/// The guest page for a host page of another time type: the time moved by TAI − UTC (the host's
/// valid offset), or `None` without one.
fn convert_time_type(g: &mut VmclockAbi, host: &Snapshot, to: u8) -> Option<()> {
    let o = host.tai_minus_utc()? as i128;
    let shift = if to == vmclock::abi::time_type::TAI { o } else { -o };
    let t = ((g.time_sec.get() as i128) << 64 | g.time_frac_sec.get() as i128) + (shift << 64);
    let t = u128::try_from(t).ok()?;
    g.time_sec.set((t >> 64) as u64);
    g.time_frac_sec.set(t as u64);
    g.time_type = to;
    Some(())
}

impl GuestRelay {
    /// A new guest: `seed` starts both markers (a fresh random value).
    pub fn new(map: CounterMap, seed: u64, notify: bool) -> Self {
        GuestRelay {
            state: GuestState {
                map,
                disruption_marker: seed,
                vm_generation: seed.rotate_left(32),
                last_host_marker: None,
                notify,
                constants: None,
                map_pending: false,
            },
            unconvertible: false,
            last_host_constants: None,
        }
    }

    /// A guest restored from saved state (a VMM restart).
    pub fn from_state(state: GuestState) -> Self {
        GuestRelay { state, unconvertible: false, last_host_constants: None }
    }

    /// Fixes the guest page's constant fields (counter_id, time_type) if they are not fixed yet;
    /// returns the ones in force. A relay fixes them when it creates the guest page, from the
    /// host page then current; they never change afterwards.
    pub fn fix_constants(&mut self, counter_id: u8, time_type: u8) -> (u8, u8) {
        *self.state.constants.get_or_insert((counter_id, time_type))
    }

    /// The page to write when the guest page is created, before the first host page is relayed:
    /// the constant fields, the markers, status UNRELIABLE (no time yet: the Linux driver refuses
    /// reads only on UNRELIABLE). `None` until the constants are fixed.
    pub fn placeholder(&self) -> Option<vmclock::PageBuilder> {
        self.placeholder_for(None)
    }

    /// The placeholder, with the host page's TAI − UTC when it has a valid one (so a guest
    /// driver probing the placeholder registers its PTP clock).
    pub fn placeholder_for(&self, host: Option<&Snapshot>) -> Option<vmclock::PageBuilder> {
        let (counter_id, time_type) = self.state.constants?;
        let b = match host.and_then(Snapshot::tai_minus_utc) {
            Some(o) if counter_id != vmclock::abi::counter_id::INVALID => vmclock::PageBuilder::new().tai_minus_utc(o),
            _ => vmclock::PageBuilder::new(),
        };
        Some(
            b.constants(counter_id, time_type)
                .status(vmclock::abi::status::UNRELIABLE)
                .disruption_marker(self.state.disruption_marker)
                .vm_generation(self.state.vm_generation)
                .flag(flags::NOTIFICATION_PRESENT, self.state.notify),
        )
    }

    /// Whether the last host page could not be given in the guest page's time type (another
    /// time type and no valid TAI − UTC): the guest page then says UNRELIABLE.
    pub fn unconvertible(&self) -> bool {
        self.unconvertible
    }

    /// The state to save.
    pub fn state(&self) -> &GuestState {
        &self.state
    }

    /// The guest came in by live migration under a new map: its counter calibration is broken.
    /// After an [`overwritten`](Self::overwritten) page (which already gave the guest a new
    /// marker and no time) this only confirms the map: no second marker change.
    pub fn migrated_in(&mut self, map: CounterMap) {
        self.state.map = map;
        if !std::mem::take(&mut self.state.map_pending) {
            self.state.disruption_marker = self.state.disruption_marker.wrapping_add(1);
        }
        // The new host's page has its own marker: adopt it without a second change.
        self.state.last_host_marker = None;
    }

    /// The guest's counter map is about to change in a way nobody can tell yet (the VMM is
    /// about to resume a guest whose counter stood still, under TCG; a VMM that rewrites the
    /// TSC): the guest's calibration breaks, so a new marker, and no time until the map is
    /// confirmed ([`GuestRelay::migrated_in`], [`GuestRelay::confirm_map`]).
    pub fn map_changing(&mut self) {
        if !self.state.map_pending {
            self.state.disruption_marker = self.state.disruption_marker.wrapping_add(1);
        }
        self.state.map_pending = true;
    }

    /// The counter map in force is `map` (told by whoever knows it: the VMM, KVM's debugfs, a
    /// measurement), without a marker change of its own: after an overwrite the guest has had
    /// its new marker already. The guest's pages carry time again.
    pub fn confirm_map(&mut self, map: CounterMap) {
        self.state.map = map;
        self.state.map_pending = false;
    }

    /// Whether the guest's pages wait for the counter map to be confirmed (no time in them).
    pub fn map_pending(&self) -> bool {
        self.state.map_pending
    }

    /// The guest page was written by someone else ([`crate::overwrite`]): a migration brought the
    /// source's page (its map and marker) or a restore brought the snapshot's. The guest may have
    /// read that marker already, so it gets a marker it has not seen: one past the one found
    /// (the guest's marker sequence continues across hosts), or past this relay's own if that
    /// is the same. A live migration keeps the guest's generation: the one found is adopted.
    /// The counter map in force is unknown until confirmed, so the pages carry no time until
    /// then ([`GuestRelay::migrated_in`] or [`GuestRelay::confirm_map`]).
    pub fn overwritten(&mut self, o: &crate::overwrite::Overwrite) {
        let own = self.state.disruption_marker;
        let mut next = o.found_marker.unwrap_or(own).wrapping_add(1);
        if next == own || Some(next) == o.found_marker {
            next = own.wrapping_add(1);
        }
        self.state.disruption_marker = next;
        if let Some(g) = o.found_generation {
            self.state.vm_generation = g;
        }
        self.state.map_pending = true;
    }

    /// The guest was loaded from a snapshot (or cloned): both markers change.
    pub fn restored_from_snapshot(&mut self) {
        self.state.disruption_marker = self.state.disruption_marker.wrapping_add(1);
        self.state.vm_generation = self.state.vm_generation.wrapping_add(1);
        self.state.last_host_marker = None;
    }

    /// The guest page for this host page.
    ///
    /// A host page that claims time the guest could not read or should not believe
    /// ([`host_fault`]) is refused with [`RelayError::BadHostPage`] and changes nothing: the
    /// guest page keeps its last update (holdover). A host page whose constant fields
    /// (counter_id, time_type) differ from the last one relayed is a disruption: the host's
    /// clock is not the one the guest was following.
    #[must_use = "the page must be written to the guest"]
    pub fn guest_page(&mut self, host: &Snapshot) -> Result<VmclockAbi, RelayError> {
        self.guest_page_at(host, None)
    }

    /// [`GuestRelay::guest_page`], with the host counter's current value: the host page's time
    /// there must be believable too (what guests will read, not only its reference).
    #[must_use = "the page must be written to the guest"]
    pub fn guest_page_at(&mut self, host: &Snapshot, host_counter_now: Option<u64>) -> Result<VmclockAbi, RelayError> {
        let guest_time_type = self.state.constants.map_or(host.time_type(), |c| c.1);
        if let Some(fault) = host_fault(host, guest_time_type, host_counter_now) {
            return Err(RelayError::BadHostPage(fault));
        }
        let mut g = transform(host, &self.state.map)?;
        let host_constants = (host.counter_id(), host.time_type());
        let constants_changed = self.last_host_constants.is_some_and(|c| c != host_constants);
        if constants_changed || self.state.last_host_marker.is_some_and(|m| m != host.disruption_marker()) {
            self.state.disruption_marker = self.state.disruption_marker.wrapping_add(1);
        }
        self.state.last_host_marker = Some(host.disruption_marker());
        self.last_host_constants = Some(host_constants);
        // The constant fields stay the guest page's, whatever the host page has now (a host
        // restarted with another time type, or without its counter).
        let (counter_id, time_type) = self.fix_constants(host.counter_id(), host.time_type());
        self.unconvertible = false;
        if host.reference().is_ok() && host.counter_id() == counter_id && host.time_type() != time_type {
            self.unconvertible = convert_time_type(&mut g, host, time_type).is_none();
        }
        if self.unconvertible || (host.counter_id() != counter_id && counter_id != vmclock::abi::counter_id::INVALID) {
            // No time in the guest's terms: the page keeps its constants and says so.
            g.clock_status = vmclock::abi::status::UNRELIABLE;
        }
        if self.state.map_pending {
            // The guest's counter map is not known (an overwrite: a migration or a restore):
            // no status to rely on and no bounds, until it is confirmed.
            g.clock_status = vmclock::abi::status::UNRELIABLE;
            g.flags.set(g.flags.get() & !(flags::TIME_MAXERROR_VALID | flags::TIME_ESTERROR_VALID));
        }
        g.counter_id = counter_id;
        g.time_type = time_type;
        g.disruption_marker.set(self.state.disruption_marker);
        g.vm_generation_counter.set(self.state.vm_generation);
        let mut f = g.flags.get() | flags::VM_GEN_COUNTER_PRESENT;
        f = if self.state.notify { f | flags::NOTIFICATION_PRESENT } else { f & !flags::NOTIFICATION_PRESENT };
        g.flags.set(f);
        Ok(g)
    }
}

/// A relay that writes a guest's page into memory the VMM hands in (vm-memory, a shared file,
/// a buffer) and calls `notify` with each new even `seq_count` (the VMM's ACPI Notify or
/// interrupt).
///
/// NOTIFICATION_PRESENT tells the guest to wait in `poll()` for the hypervisor's notification, so
/// it is set only when a notifier is wired in ([`GuestPageWriter::new`]) and the guest's state asks
/// for it; a writer made by [`GuestPageWriter::without_notifier`] never sets it (a guest told to
/// wait for notifications that never come would wait forever).
pub struct GuestPageWriter<M: WritableMemory, F: FnMut(u32)> {
    relay: GuestRelay,
    writer: Writer<M>,
    notify: Option<F>,
}

impl<M: WritableMemory, F: FnMut(u32)> core::fmt::Debug for GuestPageWriter<M, F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("GuestPageWriter").field("relay", &self.relay).finish_non_exhaustive()
    }
}

impl<M: WritableMemory, F: FnMut(u32)> GuestPageWriter<M, F> {
    /// Writes `relay`'s pages into `mem`; `notify` is called after each write when the guest is
    /// told of notifications (`GuestState::notify`).
    pub fn new(relay: GuestRelay, mem: M, notify: F) -> Self {
        GuestPageWriter { relay, writer: Writer::new(mem), notify: Some(notify) }
    }

    /// The relay (markers, state).
    pub fn relay(&mut self) -> &mut GuestRelay {
        &mut self.relay
    }

    /// The guest memory.
    pub fn memory(&self) -> &M {
        self.writer.memory()
    }

    /// Relays one host page: transform, seqlock write, notification. Returns the new seq_count.
    pub fn update(&mut self, host: &Snapshot) -> Result<u32, RelayError> {
        self.update_at(host, None)
    }

    /// [`GuestPageWriter::update`] with the host counter's current value (see
    /// [`GuestRelay::guest_page_at`]): a VMM that can read it should pass it.
    pub fn update_at(&mut self, host: &Snapshot, host_counter_now: Option<u64>) -> Result<u32, RelayError> {
        let page = self.relay.guest_page_at(host, host_counter_now)?;
        let seq = self.writer.publish(&page);
        if self.relay.state.notify {
            if let Some(n) = self.notify.as_mut() {
                n(seq);
            }
        }
        Ok(seq)
    }
}

impl<M: WritableMemory> GuestPageWriter<M, fn(u32)> {
    /// A writer with no way to notify the guest (a page in a shared file, polled by the guest):
    /// NOTIFICATION_PRESENT stays clear whatever the saved state says.
    pub fn without_notifier(mut relay: GuestRelay, mem: M) -> Self {
        relay.state.notify = false;
        GuestPageWriter { relay, writer: Writer::new(mem), notify: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use vmclock::abi::{counter_id, status};
    use vmclock::{PageBuf, PageBuilder, Period, Tai, Timestamp};

    fn host_page(cv: u64, hz: u64) -> Snapshot {
        let abi = PageBuilder::new()
            .reference(
                counter_id::X86_TSC,
                cv,
                Timestamp::<Tai>::from_parts(1_795_000_037, 1 << 62),
                Period::from_hz(hz).unwrap(),
            )
            .tai_minus_utc(37)
            .status(status::SYNCHRONIZED)
            .maxerror(1_000, 1 << 20)
            .esterror(100, 1 << 10)
            .disruption_marker(7)
            .flag(flags::TIME_MONOTONIC, true)
            .build();
        Snapshot::new(abi, 4096).unwrap()
    }

    #[test]
    fn identity_is_the_host_page() {
        let h = host_page(123_456_789, 2_500_000_000);
        let g = transform(&h, &CounterMap::IDENTITY).unwrap();
        assert_eq!(&g, h.raw());
        let g = transform(&h, &CounterMap::new(0, 1 << 48, 48).unwrap()).unwrap();
        assert_eq!(&g, h.raw());
    }

    #[test]
    fn a_legacy_host_offset_reaches_the_guest_in_the_driver_convention() {
        for map in [CounterMap::IDENTITY, CounterMap::new(99, 3 << 47, 48).unwrap()] {
            // A legacy host page: +37 stored (TAI − UTC, the RFC /dev/vmclock_host).
            let mut legacy = *host_page(1_000, 2_500_000_000).raw();
            legacy.tai_offset_sec.set(37);
            let h = Snapshot::new(legacy, 4096).unwrap();
            assert!(h.tai_offset_is_legacy());
            let g = Snapshot::new(transform(&h, &map).unwrap(), 4096).unwrap();
            assert_eq!(g.tai_offset_raw(), Some(-37), "the guest page stores UTC − TAI");
            assert_eq!(g.tai_minus_utc(), Some(37));
            assert!(!g.tai_offset_is_legacy());
            assert_eq!(g.utc_at(map.guest(1_000)).unwrap().time, h.utc_at(1_000).unwrap().time);
            // A host page already in the driver's convention is copied as it is.
            let h = host_page(1_000, 2_500_000_000);
            let g = Snapshot::new(transform(&h, &map).unwrap(), 4096).unwrap();
            assert_eq!(g.tai_offset_raw(), Some(-37));
        }
    }

    #[test]
    fn normalise_is_exact() {
        assert_eq!(normalise(1 << 63, 1), Some((1 << 63, 0)));
        assert_eq!(normalise(1 << 64, 1), Some((1 << 63, -1)));
        assert_eq!(normalise(1, 3), Some((0xAAAA_AAAA_AAAA_AAAB, 65)));
        assert_eq!(normalise(u128::MAX >> 1, 1), Some((1 << 63, -64)));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        /// For counters within ±1 day of the reference, the guest page at guest_tsc(c) gives the
        /// host page's time at c within ±1 ns, over ratios 0.5–2.0, both fraction-bit widths,
        /// offsets across the whole u64 range (wrap-around included), and host counters
        /// anywhere in u64 (not wrapping under scaling: see below).
        #[test]
        fn guest_time_equals_host_time(
            cv in any::<u64>(),
            hz in 2_000_000_000u64..4_000_000_000,
            ratio_milli in 500u64..=2000,
            intel in any::<bool>(),
            offset in any::<u64>(),
            dt_ns in -86_400_000_000_000i64..86_400_000_000_000,
            jitter in any::<u64>(),
        ) {
            let fb = if intel { 48 } else { 32 };
            let ratio = ((ratio_milli as u128) << fb) / 1000 + (jitter % 1000) as u128;
            let map = CounterMap::new(offset, ratio as u64, fb).unwrap();
            let h = host_page(cv, hz);
            let g = Snapshot::new(transform(&h, &map).unwrap(), 4096).unwrap();
            let ticks = dt_ns as i128 * hz as i128 / 1_000_000_000;
            // A host counter that wraps past 2^64 between the reference and the reading makes
            // KVM's scaled guest counter jump ((host · ratio) >> bits is not continuous there),
            // so no page can describe it; a host TSC wraps after ~146 years. Offsets, which are
            // continuous mod 2^64, still wrap freely.
            let exact_one = ratio == 1u128 << fb;
            prop_assume!(exact_one || (0..=u64::MAX as i128).contains(&(cv as i128 + ticks)));
            let c = cv.wrapping_add(ticks as i64 as u64);
            let th = h.tai_at(c).unwrap();
            let tg = g.tai_at(map.guest(c)).unwrap();
            let diff = th.time.raw() as i128 - tg.time.raw() as i128;
            prop_assert!(diff.abs() <= (1i128 << 64) / 1_000_000_000, "diff {} ns", diff as f64 * 1e9 / 2f64.powi(64));
            // The guest's bounds cover the host's (widened by the mapping's rounding).
            prop_assert!(tg.maxerror.unwrap() + (1u128 << 64) / 1_000_000_000 >= th.maxerror.unwrap());
            prop_assert_eq!(g.counter_value(), Some(map.guest(cv)));
        }
    }

    #[test]
    fn markers_change_exactly_when_they_should() {
        let h = host_page(1, 2_500_000_000);
        let mut r = GuestRelay::new(CounterMap::offset_only(5), 1000, true);
        let p1 = r.guest_page(&h).unwrap();
        assert_eq!(p1.disruption_marker.get(), 1000);
        assert!(p1.flags.get() & flags::VM_GEN_COUNTER_PRESENT != 0);
        assert!(p1.flags.get() & flags::NOTIFICATION_PRESENT != 0);
        let p2 = r.guest_page(&h).unwrap();
        assert_eq!(
            (p2.disruption_marker.get(), p2.vm_generation_counter.get()),
            (p1.disruption_marker.get(), p1.vm_generation_counter.get()),
            "a plain update changes nothing"
        );
        r.migrated_in(CounterMap::offset_only(99));
        let p3 = r.guest_page(&h).unwrap();
        assert_eq!(p3.disruption_marker.get(), 1001);
        assert_eq!(p3.vm_generation_counter.get(), p1.vm_generation_counter.get(), "migration keeps the generation");
        assert_eq!(p3.counter_value.get(), 100);
        r.restored_from_snapshot();
        let p4 = r.guest_page(&h).unwrap();
        assert_eq!(p4.disruption_marker.get(), 1002);
        assert_eq!(p4.vm_generation_counter.get(), p1.vm_generation_counter.get() + 1);
        // A host disruption is the guest's too.
        let mut h2 = *h.raw();
        h2.disruption_marker.set(8);
        let p5 = r.guest_page(&Snapshot::new(h2, 4096).unwrap()).unwrap();
        assert_eq!(p5.disruption_marker.get(), 1003);
        // The state survives a VMM restart (serialised), and nothing moves back.
        let saved = serde_json::to_string(r.state()).unwrap();
        let mut again = GuestRelay::from_state(serde_json::from_str(&saved).unwrap());
        let p6 = again.guest_page(&Snapshot::new(h2, 4096).unwrap()).unwrap();
        assert_eq!(p6.disruption_marker.get(), 1003);
        assert_eq!(p6.vm_generation_counter.get(), p4.vm_generation_counter.get());
    }

    /// A page written by someone else (the source's page brought by a migration) gives the
    /// guest a marker it has not seen, keeps its generation, and no time until the map is
    /// confirmed; the confirmation changes the marker no further.
    #[test]
    fn an_overwritten_page_gets_a_new_marker_and_no_time_until_the_map_is_confirmed() {
        use crate::overwrite::{Guard, Verdict, Written};
        let h = host_page(1_000, 2_500_000_000);
        // The destination's relay, with its own marker and a map for a guest not there yet.
        let mut dest = GuestRelay::new(CounterMap::offset_only(5), 0x5000, false);
        let mut guard = Guard::new();
        let mine = dest.guest_page(&h).unwrap();
        guard.wrote(Written::of(&mine, 2));
        // The source's page arrives: its marker 0x77, generation 12, its map.
        let mut src = GuestRelay::new(CounterMap::offset_only(999), 0x77, false);
        let mut theirs = src.guest_page(&h).unwrap();
        theirs.vm_generation_counter.set(12);
        theirs.seq_count.set(40);
        let bytes: [u8; vmclock::abi::ABI_SIZE] = zerocopy::IntoBytes::as_bytes(&theirs).try_into().unwrap();
        let Verdict::Overwritten(o) = guard.look(Some(&bytes)) else { panic!("the foreign page was not seen") };
        dest.overwritten(&o);
        assert!(dest.map_pending());
        let p = Snapshot::new(dest.guest_page(&h).unwrap(), 4096).unwrap();
        assert_eq!(p.disruption_marker(), 0x78, "one past the marker the guest may have read");
        assert_eq!(p.vm_generation_counter(), Some(12), "a migration keeps the guest's generation");
        assert_eq!(p.clock_status(), Some(status::UNRELIABLE));
        assert!(!p.has(flags::TIME_MAXERROR_VALID) && !p.has(flags::TIME_ESTERROR_VALID), "no bounds");
        // Host updates meanwhile change nothing: still no time, same marker.
        let p2 = Snapshot::new(dest.guest_page(&host_page(2_000, 2_500_000_000)).unwrap(), 4096).unwrap();
        assert_eq!((p2.disruption_marker(), p2.clock_status()), (0x78, Some(status::UNRELIABLE)));
        // The map is told (migrated_in after an overwrite): time again, no second marker change.
        dest.migrated_in(CounterMap::offset_only(123));
        assert!(!dest.map_pending());
        let p3 = Snapshot::new(dest.guest_page(&h).unwrap(), 4096).unwrap();
        assert_eq!((p3.disruption_marker(), p3.clock_status()), (0x78, Some(status::SYNCHRONIZED)));
        assert_eq!(p3.counter_value(), Some(1_123));
        assert!(p3.has(flags::TIME_MAXERROR_VALID));
        // A later migration without an overwrite seen (told only) still changes the marker.
        dest.migrated_in(CounterMap::offset_only(7));
        assert_eq!(Snapshot::new(dest.guest_page(&h).unwrap(), 4096).unwrap().disruption_marker(), 0x79);
        // A torn page (no marker readable): one past the relay's own; confirm_map never bumps.
        dest.overwritten(&crate::overwrite::Overwrite {
            difference: crate::overwrite::Difference::Unstable,
            found_marker: None,
            found_generation: None,
        });
        dest.confirm_map(CounterMap::offset_only(7));
        let p4 = Snapshot::new(dest.guest_page(&h).unwrap(), 4096).unwrap();
        assert_eq!((p4.disruption_marker(), p4.vm_generation_counter()), (0x7a, Some(12)));
        assert_eq!(p4.clock_status(), Some(status::SYNCHRONIZED));
        // The pending state survives a relay restart (saved), and older state loads without it.
        dest.overwritten(&o);
        let again =
            GuestRelay::from_state(serde_json::from_str(&serde_json::to_string(dest.state()).unwrap()).unwrap());
        assert!(again.map_pending());
    }

    #[test]
    fn a_map_about_to_change_holds_the_time_and_changes_the_marker_once() {
        let h = host_page(1_000, 2_500_000_000);
        let mut r = GuestRelay::new(CounterMap::offset_only(5), 40, false);
        let _ = r.guest_page(&h).unwrap();
        r.map_changing();
        r.map_changing();
        let p = Snapshot::new(r.guest_page(&h).unwrap(), 4096).unwrap();
        assert_eq!((p.disruption_marker(), p.clock_status()), (41, Some(status::UNRELIABLE)));
        r.migrated_in(CounterMap::offset_only(9));
        let p = Snapshot::new(r.guest_page(&h).unwrap(), 4096).unwrap();
        assert_eq!((p.disruption_marker(), p.clock_status()), (41, Some(status::SYNCHRONIZED)));
    }

    /// The marker after an overwrite differs from the one found whatever the relay's own is.
    #[test]
    fn the_new_marker_is_never_the_one_found() {
        for (own, found) in
            [(5u64, Some(4u64)), (5, Some(5)), (u64::MAX, Some(u64::MAX - 1)), (0, None), (9, Some(u64::MAX))]
        {
            let mut r = GuestRelay::new(CounterMap::IDENTITY, own, false);
            r.overwritten(&crate::overwrite::Overwrite {
                difference: crate::overwrite::Difference::Body,
                found_marker: found,
                found_generation: None,
            });
            let m = r.state().disruption_marker;
            assert_ne!(Some(m), found, "own {own:#x} found {found:?}");
            assert_ne!(m, own, "own {own:#x} found {found:?}");
        }
    }

    fn with(h: &Snapshot, f: impl FnOnce(&mut VmclockAbi)) -> Snapshot {
        let mut a = *h.raw();
        f(&mut a);
        Snapshot::new(a, 4096).unwrap()
    }

    #[test]
    fn the_guest_page_keeps_its_constant_fields() {
        use vmclock::abi::time_type::{TAI, UTC};
        let tai = host_page(1_000, 2_500_000_000);
        let mut r = GuestRelay::new(CounterMap::offset_only(5), 1, false);
        assert!(r.placeholder().is_none(), "not fixed yet");
        assert_eq!(r.fix_constants(counter_id::X86_TSC, TAI), (counter_id::X86_TSC, TAI));
        let ph = Snapshot::new(r.placeholder().unwrap().build(), 4096).unwrap();
        assert_eq!(
            (ph.counter_id(), ph.time_type(), ph.clock_status()),
            (counter_id::X86_TSC, TAI, Some(status::UNRELIABLE))
        );
        // Issue 20, item 10: with the host page's valid offset (a driver probing it registers
        // its PTP clock).
        let ph = Snapshot::new(r.placeholder_for(Some(&tai)).unwrap().build(), 4096).unwrap();
        assert_eq!((ph.tai_minus_utc(), ph.tai_offset_raw()), (Some(37), Some(-37)));
        assert!(ph.flags() & flags::NOTIFICATION_PRESENT == 0, "this guest is not notified");
        // A notified guest's placeholder says so too (a driver probing it installs its handler).
        let mut n = GuestRelay::new(CounterMap::offset_only(5), 1, true);
        n.fix_constants(counter_id::X86_TSC, TAI);
        let nph = Snapshot::new(n.placeholder().unwrap().build(), 4096).unwrap();
        assert!(nph.flags() & flags::NOTIFICATION_PRESENT != 0);
        let g0 = Snapshot::new(r.guest_page(&tai).unwrap(), 4096).unwrap();
        assert_eq!(g0.time_type(), TAI);
        // The host restarts with a UTC page (and the offset): the guest page stays TAI, same time.
        let utc = with(&tai, |a| {
            a.time_type = UTC;
            a.time_sec.set(a.time_sec.get() - 37);
        });
        let g1 = Snapshot::new(r.guest_page(&utc).unwrap(), 4096).unwrap();
        assert!(!r.unconvertible());
        assert_eq!((g1.time_type(), g1.clock_status()), (TAI, Some(status::SYNCHRONIZED)));
        assert_eq!(g1.tai_at(10_000).unwrap().time, g0.tai_at(10_000).unwrap().time);
        // Without a valid offset it cannot be converted: UNRELIABLE, reported.
        let bare = with(&utc, |a| a.flags.set(a.flags.get() & !flags::TAI_OFFSET_VALID));
        let g2 = Snapshot::new(r.guest_page(&bare).unwrap(), 4096).unwrap();
        assert!(r.unconvertible());
        assert_eq!(
            (g2.counter_id(), g2.time_type(), g2.clock_status()),
            (counter_id::X86_TSC, TAI, Some(status::UNRELIABLE))
        );
        // A host page without its counter: the guest keeps its counter_id, UNRELIABLE.
        let inval = with(&tai, |a| a.counter_id = counter_id::INVALID);
        let g3 = Snapshot::new(r.guest_page(&inval).unwrap(), 4096).unwrap();
        assert_eq!((g3.counter_id(), g3.clock_status()), (counter_id::X86_TSC, Some(status::UNRELIABLE)));
        // The constants survive a relay restart; older saved state (without them) still loads.
        let saved = serde_json::to_string(r.state()).unwrap();
        let mut again = GuestRelay::from_state(serde_json::from_str(&saved).unwrap());
        assert_eq!(again.fix_constants(counter_id::ARM_VCNT, UTC), (counter_id::X86_TSC, TAI));
        let old: GuestState = serde_json::from_str(
            r#"{"map":{"offset":0,"ratio":1,"frac_bits":0},"disruption_marker":1,"vm_generation":2,"last_host_marker":null,"notify":true}"#,
        )
        .unwrap();
        assert_eq!(old.constants, None);
    }

    /// Issue 20, item 7: host pages vmtime itself calls invalid, and host time types the guest
    /// page's cannot be given in, are not relayed; a change of the host's time type is a
    /// disruption.
    #[test]
    fn bad_host_pages_are_held_and_a_time_type_change_is_a_disruption() {
        use vmclock::abi::time_type::{MONOTONIC, TAI, UTC};
        let tai = host_page(1_000, 2_500_000_000);
        let mut r = GuestRelay::new(CounterMap::offset_only(5), 1, false);
        let g0 = r.guest_page(&tai).unwrap();
        let bad = [
            with(&tai, |a| a.counter_period_shift = 160),
            with(&tai, |a| a.time_sec.set(u64::MAX - 10)),
            with(&tai, |a| a.time_sec.set(0)),
            with(&tai, |a| a.time_sec.set(1 << 40)),
            with(&tai, |a| a.time_type = MONOTONIC),
            with(&tai, |a| a.time_type = 9),
        ];
        for h in &bad {
            let e = r.guest_page(h).unwrap_err();
            assert!(matches!(e, RelayError::BadHostPage(_)), "{e}");
            assert_eq!(r.state().disruption_marker, 1, "{e}: nothing changes");
        }
        assert_eq!(host_fault(&bad[0], TAI, None), Some(HostFault::Unusable(vmclock::TimeError::UnusableShift(160))));
        assert_eq!(host_fault(&bad[4], TAI, None), Some(HostFault::TimeType { host: MONOTONIC, guest: TAI }));
        assert!(
            host_fault(&bad[2], TAI, None).unwrap().to_string().contains("1970-01-01"),
            "{}",
            host_fault(&bad[2], TAI, None).unwrap()
        );
        // A reference counter far from the host counter now: the time read now is 30 years
        // before the reference's (2.5 GHz), out of range, though the reference is fine.
        let far = with(&tai, |a| a.counter_value.set(a.counter_value.get() + 2_500_000_000 * 86_400 * 365 * 30));
        assert!(host_fault(&far, TAI, None).is_none());
        assert!(matches!(host_fault(&far, TAI, Some(1_000)), Some(HostFault::Implausible(Some(_)))));
        assert!(matches!(r.guest_page_at(&far, Some(1_000)), Err(RelayError::BadHostPage(_))));
        // The same page again: relayed, markers unchanged.
        assert_eq!(r.guest_page(&tai).unwrap().disruption_marker.get(), g0.disruption_marker.get());
        // The host's time type changes to UTC (with its offset, the same time): converted, and
        // the guest is told its clock changed.
        let utc = with(&tai, |a| {
            a.time_type = UTC;
            a.time_sec.set(a.time_sec.get() - 37);
        });
        let g1 = Snapshot::new(r.guest_page(&utc).unwrap(), 4096).unwrap();
        assert_eq!((g1.time_type(), g1.clock_status(), g1.disruption_marker()), (TAI, Some(status::SYNCHRONIZED), 2));
        assert_eq!(Snapshot::new(r.guest_page(&utc).unwrap(), 4096).unwrap().disruption_marker(), 2);
    }

    /// Issue 20, item 7: byte mutations of a host page under the relay; every guest page the
    /// relay publishes is readable: a valid page whose time, if its status says it may be
    /// relied on, can be computed, is in the guest page's time type and is believable.
    #[test]
    fn every_published_guest_page_is_readable_under_host_mutations() {
        let good = host_page(1_000_000, 2_500_000_000);
        let mut published = 0;
        let mut held = 0;
        for seed in 1..=6u64 {
            let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut next = move || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            let buf = PageBuf::new();
            let map = CounterMap::new(12_345, 3 << 47, 48).unwrap();
            let mut w = GuestPageWriter::without_notifier(GuestRelay::new(map, seed, false), &buf);
            w.update(&good).unwrap();
            let mut bytes = good.to_bytes();
            for i in 0..300 {
                if i % 50 == 0 {
                    bytes = good.to_bytes(); // back to a good page now and then
                }
                // 1–3 byte writes, biased to the fields with meaning (offset 16 to 112).
                for _ in 0..1 + next() % 3 {
                    let at = 16 + (next() % 96) as usize;
                    bytes[at] = match next() % 4 {
                        0 => 0,
                        1 => 0xff,
                        2 => bytes[at].wrapping_add(1),
                        _ => next() as u8,
                    };
                }
                let Ok(host) = Snapshot::decode(&bytes, 4096) else { continue };
                if w.update(&host).is_err() {
                    held += 1;
                    continue;
                }
                published += 1;
                let g = vmclock::seqlock::read(w.memory(), vmclock::seqlock::DEFAULT_MAX_WAIT)
                    .unwrap_or_else(|e| panic!("seed {seed} step {i}: guest page unreadable: {e}"));
                assert_eq!(g.time_type(), vmclock::abi::time_type::TAI, "seed {seed} step {i}: constant");
                let relied = matches!(g.clock_status(), Some(status::SYNCHRONIZED | status::FREERUNNING));
                if relied && g.counter_id() == counter_id::X86_TSC && g.time_frac_sec().is_some() {
                    let c = g.counter_value().unwrap().wrapping_add(2_500_000_000);
                    let t = g.time_at(c).unwrap_or_else(|e| panic!("seed {seed} step {i}: {e}: {:?}", g.raw()));
                    let utc_s = (t.raw() >> 64) as i64 - 37;
                    assert!(
                        (crate::sanity::EARLIEST_UNIX_S - 37..crate::sanity::LATEST_UNIX_S).contains(&utc_s),
                        "seed {seed} step {i}: {utc_s}"
                    );
                }
            }
        }
        // Not vacuous: both outcomes happen.
        assert!(published > 300 && held > 100, "published {published}, held {held}");
    }

    #[test]
    fn the_writer_notifies_each_even_seq() {
        let h = host_page(1, 2_500_000_000);
        let buf = PageBuf::new();
        let mut seen = Vec::new();
        {
            let mut w = GuestPageWriter::new(GuestRelay::new(CounterMap::IDENTITY, 1, true), &buf, |s| seen.push(s));
            w.update(&h).unwrap();
            w.update(&h).unwrap();
        }
        assert_eq!(seen, [2, 4]);
        let g = vmclock::seqlock::read(&buf, vmclock::seqlock::DEFAULT_MAX_WAIT).unwrap();
        assert_eq!(g.seq_count(), 4);
        // Without notification the callback is not called and the flag is clear.
        let mut calls = 0;
        let mut w =
            GuestPageWriter::new(GuestRelay::new(CounterMap::IDENTITY, 1, false), PageBuf::new(), |_| calls += 1);
        w.update(&h).unwrap();
        assert!(!vmclock::seqlock::read(w.memory(), vmclock::seqlock::DEFAULT_MAX_WAIT)
            .unwrap()
            .has(flags::NOTIFICATION_PRESENT));
        drop(w);
        assert_eq!(calls, 0);
        // No notifier wired in: the flag is clear even when the saved state asked for it.
        let mut w = GuestPageWriter::without_notifier(GuestRelay::new(CounterMap::IDENTITY, 1, true), PageBuf::new());
        w.update(&h).unwrap();
        assert!(!vmclock::seqlock::read(w.memory(), vmclock::seqlock::DEFAULT_MAX_WAIT)
            .unwrap()
            .has(flags::NOTIFICATION_PRESENT));
        assert!(!w.relay().state().notify);
    }
}
