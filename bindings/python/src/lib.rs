//! The Python package's native module (`vmclock._native`): PyO3 over the `vmclock` crate.
//! No `unsafe` here: the shared memory, the counter and the SIGBUS guard are the crate's.
//!
//! Readings are `vmclock::realtime::Reading` (CLOCK_REALTIME's scale, ns rounded outwards);
//! errors are `VmclockError` with the C API's code and text (`vmclock::realtime::Code`).
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use vmclock::guard::{protect, GuardError, Protection};
use vmclock::realtime::{self, Code, MarkerWatch, Reading};
use vmclock::Clock;

create_exception!(
    vmclock,
    VmclockError,
    PyException,
    "A vmclock read or open failed: `code` is the C API's VMCLOCK_E_* value, `name` its name, `str()` its text."
);

/// The exception for `code`, with `code`, `name`, `errno` and `reading` attributes.
fn error(py: Python<'_>, code: Code, errno: Option<i32>, reading: Option<Reading>) -> PyErr {
    let e = VmclockError::new_err(code.text());
    let v = e.value(py);
    let _ = v.setattr("code", code as i32);
    let _ = v.setattr("name", code.name());
    let _ = v.setattr("errno", errno);
    let _ = v.setattr("reading", reading.map(PyReading::from));
    e
}

/// One bounded reading. Times are ns since 1970-01-01 UTC (CLOCK_REALTIME's timescale), the
/// bound rounded outwards; `earliest_ns`, `latest_ns` and `maxerror_ns` are None when the page
/// gives no maximum error.
#[pyclass(frozen, eq, get_all, module = "vmclock", name = "Reading")]
#[derive(Clone, Debug, PartialEq, Eq)]
struct PyReading {
    /// The earliest the true time can be (None: not bounded).
    earliest_ns: Option<i64>,
    /// The best estimate.
    time_ns: i64,
    /// The latest the true time can be (None: not bounded).
    latest_ns: Option<i64>,
    /// Maximum error, ns, rounded up (None: not bounded).
    maxerror_ns: Option<i64>,
    /// Estimated error, ns, rounded up (None: not given).
    esterror_ns: Option<i64>,
    /// TAI − UTC, s (37), when the page gives it.
    tai_minus_utc: Option<i16>,
    /// The page's clock_status (STATUS_*).
    status: u8,
    /// The page's disruption marker: a change means the counter's calibration broke.
    disruption_marker: u64,
    /// The leap second the page announces and the reading applies, as a leap_indicator value
    /// (0 none, 1 PRE_POS, 2 PRE_NEG, 4 POST_POS, 5 POST_NEG).
    leap: u8,
    /// The counter value the time is for.
    counter: u64,
    /// The page's time_type (0 UTC, 1 TAI, 2 MONOTONIC).
    time_type: u8,
    /// The time in the page's own timescale, ns since its epoch, rounded down.
    page_time_ns: u128,
}

impl From<Reading> for PyReading {
    fn from(r: Reading) -> Self {
        PyReading {
            earliest_ns: r.earliest_ns,
            time_ns: r.time_ns,
            latest_ns: r.latest_ns,
            maxerror_ns: r.maxerror_ns,
            esterror_ns: r.esterror_ns,
            tai_minus_utc: r.tai_minus_utc,
            status: r.status,
            disruption_marker: r.disruption_marker,
            leap: r.leap,
            counter: r.counter,
            time_type: r.time_type,
            page_time_ns: r.page_time_ns,
        }
    }
}

#[pymethods]
impl PyReading {
    /// "UTC", "TAI" or "MONOTONIC": the page's timescale.
    #[getter]
    fn timescale(&self) -> &'static str {
        match self.time_type {
            0 => "UTC",
            1 => "TAI",
            _ => "MONOTONIC",
        }
    }

    /// Whether the status says the time may be relied upon (SYNCHRONIZED or FREERUNNING).
    #[getter]
    fn reliable(&self) -> bool {
        matches!(self.status, 2 | 3)
    }

    fn __repr__(&self) -> String {
        format!(
            "Reading(earliest_ns={}, time_ns={}, latest_ns={}, status={}, tai_minus_utc={}, disruption_marker={}, leap={})",
            opt(self.earliest_ns),
            self.time_ns,
            opt(self.latest_ns),
            self.status,
            opt(self.tai_minus_utc),
            self.disruption_marker,
            self.leap
        )
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or("None".into(), |v| v.to_string())
}

/// An open vmclock page (`/dev/vmclock0` or a page file), mapped read-only. Thread-safe. Close it
/// (`close()`, or `with vmclock.Clock(path) as clock:`) to release the mapping at once: a process
/// may hold at most 64 page files open.
#[pyclass(module = "vmclock", name = "Clock")]
#[derive(Debug)]
struct PyClock {
    inner: Option<Inner>,
}

#[derive(Debug)]
struct Inner {
    // Dropped first: unregistered before the mapping is unmapped.
    protection: Option<Protection>,
    clock: Clock,
    watch: MarkerWatch,
}

