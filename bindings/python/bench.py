"""Read cost of the vmclock Python package (now, now_within, and bound_realtime of a timestamp taken
just before, that clock_gettime_ns included), as a ratio to time.clock_gettime_ns(CLOCK_REALTIME)
measured in the same run (docs/BENCHMARKS.md).

    python bindings/python/bench.py PAGE [ROUNDS]

Each round times a loop of 100,000 calls of each, alternating which goes first; the medians of
the per-call costs over the rounds are printed, with their ratio. Figures only: nothing is judged.
"""
import statistics
import sys
import time

import vmclock


def per_call_ns(fn, n):
    t0 = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return (time.perf_counter_ns() - t0) / n


def main():
    page = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 21
    clock = vmclock.Clock(page)
    now = clock.now
    rt = time.CLOCK_REALTIME
    gettime = time.clock_gettime_ns

    def reference():
        return gettime(rt)

    def within():
        return clock.now_within(1 << 62)

    def past():
        # A timestamp taken just before (its own clock_gettime_ns included).
        return clock.bound_realtime(gettime(rt))

    n = 100_000
    cases = {"now": now, "now_within": within, "bound_realtime": past, "clock_gettime_ns": reference}
    costs = {k: [] for k in cases}
    for r in range(rounds):
        order = list(cases) if r % 2 == 0 else list(reversed(list(cases)))
        for k in order:
            costs[k].append(per_call_ns(cases[k], n))
    ref = statistics.median(costs["clock_gettime_ns"])
    for k in cases:
        m = statistics.median(costs[k])
        print(f"{k:18s} {m:8.1f} ns/call  ratio {m / ref:5.2f}")
    # A reading's fields, for the record.
    r = now()
    print(f"reading: {r!r}")


if __name__ == "__main__":
    main()
