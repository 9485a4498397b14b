// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* map_types: one BTF-defined map of every map type this kernel has (except struct_ops),
 * for the map API tests. Types newer than the installed UAPI headers are given by number.
 * map_touch (a socket filter) exists so that a prog array has something to hold.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define MAP_TYPE_CGRP_STORAGE 32
#define MAP_TYPE_ARENA 33

struct pair {
	__u64 a;
	__u32 b;
};

struct lpm_v4 {
	__u32 prefixlen;
	__u8 addr[4];
};

#define SIMPLE(name, kind, k, v, n)        \
	struct {                           \
		__uint(type, kind);        \
		__type(key, k);            \
		__type(value, v);          \
		__uint(max_entries, n);    \
	} name SEC(".maps")

SIMPLE(m_hash, BPF_MAP_TYPE_HASH, __u32, struct pair, 64);
SIMPLE(m_array, BPF_MAP_TYPE_ARRAY, __u32, __u64, 8);
SIMPLE(m_percpu_hash, BPF_MAP_TYPE_PERCPU_HASH, __u32, __u64, 16);
SIMPLE(m_percpu_array, BPF_MAP_TYPE_PERCPU_ARRAY, __u32, __u32, 4);
SIMPLE(m_lru_hash, BPF_MAP_TYPE_LRU_HASH, __u32, __u64, 32);
SIMPLE(m_lru_percpu_hash, BPF_MAP_TYPE_LRU_PERCPU_HASH, __u32, __u64, 32);
SIMPLE(m_prog_array, BPF_MAP_TYPE_PROG_ARRAY, __u32, __u32, 4);
SIMPLE(m_devmap, BPF_MAP_TYPE_DEVMAP, __u32, __u32, 4);
SIMPLE(m_devmap_hash, BPF_MAP_TYPE_DEVMAP_HASH, __u32, struct bpf_devmap_val, 4);
SIMPLE(m_cpumap, BPF_MAP_TYPE_CPUMAP, __u32, struct bpf_cpumap_val, 1);
SIMPLE(m_xskmap, BPF_MAP_TYPE_XSKMAP, __u32, __u32, 4);
SIMPLE(m_sockmap, BPF_MAP_TYPE_SOCKMAP, __u32, __u64, 4);
SIMPLE(m_sockhash, BPF_MAP_TYPE_SOCKHASH, __u32, __u64, 4);
SIMPLE(m_reuseport, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY, __u32, __u64, 4);
SIMPLE(m_cgroup_array, BPF_MAP_TYPE_CGROUP_ARRAY, __u32, __u32, 4);
SIMPLE(m_stack_trace, BPF_MAP_TYPE_STACK_TRACE, __u32, __u64[127], 16);

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct lpm_v4);
	__type(value, __u32);
	__uint(max_entries, 16);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} m_lpm_trie SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
} m_perf_event_array SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096 * 4);
} m_ringbuf SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_USER_RINGBUF);
	__uint(max_entries, 4096 * 4);
} m_user_ringbuf SEC(".maps");

struct inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 2);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__type(key, __u32);
	__uint(max_entries, 4);
	__array(values, struct inner);
} m_array_of_maps SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__type(key, __u32);
	__uint(max_entries, 4);
	__array(values, struct inner);
} m_hash_of_maps SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_QUEUE);
	__type(value, __u32);
	__uint(max_entries, 4);
} m_queue SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_STACK);
	__type(value, __u32);
	__uint(max_entries, 4);
} m_stack SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_BLOOM_FILTER);
	__type(value, __u32);
	__uint(max_entries, 64);
	__uint(map_extra, 3); /* number of hash functions */
} m_bloom_filter SEC(".maps");

#define STORAGE(name, kind)                         \
	struct {                                    \
		__uint(type, kind);                 \
		__uint(map_flags, BPF_F_NO_PREALLOC); \
		__type(key, int);                   \
		__type(value, struct pair);         \
	} name SEC(".maps")

STORAGE(m_sk_storage, BPF_MAP_TYPE_SK_STORAGE);
STORAGE(m_task_storage, BPF_MAP_TYPE_TASK_STORAGE);
STORAGE(m_inode_storage, BPF_MAP_TYPE_INODE_STORAGE);
STORAGE(m_cgrp_storage, MAP_TYPE_CGRP_STORAGE);

struct {
	__uint(type, BPF_MAP_TYPE_CGROUP_STORAGE);
	__type(key, struct bpf_cgroup_storage_key);
	__type(value, __u64);
} m_cgroup_storage SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE);
	__type(key, struct bpf_cgroup_storage_key);
	__type(value, __u64);
} m_percpu_cgroup_storage SEC(".maps");

struct {
	__uint(type, MAP_TYPE_ARENA);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 2); /* pages */
} m_arena SEC(".maps");

SEC("socket")
int map_touch(struct __sk_buff *skb)
{
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
