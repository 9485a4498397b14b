// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* model: the object of the model-based test (tests/reconcile/test_model.py). One map of each
 * type the test draws from (array, hash, lru_hash, percpu_hash, ringbuf, perf_event_array,
 * prog_array, queue), and programs for the hooks it attaches to (xdp, tcx, cgroup_skb), each
 * referencing every map it may use, so that every map is loaded and the test can read from
 * each program's info which map ids it uses.
 *
 * Programs do nothing unless a test runs them: the first packet byte selects one action
 * (1: ringbuf record, 2: perf record, 3: tail call into m_progs slot 0, 4: queue push,
 * 5: count in m_array, m_hash, m_lru); anything else passes. The test's veth pair
 * carries no traffic of its own, so map contents only change when the test says so.
 *
 * Constants: `version` (changing it reloads the collection) and `run_tag` (each test run
 * sets its own, so the run can tell its programs from those of other runs on the machine).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

const volatile __u32 version = 1;
const volatile __u32 run_tag = 0;

#define KEYED(name, kind, n)            \
	struct {                        \
		__uint(type, kind);     \
		__type(key, __u32);     \
		__type(value, __u64);   \
		__uint(max_entries, n); \
	} name SEC(".maps")

KEYED(m_array, BPF_MAP_TYPE_ARRAY, 4);
KEYED(m_hash, BPF_MAP_TYPE_HASH, 16);
KEYED(m_lru, BPF_MAP_TYPE_LRU_HASH, 16);
KEYED(m_percpu, BPF_MAP_TYPE_PERCPU_HASH, 16);

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} m_ringbuf SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 4);
} m_perf SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_QUEUE);
	__type(value, __u64);
	__uint(max_entries, 8);
} m_queue SEC(".maps");

SEC("xdp")
int model_tail(struct xdp_md *ctx)
{
	__u32 k = 1;
	__u64 *v = bpf_map_lookup_elem(&m_array, &k);

	if (v)
		__sync_fetch_and_add(v, version);
	return XDP_PASS;
}

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__array(values, int(void *));
} m_progs SEC(".maps") = {
	.values = {
		[0] = (void *)&model_tail,
	},
};

static __always_inline __u8 action(void *data, void *data_end)
{
	__u8 *first = data;

	if ((void *)(first + 1) > data_end)
		return 0;
	return *first;
}

static __always_inline void count(__u64 v)
{
	__u32 k = 0;
	__u64 one = 1, *p;

	p = bpf_map_lookup_elem(&m_array, &k);
	if (p)
		__sync_fetch_and_add(p, v);
	bpf_map_update_elem(&m_lru, &k, &one, BPF_ANY);
	/* per-CPU values are only read here (the test writes the same value on every CPU):
	 * m_hash[0] becomes m_percpu[0] if it exists, else 1 */
	p = bpf_map_lookup_elem(&m_percpu, &k);
	bpf_map_update_elem(&m_hash, &k, p ? p : &one, BPF_ANY);
}

/* the actions every program shares; returns 1 if the caller should tail call */
static __always_inline int act(void *ctx, __u8 what)
{
	__u64 v = version ^ ((__u64)run_tag << 32);

	switch (what) {
	case 1:
		bpf_ringbuf_output(&m_ringbuf, &v, sizeof(v), 0);
		break;
	case 2:
		bpf_perf_event_output(ctx, &m_perf, BPF_F_CURRENT_CPU, &v, sizeof(v));
		break;
	case 3:
		return 1;
	case 4:
		bpf_map_push_elem(&m_queue, &v, BPF_EXIST);
		break;
	case 5:
		count(1);
		break;
	}
	return 0;
}

SEC("xdp")
int model_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	if (act(ctx, action(data, data_end)))
		bpf_tail_call(ctx, &m_progs, 0);
	return XDP_PASS;
}

SEC("tc")
int model_tc(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	act(skb, action(data, data_end));
	return 0; /* TCX_NEXT: let the rest of the chain see the packet */
}

SEC("cgroup_skb/egress")
int model_cg(struct __sk_buff *skb)
{
	__u8 b = 0;

	if (bpf_skb_load_bytes(skb, 0, &b, 1) == 0)
		act(skb, b == 0x7f ? 5 : 0);
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
