"""Declared map entries in the reconciler: the live contents read before planning (only of
maps that declare entries, so a no-op plan stays fast), the diff the plan prints, and the
writes an apply makes (batch operations where the kernel has them, undone on failure).

``exact`` is a set diff: declared keys are added or updated, keys not declared deleted (an
array always holds every index: one not declared is reset to zero). ``merge`` only adds and
updates.

The codecs and the manifest's entry rules (:mod:`orchestrator.manifest.entries`) are imported
by the functions that read or encode entries, so a plan of manifests that declare none does
not import them.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.ebpf import MapType
from orchestrator.ebpf.errors import Error as EbpfError
from orchestrator.ebpf.errors import NotSupportedError
from orchestrator.manifest.model import (
    DesiredCollection,
    EntriesMode,
    MapEntry,
    MapOptions,
    Source,
)
from orchestrator.manifest.objects import ObjectError
from orchestrator.reconcile.cache import IdentityMemo
from orchestrator.reconcile.lines import Change, Kind, Op
from orchestrator.reconcile.state import CollectionRecord, EntryFacts

if TYPE_CHECKING:  # (neither the spec nor the map code is imported for a plan that needs none)
    from orchestrator.ebpf import Map
    from orchestrator.ebpf.map_codec import MapCodec
    from orchestrator.ebpf.spec import MapSpec
    from orchestrator.manifest import entries as rules
    from orchestrator.reconcile.actions import WriteEntries

Value = bytes | str

_CHUNK = 4096  # entries per BPF_MAP_LOOKUP_BATCH


@dataclass(frozen=True, slots=True)
class EntryDiff:
    """What writing the declared entries changes: keys added, updated (old -> new), and
    deleted (exact mode: not declared)."""

    add: tuple[bytes, ...] = ()
    update: tuple[bytes, ...] = ()
    delete: tuple[bytes, ...] = ()

    def __bool__(self) -> bool:  # pragma: no cover - guard: compare counts instead
        raise TypeError("EntryDiff has no truth value (use .count)")

    @property
    def count(self) -> int:
        return len(self.add) + len(self.update) + len(self.delete)


def digest(mode: str, declared: Mapping[bytes, Value]) -> str:
    """Of the declared entries and mode (recorded by the apply that writes them)."""
    h = hashlib.sha256(mode.encode())
    parts = []
    for k in sorted(declared):
        v = declared[k]
        raw = v.encode() if isinstance(v, str) else v
        parts.append(b"%d:%b%d:%b" % (len(k), k, len(raw), raw))
    h.update(b"".join(parts))
    return h.hexdigest()


# declared entries already encoded (and their digest), by the identity of the manifest's
# entries and the codec's types: a plan and its apply, or the plans of a watch loop, encode
# 100,000 entries once. Names (prog arrays, maps of maps) are not cached: their fds differ.
_ENCODED = IdentityMemo(16)


def encoded(
    c: MapCodec, entries: Sequence[MapEntry], max_entries: int, mode: str
) -> tuple[rules.Encoded, str]:
    """``entries`` encoded through ``c`` (see :func:`rules.encode_entries`) and their
    digest in ``mode``."""
    from orchestrator.manifest import entries as rules

    if c.type in rules.REFERENCES:
        enc = rules.encode_entries(c, entries, max_entries)
        return enc, digest(mode, enc.compared)
    objs = (entries, c.key_type, c.value_type)
    extra = (
        int(c.type), c.key_size, c.value_size, c.ncpus, max_entries, mode,
        c.key_format, c.value_format,
    )  # fmt: skip
    hit = _ENCODED.get(objs, extra)
    if hit is not None:
        return hit  # type: ignore[return-value]
    enc = rules.encode_entries(c, entries, max_entries)
    out = (enc, digest(mode, enc.compared))
    if not enc.problems:
        _ENCODED.put(objs, extra, out)
    return out


def diff(
    mode: str, declared: Mapping[bytes, Value], live: Mapping[bytes, Value], arrays: bool = False
) -> EntryDiff:
    """The changes that make ``live`` hold ``declared`` in ``mode``."""
    exact = mode == EntriesMode.EXACT.value
    if declared == live or (not exact and declared.items() <= live.items()):
        return EntryDiff()  # the common case, compared in C
    # in the manifest's order (what was not declared: in the map's)
    add = tuple(k for k in declared if k not in live)
    update = tuple(k for k in declared if k in live and live[k] != declared[k])
    delete: tuple[bytes, ...] = ()
    if exact:
        delete = tuple(k for k in live if k not in declared and not (arrays and _zero(live[k])))
    return EntryDiff(add, update, delete)


def _zero(v: Value) -> bool:
    return isinstance(v, bytes) and not any(v)


def declared_maps(d: DesiredCollection) -> Iterator[tuple[str, MapOptions]]:
    """The maps of ``d`` that declare entries (substituted ones never do)."""
    for name, mo in sorted(d.maps.items()):
        if mo.entries is not None and mo.source_from is None:
            yield name, mo


def spec_codec(
    d: DesiredCollection, spec_maps: Mapping[str, MapSpec], programs: Sequence[str], name: str
) -> tuple[MapCodec, int]:
    """The codec of map ``name`` (from the object's spec) and its max_entries as loaded."""
    m = spec_maps[name]
    mo = d.maps[name]
    max_entries = mo.max_entries if mo.max_entries is not None else m.max_entries
    from orchestrator.manifest import entries as rules

    return rules.codec(m, programs=programs, maps=spec_maps), max_entries


def read_live(
    m: Map, c: MapCodec, ids: Mapping[int, str], declared: Mapping[bytes, Value]
) -> dict[bytes, Value]:
    """The live contents of ``m`` as compared with declared ones: raw values, or for a prog
    array or map of maps the name of the id it holds (``ids``; an unknown id as ``#ID``).
    Array indices not declared and holding zero are left out (an array holds every index)."""
    from orchestrator.manifest import entries as rules

    refs = c.type in rules.REFERENCES
    arrays = c.type in rules.ARRAYS
    if not refs and not arrays:
        return dict(m.items_bytes(chunk=_CHUNK))
    out: dict[bytes, Value] = {}
    for k, v in m.items_bytes(chunk=_CHUNK):
        if refs:
            ident = int.from_bytes(v[:4], "little")
            out[k] = ids.get(ident, f"#{ident}")
        elif arrays and k not in declared and not any(v):
            continue
        else:
            out[k] = v
    return out


def shown(c: MapCodec, raw: bytes | str, what: str) -> str:
    """A key or value as the plan prints it (the literal a manifest takes)."""
    from orchestrator.manifest.literals import render

    if isinstance(raw, str):
        return raw
    try:
        value = c.decode_key(raw) if what == "key" else c.decode_value(raw)
    except EbpfError:
        return f"!hex {raw.hex()}"
    if isinstance(value, list) and value and all(v == value[0] for v in value):
        value = value[0]  # a per-CPU value, the same on every CPU
    return render(value)


def _show(
    c: MapCodec,
    entries: Sequence[MapEntry],
    index: Mapping[bytes, int],
    raw: bytes | str,
    what: str,
) -> str:
    """How the plan prints a key (``what`` "key"), a live value ("value") or the declared
    value at key ``raw`` ("declared"): as the manifest writes it where it declares it
    (``!be16 9999`` stays so), else decoded through the codec."""
    if isinstance(raw, bytes) and raw in index and what != "value":
        from orchestrator.manifest.literals import render

        e = entries[index[raw]]
        return render(e.key if what == "key" else e.value)
    return shown(c, raw, what)


def entry_facts(
    d: DesiredCollection,
    rec: CollectionRecord | None,
    objects_get: Callable[[Path], object],
    open_live: Callable[[CollectionRecord, str], Map],
) -> dict[str, EntryFacts]:
    """What the plan needs about each map of ``d`` that declares entries: the declared
    contents, and the live ones when the recorded map is kept (read through ``open_live``)."""
    out: dict[str, EntryFacts] = {}
    maps = list(declared_maps(d))
    if not maps:
        return out
    from orchestrator.manifest import entries as rules

    try:
        info = objects_get(d.object_file)
    except ObjectError:
        return out  # the collection's facts say why
    spec = info.spec  # type: ignore[attr-defined]
    programs = list(d.programs) if d.programs is not None else list(spec.programs)
    for name, mo in maps:
        if name not in spec.maps:
            continue
        c, max_entries = spec_codec(d, spec.maps, programs, name)
        assert mo.entries is not None
        mode = mo.entries_mode.value
        enc, sha = encoded(c, mo.entries, max_entries, mode)
        declared = enc.compared
        facts = EntryFacts(mode, declared, sha)
        if enc.problems:
            out[name] = dataclasses.replace(facts, problem=enc.problems[0].message)
            continue
        mr = rec.maps.get(name) if rec is not None else None
        live: dict[bytes, Value] | None = None
        problem = None
        if rec is not None and mr is not None and not mr.source and _same(mr.shape, c):
            # a prog array's values read back as program ids, a map of maps' as map ids
            if c.type == MapType.PROG_ARRAY:
                ids = {p.id: n for n, p in rec.programs.items()}
            else:
                ids = {m.id: n for n, m in rec.maps.items()}
            try:
                m = open_live(rec, name)
                try:
                    live = read_live(m, c, ids, declared)
                finally:
                    m.close()
            except (EbpfError, OSError) as err:
                problem = f"map {name}: cannot read its entries: {err}"
        out[name] = EntryFacts(
            mode,
            declared,
            facts.digest,
            live,
            None,
            c.type in rules.ARRAYS,
            problem,
            initial(spec.maps[name], c),
            partial(_show, c, mo.entries, enc.index),
        )
    return out


def initial(m: MapSpec, c: MapCodec) -> dict[bytes, Value]:
    """The contents the object puts in ``m`` when it is loaded, as compared (per-CPU maps
    start empty; array indices that hold zero are left out)."""
    from orchestrator.manifest import entries as rules

    out: dict[bytes, Value] = {}
    if c.per_cpu:
        return out
    for e in m.contents:
        key = e.key if isinstance(e.key, bytes) else e.key.to_bytes(c.key_size, "little")
        value: Value = e.value if isinstance(e.value, str) else bytes(e.value)
        if isinstance(value, bytes) and c.type in rules.ARRAYS and not any(value):
            continue
        out[key] = value
    return out


def _same(shape: object, c: MapCodec) -> bool:
    return (
        getattr(shape, "key_size", None) == c.key_size
        and getattr(shape, "value_size", None) == c.value_size
        and getattr(shape, "type", None) == int(c.type)
    )


# ---------------------------------------------------------------------------- planning


@dataclass
class EntryPlan:
    """What the plan does about one collection's declared entries: the actions (with their
    lines), the problems (message, where), the warnings, and the digest of each map's
    declared entries (recorded by the apply)."""

    actions: list[WriteEntries] = field(default_factory=list)
    problems: list[tuple[str, Source | None]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)


def plan_entries(
    d: DesiredCollection,
    rec: CollectionRecord | None,
    facts: Mapping[str, EntryFacts],
    kept: set[str] | None,
) -> EntryPlan:
    """A :class:`WriteEntries` for each map of ``d`` whose declared entries differ from
    what it holds: the live contents for a live map that stays (``kept``: those of a
    reload; None: every map stays), the object's initial contents for a map loaded anew.
    Each change is a line. Pure."""
    out = EntryPlan()
    for mname, mo in declared_maps(d):
        ef = facts.get(mname)
        if ef is None:
            continue  # not in the object: the load says so
        src = mo.source or d.source
        if ef.problem is not None:
            out.problems.append((ef.problem, src))
            continue
        out.digests[mname] = ef.digest
        stays = kept is None or mname in kept
        if stays and ef.unreadable is not None:
            out.problems.append((ef.unreadable, src))
            continue
        if stays and ef.live is None:
            continue  # not recorded: nothing keeps the map
        live = ef.live if stays and ef.live is not None else ef.initial
        delta = diff(ef.mode, ef.declared, live, ef.arrays)
        if delta.count == 0 and stays:
            continue
        show = ef.show
        lines = [
            Change(Op.CREATE, Kind.ENTRY, d.name, mname, show(k, "key"), src) for k in delta.add
        ]
        for k in delta.update:
            old, new = show(live[k], "value"), show(k, "declared")
            reason = f"{show(k, 'key')}: {old} → {new}"
            lines.append(Change(Op.UPDATE, Kind.ENTRY, d.name, mname, reason, src))
        gone = "(not declared: set to zero)" if ef.arrays else "(not declared)"
        for k in delta.delete:
            reason = f"{show(k, 'key')} {gone}"
            lines.append(Change(Op.DELETE, Kind.ENTRY, d.name, mname, reason, src))
        if (
            stays
            and delta.count > 0
            and ef.mode == EntriesMode.EXACT.value
            and rec is not None
            and rec.entries.get(mname) == ef.digest
        ):
            out.warnings.append(
                f"collection {d.name}: map {mname}: its entries changed since the last apply "
                f"wrote these same entries ({len(delta.delete)} not declared, "
                f"{len(delta.update)} changed): if its programs write the map themselves, "
                "exact mode shows what they write as drift on every plan (set entries_mode: "
                "merge)"
            )
        from orchestrator.reconcile.actions import WriteEntries  # a plan that writes

        out.actions.append(
            WriteEntries(
                collection=d.name,
                map=mname,
                mode=ef.mode,
                desired=d,
                record=rec,
                add=len(delta.add),
                update=len(delta.update),
                delete=len(delta.delete),
                lines=tuple(lines),
            )
        )
    return out


# ---------------------------------------------------------------------------- writing


def write(
    m: Map,
    raw: Mapping[bytes, bytes],
    delta: EntryDiff,
    zero: bytes | None,
) -> None:
    """Write ``delta``: added and updated keys with their ``raw`` values, deleted keys
    removed (``zero``: an array's keys are reset to it instead). Batches where the kernel
    has them for this map type, else key by key."""
    ups = [*delta.add, *delta.update]
    values = [raw[k] for k in ups]
    if zero is not None:
        ups += delta.delete
        values += [zero] * len(delta.delete)
    update(m, ups, values)
    if zero is None:
        delete(m, list(delta.delete))


def update(m: Map, keys: Sequence[bytes], values: Sequence[bytes], chunk: int = 65536) -> None:
    """BPF_MAP_UPDATE_BATCH of raw keys and values (chunks of ``chunk``); key by key where
    the kernel has no batch update for the map's type."""
    for i in range(0, len(keys), chunk):
        ks, vs = keys[i : i + chunk], values[i : i + chunk]
        try:
            m.batch_update_bytes(b"".join(ks), b"".join(vs), len(ks))
        except NotSupportedError:
            for k, v in zip(ks, vs, strict=True):
                m.update_bytes(k, v)


def delete(m: Map, keys: Sequence[bytes], chunk: int = 65536) -> None:
    """BPF_MAP_DELETE_BATCH of raw keys; key by key where the kernel has no batch delete."""
    for i in range(0, len(keys), chunk):
        ks = keys[i : i + chunk]
        try:
            m.batch_delete_bytes(b"".join(ks), len(ks))
        except NotSupportedError:
            for k in ks:
                m.delete_bytes(k)


__all__ = [
    "EntryDiff",
    "EntryPlan",
    "declared_maps",
    "delete",
    "diff",
    "digest",
    "entry_facts",
    "plan_entries",
    "read_live",
    "shown",
    "spec_codec",
    "update",
    "write",
]
