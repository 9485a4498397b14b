"""A parsed :class:`~orchestrator.ebpf.spec.CollectionSpec` as bytes and back, for the
persisted spec cache (:mod:`orchestrator.ebpf.diskcache`, behind
:mod:`orchestrator.ebpf.speccache`). No pickle: a format of our own that :func:`decode`
validates field by field, so a damaged entry is refused (:class:`SpecFileError`), never
half-built.

Layout (version :data:`VERSION`): ``u32 version, u32 json length``, a UTF-8 JSON document
(maps, programs and variables as rows of fixed fields, :data:`MAP_FIELDS`,
:data:`PROGRAM_FIELDS` and :data:`VARIABLE_FIELDS`, whose scalar fields are type-checked
together), then the raw bytes that the document refers to as ``[offset, length]`` pairs
(instruction streams, map contents, the BTF blob, struct_ops data, each program's line info
as the ``bpf_line_info`` records BPF_PROG_LOAD takes, little-endian). BTF types are stored
as their ids in the collection's BTF, which is stored marshalled: :meth:`btf.Spec.marshal`
keeps every id, and it is marshalled with the line-info strings a load needs, so the blob
is also what the first load in the new process hands the kernel (it is not marshalled
again); so are the line info records (held as parsed, built into records only when read).

:func:`encode` returns None for a spec it cannot represent exactly (a BTF type that is not
in the collection's BTF, a map sharing its BTF with nothing): such a spec is not persisted.
"""

from __future__ import annotations

import json
import struct
from array import array
from typing import TYPE_CHECKING, Any, TypeVar, cast

from orchestrator.ebpf import btf as _btf
from orchestrator.ebpf._sys import ProgFlags
from orchestrator.ebpf._sys.enums import (
    ATTACH_TYPE_BY_VALUE,
    MAP_TYPE_BY_VALUE,
    PROG_TYPE_BY_VALUE,
)
from orchestrator.ebpf.asm import Instructions, Reference, RefKind
from orchestrator.ebpf.btf import decode as _btf_decode
from orchestrator.ebpf.btf import ext as _btf_ext
from orchestrator.ebpf.btf.types import _Lazy
from orchestrator.ebpf.errors import BTFError, SpecFileError
from orchestrator.ebpf.spec import (
    PIN_TYPE_BY_VALUE,
    CollectionSpec,
    MapEntry,
    MapSpec,
    ProgramSpec,
    Unresolved,
    VariableSpec,
)

if TYPE_CHECKING:
    from orchestrator.ebpf.externs import ExternSpec
    from orchestrator.ebpf.link.struct_ops import StructOpsSpec

__all__ = ["VERSION", "SpecFileError", "decode", "encode"]

VERSION = 3  # 2: line info as kernel records; 3: maps and programs as rows

# The fields of a map's, a program's and a variable's row, in order; the first of them are
# scalars of one exact type each (_MAP_SCALARS, _PROGRAM_SCALARS, _VARIABLE_SCALARS),
# checked in one go.
MAP_FIELDS = (
    "name",
    "type",
    "key_size",
    "value_size",
    "max_entries",
    "flags",
    "pinning",
    "map_extra",
    "numa_node",
    "freeze",
    "section",
    "btf",
    "extra",
    "key",
    "value",
    "btf_value_type",
    "inner",
    "contents",
    "struct_ops",
)
_MAP_SCALARS = (str, int, int, int, int, int, int, int, int, bool, str, bool)
PROGRAM_FIELDS = (
    "key",
    "name",
    "type",
    "section",
    "license",
    "kernel_version",
    "flags",
    "attach_to",
    "autoload",
    "known_section",
    "btf",
    "attach_type",
    "insns",
    "line_infos",
    "refs",
    "func_infos",
    "core_relos",
    "unresolved",
)
_PROGRAM_SCALARS = (str, str, int, str, str, int, int, str, bool, bool, bool)
VARIABLE_FIELDS = ("key", "name", "section", "offset", "size", "linkage", "type")
_VARIABLE_SCALARS = (str, str, str, int, int, str)
_HEAD = struct.Struct("<II")

E = TypeVar("E")


class _Unrepresentable(Exception):
    pass


# ---------------------------------------------------------------------------- encode


