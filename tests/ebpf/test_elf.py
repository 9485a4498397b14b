"""ELF → CollectionSpec, without the kernel."""

from __future__ import annotations

import random
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from orchestrator import ebpf
from orchestrator.ebpf import asm, sections
from orchestrator.ebpf._sys import AttachType, ProgFlags
from tests.conftest import BPF_DIR

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
    ("offset", "value", "message"),
    [
        (18, 62, r"tp_counter\.o: not an eBPF object \(e_machine EM_X86_64\)"),
        (16, 2, r"tp_counter\.o: not a relocatable object \(e_type ET_EXEC\)"),
        (16, 3, r"tp_counter\.o: not a relocatable object \(e_type ET_DYN\)"),
    ],
)
def test_a_header_of_another_kind_is_named_by_its_elf_names(
    offset: int, value: int, message: str
) -> None:
    """An eBPF object's header is decoded without pyelftools; any other still gets its
    e_machine/e_type names from it."""
    data = bytearray((BPF_DIR / "tp_counter.o").read_bytes())
    struct.pack_into("<H", data, offset, value)
    with pytest.raises(ebpf.ParseError, match=f"^{message}$"):
        ebpf.CollectionSpec.from_bytes(bytes(data), name="tp_counter.o")


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
    assert sections.classify("?xdp").attach_type == AttachType.XDP
    assert not sections.classify("tracepointx/a").known
    assert not sections.classify("mystery").known
    assert not sections.classify("static").known
    assert not sections.classify("kprobex").known  # cilium's prefix is "kprobe/"


def _classify_by_scan(section: str) -> sections.SectionInfo:
    """classify as a scan of every prefix definition (longest base first), then of
    cilium's table: the reference for its lookups by base and by first character."""
    name = section.removeprefix("?")
    autoload = name == section
    exact = sections._EXACT.get(name)
    if exact is not None:
        return sections.SectionInfo(exact.type, exact.attach_type, exact.flags, "", autoload, True)
    for d in sections._PREFIX:
        if name == d.base:
            return sections.SectionInfo(d.type, d.attach_type, d.flags, "", autoload, True)
        if name.startswith(d.base + "/"):
            target = name[len(d.base) + 1 :]
            return sections.SectionInfo(d.type, d.attach_type, d.flags, target, autoload, True)
    for prefix, ptype, attach, flags in sections._CILIUM:  # the first entry it starts with
        if name.startswith(prefix):
            target = name[len(prefix) :] if prefix.endswith("/") else ""
            return sections.SectionInfo(ptype, attach, flags, target, autoload, True)
    return sections.SectionInfo(ebpf.ProgType.UNSPEC, None, ProgFlags.NONE, "", autoload, False)


def test_section_prefix_lookup_matches_a_scan_of_the_table() -> None:
    """A prefix definition is found by looking up the parts of the name that end before a
    "/", longest first: the same definition (and target) as the first one in the table's
    order (longest base first) that the name is or starts with."""
    names: set[str] = {"", "/", "?", "?/", "//x", "x//y"}
    for c in sections._CILIUM:
        names |= {c[0], f"{c[0]}z", f"{c[0]}/q", f"?{c[0]}"}
    for d in sections._DEFS:
        base = d.base
        names |= {
            base,
            f"{base}/",
            f"{base}/x",
            f"{base}/a/b",
            f"?{base}/y",
            f"{base}x",
            f"{base}//",
        }
    parts = sorted({p for n in names for p in n.split("/")})
    rnd = random.Random(14)
    names |= {"/".join(rnd.choice(parts) for _ in range(rnd.randint(1, 4))) for _ in range(3000)}
    for name in sorted(names):
        assert sections.classify(name) == _classify_by_scan(name), name


