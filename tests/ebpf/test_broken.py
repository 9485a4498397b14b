"""Every class of verifier rejection, proven on the running kernel: each program in
bpf/broken/ is rejected, and the error names its class, its C source line and its fix.
These objects are not in bpf/*.o, so the every-object tests never see them."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator import ebpf
from orchestrator.ebpf.programs import DEFAULT_LOG_SIZE
from orchestrator.ebpf.verifier import Rejection
from tests.conftest import BPF_DIR, ROOT, require_tool
from tests.ebpf.test_objects import _summary

BROKEN = BPF_DIR / "broken"

# object -> (class, the source line it is rejected at, a piece of the fix it is given)
CASES: dict[str, tuple[Rejection, str, str]] = {
    "null_map_value": (
        Rejection.NULL_MAP_VALUE,
        "return *v ? XDP_PASS : XDP_DROP;",
        "check the pointer before using it",
    ),
    "null_pointer": (
        Rejection.NULL_POINTER,
        "*e = ctx->ingress_ifindex;",
        "check it against NULL before using it",
    ),
    "scalar_dereference": (
        Rejection.SCALAR_DEREFERENCE,
        "return *p;",
        "read other memory with bpf_probe_read_kernel()",
    ),
    "packet_bounds": (
        Rejection.PACKET_BOUNDS,
        "return data[12] == 0x08 ? XDP_PASS : XDP_DROP;",
        "compare the pointer plus the access size with data_end first",
    ),
    "map_value_bounds": (
        Rejection.MAP_VALUE_BOUNDS,
        "slots[i] += 1;",
        "check the index or offset against the value's size",
    ),
    "unbounded_access": (
        Rejection.UNBOUNDED_ACCESS,
        "slots[i] += 1;",
        "bound it first (if (i >= N) return ...; or i &= N - 1)",
    ),
    "stack_bounds": (
        Rejection.STACK_BOUNDS,
        "bpf_get_current_comm(comm, 64);",
        "pass the buffer's real size (sizeof(buf))",
    ),
    "infinite_loop": (
        Rejection.INFINITE_LOOP,
        "for (;;) {",
        "make the loop's exit depend on a counter that changes each iteration",
    ),
    "too_complex": (
        Rejection.TOO_COMPLEX,
        "*sum += i ^ *sum;",
        "move them into bpf_loop(), split the program with tail calls",
    ),
    "helper_not_allowed": (
        Rejection.HELPER_NOT_ALLOWED,
        "return bpf_get_socket_cookie(ctx) ? XDP_PASS : XDP_DROP;",
        "use a helper this program type allows",
    ),
    "gpl_only": (
        Rejection.GPL_ONLY,
        'bpf_printk("packet on queue %u", ctx->rx_queue_index);',
        'declare a GPL-compatible license (char LICENSE[] SEC("license") = "GPL";)',
    ),
    "unreleased_reference": (
        Rejection.UNRELEASED_REFERENCE,
        "__u32 *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);",
        "submit or discard the ring buffer record",
    ),
    "misaligned_access": (
        Rejection.MISALIGNED,
        "__sync_fetch_and_add(&s->packets, 1);",
        "align the field to its size",
    ),
    "return_value_unset": (
        Rejection.RETURN_VALUE_UNSET,
        "}",
        "return a value on every path",
    ),
    "read_only_write": (
        Rejection.READ_ONLY_WRITE,
        "*(volatile __u32 *)&last_ifindex = ctx->ingress_ifindex;",
        "drop const from the variable",
    ),
    "context_access": (
        Rejection.CONTEXT_ACCESS,
        "ctx->rx_queue_index = 0;",
        "use only the context fields this program type allows",
    ),
}
# rejected only without CAP_PERFMON: proven in a process that drops it
UNPRIVILEGED = {
    "uninitialised_stack": (
        Rejection.UNINITIALISED_STACK,
        "__u64 *v = bpf_map_lookup_elem(&seen, &key);",
        "initialise the variable or buffer first",
    ),
}


def _line_of(name: str, text: str) -> int:
    """The line of ``text`` in bpf/broken/NAME.c (the last one with it, for ``}``)."""
    lines = (BROKEN / f"{name}.c").read_text().splitlines()
    found = [n for n, line in enumerate(lines, 1) if line.strip() == text]
    assert found, f"{text!r} is not a line of {name}.c"
    return found[-1]


def test_every_class_has_a_broken_program() -> None:
    kinds = [c[0] for c in (*CASES.values(), *UNPRIVILEGED.values())]
    assert sorted(kinds, key=str) == sorted(Rejection, key=str)  # each class exactly once
    assert sorted(p.stem for p in BROKEN.glob("*.c")) == sorted({*CASES, *UNPRIVILEGED})
    # the every-object tests and tables glob bpf/*.o: the broken objects are not in it
    assert not {p.name for p in BPF_DIR.glob("*.o")} & {p.name for p in BROKEN.glob("*.o")}


@pytest.mark.kernel
@pytest.mark.parametrize("name", sorted(CASES))
def test_broken_program_is_explained(name: str, fd_guard: None) -> None:
    kind, text, fix = CASES[name]
    spec = ebpf.CollectionSpec.from_file(BROKEN / f"{name}.o")
    with pytest.raises(ebpf.VerifierError) as info:
        ebpf.Collection(spec)
    err = info.value
    assert err.program == name
    assert err.kind is kind, err.log
    assert fix in err.fix
    assert err.source is not None
    assert (os.path.basename(err.source.file), err.source.line) == (
        f"{name}.c",
        _line_of(name, text),
    )
    assert err.source.text == text
    # one line: program, source line, the verifier's message, explanation and fix
    assert str(err) == (
        f"program {name}: {name}.c:{err.source.line}: {text} -- {err.reason}: "
        f"{kind.explanation}; {kind.fix}"
    )
    assert "\n" not in str(err) and err.reason in err.log
    # the log with source lines: the failing instruction under its own source line
    annotated = err.annotated_log()
    assert f"; {text} [file:./{name}.c line_num:{err.source.line} line_col:" in annotated


@pytest.mark.kernel
def test_a_rejection_after_a_million_instructions_keeps_the_logs_tail(fd_guard: None) -> None:
    """The whole level-1 log would be ~80 MB: the loader keeps the kernel's rotated tail,
    which holds the reason, and reports the load's own errno."""
    spec = ebpf.CollectionSpec.from_file(BROKEN / "too_complex.o")
    start = time.perf_counter()
    with pytest.raises(ebpf.VerifierError) as info:
        ebpf.Collection(spec)
    elapsed = time.perf_counter() - start
    err = info.value
    assert err.truncated and err.errno == errno.E2BIG
    assert len(err.log) < DEFAULT_LOG_SIZE
    assert err.log.rstrip().splitlines()[-2] == "BPF program is too large. Processed 1000001 insn"
    assert err.diagnosis.stats.insns == 1000001
    print(f"too_complex rejected in {elapsed:.2f} s")


