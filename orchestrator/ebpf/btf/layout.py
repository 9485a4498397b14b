"""Value layout: Python values <-> the bytes a BTF type describes.

Used for map keys/values and for constants (``.rodata`` variables). Integers are laid out in
the host's byte order, which is the kernel's. Bitfields follow the little-endian layout
(bit 0 of a struct is the lowest bit of its first byte), as on x86 and arm64.

``encode`` accepts:

- ints (range checked by size/bits and signedness), ``bool`` for _Bool, a 1-character
  ``str``/``bytes`` for char;
- enums: an int or an enumerator name;
- floats; pointers as ints;
- arrays: a list/tuple (missing trailing elements are zero), ``bytes`` of exactly the size,
  or for arrays of 1-byte ints (char[], __u8[]) ``bytes``/``str`` up to the length,
  zero-padded;
- structs/unions: a dict of member name -> value (missing members are zero; members of
  anonymous structs/unions are addressed directly, as in C), ``bytes`` of exactly the size,
  a ctypes Structure/Union of exactly the size, or a dataclass instance;
- datasecs: a dict of variable name -> value; typedefs, qualifiers and vars are unwrapped.

``decode`` gives int (bool for _Bool), float, ``bytes`` for arrays of 1-byte ints, a list for
other arrays and a dict for structs/unions/datasecs (anonymous members flattened).
"""

from __future__ import annotations

import ctypes
import dataclasses
import struct
import sys
from collections.abc import Mapping

from orchestrator.ebpf.btf import (
    Array,
    Const,
    Datasec,
    Enum,
    Float,
    Int,
    Member,
    Pointer,
    Restrict,
    Struct,
    Type,
    TypeTag,
    Union,
    Var,
    Volatile,
    describe,
    sizeof,
    skip_qualifiers,
)
from orchestrator.ebpf.errors import BTFError, ConstantError, SpecError, clip, quote

__all__ = ["check_constant", "decode", "encode"]

_ORDER = sys.byteorder
_FLOATS = {2: "e", 4: "f", 8: "d"}
_MAX_DEPTH = 64  # nesting of structs/arrays by value; deeper means a loop in corrupt BTF
_BYTES_LIKE = (bytes, bytearray, memoryview)
_MAX_SIZE = 1 << 30  # no map value or data section is this big; corrupt BTF may say so


def encode(t: Type, value: object) -> bytes:
    """Encode ``value`` as type ``t``; SpecError names the type and the problem."""
    buf = bytearray(_sizeof(t))
    _put(t, value, buf, 0, "", 0)
    return bytes(buf)


def decode(t: Type, data: bytes) -> object:
    """Decode ``data`` (exactly ``sizeof(t)`` bytes) as type ``t``."""
    size = _sizeof(t)
    if len(data) != size:
        raise SpecError(f"{_name(t)}: expected {size} bytes, got {len(data)}")
    return _get(t, memoryview(bytes(data)), 0, "", 0)


def check_constant(name: str, t: Type, value: object) -> bytes:
    """:func:`encode` for a constant: errors are ConstantError naming the constant."""
    try:
        return encode(t, value)
    except SpecError as err:
        raise ConstantError(name, str(err)) from err


# --------------------------------------------------------------------------------------


def _name(t: Type) -> str:
    """The type's name for messages: qualifiers dropped (also of array elements), typedef
    names kept: ``const volatile char[8]`` is ``char[8]``."""
    t = _strip(t)
    dims = ""
    for _ in range(_MAX_DEPTH):
        if not isinstance(t, Array):
            break
        dims += f"[{t.nelems}]"
        t = _strip(t.type)
    return describe(t) + dims


def _strip(t: Type) -> Type:
    for _ in range(_MAX_DEPTH):
        if not isinstance(t, Const | Volatile | Restrict | TypeTag | Var):
            break
        t = t.type
    return t


def _sizeof(t: Type) -> int:
    try:
        size = sizeof(t)
    except BTFError as err:
        raise SpecError(f"{_name(t)} has no size (cannot hold a value)") from err
    if size > _MAX_SIZE:
        raise SpecError(f"{_name(t)}: {size} bytes is too large")
    return size


def _unwrap(t: Type, where: str) -> Type:
    try:
        u = skip_qualifiers(t)
        while isinstance(u, Var):
            u = skip_qualifiers(u.type)
    except BTFError as err:
        raise SpecError(f"{where}{err}") from err
    return u


def _elem(where: str, i: int) -> str:
    """``member inner: `` -> ``member inner[0]: ``."""
    return f"{where[:-2]}[{i}]: " if where.endswith(": ") else f"[{i}]: "


