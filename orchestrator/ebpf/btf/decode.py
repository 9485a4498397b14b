"""Decoding a BTF blob: the header, one indexing pass over the type records, and building
the object of one record on demand (:func:`inflate`, used by :class:`Spec`'s lazy decode)."""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence
from typing import TYPE_CHECKING

from orchestrator.ebpf.btf.types import (
    _HEADER,
    _HEADER_BE,
    _INT_BOOL,
    _INT_CHAR,
    _INT_SIGNED,
    _PENDING,
    BTF_MAGIC,
    BTF_MAX_TYPE,
    BTF_VERSION,
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
    Member,
    Pointer,
    Restrict,
    Struct,
    Type,
    Typedef,
    TypeTag,
    Union,
    Var,
    VarLinkage,
    VarSecinfo,
    Volatile,
    _Lazy,
)
from orchestrator.ebpf.errors import BTFError

if TYPE_CHECKING:
    from orchestrator.ebpf.btf.spec import Spec

# Words (u32) after the 12-byte btf_type header: fixed, and per vlen entry, by kind.
_FIXED_WORDS = (0, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0)
_VLEN_WORDS = (0, 0, 0, 0, 3, 3, 2, 0, 0, 0, 0, 0, 0, 2, 0, 3, 0, 0, 0, 3)
_NKINDS = len(_FIXED_WORDS)

_PENDING_PROTO = FuncProto(_PENDING)
_FUNC_LINKAGES = tuple(FuncLinkage)
_VAR_LINKAGES = tuple(VarLinkage)


def _s32(v: int) -> int:
    return v - (1 << 32) if v & 0x80000000 else v


def read(data: bytes, *, split: bool) -> tuple[bytes, array[int]]:
    """Check a BTF blob's header and sections (either byte order); give its string table
    and its type section as native-order u32 words. ``split``: module BTF on a base, whose
    string table need not start with an empty string."""
    view = memoryview(data)
    if len(view) < _HEADER.size:
        raise BTFError(f"btf: {len(view)} bytes is too short for a header")
    magic = int.from_bytes(view[:2], "little")
    if magic == BTF_MAGIC:
        hdr, swap = _HEADER, sys.byteorder == "big"
    elif magic == 0x9FEB:
        hdr, swap = _HEADER_BE, sys.byteorder == "little"
    else:
        raise BTFError(f"btf: bad magic {magic:#06x} (not btf?)")
    _, version, _flags, hdr_len, type_off, type_len, str_off, str_len = hdr.unpack_from(view)
    if version != BTF_VERSION:
        raise BTFError(f"btf: unsupported version {version}")
    if hdr_len < _HEADER.size or hdr_len > len(view):
        raise BTFError(f"btf: bad header length {hdr_len}")
    body = view[hdr_len:]
    if type_off + type_len > len(body) or str_off + str_len > len(body):
        raise BTFError(
            f"btf: sections (types {type_off}+{type_len}, strings {str_off}+{str_len}) "
            f"exceed {len(body)} bytes"
        )
    if type_len % 4:
        raise BTFError(f"btf: type section length {type_len} is not a multiple of 4")
    strtab = bytes(body[str_off : str_off + str_len])
    if not split and (not strtab or strtab[0] != 0):
        raise BTFError("btf: string section does not start with an empty string")
    if strtab and strtab[-1] != 0:
        raise BTFError("btf: string section is not nul-terminated")
    if str_len > 0x7FFFFFFF:
        raise BTFError("btf: string section too large")
    words: array[int] = array("I")
    words.frombytes(body[type_off : type_off + type_len])
    if swap:
        words.byteswap()
    return strtab, words


def index_records(words: array[int], first: int) -> array[int]:
    """One pass over the type section: the word offset of every record."""
    offs: array[int] = array("I")
    n = len(words)
    fixed, per = _FIXED_WORDS, _VLEN_WORDS
    o = 0
    append = offs.append
    while o < n:
        if o + 3 > n:
            raise BTFError(f"btf: type {first + len(offs)}: truncated record")
        info = words[o + 1]
        kind = (info >> 24) & 0x1F
        if kind == 0 or kind >= _NKINDS:
            raise BTFError(f"btf: type {first + len(offs)}: unknown kind {kind}")
        append(o)
        o += 3 + fixed[kind] + per[kind] * (info & 0xFFFF)
    if o != n:
        raise BTFError(f"btf: type {first + len(offs) - 1}: truncated record")
    if first + len(offs) - 1 > BTF_MAX_TYPE:
        raise BTFError(f"btf: more than {BTF_MAX_TYPE} types")
    return offs


