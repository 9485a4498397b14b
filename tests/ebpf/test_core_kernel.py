"""CO-RE, externs and attach targets against the running kernel.

The objects are built at test time from ``tests/ebpf/core/*.c`` against a ``vmlinux.h``
generated from ``/sys/kernel/btf/vmlinux`` into a temporary directory.
"""

from __future__ import annotations

import os
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator import ebpf
from orchestrator.ebpf import _sys as bpfsys
from orchestrator.ebpf.btf import Enum, Int, Member, Spec, Struct
from orchestrator.ebpf.btf import kernel as kernel_btf
from orchestrator.ebpf.collection import load_subset
from orchestrator.ebpf.errors import (
    AttachTargetError,
    BTFError,
    CORERelocationError,
    VerifierError,
)
from orchestrator.ebpf.externs import kernel_version_code
from orchestrator.ebpf.ringbuf import RingBufReader
from tests.ebpf.conftest import CORE_SRC as SRC
from tests.ebpf.conftest import VMLINUX

pytestmark = pytest.mark.kernel


def _trigger(prog: ebpf.Program) -> None:
    link = bpfsys.raw_tracepoint_open(prog.fd, None)
    try:
        os.getppid()
    finally:
        link.close()


EVENT = struct.Struct("<IIII16sIIQQIIIIQQQ")


def test_core_object_reports_pid_and_comm(
    build: Callable[..., ebpf.CollectionSpec], fd_guard: None
) -> None:
    spec = build("core_task.c")
    prog_spec = spec.programs["on_sys_enter"]
    assert prog_spec.core_relos  # it really is a CO-RE object
    spec.rewrite_constants({"target_tgid": os.getpid()})
    with ebpf.Collection(spec) as coll, RingBufReader(coll.maps["events"]) as rb:
        _trigger(coll.programs["on_sys_enter"])
        records = rb.read(timeout=2.0)
    assert records
    (
        pid,
        tgid,
        has_missing,
        missing,
        comm,
        task_size,
        pid_size,
        ppid,
        ringbuf_type,
        fake_enum_exists,
        fake_type_exists,
        task_exists,
        _pad,
        in_execve,
        local_id,
        kernel_id,
    ) = EVENT.unpack_from(records[0])
    assert (pid, tgid, ppid) == (os.getpid(), os.getpid(), os.getppid())
    assert has_missing == 0 and missing == 0
    assert comm.rstrip(b"\0").decode() == Path("/proc/self/comm").read_text().strip()[:15]
    kernel_task = kernel_btf.load().vmlinux.type_by_name("task_struct", Struct)
    assert task_size == kernel_task.size
    assert pid_size == 4
    vmlinux = kernel_btf.load().vmlinux
    kernel_enum = vmlinux.type_by_name("bpf_map_type")
    assert isinstance(kernel_enum, Enum)
    assert ringbuf_type == {v.name: v.value for v in kernel_enum.values}["BPF_MAP_TYPE_RINGBUF"]
    assert (fake_enum_exists, fake_type_exists, task_exists) == (0, 0, 1)
    assert in_execve == 0  # we are not in execve
    assert kernel_id == vmlinux.type_id(kernel_task)
    assert spec.btf is not None
    assert local_id == spec.btf.type_id(spec.btf.type_by_name("task_struct", Struct))


def test_reachable_poisoned_relocation_names_it(
    build: Callable[..., ebpf.CollectionSpec], fd_guard: None
) -> None:
    spec = build("core_task.c", "-DUNGUARDED")
    with pytest.raises(CORERelocationError) as info:
        ebpf.Collection(spec)
    err = info.value
    assert "task_struct___bpforch.bpforch_no_such_field" in err.relocation
    assert "field_byte_offset" in err.relocation
    assert "call unknown#195896080" in err.log
    assert isinstance(err, VerifierError)


def test_kernel_btf_override(
    build: Callable[..., ebpf.CollectionSpec], tmp_path: Path, fd_guard: None
) -> None:
    # The same kernel's BTF through a copy: loads, and is cached by path.
    copy = tmp_path / "vmlinux.btf"
    copy.write_bytes(VMLINUX.read_bytes())
    spec = build("core_task.c")
    with ebpf.Collection(spec, ebpf.CollectionOptions(kernel_btf=copy)):
        pass
    assert kernel_btf.load(copy) is kernel_btf.load(copy)
    assert kernel_btf.load(copy) is not kernel_btf.load()

    # A "kernel" whose task_struct has only the flavor's field: now the guarded branch is
    # live, while every other task_struct access is poisoned, and the first one is reachable.
    tiny = Spec()
    u32 = Int("unsigned int", 4)
    tiny.add(Struct("task_struct", 8, [Member("bpforch_no_such_field", u32, 0)]))
    tiny_path = tmp_path / "tiny.btf"
    tiny_path.write_bytes(tiny.marshal()[0])
    with pytest.raises(CORERelocationError) as info:
        ebpf.Collection(spec, ebpf.CollectionOptions(kernel_btf=tiny_path))
    assert "struct task_struct.tgid" in info.value.relocation

    with pytest.raises(BTFError):
        ebpf.Collection(spec, ebpf.CollectionOptions(kernel_btf=tmp_path / "missing.btf"))
    bad = tmp_path / "bad.btf"
    bad.write_bytes(b"not btf at all")
    with pytest.raises(BTFError):
        ebpf.Collection(spec, ebpf.CollectionOptions(kernel_btf=bad))


