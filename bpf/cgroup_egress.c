// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* cgroup_egress: counts the packets and bytes a cgroup sends, and allows them all.
 *
 * Contract: program cg_egress (SEC("cgroup_skb/egress")); map egress_stats (ARRAY
 * __u32 -> __u64, 2 entries: [0] packets, [1] bytes); returns 1 (allow).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 2);
} egress_stats SEC(".maps");

static __always_inline void add(__u32 idx, __u64 delta)
{
	__u64 *slot = bpf_map_lookup_elem(&egress_stats, &idx);

	if (slot)
		__sync_fetch_and_add(slot, delta);
}

SEC("cgroup_skb/egress")
int cg_egress(struct __sk_buff *skb)
{
	add(0, 1);
	add(1, skb->len);
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