def index_checked(
    words: array[int], first: int, str_len: int
) -> tuple[array[int], bool, list[int]]:
    """:func:`index_records` and the soundness check :func:`validate` needs (whether
    every name offset and type reference is in range, linkages, int encodings and func →
    proto; False: "maybe damaged"), in the same pass over the records;
    and the ids of the DATASEC records. For an object's BTF (no base, its string table
    starting at offset 0): the ELF reader checks every record, and fixes up every DATASEC."""
    offs: array[int] = array("I")
    n = len(words)
    fixed, per = _FIXED_WORDS, _VLEN_WORDS
    names: list[int] = []
    refs: list[int] = []
    datasecs: list[int] = []
    name, ref, add_names, add_refs = names.append, refs.append, names.extend, refs.extend
    nfunc, nvar = len(_FUNC_LINKAGES), len(_VAR_LINKAGES)
    funcs: list[int] = []  # FUNC records' proto ids: checked once every record is indexed
    sound = True
    o = 0
    append = offs.append
    while o < n:
        if o + 3 > n:
            raise BTFError(f"btf: type {first + len(offs)}: truncated record")
        info, st = words[o + 1], words[o + 2]
        kind = (info >> 24) & 0x1F
        if kind == 0 or kind >= _NKINDS:
            raise BTFError(f"btf: type {first + len(offs)}: unknown kind {kind}")
        vlen = info & 0xFFFF
        b = o + 3
        append(o)
        o = b + fixed[kind] + per[kind] * vlen
        if kind == 15:  # DATASEC
            datasecs.append(first + len(offs) - 1)
        if not sound:
            continue  # the rest is indexed only: validate checks record by record
        name(words[b - 3])
        if kind in _REF_KINDS:  # PTR, TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG, DECL_TAG
            ref(st)
        elif kind == 4 or kind == 5:  # STRUCT, UNION
            add_names(words[b : b + 3 * vlen : 3])
            add_refs(words[b + 1 : b + 3 * vlen : 3])
        elif kind == 13:  # FUNC_PROTO
            ref(st)
            add_names(words[b : b + 2 * vlen : 2])
            add_refs(words[b + 1 : b + 2 * vlen : 2])
        elif kind == 12:  # FUNC: a known linkage, an own func proto (checked below)
            if vlen >= nfunc:
                sound = False
            funcs.append(st)
        elif kind == 14:  # VAR
            if words[b] >= nvar:
                sound = False
            ref(st)
        elif kind == 3:  # ARRAY
            ref(words[b])
            ref(words[b + 1])
        elif kind == 15:  # DATASEC
            add_refs(words[b : b + 3 * vlen : 3])
        elif kind == 6:  # ENUM
            add_names(words[b : b + 2 * vlen : 2])
        elif kind == 19:  # ENUM64
            add_names(words[b : b + 3 * vlen : 3])
        elif kind == 1:  # INT
            bits = words[b] & 0xFF
            if bits == 0 or bits > st * 8:
                sound = False
    if o != n:
        raise BTFError(f"btf: type {first + len(offs) - 1}: truncated record")
    if first + len(offs) - 1 > BTF_MAX_TYPE:
        raise BTFError(f"btf: more than {BTF_MAX_TYPE} types")
    end_id = first + len(offs)
    if sound:
        for st in funcs:
            if not first <= st < end_id or (words[offs[st - first] + 1] >> 24) & 0x1F != 13:
                sound = False
                break
        else:
            sound = max(names, default=0) < str_len and max(refs, default=0) < end_id
    return offs, sound, datasecs


# String tables up to this size (an object's, not the kernel's) are decoded in one pass at
# parse time: nearly every string of an object's BTF is needed, and one split is much
# cheaper than a lookup per string.
PREFILL_STRINGS = 64 * 1024


def split_strings(strtab: bytes, start: int) -> dict[int, str]:
    """Offset (from ``start``) → string for every string that follows a nul. Offsets into
    the middle of a string are left to :meth:`Spec.string`."""
    out: dict[int, str] = {}
    off = start
    for raw in strtab.split(b"\0")[:-1]:  # the table ends with a nul (checked by parse)
        out[off] = raw.decode("utf-8", "surrogateescape")
        off += len(raw) + 1
    return out


