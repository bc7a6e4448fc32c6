/*
 * A ClockBound 3.x C client that knows nothing of vmtime: it reads bounded time through
 * clock-bound-ffi's public API (clockbound.h, libclockbound) and prints one line per reading:
 * "STATUS EARLIEST_NS LATEST_NS". Usage: clockbound3_now SHM_PATH VMCLOCK_PATH COUNT
 * (tests/clockbound3.rs compiles it with cc -Wall -Werror and runs it on vmtime's shm1).
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <clockbound.h>

static long long ns(struct timespec t)
{
	return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv)
{
	clockbound_err err;
	clockbound_ctx *ctx;
	long count, i;

	if (argc != 4) {
		fprintf(stderr, "usage: %s SHM_PATH VMCLOCK_PATH COUNT\n", argv[0]);
		return 2;
	}
	count = strtol(argv[3], NULL, 10);
	ctx = clockbound_open_with(argv[1], argv[2], &err);
	if (ctx == NULL) {
		fprintf(stderr, "clockbound_open_with: error kind %d: %s\n", (int)err.kind, err.detail);
		return 1;
	}
	for (i = 0; i < count; i++) {
		clockbound_now_result now;

		if (clockbound_now(ctx, &now, &err) != NULL) {
			fprintf(stderr, "clockbound_now: error kind %d: %s\n", (int)err.kind, err.detail);
			return 1;
		}
		printf("%d %lld %lld\n", (int)now.clock_status, ns(now.earliest), ns(now.latest));
	}
	if (clockbound_close(ctx, &err) != NULL) {
		fprintf(stderr, "clockbound_close: error kind %d: %s\n", (int)err.kind, err.detail);
		return 1;
	}
	return 0;
}
