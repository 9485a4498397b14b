// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* tp_counter: counts getppid() calls, of every process or of one tgid.
 *
 * Contract: program count_getppid (SEC("tracepoint/syscalls/sys_enter_getppid")); map calls
 * (ARRAY __u32 -> __u64, 1 entry); constant target_tgid (0: count every process, else only
 * that tgid).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} calls SEC(".maps");

const volatile __u32 target_tgid = 0;

SEC("tracepoint/syscalls/sys_enter_getppid")
int count_getppid(void *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u32 idx = 0;
	__u64 *slot;

	if (target_tgid && tgid != target_tgid)
		return 0;
	slot = bpf_map_lookup_elem(&calls, &idx);
	if (slot)
		__sync_fetch_and_add(slot, 1);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
