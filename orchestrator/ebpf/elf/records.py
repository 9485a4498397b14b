"""ELF records of an eBPF object: format constants, sections, symbols and functions, and
the string-table and header helpers."""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.ebpf.errors import ParseError

EM_BPF = 247
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

ET_REL = 1
_EHDR = struct.Struct("<HHIQQQIHHHHHH")  # the ELF64 header after e_ident
_SYM = struct.Struct("<IBBHQQ")
_REL = struct.Struct("<QQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")


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
    data: bytes
    relocs: list[tuple[int, int]] = field(default_factory=list)  # (offset, symbol index)


@dataclass(eq=False, slots=True)
class _Function:
    name: str
    section: _Section
    start: int  # first instruction, in slots from the section start
    end: int
    bind: int
    named: bool = True  # False: code no symbol names, found as a call target


def _elf_header(data: bytes) -> Mapping[str, Any]:
    """The fields of a little-endian ELF64 header (``data`` has at least 64 bytes), e_type and
    e_machine by their pyelftools names (``ET_REL``, ``EM_BPF``). An eBPF object's header is
    decoded with ``struct``; any other is left to pyelftools, which names what it is."""
    (e_type, e_machine, _, _, _, e_shoff, _, _, _, _, e_shentsize, e_shnum, e_shstrndx) = (
        _EHDR.unpack_from(data, 16)
    )
    if e_type == ET_REL and e_machine == EM_BPF:
        return {
            "e_type": "ET_REL",
            "e_machine": "EM_BPF",
            "e_shoff": e_shoff,
            "e_shentsize": e_shentsize,
            "e_shnum": e_shnum,
            "e_shstrndx": e_shstrndx,
        }
    from elftools.construct import ConstructError
    from elftools.elf.structs import ELFStructs

    structs = ELFStructs(little_endian=True, elfclass=64)
    structs.create_basic_structs()
    structs.create_advanced_structs(
        e_type="ET_REL", e_machine="EM_BPF", e_ident_osabi="ELFOSABI_SYSV"
    )
    try:
        header: Mapping[str, Any] = structs.Elf_Ehdr.parse(data[:64])
    except ConstructError as err:
        raise ParseError(f"bad ELF header: {err}") from err
    return header


def _string_table(data: bytes) -> Callable[[int], str]:
    """``offset -> string`` for an ELF string table: every string that starts after a nul
    is decoded once, in one pass; other offsets (suffixes shared by the linker or
    compiler, e.g. ``.BTF`` inside ``.rel.BTF``) fall back to :func:`_cstr`."""
    starts: dict[int, str] = {}
    off = 0
    for raw in data.split(b"\0"):
        starts[off] = raw.decode("utf-8", "replace")
        off += len(raw) + 1

    def lookup(offset: int) -> str:
        found = starts.get(offset)
        return found if found is not None else _cstr(data, offset)

    return lookup


def _cstr(data: bytes, offset: int) -> str:
    if not 0 <= offset <= len(data):
        raise ParseError(f"string offset {offset} out of range")
    end = data.find(b"\0", offset)
    if end < 0:
        end = len(data)
    return data[offset:end].decode("utf-8", "replace")
