// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* unresolved: one program refers to a symbol that no section of the object defines (an
 * inline-asm 64-bit load of MY_CONST, as cilium/ebpf's own test objects do); the other is
 * fine. The spec lists both; loading asm_const fails, naming the program, the instruction
 * and the symbol, and loading counted alone works (cilium/ebpf 0.9.1 instead loads
 * asm_const with 0 in place of the symbol).
 *
 *   socket  counted    counts its runs in hits[0], returns 0
 *   socket  asm_const  returns MY_CONST
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} hits SEC(".maps");

SEC("socket") int counted(struct __sk_buff *skb)
{
	__u32 key = 0;
	__u64 *v = bpf_map_lookup_elem(&hits, &key);

	if (v)
		__sync_fetch_and_add(v, 1);
	return 0;
}

SEC("socket") int asm_const(struct __sk_buff *skb)
{
	long value;

	asm volatile("%0 = MY_CONST ll" : "=r"(value));
	return value;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
