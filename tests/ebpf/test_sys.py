"""The hand-written layouts of ``orchestrator.ebpf._sys`` checked against the running kernel.

Every ctypes ``Structure`` and every enum that ``ebpf._sys`` defines is found by walking the
module (a new one is checked without being listed here) and compared with the kernel's own
BTF (``/sys/kernel/btf/vmlinux``, read with bpforch's BTF parser):

- an attr struct against its member of ``union bpf_attr``, an info struct against
  ``struct bpf_<x>_info``, anything else against the struct of its snake-case name: each
  field's offset, size and signedness, and no kernel member skipped or cut in half;
- an enum against the kernel enum, value by value, its names being the kernel's minus the
  common prefix (``MapType.HASH`` is ``BPF_MAP_TYPE_HASH``).

The tables below hold only what is not mechanical. Flag sets the UAPI headers ``#define``
(no enum, so not in BTF) are checked against those headers instead.
"""

from __future__ import annotations

import ctypes
import enum
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

from orchestrator.ebpf import _sys as bsys
from orchestrator.ebpf import btf
from orchestrator.ebpf.btf import kernel as kernel_btf
from orchestrator.ebpf.errors import BTFError

T = TypeVar("T")

# union bpf_attr members whose name is not the class name (minus Attr) in snake case. An attr
# struct with neither is matched to the anonymous member that starts with its first field.
ATTR_MEMBERS = {
    "MapBatchAttr": "batch",
    "TestRunAttr": "test",
    "ProgQueryAttr": "query",
    "RawTracepointOpenAttr": "raw_tracepoint",
}

# Fields that stand for kernel members of other names (a union as raw words, a run of
# bitfields as one word): the fields together span exactly the kernel's members from the
# one holding the named member to their end.
COVERS: dict[str, dict[tuple[str, ...], str]] = {
    "LinkCreateAttr": {("union_lo", "union_hi", "union_rest"): "target_btf_id"},
    "LinkInfo": {("union",): "raw_tracepoint"},
    "PerfEventAttr": {("flags",): "disabled"},
}


@dataclass(frozen=True)
class KernelEnum:
    """Where an enum of ebpf._sys is in the kernel's BTF when not at ``enum bpf_<snake name>``:
    ``name`` of a named enum, or ``witness``, a value of an anonymous one; ``names`` maps a
    member to a kernel name that does not follow the common prefix."""

    name: str = ""
    witness: str = ""
    names: dict[str, str] = field(default_factory=dict)


KERNEL_ENUMS = {
    "PerfEventLinkType": KernelEnum(name="bpf_perf_event_type"),
    "MapFlags": KernelEnum(witness="BPF_F_NO_PREALLOC"),
    "UpdateFlags": KernelEnum(witness="BPF_ANY", names={"LOCK": "BPF_F_LOCK"}),
}

# Flag sets that linux/*.h #define (header, prefix of the macro names).
DEFINED_FLAGS = {
    "ProgFlags": ("linux/bpf.h", "BPF_F_"),
    "XDPFlags": ("linux/if_link.h", "XDP_FLAGS_"),
}


def _defined_in_sys(base: type[T]) -> dict[str, type[T]]:
    found: dict[str, type[T]] = {}
    for module in (bsys, bsys.attrs, bsys.enums, bsys.fd):
        for name, obj in vars(module).items():
            if (
                isinstance(obj, type)
                and issubclass(obj, base)
                and obj.__module__ == module.__name__
            ):
                found[name] = obj
    return dict(sorted(found.items()))


STRUCTS = _defined_in_sys(ctypes.Structure)
ENUMS = _defined_in_sys(enum.Enum)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name.lstrip("_")).lower()


@pytest.fixture(scope="module")
def vmlinux() -> btf.Spec:
    return kernel_btf.load().vmlinux


def _strip(t: btf.Type) -> btf.Type:
    t = btf.skip_qualifiers(t)
    while isinstance(t, btf.Typedef):
        t = btf.skip_qualifiers(t.type)
    return t


