"""CO-RE relocations against small hand-made target BTF (no kernel needed)."""

from __future__ import annotations

import struct

import pytest

from orchestrator.ebpf.btf import (
    Array,
    Enum,
    EnumValue,
    Int,
    Member,
    Pointer,
    Spec,
    Struct,
    Typedef,
    Union,
)
from orchestrator.ebpf.btf.core import (
    POISON_HELPER,
    Target,
    apply_relocations,
    describe_relo,
    poisoned_in_log,
    resolve,
)
from orchestrator.ebpf.btf.ext import CORERelo, COREReloKind
from orchestrator.ebpf.btf.kernel import essential_name
from orchestrator.ebpf.errors import COREError

K = COREReloKind

U32 = Int("unsigned int", 4)
I32 = Int("int", 4, signed=True)
U64 = Int("unsigned long", 8)
CHAR = Int("char", 1, signed=True, char=True)


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def ld_imm64(dst: int, value: int) -> bytes:
    return insn(0x18, dst, 0, 0, value & 0xFFFFFFFF) + insn(0, 0, 0, 0, (value >> 32) & 0xFFFFFFFF)


def decode(raw: bytes | bytearray, idx: int = 0) -> tuple[int, int, int, int]:
    code, regs, off, imm = struct.unpack_from("<BBhi", raw, idx * 8)
    return code, regs >> 4, off, imm


LDX_W, LDX_DW, MOV64_IMM = 0x61, 0x79, 0xB7


# ------------------------------------------------------------------------------ fixtures


class Local:
    """The object's view: what the BPF program was compiled against."""

    def __init__(self) -> None:
        self.spec = Spec()
        comm = Array(CHAR, U32, 16)
        # struct task { int pid; char comm[16]; unsigned int flags; }   (size 24)
        self.task = Struct(
            "task", 24, [Member("pid", I32, 0), Member("comm", comm, 32), Member("flags", U32, 160)]
        )
        # struct task___v2 { int gone; }   a flavor with a field no target has
        self.task_v2 = Struct("task___v2", 4, [Member("gone", I32, 0)])
        # struct bits { unsigned int a:3, b:5; }
        self.bits = Struct("bits", 4, [Member("a", U32, 0, 3), Member("b", U32, 3, 5)])
        self.state = Enum("state___v1", 4, False, [EnumValue("RUNNING", 0), EnumValue("ZOMBIE", 1)])
        self.gone_enum = Enum("gone_enum", 4, False, [EnumValue("X", 1)])
        self.nothing = Struct("nothing_here", 8, [Member("x", U64, 0)])
        self.anon = Struct("", 4, [Member("x", I32, 0)])
        self.pair = Struct("pair", 8, [Member("a", I32, 0), Member("b", I32, 32)])
        for t in (
            self.task,
            self.task_v2,
            self.bits,
            self.state,
            self.gone_enum,
            self.nothing,
            self.anon,
            self.pair,
        ):
            self.spec.add(t)


class Kernel:
    """The target: a kernel whose layouts differ from the object's."""

    def __init__(self) -> None:
        self.spec = Spec()
        comm = Array(CHAR, U32, 16)
        anon = Union("", 4, [Member("tgid_alias", I32, 0), Member("pid", I32, 0)])
        # struct task { unsigned long state; int x; union { int tgid_alias; int pid; };
        #               char comm[16]; unsigned long flags; }
        self.task = Struct(
            "task",
            40,
            [
                Member("state", U64, 0),
                Member("x", I32, 64),
                Member("", anon, 96),
                Member("comm", comm, 128),
                Member("flags", U64, 256),
            ],
        )
        self.bits = Struct(
            "bits", 8, [Member("pad", U32, 0), Member("a", U32, 32, 3), Member("b", U32, 42, 5)]
        )
        self.state = Enum("state", 4, False, [EnumValue("ZOMBIE", 32), EnumValue("RUNNING", 0)])
        self.pair_td = Typedef("pair_t", Struct("pair", 8, [Member("a", I32, 0)]))
        for t in (self.task, self.bits, self.state, self.pair_td):
            self.spec.add(t)


@pytest.fixture
def local() -> Local:
    return Local()


