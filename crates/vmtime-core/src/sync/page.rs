//! Reading the device for the discipline: taking samples under one page, telling real
//! notifications from an always-readable `poll()`, and watching the page's markers.
use super::*;

/// Takes an observation's samples under one page. `read` gives a consistent copy of the page,
/// `sample` the (clock, counter, clock) samples, `seq_after` the page's `seq_count` once they are
/// taken. The samples are paired with the page only if that page was current throughout: when
/// the `seq_count` changed (an update, or one in progress), the whole observation is taken again,
/// at most `tries` times; `Ok(None)` if the page never held still.
///
/// Pairing samples with the page that preceded an update would give them the old calibration
/// (and, around a migration or restore, the old disruption marker).
pub fn sample_under_page<S, E>(
    tries: u32,
    mut read: impl FnMut() -> Result<Snapshot, E>,
    mut sample: impl FnMut() -> Result<S, E>,
    mut seq_after: impl FnMut() -> u32,
) -> Result<Option<(Snapshot, S)>, E> {
    for _ in 0..tries {
        let page = read()?;
        let samples = sample()?;
        if seq_after() == page.seq_count() {
            return Ok(Some((page, samples)));
        }
    }
    Ok(None)
}

/// What a wake-up from the device's `poll()` turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wakeup {
    /// The page changed: observe.
    Update,
    /// Readable, but the page has not changed since it was last read.
    Spurious,
    /// Readable again and again with nothing new: the driver has no `.poll` (Linux 6.13–6.19,
    /// whose `poll()` always says readable). Stop polling the device; observe on the interval.
    NoPoll,
}

/// Tells real notifications from a driver whose `poll()` is always readable. The newer driver
/// wakes a reader only when `seq_count` differs from the one that file last read, so a wake-up
/// with the `seq_count` unchanged cannot be a notification; [`NotifyCheck::LIMIT`] of them in a
/// row (none between them an update) mean the driver cannot poll.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NotifyCheck {
    spurious: u32,
    /// New pages found in a row that no wake-up announced.
    silent: u32,
}

/// What a new page found without a wake-up says about the notifications
/// ([`NotifyCheck::page_found`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Silence {
    /// Announced (the device was woken since its page was last read).
    Kept,
    /// Not announced, the first in a row: one ring lost, or a page found a moment before its
    /// notification arrived.
    Suspect,
    /// [`NotifyCheck::SILENT_LIMIT`] new pages in a row without a wake-up: the notifications do
    /// not come (no interrupt, no doorbell). Check the markers instead.
    Missed,
}

impl NotifyCheck {
    /// Spurious wake-ups in a row that prove the driver has no `.poll`.
    pub const LIMIT: u32 = 3;

    /// The device said readable; `last_seq` is the `seq_count` last read, `seq_now` the current one.
    pub fn readable(&mut self, last_seq: Option<u32>, seq_now: u32) -> Wakeup {
        if last_seq != Some(seq_now) {
            self.spurious = 0;
            return Wakeup::Update;
        }
        self.spurious += 1;
        if self.spurious >= Self::LIMIT {
            Wakeup::NoPoll
        } else {
            Wakeup::Spurious
        }
    }

    /// New pages found without a wake-up in a row that mean the notifications stopped.
    pub const SILENT_LIMIT: u32 = 2;

    /// A new page was found (its `seq_count` differs from the one last read), `woken`: whether
    /// the device's wait queue was woken since the last read. A notifying device wakes its
    /// readers on every page, but its `poll()` is readable for any unread page, so a follower
    /// whose wait ends for another reason (its interval, a request) finds unannounced pages as
    /// readable as announced ones: only the wake-up tells them apart. Without this, a follower
    /// whose interval grew at rest would see disruptions only at that long interval once the
    /// notifications stopped.
    pub fn page_found(&mut self, woken: bool) -> Silence {
        if woken {
            self.silent = 0;
            return Silence::Kept;
        }
        self.silent += 1;
        if self.silent >= Self::SILENT_LIMIT {
            Silence::Missed
        } else {
            Silence::Suspect
        }
    }
}

