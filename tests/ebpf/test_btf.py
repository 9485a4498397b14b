"""BTF parsing, marshalling and .BTF.ext, checked against clang's output and bpftool."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.ebpf import btf
from orchestrator.ebpf.btf import (
    Array,
    Const,
    Datasec,
    DeclTag,
    Enum,
    EnumValue,
    Float,
    Func,
    FuncLinkage,
    FuncParam,
    FuncProto,
    Fwd,
    Int,
    Kind,
    Member,
    Pointer,
    Restrict,
    Spec,
    Struct,
    Type,
    Typedef,
    TypeTag,
    Union,
    Var,
    VarLinkage,
    VarSecinfo,
    Void,
    Volatile,
    alignof,
    describe,
    sizeof,
    skip_qualifiers,
)
from orchestrator.ebpf.btf.ext import (
    CORERelo,
    COREReloKind,
    FuncInfo,
    LineInfo,
    encode_func_infos,
    encode_line_infos,
    parse_ext,
)
from orchestrator.ebpf.errors import BTFError
from tests.conftest import require_tool

VMLINUX = Path("/sys/kernel/btf/vmlinux")

TYPES_C = r"""
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

typedef int (*callback_t)(int, const char *, ...);
struct fwd_only;
enum small { S_NEG = -1, S_TWO = 2 };
struct bits { unsigned int a : 3; int b : 5; unsigned long long c : 40; _Bool flag : 1;
              enum small e : 4; };
union num { int i; float f; char c[8]; };
struct outer {
	char name[16];
	__u8 raw[4];
	int matrix[2][3];
	double d;
	struct bits bits;
	union { int anon_i; unsigned short anon_s; };
	struct { int x, y; } point;
	struct fwd_only *fwd;
	callback_t cb;
	const volatile int *restrict cvp;
	int __attribute__((btf_type_tag("user"))) *tagged;
	enum small es;
	_Bool ok;
	union num num;
} __attribute__((btf_decl_tag("outer_tag")));
struct packed { char a; int b; } __attribute__((packed));
struct list { struct list *next, *prev; };

struct outer g_outer;
struct packed g_packed;
struct list g_list;
const volatile __u16 magic = 7;
const volatile char greeting[8] = "hi";
static volatile int counter = 3;

__attribute__((noinline)) int helper(struct outer *o __attribute__((btf_decl_tag("arg_tag"))),
                                     int x)
{
	return o->matrix[1][2] + x + o->bits.b + (g_list.next != 0);
}

SEC("xdp") int prog(struct xdp_md *ctx)
{
	counter++;
	return helper(&g_outer, magic + greeting[0]) + g_packed.b;
}
char LICENSE[] SEC("license") = "GPL";
"""

CORE_C = r"""
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

struct task_struct {
	int pid;
	int tgid;
	struct task_struct *parent;
} __attribute__((preserve_access_index));
enum my_enum { ME_A = 1, ME_B = 2 };