def _got(value: object) -> str:
    return type(value).__name__


def _is_byte(t: Type) -> bool:
    u = skip_qualifiers(t)
    return isinstance(u, Int) and u.size == 1 and not u.bool


def _width(nbits: int) -> str:
    if nbits % 8:
        return f"{nbits} bit" + ("s" if nbits != 1 else "")
    n = nbits // 8
    return f"{n} byte" + ("s" if n != 1 else "")


def _check_range(t: Type, v: int, nbits: int, signed: bool, where: str) -> int:
    lo, hi = (-(1 << (nbits - 1)), 1 << (nbits - 1)) if signed else (0, 1 << nbits)
    if not lo <= v < hi:
        sign = "signed" if signed else "unsigned"
        raise SpecError(f"{where}{quote(v)} does not fit {_name(t)} ({_width(nbits)}, {sign})")
    return v


def _int_value(t: Type, u: Int, value: object, nbits: int, where: str) -> int:
    if u.bool:
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int) and value in (0, 1):
            return value
        raise SpecError(f"{where}expected a bool for {_name(t)}, got {quote(value)}")
    if isinstance(value, str | bytes) and u.size == 1:
        raw = value.encode() if isinstance(value, str) else value
        if len(raw) != 1:
            raise SpecError(f"{where}expected one character for {_name(t)}, got {quote(value)}")
        v = raw[0]
        if u.signed and v >= 0x80:
            v -= 0x100
        return v
    if not isinstance(value, int):
        raise SpecError(f"{where}expected an int for {_name(t)}, got {_got(value)}")
    return _check_range(t, int(value), nbits, u.signed, where)


def _enum_value(t: Type, u: Enum, value: object, nbits: int, where: str) -> int:
    if isinstance(value, str):
        for ev in u.values:
            if ev.name == value:
                v = ev.value
                break
        else:
            raise SpecError(f"{where}{_name(t)} has no enumerator {clip(value)}")
    elif isinstance(value, int):
        v = int(value)
    else:
        raise SpecError(
            f"{where}expected an int or enumerator name for {_name(t)}, got {_got(value)}"
        )
    # Objects from older compilers do not record an enum's signedness (kind_flag), so
    # accept both readings of the bits.
    if not -(1 << (nbits - 1)) <= v < (1 << nbits):
        raise SpecError(f"{where}{quote(v)} does not fit {_name(t)} ({_width(nbits)})")
    return v


