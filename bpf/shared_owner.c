// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* shared_owner: owns shared_stats; count_getpid adds 1 to shared_stats[0]. */
#include "shared_stats.h"

SEC("tracepoint/syscalls/sys_enter_getpid")
int count_getpid(void *ctx)
{
	shared_add(0);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
