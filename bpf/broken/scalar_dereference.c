// SPDX-License-Identifier: GPL-2.0
/* Rejected (scalar-dereference): a number read from the context is used as a pointer. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int scalar_dereference(struct xdp_md *ctx)
{
	__u32 *p = (__u32 *)(long)ctx->rx_queue_index;

	return *p;
}

char LICENSE[] SEC("license") = "GPL";
