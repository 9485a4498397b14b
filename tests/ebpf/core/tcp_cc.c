// SPDX-License-Identifier: GPL-2.0
/* A minimal TCP congestion control in BPF (struct_ops), Reno-like. -DPLAIN puts the table
 * in ".struct_ops" (registered by a map update) instead of ".struct_ops.link". */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

__u64 inits = 0;
__u64 acks = 0;

static inline struct tcp_sock *tcp_sk(const struct sock *sk)
{
	return (struct tcp_sock *)sk;
}

SEC("struct_ops/bpforch_init")
void BPF_PROG(bpforch_init, struct sock *sk)
{
	__sync_fetch_and_add(&inits, 1);
}

SEC("struct_ops/bpforch_ssthresh")
__u32 BPF_PROG(bpforch_ssthresh, struct sock *sk)
{
	const struct tcp_sock *tp = tcp_sk(sk);
	__u32 half = tp->snd_cwnd >> 1;

	return half > 2 ? half : 2;
}

SEC("struct_ops/bpforch_cong_avoid")
void BPF_PROG(bpforch_cong_avoid, struct sock *sk, __u32 ack, __u32 acked)
{
	__sync_fetch_and_add(&acks, 1);
}

SEC("struct_ops/bpforch_undo_cwnd")
__u32 BPF_PROG(bpforch_undo_cwnd, struct sock *sk)
{
	return tcp_sk(sk)->snd_cwnd;
}

#ifdef PLAIN
SEC(".struct_ops")
#else
SEC(".struct_ops.link")
#endif
struct tcp_congestion_ops bpforch_cc = {
	.init = (void *)bpforch_init,
	.ssthresh = (void *)bpforch_ssthresh,
	.cong_avoid = (void *)bpforch_cong_avoid,
	.undo_cwnd = (void *)bpforch_undo_cwnd,
	.name = "bpforch_cc",
};
