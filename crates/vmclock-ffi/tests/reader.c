/* Drives vmclock.h's inline reader for tests/c.rs: reads commands from the file argv[1], one a
 * line, and prints one line for each (the Rust test compares them with vmclock_now_bounds).
 *
 *   page PATH      open PATH (closing the previous handle): "open 0" or "open <code>"
 *   warm           vmclock_reader_now_bounds (the library call, which publishes): "warm <rc>"
 *   c COUNTER      the inline arithmetic at COUNTER (vmclock_reader_try_at): "ok <fields>" or
 *                  "declined"
 *   inline         vmclock_now_bounds_inline: "inline <rc> <fields>"
 *   lib            vmclock_now_bounds: "lib <rc> <fields>"
 *   off            the reader of a header this library does not serve (abi 0), then inline
 *   copy SRC       SRC's bytes written over the open page's file (a new version): "copied"
 *   truncate       the open page's file truncated to 0 bytes: "truncated"
 *
 * <fields>: earliest_ns latest_ns disruption_marker flags tai_minus_utc status reserved. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vmclock.h"

static void fields(const struct vmclock_bounds *b) {
  printf(" %" PRId64 " %" PRId64 " %" PRIu64 " %" PRIu32 " %d %u %u\n", b->earliest_ns, b->latest_ns,
         b->disruption_marker, b->flags, (int)b->tai_minus_utc, (unsigned)b->status, (unsigned)b->reserved);
}

int main(int argc, char **argv) {
  char line[4096], path[4096] = "";
  struct vmclock *c = NULL;
  const struct vmclock_reader *r = NULL;
  FILE *in;
  if (argc != 2 || (in = fopen(argv[1], "r")) == NULL) {
    fprintf(stderr, "usage: reader COMMANDS\n");
    return 2;
  }
  while (fgets(line, sizeof line, in)) {
    struct vmclock_bounds b;
    int rc;
    line[strcspn(line, "\n")] = 0;
    memset(&b, 0xa5, sizeof b);
    if (strncmp(line, "page ", 5) == 0) {
      int err = 0;
      vmclock_close(c);
      snprintf(path, sizeof path, "%s", line + 5);
      c = vmclock_open(path, &err);
      r = vmclock_reader_of(c);
      printf("open %d\n", err);
    } else if (strcmp(line, "warm") == 0) {
      printf("warm %d\n", vmclock_reader_now_bounds(r, &b));
    } else if (strncmp(line, "c ", 2) == 0) {
#if VMCLOCK_INLINE_READER
      uint64_t counter = strtoull(line + 2, NULL, 10);
      uint32_t s1;
      if (r == NULL || r->page == NULL) {
        printf("declined\n");
        continue;
      }
      s1 = __atomic_load_n(&r->page[3], __ATOMIC_ACQUIRE);
      rc = vmclock_reader_try_at(r, r->page, s1, counter, &b);
      if (rc == VMCLOCK_READER_DECLINED) {
        printf("declined\n");
      } else {
        printf("ok");
        fields(&b);
      }
#else
      printf("declined\n");
#endif
    } else if (strcmp(line, "inline") == 0) {
      rc = vmclock_now_bounds_inline(r, &b);
      printf("inline %d", rc);
      fields(&b);
    } else if (strcmp(line, "lib") == 0) {
      rc = vmclock_now_bounds(c, &b);
      printf("lib %d", rc);
      fields(&b);
    } else if (strcmp(line, "off") == 0) {
      const struct vmclock_reader *off = vmclock_reader_get(c, VMCLOCK_READER_CALL);
      rc = vmclock_now_bounds_inline(off, &b);
      printf("off %d", rc);
      fields(&b);
    } else if (strncmp(line, "copy ", 5) == 0) {
      char buf[8192];
      size_t n;
      FILE *src = fopen(line + 5, "rb"), *dst = fopen(path, "r+b");
      if (src == NULL || dst == NULL)
        return 3;
      n = fread(buf, 1, sizeof buf, src);
      if (fwrite(buf, 1, n, dst) != n)
        return 3;
      fclose(src);
      fclose(dst);
      printf("copied\n");
    } else if (strcmp(line, "truncate") == 0) {
      if (truncate(path, 0) != 0)
        return 3;
      printf("truncated\n");
    } else {
      fprintf(stderr, "unknown command: %s\n", line);
      return 2;
    }
  }
  vmclock_close(c);
  return 0;
}
