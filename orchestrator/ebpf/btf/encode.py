"""Encoding a spec as BTF for BPF_BTF_LOAD: its own types, with every id kept, and a
deduplicated string table."""

from __future__ import annotations

import sys
from array import array
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from orchestrator.ebpf.btf.decode import PREFILL_STRINGS as _PREFILL_STRINGS
from orchestrator.ebpf.btf.types import (
    _HEADER,
    _INT_BOOL,
    _INT_CHAR,
    _INT_SIGNED,
    BTF_MAGIC,
    BTF_VERSION,
    Array,
    Const,
    Datasec,
    DeclTag,
    Enum,
    Float,
    Func,
    FuncProto,
    Fwd,
    Int,
    Pointer,
    Restrict,
    Struct,
    Type,
    Typedef,
    TypeTag,
    Union,
    Var,
    Volatile,
    describe,
)
from orchestrator.ebpf.errors import BTFError

if TYPE_CHECKING:
    from orchestrator.ebpf.btf.spec import Spec


def marshal(spec: Spec, extra_strings: Iterable[str]) -> tuple[bytes, dict[str, int]]:
    """The blob of ``spec``'s own types and the string → offset map (uncached: see
    :meth:`Spec.marshal`).

    A parsed spec whose string table was decoded whole (an object's, not the kernel's) keeps
    that table as it is, and the records of types never decoded are copied as they are:
    only decoded types (which may have changed) are encoded again, and only strings the
    table lacks are appended. Otherwise every type is encoded and the table is rebuilt."""
    nparsed = len(spec._offs)
    passthrough = nparsed > 0 and len(spec._strtab) <= _PREFILL_STRINGS
    if passthrough:
        cached = spec._str_cache
        strings = dict(zip(cached.values(), cached.keys(), strict=True))  # string → offset
        strings[""] = 0
        chunks: list[bytes] = [spec._strtab]
        size = spec._str_start + len(spec._strtab)
    else:
        strings = {"": 0}
        chunks = [] if spec._base is not None else [b"\0"]
        size = spec._str_start + (0 if spec._base is not None else 1)

    def intern(s: str) -> int:
        nonlocal size
        off = strings.get(s)
        if off is None:
            raw = s.encode("utf-8", "surrogateescape")
            if b"\0" in raw:
                raise BTFError(f"btf: string {s!r} contains a nul byte")
            off = size
            strings[s] = off
            chunks.append(raw + b"\0")
            size += len(raw) + 1
        return off

    ids, slow_type_id = spec._ids, spec.type_id

    def type_id(t: Type) -> int:
        tid = ids.get(t)  # own types: one dict lookup; Void, base types: the full path
        return tid if tid is not None else slow_type_id(t)

    tarr: array[int] = array("I")
    words: list[int] = []
    cache, raw_words, offs, first = spec._cache, spec._words, spec._offs, spec._first
    start = 0
    if passthrough and spec._as_parsed:  # every parsed record as it is; added types follow
        tarr = raw_words[:]
        start = nparsed
    for i in range(start, len(cache)):
        t = cache[i]
        if t is None and passthrough:  # never decoded: its record as parsed
            end = offs[i + 1] if i + 1 < nparsed else len(raw_words)
            tarr += raw_words[offs[i] : end]
            continue
        if t is None:
            t = spec.type_by_id(first + i)
        try:
            _encode_type(t, words, intern, type_id)
            tarr.fromlist(words)
        except _Range as err:
            raise BTFError(f"btf: type {first + i} ({describe(t)}): {err}") from None
        except OverflowError as err:
            raise BTFError("btf: a value does not fit in 32 bits") from err
        words.clear()
    for s in sorted(extra_strings):
        intern(s)
    if sys.byteorder == "big":
        tarr.byteswap()
    type_bytes = tarr.tobytes()
    str_bytes = b"".join(chunks)
    header = _HEADER.pack(
        BTF_MAGIC,
        BTF_VERSION,
        0,
        _HEADER.size,
        0,
        len(type_bytes),
        len(type_bytes),
        len(str_bytes),
    )
    return header + type_bytes + str_bytes, strings


class _Range(Exception):
    """A field is out of range; turned into a BTFError with context by ``marshal``."""


