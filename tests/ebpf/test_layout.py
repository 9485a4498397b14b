"""Value layout from BTF types, checked against the bytes clang lays out for initialized
globals (so bitfields, padding, nesting and unions follow the compiler, not our reading)."""

from __future__ import annotations

import ctypes
import dataclasses
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.ebpf.btf import (
    Array,
    Datasec,
    Enum,
    EnumValue,
    Fwd,
    Int,
    Member,
    Pointer,
    Spec,
    Struct,
    Type,
    Union,
    Var,
    Void,
)
from orchestrator.ebpf.btf.layout import check_constant, decode, encode
from orchestrator.ebpf.errors import ConstantError, SpecError

LAYOUT_C = r"""
#include <linux/types.h>
#include <bpf/bpf_helpers.h>

typedef unsigned short u16;
enum color { RED, GREEN = 5, BLUE = 300 };
struct bits { unsigned int a : 3; int b : 5; unsigned long long c : 40; _Bool flag : 1;
              enum color e : 9; };
struct inner { __u8 tag; __u64 value; };
struct config {
	char name[8];
	int matrix[2][3];
	struct bits bits;
	union { int i; float f; };
	struct inner inner[2];
	double ratio;
	enum color color;
	_Bool on;
	signed char sc;
	__s16 neg;
	void *ptr;
	__u8 raw[4];
};
#define INIT { .name = "abc", .matrix = {{1, 2, 3}, {-4, 5, -6}}, \
	.bits = {.a = 5, .b = -3, .c = 0x12345678abULL, .flag = 1, .e = BLUE}, .f = 1.5f, \
	.inner = {{.tag = 1, .value = 0x1122334455667788ULL}, {.tag = 2, .value = 3}}, \
	.ratio = -2.25, .color = GREEN, .on = 1, .sc = -7, .neg = -300, .ptr = 0, \
	.raw = {1, 2, 3, 4} }

struct config cfg_data = INIT;
int counter = -1;
const volatile struct config cfg = INIT;
const volatile u16 magic = 0x1234;
const volatile char greeting[8] = "hello";

SEC("xdp") int prog(void *ctx)
{
	return cfg_data.matrix[1][1] + magic + greeting[0] + cfg.on + counter;
}
char LICENSE[] SEC("license") = "GPL";
"""

CONFIG = {
    "name": b"abc\0\0\0\0\0",
    "matrix": [[1, 2, 3], [-4, 5, -6]],
    "bits": {"a": 5, "b": -3, "c": 0x12345678AB, "flag": True, "e": 300},
    "i": struct.unpack("<i", struct.pack("<f", 1.5))[0],  # anonymous union: flattened
    "f": 1.5,
    "inner": [{"tag": 1, "value": 0x1122334455667788}, {"tag": 2, "value": 3}],
    "ratio": -2.25,
    "color": 5,
    "on": True,
    "sc": -7,
    "neg": -300,
    "ptr": 0,
    "raw": b"\x01\x02\x03\x04",
}


@dataclasses.dataclass
class Obj:
    spec: Spec
    sections: dict[str, bytes]
    symbols: dict[str, tuple[str, int, int]]  # name -> (section, offset, size)

    def var(self, name: str) -> tuple[Var, bytes]:
        var = self.spec.type_by_name(name, Var)
        sec, off, size = self.symbols[name]
        return var, self.sections[sec][off : off + size]


@pytest.fixture(scope="session")
def obj(compile_bpf: Callable[..., Path]) -> Obj:
    path = compile_bpf(LAYOUT_C)
    with path.open("rb") as fh:
        elf = ELFFile(fh)
        names = [s.name for s in elf.iter_sections()]
        sections = {
            n: elf.get_section_by_name(n).data() for n in (".data", ".rodata") if n in names
        }
        symbols = {
            sym.name: (names[sym["st_shndx"]], sym["st_value"], sym["st_size"])
            for sym in elf.get_section_by_name(".symtab").iter_symbols()
            if sym["st_info"]["type"] == "STT_OBJECT"
        }
        spec = Spec.parse(elf.get_section_by_name(".BTF").data())
    return Obj(spec, sections, symbols)


