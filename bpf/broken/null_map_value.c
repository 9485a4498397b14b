// SPDX-License-Identifier: GPL-2.0
/* Rejected (null-map-value): the value a hash map lookup returns is dereferenced without a
 * NULL check. The fix: if (!v) return XDP_PASS; before *v. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 16);
} verdicts SEC(".maps");

SEC("xdp")
int null_map_value(struct xdp_md *ctx)
{
	__u32 key = ctx->ingress_ifindex;
	__u64 *v = bpf_map_lookup_elem(&verdicts, &key);

	return *v ? XDP_PASS : XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
