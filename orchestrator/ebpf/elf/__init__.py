"""ELF object → :class:`CollectionSpec`.

The header, section table, symbols and relocations are fixed-size records, decoded with
``struct`` directly (pyelftools' per-record parsing costs more than the rest of a parse).

What is read:
- programs: every function in an executable section other than ``.text``; functions in
  ``.text`` are subprograms, linked into each program that calls them (transitively, depth
  first in call order: the order libbpf uses, so the translated instructions match). A static
  function in a program section is a program too, as cilium/ebpf reads it (libbpf 1.x refuses
  such objects). Functions start at STT_FUNC symbols, or where a section has none (clang 7,
  hand-written assembly) at its named STT_NOTYPE symbols; code no symbol names starts a
  function at each call target;
- maps: BTF-defined ``.maps``, the legacy ``maps`` section, and one single-entry array per
  data section (``.data*``, ``.rodata*``, ``.bss*``);
- relocations, matched to their section by ``sh_info``: map fds, global data, bpf-to-bpf
  calls, function pointers, externs, against named or section symbols. A relocation that
  cannot be resolved (a symbol no section defines, an unsupported target) does not fail the
  parse: the program records it (``ProgramSpec.unresolved``) and only loading it fails;
- ``license``, ``version``, ``.BTF`` and ``.BTF.ext``.
"""

from __future__ import annotations

import bisect
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar, cast

from orchestrator.ebpf import btf as _btf
from orchestrator.ebpf import externs as _externs
from orchestrator.ebpf import sections as _sections
from orchestrator.ebpf._sys import (
    BPF_PSEUDO_CALL,
    BPF_PSEUDO_FUNC,
    MapFlags,
    MapType,
    ProgType,
)
from orchestrator.ebpf.asm import (
    CALL,
    INSN_SIZE,
    LD_IMM64,
    Instructions,
    Reference,
    RefKind,
)
from orchestrator.ebpf.btf import decode as _btf_decode
from orchestrator.ebpf.btf import ext as _btf_ext
from orchestrator.ebpf.elf.maps import (
    MapReader,
    _is_data_section,
)
from orchestrator.ebpf.elf.records import (
    _REL,
    _SHDR,
    _SYM,
    EM_BPF,
    ET_REL,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHN_ABS,
    SHN_COMMON,
    SHN_UNDEF,
    SHT_NOBITS,
    SHT_PROGBITS,
    SHT_REL,
    SHT_SYMTAB,
    STB_GLOBAL,
    STB_LOCAL,
    STB_WEAK,
    STT_FUNC,
    STT_NOTYPE,
    STT_OBJECT,
    STT_SECTION,
    _cstr,
    _enum_name,
    _Function,
    _header,
    _Section,
    _string_starts,
    _Symbol,
)
from orchestrator.ebpf.errors import Error, ParseError, clip
from orchestrator.ebpf.files import OBJECT_MAX, read_file, reason
from orchestrator.ebpf.spec import (
    CollectionSpec,
    MapEntry,
    MapSpec,
    ProgramSpec,
    Unresolved,
)


class _Unresolvable(Exception):
    """A relocation of one instruction cannot be applied; the message says why."""


def load_file(path: str) -> CollectionSpec:
    """Parse the object at ``path``: a regular file of at most
    :data:`~orchestrator.ebpf.files.OBJECT_MAX` bytes (see :mod:`orchestrator.ebpf.files`)."""
    try:
        data = read_file(path, limit=OBJECT_MAX, what="an object")
    except OSError as err:
        raise ParseError(f"{path}: {reason(err)}") from err
    return load_bytes(data, name=os.path.basename(path), path=path)


def load_bytes(data: bytes, name: str = "", path: str = "") -> CollectionSpec:
    label = path or name or "object"
    try:
        return _Reader(data, label).read(name=name, path=path)
    except Error as err:
        if type(err).__init__ is not Exception.__init__:
            raise
        # names in the object (sections, symbols) can be megabytes long: cut what they say
        raise type(err)(f"{label}: {clip(str(err), _MESSAGE_MAX)}") from err
    except (struct.error, ValueError, IndexError, KeyError, UnicodeDecodeError) as err:
        raise ParseError(f"{label}: malformed ELF object: {clip(str(err), _MESSAGE_MAX)}") from err


_MESSAGE_MAX = 1000  # characters of a parse error's own text