def test_externs(build: Callable[..., ebpf.CollectionSpec], fd_guard: None) -> None:
    spec = build("externs.c")
    kinds = {n: e.kind.value for n, e in spec.externs.items()}
    assert kinds["LINUX_KERNEL_VERSION"] == "kconfig"
    assert kinds["bpf_task_acquire"] == "kfunc"
    assert kinds["vfs_read"] == "ksym" and not spec.externs["vfs_read"].typed
    assert spec.externs["runqueues"].typed
    assert ".kconfig" in spec.maps
    spec.rewrite_constants({"target_tgid": os.getpid()})
    with ebpf.Collection(spec) as coll:
        assert "read_percpu" not in coll.programs  # "?" section: not autoloaded
        _trigger(coll.programs["read_externs"])
        raw = coll.maps[".bss"].lookup(0)
    assert isinstance(raw, bytes)  # a datasec value without a key type: raw bytes
    fields = struct.unpack_from("<IIII8sIIQQII", raw)
    names = "version bpf_syscall jit hz hostname missing_option has_missing_kfunc"
    names += " vfs_read_addr missing_sym_addr acquired_pid runs"
    got = dict(zip(names.split(), fields, strict=True))
    assert got["version"] == kernel_version_code()
    assert got["bpf_syscall"] == 1
    assert got["jit"] == 1  # CONFIG_BPF_JIT=y -> TRI_YES
    config = subprocess.run(["zcat", "/proc/config.gz"], capture_output=True, text=True).stdout
    hz = next(ln.split("=")[1] for ln in config.splitlines() if ln.startswith("CONFIG_HZ="))
    assert got["hz"] == int(hz)
    host = next(
        ln.split("=")[1].strip('"')
        for ln in config.splitlines()
        if ln.startswith("CONFIG_DEFAULT_HOSTNAME=")
    )
    hostname = got["hostname"]
    assert isinstance(hostname, bytes)
    assert hostname.rstrip(b"\0").decode() == host[:7]
    assert got["missing_option"] == 0
    assert got["has_missing_kfunc"] == 0
    kallsyms = {
        ln.split()[2]: int(ln.split()[0], 16)
        for ln in Path("/proc/kallsyms").read_text().splitlines()
    }
    assert got["vfs_read_addr"] == kallsyms["vfs_read"]
    assert got["missing_sym_addr"] == 0
    assert got["acquired_pid"] == os.getpid()
    assert got["runs"] >= 1


def test_typed_ksym_uses_btf_id(build: Callable[..., ebpf.CollectionSpec], fd_guard: None) -> None:
    # runqueues is a typed per-cpu ksym: bpforch passes its BTF id (BPF_PSEUDO_BTF_ID); this
    # kernel lacks KALLSYMS_ALL, so the verifier cannot find its address -- as with libbpf.
    spec = build("externs.c")
    with pytest.raises(VerifierError, match="runqueues"):
        load_subset(spec, None, ["read_percpu"], [])


KCONFIG_SRC = """
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "GPL";
extern int CONFIG_BPFORCH_STRONG_MISSING __kconfig;
SEC("tp_btf/sys_enter")
int prog(void *ctx) { return CONFIG_BPFORCH_STRONG_MISSING; }
"""

KFUNC_SRC = """
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "GPL";
extern void bpforch_no_such_kfunc(void) __ksym;
SEC("tp_btf/sys_enter")
int prog(void *ctx) { bpforch_no_such_kfunc(); return 0; }
"""

ATTACH_SRC = """
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "GPL";
SEC("tp_btf/bpforch_no_such_tracepoint")
int prog(void *ctx) { return 0; }
"""

ITER_SRC = """
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
char LICENSE[] SEC("license") = "GPL";
SEC("iter/task")
int dump_task(struct bpf_iter__task *ctx)
{
	struct task_struct *task = ctx->task;
	if (task)
		BPF_SEQ_PRINTF(ctx->meta->seq, "%d\\n", task->pid);
	return 0;
}
"""


