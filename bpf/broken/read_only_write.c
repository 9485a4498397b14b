// SPDX-License-Identifier: GPL-2.0
/* Rejected (read-only-write): a const volatile global lives in .rodata, which the loader
 * freezes and programs may only read. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

const volatile __u32 last_ifindex = 0;

SEC("xdp")
int read_only_write(struct xdp_md *ctx)
{
	*(volatile __u32 *)&last_ifindex = ctx->ingress_ifindex;
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
