""".BTF.ext: function info, line info and CO-RE relocations, per ELF section.

Layout (``struct btf_ext_header`` in the kernel's ``tools/lib/bpf/libbpf_internal.h``,
documented in ``Documentation/bpf/btf.rst``): a header with the offset and length of each
subsection, relative to the end of the header. Each subsection starts with the size of one
record, followed by blocks of ``{u32 sec_name_off; u32 num_info; record[num_info]}``. The
record size may be larger than the struct we know (newer compilers); the extra bytes are
skipped. Instruction offsets in the file are in bytes; here they are instruction indices.
"""

from __future__ import annotations

import enum
import struct
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import cast

from orchestrator.ebpf.btf import Func, Kind, Spec, Type, describe
from orchestrator.ebpf.btf.types import _Lazy
from orchestrator.ebpf.errors import BTFError

__all__ = [
    "CORERelo",
    "COREReloKind",
    "Ext",
    "FuncInfo",
    "LazyLineInfos",
    "LineInfo",
    "RawLineInfos",
    "encode_func_infos",
    "encode_line_infos",
    "encoded_func_infos",
    "encoded_line_infos",
    "kernel_line_infos",
    "line_strings",
    "little_endian",
    "parse_ext",
]

BTF_MAGIC = 0xEB9F
INSN_SIZE = 8
_HEADER = struct.Struct("<HBBIIIII")  # magic..line_info_len: the 1st version of the header
_CORE = struct.Struct("<II")  # core_relo_off, core_relo_len (hdr_len >= 32)
_U32 = struct.Struct("<I")
_FUNC_INFO = struct.Struct("=II")  # struct bpf_func_info (native order, for the kernel)
_LINE_INFO = struct.Struct("=IIII")  # struct bpf_line_info

_MIN_FUNC_INFO = 8
_MIN_LINE_INFO = 16
_MIN_CORE_RELO = 16

# BPF_LINE_INFO_LINE_NUM / BPF_LINE_INFO_LINE_COL in linux/bpf.h
_COL_BITS = 10
_COL_MASK = (1 << _COL_BITS) - 1


class COREReloKind(enum.IntEnum):
    """``enum bpf_core_relo_kind`` from ``linux/bpf.h``."""

    FIELD_BYTE_OFFSET = 0
    FIELD_BYTE_SIZE = 1
    FIELD_EXISTS = 2
    FIELD_SIGNED = 3
    FIELD_LSHIFT_U64 = 4
    FIELD_RSHIFT_U64 = 5
    TYPE_ID_LOCAL = 6
    TYPE_ID_TARGET = 7
    TYPE_EXISTS = 8
    TYPE_SIZE = 9
    ENUMVAL_EXISTS = 10
    ENUMVAL_VALUE = 11
    TYPE_MATCHES = 12


@dataclass
class FuncInfo:
    """The BTF function at instruction ``insn`` (an index, not a byte offset).

    ``func`` may be held as a type id (what :func:`parse_ext` stores) and is decoded on
    first read; :meth:`type_id_in` gives the id without decoding it."""

    insn: int
    func: Func

    def type_id_in(self, spec: Spec) -> int:
        """The func's id in ``spec``."""
        held = self.__dict__["_func"]
        if type(held) is _Lazy and held.spec is spec:
            return held.tid
        return spec.type_id(self.func)

    def at(self, insn: int) -> FuncInfo:
        """The same func at another instruction (kept by id if it is)."""
        return FuncInfo(insn, self.__dict__["_func"])


def _get_func(self: FuncInfo) -> Func:
    held = self.__dict__["_func"]
    if type(held) is _Lazy:
        held = held.get()
        self.__dict__["_func"] = held
    return held  # type: ignore[no-any-return]


def _set_func(self: FuncInfo, value: Func | _Lazy) -> None:
    self.__dict__["_func"] = value


setattr(FuncInfo, "func", property(_get_func, _set_func))  # noqa: B010


