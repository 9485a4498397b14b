// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* tailcall: a prog array with static initial contents (__array(values, ...)) and tail calls
 * into it. xdp_entry jumps to slot (first packet byte); slots 0 and 2 are filled at load
 * time, slot 1 is empty so the entry program falls through and returns XDP_ABORTED.
 * Each target records which one ran in `hits`.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 4);
} hits SEC(".maps");

static __always_inline void hit(__u32 idx)
{
	__u64 *slot = bpf_map_lookup_elem(&hits, &idx);

	if (slot)
		__sync_fetch_and_add(slot, 1);
}

SEC("xdp")
int tail_pass(struct xdp_md *ctx)
{
	hit(0);
	return XDP_PASS;
}

SEC("xdp")
int tail_drop(struct xdp_md *ctx)
{
	hit(2);
	return XDP_DROP;
}

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__array(values, int(void *));
} jump_table SEC(".maps") = {
	.values = {
		[0] = (void *)&tail_pass,
		[2] = (void *)&tail_drop,
	},
};

SEC("xdp")
int xdp_entry(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u8 *first = data;

	if ((void *)(first + 1) > data_end)
		return XDP_ABORTED;
	bpf_tail_call(ctx, &jump_table, *first & 3);
	hit(3);
	return XDP_ABORTED;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
