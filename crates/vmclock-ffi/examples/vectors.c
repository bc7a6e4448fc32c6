/* The conformance vectors (testdata/vectors.json, docs/PROTOCOL.md) through libvmclock, from C:
 * every case's page read at its counter with vmclock_read_page, compared field by field (the
 * error text from vmclock_strerror).
 *
 *   cc -Wall -Werror -Iinclude examples/vectors.c libvmclock.a -lpthread -ldl -lm -o vectors
 *   ./vectors ../../testdata/vectors.json
 *
 * The file's own layout is relied on (one case a line, the keys in the documented order, no
 * escapes in names or texts): a reader for this file, not a general JSON parser. Exit 0 when
 * every case agrees. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vmclock.h>

/* The text after `"key": ` in line, or NULL. */
static const char *after(const char *line, const char *key) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *p = strstr(line, pat);
    return p ? p + strlen(pat) : NULL;
}

/* A JSON string value (no escapes but \" and \\) into out; 0 on success, 1 for null. */
static int str_value(const char *p, char *out, size_t cap) {
    if (!p) return -1;
    if (strncmp(p, "null", 4) == 0) return 1;
    if (*p != '"') return -1;
    size_t n = 0;
    for (p++; *p && *p != '"'; p++) {
        if (*p == '\\' && p[1]) p++;
        if (n + 1 < cap) out[n++] = *p;
    }
    out[n] = 0;
    return 0;
}

/* An integer value: 0 and *v, 1 for null. */
static int int_value(const char *p, int64_t *v) {
    if (!p) return -1;
    if (strncmp(p, "null", 4) == 0) return 1;
    *v = strtoll(p, NULL, 10);
    return 0;
}

static int uint_value(const char *p, uint64_t *v) {
    if (!p) return -1;
    if (strncmp(p, "null", 4) == 0) return 1;
    *v = strtoull(p, NULL, 10);
    return 0;
}

static int b64(char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Standard base64 with padding into out; the byte count. */
static size_t decode(const char *s, uint8_t *out) {
    size_t n = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (; *s && *s != '=' && *s != '"'; s++) {
        int v = b64(*s);
        if (v < 0) break;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (uint8_t)(acc >> bits);
        }
    }
    return n;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s testdata/vectors.json\n", argv[0]);
        return 2;
    }
    FILE *f = fopen(argv[1], "r");
    if (!f) {
        perror(argv[1]);
        return 2;
    }
    static char line[65536], b64text[16384], name[256], text[512], scale[32];
    static uint8_t page[12288];
    int passed = 0, failed = 0;
    while (fgets(line, sizeof line, f)) {
        if (!strstr(line, "\"name\": ")) continue;
        uint64_t counter = 0;
        if (str_value(after(line, "name"), name, sizeof name) != 0 ||
            str_value(after(line, "page_b64"), b64text, sizeof b64text) != 0 ||
            uint_value(after(line, "counter"), &counter) != 0) {
            fprintf(stderr, "unreadable case: %.80s\n", line);
            return 2;
        }
        size_t len = decode(b64text, page);
        struct vmclock_now n;
        struct vmclock_page_time t;
        memset(&n, 0, sizeof n);
        memset(&t, 0, sizeof t);
        int rc = vmclock_read_page(page, len, counter, &n, &t);
        int ok = 1;
        int has_error = str_value(after(line, "error"), text, sizeof text) == 0;
        if (has_error) {
            ok = rc != 0 && strcmp(vmclock_strerror(rc), text) == 0;
        } else if (rc != 0) {
            ok = 0;
        } else {
            static const char *scales[] = {"UTC", "TAI", "MONOTONIC"};
            int64_t earliest = 0, latest = 0, status = 0, tai = 0;
            uint64_t time_ns = 0;
            int bounded = (n.flags & VMCLOCK_NOW_BOUNDED) != 0;
            int tai_valid = (n.flags & VMCLOCK_NOW_TAI_VALID) != 0;
            ok = str_value(after(line, "timescale"), scale, sizeof scale) == 0 && t.time_type < 3 &&
                 strcmp(scale, scales[t.time_type]) == 0 &&
                 uint_value(after(line, "time_ns"), &time_ns) == 0 &&
                 time_ns == t.sec * 1000000000u + t.nsec &&
                 int_value(after(line, "earliest_ns"), &earliest) == !bounded &&
                 int_value(after(line, "latest_ns"), &latest) == !bounded &&
                 (!bounded || (earliest == n.earliest_ns && latest == n.latest_ns)) &&
                 int_value(after(line, "status"), &status) == 0 && status == n.status &&
                 int_value(after(line, "tai_minus_utc"), &tai) == !tai_valid &&
                 (!tai_valid || tai == n.tai_minus_utc);
        }
        if (ok) {
            passed++;
        } else {
            failed++;
            printf("FAIL %s: rc %d (%s), time_ns %" PRIu64 ".%09u, earliest %" PRId64 ", latest %" PRId64 "\n",
                   name, rc, vmclock_strerror(rc), t.sec, t.nsec, n.earliest_ns, n.latest_ns);
        }
    }
    fclose(f);
    printf("vectors: %d passed, %d failed\n", passed, failed);
    return failed == 0 && passed >= 200 ? 0 : 1;
}
