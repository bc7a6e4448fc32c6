/* libvmclock example: bounded time now, next to CLOCK_REALTIME.
 *   cc -Icrates/vmclock-ffi/include crates/vmclock-ffi/examples/now.c -Ltarget/release -lvmclock -o now
 *   ./now [PAGE]            (default /dev/vmclock0)
 * Exit status: 0 when the reading is reliable and bounded, 1 otherwise, 2 on error. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "vmclock.h"

static const char *status_name(uint8_t s) {
    switch (s) {
    case VMCLOCK_STATUS_UNKNOWN: return "UNKNOWN";
    case VMCLOCK_STATUS_INITIALIZING: return "INITIALIZING";
    case VMCLOCK_STATUS_SYNCHRONIZED: return "SYNCHRONIZED";
    case VMCLOCK_STATUS_FREERUNNING: return "FREERUNNING";
    case VMCLOCK_STATUS_UNRELIABLE: return "UNRELIABLE";
    default: return "?";
    }
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "/dev/vmclock0";
    int err;
    struct vmclock *c = vmclock_open(path, &err);
    if (!c) {
        fprintf(stderr, "%s: %s\n", path, vmclock_strerror(err));
        return 2;
    }
    struct vmclock_now n, capped, then;
    struct timespec rt;
    int rc = vmclock_now(c, &n);
    clock_gettime(CLOCK_REALTIME, &rt);
    long long realtime = (long long)rt.tv_sec * 1000000000LL + rt.tv_nsec;
    /* A caller's cap (SYNCHRONIZED and at most 10 ms wide), and the bound of the true time at
     * the instant the CLOCK_REALTIME timestamp above was taken. */
    int rc_within = vmclock_now_within(c, 10000000, &capped);
    int rc_past = vmclock_bound_realtime(c, realtime, &then);
    /* The lean read: only the bounds and what decides whether to trust them. */
    struct vmclock_bounds b;
    int rc_bounds = vmclock_now_bounds(c, &b);
    /* The same read inline (vmclock.h compiles it into this program; the library is called only
     * when the page changed or something is unusual): the reader is the handle's, taken once. */
    const struct vmclock_reader *r = vmclock_reader_of(c);
    struct vmclock_bounds fast[2];
    int rc_inline = vmclock_now_bounds_inline(r, &fast[0]); /* the first read publishes */
    if (rc_inline == 0)
        rc_inline = vmclock_now_bounds_inline(r, &fast[1]);
    vmclock_close(c);
    if (rc != 0) {
        fprintf(stderr, "%s: %s\n", path, vmclock_strerror(rc));
        return 2;
    }
    printf("time_ns %lld\n", (long long)n.time_ns);
    if (n.flags & VMCLOCK_NOW_BOUNDED)
        printf("earliest_ns %lld\nlatest_ns %lld\nmaxerror_ns %lld\n", (long long)n.earliest_ns,
               (long long)n.latest_ns, (long long)n.maxerror_ns);
    else
        printf("bounds unknown\n");
    if (n.flags & VMCLOCK_NOW_TAI_VALID)
        printf("tai_minus_utc %d\n", n.tai_minus_utc);
    printf("status %s\ndisruption_marker %llu\n", status_name(n.status), (unsigned long long)n.disruption_marker);
    printf("clock_realtime_minus_page_ns %lld\n", realtime - (long long)n.time_ns);
    printf("within_10ms %s\n", rc_within == 0 ? "ok" : vmclock_strerror(rc_within));
    if (rc_past == 0)
        printf("realtime_earliest_ns %lld\nrealtime_latest_ns %lld\n", (long long)then.earliest_ns,
               (long long)then.latest_ns);
    else
        printf("realtime_bound %s\n", vmclock_strerror(rc_past));
    if (rc_bounds == 0 && (b.flags & VMCLOCK_NOW_BOUNDED))
        printf("bounds_earliest_ns %lld\nbounds_latest_ns %lld\nbounds_flags %u\nbounds_status %s\n",
               (long long)b.earliest_ns, (long long)b.latest_ns, (unsigned)b.flags, status_name(b.status));
    else
        printf("bounds %s\n", rc_bounds == 0 ? "unknown" : vmclock_strerror(rc_bounds));
    if (rc_inline == 0 && (fast[1].flags & VMCLOCK_NOW_BOUNDED))
        printf("inline_earliest_ns %lld\ninline_latest_ns %lld\ninline_flags %u\n", (long long)fast[1].earliest_ns,
               (long long)fast[1].latest_ns, (unsigned)fast[1].flags);
    else
        printf("inline %s\n", rc_inline == 0 ? "unknown" : vmclock_strerror(rc_inline));
    return (n.flags & VMCLOCK_NOW_RELIABLE) && (n.flags & VMCLOCK_NOW_BOUNDED) ? 0 : 1;
}