class _Writer:
    def __init__(self, btf: _btf.Spec | None) -> None:
        self.btf = btf
        self.strings: dict[str, int] = {}  # of the marshalled btf the entry holds
        self.blobs: list[bytes] = []
        self.size = 0

    def raw(self, data: bytes | bytearray) -> list[int]:
        ref = [self.size, len(data)]
        self.blobs.append(bytes(data))
        self.size += len(data)
        return ref

    def tid(self, t: _btf.Type | None) -> int | None:
        if t is None:
            return None
        if self.btf is None:
            raise _Unrepresentable
        try:
            return self.btf.type_id(t)
        except BTFError as err:
            raise _Unrepresentable from err

    def same_btf(self, b: _btf.Spec | None) -> bool:
        if b is None:
            return False
        if b is not self.btf:
            raise _Unrepresentable
        return True


def encode(spec: CollectionSpec) -> bytes | None:
    """``spec`` in the persisted format, or None if it cannot be represented exactly."""
    w = _Writer(spec.btf)
    try:
        doc: dict[str, Any] = {"btf": None}
        if spec.btf is not None:
            blob, w.strings = spec.btf.marshal(_extra_strings(spec))
            doc["btf"] = w.raw(blob)
        doc["maps"] = [_map(w, m) for m in spec.maps.values()]
        if list(spec.maps) != [m.name for m in spec.maps.values()]:
            raise _Unrepresentable
        doc["programs"] = [_program(w, name, p) for name, p in spec.programs.items()]
        variables = []
        for key, var in spec.variables.items():
            if spec.maps.get(var.section) is not var._map:
                raise _Unrepresentable
            variables.append(  # VARIABLE_FIELDS
                [key, var.name, var.section, var.offset, var.size, var.linkage, w.tid(var.type)]
            )
        doc["variables"] = variables
        doc["externs"] = [_extern(w, k, e) for k, e in spec.externs.items()]
        if spec.map_replacements:
            raise _Unrepresentable  # live maps: nothing a file can hold
    except (_Unrepresentable, BTFError, KeyError):
        return None
    text = json.dumps(doc, separators=(",", ":")).encode()
    return _HEAD.pack(VERSION, len(text)) + text + b"".join(w.blobs)


def _extra_strings(spec: CollectionSpec) -> frozenset[str]:
    # what Collection._btf marshals with
    return frozenset().union(
        *(_btf_ext.line_strings(p.held_line_infos()) for p in spec.programs.values())
    )


def _value(w: _Writer, v: bytes | bytearray | str | int) -> list[Any]:
    if isinstance(v, str):
        return ["s", v]
    if isinstance(v, int):
        return ["i", v]
    return ["a" if isinstance(v, bytearray) else "b", w.raw(v)]


def _map(w: _Writer, m: MapSpec) -> list[Any]:
    if type(m) is not MapSpec:
        raise _Unrepresentable
    return [  # MAP_FIELDS
        m.name,
        int(m.type),
        m.key_size,
        m.value_size,
        m.max_entries,
        m.flags,
        int(m.pinning),
        m.map_extra,
        m.numa_node,
        m.freeze,
        m.section,
        w.same_btf(m.btf),
        w.raw(m.extra),
        w.tid(m.key),
        w.tid(m.value),
        w.tid(m.btf_value_type),
        None if m.inner_map is None else _map(w, m.inner_map),
        [[_value(w, e.key), _value(w, e.value)] for e in m.contents],
        None if m.struct_ops is None else _struct_ops(w, m.struct_ops),
    ]


def _struct_ops(w: _Writer, ops: StructOpsSpec) -> list[Any]:
    return [w.tid(ops.type), w.raw(ops.data), dict(ops.funcs), ops.link]


def _program(w: _Writer, name: str, p: ProgramSpec) -> list[Any]:
    if type(p) is not ProgramSpec:
        raise _Unrepresentable
    refs = [[slot, r.kind.value, r.name, r.offset] for slot, r in p.instructions.references.items()]
    return [  # PROGRAM_FIELDS
        name,
        p.name,
        int(p.type),
        p.section,
        p.license,
        p.kernel_version,
        int(p.flags),
        p.attach_to,
        p.autoload,
        p.known_section,
        w.same_btf(p.btf),
        None if p.attach_type is None else int(p.attach_type),
        w.raw(p.instructions.raw),
        # the records BPF_PROG_LOAD takes, against the marshalled btf's strings (a
        # KeyError without btf: not representable), stored little-endian
        w.raw(_line_records(w, p)),
        refs,
        [[fi.insn, w.tid(fi.func)] for fi in p.func_infos],
        [[r.insn, w.tid(r.type), r.access, int(r.kind)] for r in p.core_relos],
        [[u.insn, u.reason, u.symbol, u.function] for u in p.unresolved],
    ]


