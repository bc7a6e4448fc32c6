
/* ---- The inline reader (hand-written in src/reader.h; appended to the generated header) ----
 *
 * vmclock_now_bounds_inline(r, out) gives exactly what vmclock_now_bounds(c, out) gives, with
 * the common case compiled into the caller: no call across the library boundary. It reads the
 * page's seq_count, the counter (RDTSCP, as the kernel's rdtsc_ordered() on CPUs that have it),
 * the constants the library published for the page version it read last (struct
 * vmclock_reader), and the page's seq_count again. Whenever anything is unusual (nothing
 * published yet, the page changed or is being written, a counter before the reference or far
 * from it, a leap second ahead, a page the inline arithmetic does not serve, another
 * architecture or compiler) it calls the library (vmclock_reader_now_bounds), which answers
 * and publishes the new version's constants.
 *
 *   const struct vmclock_reader *r = vmclock_reader_of(c);   once, after vmclock_open
 *   struct vmclock_bounds b;
 *   if (vmclock_now_bounds_inline(r, &b) == 0) ...            as vmclock_now_bounds(c, &b)
 *
 * The reader belongs to the handle: valid until vmclock_close(c), shared by every thread. */

#include <stddef.h>

#if defined(__x86_64__) && defined(__GNUC__) && defined(__SIZEOF_INT128__) && !defined(VMCLOCK_NO_INLINE_READER)
#define VMCLOCK_INLINE_READER 1
#define VMCLOCK_READER_ABI VMCLOCK_READER_X86_RDTSCP
#else
#define VMCLOCK_INLINE_READER 0
#define VMCLOCK_READER_ABI VMCLOCK_READER_CALL
#endif

/** The handle's reader for this header (never NULL for an open handle). */
#define vmclock_reader_of(c) vmclock_reader_get((c), VMCLOCK_READER_ABI)

/** vmclock_reader_try_at: the inline arithmetic does not serve this read (call the library). */
#define VMCLOCK_READER_DECLINED 1

#if VMCLOCK_INLINE_READER

/* Published by the library (src/lib.rs, struct vmclock_reader, same layout): read only, with
 * atomic loads, never written here. */
struct vmclock_reader {
  uint32_t gen; /* odd: being written, or nothing published */
  uint32_t reserved;
  const uint32_t *page; /* NULL: every read calls the library */
  const struct vmclock *handle;
  uint64_t key; /* seq_count << 32 | the word at 0x08, as one 64-bit load of 0x08 gives it */
  uint64_t counter_value;
  uint64_t dmax;
  uint64_t info; /* flags 0..8, status 8..16, TAI - UTC 16..32 */
  uint64_t disruption_marker;
  uint64_t e_a_lo, e_a_hi, e_k; /* earliest: A (2^-64 ns), K (2^-64 ns per tick) */
  uint64_t l_a_lo, l_a_hi, l_k; /* latest: A, K */
};

typedef char vmclock_reader_layout_[(sizeof(struct vmclock_reader) == 112 &&
                                     offsetof(struct vmclock_reader, page) == 8 &&
                                     offsetof(struct vmclock_reader, handle) == 16 &&
                                     offsetof(struct vmclock_reader, key) == 24 &&
                                     offsetof(struct vmclock_reader, dmax) == 40 &&
                                     offsetof(struct vmclock_reader, disruption_marker) == 56 &&
                                     offsetof(struct vmclock_reader, e_a_lo) == 64 &&
                                     offsetof(struct vmclock_reader, l_a_lo) == 88 &&
                                     offsetof(struct vmclock_reader, l_k) == 104)
                                        ? 1
                                        : -1];

__extension__ typedef unsigned __int128 vmclock_u128_;

#define VMCLOCK_LD_(p) __atomic_load_n((p), __ATOMIC_RELAXED)

/* The 128-bit product of two 64-bit values, as two halves. */
#define VMCLOCK_MUL_(a, b, hi, lo)                                                                                     \
  do {                                                                                                                 \
    vmclock_u128_ p_ = (vmclock_u128_)(a) * (b);                                                                       \
    (lo) = (uint64_t)p_;                                                                                               \
    (hi) = (uint64_t)(p_ >> 64);                                                                                       \
  } while (0)

/**
 * The inline arithmetic for a counter value read between the page's seq_count `s1` (loaded with
 * acquire order) and this call: 0 and `*out` written, exactly as vmclock_now_bounds for that page
 * and counter, or VMCLOCK_READER_DECLINED (`*out` untouched). Exposed for tests.
 *
 * Earliest and latest in 2^-64 ns are A + K*dC (one 64x64 product each): within dC + 2^31 of
 * the library's exact figures (src/lib.rs, Published). When the fraction is at least dC + 2^32
 * away from a whole ns, the whole ns are the library's (earliest rounded down, latest up);
 * otherwise (about 4 (dC + 2^32) / 2^64 of the reads) the library answers.
 */