@dataclass(slots=True)
class LineInfo:
    """The source line for the instructions starting at ``insn``."""

    insn: int
    file_name: str
    line: str
    line_number: int
    column: int


@dataclass(frozen=True, slots=True, eq=False)
class RawLineInfos:
    """One ELF section's line info records as parsed, checked whole at parse time (every
    instruction offset aligned, every string offset in the table) and in instruction
    order: :meth:`decode` builds the :class:`LineInfo` of a range only when a program's
    line info is read. Columns of the records: byte offset of the instruction, file name
    and line string offsets, and line/column."""

    spec: Spec
    offsets: array[int]  # ascending
    files: array[int]
    lines: array[int]
    line_cols: array[int]

    def rows(self, lo: int, hi: int, delta: int) -> Iterator[tuple[int, str, str, int]]:
        """Records ``lo`` to ``hi`` (by index) as (instruction, file name, line text,
        line/column), their instructions moved by ``delta``."""
        strs, string = self.spec._str_cache, self.spec.string
        for byte_off, file_off, line_off, line_col in zip(
            self.offsets[lo:hi],
            self.files[lo:hi],
            self.lines[lo:hi],
            self.line_cols[lo:hi],
            strict=True,
        ):
            file_name = strs.get(file_off)
            if file_name is None:
                file_name = string(file_off)
            line = strs.get(line_off)
            if line is None:
                line = string(line_off)
            yield byte_off // INSN_SIZE + delta, file_name, line, line_col

    def decode(self, lo: int, hi: int, delta: int) -> list[LineInfo]:
        """The :class:`LineInfo` of records ``lo`` to ``hi`` (see :meth:`rows`)."""
        return [
            LineInfo(insn, file_name, line, line_col >> _COL_BITS, line_col & _COL_MASK)
            for insn, file_name, line, line_col in self.rows(lo, hi, delta)
        ]


# low bytes of the byte offsets that are multiples of the instruction size
_ALIGNED = bytes(range(0, 256, INSN_SIZE))


def _raw_lines(chunk: memoryview, rec_size: int, spec: Spec) -> RawLineInfos | None:
    """The records of one section block kept raw, or None when they need the record by
    record reading (for its error message, or to sort them): a misaligned instruction
    offset, a string offset outside the table, records out of order, a spec on a base."""
    if spec._base is not None or spec._str_start != 0:
        return None
    if bytes(chunk[::rec_size]).translate(None, _ALIGNED):  # the offsets' low bytes
        return None
    words: array[int] = array("I")
    words.frombytes(chunk)
    if sys.byteorder == "big":
        words.byteswap()  # the records are little-endian
    step = rec_size // 4
    offsets, files, lines = words[0::step], words[1::step], words[2::step]
    end = len(spec._strtab)
    if max(files, default=0) >= end or max(lines, default=0) >= end:
        return None
    if list(offsets) != sorted(offsets):
        return None
    return RawLineInfos(spec, offsets, files, lines, words[3::step])


def kernel_line_infos(data: bytes, spec: Spec) -> tuple[LazyLineInfos, bytes, set[int]] | None:
    """``struct bpf_line_info[]`` as :func:`encode_line_infos` writes them (instruction
    indices, string offsets into ``spec``'s own table) but little-endian, held as parsed
    records, the same records in the kernel's (native) byte order and the string offsets
    they use; or None if they
    are not well formed: a partial record, a string offset outside the table, an
    instruction out of range or out of order, a spec on a base."""
    if spec._base is not None or spec._str_start != 0 or len(data) % _LINE_INFO.size:
        return None
    words: array[int] = array("I")
    words.frombytes(data)
    if sys.byteorder == "big":
        words.byteswap()  # the records are little-endian
    step = _LINE_INFO.size // 4
    insns, files, lines = words[0::step], words[1::step], words[2::step]
    end = len(spec._strtab)
    if max(files, default=0) >= end or max(lines, default=0) >= end:
        return None
    if max(insns, default=0) >= (1 << 32) // INSN_SIZE or list(insns) != sorted(insns):
        return None
    offsets = array("I", [i * INSN_SIZE for i in insns])
    raw = RawLineInfos(spec, offsets, files, lines, words[3::step])
    return LazyLineInfos([(raw, 0, len(insns), 0)]), words.tobytes(), {*files, *lines}