def inflate(spec: Spec, tid: int) -> tuple[Type, tuple[int, ...]]:
    """Build the object for one record, with placeholder references, and its ref ids."""
    # Hot path (vmlinux): kinds are tested by frequency, strings come from a cache.
    w = spec._words
    o = spec._offs[tid - spec._first]
    name_off, info, st = w[o], w[o + 1], w[o + 2]
    kind = (info >> 24) & 0x1F
    vlen = info & 0xFFFF
    kflag = bool(info >> 31)
    strs, string = spec._strs, spec.string  # those read so far: the rest through string()
    name = (strs.get(name_off) or string(name_off)) if name_off else ""
    p = _PENDING
    b = o + 3
    if kind == 12:  # FUNC
        if vlen >= len(_FUNC_LINKAGES):
            raise BTFError(f"btf: type {tid}: func {name}: bad linkage {vlen}")
        return Func(name, _PENDING_PROTO, _FUNC_LINKAGES[vlen]), (st,)
    if kind == 13:  # FUNC_PROTO
        params = []
        refs = [st]
        for _ in range(vlen):
            pn = w[b]
            params.append(FuncParam((strs.get(pn) or string(pn)) if pn else "", p))
            refs.append(w[b + 1])
            b += 2
        return FuncProto(p, params, name), tuple(refs)
    if kind == 2:  # PTR: the target is decoded when first used
        if st == 0:
            return Pointer(spec._void, name), ()
        if st >= spec._first + len(spec._offs) or (st < spec._first and spec._base is None):
            raise BTFError(f"btf: type {tid} refers to missing type {st}")
        ptr = Pointer(_PENDING, name)
        object.__setattr__(ptr, "target", _Lazy(spec, st))
        return ptr, ()
    if kind == 4 or kind == 5:  # STRUCT, UNION
        members = []
        refs = []
        for _ in range(vlen):
            mn, off = w[b], w[b + 2]
            mname = (strs.get(mn) or string(mn)) if mn else ""
            if kflag:
                members.append(Member(mname, p, off & 0xFFFFFF, off >> 24))
            else:
                members.append(Member(mname, p, off, 0))
            refs.append(w[b + 1])
            b += 3
        t = (Struct if kind == 4 else Union)(name, st, members)
        return t, tuple(refs)
    if kind == 10:  # CONST
        return Const(p, name), (st,)
    if kind == 3:  # ARRAY
        return Array(p, p, w[b + 2], name), (w[b], w[b + 1])
    if kind == 8:  # TYPEDEF
        return Typedef(name, p), (st,)
    if kind == 6:  # ENUM
        values = []
        for _ in range(vlen):
            v = w[b + 1]
            values.append(EnumValue(string(w[b]), _s32(v) if kflag else v))
            b += 2
        return Enum(name, st, kflag, values, False), ()
    if kind == 1:  # INT
        enc = w[b]
        flags = (enc >> 24) & 0x0F
        bits = enc & 0xFF
        if bits == 0 or bits > st * 8:
            raise BTFError(f"btf: type {tid}: int {name} has {bits} bits in {st} bytes")
        return Int(
            name,
            st,
            bool(flags & _INT_SIGNED),
            bool(flags & _INT_CHAR),
            bool(flags & _INT_BOOL),
            bits,
            (enc >> 16) & 0xFF,
        ), ()
    if kind == 19:  # ENUM64
        values = []
        for _ in range(vlen):
            v = w[b + 1] | (w[b + 2] << 32)
            if kflag and v >> 63:
                v -= 1 << 64
            values.append(EnumValue(string(w[b]), v))
            b += 3
        return Enum(name, st, kflag, values, True), ()
    if kind == 14:  # VAR
        if w[b] >= len(_VAR_LINKAGES):
            raise BTFError(f"btf: type {tid}: var {name}: bad linkage {w[b]}")
        return Var(name, p, _VAR_LINKAGES[w[b]]), (st,)
    if kind == 15:  # DATASEC
        secinfos = []
        refs = []
        for _ in range(vlen):
            secinfos.append(VarSecinfo(p, w[b + 1], w[b + 2]))
            refs.append(w[b])
            b += 3
        return Datasec(name, st, secinfos), tuple(refs)
    if kind == 7:  # FWD
        return Fwd(name, kflag), ()
    if kind == 9:  # VOLATILE
        return Volatile(p, name), (st,)
    if kind == 11:  # RESTRICT
        return Restrict(p, name), (st,)
    if kind == 16:  # FLOAT
        return Float(name, st), ()
    if kind == 17:  # DECL_TAG
        return DeclTag(name, p, _s32(w[b]), kflag), (st,)
    if kind == 18:  # TYPE_TAG
        return TypeTag(name, p, kflag), (st,)
    raise BTFError(f"btf: type {tid}: unknown kind {kind}")  # _index_records prevents


