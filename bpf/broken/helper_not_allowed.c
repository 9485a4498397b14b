// SPDX-License-Identifier: GPL-2.0
/* Rejected (helper-not-allowed): XDP programs may not call bpf_get_socket_cookie (socket
 * buffer programs may). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int helper_not_allowed(struct xdp_md *ctx)
{
	return bpf_get_socket_cookie(ctx) ? XDP_PASS : XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