@pytest.mark.kernel
def test_uninitialised_stack_is_rejected_without_cap_perfmon(tmp_path: Path) -> None:
    """With CAP_PERFMON (root) the verifier lets a program read uninitialised stack; a load
    without it (and without CAP_SYS_ADMIN, which implies it) is rejected."""
    setpriv = require_tool("setpriv")
    name = "uninitialised_stack"
    kind, text, fix = UNPRIVILEGED[name]
    obj = BROKEN / f"{name}.o"
    [report] = ebpf.verify(ebpf.CollectionSpec.from_file(obj))
    assert report.accepted  # as root
    drop = "-perfmon,-sys_admin"
    verify = ["-m", "orchestrator", "verify", str(obj), "--output", "json"]
    proc = subprocess.run(
        [setpriv, f"--inh-caps={drop}", f"--bounding-set={drop}", "--", sys.executable, *verify],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    [prog] = json.loads(proc.stdout)["programs"]
    error = prog["error"]
    assert error["class"] == kind.value and fix in error["fix"]
    assert error["reason"].startswith("invalid read from stack R2 off=-8 size=8")
    assert error["source"]["line"] == _line_of(name, text) and error["source"]["text"] == text


@pytest.mark.kernel
def test_an_unknown_message_gets_its_source_line_and_the_log_tail(
    compile_bpf: object, fd_guard: None
) -> None:
    src = """\
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct { __uint(type, BPF_MAP_TYPE_HASH); __type(key, __u32); __type(value, __u64);
         __uint(max_entries, 16); } counts SEC(".maps");
SEC("xdp") int unknown(struct xdp_md *ctx)
{
	__u64 *v = bpf_map_lookup_elem(&counts, (void *)(long)ctx->rx_queue_index);
	return v ? XDP_PASS : XDP_DROP;
}
char LICENSE[] SEC("license") = "GPL";
"""
    assert callable(compile_bpf)
    spec = ebpf.CollectionSpec.from_file(compile_bpf(src))
    with pytest.raises(ebpf.VerifierError) as info:
        ebpf.Collection(spec)
    err = info.value
    assert err.kind is None and err.fix == ""
    assert err.source is not None and err.source.line == 7
    text = "__u64 *v = bpf_map_lookup_elem(&counts, (void *)(long)ctx->rx_queue_index);"
    assert err.source.text == text
    assert str(err) == f"program unknown: {Path(err.source.file).name}:7: {text} -- {err.reason}"
    assert err.reason.startswith("R2 type=scalar expected=")
    assert err.reason in err.tail() and "call bpf_map_lookup_elem#1" in err.tail()


def test_committed_broken_objects_match_a_rebuild(tmp_path: Path) -> None:
    require_tool("clang")
    make = require_tool("make")
    subprocess.run(
        [make, "-s", "-C", str(BROKEN), f"OUT={tmp_path}"], check=True, capture_output=True
    )
    for src in sorted(BROKEN.glob("*.c")):
        committed = BROKEN / f"{src.stem}.o"
        assert committed.exists(), f"{committed} is not built: run make -C bpf/broken"
        fresh = ebpf.CollectionSpec.from_file(tmp_path / f"{src.stem}.o")
        old = ebpf.CollectionSpec.from_file(committed)
        assert _summary(fresh) == _summary(old), f"{committed} is stale: make -C bpf/broken"
        lines = [
            (li.insn, li.file_name, li.line, li.line_number)
            for p in (fresh, old)
            for li in next(iter(p.programs.values())).line_infos
        ]
        half = len(lines) // 2
        assert lines[:half] == lines[half:], f"{committed}: line info differs from a rebuild"


SUBPROGRAM = """\
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct { __uint(type, BPF_MAP_TYPE_HASH); __type(key, __u32); __type(value, __u64);
         __uint(max_entries, 4); } seen SEC(".maps");
static __attribute__((noinline)) int lookup(__u32 key)
{
	__u64 *v = bpf_map_lookup_elem(&seen, &key);
	return *v;
}
SEC("xdp") int first(struct xdp_md *ctx) { return XDP_PASS; }
SEC("xdp") int caller(struct xdp_md *ctx)
{
	__u32 key = ctx->rx_queue_index;
	return lookup(key) ? XDP_PASS : XDP_DROP;
}
char LICENSE[] SEC("license") = "GPL";
"""


@pytest.mark.kernel
def test_a_rejection_in_a_subprogram_points_at_its_line(
    compile_bpf: Callable[..., Path], fd_guard: None
) -> None:
    """The log numbers instructions as submitted, with the subprogram linked after the
    program (which is second in its section): the line info was moved the same way."""
    spec = ebpf.CollectionSpec.from_file(compile_bpf(SUBPROGRAM))
    with pytest.raises(ebpf.VerifierError) as info:
        ebpf.Collection(spec)
    err = info.value
    assert err.program == "caller" and err.kind is Rejection.NULL_MAP_VALUE
    assert err.source is not None and (err.source.line, err.source.text) == (8, "return *v;")
    funcs = {fi.func.name: fi.insn for fi in spec.programs["caller"].func_infos}
    assert funcs["caller"] == 0 and err.insn is not None and err.insn > funcs["lookup"] > 0
