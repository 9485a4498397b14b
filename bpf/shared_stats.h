/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The map both shared_owner.o and shared_user.o declare (a manifest makes the user
 * substitute the owner's map): ARRAY __u32 -> __u64, 4 entries. */
#ifndef SHARED_STATS_H
#define SHARED_STATS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 4);
} shared_stats SEC(".maps");

static __always_inline void shared_add(__u32 idx)
{
	__u64 *slot = bpf_map_lookup_elem(&shared_stats, &idx);

	if (slot)
		__sync_fetch_and_add(slot, 1);
}

#endif
