/* libvmclock: cost of vmclock_now() per call next to clock_gettime(CLOCK_REALTIME), measured in
 * the same run, as a ratio.
 *   ./bench PAGE [CALLS]     (default 5,000,000 calls, best of 5 rounds each) */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "vmclock.h"

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC_RAW, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench PAGE [CALLS]\n");
        return 2;
    }
    long calls = argc > 2 ? atol(argv[2]) : 5000000;
    int err;
    struct vmclock *c = vmclock_open(argv[1], &err);
    if (!c) {
        fprintf(stderr, "%s: %s\n", argv[1], vmclock_strerror(err));
        return 2;
    }
    volatile long long sink = 0;
    double best_vm = 1e9, best_cg = 1e9;
    for (int round = 0; round < 5; round++) {
        struct vmclock_now n;
        double t0 = now_s();
        for (long i = 0; i < calls; i++) {
            if (vmclock_now(c, &n) != 0) {
                fprintf(stderr, "vmclock_now failed\n");
                return 2;
            }
            sink += n.latest_ns;
        }
        double t1 = now_s();
        struct timespec ts;
        for (long i = 0; i < calls; i++) {
            clock_gettime(CLOCK_REALTIME, &ts);
            sink += ts.tv_nsec;
        }
        double t2 = now_s();
        double vm = (t1 - t0) / calls * 1e9, cg = (t2 - t1) / calls * 1e9;
        if (vm < best_vm) best_vm = vm;
        if (cg < best_cg) best_cg = cg;
    }
    vmclock_close(c);
    printf("vmclock_now %.2f ns/call\nclock_gettime_realtime %.2f ns/call\nratio %.3f\n", best_vm, best_cg,
           best_vm / best_cg);
    return 0;
}
