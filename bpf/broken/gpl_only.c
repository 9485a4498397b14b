// SPDX-License-Identifier: BSD-2-Clause
/* Rejected (gpl-only): bpf_printk calls bpf_trace_printk, which only programs with a
 * GPL-compatible license may call. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int gpl_only(struct xdp_md *ctx)
{
	bpf_printk("packet on queue %u", ctx->rx_queue_index);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Proprietary";