def validate(spec: Spec) -> None:
    """Check every own record not decoded yet (decoding checked the others) without
    building its object: names in the string table, references to types that exist,
    linkages, int encodings and func → proto; the checks decoding makes, with its messages,
    so that an object's BTF can be checked whole at parse time and decoded only where used.
    Damage found raises :class:`BTFError`."""
    # spec._sound: a checked parse's index pass answered already (False: "maybe damaged");
    # None: not checked, the same pass answers now (over the raw records: a decoded type's
    # record was checked by decoding it, so it only ever agrees)
    if spec._base is None and spec._str_start == 0:
        sound = spec._sound
        if sound is None:
            sound = index_checked(spec._words, spec._first, len(spec._strtab))[1]
        if sound:
            return
    _check_records(spec)


def _check_records(spec: Spec) -> None:
    """:func:`validate` record by record: the first damage found raises its message."""
    w, offs, first = spec._words, spec._offs, spec._first
    nown = len(offs)
    end_id = first + nown
    has_base = spec._base is not None
    str_lo = 0 if has_base else spec._str_start
    str_end = spec._str_start + len(spec._strtab)
    strs, cache = spec._strs, spec._cache
    for i in range(nown):
        if cache[i] is not None:
            continue
        o = offs[i]
        tid = first + i
        info, st = w[o + 1], w[o + 2]
        kind = (info >> 24) & 0x1F
        vlen = info & 0xFFFF
        names = [w[o]]
        refs: Sequence[int] = ()
        b = o + 3
        if kind in (2, 8, 9, 10, 11, 18):  # PTR, TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG
            refs = (st,)
        elif kind == 4 or kind == 5:  # STRUCT, UNION
            names += w[b : b + 3 * vlen : 3]
            refs = w[b + 1 : b + 3 * vlen : 3]
        elif kind == 13:  # FUNC_PROTO
            names += w[b : b + 2 * vlen : 2]
            refs = [st, *w[b + 1 : b + 2 * vlen : 2]]
        elif kind == 12:  # FUNC
            if vlen >= len(_FUNC_LINKAGES):
                name = spec.string(w[o]) if w[o] else ""
                raise BTFError(f"btf: type {tid}: func {name}: bad linkage {vlen}")
            refs = (st,)
            own_proto = first <= st < end_id and (w[offs[st - first] + 1] >> 24) & 0x1F == 13
            if not own_proto and (st == 0 or st >= first):
                spec.type_by_id(tid)  # raises the decoder's error (not a func proto, missing)
        elif kind == 3:  # ARRAY
            refs = (w[b], w[b + 1])
        elif kind == 6:  # ENUM
            names += w[b : b + 2 * vlen : 2]
        elif kind == 19:  # ENUM64
            names += w[b : b + 3 * vlen : 3]
        elif kind == 1:  # INT
            bits = w[b] & 0xFF
            if bits == 0 or bits > st * 8:
                name = spec.string(w[o]) if w[o] else ""
                raise BTFError(f"btf: type {tid}: int {name} has {bits} bits in {st} bytes")
        elif kind == 14:  # VAR
            if w[b] >= len(_VAR_LINKAGES):
                name = spec.string(w[o]) if w[o] else ""
                raise BTFError(f"btf: type {tid}: var {name}: bad linkage {w[b]}")
            refs = (st,)
        elif kind == 15:  # DATASEC
            refs = w[b : b + 3 * vlen : 3]
        elif kind == 17:  # DECL_TAG
            refs = (st,)
        for n in names:
            if n and n not in strs and not str_lo <= n < str_end:
                spec.string(n)  # raises the out-of-range error
        for r in refs:
            if r >= end_id or (r and r < first and not has_base):
                raise BTFError(f"btf: type {tid} refers to missing type {r}")


_REF_KINDS = frozenset((2, 8, 9, 10, 11, 17, 18))
