// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* legacy_maps: maps declared in the legacy "maps" section as struct bpf_map_def (libbpf 1.x
 * refuses this section, so it lives in its own object), one with trailing fields beyond the
 * five standard ones. leg_count (cgroup_skb/ingress) counts packets per protocol.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct bpf_map_def {
	unsigned int type;
	unsigned int key_size;
	unsigned int value_size;
	unsigned int max_entries;
	unsigned int map_flags;
};

/* the classic layout plus two trailing fields (inner map index, numa node) */
struct bpf_map_def_ext {
	unsigned int type;
	unsigned int key_size;
	unsigned int value_size;
	unsigned int max_entries;
	unsigned int map_flags;
	unsigned int inner_map_idx;
	unsigned int numa_node;
};

struct bpf_map_def SEC("maps") proto_count = {
	.type = BPF_MAP_TYPE_HASH,
	.key_size = sizeof(__u32),
	.value_size = sizeof(__u64),
	.max_entries = 256,
	.map_flags = BPF_F_NO_PREALLOC,
};

struct bpf_map_def_ext SEC("maps") totals = {
	.type = BPF_MAP_TYPE_ARRAY,
	.key_size = sizeof(__u32),
	.value_size = sizeof(__u64),
	.max_entries = 2,
	.inner_map_idx = 0,
	.numa_node = 0,
};

SEC("cgroup_skb/ingress")
int leg_count(struct __sk_buff *skb)
{
	__u32 proto = skb->protocol;
	__u64 one = 1, *v;
	__u32 idx = 0;

	v = bpf_map_lookup_elem(&proto_count, &proto);
	if (v)
		__sync_fetch_and_add(v, 1);
	else
		bpf_map_update_elem(&proto_count, &proto, &one, BPF_NOEXIST);
	v = bpf_map_lookup_elem(&totals, &idx);
	if (v)
		__sync_fetch_and_add(v, skb->len);
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