@dataclass(frozen=True)
class Leaf:
    """A named kernel member, anonymous structs and unions flattened: bit range, type, and
    the index of the struct's direct member that holds it."""

    name: str
    start: int
    end: int
    type: btf.Type
    bitfield: bool
    top: int


def _leaves(members: list[btf.Member], base: int = 0, top: int = -1) -> list[Leaf]:
    out: list[Leaf] = []
    for i, m in enumerate(members):
        t = _strip(m.type)
        start = base + m.offset_bits
        owner = i if top < 0 else top
        if m.name == "" and isinstance(t, btf.Struct | btf.Union):
            out += _leaves(t.members, start, owner)
            continue
        bits = m.bitfield_size or btf.sizeof(t) * 8
        out.append(Leaf(m.name, start, start + bits, t, m.bitfield_size != 0, owner))
    return out


def _top_ranges(s: btf.Struct | btf.Union) -> list[tuple[int, int]]:
    return [
        (m.offset_bits, m.offset_bits + (m.bitfield_size or btf.sizeof(_strip(m.type)) * 8))
        for m in s.members
    ]


def _kernel_struct(cls: type[ctypes.Structure], spec: btf.Spec) -> tuple[str, btf.Struct]:
    """The kernel struct ``cls`` mirrors, and a name for it in messages."""
    name = cls.__name__
    fields = [f[0] for f in cls._fields_]
    if issubclass(cls, bsys.attrs._Attr):
        attr = spec.type_by_name("bpf_attr", btf.Union)
        member = ATTR_MEMBERS.get(name, _snake(name.removesuffix("Attr")))
        named = [m for m in attr.members if m.name == member]
        if named:
            t = _strip(named[0].type)
            assert isinstance(t, btf.Struct), f"bpf_attr.{member} is not a struct"
            return f"union bpf_attr.{member}", t
        anonymous = [
            t
            for m in attr.members
            if m.name == "" and isinstance(t := _strip(m.type), btf.Struct)
            for leaf in _leaves(t.members)
            if leaf.start == 0 and leaf.name == fields[0]
        ]
        assert len(anonymous) == 1, (
            f"{name}: no member {member} of union bpf_attr, and {len(anonymous)} anonymous "
            f"members start with {fields[0]} (add it to ATTR_MEMBERS)"
        )
        return f"the union bpf_attr member of {fields[0]}", anonymous[0]
    if name.endswith("Info"):
        kname = f"bpf_{_snake(name.removesuffix('Info'))}_info"
    else:
        kname = _snake(name)
    try:
        return f"struct {kname}", spec.type_by_name(kname, btf.Struct)
    except BTFError:
        pytest.fail(f"{name}: no struct {kname} in the kernel (teach _kernel_struct its name)")


def _ctype_signed(ct: type) -> bool | None:
    code = getattr(ct, "_type_", None) if issubclass(ct, ctypes._SimpleCData) else None
    if not isinstance(code, str):
        return None
    return True if code in "bhilq" else False if code in "BHILQ" else None