@pytest.fixture
def kernel() -> Kernel:
    return Kernel()


def run(
    local: Local, target: Spec, code: bytes, relo_type: object, access: str, kind: COREReloKind
) -> bytearray:
    raw = bytearray(code)
    assert isinstance(relo_type, Struct | Enum | Typedef | Union)
    apply_relocations(raw, [CORERelo(0, relo_type, access, kind)], local.spec, Target(target))
    return raw


# ------------------------------------------------------------------------------ field relocations


def test_field_byte_offset_through_anonymous_union(local: Local, kernel: Kernel) -> None:
    raw = run(local, kernel.spec, insn(LDX_W, 0, 1, 0), local.task, "0:0", K.FIELD_BYTE_OFFSET)
    assert decode(raw) == (LDX_W, 1, 12, 0)  # pid sits in the anonymous union at byte 12


def test_field_byte_offset_grows_load_size(local: Local, kernel: Kernel) -> None:
    # local flags: u32 at 20; kernel flags: u64 at 32 -> the load becomes 8 bytes wide
    raw = run(local, kernel.spec, insn(LDX_W, 0, 1, 20), local.task, "0:2", K.FIELD_BYTE_OFFSET)
    assert decode(raw) == (LDX_DW, 1, 32, 0)


def test_field_byte_offset_of_array_element(local: Local, kernel: Kernel) -> None:
    raw = run(local, kernel.spec, insn(0x71, 0, 1, 4 + 3), local.task, "0:1:3", K.FIELD_BYTE_OFFSET)
    assert decode(raw) == (0x71, 1, 16 + 3, 0)  # comm[3]


def test_field_byte_offset_root_array_index(local: Local, kernel: Kernel) -> None:
    # access "1:0": (&task[1])->pid
    raw = run(local, kernel.spec, insn(LDX_W, 0, 1, 24), local.task, "1:0", K.FIELD_BYTE_OFFSET)
    assert decode(raw) == (LDX_W, 1, 40 + 12, 0)


def test_field_byte_size(local: Local, kernel: Kernel) -> None:
    raw = run(local, kernel.spec, insn(MOV64_IMM, 0, 0, 0, 4), local.task, "0:2", K.FIELD_BYTE_SIZE)
    assert decode(raw) == (MOV64_IMM, 0, 0, 8)
    raw = run(
        local, kernel.spec, insn(MOV64_IMM, 0, 0, 0, 16), local.task, "0:1", K.FIELD_BYTE_SIZE
    )
    assert decode(raw)[3] == 16


def test_field_exists(local: Local, kernel: Kernel) -> None:
    raw = run(local, kernel.spec, insn(MOV64_IMM, 0, 0, 0, 1), local.task, "0:0", K.FIELD_EXISTS)
    assert decode(raw)[3] == 1
    # task___v2 is a flavor of task; task has no field "gone"
    raw = run(local, kernel.spec, insn(MOV64_IMM, 0, 0, 0, 1), local.task_v2, "0:0", K.FIELD_EXISTS)
    assert decode(raw)[3] == 0


def test_field_signed(local: Local, kernel: Kernel) -> None:
    raw = run(local, kernel.spec, insn(MOV64_IMM, 0, 0, 0, 1), local.task, "0:0", K.FIELD_SIGNED)
    assert decode(raw)[3] == 1
    raw = run(local, kernel.spec, insn(MOV64_IMM, 0, 0, 0, 0), local.task, "0:2", K.FIELD_SIGNED)
    assert decode(raw)[3] == 0


def test_bitfield_shifts_and_offset(local: Local, kernel: Kernel) -> None:
    # local b: bits 3..8 of a u32 at 0; kernel b: bits 42..47, i.e. bits 10..15 of the u32 at 4
    r = run(
        local, kernel.spec, insn(MOV64_IMM, 0, 0, 0, 64 - 8), local.bits, "0:1", K.FIELD_LSHIFT_U64
    )
    assert decode(r)[3] == 64 - (42 + 5 - 4 * 8)
    r = run(local, kernel.spec, insn(MOV64_IMM, 0, 0, 0, 59), local.bits, "0:1", K.FIELD_RSHIFT_U64)
    assert decode(r)[3] == 59
    r = run(local, kernel.spec, insn(MOV64_IMM, 0, 0, 0, 0), local.bits, "0:1", K.FIELD_BYTE_OFFSET)
    assert decode(r)[3] == 4
    r = run(local, kernel.spec, insn(MOV64_IMM, 0, 0, 0, 4), local.bits, "0:1", K.FIELD_BYTE_SIZE)
    assert decode(r)[3] == 4


