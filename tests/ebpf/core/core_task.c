// SPDX-License-Identifier: GPL-2.0
/* CO-RE test object: built at test time against a vmlinux.h generated from the running
 * kernel's BTF. Reads task_struct fields with CO-RE, checks a field no kernel has with
 * bpf_core_field_exists, and reports through a ring buffer. -DUNGUARDED reads the missing
 * field without the guard (the load must then fail and name the relocation). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

struct event {
	__u32 pid;
	__u32 tgid;
	__u32 has_missing;
	__u32 missing_value;
	char comm[16];
	__u32 task_size;
	__u32 pid_size;
	__u64 ppid;
};

/* a flavor of task_struct with a field no kernel has */
struct task_struct___bpforch {
	int bpforch_no_such_field;
} __attribute__((preserve_access_index));

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} events SEC(".maps");

const volatile __u32 target_tgid = 0;

SEC("tp_btf/sys_enter")
int BPF_PROG(on_sys_enter, struct pt_regs *regs, long id)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct event *e;

	if (BPF_CORE_READ(task, tgid) != target_tgid)
		return 0;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		return 0;
	e->pid = BPF_CORE_READ(task, pid);
	e->tgid = BPF_CORE_READ(task, tgid);
	e->ppid = BPF_CORE_READ(task, real_parent, tgid);
	e->has_missing = bpf_core_field_exists(struct task_struct___bpforch, bpforch_no_such_field);
	e->missing_value = 0;
#ifdef UNGUARDED
	e->missing_value = BPF_CORE_READ((struct task_struct___bpforch *)task, bpforch_no_such_field);
#else
	if (bpf_core_field_exists(struct task_struct___bpforch, bpforch_no_such_field))
		e->missing_value = BPF_CORE_READ((struct task_struct___bpforch *)task,
						 bpforch_no_such_field);
#endif
	e->task_size = bpf_core_type_size(struct task_struct);
	e->pid_size = bpf_core_field_size(task->pid);
	BPF_CORE_READ_STR_INTO(&e->comm, task, comm);
	bpf_ringbuf_submit(e, 0);
	return 0;
}