@pytest.mark.parametrize(
    ("section", "prog_type", "attach", "target"),
    [
        # names libbpf rejects: cilium/ebpf 0.9.1's prefixes, first match in its order
        ("socket/filter", ebpf.ProgType.SOCKET_FILTER, None, ""),
        ("socket_2", ebpf.ProgType.SOCKET_FILTER, None, ""),
        ("xdp/prog", ebpf.ProgType.XDP, None, ""),
        ("xdp_foo", ebpf.ProgType.XDP, None, ""),
        ("xdp_devmap/fwd", ebpf.ProgType.XDP, AttachType.XDP_DEVMAP, "fwd"),
        ("xdp_cpumap/cpu", ebpf.ProgType.XDP, AttachType.XDP_CPUMAP, "cpu"),
        ("classifier/ingress", ebpf.ProgType.SCHED_CLS, None, ""),
        ("tc_egress", ebpf.ProgType.SCHED_CLS, None, ""),
        ("sk_lookup/dispatch", ebpf.ProgType.SK_LOOKUP, AttachType.SK_LOOKUP, "dispatch"),
        ("seccomp", ebpf.ProgType.SOCKET_FILTER, None, ""),
        ("sk_skb/other", ebpf.ProgType.SK_SKB, None, ""),
        ("cgroup/sock_create_x", ebpf.ProgType.CGROUP_SOCK, AttachType.CGROUP_INET_SOCK_CREATE, ""),
        ("?socket/lazy", ebpf.ProgType.SOCKET_FILTER, None, ""),
        # names libbpf accepts keep libbpf's meaning where cilium's differs
        ("xdp", ebpf.ProgType.XDP, AttachType.XDP, ""),  # cilium: no attach type
        ("kprobe", ebpf.ProgType.KPROBE, None, ""),  # cilium: unknown
        ("tcx/ingress", ebpf.ProgType.SCHED_CLS, AttachType.TCX_INGRESS, ""),  # cilium: none
        ("xdp/devmap", ebpf.ProgType.XDP, AttachType.XDP_DEVMAP, ""),  # cilium: none
    ],
)
def test_section_names_libbpf_rejects_follow_cilium(
    section: str, prog_type: ebpf.ProgType, attach: AttachType | None, target: str
) -> None:
    info = sections.classify(section)
    assert info.known
    assert (info.type, info.attach_type, info.flags, info.attach_to) == (
        prog_type,
        attach,
        ProgFlags.NONE,
        target,
    )
    assert info.autoload == (not section.startswith("?"))


# ------------------------------------------------------------------ unresolved references

UNRESOLVED = (
    HEADER
    + """
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __type(key, __u32);
    __type(value, __u64);
    __uint(max_entries, 1);
} hits SEC(".maps");

static __noinline int uses_asm(int x)
{
    long v;
    asm volatile("%0 = UNDEFINED_IN_SUB ll" : "=r"(v));
    return x + v;
}

SEC("socket") int fine(struct __sk_buff *skb)
{
    __u32 k = 0;
    __u64 *v = bpf_map_lookup_elem(&hits, &k);
    return v ? 1 : 0;
}
SEC("socket") int asm_symbol(struct __sk_buff *skb)
{
    long v;
    asm volatile("%0 = MY_CONST ll" : "=r"(v));
    return v;
}
SEC("socket") int in_subprogram(struct __sk_buff *skb) { return uses_asm(skb->len); }
SEC("socket") int license_address(struct __sk_buff *skb) { return (long)&LICENSE[1] & 1; }
"""
)


def test_unresolved_references_are_recorded_per_program(compile_bpf) -> None:  # type: ignore[no-untyped-def]
    """A symbol no section defines, or a relocation against something programs cannot refer
    to, does not fail the parse: the program records it (instruction, symbol, function)."""
    spec = ebpf.CollectionSpec.from_file(compile_bpf(UNRESOLVED))
    assert sorted(spec.programs) == ["asm_symbol", "fine", "in_subprogram", "license_address"]
    assert spec.programs["fine"].unresolved == ()

    (u,) = spec.programs["asm_symbol"].unresolved
    assert (u.insn, u.symbol, u.function) == (0, "MY_CONST", "")
    assert str(u) == (
        "instruction 0: symbol MY_CONST is defined in no section of the object (define it, "
        "or declare it __ksym or __kconfig)"
    )
    raw = spec.programs["asm_symbol"].instructions
    assert asm.opcode(raw.raw, u.insn) == asm.LD_IMM64
    assert raw.references[0] == ebpf.Reference(ebpf.RefKind.EXTERN, "MY_CONST")

    (u,) = spec.programs["in_subprogram"].unresolved
    assert (u.symbol, u.function) == ("UNDEFINED_IN_SUB", "uses_asm")
    prog = spec.programs["in_subprogram"]
    sub_start = next(fi.insn for fi in prog.func_infos if fi.func.name == "uses_asm")
    assert u.insn >= sub_start > 0  # counted in the linked program, not in the subprogram
    assert asm.opcode(prog.instructions.raw, u.insn) == asm.LD_IMM64
    assert str(u).startswith(f"instruction {u.insn} (in uses_asm): symbol UNDEFINED_IN_SUB")

    (u,) = spec.programs["license_address"].unresolved
    assert u.symbol == "LICENSE"
    assert "relocation against LICENSE in section license is not supported" in u.reason