def test_extern_errors(build_text: Callable[[str], ebpf.CollectionSpec], fd_guard: None) -> None:
    from orchestrator.ebpf.externs import KconfigError

    with pytest.raises(KconfigError, match="CONFIG_BPFORCH_STRONG_MISSING"):
        ebpf.Collection(build_text(KCONFIG_SRC))
    with pytest.raises(AttachTargetError, match="bpforch_no_such_kfunc"):
        ebpf.Collection(build_text(KFUNC_SRC))
    with pytest.raises(AttachTargetError, match="btf_trace_bpforch_no_such_tracepoint"):
        ebpf.Collection(build_text(ATTACH_SRC))


HEAD = """
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "GPL";
"""


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (  # a kfunc declared with the wrong prototype
            "extern int bpf_task_acquire(int x) __ksym;\n"
            'SEC("tp_btf/sys_enter") int p(void *c) { return bpf_task_acquire(1); }',
            "prototype .* is incompatible",
        ),
        (  # a typed ksym of the wrong type
            "extern const int runqueues __ksym;\n"
            'SEC("tp_btf/sys_enter") int p(void *c) '
            "{ return *(int *)bpf_this_cpu_ptr(&runqueues); }",
            "type .* is incompatible",
        ),
        (  # a strong typed ksym the kernel does not have
            "extern const struct rq bpforch_no_such_var __ksym;\n"
            'SEC("tp_btf/sys_enter") int p(void *c) '
            "{ return ((struct rq *)bpf_this_cpu_ptr(&bpforch_no_such_var))->cpu; }",
            "no variable bpforch_no_such_var",
        ),
        (  # a strong untyped ksym missing from kallsyms
            "extern const void bpforch_no_such_sym __ksym;\n"
            'SEC("tp_btf/sys_enter") int p(void *c) { return (long)&bpforch_no_such_sym; }',
            "no symbol bpforch_no_such_sym in /proc/kallsyms",
        ),
        (  # tp_btf without a tracepoint name
            'SEC("tp_btf") int p(void *c) { return 0; }',
            "names no target",
        ),
        (  # an iterator the kernel does not have
            'SEC("iter/bpforch_nothing") int p(void *c) { return 0; }',
            "bpf_iter_bpforch_nothing",
        ),
    ],
)
def test_ksym_and_target_errors(
    body: str,
    match: str,
    build_text: Callable[[str], ebpf.CollectionSpec],
    fd_guard: None,
) -> None:
    spec = build_text(HEAD + body)
    with pytest.raises(AttachTargetError, match=match):
        ebpf.Collection(spec)


def test_missing_kernel_btf_is_not_supported(
    build: Callable[..., ebpf.CollectionSpec],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    fd_guard: None,
) -> None:
    spec = build("core_task.c")
    monkeypatch.setattr(kernel_btf, "VMLINUX", str(tmp_path / "no-vmlinux"))
    with pytest.raises(ebpf.NotSupportedError, match="CONFIG_DEBUG_INFO_BTF"):
        ebpf.Collection(spec)


def test_iter_program_runs(
    build_text: Callable[[str], ebpf.CollectionSpec], fd_guard: None
) -> None:
    spec = build_text(ITER_SRC)
    with ebpf.Collection(spec) as coll:
        prog = coll.programs["dump_task"]
        attr = bpfsys.LinkCreateAttr(
            prog_fd=prog.fd.raw, attach_type=int(ebpf.AttachType.TRACE_ITER)
        )
        link = bpfsys.link_create(attr)
        try:
            it = bpfsys.iter_create(link)
            try:
                out = b""
                while chunk := os.read(it.raw, 65536):
                    out += chunk
            finally:
                it.close()
        finally:
            link.close()
    pids = {int(x) for x in out.split()}
    assert 2 in pids and len(pids) >= 10  # kthreadd, and many more tasks


def test_ringbuf_reader_errors(fd_guard: None) -> None:
    from orchestrator.ebpf.errors import NotSupportedError
    from orchestrator.ebpf.spec import MapSpec

    with (
        ebpf.Map.create(MapSpec("arr", ebpf.MapType.ARRAY, 4, 4, 1)) as m,
        pytest.raises(NotSupportedError, match="not a ring buffer"),
    ):
        RingBufReader(m)
    with ebpf.Map.create(MapSpec("rb", ebpf.MapType.RINGBUF, 0, 0, 4096)) as m:
        reader = RingBufReader(m)
        assert reader.read(timeout=0.01) == []
        assert reader.available() == 0
        reader.close()
        reader.close()  # idempotent
        with pytest.raises(ebpf.Error, match="closed"):
            list(reader.drain())


