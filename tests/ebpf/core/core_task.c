// SPDX-License-Identifier: GPL-2.0
/* CO-RE test object: built at test time against a vmlinux.h generated from the running
 * kernel's BTF. Reads task_struct fields with CO-RE, checks a field no kernel has with
 * bpf_core_field_exists, and reports through a ring buffer. -DUNGUARDED reads the missing
 * field without the guard (the load must then fail and name the relocation). Also: enum
 * value and type relocations, a bitfield read, local and kernel type ids. (clang 14 cannot
 * emit type_matches relocations; the unit tests cover them.) */
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
	__u64 ringbuf_type;
	__u32 fake_enum_exists;
	__u32 fake_type_exists;
	__u32 task_exists;
	__u32 pad;
	__u64 in_execve;
	__u64 local_id;
	__u64 kernel_id;
};

/* things no kernel has: a type, and an enumerator of a flavor of a real enum */
struct bpforch_no_such_type {
	int x;
};

enum bpf_map_type___bpforch {
	BPF_MAP_TYPE_BPFORCH_FAKE = 1000,
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
	e->ringbuf_type = bpf_core_enum_value(enum bpf_map_type, BPF_MAP_TYPE_RINGBUF);
	e->fake_enum_exists = bpf_core_enum_value_exists(enum bpf_map_type___bpforch,
							 BPF_MAP_TYPE_BPFORCH_FAKE);
	e->fake_type_exists = bpf_core_type_exists(struct bpforch_no_such_type);
	e->task_exists = bpf_core_type_exists(struct task_struct);
	e->in_execve = BPF_CORE_READ_BITFIELD_PROBED(task, in_execve);
	e->local_id = bpf_core_type_id_local(struct task_struct);
	e->kernel_id = bpf_core_type_id_kernel(struct task_struct);
	bpf_ringbuf_submit(e, 0);
	return 0;
}