def _struct_problems(cls: type[ctypes.Structure], where: str, ks: btf.Struct) -> list[str]:
    problems: list[str] = []
    leaves = _leaves(ks.members)
    by_name = {leaf.name: leaf for leaf in leaves}
    tops = _top_ranges(ks)
    fields: dict[str, tuple[int, int, type]] = {}
    for f in cls._fields_:
        fname, ftype = f[0], f[1]
        desc = getattr(cls, fname)
        fields[fname] = (desc.offset * 8, (desc.offset + desc.size) * 8, ftype)
    size = ctypes.sizeof(cls) * 8

    def overlapping(start: int, end: int) -> list[Leaf]:
        return [leaf for leaf in leaves if leaf.start < end and start < leaf.end]

    grouped: set[str] = set()
    for group, holder in COVERS.get(cls.__name__, {}).items():
        grouped.update(group)
        start, end = fields[group[0]][0], fields[group[-1]][1]
        first = by_name[holder].top
        inside = [i for i, (s, e) in enumerate(tops) if s < end and start < e]
        ok = (
            inside
            and inside[0] == first
            and tops[first][0] == start
            and all(start <= tops[i][0] and tops[i][1] <= end for i in inside)
            and tops[inside[-1]][1] == end
        )
        if not ok:
            problems.append(
                f"{'+'.join(group)} at bytes {start // 8}..{end // 8}: kernel members from "
                f"the one holding {holder} span bytes {tops[first][0] // 8}.."
                f"{max(tops[i][1] for i in inside) // 8 if inside else '?'}"
            )

    for fname, (start, end, ftype) in fields.items():
        if fname in grouped:
            continue
        leaf = by_name.get(fname)
        if leaf is None and fname.startswith("_"):
            leaf = by_name.get("_" + fname)  # the kernel's __reserved_N
        if leaf is None:
            if not fname.startswith("_"):
                problems.append(
                    f"{fname}: no such member in {where} (a union or bitfields? COVERS)"
                )
            elif hit := overlapping(start, end):
                problems.append(f"{fname}: padding overlaps {', '.join(x.name for x in hit)}")
            continue
        at = f"{fname}: bytes {start // 8}+{(end - start) // 8}"
        if leaf.bitfield:
            others = [x.name for x in overlapping(start, end) if x.name != leaf.name]
            if leaf.start != start or leaf.end > end or others:
                problems.append(
                    f"{at}, kernel bitfield at bit {leaf.start} width {leaf.end - leaf.start}"
                    + (f" sharing the word with {', '.join(others)}" if others else "")
                )
            continue
        if (leaf.start, leaf.end) != (start, end):
            problems.append(f"{at}, kernel bytes {leaf.start // 8}+{(leaf.end - leaf.start) // 8}")
            continue
        if isinstance(leaf.type, btf.Array):
            nelems = getattr(ftype, "_length_", None)
            if nelems != leaf.type.nelems:
                problems.append(f"{at}: {nelems} elements, kernel {leaf.type.nelems}")
        elif isinstance(leaf.type, btf.Int) and not leaf.type.char:
            signed = _ctype_signed(ftype)
            if signed is not None and signed != leaf.type.signed:
                kind = "signed" if leaf.type.signed else "unsigned"
                problems.append(f"{at}: kernel type {leaf.type.name} is {kind}")

    covered = [(s, e) for s, e, _ in fields.values()]
    for leaf in leaves:
        if leaf.start >= size:
            continue
        if leaf.end > size:
            problems.append(f"ends at byte {size // 8}, inside kernel member {leaf.name}")
        elif not any(s < leaf.end and leaf.start < e for s, e in covered):
            problems.append(f"kernel member {leaf.name} at byte {leaf.start // 8} is missing")
    if size > ks.size * 8:
        problems.append(f"size {size // 8} > kernel size {ks.size}")
    return problems


@pytest.mark.kernel
@pytest.mark.parametrize("name", sorted(STRUCTS))
def test_struct_matches_kernel_btf(name: str, vmlinux: btf.Spec) -> None:
    cls = STRUCTS[name]
    if "_fields_" not in vars(cls):
        assert ctypes.sizeof(cls) == 0, f"{name}: a base with no fields of its own"
        return
    where, ks = _kernel_struct(cls, vmlinux)
    problems = _struct_problems(cls, where, ks)
    assert not problems, f"{name} against {where}:\n  " + "\n  ".join(problems)


def _common_prefix(names: list[str]) -> str:
    words = [n.split("_") for n in names]
    shortest = min(len(w) for w in words)
    n = 0
    while n < shortest - 1 and all(w[n] == words[0][n] for w in words):
        n += 1
    return "".join(w + "_" for w in words[0][:n])


def _kernel_enum(name: str, spec: btf.Spec) -> btf.Enum:
    how = KERNEL_ENUMS.get(name, KernelEnum(name=f"bpf_{_snake(name)}"))
    if how.witness:
        found = [
            t
            for t in spec.types
            if isinstance(t, btf.Enum) and any(v.name == how.witness for v in t.values)
        ]
        assert len(found) == 1, f"{name}: {len(found)} kernel enums hold {how.witness}"
        return found[0]
    try:
        return spec.type_by_name(how.name, btf.Enum)
    except BTFError:
        pytest.fail(f"{name}: no enum {how.name} in the kernel (add {name} to KERNEL_ENUMS)")