RINGBUF_SRC = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "GPL";
struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 4096); } rb SEC(".maps");
__u32 seq = 0;
SEC("syscall")
int produce(void *ctx)
{
	for (int i = 0; i < 10; i++) {
		__u32 *e = bpf_ringbuf_reserve(&rb, 36, 0);  /* 36 + 8 header -> 48 aligned */
		if (!e)
			return 1;
		e[0] = seq++;
		if (e[0] % 3 == 2)
			bpf_ringbuf_discard(e, 0);
		else
			bpf_ringbuf_submit(e, 0);
	}
	return 0;
}
"""


def test_ringbuf_wraps_and_skips_discarded(
    compile_bpf: Callable[..., Path], fd_guard: None
) -> None:
    spec = ebpf.CollectionSpec.from_file(compile_bpf(RINGBUF_SRC))
    seen: list[int] = []
    with ebpf.Collection(spec) as coll, RingBufReader(coll.maps["rb"]) as reader:
        for _ in range(30):  # 300 records of 48 bytes: the 4 KiB ring wraps ~3 times
            assert coll.programs["produce"].test_run(repeat=0).retval == 0
            for rec in reader.read(timeout=1.0):
                assert len(rec) == 36
                seen.append(int.from_bytes(rec[:4], "little"))
    assert seen == [i for i in range(300) if i % 3 != 2]


FENTRY_SRC = """
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "GPL";
SEC("fentry/vfs_read")
int on_vfs_read(void *ctx) { return 0; }
"""


def test_fentry_refusal_says_why(
    build_text: Callable[[str], ebpf.CollectionSpec], fd_guard: None
) -> None:
    # fentry programs get EPERM on this kernel (docs/kernel.md); the error says so.
    spec = build_text(FENTRY_SRC)
    with pytest.raises(ebpf.PermissionDeniedError, match="fentry/fexit"):
        ebpf.Collection(spec)


def test_loading_does_not_change_the_spec(
    build: Callable[..., ebpf.CollectionSpec], fd_guard: None
) -> None:
    spec = build("core_task.c")
    before = spec.programs["on_sys_enter"].instructions.raw
    with ebpf.Collection(spec):
        pass
    assert spec.programs["on_sys_enter"].instructions.raw == before


@pytest.mark.parametrize(
    ("source", "flags"),
    [
        ("core_task.c", ()),
        ("externs.c", ()),
        ("tcp_cc.c", ("-DPLAIN",)),  # libbpf 1.1 predates .struct_ops.link (1.2)
    ],
)
def test_same_xlated_as_libbpf(
    source: str,
    flags: tuple[str, ...],
    vmlinux_h: Path,
    compile_bpf: Callable[..., Path],
    libbpf_harness: Path,
    fd_guard: None,
) -> None:
    """CO-RE, kconfig/ksym/kfunc externs and struct_ops programs translate as libbpf's do."""
    from tests.ebpf.test_libbpf_tools import load_with_bpforch, load_with_libbpf, normalize

    path = compile_bpf((SRC / source).read_text(), f"-I{vmlinux_h}", *flags)
    lib = load_with_libbpf(libbpf_harness, path)
    ours = load_with_bpforch(path)
    assert lib.ok, lib.detail
    assert ours.ok, ours.detail
    assert lib.xlated is not None and ours.xlated is not None
    assert sorted(lib.xlated) == sorted(ours.xlated)
    for name, xlated in lib.xlated.items():
        assert normalize(ours.xlated[name]) == normalize(xlated), name


LINUX_FEATURES_SRC = """
#include <linux/bpf.h>
#include <stdbool.h>
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "GPL";
extern bool LINUX_HAS_SYSCALL_WRAPPER __kconfig;
extern bool LINUX_HAS_BPF_COOKIE __kconfig;
__u32 out[2] = {};
SEC("syscall")
int features(void *ctx)
{
	out[0] = LINUX_HAS_SYSCALL_WRAPPER;
	out[1] = LINUX_HAS_BPF_COOKIE;
	return 0;
}
"""


def test_linux_feature_externs(compile_bpf: Callable[..., Path], fd_guard: None) -> None:
    spec = ebpf.CollectionSpec.from_file(compile_bpf(LINUX_FEATURES_SRC))
    with ebpf.Collection(spec) as coll:
        assert coll.programs["features"].test_run(repeat=0).retval == 0
        data = coll.maps[".bss"].lookup(0)
    assert isinstance(data, bytes)
    wrapper, cookie = struct.unpack("<II", data)
    kallsyms = Path("/proc/kallsyms").read_text()
    assert wrapper == int(" __x64_sys_bpf\n" in kallsyms)
    assert cookie == 1  # Linux 5.15+
