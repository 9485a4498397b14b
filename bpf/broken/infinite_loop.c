// SPDX-License-Identifier: GPL-2.0
/* Rejected (infinite-loop): nothing changes from one iteration to the next, so the loop can
 * never end. (A bounded loop verifies as long as its exit depends on a changing counter.) */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int infinite_loop(struct xdp_md *ctx)
{
	for (;;) {
	}
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
