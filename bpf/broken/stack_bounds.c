// SPDX-License-Identifier: GPL-2.0
/* Rejected (stack-bounds): the helper is told to write 64 bytes into a 16-byte buffer
 * (sizeof(comm) is the right size). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("tracepoint/syscalls/sys_enter_getppid")
int stack_bounds(void *ctx)
{
	char comm[16];

	bpf_get_current_comm(comm, 64);
	return comm[0];
}

char LICENSE[] SEC("license") = "GPL";