/// A device set aside because its notifications stopped ([`Silence::Missed`]), watched for
/// them to come back: while the follower looks at the markers, each new page it finds is
/// judged, within [`Rearm::WAIT_NS`], by whether the device was woken for it. After
/// [`Rearm::NEEDED`] announced pages in a row the device is trusted again (the looks stop);
/// one unannounced page starts the count again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rearm {
    /// A new page found without a wake-up yet, and when (monotonic ns).
    pending: Option<(u32, i128)>,
    announced: u32,
}

/// What the follower does after a look at a set-aside device ([`Rearm::look`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RearmStep {
    /// Nothing yet.
    Wait,
    /// The page is judged: `read()` the device (acknowledging it) so the next page is judged
    /// on its own wake-up.
    Acknowledge,
    /// Notifications are back: acknowledge, and wait on the device again.
    Trust,
}

impl Rearm {
    /// Announced pages in a row that bring the device back.
    pub const NEEDED: u32 = 3;
    /// How long a new page may wait for its notification, ns (1 s: a notification under TCG
    /// takes up to a few hundred ms).
    pub const WAIT_NS: i128 = 1_000_000_000;

    /// A look at `now_ns` found the page at `seq`; the device's `read()` last returned `acked`,
    /// and `woken` says whether the device was woken since.
    pub fn look(&mut self, now_ns: i128, seq: u32, acked: Option<u32>, woken: bool) -> RearmStep {
        if acked == Some(seq) {
            self.pending = None;
            return RearmStep::Wait;
        }
        if woken {
            self.pending = None;
            self.announced += 1;
            if self.announced >= Self::NEEDED {
                self.announced = 0;
                return RearmStep::Trust;
            }
            return RearmStep::Acknowledge;
        }
        match self.pending {
            Some((_, since)) if now_ns - since >= Self::WAIT_NS => {
                self.pending = None;
                self.announced = 0;
                RearmStep::Acknowledge
            }
            Some(_) => RearmStep::Wait,
            None => {
                self.pending = Some((seq, now_ns));
                RearmStep::Wait
            }
        }
    }
}

/// What changed in a page's markers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MarkerChange {
    /// `disruption_marker` changed: the counter's calibration is broken (migration, restore).
    pub disrupted: bool,
    /// `vm_generation_counter` changed: the VM was restored from a snapshot or cloned.
    pub new_generation: bool,
}

/// Watches a page's markers, for a page that carries nothing else (QEMU's and Firecracker's
/// devices: counter INVALID, status UNKNOWN) or next to another time source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MarkerWatch {
    marker: Option<u64>,
    generation: Option<u64>,
}

impl MarkerWatch {
    /// The markers of a new copy of the page; the first copy changes nothing.
    pub fn observe(&mut self, page: &Snapshot) -> MarkerChange {
        let disrupted = self.marker.is_some_and(|m| m != page.disruption_marker());
        let g = page.vm_generation_counter();
        let new_generation = g.is_some() && self.generation.is_some_and(|old| Some(old) != g);
        self.marker = Some(page.disruption_marker());
        self.generation = g.or(self.generation);
        MarkerChange { disrupted, new_generation }
    }

    /// The hook's action for a change, if any.
    pub fn actions(change: MarkerChange) -> Vec<SyncAction> {
        if change.new_generation {
            vec![SyncAction::RunHook]
        } else {
            Vec::new()
        }
    }
}

/// Whether a page gives time for this CPU's counter (`native`): its counter_id and the time
/// fields. A page without (counter INVALID, or no time fields) carries markers only.
pub fn gives_time(page: &Snapshot, native: u8) -> bool {
    page.counter_id() == native && page.reference().is_ok()
}
