// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The C side of benchmarks/entries_bench.py: writes N entries (__u32 key k -> __u64 value
 * 3k) into a pinned hash map with one BPF_MAP_UPDATE_BATCH (libbpf's bpf_map_update_batch),
 * then deletes them with one BPF_MAP_DELETE_BATCH. Prints the two times in ns.
 *
 *     entries_batch PIN N
 */
#include <bpf/bpf.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s PIN N\n", argv[0]);
		return 2;
	}
	int fd = bpf_obj_get(argv[1]);
	if (fd < 0) {
		fprintf(stderr, "%s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	__u32 n = (__u32)strtoul(argv[2], NULL, 10);
	__u32 *keys = calloc(n, sizeof(*keys));
	__u64 *values = calloc(n, sizeof(*values));
	if (keys == NULL || values == NULL)
		return 1;
	for (__u32 i = 0; i < n; i++) {
		keys[i] = i;
		values[i] = 3ULL * i;
	}
	LIBBPF_OPTS(bpf_map_batch_opts, opts, .elem_flags = 0, .flags = 0);
	__u32 count = n;
	int64_t t0 = now_ns();
	if (bpf_map_update_batch(fd, keys, values, &count, &opts) != 0 || count != n) {
		fprintf(stderr, "update batch: %s (%u of %u)\n", strerror(errno), count, n);
		return 1;
	}
	int64_t t1 = now_ns();
	count = n;
	if (bpf_map_delete_batch(fd, keys, &count, &opts) != 0 || count != n) {
		fprintf(stderr, "delete batch: %s (%u of %u)\n", strerror(errno), count, n);
		return 1;
	}
	int64_t t2 = now_ns();
	printf("%lld %lld\n", (long long)(t1 - t0), (long long)(t2 - t1));
	return 0;
}