def _line_records(w: _Writer, p: ProgramSpec) -> bytes:
    """``p``'s line info as the records BPF_PROG_LOAD takes, against the marshalled btf's
    strings (a KeyError without btf: not representable), little-endian. Records that
    would not read back (instructions out of order, or past what a u32 byte offset
    holds) are not representable."""
    held = p.held_line_infos()
    if not len(held):
        return b""
    records = _btf_ext.encoded_line_infos(held, w.strings)
    insns = array("I", records)[0::4]
    if list(insns) != sorted(insns) or max(insns) >= (1 << 32) // _btf_ext.INSN_SIZE:
        raise _Unrepresentable
    return _btf_ext.little_endian(records)


def _extern(w: _Writer, key: str, e: ExternSpec) -> list[Any]:
    return [key, e.name, e.kind.value, w.tid(e.type), e.weak, e.offset, e.size]


# ---------------------------------------------------------------------------- decode


class _Reader:
    def __init__(self, raw: memoryview, btf: _btf.Spec | None) -> None:
        self.rawview = raw
        self.btf = btf
        self.ids = 0  # the type ids the btf has are below this (void, 0, is one)
        # each program's line info as read and its records in the kernel's byte order
        self.line_records: list[tuple[_btf_ext.LazyLineInfos, bytes, set[int]]] = []

    def raw(self, ref: object) -> bytes:
        if not (isinstance(ref, list) and len(ref) == 2):
            raise SpecFileError("bad byte reference")
        off, n = ref
        if type(off) is not int or type(n) is not int:  # one test for both, as a rule
            off, n = _int(off), _int(n)
        if off < 0 or n < 0 or off + n > len(self.rawview):
            raise SpecFileError("byte reference out of range")
        return bytes(self.rawview[off : off + n])

    def type_of(self, tid: object) -> _btf.Type | None:
        if tid is None:
            return None
        if self.btf is None:
            raise SpecFileError("a type id without btf")
        return self.btf.type_by_id(_int(tid))

    def lazy(self, tid: object, kind: _btf.Kind | None = None) -> _btf.Type | None:
        """Type ``tid`` held by id, decoded on first read (as the ELF reader keeps it): its
        id (and ``kind``) are checked now without decoding it."""
        if tid is None:
            return None
        if self.btf is None:
            raise SpecFileError("a type id without btf")
        tid = _int(tid)
        if not 0 <= tid < self.ids:
            raise SpecFileError(f"btf: no type with id {tid}")
        if kind is not None and self.btf.kind_of(tid) != kind:
            raise SpecFileError(f"type {tid} is not a {kind.name.lower()}")
        return cast(_btf.Type, _Lazy(self.btf, tid))

    def typed(self, tid: object, cls: type[E]) -> E:
        t = self.type_of(tid)
        if not isinstance(t, cls):
            raise SpecFileError(f"type {tid} is not a {cls.__name__}")
        return t

    def btf_of(self, flag: object) -> _btf.Spec | None:
        if _bool(flag):
            if self.btf is None:
                raise SpecFileError("btf flag without btf")
            return self.btf
        return None


def _int(v: object) -> int:
    if type(v) is not int:
        raise SpecFileError(f"expected an integer, got {type(v).__name__}")
    return v


def _str(v: object) -> str:
    if type(v) is not str:
        raise SpecFileError(f"expected a string, got {type(v).__name__}")
    return v


def _bool(v: object) -> bool:
    if type(v) is not bool:
        raise SpecFileError(f"expected a boolean, got {type(v).__name__}")
    return v


def _list(v: object, n: int | None = None) -> list[Any]:
    if not isinstance(v, list) or (n is not None and len(v) != n):
        raise SpecFileError("expected a list" + (f" of {n}" if n is not None else ""))
    return v


_REF_ROW = (int, str, str, int)  # slot, kind, name, offset
_UNRESOLVED_ROW = (int, str, str, str)  # insn, reason, symbol, function
_FUNC_INFO_ROW = (int, int)  # insn, type id
_REF_KINDS = {k.value: k for k in RefKind}  # a KeyError for another: the entry is refused


def _rows(v: object, types: tuple[type, ...]) -> list[list[Any]]:
    """``v`` as a list of rows, each a list of values of exactly ``types`` (one C-level
    check per row: the many small records of a program are decoded at that cost)."""
    rows = _list(v)
    for row in rows:
        if type(row) is not list or tuple(map(type, row)) != types:
            want = ", ".join(t.__name__ for t in types)
            raise SpecFileError(f"expected rows of [{want}], got {row!r:.60}")
    return rows


