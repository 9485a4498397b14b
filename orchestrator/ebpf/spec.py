"""Specs: what an ELF object declares, independent of any kernel.

A :class:`CollectionSpec` is the parsed form of an object: its maps, programs and global
variables. Parsing gives the same spec on every machine; anything that depends on the running
kernel happens at load time (see :mod:`orchestrator.ebpf.collection`). Loading works on the
spec without mutating it.
"""

from __future__ import annotations

import enum
import functools
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from orchestrator.ebpf import btf as _btf
from orchestrator.ebpf._sys import AttachType, MapType, ProgFlags, ProgType
from orchestrator.ebpf.asm import Instructions
from orchestrator.ebpf.btf import layout as _layout
from orchestrator.ebpf.btf.ext import LazyLineInfos
from orchestrator.ebpf.btf.types import _Lazy, lazy_type_attr
from orchestrator.ebpf.errors import BTFError, ConstantError, MapIncompatibleError, SpecError, clip
from orchestrator.ebpf.loadplan import LoadPlans
from orchestrator.ebpf.suggestions import hint

if TYPE_CHECKING:
    from orchestrator.ebpf.btf.ext import CORERelo, FuncInfo, LineInfo
    from orchestrator.ebpf.collection import CollectionOptions
    from orchestrator.ebpf.externs import ExternSpec
    from orchestrator.ebpf.link.struct_ops import StructOpsSpec
    from orchestrator.ebpf.maps import Map
    from orchestrator.ebpf.speccache import SpecCache

T = TypeVar("T")


class PinType(enum.IntEnum):
    """``pinning`` in a BTF map definition (libbpf's ``LIBBPF_PIN_*``)."""

    NONE = 0
    BY_NAME = 1


PIN_TYPE_BY_VALUE: dict[int, PinType] = {int(t): t for t in PinType}  # as MAP_TYPE_BY_VALUE

_TIMER_STRUCTS = frozenset({"bpf_timer", "bpf_wq"})


@dataclass(slots=True)
class MapEntry:
    """One initial element. ``value`` is bytes, or the name of a program (prog arrays) or of
    a map (maps of maps) that load time resolves to an fd."""

    key: int | bytes
    value: bytes | bytearray | str


