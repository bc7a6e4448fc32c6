//! PTP hardware clocks: discovery in sysfs and the reading ioctls (include/uapi/linux/ptp_clock.h).

use std::fs::File;
use std::io;
use std::mem::size_of;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use vmclock::seqlock::PageMemory;
use vmtime_core::phc::{read_best, vmclock_index, PageComparison, PhcCaps, PhcDevice, PhcTriple};

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PtpClockTime {
    sec: i64,
    nsec: u32,
    reserved: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PtpClockCaps {
    max_adj: i32,
    n_alarm: i32,
    n_ext_ts: i32,
    n_per_out: i32,
    pps: i32,
    n_pins: i32,
    cross_timestamping: i32,
    adjust_phase: i32,
    max_phase_adj: i32,
    rsv: [i32; 11],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PtpSysOffsetPrecise {
    device: PtpClockTime,
    sys_realtime: PtpClockTime,
    sys_monoraw: PtpClockTime,
    rsv: [u32; 4],
}

const MAX_SAMPLES: usize = 25;

#[repr(C)]
#[derive(Clone, Copy)]
struct PtpSysOffsetExtended {
    n_samples: u32,
    clockid: i32,
    rsv: [u32; 2],
    ts: [[PtpClockTime; 3]; MAX_SAMPLES],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct PtpSysOffset {
    n_samples: u32,
    rsv: [u32; 3],
    ts: [PtpClockTime; 2 * MAX_SAMPLES + 1],
}

const _: () = {
    assert!(size_of::<PtpClockTime>() == 16);
    assert!(size_of::<PtpClockCaps>() == 80);
    assert!(size_of::<PtpSysOffsetPrecise>() == 64);
    assert!(size_of::<PtpSysOffsetExtended>() == 1216);
    assert!(size_of::<PtpSysOffset>() == 832);
};

/// _IOC(dir, '=', nr, size) as the kernel's asm-generic/ioctl.h lays it out.
const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | ((b'=' as u64) << 8) | nr
}
const READ: u64 = 2;
const WRITE: u64 = 1;
const PTP_CLOCK_GETCAPS: u64 = ioc(READ, 1, size_of::<PtpClockCaps>());
const PTP_SYS_OFFSET: u64 = ioc(WRITE, 5, size_of::<PtpSysOffset>());
const PTP_SYS_OFFSET_PRECISE: u64 = ioc(READ | WRITE, 8, size_of::<PtpSysOffsetPrecise>());
const PTP_SYS_OFFSET_EXTENDED: u64 = ioc(READ | WRITE, 9, size_of::<PtpSysOffsetExtended>());

fn ns(t: PtpClockTime) -> i128 {
    t.sec as i128 * 1_000_000_000 + t.nsec as i128
}

/// An open PTP clock.
#[derive(Debug)]
pub struct PhcFile {
    file: File,
}

impl PhcFile {
    /// Opens /dev/ptpN read-only (reading needs no more).
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(PhcFile { file: File::open(path)? })
    }

    fn ioctl<T>(&self, req: u64, arg: &mut T) -> io::Result<()> {
        // SAFETY: `req` encodes the size of `T` (checked by the const assertions above) and the
        // kernel reads or writes at most that many bytes of `arg`, a valid, exclusive reference.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), req as _, arg as *mut T) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl PhcDevice for PhcFile {
    fn caps(&mut self) -> io::Result<PhcCaps> {
        let mut c = PtpClockCaps::default();
        self.ioctl(PTP_CLOCK_GETCAPS, &mut c)?;
        Ok(PhcCaps { max_adj: c.max_adj, n_pins: c.n_pins, cross_timestamping: c.cross_timestamping != 0 })
    }

    fn precise(&mut self) -> io::Result<PhcTriple> {
        let mut p = PtpSysOffsetPrecise::default();
        self.ioctl(PTP_SYS_OFFSET_PRECISE, &mut p)?;
        let sys = ns(p.sys_realtime);
        Ok(PhcTriple { sys_before_ns: sys, phc_ns: ns(p.device), sys_after_ns: sys })
    }

    fn extended(&mut self, n: usize) -> io::Result<Vec<PhcTriple>> {
        let n = n.clamp(1, MAX_SAMPLES);
        let mut e = PtpSysOffsetExtended {
            n_samples: n as u32,
            clockid: libc::CLOCK_REALTIME,
            rsv: [0; 2],
            ts: [[PtpClockTime::default(); 3]; MAX_SAMPLES],
        };
        self.ioctl(PTP_SYS_OFFSET_EXTENDED, &mut e)?;
        Ok(e.ts[..n]
            .iter()
            .map(|t| PhcTriple { sys_before_ns: ns(t[0]), phc_ns: ns(t[1]), sys_after_ns: ns(t[2]) })
            .collect())
    }

    fn basic(&mut self, n: usize) -> io::Result<Vec<PhcTriple>> {
        let n = n.clamp(1, MAX_SAMPLES);
        let mut b =
            PtpSysOffset { n_samples: n as u32, rsv: [0; 3], ts: [PtpClockTime::default(); 2 * MAX_SAMPLES + 1] };
        self.ioctl(PTP_SYS_OFFSET, &mut b)?;
        Ok((0..n)
            .map(|i| PhcTriple {
                sys_before_ns: ns(b.ts[2 * i]),
                phc_ns: ns(b.ts[2 * i + 1]),
                sys_after_ns: ns(b.ts[2 * i + 2]),
            })
            .collect())
    }
}

/// A PTP clock found in sysfs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhcInfo {
    /// /dev/ptpN.
    pub dev: PathBuf,
    /// `clock_name`.
    pub clock_name: String,
    /// The driver bound to its device, when sysfs says.
    pub driver: Option<String>,
}

/// Every PTP clock on this machine, in index order (`/sys/class/ptp/ptp*`).
pub fn list() -> Vec<PhcInfo> {
    list_in(Path::new("/sys/class/ptp"), Path::new("/dev"))
}

/// The same from another sysfs root (tests).
pub fn list_in(sys: &Path, dev: &Path) -> Vec<PhcInfo> {
    let mut out: Vec<(u32, PhcInfo)> = std::fs::read_dir(sys)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let idx: u32 = name.strip_prefix("ptp")?.parse().ok()?;
            let clock_name = std::fs::read_to_string(e.path().join("clock_name")).ok()?.trim().to_string();
            let driver = std::fs::read_link(e.path().join("device/driver"))
                .ok()
                .and_then(|p| p.file_name().map(|f| f.to_string_lossy().to_string()));
            Some((idx, PhcInfo { dev: dev.join(&name), clock_name, driver }))
        })
        .collect();
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, i)| i).collect()
}

