// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The map of benchmarks/entries_bench.py: a hash of 131072 __u32 -> __u64, used by one
 * program (so that it is a map a collection really holds). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 131072);
} allowed SEC(".maps");

SEC("socket")
int lookup(struct __sk_buff *skb)
{
	__u32 key = skb->len;

	return bpf_map_lookup_elem(&allowed, &key) ? 1 : 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
