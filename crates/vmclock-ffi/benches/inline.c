/* vmclock.h's inline reader as a C program compiles it (cc -O2), for the Rust benches
 * (build.rs compiles this file and links it into them only). */
#include <stdlib.h>

#include "vmclock.h"

/* 64 reads back to back, earliest + latest folded into a sum (the independent harness). */
int64_t vmclock_bench_inline_sum(const struct vmclock_reader *r) {
  uint64_t sum = 0;
  int i;
  for (i = 0; i < 64; i++) {
    struct vmclock_bounds b;
    if (vmclock_now_bounds_inline(r, &b) != 0)
      abort();
    sum += (uint64_t)b.earliest_ns + (uint64_t)b.latest_ns;
  }
  return (int64_t)sum;
}

/* `n` reads, each one's earliest and latest stored to `sink` (the criterion pairs' black_box). */
void vmclock_bench_inline_each(const struct vmclock_reader *r, int n, volatile int64_t *sink) {
  int i;
  for (i = 0; i < n; i++) {
    struct vmclock_bounds b;
    if (vmclock_now_bounds_inline(r, &b) != 0)
      abort();
    sink[0] = b.earliest_ns;
    sink[1] = b.latest_ns;
  }
}