static inline __attribute__((always_inline)) int vmclock_reader_try_at(const struct vmclock_reader *r, const uint32_t *page, uint32_t s1,
                                                                     uint64_t counter, struct vmclock_bounds *out) {
  uint32_t g1 = __atomic_load_n(&r->gen, __ATOMIC_ACQUIRE);
  uint64_t c1 = VMCLOCK_LD_(&r->counter_value);
  uint64_t d = counter - c1;
  uint64_t tol = d + ((uint64_t)1 << 32);
  uint64_t pe_lo, pe_hi, pl_lo, pl_hi, el, eh, ll, lh, w08_seq, pc1, info, marker, key;
  uint32_t g2;
  int bad;
  /* A + K*dC in 64-bit halves (what compilers do best); K < 2^64 (the library publishes no
   * other). */
  VMCLOCK_MUL_(VMCLOCK_LD_(&r->e_k), d, pe_hi, pe_lo);
  VMCLOCK_MUL_(VMCLOCK_LD_(&r->l_k), d, pl_hi, pl_lo);
  el = VMCLOCK_LD_(&r->e_a_lo) + pe_lo;
  eh = VMCLOCK_LD_(&r->e_a_hi) + pe_hi + (el < pe_lo);
  ll = VMCLOCK_LD_(&r->l_a_lo) + pl_lo;
  lh = VMCLOCK_LD_(&r->l_a_hi) + pl_hi + (ll < pl_lo);
  /* The fractions at least `tol` from a whole ns, and dC in range. */
  bad = (el - tol >= 0 - 2 * tol) | (ll - tol >= 0 - 2 * tol) | (d > VMCLOCK_LD_(&r->dmax));
  pc1 = c1 ^ VMCLOCK_LD_((const uint64_t *)(const void *)(page + 10));
  info = VMCLOCK_LD_(&r->info);
  marker = VMCLOCK_LD_(&r->disruption_marker);
  /* The key too inside the publication's window: read after g2, a newer publication's key
   * (a new marker on the same counter_value) could vouch for this one's figures. */
  key = VMCLOCK_LD_(&r->key);
  __atomic_thread_fence(__ATOMIC_ACQUIRE);
  /* The word at 0x08 and seq_count (0x0c) in one load (little-endian). */
  w08_seq = VMCLOCK_LD_((const uint64_t *)(const void *)(page + 2));
  g2 = VMCLOCK_LD_(&r->gen);
  if (bad | (pc1 != 0) | ((w08_seq ^ key) != 0) | ((uint32_t)(w08_seq >> 32) != s1) |
      (g1 != g2) | (g1 & 1))
    return VMCLOCK_READER_DECLINED;
  out->earliest_ns = (int64_t)eh;
  out->latest_ns = (int64_t)(lh + 1);
  out->disruption_marker = marker;
  out->flags = (uint32_t)(info & 0xff);
  out->tai_minus_utc = (int16_t)(uint16_t)(info >> 16);
  out->status = (uint8_t)(info >> 8);
  out->reserved = 0;
  return 0;
}

/**
 * Reads the time now: what vmclock_now_bounds(c, out) gives (0, or its VMCLOCK_E_* code with
 * `*out` unchanged), inline where it can. `r` from vmclock_reader_of(c).
 */
static inline __attribute__((always_inline)) int vmclock_now_bounds_inline(const struct vmclock_reader *r,
                                                                          struct vmclock_bounds *out) {
  const uint32_t *page;
  uint32_t s1, lo, hi, aux;
  if (r == NULL || out == NULL || (page = r->page) == NULL)
    return vmclock_reader_now_bounds(r, out);
  s1 = __atomic_load_n(&page[3], __ATOMIC_ACQUIRE);
  /* RDTSCP waits for every earlier instruction (the seq_count load, an input here) before
   * reading; the page pointer passes through it, so the compiler places the second seq_count
   * load after it (the same ordering as the kernel's rdtsc_ordered() and the Rust read). */
  __asm__ __volatile__("rdtscp" : "=a"(lo), "=d"(hi), "=c"(aux), "+r"(page) : "r"(s1));
  (void)aux;
  if (vmclock_reader_try_at(r, page, s1, ((uint64_t)hi << 32) | lo, out) == 0)
    return 0;
  return vmclock_reader_now_bounds(r, out);
}

#undef VMCLOCK_LD_
#undef VMCLOCK_MUL_

#else /* no inline reader: the library call */

static inline int vmclock_now_bounds_inline(const struct vmclock_reader *r, struct vmclock_bounds *out) {
  return vmclock_reader_now_bounds(r, out);
}

#endif

#endif /* VMCLOCK_H */