def _fields(v: object, names: tuple[str, ...], types: tuple[type, ...]) -> list[Any]:
    """``v`` as a row of ``len(names)`` fields whose first ``len(types)`` have exactly those
    types (checked in one go; field by field only to say which one is wrong)."""
    row = _list(v, len(names))
    if tuple(map(type, row[: len(types)])) != types:
        for field, value, t in zip(names, row, types, strict=False):
            if type(value) is not t:
                kind = {int: "an integer", str: "a string", bool: "a boolean"}[t]
                raise SpecFileError(f"{field}: expected {kind}, got {type(value).__name__}")
    return row


def _dict(v: object) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise SpecFileError("expected an object")
    return v


def decode(data: bytes, *, name: str = "", path: str = "") -> CollectionSpec:
    """The spec ``data`` holds (see the module); :class:`SpecFileError` if it is damaged
    or of another version."""
    try:
        return _decode(data, name, path)
    except SpecFileError:
        raise
    except (BTFError, ValueError, KeyError, TypeError, IndexError, RecursionError) as err:
        raise SpecFileError(f"{type(err).__name__}: {err}") from err


def _decode(data: bytes, name: str, path: str) -> CollectionSpec:
    if len(data) < _HEAD.size:
        raise SpecFileError("truncated")
    version, n = _HEAD.unpack_from(data)
    if version != VERSION:
        raise SpecFileError(f"version {version}, not {VERSION}")
    if _HEAD.size + n > len(data):
        raise SpecFileError("truncated")
    # as text: json.loads would otherwise detect the encoding of bytes in Python
    doc = _dict(json.loads(data[_HEAD.size : _HEAD.size + n].decode()))
    r = _Reader(memoryview(data)[_HEAD.size + n :], None)
    btf: _btf.Spec | None = None
    if doc["btf"] is not None:
        blob = r.raw(doc["btf"])
        btf = _btf.Spec.parse(blob)
        r.btf, r.ids = btf, len(btf) + 1  # its types and void
    maps: dict[str, MapSpec] = {}
    for m in _list(doc["maps"]):
        spec = _read_map(r, m)
        if spec.name in maps:
            raise SpecFileError(f"map {spec.name} twice")
        maps[spec.name] = spec
    programs: dict[str, ProgramSpec] = {}
    for p in _list(doc["programs"]):
        key, prog = _read_program(r, p)
        programs[key] = prog
    variables: dict[str, VariableSpec] = {}
    for v in _list(doc["variables"]):
        key, vname, section, offset, size, linkage, tid = _fields(
            v, VARIABLE_FIELDS, _VARIABLE_SCALARS
        )
        owner = maps.get(section)
        if owner is None:
            raise SpecFileError(f"variable {key}: no map {section}")
        variables[key] = VariableSpec(vname, owner, offset, size, r.lazy(tid), linkage)
    externs: dict[str, ExternSpec] = {}
    if doc["externs"]:
        from orchestrator.ebpf.externs import ExternKind, ExternSpec

        for e in _list(doc["externs"]):
            key, ename, kind, tid, weak, offset, size = _list(e, 7)
            t = r.type_of(tid)
            if t is None:
                raise SpecFileError(f"extern {key}: no type")
            externs[_str(key)] = ExternSpec(
                _str(ename), ExternKind(kind), t, _bool(weak), _int(offset), _int(size)
            )
    out = CollectionSpec(maps, programs, variables, btf, name=name, path=path, externs=externs)
    if btf is not None:
        # the blob is what marshal gave for the strings a load needs: reuse it as such
        extra = _extra_strings(out)
        by_off = btf._str_cache  # an object's (small) string table, split whole on first use
        if len(by_off) == 0:
            by_off = _btf_decode.split_strings(btf._strtab, 0)
        strings = dict(zip(by_off.values(), by_off.keys(), strict=True))  # the last offset
        if not extra <= strings.keys():
            raise SpecFileError("btf: line info strings are missing")
        btf._marshalled[extra] = (blob, strings)
        # the records are already encoded against these strings where each string offset
        # in them is the one the map gives (a table may hold a string twice)
        given = set(strings.values())
        for held, native, offsets in r.line_records:
            if offsets <= given:
                held.encoded_as(strings, native)
    return out


def _read_value(r: _Reader, v: object) -> bytes | bytearray | str | int:
    tag, body = _list(v, 2)
    if tag == "s":
        return _str(body)
    if tag == "i":
        return _int(body)
    if tag == "b":
        return r.raw(body)
    if tag == "a":
        return bytearray(r.raw(body))
    raise SpecFileError(f"bad value tag {tag!r}")