# ---------------------------------------------------------------------------- vs the compiler


@pytest.mark.parametrize("name", ["cfg_data", "cfg"])
def test_decode_matches_compiler(obj: Obj, name: str) -> None:
    var, raw = obj.var(name)
    assert len(raw) == 112
    assert decode(var.type, raw) == CONFIG
    assert decode(var, raw) == CONFIG  # a Var decodes as its type


@pytest.mark.parametrize("name", ["cfg_data", "cfg"])
def test_encode_matches_compiler(obj: Obj, name: str) -> None:
    var, raw = obj.var(name)
    assert encode(var.type, CONFIG) == raw
    # "abc" for char[8] is zero-padded; i is implied by f (same union)
    short = {k: v for k, v in CONFIG.items() if k != "i"} | {"name": "abc"}
    assert encode(var.type, short) == raw
    assert check_constant(name, var.type, short) == raw


def test_scalars_match_compiler(obj: Obj) -> None:
    magic, raw = obj.var("magic")
    assert decode(magic.type, raw) == 0x1234 and encode(magic.type, 0x1234) == raw
    greeting, raw = obj.var("greeting")
    assert decode(greeting.type, raw) == b"hello\0\0\0"
    assert encode(greeting.type, "hello") == raw == encode(greeting.type, b"hello")
    counter, raw = obj.var("counter")
    assert decode(counter.type, raw) == -1 and encode(counter.type, -1) == raw


def test_datasec(obj: Obj) -> None:
    spec = obj.spec.copy()
    data = spec.type_by_name(".data", Datasec)
    data.size = len(obj.sections[".data"])
    for vsi in data.vars:  # the ELF loader's fix-up
        vsi.offset = obj.symbols[vsi.type.name][1]
    assert decode(data, obj.sections[".data"]) == {"cfg_data": CONFIG, "counter": -1}
    assert encode(data, {"cfg_data": CONFIG, "counter": -1}) == obj.sections[".data"]
    with pytest.raises(SpecError, match="has no variable nope"):
        encode(data, {"nope": 1})


# ---------------------------------------------------------------------------- messages


def test_constant_messages(obj: Obj) -> None:
    magic = obj.spec.type_by_name("magic", Var).type
    greeting = obj.spec.type_by_name("greeting", Var).type
    cfg = obj.spec.type_by_name("cfg", Var).type
    cases: list[tuple[str, Type, object, str]] = [
        ("magic", magic, 70000, "constant magic: 70000 does not fit u16 (2 bytes, unsigned)"),
        ("magic", magic, -1, "constant magic: -1 does not fit u16 (2 bytes, unsigned)"),
        ("greeting", greeting, "123456789", "constant greeting: 9 bytes do not fit char[8]"),
        (
            "cfg",
            cfg,
            3,
            "constant cfg: expected a dict, bytes or struct for struct config, got int",
        ),
        ("magic", magic, "x", "constant magic: expected an int for u16, got str"),
        ("cfg", cfg, {"nope": 1}, "constant cfg: struct config has no member nope"),
        (
            "cfg",
            cfg,
            {"color": "PURPLE"},
            "constant cfg: member color: enum color has no enumerator PURPLE",
        ),
        (
            "cfg",
            cfg,
            {"bits": {"a": 8}},
            "constant cfg: member bits: member a: 8 does not fit unsigned int (3 bits, unsigned)",
        ),
        (
            "cfg",
            cfg,
            {"bits": {"b": 16}},
            "constant cfg: member bits: member b: 16 does not fit int (5 bits, signed)",
        ),
        (
            "cfg",
            cfg,
            {"matrix": [[1], [2], [3]]},
            "constant cfg: member matrix: 3 elements do not fit int[2][3]",
        ),
        (
            "cfg",
            cfg,
            {"inner": [{"tag": 256}]},
            "constant cfg: member inner[0]: member tag: 256 does not fit __u8 (1 byte, unsigned)",
        ),
        ("cfg", cfg, b"\0" * 3, "constant cfg: expected 112 bytes for struct config, got 3"),
        ("cfg", cfg, {"on": 2}, "constant cfg: member on: expected a bool for _Bool, got 2"),
    ]
    for name, t, value, message in cases:
        with pytest.raises(ConstantError) as exc:
            check_constant(name, t, value)
        assert str(exc.value) == message
    # greeting takes exactly 8 bytes (no room is left for a nul)
    assert check_constant("greeting", greeting, "12345678") == b"12345678"