@dataclass(eq=False)
class MapSpec:
    """A map as declared in an object."""

    name: str
    type: MapType
    key_size: int
    value_size: int
    max_entries: int
    flags: int = 0
    pinning: PinType = PinType.NONE
    inner_map: MapSpec | None = None
    contents: list[MapEntry] = field(default_factory=list)
    key: _btf.Type | None = None
    value: _btf.Type | None = None
    map_extra: int = 0
    numa_node: int = 0
    extra: bytes = b""  # trailing bytes of a legacy ``bpf_map_def`` we do not interpret
    freeze: bool = False  # freeze after writing contents (.rodata)
    section: str = ""  # ELF section the definition came from
    btf: _btf.Spec | None = None  # where ``key``/``value`` live (and the map's BTF type)
    btf_value_type: _btf.Type | None = None  # type whose id is passed as the value type
    struct_ops: StructOpsSpec | None = None  # the table of a BPF_MAP_TYPE_STRUCT_OPS map

    def held_type(self, attr: str) -> _btf.Type | _Lazy | None:
        """What ``attr`` (``key``, ``value``, ``btf_value_type``) holds, without decoding a
        type still held by id (a :class:`_Lazy`, decoded on its first read)."""
        return self.__dict__[_LAZY_SLOTS[attr]]  # type: ignore[no-any-return]

    def _type_id(self, attr: str, spec: _btf.Spec) -> int | None:
        """The id in ``spec`` of the type held in ``attr`` (``key``, ``value``,
        ``btf_value_type``; None for none), without decoding a type still held by id."""
        held = self.__dict__[_LAZY_SLOTS[attr]]
        if held is None:
            return None
        if type(held) is _Lazy and held.spec is spec:
            return held.tid
        return spec.type_id(getattr(self, attr))

    @property
    def is_data_section(self) -> bool:
        return self.section == self.name and self.section.startswith((".data", ".rodata", ".bss"))

    @property
    def holds_timers(self) -> bool:
        """Whether its values hold a ``bpf_timer`` or ``bpf_wq``. The kernel ties those to
        the map's user references: once no pin or fd holds the map, its timers are cancelled
        and ``bpf_timer_init`` fails with EPERM (kernel/bpf/helpers.c, __bpf_async_init), so
        such a map must stay pinned or open while its programs run."""
        stack = [self.value, self.btf_value_type]
        seen: set[int] = set()
        while stack:
            cur = stack.pop()
            if cur is None or id(cur) in seen or len(seen) > 10_000:
                continue
            seen.add(id(cur))
            try:
                cur = _btf.skip_qualifiers(cur)
            except BTFError:
                continue
            if isinstance(cur, _btf.Struct | _btf.Union):
                if cur.name in _TIMER_STRUCTS:
                    return True
                stack.extend(member.type for member in cur.members)
            elif isinstance(cur, _btf.Array | _btf.Var):
                stack.append(cur.type)
            elif isinstance(cur, _btf.Datasec):  # global variables (.bss, .data)
                stack.extend(v.type for v in cur.vars)
        return False

    def encode_key(self, key: object) -> bytes:
        """``key`` as the map's key bytes: through its BTF type (ints, enumerator names,
        strings for char arrays, mappings for structs), or an int of the key's size without
        BTF. SpecError says why it does not fit."""
        return self._encode(key, self.key, self.key_size, "key")

    def decode_key(self, data: bytes) -> object:
        """Key bytes as a value (see :meth:`encode_key`); without BTF an int when the key
        is 1, 2, 4 or 8 bytes, else the bytes."""
        return self._decode(data, self.key)

    def decode_value(self, data: bytes) -> object:
        """One value's bytes (one CPU's, for a per-CPU map) as a value: a dict for a struct,
        a list for an array, an int; without BTF an int of 1, 2, 4 or 8 bytes."""
        return self._decode(data, self.value)

    def key_names(self) -> dict[int, str] | None:
        """The enumerator names of the key's values when the key is an enum, else None."""
        return _btf.enumerators(self.key)

    def _encode(self, value: object, t: _btf.Type | None, size: int, what: str) -> bytes:
        if t is not None:
            try:
                return _layout.encode(t, value)
            except SpecError as err:
                raise SpecError(f"map {self.name}: {what}: {err}") from err
        if isinstance(value, bool) or not isinstance(value, int) or size not in (1, 2, 4, 8):
            raise SpecError(f"map {self.name}: {what}: give an int of {size} bytes (no BTF)")
        try:
            return value.to_bytes(size, "little", signed=value < 0)
        except OverflowError as err:
            raise SpecError(f"map {self.name}: {what}: {value} does not fit {size} bytes") from err

    @staticmethod
    def _decode(data: bytes, t: _btf.Type | None) -> object:
        if t is not None:
            return _layout.decode(t, data)
        if len(data) in (1, 2, 4, 8):
            return int.from_bytes(data, "little")
        return bytes(data)

    def copy(self) -> MapSpec:
        # All fields in one step, without dataclasses.replace (which re-runs __init__):
        # copies are on the path of every served spec's first touch. BTF types are shared
        # (immutable after parse); the inner map and the contents are the copy's own.
        new = object.__new__(type(self))
        fields = new.__dict__ = self.__dict__.copy()
        inner = fields["inner_map"]
        if inner is not None:
            fields["inner_map"] = inner.copy()
        contents = fields["contents"]
        fields["contents"] = (
            []
            if len(contents) == 0
            else [
                MapEntry(e.key, bytearray(e.value) if isinstance(e.value, bytearray) else e.value)
                for e in contents
            ]
        )
        return new

    def check_compatible(
        self,
        *,
        type: MapType | int,
        key_size: int,
        value_size: int,
        max_entries: int,
        flags: int,
        what: str,
        ignore_flags: int = 0,
    ) -> None:
        """Raise :class:`MapIncompatibleError` naming the first field that differs."""
        want_flags = self.flags & ~ignore_flags
        have_flags = flags & ~ignore_flags
        if (int(self.type), self.key_size, self.value_size, self.max_entries, want_flags) == (
            int(type),
            key_size,
            value_size,
            max_entries,
            have_flags,
        ):
            return  # compatible: no message to build (a map opened from a pin on every load)
        checks: list[tuple[str, object, object]] = [
            ("type", MapType(self.type).name.lower(), _type_name(type)),
            ("key size", self.key_size, key_size),
            ("value size", self.value_size, value_size),
            ("max entries", self.max_entries, max_entries),
            ("flags", hex(want_flags), hex(have_flags)),
        ]
        for label, want, have in checks:
            if want != have:
                raise MapIncompatibleError(
                    self.name, f"{what} has {label} {have}, spec wants {want}"
                )

    def compatible_with(self, other: MapSpec) -> None:
        """Raise :class:`MapIncompatibleError` unless ``other`` could stand in for this map."""
        self.check_compatible(
            type=other.type,
            key_size=other.key_size,
            value_size=other.value_size,
            max_entries=other.max_entries,
            flags=other.flags,
            what=f"map {other.name}",
        )


