"""Load plans: what loading a map or a program needs that no fd changes, computed once.

A warm load (a spec the spec cache served, loaded again) spends most of its Python time
working out the same things again: BPF_MAP_CREATE and BPF_PROG_LOAD attributes, a
program's instructions with their map references rewritten, the contents to write. A plan
keeps them:

- a map's: its BPF_MAP_CREATE attributes as bytes (only the BTF fd is set per load) and its
  initial contents as BPF_MAP_UPDATE_ELEM attributes (only the map's fd is set per load),
  pointing at key and value buffers the plan keeps alive; from its first reuse on, the
  attributes of the :class:`Map` it creates (only its fd and types are set per load);
  a map of maps' plan also holds its inner map template's BPF_MAP_CREATE attributes (the
  template is created, its fd set in the outer map's attributes, and closed, per load);
- a program's: its instructions with every map reference's source register and value
  offset already set (each load copies them and writes each map's fd in at the offsets
  recorded for it), and its BPF_PROG_LOAD attributes as bytes, pointing at the license,
  func info and line info buffers the plan keeps alive;
- the collection's BTF: the blob ``marshal`` made with the programs' line info strings,
  and its C copy (each load hands the kernel that copy);
- a map pinned by name that a load opened and found compatible with its spec: what that
  check read (:func:`pin_seen`) and the attributes of the :class:`Map` made for it but
  those read per load (each load still opens the pin and reads the kernel's info of it).

Plans live in a :class:`LoadPlans` shared by a spec and its copies
(:meth:`CollectionSpec.copy`: every spec the spec cache hands out for one file), so the
second load of a file reuses what the first one worked out.

**Invalidation.** An entry is used only for a map or program spec equal to the one it was
made from: it keeps a snapshot of the spec's attributes (a map's contents as bytes, its BTF
types as the ids they were given) and the collection's BTF, and the loader compares them
with the spec at hand on every load (a dict comparison: identical objects compare equal
without being looked into). A map plan first compares the spec with all its attributes as
they were held when the plan was made or last fitted (its BTF types as the same objects,
so the same ids): equal, it fits without the ids being worked out again. Any change —
``rewrite_constants``, an edited field, new contents, a different BTF — makes the entry
unusable; the loader makes a new one from the spec as it is, which replaces the old one.
Instructions, func/line info and BTF specs are immutable once parsed (a changed program
gets new ones), so comparing them by identity first is sound. A spec the spec cache served
and its caller has not touched reads the cached spec's own maps and programs, which never
change (:meth:`CollectionSpec._serve`): a plan made or matched for one of those very
objects (its ``made_for``) fits it again without the comparison; any other spec, a touched
copy included, is compared. The BTF plan is used while
the collection's BTF is the same object, the programs' line infos are equal (the same
tuples, compared by identity first) and ``marshal`` still returns the same blob for them
(``add()`` and ``changed()`` drop its cache, so a changed BTF gives a new blob). A map of
maps' inner template is compared on its own, with a snapshot of its attributes (the outer
map's snapshot holds the template object, which may change in place).

A pinned map's entry is used only when the load sees exactly what it saw: the spec's
fields the check reads and the pinned map's type, sizes, max entries and flags as the
kernel reports them now (any other pin, or a changed spec, is checked as on a first load,
and replaces the entry if it passes).

Maps and programs a plan does not cover (struct_ops, an inner template that is a map of
maps itself, ``.kconfig``, typed
initial contents; CO-RE, externs, attach targets looked up in the kernel's BTF) load as
before, from the spec.
"""

from __future__ import annotations

import array
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.ebpf._sys import MapInfo
    from orchestrator.ebpf.btf import Spec as BTFSpec
    from orchestrator.ebpf.btf.ext import LazyLineInfos, LineInfo
    from orchestrator.ebpf.spec import MapSpec, ProgramSpec

# MapSpec's BTF types (held lazily; their decoding changes the attribute): compared through
# the ids the plan gave the kernel instead.
_TYPE_SLOTS = ("_key", "_value", "_btf_value_type")


def map_state(spec: MapSpec | dict[str, object]) -> dict[str, object]:
    """The attributes of ``spec`` (or of what :func:`held_map` returned) a map plan depends
    on, comparable with ``==``."""
    state = dict(spec if isinstance(spec, dict) else spec.__dict__)
    for slot in _TYPE_SLOTS:
        state.pop(slot, None)
    return state


