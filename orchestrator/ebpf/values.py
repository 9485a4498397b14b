"""Map keys and values as YAML/JSON literals, typed through BTF, in both directions.

This is how a person writes a key or a value (a manifest's map entries, ``bpforch map``), as
opposed to :mod:`orchestrator.ebpf.btf.layout`, which marshals Python objects for the library.
:func:`decode` gives back exactly what :func:`encode` takes, so what ``bpforch map dump``
prints can be pasted into a manifest.

- **Integers**: a number, range-checked against the BTF integer (size or bitfield width,
  signedness). ``_Bool``: ``true``/``false``. Floats: a number.
- **Byte order** follows the BTF type: integers are in the host's order, except the kernel's
  ``__be16``/``__be32``/``__be64`` (network order). Where the type does not say so (a
  ``__u32`` key that holds ``udp->dest``), tag the number: ``!be16 9999`` is 9999 in network
  byte order, stored in the field as C stores a ``__be16`` assigned to it (zero-extended:
  in a ``__u32`` on x86, the bytes ``27 0f 00 00``). :class:`NetworkOrder` is the tagged
  value; a *format* (``be16``…, :data:`FORMATS`) applies the same rule to a whole key or
  value, both ways.
- **char arrays** (``char name[16]``): a string of at most that many UTF-8 bytes (NUL
  padded; ``\\0`` inside separates strings, as in ``execve`` arguments). Read back: the text
  without its trailing NULs, or a list of byte values when it is not text.
- **Other arrays**: a list (missing trailing elements are zero).
- **Structs**: a mapping by member name (bitfields too; members of anonymous structs and
  unions are named directly, as in C); a member left out is zero. **Unions**: a mapping of
  the members to write; where they overlap they must agree (bit by bit).
- **Enums**: the enumerator's name (or a number). Read back: the name when one matches.
- **Addresses**, the one rule: a *string* written into a 4-byte field that is not text (an
  integer, ``__u8[4]``, ``struct in_addr``) is an IPv4 address, into a 16-byte one an IPv6
  address, stored in network byte order (as packets carry them, whatever the field's type).
  Read back as addresses: ``struct in_addr``/``struct in6_addr``, and any field under the
  ``ipv4``/``ipv6`` format. **CIDRs**: an LPM trie key of 8 or 20 bytes (``u32 prefixlen``,
  then the address) is written and read as ``10.0.0.0/8`` or ``2001:db8::/32``.
- **Raw bytes**: ``!hex 270f0000`` (:class:`Hex`) fits any field of exactly that size; keys and
  values without BTF of 1, 2, 4 or 8 bytes are unsigned integers, others raw bytes.
- **Per-CPU maps**: one value (written to every CPU) or a list of one value per possible CPU
  (a list of lists when the value type is itself an array). Read back: the list.
- **Prog arrays and maps of maps**: the name of a program or map (:class:`References`
  resolves it to an fd); read back, the kernel's id is shown as the name when known.

Errors are :class:`~orchestrator.ebpf.errors.LiteralError`: the field inside the literal
(``key.addr``, ``value[1].port``) and why.
"""

from __future__ import annotations

import ipaddress
import math
import struct
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from orchestrator.ebpf import btf as _btf
from orchestrator.ebpf._sys import MapType
from orchestrator.ebpf.errors import BTFError, LiteralError, SpecError, quote
from orchestrator.ebpf.suggestions import hint

if TYPE_CHECKING:
    pass

__all__ = [
    "FORMATS",
    "Hex",
    "NetworkOrder",
    "References",
    "decode",
    "encode",
    "plain",
    "total",
]

FieldPath = tuple[str | int, ...]

_HOST = sys.byteorder
_BE_TYPEDEFS = {"__be16": 16, "__be32": 32, "__be64": 64}
_TEXT_CHARS = frozenset({"char"})
_MAX_DEPTH = 64  # nesting by value; deeper means a loop in corrupt BTF
_MAX_SIZE = 1 << 30
_FLOATS = {2: "e", 4: "f", 8: "d"}
_ALLOWED_CONTROL = frozenset("\0\t\n")

#: Formats that apply to a whole key or value (``--key-format``): network byte order of a
#: given width, an address, or raw bytes.
FORMATS = ("be16", "be32", "be64", "ipv4", "ipv6", "hex")

