// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* cilium_sections: programs in cilium/ebpf's section conventions, which libbpf 1.x refuses
 * (its strict mode accepts neither socket/NAME nor xdp/NAME, nor a static function in a
 * program section). bpforch reads them as cilium/ebpf does:
 *
 *   socket/filter       socket_filter  SOCKET_FILTER   returns skb_len(skb) (the packet length)
 *   socket/len          skb_len        SOCKET_FILTER   a static function in a program section:
 *                                                      a program of its own, and called by
 *                                                      socket_filter as a subprogram
 *   xdp/pass            xdp_pass       XDP             returns XDP_PASS
 *   classifier/ingress  classifier     SCHED_CLS       returns TC_ACT_OK (0)
 *   sk_lookup/pass      lookup         SK_LOOKUP       returns SK_PASS
 *
 * Every program counts its runs in seen[slot]: 0 socket_filter, 1 xdp_pass, 2 classifier,
 * 3 lookup (skb_len counts nothing).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 4);
} seen SEC(".maps");

static __always_inline void count(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&seen, &slot);

	if (v)
		__sync_fetch_and_add(v, 1);
}

SEC("socket/len") static __attribute__((noinline)) int skb_len(struct __sk_buff *skb)
{
	return skb->len;
}

SEC("socket/filter") int socket_filter(struct __sk_buff *skb)
{
	count(0);
	return skb_len(skb);
}

SEC("xdp/pass") int xdp_pass(struct xdp_md *ctx)
{
	count(1);
	return XDP_PASS;
}

SEC("classifier/ingress") int classifier(struct __sk_buff *skb)
{
	count(2);
	return 0;
}

SEC("sk_lookup/pass") int lookup(struct bpf_sk_lookup *ctx)
{
	count(3);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
