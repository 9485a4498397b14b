// SPDX-License-Identifier: GPL-2.0
/* Rejected (return-value-unset): the program's function returns void, so R0 holds no
 * verdict when it exits. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
void return_value_unset(struct xdp_md *ctx)
{
}

char LICENSE[] SEC("license") = "GPL";