def little_endian(records: bytes) -> bytes:
    """Records of 32-bit words in the kernel's (native) byte order, little-endian."""
    if sys.byteorder == "little":
        return records
    words: array[int] = array("I")
    words.frombytes(records)
    words.byteswap()
    return words.tobytes()


class LazyLineInfos:
    """A program's line info, held as ranges of parsed records (see :class:`RawLineInfos`)
    and built on first read (:meth:`get`, what ``ProgramSpec.line_infos`` returns): the
    same tuple on every read, so what is memoized by it stays valid."""

    __slots__ = ("_encoded", "_parts", "_strings", "_value")

    def __init__(self, parts: list[tuple[RawLineInfos, int, int, int] | list[LineInfo]]) -> None:
        self._parts = parts  # (records, lo, hi, delta) or records already built
        self._value: tuple[LineInfo, ...] | None = None
        self._strings: frozenset[str] | None = None
        self._encoded: tuple[dict[str, int], bytes] | None = None

    def __len__(self) -> int:
        return sum(len(p) if isinstance(p, list) else p[2] - p[1] for p in self._parts)

    def strings(self) -> frozenset[str]:
        """:func:`line_strings` of the records, read from their string offsets (each
        distinct one decoded once), memoized."""
        found = self._strings
        if found is None:
            names: set[str] = set()
            for part in self._parts:
                if isinstance(part, list):
                    names.update(li.file_name for li in part)
                    names.update(li.line for li in part)
                    continue
                raw, lo, hi = part[0], part[1], part[2]
                strs, string = raw.spec._str_cache, raw.spec.string
                for off in set(raw.files[lo:hi]) | set(raw.lines[lo:hi]):
                    text = strs.get(off)
                    names.add(text if text is not None else string(off))
            found = self._strings = frozenset(names)
        return found

    def encoded(self, strings: dict[str, int]) -> bytes:
        """:func:`encode_line_infos` of the records against a marshalled string map (the
        same bytes), encoded from the parsed records without building them; memoized for
        the last ``strings``."""
        hit = self._encoded
        if hit is not None and hit[0] is strings:
            return hit[1]
        out = bytearray()
        pack = _LINE_INFO.pack
        for part in self._parts:
            if isinstance(part, list):
                out += encode_line_infos(part, strings)
                continue
            raw, lo, hi, delta = part
            try:
                for insn, file_name, line, line_col in raw.rows(lo, hi, delta):
                    out += pack(insn, strings[file_name], strings[line], line_col)
            except KeyError:  # a string marshal was not given: the message names it
                encode_line_infos(raw.decode(lo, hi, delta), strings)  # raises
                raise
        data = bytes(out)
        self._encoded = (strings, data)
        return data

    def encoded_as(self, strings: dict[str, int], data: bytes) -> None:
        """Remember ``data`` as what :meth:`encoded` returns for ``strings`` (the caller
        knows it is: the records were read from those very bytes and every string offset
        in them is the one ``strings`` gives for its string)."""
        self._encoded = (strings, data)

    def get(self) -> tuple[LineInfo, ...]:
        value = self._value
        if value is None:
            out: list[LineInfo] = []
            for part in self._parts:
                if isinstance(part, list):
                    out += part
                else:
                    raw, lo, hi, delta = part
                    out += raw.decode(lo, hi, delta)
            value = self._value = tuple(out)
        return value


@dataclass(slots=True)
class CORERelo:
    """A CO-RE relocation of instruction ``insn`` against ``type`` via ``access``
    (``"0:1:2"``: indices of members/elements, or an enumerator index)."""

    insn: int
    type: Type
    access: str
    kind: COREReloKind