def held_map(spec: MapSpec) -> dict[str, object]:
    """All of ``spec``'s attributes as held now (its BTF types too, decoded or not), with
    the contents copied: a spec equal to this is equal to the plan's snapshot and gives the
    same BTF ids (the same type objects), so it fits without working them out."""
    held = dict(spec.__dict__)
    held["contents"] = _contents(spec)
    return held


def _contents(spec: MapSpec) -> list[object]:
    from orchestrator.ebpf.spec import MapEntry

    return [
        MapEntry(e.key, bytes(e.value) if isinstance(e.value, bytearray) else e.value)
        for e in spec.contents
    ]


@dataclass(frozen=True, slots=True, eq=False)
class InnerPlan:
    """A map of maps' inner map template: created before the outer map (whose attributes
    take its fd) and closed after it, on every load."""

    attr: bytes  # the template's BPF_MAP_CREATE attributes, the BTF fd left 0
    has_ids: bool  # BTF type ids set: created with the collection's BTF fd when it loaded
    # held_map of the template it was made from: the template is compared with it on its
    # own (the outer map's attributes hold the template object, which may change in place)
    held: dict[str, object]


@dataclass(frozen=True, slots=True, eq=False)
class MapPlan:
    btf: BTFSpec | None  # the collection's BTF the ids refer to
    btf_ids: tuple[int, int]
    attr: bytes  # BPF_MAP_CREATE attributes, the BTF fd left 0
    # what ``attr`` holds, kept to be read without reading ``attr`` back (ctypes reads cost)
    has_ids: bool  # BTF type ids set: create with the collection's BTF fd when it loaded
    max_entries: int
    flags: int
    # initial contents, written after creation: BPF_MAP_UPDATE_ELEM attributes, the map's
    # fd left 0, pointing at key and value buffers kept alive in ``buffers``
    writes: tuple[bytes, ...]
    pending: bool  # contents naming programs or maps (written by finalize)
    held: dict[str, object]  # held_map of the spec it was made from or last fitted
    buffers: tuple[array.array[int], ...] = field(default=())
    # the spec cache's own MapSpec (never changed) the plan was made or matched for
    made_for: MapSpec | None = None
    inner: InnerPlan | None = None  # a map of maps' inner map template

    def holds(self, spec: MapSpec, btf: BTFSpec | None, cached: bool) -> bool:
        """Whether ``spec`` is as it was held when the plan was made or last fitted: the
        very spec the plan is for when ``spec`` is the spec cache's own (``cached``), else
        one dict comparison (identical values compare equal without being looked into),
        and one more for a map of maps' inner template."""
        if self.btf is not btf:
            return False
        if cached and self.made_for is spec:
            return True
        if spec.__dict__ != self.held:
            return False
        inner, template = self.inner, spec.inner_map
        return inner is None or (template is not None and template.__dict__ == inner.held)

    def fits(self, spec: MapSpec, btf: BTFSpec | None, btf_ids: tuple[int, int]) -> bool:
        """Whether ``spec`` is equal to the one the plan was made from but for how its BTF
        types are held (decoded since, say), which give the same ids (whether it has a
        key type counts too: int keys are encoded without one)."""
        held = self.held
        return (
            self.inner is None  # a map of maps gets a new plan (its template's ids too)
            and self.btf is btf
            and self.btf_ids == btf_ids
            and (held["_key"] is None) is (spec.__dict__["_key"] is None)
            and map_state(spec) == map_state(held)
        )


@dataclass(frozen=True, slots=True, eq=False)
class ProgramPlan:
    state: dict[str, object]  # the ProgramSpec's attributes when it was made
    btf: BTFSpec | None  # the collection's BTF
    insns: bytes  # map references rewritten, their fds still 0
    # (map, offsets of the imms to write its fd to), maps in the order first referred to
    patches: tuple[tuple[str, tuple[int, ...]], ...]
    attr: bytes  # BPF_PROG_LOAD attributes, without insns, prog_btf_fd and a log
    with_btf: bool  # func/line info in attr: needs the collection's BTF fd
    # what attr points at, kept alive with the plan
    buffers: tuple[array.array[int], ...] = field(default=())
    # the spec cache's own ProgramSpec (never changed) the plan was made or matched for
    made_for: ProgramSpec | None = None

    def fits(self, spec: ProgramSpec, btf: BTFSpec | None, cached: bool) -> bool:
        """Whether ``spec`` is the one the plan was made from: the very spec when ``spec``
        is the spec cache's own (``cached``), else equal to it."""
        if self.btf is not btf:
            return False
        return (cached and self.made_for is spec) or spec.__dict__ == self.state