SEC("raw_tp/sys_enter")
int core_prog(void *ctx)
{
	struct task_struct *t = (void *)bpf_get_current_task();
	int pid = BPF_CORE_READ(t, parent, pid);
	int exists = bpf_core_field_exists(t->tgid);
	int sz = bpf_core_type_size(struct task_struct);
	int ev = bpf_core_enum_value(enum my_enum, ME_B);
	return pid + exists + sz + ev;
}
char LICENSE[] SEC("license") = "GPL";
"""


@dataclasses.dataclass
class Obj:
    path: Path
    btf: bytes
    ext: bytes
    source: str


def _sections(path: Path, source: str) -> Obj:
    with path.open("rb") as fh:
        elf = ELFFile(fh)
        return Obj(
            path,
            elf.get_section_by_name(".BTF").data(),
            elf.get_section_by_name(".BTF.ext").data(),
            source,
        )


@pytest.fixture(scope="session")
def types_obj(compile_bpf: Callable[..., Path]) -> Obj:
    return _sections(compile_bpf(TYPES_C), TYPES_C)


@pytest.fixture(scope="session")
def core_obj(compile_bpf: Callable[..., Path]) -> Obj:
    return _sections(compile_bpf(CORE_C), CORE_C)


@pytest.fixture(params=["types", "core"])
def any_obj(request: pytest.FixtureRequest) -> Obj:
    obj: Obj = request.getfixturevalue(f"{request.param}_obj")
    return obj


# ---------------------------------------------------------------------------- helpers


def bpftool_json(path: Path, base: Path | None = None) -> list[dict[str, object]]:
    tool = require_tool("bpftool")
    cmd = [tool, "-j"]
    if base is not None:
        cmd += ["-B", str(base)]
    cmd += ["btf", "dump", "file", str(path)]
    out = subprocess.run(cmd, check=True, capture_output=True).stdout
    types: list[dict[str, object]] = json.loads(out)["types"]
    return [_normalize(t) for t in types]


_LINKAGE = {0: "static", 1: "global", 2: "extern"}
_INT_ENC = {0: "(none)", 1: "SIGNED", 2: "CHAR", 4: "BOOL"}


def _normalize(d: dict[str, object]) -> dict[str, object]:
    """bpftool's JSON with the representation quirks removed (enum values modulo their
    width, zero bitfield sizes dropped)."""
    d = dict(d)
    if d["kind"] in ("ENUM", "ENUM64"):
        bits = 32 if d["kind"] == "ENUM" else 64
        signed = d["encoding"] == "SIGNED"
        vals = []
        for v in d["values"]:  # type: ignore[attr-defined]
            val = v["val"] % (1 << bits)
            if signed and val >> (bits - 1):
                val -= 1 << bits
            vals.append({"name": v["name"], "val": val})
        d["values"] = vals
    if d["kind"] in ("STRUCT", "UNION"):
        d["members"] = [
            {k: v for k, v in m.items() if not (k == "bitfield_size" and v == 0)}
            for m in d["members"]  # type: ignore[attr-defined]
        ]
    return d


def as_bpftool(spec: Spec, t: Type) -> dict[str, object]:
    """Our view of a type, in bpftool's JSON shape (after _normalize)."""
    tid = spec.type_id
    d: dict[str, object] = {"id": tid(t), "kind": t.kind.name, "name": t.name or "(anon)"}
    if isinstance(t, Int):
        enc = (1 if t.signed else 0) | (2 if t.char else 0) | (4 if t.bool else 0)
        d.update(size=t.size, bits_offset=t.offset, nr_bits=t.bits, encoding=_INT_ENC[enc])
    elif isinstance(t, Pointer):
        d["type_id"] = tid(t.target)
    elif isinstance(t, Array):
        d.update(type_id=tid(t.type), index_type_id=tid(t.index_type), nr_elems=t.nelems)
    elif isinstance(t, Struct | Union):
        members = []
        for m in t.members:
            md: dict[str, object] = {
                "name": m.name or "(anon)",
                "type_id": tid(m.type),
                "bits_offset": m.offset_bits,
            }
            if m.bitfield_size:
                md["bitfield_size"] = m.bitfield_size
            members.append(md)
        d.update(size=t.size, vlen=len(t.members), members=members)
    elif isinstance(t, Enum):
        d.update(
            encoding="SIGNED" if t.signed else "UNSIGNED",
            size=t.size,
            vlen=len(t.values),
            values=[{"name": v.name, "val": v.value} for v in t.values],
        )
    elif isinstance(t, Fwd):
        d["fwd_kind"] = "union" if t.union else "struct"
    elif isinstance(t, Typedef | Volatile | Const | Restrict | TypeTag | Var | DeclTag):
        d["type_id"] = tid(t.type)
        if isinstance(t, Var):
            d["linkage"] = _LINKAGE[t.linkage]
        if isinstance(t, DeclTag):
            d["component_idx"] = t.component_idx
    elif isinstance(t, Func):
        d.update(type_id=tid(t.type), linkage=_LINKAGE[t.linkage])
    elif isinstance(t, FuncProto):
        d.update(
            ret_type_id=tid(t.return_type),
            vlen=len(t.params),
            params=[{"name": p.name or "(anon)", "type_id": tid(p.type)} for p in t.params],
        )
    elif isinstance(t, Datasec):
        d.update(
            size=t.size,
            vlen=len(t.vars),
            vars=[{"type_id": tid(v.type), "offset": v.offset, "size": v.size} for v in t.vars],
        )
    elif isinstance(t, Float):
        d["size"] = t.size
    return d


def signature(spec: Spec, t: Type) -> tuple[object, ...]:
    """Everything about a type, with references as ids: equal signatures = same type."""

    def sig(v: object) -> object:
        if isinstance(v, Type):
            return ("#", spec.type_id(v))
        if isinstance(v, list):
            return tuple(sig(x) for x in v)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return (type(v).__name__, *(sig(getattr(v, f.name)) for f in dataclasses.fields(v)))
        return v

    return (type(t).__name__, t.kind, *(sig(getattr(t, f.name)) for f in dataclasses.fields(t)))


def signatures(spec: Spec) -> list[tuple[object, ...]]:
    return [signature(spec, t) for t in spec.types]