@dataclass(slots=True)
class Ext:
    """The parsed .BTF.ext section; each dict is keyed by ELF section name."""

    func_infos: dict[str, list[FuncInfo]] = field(default_factory=dict)
    line_infos: dict[str, list[LineInfo]] = field(default_factory=dict)
    core_relos: dict[str, list[CORERelo]] = field(default_factory=dict)
    # with parse_ext(raw_lines=True): sections whose line info is kept as parsed (not
    # in line_infos)
    raw_line_infos: dict[str, RawLineInfos] = field(default_factory=dict)


def parse_ext(data: bytes, spec: Spec, *, raw_lines: bool = False) -> Ext:
    """Parse a little-endian .BTF.ext section; type ids and strings refer to ``spec``.
    ``raw_lines``: a section's line info records that check out whole are kept as parsed
    in ``raw_line_infos`` (the others are read record by record, with the same errors)."""
    view = memoryview(data)
    if len(view) < _HEADER.size:
        raise BTFError(f"btf.ext: {len(view)} bytes is too short for a header")
    magic, version, _flags, hdr_len, fi_off, fi_len, li_off, li_len = _HEADER.unpack_from(view)
    if magic == 0x9FEB:
        raise BTFError("btf.ext: big-endian .BTF.ext is not supported")
    if magic != BTF_MAGIC:
        raise BTFError(f"btf.ext: bad magic {magic:#06x}")
    if version != 1:
        raise BTFError(f"btf.ext: unsupported version {version}")
    if hdr_len < _HEADER.size or hdr_len > len(view):
        raise BTFError(f"btf.ext: bad header length {hdr_len}")
    cr_off = cr_len = 0
    if hdr_len >= _HEADER.size + _CORE.size:
        cr_off, cr_len = _CORE.unpack_from(view, _HEADER.size)
    body = view[hdr_len:]
    ext = Ext()

    kind_of, func_kind = spec.kind_of, Kind.FUNC
    for name, pairs in _blocks(body, spec, fi_off, fi_len, _MIN_FUNC_INFO, "func info", _PAIR):
        funcs = ext.func_infos.setdefault(name, [])
        for byte_off, type_id in pairs:
            if type_id == 0 or kind_of(type_id) != func_kind:
                func = spec.type_by_id(type_id)
                if not isinstance(func, Func):
                    raise BTFError(f"btf.ext: func info in {name}: {describe(func)} is not a func")
            held = cast(Func, _Lazy(spec, type_id))  # decoded on first read of .func
            funcs.append(FuncInfo(_insn(byte_off, name), held))

    # Strings come from the spec's cache (those read so far; the rest through string());
    # a line info is one C-level unpack and one object.
    string, strs, new_line = spec.string, spec._strs, LineInfo
    raws = ext.raw_line_infos
    for name, pos, count, rec_size in _sections(
        body, spec, li_off, li_len, _MIN_LINE_INFO, "line info"
    ):
        chunk = body[pos : pos + count * rec_size]
        if raw_lines and name not in raws and name not in ext.line_infos:
            raw = _raw_lines(chunk, rec_size, spec)
            if raw is not None:
                raws[name] = raw
                continue
        if name in raws:  # a second block of the section: read both record by record
            earlier = raws.pop(name)
            ext.line_infos[name] = earlier.decode(0, len(earlier.offsets), 0)
        lines = ext.line_infos.setdefault(name, [])
        if rec_size == _QUAD.size:
            block: Iterable[tuple[int, ...]] = _QUAD.iter_unpack(chunk)
        else:
            block = (_QUAD.unpack_from(chunk, i) for i in range(0, len(chunk), rec_size))
        append = lines.append
        for byte_off, file_off, line_off, line_col in block:
            if byte_off % INSN_SIZE:
                _insn(byte_off, name)  # raises
            file_name = strs.get(file_off)
            if file_name is None:
                file_name = string(file_off)
            line = strs.get(line_off)
            if line is None:
                line = string(line_off)
            append(
                new_line(
                    byte_off // INSN_SIZE,
                    file_name,
                    line,
                    line_col >> _COL_BITS,
                    line_col & _COL_MASK,
                )
            )

    for rec_off, name in _records(body, spec, cr_off, cr_len, _MIN_CORE_RELO, "core relo"):
        byte_off, type_id, access_off, kind = struct.unpack_from("<IIII", body, rec_off)
        try:
            relo_kind = COREReloKind(kind)
        except ValueError:
            raise BTFError(f"btf.ext: core relo in {name}: unknown kind {kind}") from None
        ext.core_relos.setdefault(name, []).append(
            CORERelo(
                _insn(byte_off, name), spec.type_by_id(type_id), spec.string(access_off), relo_kind
            )
        )
    return ext


