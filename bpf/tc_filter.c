// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* tc_filter: drops IPv4 UDP packets to a blocked destination port (tc / tcx ingress).
 *
 * Contract: program tc_ingress (SEC("tc")); maps blocked_ports (HASH, key __u16 UDP
 * destination port in host order, value __u8, 1024 entries) and stats (ARRAY
 * __u32 -> __u64, 2 entries: [0] passed, [1] dropped). Returns TC_ACT_SHOT (2) for IPv4
 * UDP to a blocked port, else TC_ACT_OK (0).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u16);
	__type(value, __u8);
	__uint(max_entries, 1024);
} blocked_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 2);
} stats SEC(".maps");

static __always_inline int count(__u32 idx, int verdict)
{
	__u64 *slot = bpf_map_lookup_elem(&stats, &idx);

	if (slot)
		__sync_fetch_and_add(slot, 1);
	return verdict;
}

SEC("tc")
int tc_ingress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct udphdr *udp;
	__u16 port;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return count(0, TC_ACT_OK);
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->protocol != IPPROTO_UDP || ip->ihl < 5)
		return count(0, TC_ACT_OK);
	udp = (void *)ip + ip->ihl * 4;
	if ((void *)(udp + 1) > data_end)
		return count(0, TC_ACT_OK);
	port = bpf_ntohs(udp->dest);
	if (bpf_map_lookup_elem(&blocked_ports, &port))
		return count(1, TC_ACT_SHOT);
	return count(0, TC_ACT_OK);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
