"""Type stubs of the native module (src/lib.rs)."""
from os import PathLike
from typing import Optional, Union

class Reading:
    earliest_ns: Optional[int]
    time_ns: int
    latest_ns: Optional[int]
    maxerror_ns: Optional[int]
    esterror_ns: Optional[int]
    tai_minus_utc: Optional[int]
    status: int
    disruption_marker: int
    leap: int
    counter: int
    time_type: int
    page_time_ns: int
    @property
    def timescale(self) -> str: ...
    @property
    def reliable(self) -> bool: ...

class Clock:
    def __init__(self, path: Union[str, bytes, PathLike]) -> None: ...
    def now(self) -> Reading: ...
    def now_within(self, max_width_ns: int) -> Reading: ...
    def bound_realtime(self, realtime_ns: int) -> Reading: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    def __enter__(self) -> "Clock": ...
    def __exit__(self, *args: object) -> bool: ...

class VmclockError(Exception):
    code: int
    name: str
    errno: Optional[int]
    reading: Optional[Reading]

def read_page(page: bytes, counter: int) -> Reading: ...
def strerror(code: int) -> str: ...

E_NULL: int
E_OPEN: int
E_INVALID: int
E_BUSY: int
E_NO_TIME: int
E_COUNTER: int
E_NO_UTC: int
E_OVERFLOW: int
E_GONE: int
E_LIMIT: int
E_UNSYNCHRONIZED: int
E_TOO_WIDE: int
E_TOO_OLD: int
E_DISRUPTED: int
E_SLEWING: int
PAST_MAX_AGE_NS: int
PAST_RATE_PPM: int