impl Inner {
    fn gone(&self) -> bool {
        self.protection.as_ref().is_some_and(|p| p.gone())
    }

    fn read(&self, py: Python<'_>) -> PyResult<Reading> {
        let r = self.clock.now().map_err(|e| Code::of_clock(&e)).and_then(|n| Reading::from_now(&n));
        if self.gone() {
            return Err(error(py, Code::Gone, None, None));
        }
        r.map_err(|c| error(py, c, None, None))
    }
}

impl PyClock {
    fn open(&self) -> PyResult<&Inner> {
        self.inner.as_ref().ok_or_else(|| PyValueError::new_err("the vmclock.Clock is closed: open the page again"))
    }
}

#[pymethods]
impl PyClock {
    /// Maps the page at `path` and checks it once. A page file is guarded against SIGBUS (a file
    /// that shrinks gives VMCLOCK_E_GONE); at most 64 page files can be open at once in a process
    /// (VMCLOCK_E_LIMIT).
    #[new]
    fn new(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Self> {
        let clock = Clock::open(&path).map_err(|e| {
            let errno = match &e {
                vmclock::ClockError::Map { source, .. } => source.raw_os_error(),
                _ => None,
            };
            error(py, Code::of_clock(&e), errno, None)
        })?;
        let protection = if clock.memory().is_device() {
            None
        } else {
            let (start, len) = clock.memory().region();
            Some(protect(start, len).map_err(|e| match e {
                GuardError::Full => error(py, Code::Limit, None, None),
                GuardError::Install(_) => error(py, Code::Open, None, None),
            })?)
        };
        let watch = MarkerWatch::of(&clock).map_err(|c| error(py, c, None, None))?;
        Ok(PyClock { inner: Some(Inner { protection, clock, watch }) })
    }

    /// The time now: a Reading (no system call).
    fn now(&self, py: Python<'_>) -> PyResult<PyReading> {
        self.open()?.read(py).map(PyReading::from)
    }

    /// The time now, refused (VmclockError VMCLOCK_E_UNSYNCHRONIZED or VMCLOCK_E_TOO_WIDE, with
    /// the refused reading as `reading`) unless the page is SYNCHRONIZED and
    /// `latest_ns - earliest_ns <= max_width_ns`.
    fn now_within(&self, py: Python<'_>, max_width_ns: u64) -> PyResult<PyReading> {
        let r = self.open()?.read(py)?;
        realtime::check_cap(&r, max_width_ns).map_err(|c| error(py, c, None, Some(r)))?;
        Ok(r.into())
    }

    /// The interval holding the true time at the instant a CLOCK_REALTIME timestamp
    /// (`time.clock_gettime_ns(time.CLOCK_REALTIME)`) was taken, within the last second and
    /// after this Clock was opened (docs/INTEROP.md): VMCLOCK_E_TOO_OLD, VMCLOCK_E_DISRUPTED or
    /// VMCLOCK_E_SLEWING otherwise.
    fn bound_realtime(&self, py: Python<'_>, realtime_ns: i64) -> PyResult<PyReading> {
        let inner = self.open()?;
        let r = realtime::bound_realtime(&inner.clock, &inner.watch, realtime_ns);
        if inner.gone() {
            return Err(error(py, Code::Gone, None, None));
        }
        r.map(PyReading::from).map_err(|c| error(py, c, None, None))
    }

    /// Releases the mapping (and its place among the 64 guarded page files). Idempotent; any
    /// read after it raises ValueError.
    fn close(&mut self) {
        self.inner = None;
    }

    /// Whether close() was called.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_none()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&mut self, _args: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close();
        false
    }
}

/// A page given as bytes (bytes past its length are absent), read at `counter`, a value of the
/// page's own counter: the conformance vectors' evaluation (testdata/vectors.json).
#[pyfunction]
fn read_page(py: Python<'_>, page: &[u8], counter: u64) -> PyResult<PyReading> {
    realtime::reading_at(page, counter).map(PyReading::from).map_err(|c| error(py, c, None, None))
}

/// The C API's text of a VMCLOCK_E_* code.
#[pyfunction]
fn strerror(code: i32) -> &'static str {
    match (code, Code::from_i32(code)) {
        (0, _) => "success",
        (_, Some(c)) => c.text(),
        (_, None) => "not a libvmclock error code (VMCLOCK_OK or a VMCLOCK_E_* value)",
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyClock>()?;
    m.add_class::<PyReading>()?;
    m.add("VmclockError", m.py().get_type::<VmclockError>())?;
    m.add_function(wrap_pyfunction!(read_page, m)?)?;
    m.add_function(wrap_pyfunction!(strerror, m)?)?;
    for c in Code::ALL {
        m.add(c.name().trim_start_matches("VMCLOCK_"), c as i32)?;
    }
    m.add("PAST_MAX_AGE_NS", realtime::PAST_MAX_AGE_NS)?;
    m.add("PAST_RATE_PPM", realtime::PAST_RATE_PPM)?;
    Ok(())
}