def raw_btf(words: list[int], strings: bytes = b"\0", swap: bool = False) -> bytes:
    """A BTF blob from raw type words (for corrupt and hand-made inputs)."""
    fmt = ">" if swap else "<"
    types = struct.pack(f"{fmt}{len(words)}I", *words)
    hdr = struct.pack(f"{fmt}HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return hdr + types + strings


def info(kind: int, vlen: int = 0, kflag: int = 0) -> int:
    return (kflag << 31) | (kind << 24) | vlen


def to_big_endian(blob: bytes) -> bytes:
    """Byte-swap a little-endian BTF blob: the header fields and every u32 type word."""
    magic, ver, flags, hdr_len, toff, tlen, soff, slen = struct.unpack_from("<HBBIIIII", blob)
    out = bytearray(blob)
    struct.pack_into(">HBBIIIII", out, 0, magic, ver, flags, hdr_len, toff, tlen, soff, slen)
    start = hdr_len + toff
    words = struct.unpack_from(f"<{tlen // 4}I", blob, start)
    struct.pack_into(f">{tlen // 4}I", out, start, *words)
    return bytes(out)


# ---------------------------------------------------------------------------- parsing


def test_parse_matches_bpftool(any_obj: Obj) -> None:
    spec = Spec.parse(any_obj.btf)
    expected = bpftool_json(any_obj.path)
    assert len(spec) == len(expected)
    assert [as_bpftool(spec, t) for t in spec.types] == expected


def test_decoded_types(types_obj: Obj) -> None:
    spec = Spec.parse(types_obj.btf)
    outer = spec.type_by_name("outer", Struct)
    m = {mm.name: mm for mm in outer.members}
    assert outer.size == 128 and outer.kind is Kind.STRUCT

    char = skip_qualifiers(m["name"].type)
    assert isinstance(char, Array) and char.nelems == 16
    assert isinstance(char.type, Int) and char.type.signed and char.type.size == 1
    ok = m["ok"].type
    assert isinstance(ok, Int) and ok.bool and not ok.signed

    bits = spec.type_by_name("bits", Struct)
    assert [(b.name, b.offset_bits, b.bitfield_size) for b in bits.members] == [
        ("a", 0, 3),
        ("b", 3, 5),
        ("c", 8, 40),
        ("flag", 48, 1),
        ("e", 49, 4),
    ]
    anon = m[""].type
    assert isinstance(anon, Union) and anon.name == "" and anon.size == 4

    fwd = m["fwd"].type
    assert isinstance(fwd, Pointer) and isinstance(fwd.target, Fwd) and not fwd.target.union

    cb = m["cb"].type
    assert isinstance(cb, Typedef) and cb.name == "callback_t"
    proto = skip_qualifiers(cb)
    assert isinstance(proto, Pointer) and isinstance(proto.target, FuncProto)
    last = proto.target.params[-1]
    assert last.name == "" and isinstance(last.type, Void)  # variadic

    cvp = m["cvp"].type
    assert isinstance(cvp, Restrict) and isinstance(cvp.type, Pointer)
    assert isinstance(cvp.type.target, Const) and isinstance(cvp.type.target.type, Volatile)

    tagged = m["tagged"].type
    assert isinstance(tagged, Pointer) and isinstance(tagged.target, TypeTag)
    assert tagged.target.name == "user" and not tagged.target.attr

    small = spec.type_by_name("small", Enum)
    # clang 14 does not set kind_flag (signedness), so -1 reads as 0xffffffff, as in bpftool
    assert [(v.name, v.value) for v in small.values] == [("S_NEG", 0xFFFFFFFF), ("S_TWO", 2)]
    assert small.kind is Kind.ENUM and not small.is64

    tags = {t.name: t for t in spec.types if isinstance(t, DeclTag)}
    assert tags["outer_tag"].type is outer and tags["outer_tag"].component_idx == -1
    helper = spec.type_by_name("helper", Func)
    assert tags["arg_tag"].type is helper and tags["arg_tag"].component_idx == 0
    assert helper.linkage is FuncLinkage.GLOBAL
    assert [p.name for p in helper.type.params] == ["o", "x"]

    counter = spec.type_by_name("counter", Var)
    assert counter.linkage is VarLinkage.STATIC
    assert spec.type_by_name("magic", Var).linkage is VarLinkage.GLOBAL_ALLOCATED
    secs = {t.name: t for t in spec.types if isinstance(t, Datasec)}
    assert set(secs) == {".bss", ".data", ".rodata", "license"}
    assert {v.type.name for v in secs[".rodata"].vars} == {"magic", "greeting"}

    lst = spec.type_by_name("list", Struct)
    nxt = lst.members[0].type
    assert isinstance(nxt, Pointer) and nxt.target is lst  # cyclic graph
    assert "list" in repr(lst) and len(repr(lst)) < 400


def test_type_ids_and_names(types_obj: Obj) -> None:
    spec = Spec.parse(types_obj.btf)
    for tid in range(len(spec) + 1):
        assert spec.type_id(spec.type_by_id(tid)) == tid
    assert isinstance(spec.type_by_id(0), Void)
    assert spec.type_id(Void()) == 0
    with pytest.raises(BTFError):
        spec.type_by_id(len(spec) + 1)
    with pytest.raises(BTFError):
        spec.type_id(Int("int", 4))  # not in this spec
    with pytest.raises(BTFError, match="no type nope"):
        spec.type_by_name("nope")
    with pytest.raises(BTFError):
        spec.type_by_name("outer", Union)
    assert spec.types_by_name("nope") == []
    assert spec.type_by_name("callback_t") is spec.type_by_name("callback_t", Typedef)

    two = Spec()
    s, td = Struct("foo", 4, [Member("x", Int("int", 4, signed=True), 0)]), None
    td = Typedef("foo", s)
    two.add(td)
    assert two.types_by_name("foo") == [td, s]  # in id order
    with pytest.raises(BTFError, match="2 types match"):
        two.type_by_name("foo")
    assert two.type_by_name("foo", Struct) is s


def test_helpers(types_obj: Obj) -> None:
    spec = Spec.parse(types_obj.btf)
    outer = spec.type_by_name("outer", Struct)
    m = {mm.name: mm.type for mm in outer.members}
    assert describe(spec.type_by_name("unsigned int")) == "unsigned int"
    assert describe(m["name"]) == "char[16]"
    assert describe(m["matrix"]) == "int[2][3]"
    assert describe(outer) == "struct outer"
    assert describe(m[""]) == "union {...}"
    assert describe(m["fwd"]) == "struct fwd_only *"
    assert describe(m["cb"]) == "callback_t"
    assert describe(skip_qualifiers(m["cb"])) == "int (*)(int, const char *, ...)"
    assert describe(m["cvp"]) == "restrict const volatile int *"
    magic = spec.type_by_name("magic", Var)
    assert describe(magic.type) == "const volatile __u16"
    assert describe(magic) == "var magic"
    assert describe(Void()) == "void"

    assert sizeof(outer) == 128 and alignof(outer) == 8
    assert sizeof(m["matrix"]) == 24 and alignof(m["matrix"]) == 4
    assert sizeof(m["cb"]) == 8 and alignof(m["cvp"]) == 8
    assert sizeof(magic) == 2
    packed = spec.type_by_name("packed", Struct)
    assert sizeof(packed) == 5 and alignof(packed) == 1
    assert alignof(spec.type_by_name("bits", Struct)) == 8
    for no_size in (
        skip_qualifiers(m["fwd"]).target,
        Void(),  # type: ignore[attr-defined]
        spec.type_by_name("helper"),
    ):
        with pytest.raises(BTFError):
            sizeof(no_size)
    assert skip_qualifiers(magic.type) is spec.type_by_name("unsigned short")


def test_deep_chains_do_not_recurse() -> None:
    # 20000 pointers to pointers ... to int, then 20000 consts in a row.
    n = 20000
    words = [1, info(1), 4, 0x01000020]  # id 1: int
    for i in range(n):
        words += [0, info(2), 1 + i]  # id 2+i: pointer to the previous type
    for i in range(n):
        words += [0, info(10), 1 + n + i]  # const chain on top of the last pointer
    spec = Spec.parse(raw_btf(words, b"\0int\0"))
    top = spec.type_by_id(1 + 2 * n)
    assert isinstance(top, Const) and len(spec) == 1 + 2 * n
    assert len(describe(top)) < 1000
    with pytest.raises(BTFError, match="too long"):
        skip_qualifiers(top)
    assert sizeof(spec.type_by_id(1 + n)) == 8
    blob, _ = spec.marshal()
    assert len(Spec.parse(blob)) == len(spec)


def test_lazy_errors_are_local() -> None:
    # id 1 int, id 2 pointer to the missing id 9; only decoding id 2 fails.
    words = [1, info(1), 4, 0x01000020, 0, info(2), 9]
    spec = Spec.parse(raw_btf(words, b"\0int\0"))
    assert spec.type_by_name("int").name == "int"
    with pytest.raises(BTFError, match="missing type 9"):
        spec.type_by_id(2)
    with pytest.raises(BTFError):  # and again: the failed decode left nothing half-made
        spec.type_by_id(2)


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\x9f\xeb\x01\x00",
        raw_btf([])[:-1] + b"x",  # string section not nul-terminated
        b"\x00\x00" + raw_btf([])[2:],  # bad magic
        raw_btf([])[:2] + b"\x02" + raw_btf([])[3:],  # version 2
        raw_btf([1, info(1), 4, 32], b"x\0"),  # strings do not start with ""
        raw_btf([0, info(25), 0]),  # unknown kind
        raw_btf([0, info(0), 0]),  # kind 0 (UNKN) is not a record
        raw_btf([0, info(4, vlen=2), 4, 0, 0, 0]),  # struct truncated in its members
        raw_btf([0, info(1), 4]),  # int without its encoding word
        raw_btf([1, info(1), 4, 32], b"\0"),  # name offset beyond the string section
        raw_btf([0, info(12, vlen=7), 0]),  # func with a bad linkage
        raw_btf([0, info(12), 2, 0, info(1), 4, 32]),  # func whose type is not a proto
        raw_btf([0, info(14), 0, 5]),  # var with a bad linkage
        raw_btf([0, info(1), 4, 0]),  # int with 0 bits
        raw_btf([0, info(2), 0])[:30],  # type section cut short
        raw_btf([0, info(2), 1])[:24] + b"\x00" * 3,  # type_len beyond the data
    ],
)
def test_corrupt_input_raises_btf_error(blob: bytes) -> None:
    with pytest.raises(BTFError):
        spec = Spec.parse(blob)
        list(spec.types)