# MapSpec's BTF types may be held as a type id of ``btf`` (a _Lazy, what the ELF reader
# stores) and are decoded on first read: a parse that nobody inspects decodes little. The
# dataclass's fields become properties over private attributes (its __init__, repr and
# dataclasses.fields() go through them, so nothing observable changes).
_LAZY_SLOTS = {"key": "_key", "value": "_value", "btf_value_type": "_btf_value_type"}


for _attr, _slot in _LAZY_SLOTS.items():
    setattr(MapSpec, _attr, lazy_type_attr(_slot))


def _type_name(t: MapType | int) -> str:
    try:
        return MapType(t).name.lower()
    except ValueError:
        return str(int(t))


@dataclass(frozen=True, slots=True)
class Unresolved:
    """A reference in a program that the loader cannot resolve: a symbol no section of the
    object defines, or a relocation against something programs cannot refer to. The
    program is still in the spec; loading it fails, naming this (as with cilium/ebpf,
    loading the object's other programs works).

    ``insn``: the slot in the program's instructions; ``function``: the subprogram it is in
    ("" for the program itself); ``symbol``: the symbol the relocation names ("" for none).
    """

    insn: int
    reason: str
    symbol: str = ""
    function: str = ""

    def __str__(self) -> str:
        where = f" (in {self.function})" if self.function else ""
        return f"instruction {self.insn}{where}: {self.reason}"


@dataclass(eq=False)
class ProgramSpec:
    """A program with every subprogram it calls already linked in.

    ``instructions`` refer to maps and externs by name; load time resolves them.
    ``unresolved`` lists what linking could not resolve: such a program cannot be loaded.
    """

    name: str
    type: ProgType
    attach_type: AttachType | None
    section: str
    instructions: Instructions
    license: str = ""
    kernel_version: int = 0
    flags: ProgFlags = ProgFlags.NONE
    attach_to: str = ""
    autoload: bool = True
    known_section: bool = True
    func_infos: tuple[FuncInfo, ...] = ()
    line_infos: tuple[LineInfo, ...] = ()
    core_relos: tuple[CORERelo, ...] = ()
    btf: _btf.Spec | None = None
    unresolved: tuple[Unresolved, ...] = ()

    def held_line_infos(self) -> tuple[LineInfo, ...] | LazyLineInfos:
        """What ``line_infos`` holds, without building records still held as parsed (a
        :class:`~.btf.ext.LazyLineInfos`, which the loader encodes as they are)."""
        return self.__dict__["line_infos"]  # type: ignore[no-any-return]

    def copy(self) -> ProgramSpec:
        # Instructions and BTF records are immutable: a shallow copy is a deep one.
        new = object.__new__(type(self))
        new.__dict__ = self.__dict__.copy()
        return new

    @property
    def maps(self) -> set[str]:
        """Names of the maps the instructions refer to."""
        from orchestrator.ebpf.asm import RefKind

        return self.instructions.referenced(RefKind.MAP) | self.instructions.referenced(
            RefKind.MAP_VALUE
        )


# A parsed program's line info may be held as ranges of the .BTF.ext records (a
# LazyLineInfos, what the ELF reader stores), built on first read: the field is a property
# over the same __dict__ key (its __init__, repr and dataclasses.fields() go through it, and
# load plans, which compare __dict__, see the same holder before and after the read).
def _get_line_infos(self: ProgramSpec) -> tuple[LineInfo, ...]:
    held = self.__dict__["line_infos"]
    if type(held) is LazyLineInfos:
        return held.get()
    return held  # type: ignore[no-any-return]


def _set_line_infos(self: ProgramSpec, value: tuple[LineInfo, ...] | LazyLineInfos) -> None:
    self.__dict__["line_infos"] = value


