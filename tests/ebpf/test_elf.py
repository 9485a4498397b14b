"""ELF → CollectionSpec, without the kernel."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from orchestrator import ebpf
from orchestrator.ebpf import asm, sections
from orchestrator.ebpf.sys import AttachType, ProgFlags

HEADER = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "Dual BSD/GPL";
"""

SUBPROGS = (
    HEADER
    + """
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __type(key, __u32);
    __type(value, __u64);
    __uint(max_entries, 8);
} counters SEC(".maps");

const volatile __u32 verdict = XDP_PASS;
const volatile __s16 delta = -3;
const volatile char banner[8] = "hello";
__u64 total = 7;
__u32 zeroed;

static __noinline int leaf(int x) { return x * 3; }
static __noinline int middle(int x) { return leaf(x) + 1; }
__noinline int global_helper(int x) { return middle(x) + leaf(x); }

static int cb(__u32 idx, void *ctx) { *(int *)ctx += idx; return 0; }

SEC("xdp")
int first(struct xdp_md *ctx)
{
    __u32 k = 0;
    __u64 *v = bpf_map_lookup_elem(&counters, &k);
    if (v) *v += global_helper(1);
    int acc = 0;
    bpf_loop(4, cb, &acc, 0);
    total += acc + delta;
    return verdict;
}

SEC("xdp")
int second(struct xdp_md *ctx) { zeroed = leaf(2); return XDP_DROP; }

SEC("tc")
int third(struct __sk_buff *skb) { return middle(skb->len) > 0 ? 0 : 2; }
"""
)


@pytest.fixture(scope="module")
def subprogs(compile_bpf) -> ebpf.CollectionSpec:  # type: ignore[no-untyped-def]
    return ebpf.CollectionSpec.from_file(compile_bpf(SUBPROGS))


def test_programs_maps_and_variables(subprogs: ebpf.CollectionSpec) -> None:
    assert sorted(subprogs.programs) == ["first", "second", "third"]
    assert sorted(subprogs.maps) == [".bss", ".data", ".rodata", "counters"]
    first = subprogs.programs["first"]
    assert first.type == ebpf.ProgType.XDP
    assert first.attach_type == AttachType.XDP
    assert first.license == "Dual BSD/GPL"
    assert subprogs.programs["third"].type == ebpf.ProgType.SCHED_CLS
    counters = subprogs.maps["counters"]
    assert (counters.type, counters.key_size, counters.value_size, counters.max_entries) == (
        ebpf.MapType.ARRAY,
        4,
        8,
        8,
    )
    rodata = subprogs.maps[".rodata"]
    assert rodata.flags & ebpf.MapFlags.RDONLY_PROG and rodata.freeze
    assert not subprogs.maps[".data"].freeze
    assert subprogs.variables["verdict"].value == 2
    assert subprogs.variables["delta"].value == -3
    assert subprogs.variables["banner"].value == b"hello\0\0\0"
    assert subprogs.variables["total"].value == 7
    assert subprogs.variables["zeroed"].value == 0
    assert subprogs.variables["verdict"].constant
    assert not subprogs.variables["total"].constant


def _calls(prog: ebpf.ProgramSpec) -> list[int]:
    """Absolute targets of bpf-to-bpf calls and function pointers, by slot."""
    out = []
    raw = prog.instructions.raw
    for slot in range(len(prog.instructions)):
        op, src = raw[slot * 8], raw[slot * 8 + 1] >> 4
        if (op == asm.CALL and src == 1) or (op == asm.LD_IMM64 and src == 4):
            out.append(slot + asm.get_imm(raw, slot) + 1)
    return out


def test_subprograms_are_linked_depth_first(subprogs: ebpf.CollectionSpec) -> None:
    first = subprogs.programs["first"]
    # Every call lands on a function start recorded in func_info, and every function placed
    # has exactly one func_info record (the kernel checks both).
    starts = [fi.insn for fi in first.func_infos]
    assert starts[0] == 0 and starts == sorted(starts)
    assert set(_calls(first)) <= set(starts)
    names = [fi.func.name for fi in first.func_infos]
    # depth first in call order: global_helper, then what it calls, then the bpf_loop callback
    assert names == ["first", "global_helper", "middle", "leaf", "cb"]
    second = subprogs.programs["second"]
    assert [fi.func.name for fi in second.func_infos] == ["second", "leaf"]
    # line info follows the same layout and stays sorted
    lines = [li.insn for li in first.line_infos]
    assert lines == sorted(lines) and lines[0] == 0