def _insn(byte_off: int, section: str) -> int:
    if byte_off % INSN_SIZE:
        raise BTFError(f"btf.ext: {section}: offset {byte_off} is not at an instruction")
    return byte_off // INSN_SIZE


def _sections(
    body: memoryview, spec: Spec, off: int, length: int, min_size: int, what: str
) -> Iterator[tuple[str, int, int, int]]:
    """Yield (ELF section name, offset of its first record, record count, record size) for
    every section block of one subsection, after checking every bound."""
    if length == 0:
        return
    end = off + length
    if end > len(body) or length < 4:
        raise BTFError(f"btf.ext: {what} subsection ({off}+{length}) out of bounds")
    (rec_size,) = _U32.unpack_from(body, off)
    if rec_size < min_size or rec_size % 4:
        raise BTFError(f"btf.ext: {what} record size {rec_size} is invalid")
    pos = off + 4
    while pos < end:
        if pos + 8 > end:
            raise BTFError(f"btf.ext: {what}: truncated section header")
        name_off, count = struct.unpack_from("<II", body, pos)
        pos += 8
        if count * rec_size > end - pos:
            raise BTFError(f"btf.ext: {what}: {count} records overrun the subsection")
        yield spec.string(name_off), pos, count, rec_size
        pos += count * rec_size


def _records(
    body: memoryview, spec: Spec, off: int, length: int, min_size: int, what: str
) -> Iterator[tuple[int, str]]:
    """Yield (offset in body, ELF section name) for every record of one subsection."""
    for name, pos, count, rec_size in _sections(body, spec, off, length, min_size, what):
        for i in range(count):
            yield pos + i * rec_size, name


def _blocks(
    body: memoryview,
    spec: Spec,
    off: int,
    length: int,
    min_size: int,
    what: str,
    fields: struct.Struct,
) -> Iterator[tuple[str, Iterable[tuple[int, ...]]]]:
    """Like :func:`_records`, a block (one ELF section) at a time, as the first ``fields``
    of each record: decoded by ``struct`` in C instead of one call per record."""
    for name, pos, count, rec_size in _sections(body, spec, off, length, min_size, what):
        chunk = body[pos : pos + count * rec_size]
        if rec_size == fields.size:
            yield name, fields.iter_unpack(chunk)
        else:
            yield name, (fields.unpack_from(chunk, i) for i in range(0, len(chunk), rec_size))


_PAIR = struct.Struct("<II")
_QUAD = struct.Struct("<IIII")


def encode_func_infos(
    infos: Iterable[FuncInfo], spec_type_id: Callable[[Type], int], base_insn: int = 0
) -> bytes:
    """``struct bpf_func_info[]`` for BPF_PROG_LOAD: ``insn_off`` in instructions
    (``base_insn + info.insn``) and the func's type id in the loaded BTF."""
    return _encode_func_infos(infos, lambda fi: spec_type_id(fi.func), base_insn)


