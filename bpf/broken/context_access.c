// SPDX-License-Identifier: GPL-2.0
/* Rejected (context-access): XDP programs may read rx_queue_index but not write it. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int context_access(struct xdp_md *ctx)
{
	ctx->rx_queue_index = 0;
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
