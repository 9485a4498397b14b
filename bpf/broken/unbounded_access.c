// SPDX-License-Identifier: GPL-2.0
/* Rejected (unbounded-access): an index from the context is used with no bound at all. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64[4]);
	__uint(max_entries, 1);
} per_queue SEC(".maps");

SEC("xdp")
int unbounded_access(struct xdp_md *ctx)
{
	__u32 zero = 0, i = ctx->rx_queue_index;
	__u64 *slots = bpf_map_lookup_elem(&per_queue, &zero);

	if (!slots)
		return XDP_PASS;
	slots[i] += 1;
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