def test_header_bounds() -> None:
    good = raw_btf([0, info(2), 0])
    hdr = bytearray(good)
    struct.pack_into("<I", hdr, 4, 10_000)  # hdr_len beyond the data
    with pytest.raises(BTFError, match="header length"):
        Spec.parse(bytes(hdr))
    hdr = bytearray(good)
    struct.pack_into("<I", hdr, 12, 0xFFFFFFF0)  # type_len
    with pytest.raises(BTFError, match="exceed"):
        Spec.parse(bytes(hdr))
    hdr = bytearray(good)
    struct.pack_into("<I", hdr, 12, 6)  # type_len not a multiple of 4
    with pytest.raises(BTFError, match="multiple of 4"):
        Spec.parse(bytes(hdr))


def test_big_endian(any_obj: Obj) -> None:
    le = Spec.parse(any_obj.btf)
    be = Spec.parse(to_big_endian(any_obj.btf))
    assert signatures(be) == signatures(le)
    assert be.marshal() == le.marshal()  # marshal always writes little-endian


# ---------------------------------------------------------------------------- marshal


def test_marshal_round_trip(any_obj: Obj, tmp_path: Path) -> None:
    spec = Spec.parse(any_obj.btf)
    blob, strings = spec.marshal()
    again = Spec.parse(blob)
    assert signatures(again) == signatures(spec)
    # bpftool sees the same types in our blob as in clang's
    out = tmp_path / "marshalled.btf"
    out.write_bytes(blob)
    assert bpftool_json(out) == bpftool_json(any_obj.path)
    # the string map points at the right bytes; strings are stored once
    str_off = 24 + struct.unpack_from("<I", blob, 16)[0]
    for s, off in strings.items():
        raw = s.encode()
        assert blob[str_off + off : str_off + off + len(raw) + 1] == raw + b"\0"
    names = blob[str_off:-1].split(b"\0")  # the table ends with a nul
    assert len(names) == len(set(names))