def test_references(subprogs: ebpf.CollectionSpec) -> None:
    refs = subprogs.programs["first"].instructions.references
    kinds = {(r.kind, r.name) for r in refs.values()}
    assert (ebpf.RefKind.MAP, "counters") in kinds
    assert (ebpf.RefKind.MAP_VALUE, ".rodata") in kinds
    assert subprogs.programs["first"].maps == {"counters", ".rodata", ".data"}
    assert subprogs.programs["second"].maps == {".bss"}
    for slot, ref in refs.items():
        assert asm.opcode(subprogs.programs["first"].instructions.raw, slot) == asm.LD_IMM64
        assert ref.offset >= 0


def test_copy_is_deep(subprogs: ebpf.CollectionSpec) -> None:
    dup = subprogs.copy()
    dup.rewrite_constants({"verdict": 1, "banner": "bye"})
    dup.variables["total"].value = 99
    dup.maps["counters"].max_entries = 99
    assert subprogs.variables["verdict"].value == 2
    assert subprogs.variables["banner"].value == b"hello\0\0\0"
    assert subprogs.variables["total"].value == 7
    assert subprogs.maps["counters"].max_entries == 8
    assert dup.variables["verdict"].value == 1
    assert dup.variables["banner"].value == b"bye\0\0\0\0\0"
    assert dup.maps[".rodata"].contents[0].value[:4] == b"\x01\0\0\0"


def test_rewrite_constants_errors(subprogs: ebpf.CollectionSpec) -> None:
    spec = subprogs.copy()
    with pytest.raises(
        ebpf.ConstantError, match=r"constant verdct: not in object .did you mean verdict"
    ):
        spec.rewrite_constants({"verdct": 1})
    with pytest.raises(ebpf.ConstantError, match="total: not in object"):
        spec.rewrite_constants({"total": 1})  # .bss/.data are variables, not constants
    with pytest.raises(ebpf.ConstantError, match="does not fit"):
        spec.rewrite_constants({"verdict": 1 << 32})
    with pytest.raises(ebpf.ConstantError, match="does not fit"):
        spec.rewrite_constants({"delta": 40000})
    with pytest.raises(ebpf.ConstantError):
        spec.rewrite_constants({"banner": "much too long"})
    with pytest.raises(ebpf.ConstantError):
        spec.rewrite_constants({"verdict": "a string"})
    # a failing rewrite changes nothing, even for the names that were fine
    with pytest.raises(ebpf.ConstantError):
        spec.rewrite_constants({"verdict": 1, "delta": 1 << 20})
    assert spec.variables["verdict"].value == 2


LEGACY = (
    HEADER
    + """
struct legacy_def { unsigned int type, key_size, value_size, max_entries, map_flags, extra; };
struct legacy_def old_hash SEC("maps") = { BPF_MAP_TYPE_HASH, 4, 8, 16, 0, 0xabcd };
struct legacy_def old_array SEC("maps") = { BPF_MAP_TYPE_ARRAY, 4, 4, 2, 0, 7 };
SEC("socket")
int sock(struct __sk_buff *skb) {
    __u32 k = 0;
    __u32 *v = bpf_map_lookup_elem(&old_array, &k);
    return v ? *v : 0;
}
"""
)


def test_legacy_maps_keep_extra_fields(compile_bpf) -> None:  # type: ignore[no-untyped-def]
    spec = ebpf.CollectionSpec.from_file(compile_bpf(LEGACY))
    h = spec.maps["old_hash"]
    assert (h.type, h.key_size, h.value_size, h.max_entries) == (ebpf.MapType.HASH, 4, 8, 16)
    assert h.extra == (0xABCD).to_bytes(4, "little")
    assert spec.maps["old_array"].extra == (7).to_bytes(4, "little")
    assert spec.programs["sock"].maps == {"old_array"}
    assert spec.programs["sock"].type == ebpf.ProgType.SOCKET_FILTER


