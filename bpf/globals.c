// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* globals: .rodata/.data/.bss globals of several types (ints of each width and sign,
 * strings, structs, arrays, a custom .data.* and .rodata.* section), subprograms in .text
 * (a global function verified on its own and a static noinline one), two programs in the
 * same "xdp" section, a socket filter and a tc program.
 *
 * Every program copies what it read into `out` (a BTF array map) so a test can check the
 * values the kernel saw after rewrite_constants.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

struct point {
	__s32 x;
	__s32 y;
	__u8 tag[4];
};

/* .rodata: constants of several kinds */
const volatile __u8 c_u8 = 0xab;
const volatile __s16 c_s16 = -2;
const volatile __s32 c_s32 = -100;
const volatile __u64 c_u64 = 0x1122334455667788ULL;
const volatile char c_name[16] = "globals";
const volatile struct point c_point = { .x = 3, .y = -4, .tag = "pt" };
const volatile __u32 c_table[4] = { 10, 20, 30, 40 };
const volatile _Bool c_enabled = 1;

/* a second read-only section */
const volatile __u32 c_extra SEC(".rodata.extra") = 77;

/* .data: initialised mutable globals */
__u64 d_runs = 5;
struct point d_last = { .x = 1, .y = 2, .tag = "dat" };
char d_greeting[8] = "hello";

/* a custom data section */
__u32 d_custom SEC(".data.custom") = 9;

/* .bss: zeroed globals */
__u64 b_sum;
__u32 b_lens[4];
struct point b_point;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 16);
} out SEC(".maps");

static __always_inline void put(__u32 idx, __u64 v)
{
	bpf_map_update_elem(&out, &idx, &v, BPF_ANY);
}

/* A static subprogram in .text: a real bpf-to-bpf call. */
static __noinline __u64 weigh(__u64 a, __u64 b)
{
	return a * 3 + b;
}

/* A global function: the verifier checks it once, independently of its callers. */
__noinline int scale(int v)
{
	return v * c_s32;
}

SEC("xdp")
int xdp_first(struct xdp_md *ctx)
{
	__u32 len = ctx->data_end - ctx->data;

	put(0, c_u8);
	put(1, (__u64)(__s64)c_s16);
	put(2, (__u64)(__s64)c_s32);
	put(3, c_u64);
	put(4, c_name[0] | (c_name[1] << 8) | ((__u64)c_name[6] << 16));
	put(5, (__u64)(__u32)c_point.x | ((__u64)(__u32)c_point.y << 32));
	put(6, c_point.tag[0] | (c_point.tag[1] << 8));
	put(7, c_table[0] + c_table[1] + c_table[2] + c_table[3]);
	put(8, c_enabled);
	put(9, c_extra);
	put(10, weigh(len, c_u8));
	put(11, (__u64)(__s64)scale(len));
	d_runs++;
	b_sum += len;
	b_lens[len & 3] = len;
	b_point.x = len;
	b_point.y = -(int)len;
	return c_enabled ? XDP_PASS : XDP_DROP;
}

SEC("xdp")
int xdp_second(struct xdp_md *ctx)
{
	put(12, d_runs);
	put(13, d_last.x + d_last.y);
	put(14, d_greeting[0] | (d_greeting[4] << 8));
	put(15, d_custom);
	d_custom += 1;
	return XDP_DROP;
}

SEC("socket")
int sock_len(struct __sk_buff *skb)
{
	b_sum += skb->len;
	return weigh(skb->len, 0) & 0xffff;
}

SEC("tc")
int tc_mark(struct __sk_buff *skb)
{
	skb->mark = scale(2) + c_extra;
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
