// SPDX-License-Identifier: GPL-2.0
/* Rejected (map-value-bounds): the bound check lets the index reach 4, one past the last of
 * the value's four slots (the check should be i >= 4). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64[4]);
	__uint(max_entries, 1);
} per_queue SEC(".maps");

SEC("xdp")
int map_value_bounds(struct xdp_md *ctx)
{
	__u32 zero = 0, i = ctx->rx_queue_index;
	__u64 *slots = bpf_map_lookup_elem(&per_queue, &zero);

	if (!slots || i > 4)
		return XDP_PASS;
	slots[i] += 1;
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
