"""ELF records of an eBPF object: format constants, sections, symbols and functions, and
the string-table and header helpers."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from orchestrator.ebpf.errors import ParseError

EM_BPF = 247
ET_REL = 1
SHT_PROGBITS = 1
SHT_SYMTAB = 2
SHT_NOBITS = 8
SHT_REL = 9
SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4
SHN_UNDEF = 0
SHN_ABS = 0xFFF1
SHN_COMMON = 0xFFF2
STB_LOCAL = 0
STB_GLOBAL = 1
STB_WEAK = 2
STT_NOTYPE = 0
STT_OBJECT = 1
STT_FUNC = 2
STT_SECTION = 3

_SYM = struct.Struct("<IBBHQQ")
_REL = struct.Struct("<QQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")
# e_ident, e_type, e_machine, e_version, e_entry, e_phoff, e_shoff, e_flags, e_ehsize,
# e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")


@dataclass(frozen=True, slots=True)
class _Header:
    """The fields of the ELF64 header a loader uses."""

    type: int
    machine: int
    shoff: int
    shentsize: int
    shnum: int
    shstrndx: int


def _header(data: bytes) -> _Header:
    """The ELF64 little-endian header at the start of ``data`` (at least 64 bytes)."""
    _, etype, machine, _, _, _, shoff, _, _, _, _, shentsize, shnum, shstrndx = _EHDR.unpack_from(
        data
    )
    return _Header(etype, machine, shoff, shentsize, shnum, shstrndx)


def _enum_name(field_name: str, value: int) -> str:
    """pyelftools' name of an ``e_type``/``e_machine`` value (``EM_X86_64``), or the number:
    for error messages only, so pyelftools is imported only when one is written."""
    from elftools.elf import enums

    table = enums.ENUM_E_MACHINE if field_name == "e_machine" else enums.ENUM_E_TYPE
    for name, v in table.items():
        if v == value and not name.startswith("_"):
            return str(name)
    return str(value)


@dataclass(slots=True)
class _Symbol:
    index: int
    name: str
    bind: int
    type: int
    shndx: int
    value: int
    size: int


@dataclass(slots=True)
class _Section:
    index: int
    name: str
    type: int
    flags: int
    size: int
    file: bytes  # the whole object: the body is sliced out of it on first read
    offset: int  # of the body in ``file`` (the reader checked it fits)
    relocs: list[tuple[int, int]] = field(default_factory=list)  # (offset, symbol index)
    _body: bytes | None = None

    @property
    def data(self) -> bytes:
        """The section's bytes (empty for SHT_NOBITS). Most of an object is debug info
        that nothing reads: a body is copied out of the file only when read."""
        body = self._body
        if body is None:
            if self.type == SHT_NOBITS:
                body = b""
            else:
                body = self.file[self.offset : self.offset + self.size]
            self._body = body
        return body


@dataclass(eq=False, slots=True)
class _Function:
    name: str
    section: _Section
    start: int  # first instruction, in slots from the section start
    end: int
    bind: int
    named: bool = True  # False: code no symbol names, found as a call target


def _string_starts(data: bytes) -> dict[int, str]:
    """Offset -> string for every string of an ELF string table that starts after a nul,
    decoded in one pass. Other offsets (suffixes shared by the linker or compiler, e.g.
    ``.BTF`` inside ``.rel.BTF``) are left to :func:`_cstr`."""
    starts: dict[int, str] = {}
    off = 0
    for raw in data.split(b"\0"):
        starts[off] = raw.decode("utf-8", "replace")
        off += len(raw) + 1
    return starts


def _cstr(data: bytes, offset: int) -> str:
    if not 0 <= offset <= len(data):
        raise ParseError(f"string offset {offset} out of range")
    end = data.find(b"\0", offset)
    if end < 0:
        end = len(data)
    return data[offset:end].decode("utf-8", "replace")