def test_missing_field_poisons_load(local: Local, kernel: Kernel) -> None:
    raw = run(local, kernel.spec, insn(LDX_W, 0, 1, 0), local.task_v2, "0:0", K.FIELD_BYTE_OFFSET)
    assert decode(raw) == (0x85, 0, 0, POISON_HELPER)


def test_out_of_bounds_array_in_target_poisons(local: Local) -> None:
    target = Spec()
    target.add(Struct("task", 8, [Member("comm", Array(CHAR, U32, 4), 0)]))
    raw = run(local, target, insn(0x71, 0, 1, 4 + 10), local.task, "0:1:10", K.FIELD_BYTE_OFFSET)
    assert decode(raw) == (0x85, 0, 0, POISON_HELPER)


def test_incompatible_field_type_does_not_match(local: Local) -> None:
    target = Spec()
    # comm is a pointer in this target: not compatible with char[16]
    target.add(Struct("task", 8, [Member("comm", Pointer(CHAR), 0)]))
    raw = run(local, target, insn(MOV64_IMM, 0, 0, 0, 1), local.task, "0:1", K.FIELD_EXISTS)
    assert decode(raw)[3] == 0


def test_signed_size_change_poisons_instead_of_resizing(local: Local) -> None:
    target = Spec()
    target.add(Struct("task", 8, [Member("pid", Int("long", 8, signed=True), 0)]))
    raw = run(local, target, insn(LDX_W, 0, 1, 0), local.task, "0:0", K.FIELD_BYTE_OFFSET)
    assert decode(raw) == (0x85, 0, 0, POISON_HELPER)


# ------------------------------------------------------------------------------ type relocations


def test_type_id_local_and_target(local: Local, kernel: Kernel) -> None:
    lid = local.spec.type_id(local.task)
    raw = run(local, kernel.spec, ld_imm64(1, lid), local.task, "0", K.TYPE_ID_LOCAL)
    assert decode(raw)[3] == lid
    raw = run(local, kernel.spec, ld_imm64(1, lid), local.task, "0", K.TYPE_ID_TARGET)
    assert decode(raw)[3] == kernel.spec.type_id(kernel.task)
    assert decode(raw, 1)[3] == 0


def test_type_exists_and_size(local: Local, kernel: Kernel) -> None:
    raw = run(local, kernel.spec, insn(MOV64_IMM, 0, 0, 0, 1), local.task, "0", K.TYPE_EXISTS)
    assert decode(raw)[3] == 1
    raw = run(local, kernel.spec, insn(MOV64_IMM, 0, 0, 0, 24), local.task, "0", K.TYPE_SIZE)
    assert decode(raw)[3] == 40
    # no "nothing_here" in the kernel: 0, not poison
    raw = run(local, kernel.spec, insn(MOV64_IMM, 0, 0, 0, 1), local.nothing, "0", K.TYPE_EXISTS)
    assert decode(raw) == (MOV64_IMM, 0, 0, 0)
    raw = run(local, kernel.spec, insn(MOV64_IMM, 0, 0, 0, 8), local.nothing, "0", K.TYPE_SIZE)
    assert decode(raw) == (MOV64_IMM, 0, 0, 0)


def test_type_matches(local: Local, kernel: Kernel) -> None:
    # local pair {a, b} vs kernel pair {a}: exists (relaxed) but does not match (strict)
    target = Spec()
    target.add(Struct("pair", 8, [Member("a", I32, 0)]))
    raw = run(local, target, insn(MOV64_IMM, 0, 0, 0, 1), local.pair, "0", K.TYPE_EXISTS)
    assert decode(raw)[3] == 1
    raw = run(local, target, insn(MOV64_IMM, 0, 0, 0, 1), local.pair, "0", K.TYPE_MATCHES)
    assert decode(raw)[3] == 0
    same = Spec()
    same.add(Struct("pair", 8, [Member("b", I32, 0), Member("a", I32, 32), Member("c", I32, 0)]))
    raw = run(local, same, insn(MOV64_IMM, 0, 0, 0, 1), local.pair, "0", K.TYPE_MATCHES)
    assert decode(raw)[3] == 1