def test_encode_errors_are_spec_errors(obj: Obj) -> None:
    magic = obj.spec.type_by_name("magic", Var).type
    with pytest.raises(SpecError) as exc:
        encode(magic, 1 << 16)
    assert not isinstance(exc.value, ConstantError)
    with pytest.raises(SpecError, match="expected 2 bytes"):
        decode(magic, b"\0")
    for no_value in (Void(), Fwd("f"), obj.spec.type_by_name("prog")):
        with pytest.raises(SpecError):
            encode(no_value, 0)
        with pytest.raises(SpecError):
            decode(no_value, b"")


# ---------------------------------------------------------------------------- accepted forms


def test_struct_forms(obj: Obj) -> None:
    inner = obj.spec.type_by_name("inner", Struct)
    want = encode(inner, {"tag": 7, "value": 9})
    assert want == bytes([7]) + bytes(7) + (9).to_bytes(8, "little")
    assert encode(inner, {"value": 9, "tag": 7}) == want
    assert encode(inner, {}) == bytes(16)  # missing members are zero
    assert encode(inner, want) == want

    class CInner(ctypes.Structure):
        _fields_ = [("tag", ctypes.c_uint8), ("value", ctypes.c_uint64)]

    assert encode(inner, CInner(7, 9)) == want

    class Small(ctypes.Structure):
        _fields_ = [("tag", ctypes.c_uint8)]

    with pytest.raises(SpecError, match="expected 16 bytes"):
        encode(inner, Small(1))

    @dataclasses.dataclass
    class DInner:
        tag: int
        value: int

    @dataclasses.dataclass
    class Other:
        tag: int
        extra: int

    assert encode(inner, DInner(7, 9)) == want
    with pytest.raises(SpecError, match="has no member extra"):
        encode(inner, Other(1, 2))
    with pytest.raises(SpecError, match="expected an int"):
        encode(inner, {"tag": 1.5})


def test_ints_enums_floats_pointers() -> None:
    s8 = Int("signed char", 1, signed=True)
    u64 = Int("unsigned long", 8)
    char = Int("char", 1, signed=True, char=True)
    b = Int("_Bool", 1, bool=True)
    assert encode(s8, -128) == b"\x80" and decode(s8, b"\x80") == -128
    with pytest.raises(SpecError, match="128 does not fit signed char"):
        encode(s8, 128)
    assert encode(u64, (1 << 64) - 1) == b"\xff" * 8
    with pytest.raises(SpecError):
        encode(u64, 1 << 64)
    assert encode(char, "A") == b"A" and encode(char, b"\xff") == b"\xff"
    with pytest.raises(SpecError, match="one character"):
        encode(char, "AB")
    assert encode(b, True) == b"\x01" and decode(b, b"\x01") is True
    with pytest.raises(SpecError, match="expected a bool"):
        encode(b, 2)

    e = Enum("e", 4, False, [EnumValue("A", 1), EnumValue("B", 0xFFFFFFFF)])
    assert encode(e, "B") == b"\xff" * 4 and encode(e, 1) == encode(e, "A")
    assert decode(e, b"\xff" * 4) == 0xFFFFFFFF
    se = Enum("se", 4, True, [EnumValue("NEG", -2)])
    assert decode(se, encode(se, "NEG")) == -2
    with pytest.raises(SpecError, match="enumerator name"):
        encode(e, 1.0)
    with pytest.raises(SpecError, match="does not fit"):
        encode(e, 1 << 32)

    from orchestrator.ebpf.btf import Float

    f32, f64 = Float("float", 4), Float("double", 8)
    assert decode(f32, encode(f32, 0.5)) == 0.5 and decode(f64, encode(f64, 3)) == 3.0
    with pytest.raises(SpecError, match="does not fit float"):
        encode(f32, 1e300)
    with pytest.raises(SpecError, match="expected a float"):
        encode(f64, "1.0")
    with pytest.raises(SpecError, match="not supported"):
        encode(Float("long double", 16), 1.0)

    ptr = Pointer(Void())
    assert encode(ptr, 0xDEAD) == (0xDEAD).to_bytes(8, "little") and decode(ptr, bytes(8)) == 0
    with pytest.raises(SpecError):
        encode(ptr, -1)


