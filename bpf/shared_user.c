// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* shared_user: declares the same shared_stats as shared_owner (a manifest substitutes the
 * owner's map); count_gettid adds 1 to shared_stats[1]. */
#include "shared_stats.h"

SEC("tracepoint/syscalls/sys_enter_gettid")
int count_gettid(void *ctx)
{
	shared_add(1);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