/// The vmclock device whose driver registered this PTP clock (clock_name "vmclockN" →
/// `dev`/vmclockN), if it is there.
pub fn vmclock_device(info: &PhcInfo, dev: &Path) -> Option<PathBuf> {
    let p = dev.join(format!("vmclock{}", vmclock_index(&info.clock_name)?));
    p.exists().then_some(p)
}

/// 64.64 fixed-point seconds → ns.
fn frac_to_ns(t: u128) -> i128 {
    ((t >> 64) as i128) * 1_000_000_000 + (((t & u64::MAX as u128) * 1_000_000_000) >> 64) as i128
}

/// A PHC reading compared with a vmclock page at the same instant, for
/// `vmtime_core::phc::decide_timescale`: the page's time (in its own `time_type`) at a
/// (REALTIME, counter, REALTIME) sample, and PHC − REALTIME from the PHC, give PHC − page.
/// `None` when the page gives no time (markers only) or the PHC cannot be read. TAI − UTC comes
/// from the page, else from the kernel (`kernel_tai`, 0 when unset).
pub fn compare_with_page(phc: &mut dyn PhcDevice, page: &impl PageMemory, kernel_tai: i32) -> Option<PageComparison> {
    let snap = vmclock::seqlock::read(page, vmclock::seqlock::DEFAULT_MAX_WAIT).ok()?;
    // Only a page whose time may be relied upon (not a placeholder, not UNRELIABLE).
    use vmclock::abi::status::{FREERUNNING, SYNCHRONIZED};
    if !matches!(snap.clock_status(), Some(SYNCHRONIZED | FREERUNNING)) {
        return None;
    }
    let r = snap.reference().ok()?;
    let (m, _) = read_best(phc, 5).ok()?;
    let s = crate::clock::aba_sample(crate::clock::ClockId::Realtime).ok()?;
    let page_minus_rt = frac_to_ns(r.raw_time_at(s.counter).ok()?) - s.mid_ns();
    let tai_minus_utc = snap.tai_minus_utc().or((kernel_tai != 0).then_some(kernel_tai as i16));
    Some(PageComparison {
        phc_minus_page_ns: m.offset_ns - page_minus_rt as f64,
        page_time_type: snap.time_type(),
        tai_minus_utc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmclock::abi::time_type;
    use vmclock::{PageBuf, PageBuilder, Period, Tai, Timestamp};
    use vmtime_core::phc::{decide_timescale, PhcTimescale, TimescaleFacts};

    /// A PHC `ahead_ns` ahead of this machine's CLOCK_REALTIME (no device node: the readings
    /// are made from CLOCK_REALTIME).
    struct FakePhc {
        ahead_ns: i128,
    }

    impl PhcDevice for FakePhc {
        fn caps(&mut self) -> io::Result<PhcCaps> {
            Ok(PhcCaps::default())
        }
        fn precise(&mut self) -> io::Result<PhcTriple> {
            let t = crate::clock::gettime(crate::clock::ClockId::Realtime)?;
            Ok(PhcTriple { sys_before_ns: t, phc_ns: t + self.ahead_ns, sys_after_ns: t })
        }
        fn extended(&mut self, _n: usize) -> io::Result<Vec<PhcTriple>> {
            Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
        }
        fn basic(&mut self, _n: usize) -> io::Result<Vec<PhcTriple>> {
            Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
        }
    }

    #[test]
    fn a_phc_is_judged_against_its_page() {
        // A TAI page made from this machine's clock now, with TAI − UTC = 37.
        let now = crate::clock::gettime(crate::clock::ClockId::Realtime).unwrap() + 37_000_000_000;
        let b = PageBuilder::new()
            .reference(
                vmclock::counter::NATIVE,
                vmclock::counter::read(),
                Timestamp::<Tai>::from_nanos(now as u128),
                Period::from_hz(2_000_000_000).unwrap(),
            )
            .status(vmclock::abi::status::SYNCHRONIZED)
            .tai_minus_utc(37);
        let page = PageBuf::new();
        page.store_bytes(&b.page_bytes());
        let mut judged = Vec::new();
        for ahead in [0i128, 37_000_000_000] {
            let c = compare_with_page(&mut FakePhc { ahead_ns: ahead }, &page, 0).unwrap();
            assert_eq!((c.page_time_type, c.tai_minus_utc), (time_type::TAI, Some(37)));
            let f = TimescaleFacts { page: Some(c), ..TimescaleFacts::default() };
            judged.push(decide_timescale(&f).unwrap().0);
        }
        // 6.13–6.19 (UTC), then the newer driver (TAI): told apart by the page, not the name.
        assert_eq!(judged, [PhcTimescale::Utc, PhcTimescale::Tai]);
        // A markers-only page gives nothing to compare with.
        let blank = PageBuf::new();
        blank.store_bytes(&PageBuilder::new().page_bytes());
        assert!(compare_with_page(&mut FakePhc { ahead_ns: 0 }, &blank, 37).is_none());
    }

    #[test]
    fn the_vmclock_device_of_a_phc() {
        let d = tempfile_dir("vmclock-dev");
        std::fs::write(d.join("vmclock2"), b"").unwrap();
        let info = |n: &str| PhcInfo { dev: d.join("ptp0"), clock_name: n.into(), driver: None };
        assert_eq!(vmclock_device(&info("vmclock2"), &d), Some(d.join("vmclock2")));
        assert_eq!(vmclock_device(&info("vmclock1"), &d), None, "no such device");
        assert_eq!(vmclock_device(&info("KVM virtual PTP"), &d), None);
        std::fs::remove_dir_all(&d).unwrap();
    }

    fn tempfile_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vmtime-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn request_codes_match_the_kernel_header() {
        assert_eq!(PTP_CLOCK_GETCAPS, 0x8050_3d01);
        assert_eq!(PTP_SYS_OFFSET, 0x4340_3d05);
        assert_eq!(PTP_SYS_OFFSET_PRECISE, 0xc040_3d08);
        assert_eq!(PTP_SYS_OFFSET_EXTENDED, 0xc4c0_3d09);
    }

    #[test]
    fn lists_a_fake_sysfs() {
        let d = std::env::temp_dir().join(format!("vmtime-ptp-{}", std::process::id()));
        for (i, name) in [(1, "KVM virtual PTP"), (0, "igb")] {
            let p = d.join(format!("ptp{i}"));
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("clock_name"), format!("{name}\n")).unwrap();
        }
        let l = list_in(&d, Path::new("/dev"));
        assert_eq!(
            l.iter().map(|i| (i.dev.display().to_string(), i.clock_name.as_str())).collect::<Vec<_>>(),
            [("/dev/ptp0".to_string(), "igb"), ("/dev/ptp1".to_string(), "KVM virtual PTP")]
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
