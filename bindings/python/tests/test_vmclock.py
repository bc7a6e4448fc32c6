"""Tests of the vmclock Python package: every conformance vector, and a live page written by
``vmtime gen`` (the path of the vmtime binary in $VMTIME, else target/debug/vmtime).

    python -m unittest discover -s bindings/python/tests -v
"""
import base64
import json
import os
import subprocess
import tempfile
import time
import unittest

import vmclock

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
VECTORS = os.path.join(REPO, "testdata", "vectors.json")


def vmtime_binary():
    path = os.environ.get("VMTIME") or os.path.join(REPO, "target", "debug", "vmtime")
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"no vmtime binary at {path}: build it (cargo build -p vmtime) or set VMTIME")
    return path


def gen(path, *args):
    """Writes a page of this machine's clock (counter calibrated over 200 ms) with `vmtime gen`."""
    subprocess.run([vmtime_binary(), "gen", path, "--tai-offset", "37", *args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def realtime_ns():
    return time.clock_gettime_ns(time.CLOCK_REALTIME)


class Vectors(unittest.TestCase):
    def test_every_vector(self):
        with open(VECTORS) as f:
            cases = json.load(f)
        self.assertGreaterEqual(len(cases), 200)
        errors = set()
        for case in cases:
            page = base64.b64decode(case["page_b64"])
            want = case["expect"]
            with self.subTest(case["name"]):
                try:
                    r = vmclock.read_page(page, case["counter"])
                except vmclock.VmclockError as e:
                    self.assertEqual(str(e), want["error"])
                    self.assertEqual(vmclock.strerror(e.code), want["error"])
                    errors.add(e.name)
                    continue
                got = {
                    "error": None,
                    "timescale": r.timescale,
                    "time_ns": r.page_time_ns,
                    "earliest_ns": r.earliest_ns,
                    "latest_ns": r.latest_ns,
                    "status": r.status,
                    "tai_minus_utc": r.tai_minus_utc,
                }
                self.assertEqual(got, want)
                self.assertEqual(r.earliest_ns is None, r.maxerror_ns is None)
                self.assertEqual(r, vmclock.read_page(page, case["counter"]), "readings compare by value")
        self.assertEqual(errors, {"VMCLOCK_E_INVALID", "VMCLOCK_E_NO_TIME", "VMCLOCK_E_NO_UTC",
                                  "VMCLOCK_E_OVERFLOW"})


class LivePage(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.TemporaryDirectory()
        cls.page = os.path.join(cls.dir.name, "page")
        gen(cls.page, "--maxerror-ns", "1000000")

    @classmethod
    def tearDownClass(cls):
        cls.dir.cleanup()

    def test_now_brackets_this_machines_clock(self):
        clock = vmclock.Clock(self.page)
        before = realtime_ns()
        r = clock.now()
        after = realtime_ns()
        self.assertIsInstance(r.time_ns, int)
        self.assertLessEqual(r.earliest_ns, r.time_ns)
        self.assertLessEqual(r.time_ns, r.latest_ns)
        # The page is this machine's clock with a 1 ms maximum error: CLOCK_REALTIME read around
        # the reading lies within the bound (a little slack for the calibration's rate error).
        self.assertLess(r.earliest_ns - 100_000, after)
        self.assertGreater(r.latest_ns + 100_000, before)
        self.assertGreaterEqual(r.maxerror_ns, 1_000_000)
        self.assertEqual(r.tai_minus_utc, 37)
        self.assertEqual(r.status, vmclock.STATUS_SYNCHRONIZED)
        self.assertTrue(r.reliable)
        self.assertEqual(r.disruption_marker, 0)
        self.assertEqual(r.leap, 0)
        self.assertEqual(r.timescale, "TAI")
        self.assertEqual(r.page_time_ns // 1_000_000_000 - r.time_ns // 1_000_000_000, 37)
        self.assertIn("Reading(earliest_ns=", repr(r))
        self.assertEqual(vmclock.__version__, "0.1.0")

    def test_readings_move_forward(self):
        clock = vmclock.Clock(self.page)
        last = clock.now().time_ns
        for _ in range(1000):
            t = clock.now().time_ns
            self.assertGreaterEqual(t, last)
            last = t

    def test_cap(self):
        clock = vmclock.Clock(self.page)
        r = clock.now_within(10_000_000)
        self.assertLessEqual(r.latest_ns - r.earliest_ns, 10_000_000)
        with self.assertRaises(vmclock.VmclockError) as e:
            clock.now_within(1_000_000)  # 1 ms either side is 2 ms wide
        self.assertEqual(e.exception.code, vmclock.E_TOO_WIDE)
        self.assertEqual(str(e.exception), vmclock.strerror(vmclock.E_TOO_WIDE))
        self.assertGreater(e.exception.reading.latest_ns - e.exception.reading.earliest_ns, 1_000_000)
        with tempfile.TemporaryDirectory() as d:
            free = os.path.join(d, "page")
            gen(free, "--maxerror-ns", "1000", "--status", "freerunning")
            with self.assertRaises(vmclock.VmclockError) as e:
                vmclock.Clock(free).now_within(10**18)
            self.assertEqual(e.exception.name, "VMCLOCK_E_UNSYNCHRONIZED")
            self.assertEqual(e.exception.reading.status, vmclock.STATUS_FREERUNNING)

    def test_bound_realtime(self):
        before_open = realtime_ns()
        clock = vmclock.Clock(self.page)
        ts = realtime_ns()
        before = clock.now()
        past = clock.bound_realtime(ts)
        after = clock.now()
        self.assertLessEqual(past.earliest_ns, past.time_ns)
        self.assertLessEqual(past.time_ns, past.latest_ns)
        # The page's bound at the call, moved back by the age: before a reading made after it,
        # and at least as wide as one made before it.
        self.assertLessEqual(past.earliest_ns, after.earliest_ns)
        self.assertLessEqual(past.latest_ns, after.latest_ns)
        self.assertGreaterEqual(past.latest_ns - past.earliest_ns, before.latest_ns - before.earliest_ns)
        # This machine's clock is the page's: the timestamp lies within its own bound.
        self.assertLess(past.earliest_ns - 100_000, ts)
        self.assertGreater(past.latest_ns + 100_000, ts)
        for bad, name in [(before_open, "VMCLOCK_E_DISRUPTED"), (ts - 2_000_000_000, "VMCLOCK_E_TOO_OLD"),
                          (realtime_ns() + 10_000_000_000, "VMCLOCK_E_TOO_OLD")]:
            with self.assertRaises(vmclock.VmclockError) as e:
                clock.bound_realtime(bad)
            self.assertEqual(e.exception.name, name)

    def test_open_errors_carry_the_c_texts(self):
        with tempfile.TemporaryDirectory() as d:
            with self.assertRaises(vmclock.VmclockError) as e:
                vmclock.Clock(os.path.join(d, "absent"))
            self.assertEqual(e.exception.code, vmclock.E_OPEN)
            self.assertEqual(e.exception.errno, 2)
            self.assertTrue(str(e.exception).startswith("cannot open or map the page"))
            for name, data in [("empty", b""), ("garbage", b"\xaa" * 4096)]:
                p = os.path.join(d, name)
                with open(p, "wb") as f:
                    f.write(data)
                with self.assertRaises(vmclock.VmclockError) as e:
                    vmclock.Clock(p)
                self.assertEqual(e.exception.code, vmclock.E_INVALID, name)

    def test_close_releases_the_mapping_and_its_place(self):
        with vmclock.Clock(self.page) as clock:
            self.assertFalse(clock.closed)
            clock.now()
        self.assertTrue(clock.closed)
        with self.assertRaises(ValueError):
            clock.now()
        clock.close()  # idempotent
        # At most 64 page files are guarded at once per process: the next open is refused with
        # VMCLOCK_E_LIMIT, and closing one frees a place.
        held = []
        try:
            with self.assertRaises(vmclock.VmclockError) as e:
                for _ in range(65):
                    held.append(vmclock.Clock(self.page))
            self.assertEqual(e.exception.code, vmclock.E_LIMIT)
            self.assertLessEqual(len(held), 64)
            held.pop().close()
            held.append(vmclock.Clock(self.page))
            held[-1].now()
        finally:
            for c in held:
                c.close()
        with vmclock.Clock(self.page) as clock:
            clock.now()

    def test_a_truncated_page_file_raises_gone_not_sigbus(self):
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "page")
            gen(p, "--maxerror-ns", "1000")
            clock = vmclock.Clock(p)
            clock.now()
            os.chmod(p, 0o644)
            os.truncate(p, 0)
            with self.assertRaises(vmclock.VmclockError) as e:
                clock.now()
            self.assertEqual(e.exception.code, vmclock.E_GONE)


if __name__ == "__main__":
    unittest.main()