# ------------------------------------------------------------------------------ enum relocations


def test_enumval_value_and_exists_with_flavor(local: Local, kernel: Kernel) -> None:
    raw = run(local, kernel.spec, insn(MOV64_IMM, 0, 0, 0, 1), local.state, "1", K.ENUMVAL_VALUE)
    assert decode(raw)[3] == 32  # state___v1::ZOMBIE -> state::ZOMBIE
    raw = run(local, kernel.spec, ld_imm64(1, 1), local.state, "1", K.ENUMVAL_VALUE)
    assert decode(raw)[3] == 32 and decode(raw, 1)[3] == 0
    raw = run(local, kernel.spec, insn(MOV64_IMM, 0, 0, 0, 1), local.state, "0", K.ENUMVAL_EXISTS)
    assert decode(raw)[3] == 1


def test_missing_enum_value_poisons_both_ld_imm64_slots(local: Local, kernel: Kernel) -> None:
    raw = run(local, kernel.spec, ld_imm64(1, 1), local.gone_enum, "0", K.ENUMVAL_VALUE)
    assert decode(raw, 0) == (0x85, 0, 0, POISON_HELPER)
    assert decode(raw, 1) == (0x85, 0, 0, POISON_HELPER)
    raw = run(
        local, kernel.spec, insn(MOV64_IMM, 0, 0, 0, 1), local.gone_enum, "0", K.ENUMVAL_EXISTS
    )
    assert decode(raw)[3] == 0


# ------------------------------------------------------------------------------ candidates, errors


def test_flavored_target_is_a_candidate(local: Local) -> None:
    target = Spec()
    target.add(Struct("task___new", 8, [Member("pid", I32, 32)]))
    raw = run(local, target, insn(LDX_W, 0, 1, 0), local.task, "0:0", K.FIELD_BYTE_OFFSET)
    assert decode(raw)[2] == 4


def test_ambiguous_candidates_are_an_error(local: Local) -> None:
    target = Spec()
    target.add(Struct("task", 8, [Member("pid", I32, 32)]))
    target.add(Struct("task___other", 8, [Member("pid", I32, 0)]))
    with pytest.raises(COREError, match="ambiguity"):
        run(local, target, insn(LDX_W, 0, 1, 0), local.task, "0:0", K.FIELD_BYTE_OFFSET)


def test_agreeing_candidates_are_fine_and_cached(local: Local) -> None:
    target = Spec()
    target.add(Struct("task", 8, [Member("pid", I32, 32)]))
    target.add(Struct("task___same", 8, [Member("pid", I32, 32)]))
    cache: dict[int, list[tuple[Spec, int]]] = {}
    relo = CORERelo(0, local.task, "0:0", K.FIELD_BYTE_OFFSET)
    res = resolve(relo, local.spec, Target(target), cache)
    assert res.new == 4 and not res.poison
    assert len(cache[id(local.task)]) == 2


def test_unexpected_instruction_value_is_an_error(local: Local, kernel: Kernel) -> None:
    with pytest.raises(COREError, match="not the expected"):
        run(local, kernel.spec, insn(LDX_W, 0, 1, 8), local.task, "0:0", K.FIELD_BYTE_OFFSET)


def test_bad_access_strings_and_anonymous_types(local: Local, kernel: Kernel) -> None:
    with pytest.raises(COREError, match="bad access"):
        run(local, kernel.spec, insn(LDX_W, 0, 1, 0), local.task, "0:x", K.FIELD_BYTE_OFFSET)
    with pytest.raises(COREError, match="does not exist"):
        run(local, kernel.spec, insn(LDX_W, 0, 1, 0), local.task, "0:9", K.FIELD_BYTE_OFFSET)
    with pytest.raises(COREError, match="anonymous"):
        run(local, kernel.spec, insn(LDX_W, 0, 1, 0), local.anon, "0:0", K.FIELD_BYTE_OFFSET)
    with pytest.raises(COREError, match="type relocation"):
        run(local, kernel.spec, insn(MOV64_IMM), local.task, "0:1", K.TYPE_EXISTS)