def test_marshal_extra_strings() -> None:
    spec = Spec()
    spec.add(Int("int", 4, signed=True))
    blob, strings = spec.marshal(["file.c", "int x = 1;", "int", "file.c"])
    assert set(strings) == {"", "int", "file.c", "int x = 1;"}
    assert strings[""] == 0
    again = Spec.parse(blob)
    assert again.string(strings["int x = 1;"]) == "int x = 1;"
    assert again.string(strings["file.c"]) == "file.c"
    assert len(again) == 1


def test_marshal_all_kinds_round_trip() -> None:
    """Kinds and flags clang 14 does not emit (ENUM64, signed enums, kind_flag tags...)."""
    i32 = Int("int", 4, signed=True)
    u8 = Int("unsigned char", 1)
    chr_ = Int("char", 1, signed=True, char=True)
    old_bf = Int("int", 4, signed=True, bits=3, offset=5)
    s = Struct("s", 16, [Member("a", i32, 0), Member("b", old_bf, 32)])
    proto = FuncProto(i32, [FuncParam("x", i32), FuncParam("", Void())])
    fn = Func("f", proto, FuncLinkage.EXTERN)
    var = Var("v", s, VarLinkage.GLOBAL_EXTERN)
    types: list[Type] = [
        Enum("e64", 8, True, [EnumValue("MIN", -(1 << 63)), EnumValue("ONE", 1)], True),
        Enum("e64u", 8, False, [EnumValue("MAX", (1 << 64) - 1)], True),
        Enum("e32", 4, True, [EnumValue("NEG", -5)]),
        Enum("e16", 2, False, [EnumValue("X", 65535)]),
        Union("u", 4, [Member("c", chr_, 0), Member("u", u8, 0)]),
        Fwd("fu", union=True),
        TypeTag("attr", i32, attr=True),
        DeclTag("dt", fn, 0, attr=True),
        Float("long double", 16),
        Datasec(".data", 16, [VarSecinfo(var, 0, 16)]),
        Array(s, i32, 3),
        Restrict(Pointer(Volatile(Const(chr_)))),
    ]
    spec = Spec()
    for t in types:
        spec.add(t)
    again = Spec.parse(spec.marshal()[0])
    assert signatures(again) == signatures(spec)
    e64 = again.type_by_name("e64", Enum)
    assert e64.kind is Kind.ENUM64 and e64.values[0].value == -(1 << 63)
    assert again.type_by_name("e64u", Enum).values[0].value == (1 << 64) - 1
    assert again.type_by_name("attr", TypeTag).attr
    assert again.type_by_name("f", Func).linkage is FuncLinkage.EXTERN
    b = again.type_by_name("s", Struct).members[1].type
    assert isinstance(b, Int) and (b.bits, b.offset) == (3, 5)


def test_marshal_errors() -> None:
    spec = Spec()
    ptr = Pointer(Int("int", 4))
    spec.add(ptr)
    ptr.target = Int("stranger", 4)  # now refers outside the spec
    with pytest.raises(BTFError, match="not in this spec"):
        spec.marshal()
    for bad in (
        Int("int", 1 << 32),
        Enum("e", 4, False, [EnumValue("X", 1 << 32)]),
        Struct("s", 4, [Member("m", Int("int", 4), 1 << 24, bitfield_size=3)]),
        Struct("s", 4, [Member(f"m{i}", Int("int", 4), 0) for i in range(1 << 16)]),
        Int("bad\0name", 4),
    ):
        spec = Spec()
        spec.add(bad)
        with pytest.raises(BTFError):
            spec.marshal()


