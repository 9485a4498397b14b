// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* xdp_counter: counts packets and bytes; the verdict and a version are load-time constants.
 *
 * Contract (used by the shipped manifests): program xdp_count, map counters
 * (ARRAY __u32 -> __u64, 4 entries: [0] packets, [1] bytes, [2] version of the program
 * that saw the last packet), constants verdict (returned) and version.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 4);
} counters SEC(".maps");

const volatile __u32 verdict = XDP_PASS;
const volatile __u64 version = 0;

static __always_inline void add(__u32 idx, __u64 delta)
{
	__u64 *slot = bpf_map_lookup_elem(&counters, &idx);

	if (slot)
		__sync_fetch_and_add(slot, delta);
}

SEC("xdp")
int xdp_count(struct xdp_md *ctx)
{
	__u64 len = ctx->data_end - ctx->data;
	__u32 idx = 2;
	__u64 *slot;

	add(0, 1);
	add(1, len);
	slot = bpf_map_lookup_elem(&counters, &idx);
	if (slot)
		*slot = version;
	return verdict;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