def test_arrays() -> None:
    i32 = Int("int", 4, signed=True)
    u8 = Int("unsigned char", 1)
    arr = Array(i32, i32, 4)
    assert decode(arr, encode(arr, [1, -2])) == [1, -2, 0, 0]  # missing elements are zero
    assert encode(arr, (1, 2, 3, 4)) == encode(arr, bytes(encode(arr, [1, 2, 3, 4])))
    with pytest.raises(SpecError, match="5 elements do not fit int\\[4\\]"):
        encode(arr, [0] * 5)
    with pytest.raises(SpecError, match="expected 16 bytes"):
        encode(arr, b"\0")
    with pytest.raises(SpecError, match="expected a list"):
        encode(arr, 3)
    raw = Array(u8, i32, 3)
    assert encode(raw, b"\x01\x02") == b"\x01\x02\x00" and decode(raw, b"abc") == b"abc"
    assert encode(raw, [1, 2, 3]) == b"\x01\x02\x03"
    with pytest.raises(SpecError, match="4 bytes do not fit unsigned char\\[3\\]"):
        encode(raw, b"abcd")


def test_unions_and_old_style_bitfields() -> None:
    i32 = Int("int", 4, signed=True)
    u = Union("u", 4, [Member("i", i32, 0), Member("b", Array(Int("char", 1), i32, 4), 0)])
    assert encode(u, {"i": 1}) == b"\x01\0\0\0"
    assert decode(u, b"\x01\0\0\0") == {"i": 1, "b": b"\x01\0\0\0"}
    # kind_flag 0: the bitfield is described by the int type (bits, offset)
    bf = Int("int", 4, signed=True, bits=4, offset=2)
    s = Struct("s", 4, [Member("x", bf, 8)])
    assert encode(s, {"x": -1}) == (0b1111 << 10).to_bytes(4, "little")
    assert decode(s, (0b0110 << 10).to_bytes(4, "little")) == {"x": 6}
    with pytest.raises(SpecError, match="4 bits, signed"):
        encode(s, {"x": 8})


# ---------------------------------------------------------------------------- properties

_BITS = st.fixed_dictionaries(
    {
        "a": st.integers(0, 7),
        "b": st.integers(-16, 15),
        "c": st.integers(0, (1 << 40) - 1),
        "flag": st.booleans(),
        "e": st.integers(0, 511),
    }
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=_BITS, raw=st.binary(min_size=8, max_size=8))
def test_bitfields_round_trip(obj: Obj, value: dict[str, object], raw: bytes) -> None:
    bits = obj.spec.type_by_name("bits", Struct)
    assert decode(bits, encode(bits, value)) == value
    # every bit of the 8 bytes belongs to a field or to padding; fields survive a re-encode
    fields = decode(bits, raw)
    assert isinstance(fields, dict)
    again = encode(bits, fields)
    mask = (1 << 58) - 1  # 3+5+40+1+9 bits in use, from bit 0
    assert int.from_bytes(again, "little") == int.from_bytes(raw, "little") & mask