# ---------------------------------------------------------------------------- copy / add / split


def test_copy_is_deep(types_obj: Obj) -> None:
    spec = Spec.parse(types_obj.btf)
    data = spec.type_by_name(".data", Datasec)  # decoded before the copy
    data.size = 4
    cp = spec.copy()
    assert signatures(cp) == signatures(spec)
    cdata = cp.type_by_name(".data", Datasec)
    assert cdata is not data and cdata.size == 4
    cdata.size = 99
    cdata.vars[0].offset = 12
    assert data.size == 4 and data.vars[0].offset == 0
    # references inside the copy point at the copy's objects
    counter = cdata.vars[0].type
    assert isinstance(counter, Var) and counter is cp.type_by_name("counter")
    assert counter is not spec.type_by_name("counter")
    assert cp.type_id(counter) == spec.type_id(spec.type_by_name("counter"))
    # types not decoded before the copy decode independently
    assert cp.type_by_name("outer") is not spec.type_by_name("outer")
    # additions to one do not show up in the other
    cp.add(Int("extra", 4))
    assert len(cp) == len(spec) + 1 and spec.types_by_name("extra") == []


def test_add() -> None:
    spec = Spec()
    i32 = Int("int", 4, signed=True)
    s = Struct("node", 16, [])
    s.members = [Member("next", Pointer(s), 0), Member("v", i32, 64)]
    sid = spec.add(s)
    assert sid == 1 and len(spec) == 3  # struct, pointer, int
    assert spec.add(s) == sid and spec.add(i32) == spec.type_id(i32)
    assert spec.add(Void()) == 0
    again = Spec.parse(spec.marshal()[0])
    node = again.type_by_name("node", Struct)
    ptr = node.members[0].type
    assert isinstance(ptr, Pointer) and ptr.target is node


def test_split_btf(types_obj: Obj, tmp_path: Path) -> None:
    base = Spec.parse(types_obj.btf)
    outer = base.type_by_name("outer", Struct)
    split = Spec(base=base)
    assert split.first_id == len(base) + 1
    mod = Struct("mod_s", 16, [Member("o", Pointer(outer), 0), Member("x", Int("u64", 8), 64)])
    mid = split.add(mod)
    assert mid == len(base) + 1 and len(split) == len(base) + 3
    blob, strings = split.marshal()
    base_str_len = struct.unpack_from("<I", types_obj.btf, 20)[0]
    assert strings[""] == 0
    assert min(off for s, off in strings.items() if s) == base_str_len  # offsets continue

    parsed = Spec.parse(blob, base=base)
    assert len(parsed) == len(split) and parsed.first_id == split.first_id
    got = parsed.type_by_id(mid)
    assert isinstance(got, Struct) and got.name == "mod_s"
    ptr = got.members[0].type
    assert isinstance(ptr, Pointer) and ptr.target is outer  # refers into the base
    assert parsed.type_by_name("outer") is outer
    assert parsed.type_id(outer) == base.type_id(outer)
    assert [t.name for t in parsed.types][: len(base)] == [t.name for t in base.types]
    with pytest.raises(BTFError):
        Spec.parse(blob)  # without its base, the ids are dangling

    # bpftool (which dumps only the split's own types) agrees
    base_file, split_file = tmp_path / "base.btf", tmp_path / "split.btf"
    base_file.write_bytes(types_obj.btf)
    split_file.write_bytes(blob)
    own = [as_bpftool(parsed, t) for t in parsed.types][len(base) :]
    assert own == bpftool_json(split_file, base_file)


# ---------------------------------------------------------------------------- vmlinux


def test_vmlinux(tmp_path: Path) -> None:
    if not VMLINUX.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{VMLINUX} is missing")
        pytest.skip(f"{VMLINUX} is missing")
    data = VMLINUX.read_bytes()
    start = time.perf_counter()
    spec = Spec.parse(data)
    task = spec.type_by_name("task_struct", Struct)
    assert "pid" in {m.name for m in task.members}
    types = list(spec.types)
    elapsed = time.perf_counter() - start
    assert elapsed < 20  # ~1.3 s here; a generous bound against accidental quadratic work

    expected = bpftool_json(VMLINUX)
    assert len(types) == len(expected)
    assert [as_bpftool(spec, t) for t in types] == expected
    assert any(isinstance(t, Enum) and t.is64 for t in types)

    out = tmp_path / "vmlinux.btf"
    out.write_bytes(spec.marshal()[0])
    assert bpftool_json(out) == expected


# ---------------------------------------------------------------------------- .BTF.ext