setattr(ProgramSpec, "line_infos", property(_get_line_infos, _set_line_infos))  # noqa: B010


class VariableSpec:
    """A global variable: a window onto the initial contents of a data-section map."""

    __slots__ = ("_map", "_type", "linkage", "name", "offset", "size")

    def __init__(
        self,
        name: str,
        map_spec: MapSpec,
        offset: int,
        size: int,
        type: _btf.Type | _Lazy | None,
        linkage: str = "global",
    ) -> None:
        self.name = name
        self._map = map_spec
        self.offset = offset
        self.size = size
        self._type = type  # a _Lazy (a type id) until first read
        self.linkage = linkage

    type: _btf.Type | None  # held as a type id until first read (the property below)

    @property
    def section(self) -> str:
        return self._map.name

    @property
    def readonly(self) -> bool:
        """True for constants (``const volatile`` globals in ``.rodata*``)."""
        return self._map.name.startswith(".rodata")

    @property
    def constant(self) -> bool:
        return self.readonly

    def _buffer(self) -> bytearray:
        if not self._map.contents:
            self._map.contents.append(MapEntry(0, bytearray(self._map.value_size)))
        entry = self._map.contents[0]
        if not isinstance(entry.value, bytearray):
            entry.value = bytearray(entry.value if isinstance(entry.value, bytes) else b"")
            entry.value.extend(bytes(self._map.value_size - len(entry.value)))
        return entry.value

    @property
    def raw(self) -> bytes:
        return bytes(self._buffer()[self.offset : self.offset + self.size])

    @property
    def value(self) -> object:
        """The initial value, decoded by its BTF type (raw bytes without BTF)."""
        if self.type is None:
            return self.raw
        return _layout.decode(self.type, self.raw)

    @value.setter
    def value(self, value: object) -> None:
        self.set(value)

    def set(self, value: object) -> None:
        """Set the initial value; checked against the BTF type (kind, size, signedness)."""
        self._write(self.encode(value))

    def encode(self, value: object) -> bytes:
        """The bytes :meth:`set` would write for ``value``, or its :class:`ConstantError`."""
        if self.type is None:
            if not isinstance(value, (bytes, bytearray)) or len(value) != self.size:
                raise ConstantError(self.name, f"has no BTF type; give exactly {self.size} bytes")
            data = bytes(value)
        else:
            data = _layout.check_constant(self.name, self.type, value)
        if len(data) != self.size:
            raise ConstantError(
                self.name, f"encoded to {len(data)} bytes, variable has {self.size}"
            )
        return data

    def _write(self, data: bytes) -> None:
        self._buffer()[self.offset : self.offset + self.size] = data

    def _rebind(self, map_spec: MapSpec) -> VariableSpec:
        return VariableSpec(self.name, map_spec, self.offset, self.size, self._type, self.linkage)

    def __repr__(self) -> str:
        kind = _btf.describe(self.type) if self.type is not None else f"{self.size} bytes"
        return f"VariableSpec({self.name!r}, {self.section}+{self.offset}, {kind})"


setattr(  # noqa: B010
    VariableSpec,
    "type",
    lazy_type_attr("_type", "The variable's BTF type (None without BTF)."),
)