def test_unrelocatable_opcode_is_an_error(local: Local, kernel: Kernel) -> None:
    with pytest.raises(COREError, match="cannot be relocated"):
        run(local, kernel.spec, insn(0x95), local.task, "0:0", K.FIELD_BYTE_OFFSET)


def test_typedef_root_candidates(local: Local, kernel: Kernel) -> None:
    lt = Typedef("pair_t", local.pair)
    local.spec.add(lt)
    raw = run(local, kernel.spec, insn(LDX_W, 0, 1, 0), lt, "0:0", K.FIELD_BYTE_OFFSET)
    assert decode(raw)[2] == 0
    raw = run(local, kernel.spec, insn(MOV64_IMM, 0, 0, 0, 1), lt, "0:1", K.FIELD_EXISTS)
    assert decode(raw)[3] == 0


def test_helpers() -> None:
    assert essential_name("task_struct___old") == "task_struct"
    assert essential_name("a___b___c") == "a___b"
    assert essential_name("__x___") == "__x___"
    assert essential_name("plain") == "plain"
    log = "12: (85) call unknown#195896080\ninvalid func unknown#195896080\n"
    assert poisoned_in_log(log) == 12
    assert poisoned_in_log("0: (95) exit\n") is None
    local = Local()
    text = describe_relo(CORERelo(3, local.task, "0:1:2", K.FIELD_BYTE_OFFSET))
    assert text == "field_byte_offset of struct task.comm[2] (access 0:1:2)"
    text = describe_relo(CORERelo(3, local.state, "1", K.ENUMVAL_VALUE))
    assert text == "enumval_value of enum state___v1::ZOMBIE (access 1)"


# ------------------------------------------------------------------------------ name lookups


def _fresh(blob: bytes, base: Spec | None = None) -> Spec:
    return Spec.parse(blob, base=base)


def test_name_lookup_without_index_agrees_with_the_index() -> None:
    s = Spec()
    s.add(Struct("dup", 4, [Member("x", I32, 0)]))
    s.add(Struct("dup", 8, [Member("y", U64, 0)]))
    s.add(Struct("task___flavor", 4, [Member("dup", I32, 0)]))  # "dup" is a member name too
    s.add(Typedef("dup_t", I32))
    blob = s.marshal()[0]
    scanned, indexed = _fresh(blob), _fresh(blob)
    indexed.names()  # builds the full index
    for name in ("dup", "dup_t", "task___flavor", "int", "x", "missing", "", "du"):
        assert scanned.ids_by_name(name) == indexed.ids_by_name(name), name
    assert scanned.names_containing("___") == ["task___flavor"]
    assert indexed.names_containing("___") == ["task___flavor"]
    # types added later are found by both
    added = Struct("dup", 16, [])
    scanned.add(added)
    assert scanned.ids_by_name("dup")[-1] == scanned.type_id(added)

    split = Spec(base=scanned)
    split.add(Struct("dup", 2, []))  # a module type whose name is also in the base
    split.add(Struct("mod_only", 2, []))
    split_blob = split.marshal()[0]
    a, b = _fresh(split_blob, scanned), _fresh(split_blob, scanned)
    b.names()
    for name in ("dup", "mod_only", "int"):
        assert a.ids_by_name(name) == b.ids_by_name(name), name


def test_vmlinux_lookups_without_index() -> None:
    path = "/sys/kernel/btf/vmlinux"
    import os

    if not os.path.exists(path):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing")
        pytest.skip(f"{path} is missing")
    with open(path, "rb") as f:
        blob = f.read()
    scanned, indexed = _fresh(blob), _fresh(blob)
    indexed.names()
    for name in ("task_struct", "pid_t", "list_head", "bpf_map_type", "sk_buff", "u32"):
        assert scanned.ids_by_name(name) == indexed.ids_by_name(name), name
    assert sorted(scanned.names_containing("___")) == sorted(indexed.names_containing("___"))
