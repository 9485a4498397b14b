"""Map definitions in an object: BTF-defined ``.maps``, the legacy ``maps`` section, data
sections as single-entry arrays, and static initial values of prog arrays and maps of maps."""

from __future__ import annotations

import struct
from typing import Any, cast

from orchestrator.ebpf import btf as _btf
from orchestrator.ebpf._sys import (
    MapFlags,
    MapType,
)
from orchestrator.ebpf._sys.enums import MAP_TYPE_BY_VALUE
from orchestrator.ebpf.btf.types import _Lazy, raw_target
from orchestrator.ebpf.elf.records import (
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHT_NOBITS,
    STB_LOCAL,
    STT_OBJECT,
    STT_SECTION,
    _Section,
    _Symbol,
)
from orchestrator.ebpf.errors import BTFError, ParseError
from orchestrator.ebpf.spec import (
    PIN_TYPE_BY_VALUE,
    MapEntry,
    MapSpec,
    ProgramSpec,
    VariableSpec,
)

_LEGACY_MAP_DEF = struct.Struct("<IIIII")

_MAP_DEF_FIELDS = {
    "type",
    "key_size",
    "value_size",
    "max_entries",
    "map_flags",
    "numa_node",
    "key",
    "value",
    "pinning",
    "map_extra",
    "values",
}