def test_ext_core(core_obj: Obj) -> None:
    spec = Spec.parse(core_obj.btf)
    ext = parse_ext(core_obj.ext, spec)
    sec = "raw_tp/sys_enter"
    assert list(ext.func_infos) == [sec]
    (fi,) = ext.func_infos[sec]
    assert fi.insn == 0 and fi.func is spec.type_by_name("core_prog", Func)

    task = spec.type_by_name("task_struct", Struct)
    my_enum = spec.type_by_name("my_enum", Enum)
    relos = ext.core_relos[sec]
    assert {(r.type.name, r.access, r.kind) for r in relos} == {
        ("task_struct", "0:2", COREReloKind.FIELD_BYTE_OFFSET),  # t->parent
        ("task_struct", "0:0", COREReloKind.FIELD_BYTE_OFFSET),  # ->pid
        ("task_struct", "0:1", COREReloKind.FIELD_EXISTS),
        ("task_struct", "0", COREReloKind.TYPE_SIZE),
        ("my_enum", "1", COREReloKind.ENUMVAL_VALUE),
    }
    assert all(r.type in (task, my_enum) for r in relos)
    assert [r.insn for r in relos] == sorted(r.insn for r in relos)


def test_ext_line_infos_match_source(any_obj: Obj) -> None:
    spec = Spec.parse(any_obj.btf)
    ext = parse_ext(any_obj.ext, spec)
    lines = any_obj.source.splitlines()
    total = 0
    for infos in ext.line_infos.values():
        assert [li.insn for li in infos] == sorted(li.insn for li in infos)
        for li in infos:
            assert li.file_name.endswith(".c")
            if li.line_number:  # 0: compiler-generated code
                assert li.line == lines[li.line_number - 1]
                assert 0 < li.column <= len(li.line) + 1
                total += 1
    assert total > 3
    assert set(ext.func_infos) <= set(ext.line_infos)


def test_ext_larger_records_are_honoured(core_obj: Obj) -> None:
    """A newer compiler may append fields to the records; they must be skipped."""
    spec = Spec.parse(core_obj.btf)
    ref = parse_ext(core_obj.ext, spec)
    ext = core_obj.ext
    hdr_len = struct.unpack_from("<I", ext, 4)[0]
    offs = struct.unpack_from("<6I", ext, 8)
    out = bytearray()
    new_offs = []
    for i in range(3):
        off, length = offs[2 * i], offs[2 * i + 1]
        sub = ext[hdr_len + off : hdr_len + off + length]
        new_offs.append(len(out))
        (rec,) = struct.unpack_from("<I", sub)
        chunk = bytearray(struct.pack("<I", rec + 8))
        pos = 4
        while pos < len(sub):
            name_off, count = struct.unpack_from("<II", sub, pos)
            chunk += struct.pack("<II", name_off, count)
            pos += 8
            for _ in range(count):
                chunk += sub[pos : pos + rec] + b"\xee" * 8
                pos += rec
        out += chunk
        new_offs.append(len(chunk))
    header = bytearray(ext[:hdr_len])
    struct.pack_into("<6I", header, 8, *new_offs)
    got = parse_ext(bytes(header + out), spec)
    assert got == ref


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:6],
        lambda b: b"\x00\x00" + b[2:],
        lambda b: b"\xeb\x9f" + b[2:],  # big-endian
        lambda b: b[:2] + b"\x02" + b[3:],  # version
        lambda b: b[:4] + struct.pack("<I", 1000) + b[8:],  # hdr_len
        lambda b: b[:12] + struct.pack("<I", 1 << 20) + b[16:],  # func_info_len
        lambda b: b[: len(b) - 4],  # last record cut short
    ],
)
def test_ext_corrupt(core_obj: Obj, mutate: Callable[[bytes], bytes]) -> None:
    spec = Spec.parse(core_obj.btf)
    with pytest.raises(BTFError):
        parse_ext(mutate(core_obj.ext), spec)


def test_ext_bad_records(core_obj: Obj) -> None:
    spec = Spec.parse(core_obj.btf)
    hdr_len = struct.unpack_from("<I", core_obj.ext, 4)[0]
    fi_off = struct.unpack_from("<I", core_obj.ext, 8)[0]
    rec = hdr_len + fi_off + 4 + 8  # first func_info record
    for patch, what in (
        ((rec, 3), "not at an instruction"),  # insn_off not a multiple of 8
        ((rec + 4, spec.type_id(spec.type_by_name("task_struct"))), "is not a func"),
        ((hdr_len + fi_off, 4), "record size"),
    ):
        bad = bytearray(core_obj.ext)
        struct.pack_into("<I", bad, patch[0], patch[1])
        with pytest.raises(BTFError, match=what):
            parse_ext(bytes(bad), spec)