def _values(cls: type[enum.Enum]) -> dict[str, int]:
    """Every member (aliases too) and its value; a flag set's NONE is the empty set, not a
    kernel name."""
    values = {member: int(e.value) for member, e in cls.__members__.items()}
    if issubclass(cls, enum.Flag) and values.get("NONE") == 0:
        del values["NONE"]
    return values


@pytest.mark.kernel
@pytest.mark.parametrize("name", sorted(set(ENUMS) - set(DEFINED_FLAGS)))
def test_enum_matches_kernel_btf(name: str, vmlinux: btf.Spec) -> None:
    ke = _kernel_enum(name, vmlinux)
    kernel = {v.name: v.value for v in ke.values if not v.name.startswith("__")}
    prefix = _common_prefix(list(kernel))
    renames = KERNEL_ENUMS.get(name, KernelEnum()).names
    problems = []
    for member, value in _values(ENUMS[name]).items():
        kname = renames.get(member, prefix + member)
        if kname not in kernel:
            problems.append(f"{member}: no {kname} in enum {ke.name or '(anonymous)'}")
        elif kernel[kname] != value:
            problems.append(f"{member} = {value}, kernel {kname} = {kernel[kname]}")
    assert not problems, f"{name}:\n  " + "\n  ".join(problems)


_DEFINE = re.compile(r"^#define\s+(\w+)\s+\(?\s*(\d+)U?\s*(?:<<\s*(\d+))?\s*\)?\s*$")


@pytest.mark.parametrize("name", sorted(DEFINED_FLAGS))
def test_flags_match_uapi_header(name: str) -> None:
    header, prefix = DEFINED_FLAGS[name]
    path = Path("/usr/include") / header
    if not path.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing (.ci/setup installs linux-libc-dev)")
        pytest.skip(f"{path} is missing")
    defines: dict[str, int] = {}
    for line in path.read_text().splitlines():
        if m := _DEFINE.match(line):
            defines[m[1]] = int(m[2]) << int(m[3] or 0)
    problems = []
    for member, value in _values(ENUMS[name]).items():
        kname = prefix + member
        if defines.get(kname) != value:
            problems.append(f"{member} = {value}, {header}: {kname} = {defines.get(kname)}")
    assert not problems, f"{name}:\n  " + "\n  ".join(problems)


def test_every_struct_and_enum_is_checked() -> None:
    # Discovery is what keeps a new struct or enum from being forgotten: it must see them.
    assert {"MapCreateAttr", "ProgLoadAttr", "ProgInfo", "LinkInfo"} <= set(STRUCTS)
    assert {"Cmd", "MapType", "ProgType", "AttachType", "LinkType"} <= set(ENUMS)
    for table in (ATTR_MEMBERS, COVERS):
        assert set(table) <= set(STRUCTS), "a table names a struct ebpf._sys no longer has"
    for table2 in (KERNEL_ENUMS, DEFINED_FLAGS):
        assert set(table2) <= set(ENUMS), "a table names an enum ebpf._sys no longer has"


@pytest.mark.parametrize("data", [b"", b"\0", b"abc\0def", bytes(range(256)) * 40])
def test_cbytes_is_a_c_copy_at_its_address(data: bytes) -> None:
    """What the kernel reads at :func:`bsys.address` is ``data`` (an empty one is one NUL
    byte, so that it has an address), and a copy: later changes to the source or another
    buffer never show there."""
    buf = bsys.cbytes(data)
    addr = bsys.address(buf)
    assert addr != 0
    assert ctypes.string_at(addr, len(data)) == data
    if not data:
        assert ctypes.string_at(addr, 1) == b"\0"
    source = bytearray(data)
    copy = bsys.cbytes(bytes(source))
    source[:] = b"\xff" * len(source)
    assert ctypes.string_at(bsys.address(copy), len(data)) == data
    assert bsys.address(copy) != addr
