// SPDX-License-Identifier: GPL-2.0
/* Rejected (too-complex): the verifier walks every iteration of this loop and gives up after
 * 1,000,000 instructions. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} total SEC(".maps");

SEC("xdp")
int too_complex(struct xdp_md *ctx)
{
	__u32 zero = 0;
	__u64 *sum = bpf_map_lookup_elem(&total, &zero);

	if (!sum)
		return XDP_PASS;
	for (__u32 i = 0; i < 500000; i++)
		*sum += i ^ *sum;
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