def _put(t: Type, value: object, buf: bytearray, off: int, where: str, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise SpecError(f"{where}{_name(t)}: nested too deeply (a loop?)")
    u = _unwrap(t, where)
    if isinstance(u, Int):
        if u.offset or u.bits != u.size * 8:
            _put_bits(t, u, value, buf, off * 8 + u.offset, u.bits, where)
            return
        v = _int_value(t, u, value, u.bits, where)
        buf[off : off + u.size] = v.to_bytes(u.size, _ORDER, signed=v < 0)
    elif isinstance(u, Enum):
        v = _enum_value(t, u, value, u.size * 8, where)
        buf[off : off + u.size] = v.to_bytes(u.size, _ORDER, signed=v < 0)
    elif isinstance(u, Float):
        fmt = _FLOATS.get(u.size)
        if fmt is None:
            raise SpecError(f"{where}{_name(t)}: {u.size}-byte floats are not supported")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SpecError(f"{where}expected a float for {_name(t)}, got {_got(value)}")
        try:
            buf[off : off + u.size] = struct.pack("=" + fmt, value)
        except (OverflowError, struct.error) as err:
            raise SpecError(f"{where}{quote(value)} does not fit {_name(t)}") from err
    elif isinstance(u, Pointer):
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{where}expected an int for {_name(t)}, got {_got(value)}")
        v = _check_range(t, value, 64, False, where)
        buf[off : off + 8] = v.to_bytes(8, _ORDER)
    elif isinstance(u, Array):
        _put_array(t, u, value, buf, off, where, depth)
    elif isinstance(u, Struct | Union):
        _put_composite(t, u, value, buf, off, where, depth)
    elif isinstance(u, Datasec):
        _put_datasec(t, u, value, buf, off, where, depth)
    else:
        raise SpecError(f"{where}{_name(t)} cannot hold a value")


def _put_array(
    t: Type, u: Array, value: object, buf: bytearray, off: int, where: str, depth: int
) -> None:
    esize = _sizeof(u.type)
    total = esize * u.nelems
    if _is_byte(u.type) and isinstance(value, str | bytes | bytearray | memoryview):
        raw = value.encode() if isinstance(value, str) else bytes(value)
        if len(raw) > u.nelems:
            raise SpecError(f"{where}{len(raw)} bytes do not fit {_name(t)}")
        buf[off : off + len(raw)] = raw
        return
    if isinstance(value, _BYTES_LIKE):
        if len(value) != total:
            raise SpecError(f"{where}expected {total} bytes for {_name(t)}, got {len(value)}")
        buf[off : off + total] = value
        return
    if isinstance(value, list | tuple):
        if len(value) > u.nelems:
            raise SpecError(f"{where}{len(value)} elements do not fit {_name(t)}")
        for i, item in enumerate(value):
            _put(u.type, item, buf, off + i * esize, _elem(where, i), depth + 1)
        return
    kinds = "bytes, str or a list" if _is_byte(u.type) else "a list, tuple or bytes"
    raise SpecError(f"{where}expected {kinds} for {_name(t)}, got {_got(value)}")


def _members_of(t: Type, u: Struct | Union, value: object, where: str) -> Mapping[str, object]:
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise SpecError(f"{where}member names of {_name(t)} must be str")
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    raise SpecError(f"{where}expected a dict, bytes or struct for {_name(t)}, got {_got(value)}")


def _put_composite(
    t: Type, u: Struct | Union, value: object, buf: bytearray, off: int, where: str, depth: int
) -> None:
    if isinstance(value, ctypes.Structure | ctypes.Union):
        value = bytes(value)  # ctypes objects support the buffer protocol
    if isinstance(value, _BYTES_LIKE):
        if len(value) != u.size:
            raise SpecError(f"{where}expected {u.size} bytes for {_name(t)}, got {len(value)}")
        buf[off : off + u.size] = value
        return
    members = _members_of(t, u, value, where)
    used: set[str] = set()
    _put_members(u, members, used, buf, off, where, depth)
    for key in members:
        if key not in used:
            raise SpecError(f"{where}{_name(t)} has no member {clip(str(key))}")


def _put_members(
    u: Struct | Union,
    members: Mapping[str, object],
    used: set[str],
    buf: bytearray,
    off: int,
    where: str,
    depth: int,
) -> None:
    if depth > _MAX_DEPTH:
        raise SpecError(f"{where}{_name(u)}: nested too deeply (a loop?)")
    for m in u.members:
        mu = _unwrap(m.type, where)
        if not m.name:
            if isinstance(mu, Struct | Union) and not m.offset_bits % 8:
                _put_members(mu, members, used, buf, off + m.offset_bits // 8, where, depth + 1)
            continue
        if m.name not in members:
            continue
        used.add(m.name)
        value = members[m.name]
        mwhere = f"{where}member {m.name}: "
        bits = _bitfield(m, mu)
        if bits is not None:
            _put_bits(m.type, mu, value, buf, off * 8 + bits[0], bits[1], mwhere)
        else:
            if m.offset_bits % 8:
                raise SpecError(f"{mwhere}offset {m.offset_bits} bits is not byte aligned")
            _put(m.type, value, buf, off + m.offset_bits // 8, mwhere, depth + 1)


def _bitfield(m: Member, mu: Type) -> tuple[int, int] | None:
    """(bit offset in the struct, width) for a bitfield member, else None."""
    if m.bitfield_size:
        return m.offset_bits, m.bitfield_size
    if isinstance(mu, Int) and (mu.offset or mu.bits != mu.size * 8):
        return m.offset_bits + mu.offset, mu.bits  # kind_flag 0 encoding
    return None


def _put_bits(
    t: Type, u: Type, value: object, buf: bytearray, bit_off: int, nbits: int, where: str
) -> None:
    if isinstance(u, Int):
        v = _int_value(t, u, value, nbits, where)
    elif isinstance(u, Enum):
        v = _enum_value(t, u, value, nbits, where)
    else:
        raise SpecError(f"{where}bitfield of {_name(t)} is not supported")
    start, end = bit_off // 8, (bit_off + nbits + 7) // 8
    if end > len(buf) or nbits <= 0:
        raise SpecError(f"{where}bitfield {bit_off}+{nbits} lies outside {len(buf)} bytes")
    shift = bit_off - start * 8
    mask = ((1 << nbits) - 1) << shift
    cur = int.from_bytes(buf[start:end], "little")
    cur = (cur & ~mask) | ((v << shift) & mask)
    buf[start:end] = cur.to_bytes(end - start, "little")


def _put_datasec(
    t: Type, u: Datasec, value: object, buf: bytearray, off: int, where: str, depth: int
) -> None:
    if not isinstance(value, Mapping):
        raise SpecError(f"{where}expected a dict for {_name(t)}, got {_got(value)}")
    by_name = {v.type.name: v for v in u.vars}
    for key, item in value.items():
        vsi = by_name.get(key) if isinstance(key, str) else None
        if vsi is None:
            raise SpecError(f"{where}{_name(t)} has no variable {clip(str(key))}")
        vwhere = f"{where}var {key}: "
        if vsi.offset + _sizeof(vsi.type) > len(buf) - off:
            raise SpecError(f"{vwhere}lies outside {_name(t)}")
        _put(vsi.type, item, buf, off + vsi.offset, vwhere, depth + 1)


# --------------------------------------------------------------------------------------


def _get(t: Type, data: memoryview, off: int, where: str, depth: int) -> object:
    if depth > _MAX_DEPTH:
        raise SpecError(f"{where}{_name(t)}: nested too deeply (a loop?)")
    u = _unwrap(t, where)
    if isinstance(u, Int):
        if u.offset or u.bits != u.size * 8:
            return _get_bits(u, data, off * 8 + u.offset, u.bits, u.signed)
        v = int.from_bytes(data[off : off + u.size], _ORDER, signed=u.signed)
        return bool(v) if u.bool else v
    if isinstance(u, Enum):
        return int.from_bytes(data[off : off + u.size], _ORDER, signed=u.signed)
    if isinstance(u, Float):
        fmt = _FLOATS.get(u.size)
        if fmt is None:
            raise SpecError(f"{where}{_name(t)}: {u.size}-byte floats are not supported")
        (f,) = struct.unpack_from("=" + fmt, data, off)
        return float(f)
    if isinstance(u, Pointer):
        return int.from_bytes(data[off : off + 8], _ORDER)
    if isinstance(u, Array):
        esize = _sizeof(u.type)
        if _is_byte(u.type):
            return bytes(data[off : off + u.nelems])
        return [
            _get(u.type, data, off + i * esize, _elem(where, i), depth + 1) for i in range(u.nelems)
        ]
    if isinstance(u, Struct | Union):
        out: dict[str, object] = {}
        _get_members(u, data, off, out, where, depth)
        return out
    if isinstance(u, Datasec):
        vars_: dict[str, object] = {}
        for vsi in u.vars:
            if vsi.offset + _sizeof(vsi.type) > len(data) - off:
                raise SpecError(f"{where}var {vsi.type.name}: lies outside {_name(t)}")
            vars_[vsi.type.name] = _get(
                vsi.type, data, off + vsi.offset, f"{where}var {vsi.type.name}: ", depth + 1
            )
        return vars_
    raise SpecError(f"{where}{_name(t)} cannot hold a value")


def _get_members(
    u: Struct | Union,
    data: memoryview,
    off: int,
    out: dict[str, object],
    where: str,
    depth: int,
) -> None:
    if depth > _MAX_DEPTH:
        raise SpecError(f"{where}{_name(u)}: nested too deeply (a loop?)")
    for m in u.members:
        mu = _unwrap(m.type, where)
        if not m.name:
            if isinstance(mu, Struct | Union) and not m.offset_bits % 8:
                _get_members(mu, data, off + m.offset_bits // 8, out, where, depth + 1)
            continue
        mwhere = f"{where}member {m.name}: "
        bits = _bitfield(m, mu)
        if bits is not None:
            signed = isinstance(mu, Int | Enum) and mu.signed
            v = _get_bits(mu, data, off * 8 + bits[0], bits[1], signed)
            out[m.name] = bool(v) if isinstance(mu, Int) and mu.bool else v
            continue
        if m.offset_bits % 8:
            raise SpecError(f"{mwhere}offset {m.offset_bits} bits is not byte aligned")
        moff = off + m.offset_bits // 8
        if moff + _sizeof(m.type) > len(data):
            raise SpecError(f"{mwhere}lies outside {_name(u)}")
        out[m.name] = _get(m.type, data, moff, mwhere, depth + 1)


def _get_bits(u: Type, data: memoryview, bit_off: int, nbits: int, signed: bool) -> int:
    start, end = bit_off // 8, (bit_off + nbits + 7) // 8
    if end > len(data) or nbits <= 0:
        raise SpecError(f"bitfield {bit_off}+{nbits} of {_name(u)} lies outside the value")
    raw = int.from_bytes(data[start:end], "little") >> (bit_off - start * 8)
    raw &= (1 << nbits) - 1
    if signed and raw >> (nbits - 1):
        raw -= 1 << nbits
    return raw