class _Reader(MapReader):
    def __init__(self, data: bytes, label: str) -> None:
        self.data = data
        self.label = label
        if len(data) < 64 or data[:4] != b"\x7fELF":
            raise ParseError("not an ELF file")
        if data[4] != 2:
            raise ParseError("not a 64-bit ELF object")
        if data[5] != 1:
            raise ParseError("big-endian objects are not supported (compile with -target bpfel)")
        self.header = _header(data)
        if self.header.machine != EM_BPF:
            machine = _enum_name("e_machine", self.header.machine)
            raise ParseError(f"not an eBPF object (e_machine {machine})")
        if self.header.type != ET_REL:
            etype = _enum_name("e_type", self.header.type)
            raise ParseError(f"not a relocatable object (e_type {etype})")
        self.sections: list[_Section] = []
        self.by_name: dict[str, _Section] = {}
        # found by _load_sections: the code sections, and the other SHF_ALLOC ones (where
        # data sections are), each in section order
        self._code: list[_Section] = []
        self._alloc: list[_Section] = []
        self.symbols: list[_Symbol] = []
        self.btf: _btf.Spec | None = None
        self.ext: _btf_ext.Ext | None = None
        self._ext_index = _ExtIndex()
        self._relocs_by_insn: dict[int, dict[int, _Symbol]] = {}
        self._map_at: dict[tuple[int, int], str] = {}  # (section, offset) → map name
        self._datasecs: dict[str, list[int]] = {}
        self._btf_map_vars: list[tuple[str, int, int, int]] = []
        self._by_section: dict[int, list[_Symbol]] | None = None
        self._externs: dict[str, _externs.ExternSpec] = {}

    # ------------------------------------------------------------------ raw tables

    def _load_sections(self) -> None:
        # The section headers are fixed-size records: decoding them with struct is an order
        # of magnitude faster than pyelftools' per-section construct parsing.
        h = self.header
        shoff, shentsize, shnum, shstrndx = h.shoff, h.shentsize, h.shnum, h.shstrndx
        size = len(self.data)
        if shentsize != _SHDR.size or shoff + shnum * _SHDR.size > size or shnum == 0:
            raise ParseError("section header table is malformed or truncated")
        headers = list(_SHDR.iter_unpack(memoryview(self.data)[shoff : shoff + shnum * _SHDR.size]))
        if not 0 <= shstrndx < shnum:
            raise ParseError("bad section name table index")
        _, _, _, _, noff, nsize, *_ = headers[shstrndx]
        if noff + nsize > size:
            raise ParseError("section name table extends past the end of the file")
        data = self.data
        names = data[noff : noff + nsize]
        starts = _string_starts(names)
        sections, by_name, code, alloc = self.sections, self.by_name, self._code, self._alloc
        symtabs: list[tuple[_Section, int]] = []
        rels: list[tuple[_Section, int]] = []
        for i, (name, stype, flags, _addr, off, sz, link, info, _align, _ent) in enumerate(headers):
            sec_name = starts.get(name)
            if sec_name is None:
                sec_name = _cstr(names, name)
            if stype != SHT_NOBITS and off + sz > size:
                raise ParseError(f"section {sec_name}: extends past the end of the file")
            s = _Section(i, sec_name, stype, flags, sz, data, off, [])
            sections.append(s)
            if sec_name not in by_name:
                by_name[sec_name] = s
            if flags & SHF_EXECINSTR:
                code.append(s)
            elif flags & SHF_ALLOC:
                alloc.append(s)
            if stype == SHT_SYMTAB:
                symtabs.append((s, link))
            elif stype == SHT_REL:
                rels.append((s, info))
        for s, link in symtabs:
            # the symbols' names are usually in the section names' table (one .strtab)
            self._load_symbols(s, link, (names, starts) if link == shstrndx else None)
        nsyms = len(self.symbols)
        for s, info in rels:
            if not 0 < info < len(sections):
                raise ParseError(f"relocation section {s.name}: bad target section {info}")
            target = sections[info]
            if not target.flags & SHF_ALLOC:
                continue  # debug info, .BTF, .BTF.ext: nothing a loader applies (libbpf too)
            if len(s.data) % _REL.size:
                raise ParseError(f"relocation section {s.name}: truncated")
            relocs = [(r_offset, r_info >> 32) for r_offset, r_info in _REL.iter_unpack(s.data)]
            if relocs and max(sym for _, sym in relocs) >= nsyms:
                bad = next(sym for _, sym in relocs if sym >= nsyms)
                raise ParseError(f"relocation section {s.name}: bad symbol index {bad}")
            target.relocs.extend(relocs)

    def _load_symbols(
        self, symtab: _Section, link: int, table: tuple[bytes, dict[int, str]] | None = None
    ) -> None:
        """The symbols of ``symtab``, named from string table ``link`` (``table``: that
        table and its :func:`_string_starts`, when the caller has them)."""
        if not 0 <= link < len(self.sections):
            raise ParseError("symbol table: bad string table link")
        if table is None:
            names = self.sections[link].data
            starts = _string_starts(names)
        else:
            names, starts = table
        if len(symtab.data) % _SYM.size:
            raise ParseError("symbol table: truncated")
        self.symbols.extend(
            _Symbol(
                i,
                starts[st_name] if st_name in starts else _cstr(names, st_name),
                info >> 4,
                info & 0xF,
                shndx,
                value,
                size,
            )
            for i, (st_name, info, _other, shndx, value, size) in enumerate(
                _SYM.iter_unpack(symtab.data)
            )
        )

    # ------------------------------------------------------------------ top level

    def read(self, name: str, path: str) -> CollectionSpec:
        self._load_sections()
        license_ = ""
        if (lic := self.by_name.get("license")) is not None:
            license_ = _cstr(lic.data, 0)
        kernel_version = 0
        if (ver := self.by_name.get("version")) is not None and len(ver.data) >= 4:
            kernel_version = int.from_bytes(ver.data[:4], "little")
        if (btf_sec := self.by_name.get(".BTF")) is not None:
            self.btf = _btf.Spec.parse(btf_sec.data, checked=True)
            self._fixup_datasecs()
            if (ext_sec := self.by_name.get(".BTF.ext")) is not None:
                self.ext = _btf_ext.parse_ext(ext_sec.data, self.btf, raw_lines=True)

        maps: dict[str, MapSpec] = {}
        map_by_symbol: dict[int, str] = {}  # symbol index → map name
        self._read_btf_maps(maps, map_by_symbol)
        self._read_legacy_maps(maps, map_by_symbol)
        variables = self._read_data_sections(maps)
        undefined = [
            (s.name, s.bind == STB_WEAK)
            for s in self.symbols
            if s.shndx == SHN_UNDEF and s.name and s.bind in (STB_GLOBAL, STB_WEAK)
        ]
        # externs described in BTF (__kconfig/__ksym); other undefined symbols are
        # unresolved references of the programs that use them
        externs = self._externs = _externs.collect(self.btf, undefined)

        functions = self._read_functions()
        programs: dict[str, ProgramSpec] = {}
        for fn in functions.values():
            if fn.section.name == ".text" or not fn.named:
                continue
            if fn.name in programs:
                raise ParseError(
                    f"program {fn.name}: defined twice (sections {programs[fn.name].section} "
                    f"and {fn.section.name})"
                )
            programs[fn.name] = self._link(
                fn, functions, maps, map_by_symbol, license_, kernel_version
            )
        self._read_map_contents(maps, programs)
        self._read_kconfig(maps, programs, externs)
        self._read_struct_ops(maps, programs)
        if self.btf is not None:  # the types nothing decoded: checked without decoding
            _btf_decode.validate(self.btf)
        return CollectionSpec(
            maps, programs, variables, self.btf, name=name, path=path, externs=externs
        )

    def _read_struct_ops(self, maps: dict[str, MapSpec], programs: dict[str, ProgramSpec]) -> None:
        """``.struct_ops``/``.struct_ops.link`` tables (see :mod:`.link.struct_ops`)."""
        if ".struct_ops" not in self.by_name and ".struct_ops.link" not in self.by_name:
            return
        secs = [
            (s.name, s.data, [(off, self.symbols[sym].name) for off, sym in s.relocs])
            for s in self.sections
            if s.name in (".struct_ops", ".struct_ops.link") and s.type == SHT_PROGBITS
        ]
        if not secs:
            return
        from orchestrator.ebpf.link import struct_ops as _struct_ops

        for name, ops in _struct_ops.collect(self.btf, secs):
            if name in maps:
                raise ParseError(f"struct_ops {name}: clashes with a map of the same name")
            for member, prog in ops.funcs.items():
                if prog not in programs or programs[prog].type != ProgType.STRUCT_OPS:
                    raise ParseError(
                        f"struct_ops {name}: member {member} refers to {prog!r}, which is not "
                        "a struct_ops program"
                    )
            maps[name] = MapSpec(
                name,
                MapType.STRUCT_OPS,
                4,
                0,
                1,
                section=".struct_ops.link" if ops.link else ".struct_ops",
                btf=self.btf,
                struct_ops=ops,
            )

    def _read_kconfig(
        self,
        maps: dict[str, MapSpec],
        programs: dict[str, ProgramSpec],
        externs: dict[str, _externs.ExternSpec],
    ) -> None:
        """kconfig references become ``.kconfig`` map values (see
        :mod:`orchestrator.ebpf.externs`)."""
        kconfig = {n: e for n, e in externs.items() if e.kind is _externs.ExternKind.KCONFIG}
        if not kconfig:
            return
        assert self.btf is not None
        datasec = self.btf.type_by_name(".kconfig", _btf.Datasec)
        if ".kconfig" in maps:
            raise ParseError("section .kconfig: clashes with a map of the same name")
        maps[".kconfig"] = MapSpec(
            ".kconfig",
            MapType.ARRAY,
            4,
            datasec.size,
            1,
            int(MapFlags.RDONLY_PROG),
            contents=[MapEntry(0, bytes(datasec.size))],
            freeze=True,
            section=".kconfig",
            btf=self.btf,
            btf_value_type=datasec,
        )
        for name, prog in programs.items():
            refs = dict(prog.instructions.references)
            changed = False
            for slot, ref in refs.items():
                ext = kconfig.get(ref.name) if ref.kind is RefKind.EXTERN else None
                if ext is not None:
                    refs[slot] = Reference(RefKind.MAP_VALUE, ".kconfig", ext.offset)
                    changed = True
            if changed:
                programs[name] = replace(
                    prog, instructions=Instructions(prog.instructions.raw, refs)
                )

    # ------------------------------------------------------------------ BTF fix-ups

    def _fixup_datasecs(self) -> None:
        """clang leaves DATASEC sizes and variable offsets at 0 in objects; fill them in
        from the section sizes and symbol values, as the kernel needs them (libbpf does
        the same: see ``btf_fixup_datasec``)."""
        assert self.btf is not None
        # Patched in the raw records: nothing is decoded here (what the variables refer to
        # is decoded when something uses it; marshalling copies raw records).
        btf = self.btf
        for tid in btf.ids_of_kind(_btf.Kind.DATASEC):
            name = btf._name_of(tid)
            self._datasecs.setdefault(name, []).append(tid)
            sec = self.by_name.get(name)
            if sec is None:
                continue  # .kconfig/.ksyms: externs, handled at load time
            offsets: dict[str, int] = {}  # variable → offset: its first object symbol's
            for sym in self._symbols_in(sec.index):
                if sym.type == STT_OBJECT:
                    offsets.setdefault(sym.name, sym.value)
            btf.patch_datasec(tid, sec.size, offsets)

    # ------------------------------------------------------------------ code

    def _read_functions(self) -> dict[tuple[int, int], _Function]:
        """Every function of every code section, by (section index, first slot).

        A function starts at a symbol: the STT_FUNC ones, or, in a section that has none
        (clang 7 and hand-written assembly tag no symbol as a function), every named
        STT_NOTYPE symbol except LLVM's basic-block labels (``LBB*``), as cilium/ebpf reads
        them. Code that no symbol names (an old compiler's static subprogram, reached only by
        calls) starts a function at each call or function-pointer target; it is called
        ``<section>+<instruction>`` and is never a program.
        """
        functions: dict[tuple[int, int], _Function] = {}
        targets: dict[int, set[int]] | None = None
        for sec in self._code:
            if sec.size == 0:
                continue
            if sec.size % INSN_SIZE:
                raise ParseError(f"section {sec.name}: size {sec.size} is not a multiple of 8")
            slots = sec.size // INSN_SIZE
            in_sec = self._symbols_in(sec.index)
            syms = [s for s in in_sec if s.type == STT_FUNC]
            if not syms:
                syms = [
                    s
                    for s in in_sec
                    if s.type == STT_NOTYPE
                    and s.name
                    and not (s.bind == STB_LOCAL and s.name.startswith("LBB"))
                ]
            named: dict[int, _Symbol] = {}
            for sym in sorted(syms, key=lambda s: s.value):
                if sym.value % INSN_SIZE or sym.value >= sec.size:
                    raise ParseError(f"function {sym.name}: bad offset {sym.value}")
                named.setdefault(sym.value // INSN_SIZE, sym)  # aliases: the first one
            sized = [(i, i + s.size // INSN_SIZE) for i, s in named.items() if s.size]
            unnamed: set[int] = set()
            if not _tiles(sized, slots, len(named)):
                # untyped symbols, or code no symbol covers: calls may start functions
                if targets is None:
                    targets = self._call_targets()
                unnamed = {
                    t
                    for t in targets.get(sec.index, ())
                    if 0 <= t < slots
                    and t not in named
                    and not any(lo <= t < hi for lo, hi in sized)
                }
            starts = sorted(set(named) | unnamed)
            for k, start in enumerate(starts):
                following = starts[k + 1] if k + 1 < len(starts) else slots
                found = named.get(start)
                if found is None:
                    name, end, bind, is_named = f"{sec.name}+{start}", following, STB_LOCAL, False
                else:
                    name, bind, is_named = found.name, found.bind, True
                    end = (
                        min(start + (found.size + INSN_SIZE - 1) // INSN_SIZE, slots)
                        if found.size
                        else following
                    )
                functions[(sec.index, start)] = _Function(name, sec, start, end, bind, is_named)
        return functions

    def _call_targets(self) -> dict[int, set[int]]:
        """Slots that calls and function pointers reach, by code section."""
        out: dict[int, set[int]] = {}
        for sec in self._code:
            if sec.size == 0:
                continue
            code = sec.data
            ops, regs = code[0::INSN_SIZE], code[1::INSN_SIZE]
            relocs = self._section_relocs(sec)
            for op, src in ((CALL, BPF_PSEUDO_CALL), (LD_IMM64, BPF_PSEUDO_FUNC)):
                i = ops.find(op)
                while i >= 0:
                    if regs[i] >> 4 == src and i not in relocs:
                        imm = int.from_bytes(code[i * 8 + 4 : i * 8 + 8], "little", signed=True)
                        out.setdefault(sec.index, set()).add(i + imm + 1)
                    i = ops.find(op, i + 1)
            for i, sym in relocs.items():
                op = ops[i] if i < len(ops) else -1
                if op not in (CALL, LD_IMM64) or not 0 < sym.shndx < len(self.sections):
                    continue
                target = self.sections[sym.shndx]
                if not target.flags & SHF_EXECINSTR:
                    continue
                imm = int.from_bytes(code[i * 8 + 4 : i * 8 + 8], "little", signed=True)
                if op == CALL:
                    slot = sym.value // INSN_SIZE + imm + 1
                else:
                    slot = (sym.value + imm) // INSN_SIZE
                out.setdefault(target.index, set()).add(slot)
        return out

    def _function_at(
        self, functions: dict[tuple[int, int], _Function], sec: _Section, insn: int
    ) -> _Function:
        fn = functions.get((sec.index, insn))
        if fn is None:
            for f in functions.values():
                if f.section is sec and f.start <= insn < f.end:
                    return f
            raise _Unresolvable(f"call target: instruction {insn} of {sec.name} is in no function")
        return fn

    def _link(
        self,
        entry: _Function,
        functions: dict[tuple[int, int], _Function],
        maps: dict[str, MapSpec],
        map_by_symbol: dict[int, str],
        license_: str,
        kernel_version: int,
    ) -> ProgramSpec:
        """Lay out ``entry`` followed by every function it reaches, resolving calls. What
        cannot be resolved is recorded in the spec; loading the program fails on it."""
        layout = _Layout(self, entry, functions, maps, map_by_symbol)
        layout.place(entry)
        out, refs, placed, order = layout.out, layout.refs, layout.placed, layout.order
        unresolved = layout.unresolved
        info = _sections.classify(entry.section.name)
        func_infos, line_infos, core_relos = self._ext_records(order, placed)
        return ProgramSpec(
            name=entry.name,
            type=info.type,
            attach_type=info.attach_type,
            section=entry.section.name,
            instructions=Instructions(bytes(out), refs),
            license=license_,
            kernel_version=kernel_version,
            flags=info.flags,
            attach_to=info.attach_to,
            autoload=info.autoload,
            known_section=info.known,
            func_infos=tuple(func_infos),
            # a LazyLineInfos is held as is: ProgramSpec.line_infos builds it on first read
            line_infos=cast(
                "tuple[_btf_ext.LineInfo, ...]",
                line_infos if isinstance(line_infos, _btf_ext.LazyLineInfos) else tuple(line_infos),
            ),
            core_relos=tuple(core_relos),
            btf=self.btf,
            unresolved=tuple(unresolved),
        )

    def _link_insn(
        self,
        out: bytearray,
        slot: int,
        fn: _Function,
        sym: _Symbol | None,
        functions: dict[tuple[int, int], _Function],
        maps: dict[str, MapSpec],
        map_by_symbol: dict[int, str],
        refs: dict[int, Reference],
        place: Callable[[_Function], int],
        placed: dict[int, int],
    ) -> None:
        """Resolve one instruction of ``fn`` placed at ``slot``: a bpf-to-bpf call, a
        function pointer, or a relocation against ``sym``."""
        pos = slot * INSN_SIZE
        op = out[pos]
        src = out[pos + 1] >> 4
        imm = int.from_bytes(out[pos + 4 : pos + 8], "little", signed=True)
        rel = slot - placed[id(fn)] + fn.start  # the instruction's slot in its section
        if op == CALL and src == BPF_PSEUDO_CALL:
            if sym is None:
                tsec, tinsn = fn.section, rel + imm + 1
            elif sym.shndx == SHN_UNDEF:
                self._extern_ref(slot, sym, refs)
                return
            else:
                tsec = self._section(sym)
                tinsn = sym.value // INSN_SIZE + imm + 1
            self._resolve(out, slot, tsec, tinsn, functions, place, placed)
        elif op == LD_IMM64 and src == BPF_PSEUDO_FUNC and sym is None:
            self._resolve(out, slot, fn.section, rel + imm + 1, functions, place, placed)
        elif sym is not None:
            self._relocate(out, slot, sym, functions, map_by_symbol, refs, place, placed)

    def _extern_ref(self, slot: int, sym: _Symbol, refs: dict[int, Reference]) -> None:
        """The instruction refers to an undefined symbol: an extern if BTF describes it."""
        refs[slot] = Reference(RefKind.EXTERN, sym.name)
        if sym.name not in self._externs:
            raise _Unresolvable(
                f"symbol {sym.name} is defined in no section of the object (define it, or "
                "declare it __ksym or __kconfig)"
            )

    def _section(self, sym: _Symbol) -> _Section:
        if sym.shndx in (SHN_ABS, SHN_COMMON) or not 0 < sym.shndx < len(self.sections):
            what = {SHN_ABS: "an absolute", SHN_COMMON: "a common"}.get(sym.shndx, "an unknown")
            raise _Unresolvable(f"symbol {sym.name} is {what} symbol ({sym.shndx:#x})")
        return self.sections[sym.shndx]

    def _resolve(
        self,
        out: bytearray,
        slot: int,
        tsec: _Section,
        tinsn: int,
        functions: dict[tuple[int, int], _Function],
        place: Callable[[_Function], int],
        placed: dict[int, int],
    ) -> None:
        if not tsec.flags & SHF_EXECINSTR:
            raise _Unresolvable(f"call into section {tsec.name}, which holds no code")
        target = self._function_at(functions, tsec, tinsn)
        if id(target) not in placed:
            place(target)
        new = placed[id(target)] + (tinsn - target.start) - slot - 1
        out[slot * INSN_SIZE + 4 : slot * INSN_SIZE + 8] = new.to_bytes(4, "little", signed=True)

    def _relocate(
        self,
        out: bytearray,
        slot: int,
        sym: _Symbol,
        functions: dict[tuple[int, int], _Function],
        map_by_symbol: dict[int, str],
        refs: dict[int, Reference],
        place: Callable[[_Function], int],
        placed: dict[int, int],
    ) -> None:
        pos = slot * INSN_SIZE
        op = out[pos]
        what = sym.name or "a section"
        if op != LD_IMM64:
            raise _Unresolvable(
                f"relocation against {what} on opcode {op:#04x} (only calls and 64-bit loads "
                "can be relocated)"
            )
        imm = int.from_bytes(out[pos + 4 : pos + 8], "little", signed=True)
        if sym.shndx == SHN_UNDEF:
            self._extern_ref(slot, sym, refs)
            return
        sec = self._section(sym)
        if sym.index in map_by_symbol:
            refs[slot] = Reference(RefKind.MAP, map_by_symbol[sym.index])
            return
        if sec.name in ("maps", ".maps"):
            # a section symbol (a static map, or an old compiler's reference) with the
            # map's offset in the instruction
            offset = sym.value + imm
            found = self._map_at.get((sec.index, offset))
            if found is None:
                raise _Unresolvable(f"reference into {sec.name} at offset {offset} is not a map")
            refs[slot] = Reference(RefKind.MAP, found)
            out[pos + 4 : pos + 8] = b"\0\0\0\0"
            return
        if sec.flags & SHF_EXECINSTR:
            # A function pointer (e.g. a bpf_loop callback): ld_imm64 with BPF_PSEUDO_FUNC.
            if (sym.value + imm) % INSN_SIZE:
                raise _Unresolvable(
                    f"function pointer to byte {sym.value + imm} of {sec.name} is not on an "
                    "instruction"
                )
            out[pos + 1] = (out[pos + 1] & 0x0F) | (BPF_PSEUDO_FUNC << 4)
            self._resolve(out, slot, sec, (sym.value + imm) // INSN_SIZE, functions, place, placed)
            return
        if _is_data_section(sec):
            offset = imm + (sym.value if sym.type != STT_SECTION else 0)
            refs[slot] = Reference(RefKind.MAP_VALUE, sec.name, offset)
            out[pos + 4 : pos + 8] = b"\0\0\0\0"
            return
        raise _Unresolvable(
            f"relocation against {what} in section {sec.name} is not supported (programs "
            "can refer to maps, data sections, code and externs)"
        )

    def _section_relocs(self, sec: _Section) -> dict[int, _Symbol]:
        by_insn = self._relocs_by_insn.get(sec.index)
        if by_insn is None:
            by_insn = {off // INSN_SIZE: self.symbols[sym] for off, sym in sec.relocs}
            self._relocs_by_insn[sec.index] = by_insn
        return by_insn

    def _relocs_of(self, fn: _Function) -> dict[int, _Symbol]:
        by_insn = self._section_relocs(fn.section)
        lo, hi = fn.start, fn.end
        return {i: sym for i, sym in by_insn.items() if lo <= i < hi}

    def _ext_records(
        self, order: list[_Function], placed: dict[int, int]
    ) -> tuple[
        list[_btf_ext.FuncInfo],
        list[_btf_ext.LineInfo] | _btf_ext.LazyLineInfos,
        list[_btf_ext.CORERelo],
    ]:
        """The .BTF.ext records of the functions in ``order``, moved to where they are
        placed. Line info kept raw by the parse stays so: the program gets the ranges of
        records it covers (a :class:`~.btf.ext.LazyLineInfos`), built on first read."""
        func_infos: list[_btf_ext.FuncInfo] = []
        line_infos: list[_btf_ext.LineInfo] = []
        core_relos: list[_btf_ext.CORERelo] = []
        if self.ext is None:
            return func_infos, line_infos, core_relos
        LineInfo = _btf_ext.LineInfo
        ext, idx = self.ext, self._ext_index
        raw_lines = ext.raw_line_infos
        parts: list[tuple[_btf_ext.RawLineInfos, int, int, int] | list[_btf_ext.LineInfo]] = []
        for fn in order:
            delta = placed[id(fn)] - fn.start
            sec = fn.section.name
            raw = raw_lines.get(sec)
            if raw is not None:
                if line_infos:
                    parts.append(line_infos)
                    line_infos = []
                lo = bisect.bisect_left(raw.offsets, fn.start * INSN_SIZE)
                hi = bisect.bisect_left(raw.offsets, fn.end * INSN_SIZE, lo)
                if lo < hi:
                    parts.append((raw, lo, hi, delta))
            if delta == 0:  # in place (a program first in its section): share the records
                func_infos += _ext_slice(idx.func_infos, ext.func_infos, sec, fn)
                if raw is None:
                    line_infos += _ext_slice(idx.line_infos, ext.line_infos, sec, fn)
                core_relos += _ext_slice(idx.core_relos, ext.core_relos, sec, fn)
                continue
            for fi in _ext_slice(idx.func_infos, ext.func_infos, sec, fn):
                func_infos.append(fi.at(fi.insn + delta))
            if raw is None:
                for li in _ext_slice(idx.line_infos, ext.line_infos, sec, fn):
                    line_infos.append(
                        LineInfo(li.insn + delta, li.file_name, li.line, li.line_number, li.column)
                    )
            for cr in _ext_slice(idx.core_relos, ext.core_relos, sec, fn):
                core_relos.append(_shift(cr, delta))
        if not parts:
            return func_infos, line_infos, core_relos
        if line_infos:
            parts.append(line_infos)
        return func_infos, _btf_ext.LazyLineInfos(parts), core_relos


class _Layout:
    """One program as :meth:`_Reader._link` lays it out: its code so far, where each
    function went, in which order, what its instructions refer to and what could not be
    resolved. (An object rather than a closure, which would refer to itself: that cycle
    would keep the reader and its tables for the cycle collector instead of freeing them
    when the parse ends.)"""

    __slots__ = (
        "entry",
        "functions",
        "map_by_symbol",
        "maps",
        "order",
        "out",
        "placed",
        "reader",
        "refs",
        "unresolved",
    )

    def __init__(
        self,
        reader: _Reader,
        entry: _Function,
        functions: dict[tuple[int, int], _Function],
        maps: dict[str, MapSpec],
        map_by_symbol: dict[int, str],
    ) -> None:
        self.reader, self.entry, self.functions = reader, entry, functions
        self.maps, self.map_by_symbol = maps, map_by_symbol
        self.out = bytearray()
        self.refs: dict[int, Reference] = {}
        self.placed: dict[int, int] = {}  # id(function) → first slot in ``out``
        self.order: list[_Function] = []
        self.unresolved: list[Unresolved] = []

    def place(self, fn: _Function) -> int:
        """Append ``fn`` and link its instructions (placing what they call); its first slot."""
        out, placed, reader = self.out, self.placed, self.reader
        base = len(out) // INSN_SIZE
        placed[id(fn)] = base
        self.order.append(fn)
        out.extend(fn.section.data[fn.start * INSN_SIZE : fn.end * INSN_SIZE])
        relocs = reader._relocs_of(fn)
        for i in _interesting(fn, relocs):
            sym = relocs.get(fn.start + i)
            try:
                reader._link_insn(
                    out,
                    base + i,
                    fn,
                    sym,
                    self.functions,
                    self.maps,
                    self.map_by_symbol,
                    self.refs,
                    self.place,
                    placed,
                )
            except _Unresolvable as err:
                self.unresolved.append(
                    Unresolved(
                        base + i,
                        str(err),
                        sym.name if sym is not None else "",
                        fn.name if fn is not self.entry else "",
                    )
                )
        return base


def _tiles(sized: list[tuple[int, int]], slots: int, named: int) -> bool:
    """Whether every named function has a size and together they cover the section's
    ``slots`` instructions without a gap (what compilers since clang 10 emit)."""
    if len(sized) != named:
        return False
    end = 0
    for lo, hi in sorted(sized):
        if lo > end:
            return False
        end = max(end, hi)
    return end >= slots


def _interesting(fn: _Function, relocs: dict[int, _Symbol]) -> list[int]:
    """Indices (from ``fn.start``) of the instructions linking must look at, in order: those
    with a relocation, bpf-to-bpf calls and function-pointer loads. Found on the opcode and
    register bytes sliced out of the code (C speed) instead of by a loop over every slot."""
    code = fn.section.data[fn.start * INSN_SIZE : fn.end * INSN_SIZE]
    ops, regs = code[0::INSN_SIZE], code[1::INSN_SIZE]
    found = {i - fn.start for i in relocs}
    for op, src in ((CALL, BPF_PSEUDO_CALL), (LD_IMM64, BPF_PSEUDO_FUNC)):
        i = ops.find(op)
        while i >= 0:
            if regs[i] >> 4 == src:
                found.add(i)
            i = ops.find(op, i + 1)
    return sorted(found)


_E = TypeVar("_E", "_btf_ext.FuncInfo", "_btf_ext.LineInfo", "_btf_ext.CORERelo")


@dataclass(slots=True)
class _ExtIndex:
    """Per ELF section: the .BTF.ext records sorted by instruction, and their instructions
    (for bisecting a function's range instead of scanning every record per function)."""

    func_infos: dict[str, tuple[list[int], list[_btf_ext.FuncInfo]]] = field(default_factory=dict)
    line_infos: dict[str, tuple[list[int], list[_btf_ext.LineInfo]]] = field(default_factory=dict)
    core_relos: dict[str, tuple[list[int], list[_btf_ext.CORERelo]]] = field(default_factory=dict)


def _ext_slice(
    index: dict[str, tuple[list[int], list[_E]]],
    records: dict[str, list[_E]],
    sec: str,
    fn: _Function,
) -> list[_E]:
    """The records of ``sec`` that fall in ``fn``, in instruction order."""
    found = index.get(sec)
    if found is None:
        ordered = sorted(records.get(sec, ()), key=_insn_of)
        found = index[sec] = ([r.insn for r in ordered], ordered)
    insns, ordered = found
    if not insns:
        return []
    lo = bisect.bisect_left(insns, fn.start)
    return ordered[lo : bisect.bisect_left(insns, fn.end, lo)]


def _insn_of(rec: _btf_ext.FuncInfo | _btf_ext.LineInfo | _btf_ext.CORERelo) -> int:
    return rec.insn


_R = TypeVar("_R", "_btf_ext.LineInfo", "_btf_ext.CORERelo")


def _shift(rec: _R, delta: int) -> _R:
    return replace(rec, insn=rec.insn + delta)


__all__ = ["load_bytes", "load_file"]
