// SPDX-License-Identifier: GPL-2.0
/* Externs: .kconfig values, a typed per-cpu ksym, an untyped ksym, kfuncs (one weak and
 * missing). The values are copied into .bss when the program runs. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

extern int LINUX_KERNEL_VERSION __kconfig;
extern bool CONFIG_BPF_SYSCALL __kconfig;
extern enum libbpf_tristate CONFIG_BPF_JIT __kconfig;
extern int CONFIG_HZ __kconfig;
extern char CONFIG_DEFAULT_HOSTNAME[8] __kconfig;
extern int CONFIG_BPFORCH_NO_SUCH_OPTION __kconfig __weak;

extern const struct rq runqueues __ksym;
extern const void vfs_read __ksym;
extern const void bpforch_no_such_symbol __ksym __weak;

extern struct task_struct *bpf_task_acquire(struct task_struct *p) __ksym;
extern void bpf_task_release(struct task_struct *p) __ksym;
extern void bpforch_no_such_kfunc(void) __ksym __weak;

struct values {
	__u32 version;
	__u32 bpf_syscall;
	__u32 jit;
	__u32 hz;
	char hostname[8];
	__u32 missing_option;
	__u32 has_missing_kfunc;
	__u64 vfs_read_addr;
	__u64 missing_sym_addr;
	__u32 acquired_pid;
	__u32 runs;
} values = {};

const volatile __u32 target_tgid = 0;

SEC("tp_btf/sys_enter")
int BPF_PROG(read_externs, struct pt_regs *regs, long id)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct task_struct *acquired;

	if (task->tgid != target_tgid)
		return 0;
	values.version = LINUX_KERNEL_VERSION;
	values.bpf_syscall = CONFIG_BPF_SYSCALL;
	values.jit = CONFIG_BPF_JIT;
	values.hz = CONFIG_HZ;
	__builtin_memcpy(values.hostname, CONFIG_DEFAULT_HOSTNAME, 8);
	values.missing_option = CONFIG_BPFORCH_NO_SUCH_OPTION;
	values.has_missing_kfunc = bpforch_no_such_kfunc != 0;
	if (bpforch_no_such_kfunc)
		bpforch_no_such_kfunc();
	values.vfs_read_addr = (__u64)&vfs_read;
	values.missing_sym_addr = (__u64)&bpforch_no_such_symbol;
	acquired = bpf_task_acquire(task);
	if (acquired) {
		values.acquired_pid = acquired->pid;
		bpf_task_release(acquired);
	}
	values.runs++;
	return 0;
}

/* Typed per-cpu ksym: resolved to its BTF id; this kernel has no KALLSYMS_ALL, so the
 * verifier cannot find its address (libbpf fails the same way). Not autoloaded. */
SEC("?tp_btf/sys_enter")
int BPF_PROG(read_percpu, struct pt_regs *regs, long id)
{
	struct rq *rq = (struct rq *)bpf_this_cpu_ptr(&runqueues);

	return rq->cpu;
}