# Map types whose elements are not data that user space writes. (value, reason)
_FD_VALUES = {
    MapType.PERF_EVENT_ARRAY: "perf event fds (the reader that opens them writes them)",
    MapType.SOCKMAP: "socket fds (the process that owns the sockets writes them)",
    MapType.SOCKHASH: "socket fds (the process that owns the sockets writes them)",
    MapType.XSKMAP: "AF_XDP socket fds (the process that owns the sockets writes them)",
    MapType.REUSEPORT_SOCKARRAY: "socket fds (the process that owns the sockets writes them)",
    MapType.CGROUP_ARRAY: "cgroup fds",
}
_KEYLESS = frozenset(
    {MapType.QUEUE, MapType.STACK, MapType.BLOOM_FILTER, MapType.RINGBUF, MapType.USER_RINGBUF}
)


@dataclass(frozen=True, slots=True)
class NetworkOrder:
    """An integer in network byte order: ``!be16 9999``. ``bits`` is 16, 32 or 64."""

    bits: int
    value: int

    def __post_init__(self) -> None:
        if self.bits not in (16, 32, 64):
            raise ValueError(f"network order of {self.bits} bits (16, 32 or 64)")
        if isinstance(self.value, bool) or not isinstance(self.value, int):
            raise ValueError(f"!be{self.bits} takes an integer, got {quote(self.value)}")
        if not 0 <= self.value < 1 << self.bits:
            raise ValueError(f"{quote(self.value)} does not fit !be{self.bits} (unsigned)")

    @property
    def tag(self) -> str:
        return f"be{self.bits}"

    def host_value(self) -> int:
        """What a ``__beN`` variable holding this number reads as on this host."""
        return int.from_bytes(self.value.to_bytes(self.bits // 8, "big"), _HOST)

    def __str__(self) -> str:
        return f"!{self.tag} {self.value}"


@dataclass(frozen=True, slots=True)
class Hex:
    """Raw bytes: ``!hex 270f0000`` (spaces, ``:`` and ``-`` between bytes are ignored)."""

    data: bytes

    @classmethod
    def parse(cls, text: str) -> Hex:
        digits = "".join(c for c in text.removeprefix("0x") if c not in " :-_\t\n")
        try:
            return cls(bytes.fromhex(digits))
        except ValueError:
            raise ValueError(f"{quote(text)} is not hex bytes (like 270f0000)") from None

    def __str__(self) -> str:
        return f"!hex {self.data.hex()}"


@dataclass(frozen=True)
class References:
    """Resolves the names in prog arrays and maps of maps: ``programs``/``maps`` map a name
    to an fd (0 to only check that the name exists, as validation does); ``program_ids``
    and ``map_ids`` name the ids the kernel gives back on lookup."""

    programs: Mapping[str, int] = field(default_factory=dict)
    maps: Mapping[str, int] = field(default_factory=dict)
    program_ids: Mapping[int, str] = field(default_factory=dict)
    map_ids: Mapping[int, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------- helpers


class _Fail(Exception):
    """A problem at ``path``; turned into a LiteralError by the public entry points."""

    def __init__(self, path: FieldPath, reason: str) -> None:
        super().__init__(reason)
        self.path = path
        self.reason = reason


def _name(t: _btf.Type) -> str:
    """The type as messages show it: qualifiers dropped, typedef names kept."""
    dims = ""
    for _ in range(_MAX_DEPTH):
        t = _strip(t)
        if not isinstance(t, _btf.Array):
            break
        dims += f"[{t.nelems}]"
        t = t.type
    return _btf.describe(t) + dims


def _strip(t: _btf.Type) -> _btf.Type:
    for _ in range(_MAX_DEPTH):
        if not isinstance(t, _btf.Const | _btf.Volatile | _btf.Restrict | _btf.TypeTag | _btf.Var):
            break
        t = t.type
    return t


def _resolve(t: _btf.Type, path: FieldPath) -> tuple[_btf.Type, int]:
    """(the underlying type, the bits of network order its typedefs say: 0 for host)."""
    be = 0
    for _ in range(_MAX_DEPTH):
        if isinstance(t, _btf.Typedef):
            be = be or _BE_TYPEDEFS.get(t.name, 0)
            t = t.type
        elif isinstance(t, _btf.Const | _btf.Volatile | _btf.Restrict | _btf.TypeTag | _btf.Var):
            t = t.type
        else:
            return t, be
    raise _Fail(path, f"{_btf.describe(t)}: type chain too long (a loop?)")


def _sizeof(t: _btf.Type, path: FieldPath) -> int:
    try:
        size = _btf.sizeof(t)
    except BTFError as err:
        raise _Fail(path, f"{_name(t)} has no size (cannot hold a value)") from err
    if size > _MAX_SIZE:
        raise _Fail(path, f"{_name(t)}: {size} bytes is too large")
    return size


def _is_text(t: _btf.Type) -> bool:
    """Plain ``char`` (not ``__u8``, ``unsigned char`` or ``__s8``): its arrays are text."""
    u = _strip(t)
    return isinstance(u, _btf.Int) and u.size == 1 and (u.char or u.name in _TEXT_CHARS)


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, NetworkOrder):
        return f"!{value.tag}"
    if isinstance(value, Hex):
        return "!hex"
    return type(value).__name__


def _width(nbits: int) -> str:
    if nbits % 8:
        return f"{nbits} bit" + ("s" if nbits != 1 else "")
    n = nbits // 8
    return f"{n} byte" + ("s" if n != 1 else "")


def _address(value: str, size: int, path: FieldPath) -> bytes:
    family = "IPv4" if size == 4 else "IPv6"
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise _Fail(path, f"{quote(value)} is not an {family} address") from None
    if addr.max_prefixlen != size * 8:
        raise _Fail(path, f"{quote(value)} is not an {family} address (the field has {size} bytes)")
    return addr.packed


def _show_address(data: bytes) -> str:
    return str(ipaddress.ip_address(bytes(data)))


# ---------------------------------------------------------------------------- encoding


def _check_int(t: _btf.Type, v: int, nbits: int, signed: bool, path: FieldPath) -> int:
    lo, hi = (-(1 << (nbits - 1)), 1 << (nbits - 1)) if signed else (0, 1 << nbits)
    if not lo <= v < hi:
        sign = "signed" if signed else "unsigned"
        raise _Fail(path, f"{quote(v)} does not fit {_name(t)} ({_width(nbits)}, {sign})")
    return v


def _int_value(
    t: _btf.Type, u: _btf.Int, be: int, value: object, nbits: int, path: FieldPath
) -> int:
    """The number to store in an integer field of ``nbits`` (as the C code sees it)."""
    if u.bool:
        if isinstance(value, bool):
            return int(value)
        raise _Fail(path, f"expected true or false for {_name(t)}, got {_kind(value)}")
    if isinstance(value, NetworkOrder):
        if be:
            if value.bits != be:
                raise _Fail(
                    path,
                    f"{_name(t)} is already {be}-bit network order (write the number, or !be{be})",
                )
            return value.value
        if value.bits > nbits:
            raise _Fail(path, f"!{value.tag} does not fit {_name(t)} ({_width(nbits)})")
        v = value.host_value()
        if u.signed and v >= 1 << (nbits - 1):
            v -= 1 << nbits  # the bit pattern, as a signed field reads it
        return v
    if isinstance(value, str) and u.size == 1 and _is_text(u):
        raw = value.encode()
        if len(raw) != 1:
            raise _Fail(path, f"expected one character for {_name(t)}, got {quote(value)}")
        return raw[0] - 0x100 if u.signed and raw[0] >= 0x80 else raw[0]
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Fail(path, f"expected an integer for {_name(t)}, got {_kind(value)}")
    return _check_int(t, value, nbits, u.signed, path)


def _enum_value(t: _btf.Type, u: _btf.Enum, value: object, nbits: int, path: FieldPath) -> int:
    if isinstance(value, str):
        for ev in u.values:
            if ev.name == value:
                v = ev.value
                break
        else:
            names = [ev.name for ev in u.values]
            raise _Fail(path, f"{_name(t)} has no enumerator {quote(value)}{hint(value, names)}")
    elif isinstance(value, int) and not isinstance(value, bool):
        v = value
    else:
        raise _Fail(path, f"expected an enumerator of {_name(t)}, got {_kind(value)}")
    # objects from older compilers do not record an enum's signedness: accept both readings
    if not -(1 << (nbits - 1)) <= v < (1 << nbits):
        raise _Fail(path, f"{quote(v)} does not fit {_name(t)} ({_width(nbits)})")
    return v


def _store(buf: bytearray, off: int, size: int, v: int, order: Literal["little", "big"]) -> None:
    buf[off : off + size] = (v % (1 << (size * 8))).to_bytes(size, order)


def _put(
    t: _btf.Type, value: object, buf: bytearray, off: int, path: FieldPath, depth: int
) -> None:
    if depth > _MAX_DEPTH:
        raise _Fail(path, f"{_name(t)}: nested too deeply (a loop?)")
    if isinstance(value, Hex):
        size = _sizeof(t, path)
        if len(value.data) != size:
            raise _Fail(path, f"!hex has {len(value.data)} bytes, {_name(t)} has {size}")
        buf[off : off + size] = value.data
        return
    u, be = _resolve(t, path)
    if isinstance(u, _btf.Int):
        if u.offset or u.bits != u.size * 8:  # an old-style (kind_flag 0) bitfield
            _put_bits(t, u, value, buf, off * 8 + u.offset, u.bits, path)
            return
        if isinstance(value, str) and u.size in (4, 16):
            buf[off : off + u.size] = _address(value, u.size, path)
            return
        v = _int_value(t, u, be, value, u.size * 8, path)
        _store(buf, off, u.size, v, "big" if be else _HOST)
    elif isinstance(u, _btf.Enum):
        v = _enum_value(t, u, value, u.size * 8, path)
        _store(buf, off, u.size, v, _HOST)
    elif isinstance(u, _btf.Float):
        fmt = _FLOATS.get(u.size)
        if fmt is None:
            raise _Fail(path, f"{_name(t)}: {u.size}-byte floats are not supported")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Fail(path, f"expected a number for {_name(t)}, got {_kind(value)}")
        try:
            buf[off : off + u.size] = struct.pack("=" + fmt, value)
        except (OverflowError, struct.error):
            raise _Fail(path, f"{quote(value)} does not fit {_name(t)}") from None
    elif isinstance(u, _btf.Pointer):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Fail(path, f"expected an integer for {_name(t)}, got {_kind(value)}")
        _store(buf, off, 8, _check_int(t, value, 64, False, path), _HOST)
    elif isinstance(u, _btf.Array):
        _put_array(t, u, value, buf, off, path, depth)
    elif isinstance(u, _btf.Struct | _btf.Union):
        if isinstance(value, str) and u.size in (4, 16):
            buf[off : off + u.size] = _address(value, u.size, path)
            return
        if not isinstance(value, Mapping):
            raise _Fail(path, f"expected a mapping of members for {_name(t)}, got {_kind(value)}")
        _put_composite(t, u, value, buf, off, path, depth)
    elif isinstance(u, _btf.Datasec):
        _put_datasec(t, u, value, buf, off, path, depth)
    else:
        raise _Fail(path, f"{_name(t)} cannot hold a value")


def _put_array(
    t: _btf.Type,
    u: _btf.Array,
    value: object,
    buf: bytearray,
    off: int,
    path: FieldPath,
    depth: int,
) -> None:
    esize = _sizeof(u.type, path)
    total_size = esize * u.nelems
    if isinstance(value, str):
        if _is_text(u.type):
            raw = value.encode()
            if len(raw) > u.nelems:
                raise _Fail(
                    path, f"{quote(value)} is {len(raw)} bytes, {_name(t)} holds {u.nelems}"
                )
            buf[off : off + len(raw)] = raw
            buf[off + len(raw) : off + u.nelems] = bytes(u.nelems - len(raw))
            return
        if total_size in (4, 16):
            buf[off : off + total_size] = _address(value, total_size, path)
            return
        raise _Fail(path, f"expected a list for {_name(t)}, got a string")
    if not isinstance(value, list | tuple):
        what = "a string or a list" if _is_text(u.type) else "a list"
        raise _Fail(path, f"expected {what} for {_name(t)}, got {_kind(value)}")
    if len(value) > u.nelems:
        raise _Fail(path, f"{len(value)} elements do not fit {_name(t)}")
    for i, item in enumerate(value):
        _put(u.type, item, buf, off + i * esize, (*path, i), depth + 1)
    end = off + len(value) * esize
    buf[end : off + total_size] = bytes(off + total_size - end)


def _bitfield(m: _btf.Member, mu: _btf.Type) -> tuple[int, int] | None:
    """(bit offset in the composite, width) of a bitfield member, else None."""
    if m.bitfield_size:
        return m.offset_bits, m.bitfield_size
    if isinstance(mu, _btf.Int) and (mu.offset or mu.bits != mu.size * 8):
        return m.offset_bits + mu.offset, mu.bits  # kind_flag 0 encoding
    return None


def _put_bits(
    t: _btf.Type,
    u: _btf.Type,
    value: object,
    buf: bytearray,
    bit_off: int,
    nbits: int,
    path: FieldPath,
) -> None:
    if isinstance(u, _btf.Int):
        if isinstance(value, NetworkOrder):
            raise _Fail(path, f"a bitfield ({_width(nbits)}) has no byte order")
        v = _int_value(t, u, 0, value, nbits, path)
    elif isinstance(u, _btf.Enum):
        v = _enum_value(t, u, value, nbits, path)
    else:
        raise _Fail(path, f"a bitfield of {_name(t)} is not supported")
    start, end = bit_off // 8, (bit_off + nbits + 7) // 8
    if end > len(buf) or nbits <= 0:
        raise _Fail(path, f"bitfield {bit_off}+{nbits} lies outside the value")
    shift = bit_off - start * 8
    mask = ((1 << nbits) - 1) << shift
    # bitfields are laid out from the lowest bit of the lowest byte (x86, arm64)
    cur = int.from_bytes(buf[start:end], "little")
    cur = (cur & ~mask) | ((v << shift) & mask)
    buf[start:end] = cur.to_bytes(end - start, "little")


def _put_composite(
    t: _btf.Type,
    u: _btf.Struct | _btf.Union,
    value: Mapping[object, object],
    buf: bytearray,
    off: int,
    path: FieldPath,
    depth: int,
) -> None:
    for key in value:
        if not isinstance(key, str):
            raise _Fail(path, f"member names of {_name(t)} are strings, got {quote(key)}")
    members: Mapping[str, object] = value  # type: ignore[assignment]
    used: set[str] = set()
    _put_members(u, members, used, buf, off, path, depth)
    for key in members:
        if key not in used:
            names = _member_names(u)
            raise _Fail((*path, key), f"{_name(t)} has no member {quote(key)}{hint(key, names)}")


def _member_names(u: _btf.Struct | _btf.Union, depth: int = 0) -> list[str]:
    out: list[str] = []
    for m in u.members:
        if m.name:
            out.append(m.name)
        elif depth < _MAX_DEPTH:
            mu = _strip(_btf.skip_qualifiers(m.type))
            if isinstance(mu, _btf.Struct | _btf.Union):
                out += _member_names(mu, depth + 1)
    return out


def _put_member(
    m: _btf.Member,
    members: Mapping[str, object],
    used: set[str],
    buf: bytearray,
    off: int,
    path: FieldPath,
    depth: int,
) -> str | None:
    """Write member ``m`` (of a composite at byte ``off``) if ``members`` gives it; the name
    written (an anonymous member: the first of its members given), else None."""
    mu, _ = _resolve(m.type, path)
    if not m.name:
        if isinstance(mu, _btf.Struct | _btf.Union) and not m.offset_bits % 8:
            before = set(used)
            _put_members(mu, members, used, buf, off + m.offset_bits // 8, path, depth + 1)
            new = [n for n in members if n in used and n not in before]
            return new[0] if new else None
        return None
    if m.name not in members:
        return None
    used.add(m.name)
    mpath = (*path, m.name)
    bits = _bitfield(m, mu)
    if bits is not None:
        _put_bits(m.type, mu, members[m.name], buf, off * 8 + bits[0], bits[1], mpath)
    elif m.offset_bits % 8:
        raise _Fail(mpath, f"offset {m.offset_bits} bits is not byte aligned")
    else:
        _put(m.type, members[m.name], buf, off + m.offset_bits // 8, mpath, depth + 1)
    return m.name


def _put_members(
    u: _btf.Struct | _btf.Union,
    members: Mapping[str, object],
    used: set[str],
    buf: bytearray,
    off: int,
    path: FieldPath,
    depth: int,
) -> None:
    if depth > _MAX_DEPTH:
        raise _Fail(path, f"{_name(u)}: nested too deeply (a loop?)")
    if isinstance(u, _btf.Struct):
        for m in u.members:
            _put_member(m, members, used, buf, off, path, depth)
        return
    # A union: each member given is written on its own, and the bits each one writes are
    # found by writing it over zeros and over ones (a bit it does not write differs). Two
    # members that write the same bit must give it the same value.
    size = u.size
    if off + size > len(buf):
        raise _Fail(path, f"{_name(u)} lies outside the value")
    full = (1 << (size * 8)) - 1
    written: list[tuple[str, int, int]] = []
    for m in u.members:
        zeros, ones = bytearray(size), bytearray(b"\xff" * size)
        name = _put_member(m, members, used, zeros, 0, path, depth)
        if name is None:
            continue
        _put_member(m, members, set(), ones, 0, path, depth)
        a, b = int.from_bytes(zeros, "little"), int.from_bytes(ones, "little")
        mask = ~(a ^ b) & full
        val = a & mask
        for other, omask, oval in written:
            if omask & mask & (oval ^ val):
                raise _Fail(
                    path,
                    f"members {other} and {name} of {_name(u)} overlap and disagree "
                    "(give one of them)",
                )
        written.append((name, mask, val))
    cur = int.from_bytes(buf[off : off + size], "little")
    for _, mask, val in written:
        cur = (cur & ~mask) | val
    buf[off : off + size] = cur.to_bytes(size, "little")


def _put_datasec(
    t: _btf.Type,
    u: _btf.Datasec,
    value: object,
    buf: bytearray,
    off: int,
    path: FieldPath,
    depth: int,
) -> None:
    if not isinstance(value, Mapping):
        raise _Fail(path, f"expected a mapping of variables for {_name(t)}, got {_kind(value)}")
    by_name = {v.type.name: v for v in u.vars}
    for key, item in value.items():
        vsi = by_name.get(key) if isinstance(key, str) else None
        if vsi is None:
            names = sorted(by_name)
            raise _Fail(path, f"{_name(t)} has no variable {quote(key)}{hint(str(key), names)}")
        if vsi.offset + _sizeof(vsi.type, path) > len(buf) - off:
            raise _Fail((*path, key), f"lies outside {_name(t)}")
        _put(vsi.type, item, buf, off + vsi.offset, (*path, key), depth + 1)


# ---------------------------------------------------------------------------- decoding


def _text(data: bytes) -> str | None:
    """``data`` as text (trailing NULs dropped), or None when it is not text."""
    raw = bytes(data).rstrip(b"\0")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return None
    if any(not c.isprintable() and c not in _ALLOWED_CONTROL for c in text):
        return None
    return text


def _get(t: _btf.Type, data: memoryview, off: int, path: FieldPath, depth: int) -> object:
    if depth > _MAX_DEPTH:
        raise _Fail(path, f"{_name(t)}: nested too deeply (a loop?)")
    u, be = _resolve(t, path)
    if isinstance(u, _btf.Int):
        if u.offset or u.bits != u.size * 8:
            v = _get_bits(data, off * 8 + u.offset, u.bits, u.signed, path)
            return bool(v) if u.bool else v
        order = "big" if be else _HOST
        v = int.from_bytes(data[off : off + u.size], order, signed=u.signed and not be)
        return bool(v) if u.bool else v
    if isinstance(u, _btf.Enum):
        v = int.from_bytes(data[off : off + u.size], _HOST, signed=u.signed)
        return _enum_name(u, v, u.size * 8)
    if isinstance(u, _btf.Float):
        fmt = _FLOATS.get(u.size)
        if fmt is None:
            raise _Fail(path, f"{_name(t)}: {u.size}-byte floats are not supported")
        (f,) = struct.unpack_from("=" + fmt, data, off)
        return float(f)
    if isinstance(u, _btf.Pointer):
        return int.from_bytes(data[off : off + 8], _HOST)
    if isinstance(u, _btf.Array):
        esize = _sizeof(u.type, path)
        if _is_text(u.type):
            text = _text(bytes(data[off : off + u.nelems]))
            if text is not None:
                return text
        return [_get(u.type, data, off + i * esize, (*path, i), depth + 1) for i in range(u.nelems)]
    if isinstance(u, _btf.Struct | _btf.Union):
        if (u.name, u.size) in (("in_addr", 4), ("in6_addr", 16)):
            return _show_address(bytes(data[off : off + u.size]))
        out: dict[str, object] = {}
        _get_members(u, data, off, out, path, depth)
        return out
    if isinstance(u, _btf.Datasec):
        vars_: dict[str, object] = {}
        for vsi in u.vars:
            name = vsi.type.name
            if vsi.offset + _sizeof(vsi.type, path) > len(data) - off:
                raise _Fail((*path, name), f"lies outside {_name(t)}")
            vars_[name] = _get(vsi.type, data, off + vsi.offset, (*path, name), depth + 1)
        return vars_
    raise _Fail(path, f"{_name(t)} cannot hold a value")


def _enum_name(u: _btf.Enum, v: int, nbits: int) -> object:
    other = v - (1 << nbits) if v >= 1 << (nbits - 1) else v + (1 << nbits) if v < 0 else v
    for ev in u.values:
        if ev.value in (v, other):
            return ev.name
    return v


def _get_members(
    u: _btf.Struct | _btf.Union,
    data: memoryview,
    off: int,
    out: dict[str, object],
    path: FieldPath,
    depth: int,
) -> None:
    if depth > _MAX_DEPTH:
        raise _Fail(path, f"{_name(u)}: nested too deeply (a loop?)")
    for m in u.members:
        mu, _ = _resolve(m.type, path)
        if not m.name:
            if isinstance(mu, _btf.Struct | _btf.Union) and not m.offset_bits % 8:
                _get_members(mu, data, off + m.offset_bits // 8, out, path, depth + 1)
            continue
        mpath = (*path, m.name)
        bits = _bitfield(m, mu)
        if bits is not None:
            signed = isinstance(mu, _btf.Int | _btf.Enum) and mu.signed
            v = _get_bits(data, off * 8 + bits[0], bits[1], signed, mpath)
            if isinstance(mu, _btf.Int) and mu.bool:
                out[m.name] = bool(v)
            elif isinstance(mu, _btf.Enum):
                out[m.name] = _enum_name(mu, v, bits[1])
            else:
                out[m.name] = v
            continue
        if m.offset_bits % 8:
            raise _Fail(mpath, f"offset {m.offset_bits} bits is not byte aligned")
        moff = off + m.offset_bits // 8
        if moff + _sizeof(m.type, mpath) > len(data):
            raise _Fail(mpath, f"lies outside {_name(u)}")
        out[m.name] = _get(m.type, data, moff, mpath, depth + 1)


def _get_bits(data: memoryview, bit_off: int, nbits: int, signed: bool, path: FieldPath) -> int:
    start, end = bit_off // 8, (bit_off + nbits + 7) // 8
    if end > len(data) or nbits <= 0:
        raise _Fail(path, f"bitfield {bit_off}+{nbits} lies outside the value")
    raw = int.from_bytes(data[start:end], "little") >> (bit_off - start * 8)
    raw &= (1 << nbits) - 1
    if signed and raw >> (nbits - 1):
        raw -= 1 << nbits
    return raw


# ---------------------------------------------------------------------------- formats


def _cidr_encode(value: object, size: int, path: FieldPath) -> bytes | None:
    """An LPM trie key written as a CIDR string; None when ``value`` is not a string."""
    if not isinstance(value, str):
        return None
    family = "IPv4" if size == 8 else "IPv6"
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError:
        raise _Fail(path, f"{quote(value)} is not an {family} CIDR (like 10.0.0.0/8)") from None
    if iface.max_prefixlen != (size - 4) * 8:
        raise _Fail(path, f"{quote(value)} is not an {family} CIDR (the key has {size} bytes)")
    return iface.network.prefixlen.to_bytes(4, _HOST) + iface.ip.packed


def _cidr_decode(data: bytes) -> str | None:
    prefixlen = int.from_bytes(data[:4], _HOST)
    if prefixlen > (len(data) - 4) * 8:
        return None
    return f"{_show_address(data[4:])}/{prefixlen}"


def _format_encode(fmt: str, value: object, size: int, path: FieldPath) -> object:
    """Apply a whole-key/value format to a plain literal (tagged ones stay as they are)."""
    if fmt.startswith("be") and isinstance(value, int) and not isinstance(value, bool):
        try:
            return NetworkOrder(int(fmt[2:]), value)
        except ValueError as err:
            raise _Fail(path, str(err)) from None
    if fmt == "hex" and isinstance(value, str):
        try:
            return Hex.parse(value)
        except ValueError as err:
            raise _Fail(path, str(err)) from None
    if fmt in ("ipv4", "ipv6") and not isinstance(value, str | Hex):
        raise _Fail(path, f"expected an {fmt[:2].upper()}{fmt[2:]} address, got {_kind(value)}")
    return value


def _format_decode(fmt: str, data: bytes) -> object:
    """``data`` shown in format ``fmt``; the raw bytes when it does not fit."""
    if fmt == "hex":
        return Hex(bytes(data))
    if fmt in ("ipv4", "ipv6"):
        want = 4 if fmt == "ipv4" else 16
        return _show_address(data) if len(data) == want else Hex(bytes(data))
    bits = int(fmt[2:])
    n = len(data)
    if n not in (1, 2, 4, 8, 16) or n * 8 < bits:
        return Hex(bytes(data))
    v = int.from_bytes(data, _HOST)
    if v >> bits:
        return Hex(bytes(data))  # wider than the tag: not a __beN assigned to this field
    return NetworkOrder(bits, int.from_bytes(v.to_bytes(bits // 8, _HOST), "big"))


# ---------------------------------------------------------------------------- public API


def encode(
    t: _btf.Type | None,
    value: object,
    *,
    size: int | None = None,
    what: str = "value",
    fmt: str | None = None,
    cidr: bool = False,
) -> bytes:
    """``value`` (a literal) as the bytes of type ``t``. Without a type, ``size`` bytes: an
    unsigned integer (1, 2, 4 or 8 bytes) or ``!hex``. ``fmt`` is one of :data:`FORMATS`;
    ``cidr`` reads a string as an LPM trie key. Raises LiteralError (``what`` names the
    literal: "key", "value")."""
    try:
        return _encode(t, value, size, fmt, cidr)
    except _Fail as f:
        raise LiteralError(what, f.path, f.reason) from None


def _encode(
    t: _btf.Type | None, value: object, size: int | None, fmt: str | None, cidr: bool
) -> bytes:
    path: FieldPath = ()
    n = _sizeof(t, path) if t is not None else size
    if n is None:
        raise SpecError("encode: give a BTF type or a size")
    if t is not None and size is not None and size != n:
        raise _Fail(path, f"{_name(t)} has {n} bytes, the map's has {size}")
    if fmt is not None:
        if fmt not in FORMATS:
            raise _Fail(path, f"unknown format {quote(fmt)} (one of {', '.join(FORMATS)})")
        value = _format_encode(fmt, value, n, path)
    if cidr and n in (8, 20):
        raw = _cidr_encode(value, n, path)
        if raw is not None:
            return raw
    if t is not None:
        buf = bytearray(n)
        _put(t, value, buf, 0, path, 0)
        return bytes(buf)
    return _raw_encode(value, n, path)


def _raw_encode(value: object, n: int, path: FieldPath) -> bytes:
    if isinstance(value, Hex):
        if len(value.data) != n:
            raise _Fail(path, f"!hex has {len(value.data)} bytes, the field has {n}")
        return value.data
    if isinstance(value, NetworkOrder):
        if value.bits > n * 8:
            raise _Fail(path, f"!{value.tag} does not fit {n} bytes")
        return value.host_value().to_bytes(n, _HOST)
    if isinstance(value, str) and n in (4, 16):
        return _address(value, n, path)
    if n in (1, 2, 4, 8) and isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < 1 << (n * 8):
            raise _Fail(path, f"{quote(value)} does not fit {_width(n * 8)} (unsigned, no BTF)")
        return value.to_bytes(n, _HOST)
    kinds = "an integer or !hex" if n in (1, 2, 4, 8) else f"!hex of {n} bytes"
    raise _Fail(path, f"expected {kinds} (the field has no BTF type), got {_kind(value)}")


def decode(
    t: _btf.Type | None,
    data: bytes,
    *,
    what: str = "value",
    fmt: str | None = None,
    cidr: bool = False,
) -> object:
    """``data`` as a literal that :func:`encode` takes back. Without a type: an unsigned
    integer for 1, 2, 4 or 8 bytes, else :class:`Hex`."""
    try:
        return _decode(t, data, fmt, cidr)
    except _Fail as f:
        raise LiteralError(what, f.path, f.reason) from None


def _decode(t: _btf.Type | None, data: bytes, fmt: str | None, cidr: bool) -> object:
    path: FieldPath = ()
    if t is not None:
        n = _sizeof(t, path)
        if len(data) != n:
            raise _Fail(path, f"expected {n} bytes for {_name(t)}, got {len(data)}")
    if fmt is not None:
        if fmt not in FORMATS:
            raise _Fail(path, f"unknown format {quote(fmt)} (one of {', '.join(FORMATS)})")
        return _format_decode(fmt, bytes(data))
    if cidr and len(data) in (8, 20):
        shown = _cidr_decode(bytes(data))
        if shown is not None:
            return shown
    if t is not None:
        return _get(t, memoryview(bytes(data)), 0, path, 0)
    if len(data) in (1, 2, 4, 8):
        return int.from_bytes(data, _HOST)
    return Hex(bytes(data))


def plain(value: object) -> object:
    """A decoded literal as JSON data: ``!be16 9999`` is 9999, ``!hex`` a hex string."""
    if isinstance(value, NetworkOrder):
        return value.value
    if isinstance(value, Hex):
        return value.data.hex()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def total(values: Sequence[object]) -> object:
    """The sum of per-CPU values: numbers added, structs and arrays member by member. None
    when something in them cannot be added (text, enumerator names, addresses)."""
    try:
        return _add(values)
    except TypeError:
        return None


def _add(values: Sequence[object]) -> object:
    first = values[0] if values else 0
    if isinstance(first, bool | str | Hex | NetworkOrder):
        raise TypeError("not a number")
    if isinstance(first, int | float):
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise TypeError("not a number")
        return sum(values)  # type: ignore[arg-type]
    if isinstance(first, Mapping):
        maps = [v for v in values if isinstance(v, Mapping)]
        if len(maps) != len(values):
            raise TypeError("mixed")
        return {k: _add([m[k] for m in maps]) for k in first}
    if isinstance(first, list):
        lists = [v for v in values if isinstance(v, list) and len(v) == len(first)]
        if len(lists) != len(values):
            raise TypeError("mixed")
        return [_add([lst[i] for lst in lists]) for i in range(len(first))]
    raise TypeError("not a number")