@dataclass(frozen=True, slots=True, eq=False)
class BTFPlan:
    """The collection's BTF as the last load handed it to the kernel."""

    btf: BTFSpec
    line_infos: tuple[object, ...]  # each program's line infos, in order
    extra: frozenset[str]  # their file names and lines: the key of ``btf.marshal``
    data: bytes  # what ``btf.marshal(extra)`` returned (a new blob after add()/changed())
    strings: dict[str, int]
    buffer: array.array[int]  # the C copy of ``data`` every load hands the kernel
    # the spec cache's own programs (never changed) whose line infos those are
    made_for: dict[str, ProgramSpec] | None = None

    def fits(self, btf: BTFSpec, programs: dict[str, ProgramSpec], cached: bool) -> bool:
        """Whether ``btf`` with the line infos of ``programs`` marshals to ``data``: the
        same line infos (the very programs when they are the spec cache's own, ``cached``;
        else compared, by identity first), the blob the marshal cache holds (a changed BTF
        marshals anew)."""
        return (
            self.btf is btf
            and ((cached and self.made_for is programs) or self.line_infos == line_infos(programs))
            and btf.marshal(self.extra)[0] is self.data
        )


def line_infos(
    programs: dict[str, ProgramSpec],
) -> tuple[tuple[LineInfo, ...] | LazyLineInfos, ...]:
    """Each program's line infos as held, in order (what a :class:`BTFPlan` is made for)."""
    return tuple([p.held_line_infos() for p in programs.values()])


@dataclass(frozen=True, slots=True, eq=False)
class PinPlan:
    """A map pinned by name as a load found it compatible with its spec: what the check
    read (:func:`pin_seen`) and the attributes of the :class:`Map` it made but those read
    from the kernel's info or set per load (``Map._pin_prototype``)."""

    seen: tuple[object, ...]
    prototype: dict[str, object]


def pin_seen(spec: MapSpec, info: MapInfo) -> tuple[object, ...]:
    """Everything the loader reads to check a pinned map against ``spec`` and to make its
    :class:`Map`, but what it reads per load: the spec's name, type, sizes, max entries,
    flags and section (a data section ignores BPF_F_MMAPABLE), and the kernel's ``info`` of
    the pinned map's type, sizes, max entries and flags."""
    return (
        spec.name,
        spec.type,
        spec.key_size,
        spec.value_size,
        spec.max_entries,
        spec.flags,
        spec.section,
        info.type,
        info.key_size,
        info.value_size,
        info.max_entries,
        info.map_flags,
    )


class LoadPlans:
    """The plans of one spec and its copies, by map and program name, and its BTF's. An
    entry is replaced whole, never changed (dict and attribute reads and writes are atomic:
    loads in threads may share it)."""

    __slots__ = ("btf", "map_prototypes", "maps", "pins", "programs")

    def __init__(self) -> None:
        self.maps: dict[str, MapPlan] = {}
        self.programs: dict[str, ProgramPlan] = {}
        self.btf: BTFPlan | None = None
        # The attributes of the Map a map plan creates but its fd and types, by map name,
        # with the plan they were taken for (Map._prototype of the first map made from the
        # plan on its first reuse): a load copies them instead of running Map.__init__.
        # Used only with that very plan (a plan replaced, for any change, gets its own).
        self.map_prototypes: dict[str, tuple[MapPlan, dict[str, object]]] = {}
        # Maps pinned by name that loads found compatible, by map name: a load that finds
        # what the entry saw (the same spec fields, the same shape in the kernel's info)
        # skips the check and copies the map's attributes (a different one replaces it).
        self.pins: dict[str, PinPlan] = {}


__all__ = [
    "BTFPlan",
    "InnerPlan",
    "LoadPlans",
    "MapPlan",
    "PinPlan",
    "ProgramPlan",
    "held_map",
    "line_infos",
    "map_state",
    "pin_seen",
]