class MapReader:
    """The map-reading half of the ELF reader (mixed into it): reads the tables the reader
    has decoded."""

    sections: list[_Section]
    by_name: dict[str, _Section]
    _alloc: list[_Section]  # the SHF_ALLOC sections that hold no code, in section order
    symbols: list[_Symbol]
    btf: _btf.Spec | None
    _map_at: dict[tuple[int, int], str]  # (section, offset) → map name
    _datasecs: dict[str, list[int]]  # the BTF's DATASEC ids by name (found by the fix-up)
    # the variables of the .maps DATASEC, in its order: (name, offset, size, type id)
    _btf_map_vars: list[tuple[str, int, int, int]]
    _by_section: dict[int, list[_Symbol]] | None  # built by _symbols_in

    def _symbols_in(self, shndx: int) -> list[_Symbol]:
        """The symbols defined in section ``shndx``, in symbol table order (the table is
        grouped by section once, on first use)."""
        by_section = self._by_section
        if by_section is None:
            by_section = self._by_section = {}
            for sym in self.symbols:
                found = by_section.get(sym.shndx)
                if found is None:
                    by_section[sym.shndx] = [sym]
                else:
                    found.append(sym)
        return by_section.get(shndx, [])

    def _read_btf_maps(self, maps: dict[str, MapSpec], map_by_symbol: dict[int, str]) -> None:
        sec = self.by_name.get(".maps")
        if sec is None:
            return
        if self.btf is None:
            raise ParseError("section .maps: needs BTF (compile with -g)")
        btf = self.btf
        ids = self._datasecs.get(".maps", [])
        raw_vars = btf.datasec_vars(ids[0]) if len(ids) == 1 else None
        if raw_vars is not None:  # read from the records: nothing decoded
            for var_name, _linkage, var_type, offset, size in raw_vars:
                spec = self._btf_map_def_raw(var_name, var_type, ".maps")
                maps[spec.name] = spec
                self._map_at[(sec.index, offset)] = spec.name
                self._btf_map_vars.append((var_name, offset, size, var_type))
            for sym in self._symbols_in(sec.index):
                if sym.name in maps:
                    map_by_symbol[sym.index] = sym.name
            return
        try:
            datasec = btf.type_by_name(".maps", _btf.Datasec)
        except BTFError as err:
            raise ParseError("section .maps: no BTF datasec describes it") from err
        for vsi in datasec.vars:
            var = vsi.type
            assert isinstance(var, _btf.Var)
            spec = self._btf_map_def(var.name, var.type, ".maps")
            maps[spec.name] = spec
            self._map_at[(sec.index, vsi.offset)] = spec.name
            self._btf_map_vars.append((var.name, vsi.offset, vsi.size, btf.type_id(var.type)))
        for sym in self._symbols_in(sec.index):
            if sym.name in maps:
                map_by_symbol[sym.index] = sym.name

    def _btf_map_def_raw(self, name: str, type_id: int, section: str) -> MapSpec:
        """:meth:`_btf_map_def` of type ``type_id``, read from the BTF records where they
        are plain (a struct of ``__uint``/``__type`` fields, nothing decoded yet): key and
        value types are kept by id. Anything else goes through the decoded types."""
        btf = self.btf
        assert btf is not None
        members = btf.pointer_members(type_id)
        if members is None:
            return self._btf_map_def(name, btf.type_by_id(type_id), section)
        fields = _new_map_fields()
        for m_name, m_type, target, nelems in members:
            if m_name not in _MAP_DEF_FIELDS:
                raise ParseError(f"map {name}: unknown field {m_name!r} in definition")
            if m_name == "values":
                fields["inner_map"] = self._map_values_field(name, btf.type_by_id(m_type), section)
            elif target == -2:  # through a decoded type: as the decoded reader does
                member_t = btf.type_by_id(m_type)
                if m_name in ("key", "value"):
                    _set_key_value(fields, name, m_name, _pointee_ref(member_t))
                else:
                    _set_uint_field(fields, name, m_name, _uint_field(member_t, btf))
            elif m_name in ("key", "value"):
                _set_key_value(fields, name, m_name, None if target < 0 else _Lazy(btf, target))
            elif nelems is not None:  # __uint(name, N): read with the members
                _set_uint_field(fields, name, m_name, nelems)
            else:
                value = None if target < 0 else btf.array_len_id(target)
                _set_uint_field(fields, name, m_name, value)
        return _map_def(name, section, btf, fields, inner=False)

    def _btf_map_def(self, name: str, t: _btf.Type, section: str, inner: bool = False) -> MapSpec:
        assert self.btf is not None
        struct_t = _btf.skip_qualifiers(t)
        if not isinstance(struct_t, _btf.Struct):
            raise ParseError(f"map {name}: definition is {_btf.describe(t)}, not a struct")
        fields = _new_map_fields()
        for m in struct_t.members:
            if m.name not in _MAP_DEF_FIELDS:
                raise ParseError(f"map {name}: unknown field {m.name!r} in definition")
            if m.name in ("key", "value"):
                _set_key_value(fields, name, m.name, _pointee_ref(m.type))
            elif m.name == "values":
                fields["inner_map"] = self._map_values_field(name, m.type, section)
            else:
                _set_uint_field(fields, name, m.name, _uint_field(m.type, self.btf))
        return _map_def(name, section, self.btf, fields, inner=inner)

    def _map_values_field(self, name: str, t: _btf.Type, section: str) -> MapSpec | None:
        arr = _btf.skip_qualifiers(t)
        if not isinstance(arr, _btf.Array):
            raise ParseError(f"map {name}: values must be declared with __array")
        elem = _pointee(arr.type)
        if elem is None:
            raise ParseError(f"map {name}: values must be an array of pointers")
        elem = _btf.skip_qualifiers(elem)
        if isinstance(elem, _btf.FuncProto):
            return None  # prog array: values are programs
        if isinstance(elem, _btf.Struct):
            inner = self._btf_map_def(f"{name}.inner", elem, section, inner=True)
            return inner
        raise ParseError(f"map {name}: values of {_btf.describe(elem)} are not supported")

    def _read_legacy_maps(self, maps: dict[str, MapSpec], map_by_symbol: dict[int, str]) -> None:
        sec = self.by_name.get("maps")
        if sec is None:
            return
        syms = sorted(
            (s for s in self._symbols_in(sec.index) if s.type != STT_SECTION and s.name),
            key=lambda s: s.value,
        )
        if not syms:
            return
        even_size = sec.size // len(syms)
        if all(s.size == 0 for s in syms) and (
            even_size < _LEGACY_MAP_DEF.size or even_size * len(syms) != sec.size
        ):
            raise ParseError(
                f"section maps: {sec.size} bytes for {len(syms)} maps is not a whole number of "
                f"map definitions of at least {_LEGACY_MAP_DEF.size} bytes"
            )
        for sym in syms:
            # The symbol's size when it has one (definitions of different sizes), else an
            # even share of the section (how libbpf 0.x read it).
            def_size = sym.size or even_size
            if def_size < _LEGACY_MAP_DEF.size:
                raise ParseError(
                    f"map {sym.name}: legacy definition of {def_size} bytes is shorter than "
                    f"the {_LEGACY_MAP_DEF.size} bytes of struct bpf_map_def"
                )
            raw = sec.data[sym.value : sym.value + def_size]
            if len(raw) < def_size:
                raise ParseError(f"map {sym.name}: definition is truncated")
            mtype, ksize, vsize, entries, flags = _LEGACY_MAP_DEF.unpack_from(raw)
            try:
                map_type = MapType(mtype)
            except ValueError as err:
                raise ParseError(f"map {sym.name}: unknown map type {mtype}") from err
            if sym.name in maps:
                raise ParseError(f"map {sym.name}: defined twice")
            if map_type == MapType.PERF_EVENT_ARRAY:  # as for BTF maps: the kernel's sizes
                ksize, vsize = ksize or 4, vsize or 4
            maps[sym.name] = MapSpec(
                sym.name,
                map_type,
                ksize,
                vsize,
                entries,
                flags,
                extra=bytes(raw[_LEGACY_MAP_DEF.size :]),
                section="maps",
            )
            map_by_symbol[sym.index] = sym.name
            self._map_at[(sec.index, sym.value)] = sym.name

    def _read_data_sections(self, maps: dict[str, MapSpec]) -> dict[str, VariableSpec]:
        variables: dict[str, VariableSpec] = {}
        for sec in self._alloc:  # data sections hold no code
            if not _is_data_section(sec):
                continue
            contents = bytearray(sec.size) if sec.type == SHT_NOBITS else bytearray(sec.data)
            datasec: _btf.Datasec | _Lazy | None = None
            raw_vars: list[tuple[str, int, int, int, int]] | None = None
            if self.btf is not None:
                # the datasec and its variables' types are held by id (decoded on use)
                found = self._datasecs.get(sec.name, [])
                if found:
                    raw_vars = self.btf.datasec_vars(found[0])
                    if raw_vars is None:
                        t = self.btf.type_by_id(found[0])
                        assert isinstance(t, _btf.Datasec)
                        datasec = t
                    else:
                        datasec = _Lazy(self.btf, found[0])
            readonly = sec.name.startswith(".rodata")
            spec = MapSpec(
                sec.name,
                MapType.ARRAY,
                4,
                sec.size,
                1,
                int(MapFlags.RDONLY_PROG) if readonly else 0,
                contents=[MapEntry(0, contents)],
                freeze=readonly,
                section=sec.name,
                btf=self.btf if datasec is not None else None,
                btf_value_type=cast("_btf.Type | None", datasec),  # decoded on read
            )
            if sec.name in maps:
                raise ParseError(f"section {sec.name}: clashes with a map of the same name")
            maps[sec.name] = spec
            if raw_vars is not None:
                assert self.btf is not None
                for vname, vlink, vtype, voff, vsize in raw_vars:
                    linkage = "static" if vlink == _btf.VarLinkage.STATIC else "global"
                    _add_variable(
                        variables,
                        VariableSpec(vname, spec, voff, vsize, _Lazy(self.btf, vtype), linkage),
                    )
            elif isinstance(datasec, _btf.Datasec):
                for vsi in datasec.vars:
                    var = vsi.type
                    assert isinstance(var, _btf.Var)
                    linkage = "static" if var.linkage == _btf.VarLinkage.STATIC else "global"
                    _add_variable(
                        variables,
                        VariableSpec(var.name, spec, vsi.offset, vsi.size, var.type, linkage),
                    )
            else:
                for sym in self._symbols_in(sec.index):
                    if sym.type == STT_OBJECT and sym.name:
                        linkage = "static" if sym.bind == STB_LOCAL else "global"
                        _add_variable(
                            variables,
                            VariableSpec(sym.name, spec, sym.value, sym.size, None, linkage),
                        )
        return variables

    def _read_map_contents(
        self, maps: dict[str, MapSpec], programs: dict[str, ProgramSpec]
    ) -> None:
        """Static initial values of prog arrays and maps of maps (``.rel.maps``): each
        relocation belongs to the map whose variable (the variables the map definitions were
        read from) covers it; only that map's definition struct is decoded."""
        sec = self.by_name.get(".maps")
        if sec is None or not sec.relocs:
            return
        btf = self.btf
        assert btf is not None
        sizes: dict[str, int] = {}  # the first object symbol of each name: its size
        for s in self.symbols:
            if s.type == STT_OBJECT:
                sizes.setdefault(s.name, s.size)
        spans = [
            (name, offset, offset + max(size, sizes.get(name, 0)), tid)
            for name, offset, size, tid in self._btf_map_vars
        ]
        values_at: dict[str, int | None] = {}  # map name → offset of its values field
        for r_offset, sym_index in sec.relocs:
            sym = self.symbols[sym_index]
            owner = next((span for span in spans if span[1] <= r_offset < span[2]), None)
            if owner is None:
                raise ParseError(f"section .maps: relocation at {r_offset} is outside any map")
            map_name, base, _end, var_type = owner
            spec = maps[map_name]
            if map_name not in values_at:
                struct_t = _btf.skip_qualifiers(btf.type_by_id(var_type))
                assert isinstance(struct_t, _btf.Struct)
                values_at[map_name] = next(
                    (m.offset_bits // 8 for m in struct_t.members if m.name == "values"), None
                )
            values_offset = values_at[map_name]
            if values_offset is None:
                raise ParseError(f"map {map_name}: initial values without a values field")
            rel = r_offset - base - values_offset
            if rel < 0 or rel % 8:
                raise ParseError(f"map {map_name}: misaligned initial value at {r_offset}")
            slot = rel // 8
            if spec.type == MapType.PROG_ARRAY:
                if sym.name not in programs:
                    raise ParseError(
                        f"map {map_name}: slot {slot} refers to {sym.name!r}, "
                        "which is not a program"
                    )
            elif spec.type.of_maps:
                if sym.name not in maps:
                    raise ParseError(
                        f"map {map_name}: slot {slot} refers to {sym.name!r}, which is not a map"
                    )
            else:
                raise ParseError(f"map {map_name}: initial values need a prog array or map of maps")
            if slot >= spec.max_entries:
                raise ParseError(
                    f"map {map_name}: slot {slot} is beyond max_entries {spec.max_entries}"
                )
            spec.contents.append(MapEntry(slot, sym.name))
        for spec in maps.values():
            spec.contents.sort(key=lambda e: e.key if isinstance(e.key, int) else 0)

    # ------------------------------------------------------------------ code


# A BTF map definition's fields as its members set them, by MapSpec's argument names: a
# dict filled member by member (in order: a later member overrides an earlier one), then
# one MapSpec made of it.
_MapFields = dict[str, Any]

# values are fds (ids once loaded): the kernel's sizes
_FD_VALUES = frozenset({MapType.ARRAY_OF_MAPS, MapType.HASH_OF_MAPS, MapType.PROG_ARRAY})


def _new_map_fields() -> _MapFields:
    return {"type": MapType.UNSPEC, "key_size": 0, "value_size": 0, "max_entries": 0}


def _set_key_value(
    fields: _MapFields, name: str, field: str, target: _btf.Type | _Lazy | None
) -> None:
    if target is None:
        raise ParseError(f"map {name}: {field} must be a pointer (use __type)")
    # kept by id (a _Lazy, which MapSpec's property decodes on read): only its size is read
    size = target.spec.sizeof_id(target.tid) if isinstance(target, _Lazy) else _btf.sizeof(target)
    fields[field] = target
    fields["key_size" if field == "key" else "value_size"] = size


def _set_uint_field(fields: _MapFields, name: str, field: str, value: int | None) -> None:
    if value is None:
        raise ParseError(f"map {name}: field {field} must be declared with __uint")
    if field == "type":
        map_type = MAP_TYPE_BY_VALUE.get(value)
        if map_type is None:
            raise ParseError(f"map {name}: unknown map type {value}")
        fields["type"] = map_type
    elif field in ("key_size", "value_size"):
        have = fields[field]
        if have and have != value:
            raise ParseError(f"map {name}: {field} {value} conflicts with its BTF type")
        fields[field] = value
    elif field == "map_flags":
        fields["flags"] = value
    elif field == "pinning":
        pinning = PIN_TYPE_BY_VALUE.get(value)
        if pinning is None:
            raise ParseError(f"map {name}: unsupported pinning {value}")
        fields["pinning"] = pinning
    else:  # max_entries, numa_node, map_extra
        fields[field] = value


def _map_def(
    name: str, section: str, btf: _btf.Spec, fields: _MapFields, *, inner: bool
) -> MapSpec:
    map_type = fields["type"]
    if map_type == MapType.UNSPEC and not inner:
        raise ParseError(f"map {name}: definition has no type")
    if map_type in _FD_VALUES:
        fields["key_size"] = fields["key_size"] or 4
        fields["value_size"] = 4  # the kernel stores fds/ids
        fields["value"] = None
    elif map_type == MapType.PERF_EVENT_ARRAY:
        fields["key_size"] = fields["key_size"] or 4
        fields["value_size"] = fields["value_size"] or 4
    return MapSpec(name, section=section, btf=btf, **fields)


def _add_variable(variables: dict[str, VariableSpec], var: VariableSpec) -> None:
    key = var.name if var.name not in variables else f"{var.section}/{var.name}"
    variables[key] = var


def _is_data_section(sec: _Section) -> bool:
    if not (sec.flags & SHF_ALLOC) or sec.flags & SHF_EXECINSTR:
        return False
    name = sec.name
    for prefix in (".data", ".rodata", ".bss"):
        if name == prefix or name.startswith(prefix + "."):
            return sec.size > 0
    return False


def _pointee(t: _btf.Type) -> _btf.Type | None:
    p = _btf.skip_qualifiers(t)
    if isinstance(p, _btf.Pointer):
        return p.target
    return None


def _pointee_ref(t: _btf.Type) -> _btf.Type | _Lazy | None:
    """What :func:`_pointee` gives, without decoding a target not decoded yet."""
    p = _btf.skip_qualifiers(t)
    if isinstance(p, _btf.Pointer):
        return raw_target(p)
    return None


def _uint_field(t: _btf.Type, spec: _btf.Spec) -> int | None:
    """``__uint(name, N)`` is declared as ``int (*name)[N]`` (the array is not decoded)."""
    p = _btf.skip_qualifiers(t)
    if not isinstance(p, _btf.Pointer):
        return None
    return spec.pointed_array_len(p)