def test_unresolvable_relocations(compile_bpf) -> None:  # type: ignore[no-untyped-def]
    """Relocations the loader cannot apply, each recorded for its program only."""
    src = """
        .text
        .globl  f
f:
        r0 = 1
        exit

        .section socket/a,"ax",@progbits
        .globl  misaligned
misaligned:
        r1 = f+3 ll
        r0 = 0
        exit

        .section socket/b,"ax",@progbits
        .globl  call_data
call_data:
        call    .Ldata
        exit

        .section socket/c,"ax",@progbits
        .globl  call_beyond
call_beyond:
        call    f+800
        exit

        .section socket/d,"ax",@progbits
        .globl  good
good:
        call    f
        exit

        .section .rodata,"a",@progbits
.Ldata:
        .long 1
"""
    spec = ebpf.CollectionSpec.from_file(compile_bpf(src, "-x", "assembler"))
    reasons = {n: [u.reason for u in p.unresolved] for n, p in spec.programs.items()}
    assert reasons == {
        "misaligned": ["function pointer to byte 3 of .text is not on an instruction"],
        "call_data": ["call into section .rodata, which holds no code"],
        "call_beyond": ["call target: instruction 100 of .text is in no function"],
        "good": [],
    }


def _patched(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1 and len(old) == len(new)
    return data.replace(old, new)


def test_relocation_on_an_instruction_that_cannot_take_one(compile_bpf) -> None:  # type: ignore[no-untyped-def]
    data = compile_bpf(UNRESOLVED).read_bytes()
    spec = ebpf.CollectionSpec.from_bytes(data)
    fine = spec.programs["fine"]
    slot = next(s for s, r in fine.instructions.references.items() if r.name == "hits")
    # turn the map's ld_imm64 (18 01 00 00 00 00 00 00) into a mov (b7 01 ...) in the section
    code = fine.instructions.raw[slot * 8 : slot * 8 + 16]
    assert data.count(code) == 1
    patched = data.replace(code, b"\xb7" + code[1:])
    (u,) = ebpf.CollectionSpec.from_bytes(patched).programs["fine"].unresolved
    assert u.reason == (
        "relocation against hits on opcode 0xb7 (only calls and 64-bit loads can be relocated)"
    )


def test_static_function_in_a_program_section_is_a_program(compile_bpf) -> None:  # type: ignore[no-untyped-def]
    """libbpf 1.x refuses such objects; cilium/ebpf makes the function a program, callable
    as a subprogram too."""
    src = (
        HEADER
        + """
SEC("socket/len") static __attribute__((noinline)) int skb_len(struct __sk_buff *skb)
{ return skb->len; }
SEC("socket") int caller(struct __sk_buff *skb) { return skb_len(skb) + 1; }
"""
    )
    spec = ebpf.CollectionSpec.from_file(compile_bpf(src))
    assert sorted(spec.programs) == ["caller", "skb_len"]
    assert spec.programs["skb_len"].type == ebpf.ProgType.SOCKET_FILTER
    caller = spec.programs["caller"]
    assert [fi.func.name for fi in caller.func_infos] == ["caller", "skb_len"]
    assert len(caller.instructions) > len(spec.programs["skb_len"].instructions)


def test_a_program_name_defined_twice_is_an_error(compile_bpf) -> None:  # type: ignore[no-untyped-def]
    src = HEADER + 'SEC("socket") int prog_a(void *c) { return 0; }\n'
    src += 'SEC("xdp") int prog_b(void *c) { return 1; }\n'
    data = compile_bpf(src).read_bytes()
    # rename prog_b to prog_a in every string table (symbols and BTF)
    renamed = data.replace(b"\0prog_b\0", b"\0prog_a\0")
    assert renamed != data
    with pytest.raises(
        ebpf.ParseError, match=r"dup\.o: program prog_a: defined twice \(sections socket and xdp"
    ):
        ebpf.CollectionSpec.from_bytes(renamed, name="dup.o")


# ------------------------------------------------------------------ older compilers

OLD_SHAPES = """
        .text
        .globl  outer                   # NOTYPE, as clang 7 makes every symbol
outer:
        r0 = r1
        call    .Lsub                   # relative call, no relocation
        exit
.Lsub:                                  # code no symbol names
        r0 += 1
LBB0_1:                                 # a basic-block label: no function
        exit

        .section socket,"ax",@progbits
        .globl  entry
entry:
        r1 = 5
        call    .Lsub                   # relocated against the .text section symbol
        r1 = static_map ll              # a static map, through the maps section symbol
        r1 = .Lvalue ll                 # .rodata, through its section symbol
        r0 = *(u32 *)(r1 + 0)
        call    outer
        exit

        .section socket/bad,"ax",@progbits
        .globl  bad_map
bad_map:
        r1 = static_map+4 ll            # into the middle of a map definition
        r0 = 0
        exit

        .section .rodata,"a",@progbits
        .long   7
.Lvalue:
        .long   9

        .section maps,"aw",@progbits
        .p2align 2
        .globl  global_map
global_map:
        .long   2, 4, 8, 1, 0
static_map:
        .long   1, 4, 4, 8, 0

        .section license,"aw",@progbits
        .asciz  "GPL"
"""


def test_older_compiler_shapes(compile_bpf) -> None:  # type: ignore[no-untyped-def]
    """Untyped symbols, code without a symbol reached only by calls, relocations against
    section symbols (calls, maps, data), basic-block labels: what clang 7-9 emit."""
    spec = ebpf.CollectionSpec.from_file(compile_bpf(OLD_SHAPES, "-x", "assembler"))
    assert sorted(spec.programs) == ["bad_map", "entry"]  # outer is in .text; LBB0_1 no function
    assert sorted(spec.maps) == [".rodata", "global_map", "static_map"]
    entry = spec.programs["entry"]
    assert entry.unresolved == ()
    refs = {(r.kind, r.name, r.offset) for r in entry.instructions.references.values()}
    assert refs == {
        (ebpf.RefKind.MAP, "static_map", 0),
        (ebpf.RefKind.MAP_VALUE, ".rodata", 4),
    }
    # layout: entry (9 slots), the unnamed .text+3 (2 slots), then outer (3 slots), whose
    # relative call now reaches the copy of .text+3 placed before it
    insns = list(entry.instructions)
    assert len(entry.instructions) == 9 + 2 + 3
    calls = [
        (slot, slot + asm.get_imm(entry.instructions.raw, slot) + 1)
        for slot in range(len(entry.instructions))
        if asm.opcode(entry.instructions.raw, slot) == asm.CALL
    ]
    assert calls == [(1, 9), (7, 11), (12, 9)]
    assert insns[-1].is_exit
    (u,) = spec.programs["bad_map"].unresolved
    assert u.reason == "reference into maps at offset 24 is not a map"


def _with_maps_reloc_at(offset: int) -> bytes:
    """map_in_map.o with its first ``.rel.maps`` relocation moved to ``offset`` in .maps."""
    data = bytearray((BPF_DIR / "map_in_map.o").read_bytes())
    shoff, shentsize, shnum, shstrndx = struct.unpack_from("<Q10xHHH", data, 0x28)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_at = headers[shstrndx][4]
    for name, _type, _flags, _addr, off, _size, *_ in headers:
        end = data.index(b"\0", names_at + name)
        if data[names_at + name : end] == b".rel.maps":
            struct.pack_into("<Q", data, off, offset)
            return bytes(data)
    raise AssertionError("map_in_map.o has no .rel.maps")


@pytest.mark.parametrize(
    ("offset", "message"),
    [
        (0x58, None),  # where it is: outer_array's slot 0
        (0x60, None),  # slot 1 instead
        (8, "map inner_a: initial values without a values field"),
        (0x59, "map outer_array: misaligned initial value at 89"),
        (500, "section .maps: relocation at 500 is outside any map"),
    ],
)
def test_initial_values_of_a_map_of_maps(offset: int, message: str | None) -> None:
    """Each .rel.maps relocation belongs to the map whose variable covers it; it must fall
    on a slot of that map's values field."""
    data = _with_maps_reloc_at(offset)
    if message is None:
        spec = ebpf.CollectionSpec.from_bytes(data, name="mim.o")
        slots = [e.key for e in spec.maps["outer_array"].contents]
        assert slots == [(offset - 0x58) // 8, 3]
        assert [e.value for e in spec.maps["outer_array"].contents] == ["inner_a", "inner_b"]
        return
    with pytest.raises(ebpf.ParseError, match=f"^mim.o: {message}$"):
        ebpf.CollectionSpec.from_bytes(data, name="mim.o")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            "__uint(type, BPF_MAP_TYPE_ARRAY); __u32 key; __type(value, __u64);",
            "map bad: key must be a pointer (use __type)",
        ),
        (
            "__uint(type, BPF_MAP_TYPE_ARRAY); int max_entries;",
            "map bad: field max_entries must be declared with __uint",
        ),
        ("__uint(type, 9999); __uint(max_entries, 1);", "map bad: unknown map type 9999"),
        (
            "__uint(type, BPF_MAP_TYPE_HASH); __type(key, __u64); __uint(key_size, 4);",
            "map bad: key_size 4 conflicts with its BTF type",
        ),
        ("__uint(type, BPF_MAP_TYPE_ARRAY); __uint(pinning, 7);", "map bad: unsupported pinning 7"),
        ("__type(key, __u32); __uint(max_entries, 1);", "map bad: definition has no type"),
    ],
)
def test_a_bad_btf_map_definition_names_the_map_and_the_field(  # type: ignore[no-untyped-def]
    compile_bpf, fields: str, message: str
) -> None:
    """Each way a .maps definition can be wrong: the parse refuses the object, naming the
    map, the field and what to write instead where there is one."""
    source = HEADER + f'struct {{ {fields} }} bad SEC(".maps");\n'
    source += 'SEC("xdp") int prog(struct xdp_md *ctx) { return (long)&bad != 0; }\n'
    with pytest.raises(ebpf.ParseError, match=re.escape(message)):
        ebpf.CollectionSpec.from_file(compile_bpf(source))
