// SPDX-License-Identifier: GPL-2.0
/* Rejected (misaligned-access): an atomic add on a 64-bit counter that a packed struct puts
 * at offset 4 of the map value. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#pragma clang diagnostic ignored "-Waddress-of-packed-member"

struct stats {
	__u32 flags;
	__u64 packets;
} __attribute__((packed));

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct stats);
	__uint(max_entries, 1);
} stats SEC(".maps");

SEC("xdp")
int misaligned_access(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct stats *s = bpf_map_lookup_elem(&stats, &zero);

	if (s)
		__sync_fetch_and_add(&s->packets, 1);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