def _read_map(r: _Reader, row: object) -> MapSpec:
    (
        name,
        mtype,
        key_size,
        value_size,
        max_entries,
        flags,
        pinning,
        map_extra,
        numa_node,
        freeze,
        section,
        btf,
        extra,
        key,
        value,
        btf_value_type,
        inner,
        contents,
        struct_ops,
    ) = _fields(row, MAP_FIELDS, _MAP_SCALARS)
    entries = []
    for kv in _list(contents):
        k, v = _list(kv, 2)
        ekey = _read_value(r, k)
        evalue = _read_value(r, v)
        if isinstance(ekey, str | bytearray) or isinstance(evalue, int):
            raise SpecFileError("bad map entry")
        entries.append(MapEntry(ekey, evalue))
    map_type = MAP_TYPE_BY_VALUE.get(mtype)
    pin_type = PIN_TYPE_BY_VALUE.get(pinning)
    if map_type is None or pin_type is None:
        raise SpecFileError(f"map {name}: unknown type {mtype} or pinning {pinning}")
    ops = None
    if struct_ops is not None:
        from orchestrator.ebpf.link.struct_ops import StructOpsSpec

        tid, data, funcs, link = _list(struct_ops, 4)
        funcs = {_str(k): _str(v) for k, v in _dict(funcs).items()}
        ops = StructOpsSpec(r.typed(tid, _btf.Struct), r.raw(data), funcs, _bool(link))
    return MapSpec(
        name,
        map_type,
        key_size,
        value_size,
        max_entries,
        flags,
        pin_type,
        None if inner is None else _read_map(r, inner),
        entries,
        r.lazy(key),
        r.lazy(value),
        map_extra,
        numa_node,
        r.raw(extra),
        freeze,
        section,
        r.btf_of(btf),
        r.lazy(btf_value_type),
        ops,
    )


def _read_program(r: _Reader, row: object) -> tuple[str, ProgramSpec]:
    (
        key,
        name,
        ptype,
        section,
        license_,
        kernel_version,
        flags,
        attach_to,
        autoload,
        known_section,
        btf,
        attach,
        insns,
        line_infos_ref,
        refs_rows,
        func_info_rows,
        core_relos,
        unresolved_rows,
    ) = _fields(row, PROGRAM_FIELDS, _PROGRAM_SCALARS)
    refs = {
        slot: Reference(_REF_KINDS[kind], rname, offset)
        for slot, kind, rname, offset in _rows(refs_rows, _REF_ROW)
    }
    func_infos = []
    for insn, tid in _rows(func_info_rows, _FUNC_INFO_ROW):
        func = cast(_btf.Func, r.lazy(tid, _btf.Kind.FUNC))
        func_infos.append(_btf_ext.FuncInfo(insn, func))
    line_infos: tuple[_btf_ext.LineInfo, ...] | _btf_ext.LazyLineInfos = ()
    records = r.raw(line_infos_ref)
    if records:
        if r.btf is None:
            raise SpecFileError("line info without btf")
        held = _btf_ext.kernel_line_infos(records, r.btf)
        if held is None:
            raise SpecFileError("bad line info records")
        line_infos = held[0]
        r.line_records.append(held)
    relos = []
    for cr in _list(core_relos):
        insn, tid, access, kind = _list(cr, 4)
        t = r.type_of(tid)
        if t is None:
            raise SpecFileError("core relocation without a type")
        relos.append(
            _btf_ext.CORERelo(_int(insn), t, _str(access), _btf_ext.COREReloKind(_int(kind)))
        )
    unresolved = [Unresolved(*u) for u in _rows(unresolved_rows, _UNRESOLVED_ROW)]
    prog_type = PROG_TYPE_BY_VALUE.get(ptype)
    attach_type = None if attach is None else ATTACH_TYPE_BY_VALUE.get(_int(attach))
    if prog_type is None or (attach is not None and attach_type is None):
        raise SpecFileError(f"program {key}: unknown type {ptype} or attach type {attach}")
    prog = ProgramSpec(
        name,
        prog_type,
        attach_type,
        section,
        Instructions(r.raw(insns), refs),
        license_,
        kernel_version,
        ProgFlags(flags),
        attach_to,
        autoload,
        known_section,
        tuple(func_infos),
        # a LazyLineInfos is held as is: ProgramSpec.line_infos builds it on first read
        cast("tuple[_btf_ext.LineInfo, ...]", line_infos),
        tuple(relos),
        r.btf_of(btf),
        tuple(unresolved),
    )
    return key, prog