def _encode_func_infos(
    infos: Iterable[FuncInfo], spec_type_id: Callable[[FuncInfo], int], base_insn: int = 0
) -> bytes:
    out = bytearray()
    for fi in infos:
        insn = base_insn + fi.insn
        if not 0 <= insn < 1 << 32:
            raise BTFError(f"func info {fi.func.name}: instruction {insn} out of range")
        out += _FUNC_INFO.pack(insn, spec_type_id(fi))
    return bytes(out)


def encode_line_infos(
    infos: Iterable[LineInfo], strings: dict[str, int], base_insn: int = 0
) -> bytes:
    """``struct bpf_line_info[]`` for BPF_PROG_LOAD. ``strings`` is the map returned by
    :meth:`Spec.marshal` (which must have been given the file names and lines)."""
    out = bytearray()
    for li in infos:
        insn = base_insn + li.insn
        if not 0 <= insn < 1 << 32:
            raise BTFError(
                f"line info {li.file_name}:{li.line_number}: instruction {insn} out of range"
            )
        try:
            file_off = strings[li.file_name]
            line_off = strings[li.line]
        except KeyError as err:
            raise BTFError(
                f"line info {li.file_name}:{li.line_number}: string {err.args[0]!r} is not "
                "in the btf (pass it to marshal's extra_strings)"
            ) from err
        if not 0 <= li.column <= _COL_MASK or not 0 <= li.line_number < 1 << (32 - _COL_BITS):
            raise BTFError(f"line info {li.file_name}:{li.line_number}:{li.column}: out of range")
        out += _LINE_INFO.pack(insn, file_off, line_off, (li.line_number << _COL_BITS) | li.column)
    return bytes(out)


# ---------------------------------------------------------------------------- memo
#
# Specs handed out by the spec cache (and their copies) share their record tuples, and a
# spec's marshalled BTF is cached (its string map is then the same object on every load):
# the encoded records of a program only need computing once. Entries are keyed by the
# identity of their inputs and keep them alive, so an id is never reused while its entry
# exists; records are immutable after parsing.

_MEMO_SIZE = 256
_memo: dict[tuple[str, int, int], tuple[object, object, object]] = {}


def _remember(key: tuple[str, int, int], value: tuple[object, object, object]) -> None:
    if len(_memo) >= _MEMO_SIZE:
        del _memo[next(iter(_memo))]  # the oldest entry
    _memo[key] = value


def line_strings(infos: tuple[LineInfo, ...] | LazyLineInfos) -> frozenset[str]:
    """The file names and source lines of ``infos`` (the extra strings marshal needs)."""
    if isinstance(infos, LazyLineInfos):
        return infos.strings()
    key = ("strings", id(infos), 0)
    hit = _memo.get(key)
    if hit is not None and hit[0] is infos:
        out = hit[2]
        assert isinstance(out, frozenset)
        return out
    found = frozenset({li.file_name for li in infos} | {li.line for li in infos})
    _remember(key, (infos, None, found))
    return found


def encoded_func_infos(infos: tuple[FuncInfo, ...], spec: Spec) -> bytes:
    """:func:`encode_func_infos` with ``spec``'s type ids, memoized."""
    key = ("func", id(infos), id(spec))
    hit = _memo.get(key)
    if hit is not None and hit[0] is infos and hit[1] is spec:
        out = hit[2]
        assert isinstance(out, bytes)
        return out
    data = _encode_func_infos(infos, lambda fi: fi.type_id_in(spec))
    _remember(key, (infos, spec, data))
    return data


def encoded_line_infos(
    infos: tuple[LineInfo, ...] | LazyLineInfos, strings: dict[str, int]
) -> bytes:
    """:func:`encode_line_infos` against a marshalled string map, memoized."""
    if isinstance(infos, LazyLineInfos):
        return infos.encoded(strings)
    key = ("line", id(infos), id(strings))
    hit = _memo.get(key)
    if hit is not None and hit[0] is infos and hit[1] is strings:
        out = hit[2]
        assert isinstance(out, bytes)
        return out
    data = encode_line_infos(infos, strings)
    _remember(key, (infos, strings, data))
    return data
