// SPDX-License-Identifier: GPL-2.0
/* A tiny libbpf harness, the comparator for bpforch (tests and benchmarks).
 *
 *   libbpf_load load OBJ [PIN_ROOT]
 *                           open + load OBJ (maps pinned by name go under PIN_ROOT, not
 *                           /sys/fs/bpf); print "PROG <name> <id>" per loaded program, or
 *                           "ERR <stage> <errno>" and libbpf's messages; then wait for
 *                           stdin to close (the programs stay loaded meanwhile).
 *   libbpf_load bench N OBJ open + load + close OBJ N times; print "NS <ns>" per round.
 *   libbpf_load btf N       parse /sys/kernel/btf/vmlinux N times (btf__load_vmlinux_btf +
 *                           a lookup by name); print "NS <ns>" per round.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>

static int quiet;

static int print_fn(enum libbpf_print_level level, const char *fmt, va_list args)
{
	if (quiet || level == LIBBPF_DEBUG)
		return 0;
	fprintf(stdout, "LOG ");
	return vfprintf(stdout, fmt, args);
}

static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int load(const char *path, const char *pin_root)
{
	LIBBPF_OPTS(bpf_object_open_opts, opts, .pin_root_path = pin_root);
	struct bpf_object *obj;
	struct bpf_program *prog;
	char buf[16];
	int err;

	obj = bpf_object__open_file(path, &opts);
	err = libbpf_get_error(obj);
	if (err) {
		printf("ERR open %d\n", -err);
		return 1;
	}
	err = bpf_object__load(obj);
	if (err) {
		printf("ERR load %d\n", -err);
		bpf_object__close(obj);
		return 1;
	}
	bpf_object__for_each_program(prog, obj) {
		struct bpf_prog_info info = {};
		__u32 len = sizeof(info);
		int fd = bpf_program__fd(prog);

		if (fd < 0)
			continue;
		if (bpf_obj_get_info_by_fd(fd, &info, &len))
			continue;
		printf("PROG %s %u\n", bpf_program__name(prog), info.id);
	}
	printf("DONE\n");
	fflush(stdout);
	while (read(0, buf, sizeof(buf)) > 0)
		;
	bpf_object__close(obj);
	return 0;
}

static int bench(int n, const char *path)
{
	for (int i = 0; i < n; i++) {
		long long t0 = now_ns();
		struct bpf_object *obj = bpf_object__open_file(path, NULL);

		if (libbpf_get_error(obj) || bpf_object__load(obj)) {
			printf("ERR load\n");
			return 1;
		}
		bpf_object__close(obj);
		printf("NS %lld\n", now_ns() - t0);
	}
	return 0;
}

static int btf_bench(int n)
{
	for (int i = 0; i < n; i++) {
		long long t0 = now_ns();
		struct btf *btf = btf__load_vmlinux_btf();

		if (libbpf_get_error(btf) || btf__find_by_name_kind(btf, "task_struct", BTF_KIND_STRUCT) < 0) {
			printf("ERR btf\n");
			return 1;
		}
		btf__free(btf);
		printf("NS %lld\n", now_ns() - t0);
	}
	return 0;
}

int main(int argc, char **argv)
{
	libbpf_set_print(print_fn);
	if ((argc == 3 || argc == 4) && !strcmp(argv[1], "load"))
		return load(argv[2], argc == 4 ? argv[3] : NULL);
	quiet = 1;
	if (argc == 4 && !strcmp(argv[1], "bench"))
		return bench(atoi(argv[2]), argv[3]);
	if (argc == 3 && !strcmp(argv[1], "btf"))
		return btf_bench(atoi(argv[2]));
	fprintf(stderr, "usage: %s load OBJ [PIN_ROOT] | bench N OBJ | btf N\n", argv[0]);
	return 2;
}
