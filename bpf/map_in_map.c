// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* map_in_map: an array of maps and a hash of maps whose inner map type is declared with
 * __array(values, struct inner) and whose initial contents point at static inner maps.
 * mim_read looks up outer slot (first packet byte) and returns the inner map's [0] value.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 2);
};

struct inner inner_a SEC(".maps");
struct inner inner_b SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 4);
	__type(key, __u32);
	__array(values, struct inner);
} outer_array SEC(".maps") = {
	.values = { [0] = &inner_a, [3] = &inner_b },
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__uint(max_entries, 8);
	__type(key, __u32);
	__array(values, struct inner);
} outer_hash SEC(".maps") = {
	.values = { [5] = &inner_b },
};

SEC("xdp")
int mim_read(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u8 *first = data;
	__u32 slot, zero = 0;
	__u32 *value;
	void *inner;

	if ((void *)(first + 1) > data_end)
		return 1000;
	slot = *first;
	if (slot & 0x80) {
		slot &= 0x7f;
		inner = bpf_map_lookup_elem(&outer_hash, &slot);
	} else {
		inner = bpf_map_lookup_elem(&outer_array, &slot);
	}
	if (!inner)
		return 1001;
	value = bpf_map_lookup_elem(inner, &zero);
	if (!value)
		return 1002;
	return *value;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