def test_encode_infos(core_obj: Obj) -> None:
    spec = Spec.parse(core_obj.btf)
    ext = parse_ext(core_obj.ext, spec)
    sec = "raw_tp/sys_enter"
    fis = ext.func_infos[sec]
    raw = encode_func_infos(fis, spec.type_id, base_insn=3)
    assert struct.unpack("=II", raw) == (3, spec.type_id(fis[0].func))

    lis = ext.line_infos[sec]
    blob, strings = spec.marshal([s for li in lis for s in (li.file_name, li.line)])
    raw = encode_line_infos(lis, strings)
    assert len(raw) == 16 * len(lis)
    again = Spec.parse(blob)
    for i, li in enumerate(lis):
        insn, foff, loff, col = struct.unpack_from("=IIII", raw, 16 * i)
        assert insn == li.insn
        assert again.string(foff) == li.file_name and again.string(loff) == li.line
        assert (col >> 10, col & 0x3FF) == (li.line_number, li.column)

    shifted = dataclasses.replace(lis[0], insn=lis[0].insn + 10)  # what the linker does
    assert struct.unpack_from("=I", encode_line_infos([shifted], strings))[0] == lis[0].insn + 10
    with pytest.raises(BTFError, match="extra_strings"):
        encode_line_infos([LineInfo(0, "nope.c", "", 1, 1)], strings)
    with pytest.raises(BTFError):
        encode_line_infos([LineInfo(0, lis[0].file_name, "", 1, 5000)], strings)
    with pytest.raises(BTFError):
        encode_func_infos(fis, spec.type_id, base_insn=-1)
    relo = CORERelo(0, spec.type_by_id(1), "0", COREReloKind.TYPE_EXISTS)
    assert dataclasses.replace(relo, insn=4).insn == 4
    assert FuncInfo(2, fis[0].func).insn == 2


# ---------------------------------------------------------------------------- robustness


def _exercise(blob: bytes) -> None:
    """Everything a loader does with untrusted BTF; only BTFError may come out."""
    try:
        spec = Spec.parse(blob)
        for t in spec.types:
            describe(t)
            repr(t)
            for f in (sizeof, alignof, skip_qualifiers):
                with contextlib.suppress(BTFError):
                    f(t)
        spec.types_by_name("outer")
        spec.copy()
        spec.marshal()
    except BTFError:
        pass


_HYP = settings(
    max_examples=300,
    deadline=2000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)


@_HYP
@given(data=st.data())
def test_mutated_btf_only_raises_btf_error(types_obj: Obj, data: st.DataObject) -> None:
    blob = bytearray(types_obj.btf)
    cut = data.draw(st.integers(0, len(blob)), label="cut")
    patches = data.draw(
        st.lists(st.tuples(st.integers(0, len(blob) - 1), st.integers(0, 255)), max_size=8),
        label="patches",
    )
    for pos, val in patches:
        blob[pos] = val
    nwords = (len(blob) - 24) // 4
    words = data.draw(
        st.lists(st.tuples(st.integers(0, nwords - 1), st.integers(0, 2**32 - 1)), max_size=3),
        label="word patches",
    )
    for idx, val in words:  # whole u32s: ids, counts, offsets, info words
        struct.pack_into("<I", blob, 24 + 4 * idx, val)
    if data.draw(st.booleans(), label="truncate"):
        blob = blob[:cut]
    start = time.perf_counter()
    _exercise(bytes(blob))
    assert time.perf_counter() - start < 2


@_HYP
@given(data=st.data())
def test_mutated_ext_only_raises_btf_error(core_obj: Obj, data: st.DataObject) -> None:
    spec = Spec.parse(core_obj.btf)
    blob = bytearray(core_obj.ext)
    for pos, val in data.draw(
        st.lists(st.tuples(st.integers(0, len(blob) - 1), st.integers(0, 255)), max_size=6)
    ):
        blob[pos] = val
    blob = blob[: data.draw(st.integers(0, len(blob)))]
    with contextlib.suppress(BTFError):
        parse_ext(bytes(blob), spec)


# ---------------------------------------------------------------------------- kernel


def _fixup_datasecs(spec: Spec, path: Path) -> None:
    """What the ELF loader does: section sizes and symbol offsets into the datasecs."""
    with path.open("rb") as fh:
        elf = ELFFile(fh)
        symtab = elf.get_section_by_name(".symtab")
        for t in spec.types:
            if not isinstance(t, Datasec):
                continue
            sec = elf.get_section_by_name(t.name)
            t.size = sec["sh_size"]
            index = next(i for i, s in enumerate(elf.iter_sections()) if s.name == t.name)
            offsets = {
                sym.name: sym["st_value"]
                for sym in symtab.iter_symbols()
                if sym["st_shndx"] == index
            }
            for vsi in t.vars:
                vsi.offset = offsets[vsi.type.name]


@pytest.mark.kernel
def test_kernel_accepts_marshalled_btf(any_obj: Obj) -> None:
    from orchestrator.ebpf import _sys as bpfsys

    spec = Spec.parse(any_obj.btf).copy()
    _fixup_datasecs(spec, any_obj.path)
    blob, _ = spec.marshal()
    fd, err, log = bpfsys.btf_load(blob, log_size=1 << 16, log_level=1)
    assert fd is not None, f"errno {err}: {log}"
    try:
        _, kernel_copy, _ = bpfsys.btf_info(fd)
        assert signatures(Spec.parse(kernel_copy)) == signatures(spec)
    finally:
        fd.close()
    # unfixed datasecs (size 0) are what the kernel refuses: the test can fail
    fd, err, _ = bpfsys.btf_load(Spec.parse(any_obj.btf).marshal()[0])
    if any(isinstance(t, Datasec) and t.vars for t in spec.types):
        assert fd is None and err != 0
    elif fd is not None:
        fd.close()


def test_module_exports() -> None:
    for name in btf.__all__:
        assert hasattr(btf, name)
