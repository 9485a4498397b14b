// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* libbpf_bench: open and load an eBPF object with libbpf N times, for loader_bench.py.
 *
 *   libbpf_bench OBJ N PIN_ROOT
 *
 * Prints one line per repetition: "<open ns> <open+load ns>" (closing is not timed).
 * Maps pinned by name go under PIN_ROOT (never the default /sys/fs/bpf). Exit status 2
 * when libbpf refuses the object, with its last message on stderr.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <bpf/libbpf.h>

static char last_msg[512];

static int keep_last(enum libbpf_print_level level, const char *fmt, va_list args)
{
	if (level != LIBBPF_DEBUG)
		vsnprintf(last_msg, sizeof(last_msg), fmt, args);
	return 0;
}

static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	const char *path;
	int n, i, err;

	if (argc != 4) {
		fprintf(stderr, "usage: %s OBJ N PIN_ROOT\n", argv[0]);
		return 1;
	}
	path = argv[1];
	n = atoi(argv[2]);
	libbpf_set_print(keep_last);
	for (i = 0; i < n; i++) {
		LIBBPF_OPTS(bpf_object_open_opts, opts, .pin_root_path = argv[3]);
		struct bpf_object *obj;
		long long t0, t1, t2;

		t0 = now_ns();
		obj = bpf_object__open_file(path, &opts);
		t1 = now_ns();
		err = libbpf_get_error(obj);
		if (err) {
			fprintf(stderr, "open %s: %d %s", path, err, last_msg);
			return 2;
		}
		err = bpf_object__load(obj);
		t2 = now_ns();
		bpf_object__close(obj);
		if (err) {
			fprintf(stderr, "load %s: %d %s", path, err, last_msg);
			return 2;
		}
		printf("%lld %lld\n", t1 - t0, t2 - t0);
	}
	return 0;
}
