// SPDX-License-Identifier: GPL-2.0
/* Rejected (uninitialised-stack) when loaded without CAP_PERFMON (a load with it may read
 * uninitialised stack, so as root this loads): the key handed to the lookup was never
 * written. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u64);
	__type(value, __u64);
	__uint(max_entries, 16);
} seen SEC(".maps");

SEC("socket")
int uninitialised_stack(struct __sk_buff *skb)
{
	__u64 key;
	__u64 *v = bpf_map_lookup_elem(&seen, &key);

	return v ? 1 : 0;
}

char LICENSE[] SEC("license") = "GPL";