class CollectionSpec:
    """Everything an object declares: maps, programs and variables by name."""

    def __init__(
        self,
        maps: dict[str, MapSpec] | None = None,
        programs: dict[str, ProgramSpec] | None = None,
        variables: dict[str, VariableSpec] | None = None,
        btf: _btf.Spec | None = None,
        *,
        name: str = "",
        path: str = "",
        externs: dict[str, ExternSpec] | None = None,
    ) -> None:
        self._maps: dict[str, MapSpec] = maps or {}
        self._programs: dict[str, ProgramSpec] = programs or {}
        self._variables: dict[str, VariableSpec] = variables or {}
        self.btf = btf
        # Externs (__kconfig/__ksym) the programs use; resolved at load time.
        self._externs: dict[str, ExternSpec] = externs or {}
        # A served spec (see _serve): the cache's spec whose maps, programs, variables
        # and externs this one reads until its first access to them copies them.
        self._source: CollectionSpec | None = None
        self.name = name
        self.path = path
        # Existing maps that replace spec maps (rewrite_maps); consumed by Collection.
        self.map_replacements: dict[str, Map] = {}
        # What loading worked out, shared with copies; each entry is used only while the
        # map or program it was made from is unchanged (see orchestrator.ebpf.loadplan).
        self._plans = LoadPlans()

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, cache: bool = True) -> CollectionSpec:
        """Parse an ELF object file (no kernel needed).

        With ``cache`` (the default), an object parsed before and unchanged since is not
        parsed again: you get a copy of the cached spec, yours to change
        (see :mod:`orchestrator.ebpf.speccache`).
        """
        if cache:
            return _spec_cache().get(path)
        from orchestrator.ebpf.elf import load_file

        return load_file(os.fspath(path))

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "") -> CollectionSpec:
        from orchestrator.ebpf.elf import load_bytes

        return load_bytes(data, name=name)

    # ------------------------------------------------------------------ copy on write
    #
    # A spec the spec cache serves (_serve) shares the cached spec's maps, programs,
    # variables and externs instead of copying them up front. The rule: the first access to
    # any of the four through its attributes (a read too: what is read may then be changed
    # in place) gives the spec its own deep copy of all four, exactly what copy() makes;
    # the cached spec is never changed. Loading reads the shared ones without copying
    # (_shared(): the loader only reads a spec).

    @property
    def maps(self) -> dict[str, MapSpec]:
        return self._own()._maps

    @maps.setter
    def maps(self, value: dict[str, MapSpec]) -> None:
        self._own()._maps = value

    @property
    def programs(self) -> dict[str, ProgramSpec]:
        return self._own()._programs

    @programs.setter
    def programs(self, value: dict[str, ProgramSpec]) -> None:
        self._own()._programs = value

    @property
    def variables(self) -> dict[str, VariableSpec]:
        return self._own()._variables

    @variables.setter
    def variables(self, value: dict[str, VariableSpec]) -> None:
        self._own()._variables = value

    @property
    def externs(self) -> dict[str, ExternSpec]:
        return self._own()._externs

    @externs.setter
    def externs(self, value: dict[str, ExternSpec]) -> None:
        self._own()._externs = value

    def _serve(self, name: str, path: str) -> CollectionSpec:
        """A spec equal to a copy of this one (named ``name``, read from ``path``) that
        copies its maps, programs, variables and externs only when first accessed. This
        spec must never change (the spec cache's own spec)."""
        out = CollectionSpec.__new__(CollectionSpec)
        src = self._source
        out._source = self if src is None else src
        out.btf = self.btf
        out.name = name
        out.path = path
        out.map_replacements = dict(self.map_replacements)
        out._plans = self._plans
        return out

    def _shared(self) -> CollectionSpec:
        """The spec whose maps, programs, variables and externs this one holds for now
        (itself, or the cached spec it was served from): only ever read them."""
        src = self._source
        return self if src is None else src

    def _own(self) -> CollectionSpec:
        src = self._source
        if src is not None:
            self._maps, self._programs, self._variables, self._externs = src._copy_parts()
            self._source = None
        return self

    def _copy_parts(
        self,
    ) -> tuple[
        dict[str, MapSpec], dict[str, ProgramSpec], dict[str, VariableSpec], dict[str, ExternSpec]
    ]:
        src = self._shared()
        maps = {name: m.copy() for name, m in src._maps.items()}
        # Inner maps that are also top-level maps keep pointing at their own copies.
        variables: dict[str, VariableSpec] = {}
        for key, var in src._variables.items():
            owner = maps.get(var.section)
            variables[key] = var._rebind(owner) if owner is not None else var
        programs = {name: p.copy() for name, p in src._programs.items()}
        return maps, programs, variables, dict(src._externs)

    def copy(self) -> CollectionSpec:
        """A deep copy: changing it (or loading it) never touches this spec."""
        maps, programs, variables, externs = self._copy_parts()
        out = CollectionSpec(
            maps,
            programs,
            variables,
            self.btf,  # treated as immutable after parsing
            name=self.name,
            path=self.path,
            externs=externs,
        )
        out.map_replacements = dict(self.map_replacements)
        out._plans = self._plans  # entries check the spec they are used for
        return out

    # ------------------------------------------------------------------ rewriting

    def rewrite_constants(self, values: Mapping[str, object]) -> None:
        """Set ``.rodata`` constants before load. Checks names, kinds and sizes first, so a
        failure changes nothing."""
        for var, data in self._check_constants(values, self.variables):
            var._write(data)

    def check_constants(self, values: Mapping[str, object]) -> None:
        """Raise the :class:`ConstantError` that :meth:`rewrite_constants` would, changing
        nothing (no copy of the spec needed to validate a manifest's constants)."""
        self._check_constants(values, self._shared()._variables)

    @staticmethod
    def _check_constants(
        values: Mapping[str, object], variables: dict[str, VariableSpec]
    ) -> list[tuple[VariableSpec, bytes]]:
        staged: list[tuple[VariableSpec, object]] = []
        for name, value in values.items():
            var = variables.get(name)
            if var is None or not var.constant:
                constants = sorted(n for n, v in variables.items() if v.constant)
                raise ConstantError(name, f"not in object{hint(name, constants)}")
            staged.append((var, value))
        # Validate everything before writing anything.
        return [(var, var.encode(value)) for var, value in staged]

    def rewrite_maps(self, replacements: Mapping[str, Map]) -> None:
        """Use existing maps instead of creating the named ones. Each must be compatible and
        referenced by at least one program."""
        shared = self._shared()  # only read
        used = set()
        for prog in shared._programs.values():
            used |= prog.maps
        for name, existing in replacements.items():
            spec = shared._maps.get(name)
            if spec is None:
                raise SpecError(
                    f"map {clip(name)}: not in object{hint(name, sorted(shared._maps))}"
                )
            if name not in used:
                raise SpecError(f"map {clip(name)}: not referenced by any program")
            existing.check_compatible_with(spec)
        for name, existing in replacements.items():
            self.map_replacements[name] = existing

    # ------------------------------------------------------------------ binding

    def subset(
        self, programs: Iterable[str], maps: Iterable[str] = ()
    ) -> tuple[list[str], list[str]]:
        """The programs and maps that loading only ``programs`` and ``maps`` creates
        (``load_and_assign``, ``programs:`` in a manifest): the maps their instructions
        refer to, and what the prog arrays and maps of maps among those hold, transitively.
        Pure: nothing is loaded."""
        progs: set[str] = set()
        found: set[str] = set()
        todo_progs, todo_maps = list(programs), list(maps)
        shared = self._shared()  # only read
        all_progs, all_maps = shared._programs, shared._maps
        for name in todo_progs:
            if name not in all_progs:
                raise SpecError(f"program {name}: not in object{hint(name, sorted(all_progs))}")
        for name in todo_maps:
            if name not in all_maps:
                raise SpecError(f"map {name}: not in object{hint(name, sorted(all_maps))}")
        while todo_progs or todo_maps:
            if todo_progs:
                name = todo_progs.pop()
                if name not in progs:
                    progs.add(name)
                    todo_maps.extend(m for m in all_progs[name].maps if m in all_maps)
                continue
            name = todo_maps.pop()
            if name in found:
                continue
            found.add(name)
            spec = all_maps[name]
            held = [e.value for e in spec.contents if isinstance(e.value, str)]
            if spec.type == MapType.PROG_ARRAY:
                todo_progs.extend(h for h in held if h in all_progs)
            else:
                todo_maps.extend(h for h in held if h in all_maps)
        return sorted(progs), sorted(found)

    def assign(self, target: T) -> T:
        """Set the fields of ``target`` bound with :func:`bind` to specs of this collection."""
        from orchestrator.ebpf.binding import assign_specs

        return assign_specs(self, target)

    def load_and_assign(self, target: T, options: CollectionOptions | None = None) -> T:
        """Load only what ``target`` binds (plus dependencies) and assign the live objects.

        Ownership moves to ``target``'s fields; close them (or ``ebpf.close_all(target)``).
        """
        from orchestrator.ebpf.binding import load_and_assign

        return load_and_assign(self, target, options)

    def __repr__(self) -> str:
        shared = self._shared()
        return (
            f"CollectionSpec({self.name or self.path!r}, maps={sorted(shared._maps)}, "
            f"programs={sorted(shared._programs)})"
        )


@functools.cache
def _spec_cache() -> SpecCache:
    # Imported on first use (speccache imports this module); an import statement in
    # from_file itself would cost more than a cache hit.
    from orchestrator.ebpf.speccache import default

    return default