def test_big_endian_object_is_refused(compile_bpf, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    clang = shutil.which("clang")
    assert clang is not None
    src = tmp_path / "be.c"
    src.write_text("int x(void *ctx) { return 0; }\n")
    out = tmp_path / "be.o"
    subprocess.run([clang, "-O2", "-target", "bpfeb", "-c", str(src), "-o", str(out)], check=True)
    with pytest.raises(ebpf.ParseError, match="big-endian"):
        ebpf.CollectionSpec.from_file(out)


def test_not_bpf(tmp_path: Path) -> None:
    with pytest.raises(ebpf.ParseError, match="not an ELF file"):
        ebpf.CollectionSpec.from_bytes(b"hello world" * 10, name="junk")
    with pytest.raises(ebpf.ParseError, match="not an eBPF object"):
        ebpf.CollectionSpec.from_file(
            "/bin/true" if Path("/bin/true").exists() else "/usr/bin/true"
        )
    with pytest.raises(ebpf.ParseError, match="no such file"):
        ebpf.CollectionSpec.from_file(tmp_path / "missing.o")


@pytest.mark.parametrize(
    ("section", "prog_type", "attach", "flags", "target"),
    [
        ("xdp", ebpf.ProgType.XDP, AttachType.XDP, ProgFlags.NONE, ""),
        ("xdp.frags", ebpf.ProgType.XDP, AttachType.XDP, ProgFlags.XDP_HAS_FRAGS, ""),
        ("tcx/ingress", ebpf.ProgType.SCHED_CLS, AttachType.TCX_INGRESS, ProgFlags.NONE, ""),
        ("tc", ebpf.ProgType.SCHED_CLS, None, ProgFlags.NONE, ""),
        (
            "tracepoint/syscalls/sys_enter_getppid",
            ebpf.ProgType.TRACEPOINT,
            None,
            ProgFlags.NONE,
            "syscalls/sys_enter_getppid",
        ),
        (
            "tp/sched/sched_switch",
            ebpf.ProgType.TRACEPOINT,
            None,
            ProgFlags.NONE,
            "sched/sched_switch",
        ),
        ("raw_tp/sys_enter", ebpf.ProgType.RAW_TRACEPOINT, None, ProgFlags.NONE, "sys_enter"),
        (
            "tp_btf/sched_switch",
            ebpf.ProgType.TRACING,
            AttachType.TRACE_RAW_TP,
            ProgFlags.NONE,
            "sched_switch",
        ),
        ("uprobe.s/bin:f", ebpf.ProgType.KPROBE, None, ProgFlags.SLEEPABLE, "bin:f"),
        (
            "fentry/vfs_read",
            ebpf.ProgType.TRACING,
            AttachType.TRACE_FENTRY,
            ProgFlags.NONE,
            "vfs_read",
        ),
        (
            "cgroup_skb/egress",
            ebpf.ProgType.CGROUP_SKB,
            AttachType.CGROUP_INET_EGRESS,
            ProgFlags.NONE,
            "",
        ),
        (
            "cgroup/connect4",
            ebpf.ProgType.CGROUP_SOCK_ADDR,
            AttachType.CGROUP_INET4_CONNECT,
            ProgFlags.NONE,
            "",
        ),
        (
            "sk_skb/stream_verdict",
            ebpf.ProgType.SK_SKB,
            AttachType.SK_SKB_STREAM_VERDICT,
            ProgFlags.NONE,
            "",
        ),
        ("iter/task", ebpf.ProgType.TRACING, AttachType.TRACE_ITER, ProgFlags.NONE, "task"),
        ("struct_ops/ca_init", ebpf.ProgType.STRUCT_OPS, None, ProgFlags.NONE, "ca_init"),
        ("syscall", ebpf.ProgType.SYSCALL, None, ProgFlags.SLEEPABLE, ""),
        (
            "lsm.s/file_open",
            ebpf.ProgType.LSM,
            AttachType.LSM_MAC,
            ProgFlags.SLEEPABLE,
            "file_open",
        ),
    ],
)
def test_section_names(
    section: str, prog_type: ebpf.ProgType, attach: AttachType | None, flags: ProgFlags, target: str
) -> None:
    info = sections.classify(section)
    assert (info.type, info.attach_type, info.flags, info.attach_to) == (
        prog_type,
        attach,
        flags,
        target,
    )
    assert info.known and info.autoload


def test_section_names_edge_cases() -> None:
    assert not sections.classify("?xdp").autoload
    assert sections.classify("?xdp").type == ebpf.ProgType.XDP
    assert not sections.classify("xdp_foo").known  # exact names do not match as prefixes
    assert not sections.classify("tracepointx/a").known
    assert not sections.classify("mystery").known
