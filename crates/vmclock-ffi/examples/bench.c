/* libvmclock: cost of vmclock_now(), vmclock_now_bounds() and vmclock.h's inline
 * vmclock_now_bounds_inline() per call against clock_gettime(CLOCK_REALTIME), measured in the
 * same run, as ratios. The four are interleaved in
 * blocks of 64 calls (so all see the same machine); each block gives a ratio per function, and the
 * median over all blocks is the figure.
 *   ./bench PAGE [BLOCKS]     (default 200,000 blocks of 64 calls each) */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "vmclock.h"

#define BLOCK 64

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC_RAW, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench PAGE [BLOCKS]\n");
        return 2;
    }
    long blocks = argc > 2 ? atol(argv[2]) : 200000;
    if (blocks < 1) {
        fprintf(stderr, "bench: BLOCKS must be at least 1\n");
        return 2;
    }
    int err;
    struct vmclock *c = vmclock_open(argv[1], &err);
    if (!c) {
        fprintf(stderr, "%s: %s\n", argv[1], vmclock_strerror(err));
        return 2;
    }
    double *ratio = malloc(sizeof(double) * (size_t)blocks);
    double *ratio_b = malloc(sizeof(double) * (size_t)blocks);
    double *ratio_i = malloc(sizeof(double) * (size_t)blocks);
    const struct vmclock_reader *r = vmclock_reader_of(c);
    if (!ratio || !ratio_b || !ratio_i) {
        fprintf(stderr, "bench: out of memory\n");
        return 2;
    }
    volatile long long sink = 0;
    long long total_vm = 0, total_cg = 0, total_b = 0, total_i = 0;
    for (long b = 0; b < blocks; b++) {
        struct vmclock_now n;
        struct timespec ts;
        long long t0 = now_ns();
        for (int i = 0; i < BLOCK; i++) {
            int rc = vmclock_now(c, &n);
            if (rc != 0) {
                fprintf(stderr, "%s: %s\n", argv[1], vmclock_strerror(rc));
                return 2;
            }
            sink += n.latest_ns;
        }
        long long t1 = now_ns();
        for (int i = 0; i < BLOCK; i++) {
            clock_gettime(CLOCK_REALTIME, &ts);
            sink += ts.tv_nsec;
        }
        long long t2 = now_ns();
        for (int i = 0; i < BLOCK; i++) {
            struct vmclock_bounds lean;
            int rc = vmclock_now_bounds(c, &lean);
            if (rc != 0) {
                fprintf(stderr, "%s: %s\n", argv[1], vmclock_strerror(rc));
                return 2;
            }
            sink += lean.latest_ns;
        }
        long long t3 = now_ns();
        for (int i = 0; i < BLOCK; i++) {
            struct vmclock_bounds lean;
            int rc = vmclock_now_bounds_inline(r, &lean);
            if (rc != 0) {
                fprintf(stderr, "%s: %s\n", argv[1], vmclock_strerror(rc));
                return 2;
            }
            sink += lean.latest_ns;
        }
        long long t4 = now_ns();
        total_vm += t1 - t0;
        total_cg += t2 - t1;
        total_b += t3 - t2;
        total_i += t4 - t3;
        ratio[b] = (double)(t1 - t0) / (double)(t2 > t1 ? t2 - t1 : 1);
        ratio_b[b] = (double)(t3 - t2) / (double)(t2 > t1 ? t2 - t1 : 1);
        ratio_i[b] = (double)(t4 - t3) / (double)(t2 > t1 ? t2 - t1 : 1);
    }
    vmclock_close(c);
    qsort(ratio, (size_t)blocks, sizeof(double), by_value);
    printf("vmclock_now %.2f ns/call\nclock_gettime_realtime %.2f ns/call\n",
           (double)total_vm / (blocks * BLOCK), (double)total_cg / (blocks * BLOCK));
    printf("ratio %.3f (median per block of %d calls; p25 %.3f, p75 %.3f; %ld blocks)\n", ratio[blocks / 2], BLOCK,
           ratio[blocks / 4], ratio[blocks * 3 / 4], blocks);
    qsort(ratio_b, (size_t)blocks, sizeof(double), by_value);
    printf("vmclock_now_bounds %.2f ns/call\n", (double)total_b / (blocks * BLOCK));
    printf("ratio_bounds %.3f (median per block of %d calls; p25 %.3f, p75 %.3f; %ld blocks)\n", ratio_b[blocks / 2],
           BLOCK, ratio_b[blocks / 4], ratio_b[blocks * 3 / 4], blocks);
    qsort(ratio_i, (size_t)blocks, sizeof(double), by_value);
    printf("vmclock_now_bounds_inline %.2f ns/call\n", (double)total_i / (blocks * BLOCK));
    printf("ratio_inline %.3f (median per block of %d calls; p25 %.3f, p75 %.3f; %ld blocks)\n", ratio_i[blocks / 2],
           BLOCK, ratio_i[blocks / 4], ratio_i[blocks * 3 / 4], blocks);
    free(ratio);
    free(ratio_b);
    free(ratio_i);
    return 0;
}
