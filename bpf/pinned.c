// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* pinned: a map pinned by name (LIBBPF_PIN_BY_NAME) shared by every load with the same pin
 * path, and an unpinned one, each counting the runs of sk_count (a socket filter).
 *
 * Not given to bpftool: libbpf would pin `pinned_runs` under /sys/fs/bpf itself.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pinned_runs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} local_runs SEC(".maps");

SEC("socket")
int sk_count(struct __sk_buff *skb)
{
	__u32 zero = 0;
	__u64 *p = bpf_map_lookup_elem(&pinned_runs, &zero);
	__u64 *l = bpf_map_lookup_elem(&local_runs, &zero);

	if (p)
		__sync_fetch_and_add(p, 1);
	if (l)
		__sync_fetch_and_add(l, 1);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
