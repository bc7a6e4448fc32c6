"""Bounded time from a Linux vmclock page (``/dev/vmclock0`` or a page file), with no system call.

>>> import vmclock
>>> clock = vmclock.Clock("/dev/vmclock0")
>>> r = clock.now()
>>> r.earliest_ns <= r.time_ns <= r.latest_ns      # ns since 1970 UTC (CLOCK_REALTIME's scale)
True

Errors raise :class:`VmclockError`, whose ``str()`` is the C API's text (``vmclock_strerror``),
``code`` the ``VMCLOCK_E_*`` value (also ``vmclock.E_INVALID`` and friends) and ``name`` its name.
Built on the Rust ``vmclock`` crate (docs/INTEROP.md).
"""
from ._native import (  # noqa: F401
    Clock,
    Reading,
    VmclockError,
    read_page,
    strerror,
    E_NULL,
    E_OPEN,
    E_INVALID,
    E_BUSY,
    E_NO_TIME,
    E_COUNTER,
    E_NO_UTC,
    E_OVERFLOW,
    E_GONE,
    E_LIMIT,
    E_UNSYNCHRONIZED,
    E_TOO_WIDE,
    E_TOO_OLD,
    E_DISRUPTED,
    E_SLEWING,
    PAST_MAX_AGE_NS,
    PAST_RATE_PPM,
)

try:
    from importlib.metadata import version as _version

    __version__ = _version("vmclock")
except Exception:  # not installed as a distribution (a source tree on sys.path)
    __version__ = "0.0.0"

STATUS_UNKNOWN = 0
STATUS_INITIALIZING = 1
STATUS_SYNCHRONIZED = 2
STATUS_FREERUNNING = 3
STATUS_UNRELIABLE = 4

__all__ = ["Clock", "Reading", "VmclockError", "read_page", "strerror", "__version__"]