def _u(value: int, bits: int, what: str) -> int:
    if not 0 <= value < 1 << bits:
        raise _Range(f"{what} {value} out of range")
    return value


def _encode_type(
    t: Type,
    out: list[int],
    intern: Callable[[str], int],
    type_id: Callable[[Type], int],
) -> None:
    """Append the record of ``t`` (as u32 words) to ``out``; raises _Range."""
    # Hot on the first load of every object: no helper closures, the common kinds first,
    # range checks inline where a value can be out of range.
    name = intern(t.name)
    kind = int(t.kind) << 24

    if isinstance(t, Pointer):
        out += (name, kind, type_id(t.target))
    elif isinstance(t, Int):
        enc = (
            (_INT_SIGNED if t.signed else 0)
            | (_INT_CHAR if t.char else 0)
            | (_INT_BOOL if t.bool else 0)
        )
        out += (
            name,
            kind,
            _u(t.size, 32, "size"),
            (enc << 24) | (_u(t.offset, 8, "bit offset") << 16) | _u(t.bits, 8, "bits"),
        )
    elif isinstance(t, Struct | Union):
        members = t.members
        kflag = any(m.bitfield_size for m in members)
        out += (
            name,
            (kflag << 31) | kind | _u(len(members), 16, "vlen"),
            _u(t.size, 32, "size"),
        )
        for m in members:
            if kflag:
                off = (_u(m.bitfield_size, 8, f"member {m.name}: bitfield size") << 24) | _u(
                    m.offset_bits, 24, f"member {m.name}: offset"
                )
            else:
                off = m.offset_bits
                if not 0 <= off < 1 << 32:
                    raise _Range(f"member {m.name}: offset {off} out of range")
            out += (intern(m.name), type_id(m.type), off)
    elif isinstance(t, Typedef | Volatile | Const | Restrict):
        out += (name, kind, type_id(t.type))
    elif isinstance(t, Array):
        out += (name, kind, 0, type_id(t.type), type_id(t.index_type), _u(t.nelems, 32, "nelems"))
    elif isinstance(t, FuncProto):
        params = t.params
        out += (name, kind | _u(len(params), 16, "vlen"), type_id(t.return_type))
        for prm in params:
            out += (intern(prm.name), type_id(prm.type))
    elif isinstance(t, Func):
        out += (name, kind | int(t.linkage), type_id(t.type))
    elif isinstance(t, Var):
        out += (name, kind, type_id(t.type), int(t.linkage))
    elif isinstance(t, Datasec):
        out += (name, kind | _u(len(t.vars), 16, "vlen"), _u(t.size, 32, "size"))
        for vsi in t.vars:
            out += (type_id(vsi.type), _u(vsi.offset, 32, "offset"), _u(vsi.size, 32, "var size"))
    elif isinstance(t, Enum):
        out += (
            name,
            (t.signed << 31) | kind | _u(len(t.values), 16, "vlen"),
            _u(t.size, 32, "size"),
        )
        for v in t.values:
            if t.is64:
                if not -(1 << 63) <= v.value < (1 << 64):
                    raise _Range(f"{v.name} = {v.value} out of range")
                raw = v.value & 0xFFFFFFFFFFFFFFFF
                out += (intern(v.name), raw & 0xFFFFFFFF, raw >> 32)
            else:
                if not -(1 << 31) <= v.value < (1 << 32):
                    raise _Range(f"{v.name} = {v.value} out of range")
                out += (intern(v.name), v.value & 0xFFFFFFFF)
    elif isinstance(t, Fwd):
        out += (name, (t.union << 31) | kind, 0)
    elif isinstance(t, TypeTag):
        out += (name, (t.attr << 31) | kind, type_id(t.type))
    elif isinstance(t, Float):
        out += (name, kind, _u(t.size, 32, "size"))
    elif isinstance(t, DeclTag):
        if not -(1 << 31) <= t.component_idx < (1 << 31):
            raise _Range(f"component index {t.component_idx} out of range")
        out += (name, (t.attr << 31) | kind, type_id(t.type), t.component_idx & 0xFFFFFFFF)
    else:
        raise _Range(f"cannot marshal {type(t).__name__}")
