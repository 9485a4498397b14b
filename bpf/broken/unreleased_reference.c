// SPDX-License-Identifier: GPL-2.0
/* Rejected (unreleased-reference): a ring buffer record is reserved and never submitted or
 * discarded. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} events SEC(".maps");

SEC("xdp")
int unreleased_reference(struct xdp_md *ctx)
{
	__u32 *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e)
		return XDP_PASS;
	*e = ctx->ingress_ifindex;
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
