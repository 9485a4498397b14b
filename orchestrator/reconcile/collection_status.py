"""The status of the applied collections (what ``bpforch status`` shows): what is applied,
whether the kernel still matches it, with live map entry counts. The daemon's own status is
:mod:`orchestrator.service.daemon_status`."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from orchestrator.ebpf import Map, MapType
from orchestrator.ebpf.errors import Error as EbpfError
from orchestrator.reconcile.budget import budget_warnings
from orchestrator.reconcile.constants import rodata_constants
from orchestrator.reconcile.observe import open_map
from orchestrator.reconcile.owner import open_owned, open_root
from orchestrator.reconcile.rules import attachment_title
from orchestrator.reconcile.state import ActualCollection, ActualState, Drift, Foreign

# Maps whose entries come and go (the rest always hold max_entries elements).
_HASH_LIKE = frozenset(
    {
        MapType.HASH,
        MapType.PERCPU_HASH,
        MapType.LRU_HASH,
        MapType.LRU_PERCPU_HASH,
        MapType.LPM_TRIE,
        MapType.HASH_OF_MAPS,
        MapType.DEVMAP_HASH,
        MapType.SOCKHASH,
    }
)


@dataclass(frozen=True, slots=True)
class ProgramStatus:
    """``verified_insns``: the instructions the verifier processed when the program was
    loaded, as recorded then (0 if the record predates it)."""

    name: str
    id: int
    tag: str
    verified_insns: int = 0

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "id": self.id,
            "tag": self.tag,
            "verified_insns": self.verified_insns,
        }


@dataclass(frozen=True, slots=True)
class MapStatus:
    """``entries``: element count for hash-like maps, else ``max_entries``; None when the
    map could not be opened. ``pin``: where the map is pinned; empty for a map that is not
    pinned (its programs hold it) and for a substituted one (``source``)."""

    name: str
    id: int
    pin: str
    type: str
    max_entries: int
    entries: int | None
    source: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "id": self.id,
            "pin": self.pin,
            "type": self.type,
            "max_entries": self.max_entries,
            "entries": self.entries,
            "source": self.source,
        }


@dataclass(frozen=True, slots=True)
class AttachmentStatus:
    key: str
    program: str
    kind: str
    link_id: int
    pin: str
    alive: bool
    title: str = ""  # the program and its hook, shorter than the key ("" if not recorded)

    def to_json(self) -> dict[str, object]:
        return {
            "title": self.title,
            "key": self.key,
            "program": self.program,
            "kind": self.kind,
            "link_id": self.link_id,
            "pin": self.pin,
            "alive": self.alive,
        }


@dataclass(frozen=True, slots=True)
class CollectionStatus:
    """One applied collection. ``condition``: Ready (the kernel matches the record),
    Drifted (something differs but every attachment is still attached) or Degraded (an
    attachment is gone or detached). ``generation`` counts applies that changed the
    collection; ``observed_generation`` is the generation the kernel was last seen to match
    (``generation`` when Ready). ``labels``: the manifest's labels as applied (None: the
    record predates them); ``constants``: the values the live programs run with, read back
    from their ``.rodata`` maps (None: they could not be read)."""

    name: str
    generation: int
    observed_generation: int
    digest: str
    applied_at: str
    manifest: str
    git_revision: str | None
    condition: str
    reason: str
    message: str
    programs: tuple[ProgramStatus, ...]
    maps: tuple[MapStatus, ...]
    attachments: tuple[AttachmentStatus, ...]
    drift: tuple[Drift, ...]
    labels: Mapping[str, str] | None = None
    constants: Mapping[str, object] | None = None

    def map(self, name: str) -> MapStatus:
        """The map called ``name`` (KeyError if the collection has none)."""
        for m in self.maps:
            if m.name == name:
                return m
        raise KeyError(name)

    def program(self, name: str) -> ProgramStatus:
        for p in self.programs:
            if p.name == name:
                return p
        raise KeyError(name)

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "generation": self.generation,
            "observed_generation": self.observed_generation,
            "digest": self.digest,
            "applied_at": self.applied_at,
            "manifest": self.manifest,
            "git_revision": self.git_revision,
            "condition": self.condition,
            "reason": self.reason,
            "message": self.message,
            "programs": [p.to_json() for p in self.programs],
            "maps": [m.to_json() for m in self.maps],
            "attachments": [a.to_json() for a in self.attachments],
            "drift": [d.to_json() for d in self.drift],
            "labels": dict(self.labels) if self.labels is not None else None,
            "constants": dict(self.constants) if self.constants is not None else None,
        }


@dataclass(frozen=True, slots=True)
class Status:
    collections: tuple[CollectionStatus, ...] = ()
    garbage: tuple[Path, ...] = ()  # staging leftovers the next apply removes
    foreign: tuple[Foreign, ...] = ()  # under the root, not bpforch's: left alone
    adopted: tuple[str, ...] = ()  # rebuilt from their ownership markers (no record)
    recovered: tuple[str, ...] = ()  # a later generation than recorded: read from markers

    def get(self, name: str) -> CollectionStatus | None:
        for c in self.collections:
            if c.name == name:
                return c
        return None

    @property
    def warnings(self) -> tuple[str, ...]:
        """Programs that used more than 80% of the verifier's budget when they were loaded."""
        figures = {c.name: {p.name: p.verified_insns for p in c.programs} for c in self.collections}
        return budget_warnings(figures, recorded=True)

    def to_json(self) -> dict[str, object]:
        return {
            "collections": [c.to_json() for c in self.collections],
            "garbage": [str(p) for p in self.garbage],
            "foreign": [f.to_json() for f in self.foreign],
            "adopted": list(self.adopted),
            "recovered": list(self.recovered),
            "warnings": list(self.warnings),
        }


_Read = Callable[[Map], None]  # reads more of a map while it is open (the constants)


def _pinned_entries(
    path: Path | Callable[[], Map], read: _Read | None = None
) -> tuple[int | None, str]:
    """Entry count and type of a substitution source (someone else's pin, resolved as the
    manifest names it), or of a map opened by ``path()`` (one reached through its
    programs)."""
    try:
        m = Map.from_pin(path) if isinstance(path, Path) else path()
    except (EbpfError, OSError):
        return None, "?"
    return _count(m, read)


def _owned_entries(
    root_fd: int | None, rel: str, read: _Read | None = None
) -> tuple[int | None, str]:
    """Entry count and type of the map pinned at ``<root>/rel``, never through a symlink."""
    if root_fd is None:
        return None, "?"
    try:
        m = Map.from_fd(open_owned(root_fd, rel))
    except (EbpfError, OSError):
        return None, "?"
    return _count(m, read)


def _count(m: Map, read: _Read | None = None) -> tuple[int | None, str]:
    with m:
        if read is not None:
            read(m)
        t = m.type.name.lower() if isinstance(m.type, MapType) else str(m.type)
        if m.type in _HASH_LIKE:
            try:
                return m.count_entries(), t
            except EbpfError:
                return None, t
        return m.max_entries, t


def _type_name(t: int) -> str:
    try:
        return MapType(t).name.lower()
    except ValueError:
        return str(t)


def _source_rel(source: str) -> str:
    """Where a map substituted from another collection lives under the root."""
    _, coll, mname = source.split("/", 2)
    return f"{coll}/maps/{mname.replace('.', '_')}"


def collection_status(
    root: Path, ac: ActualCollection, root_fd: int | None = None
) -> CollectionStatus:
    rec = ac.record
    cdir = root / rec.name
    programs = tuple(
        ProgramStatus(p.name, p.id, p.tag, p.verified_insns)
        for _, p in sorted(rec.programs.items())
    )
    maps = []
    # the constants, read from the .rodata maps while they are open to be counted
    constants: dict[str, object] = {}
    unread: set[str] = set()

    def reader(name: str) -> _Read | None:
        if not name.startswith(".rodata"):
            return None
        unread.add(name)

        def read(m: Map) -> None:
            try:
                constants.update(rodata_constants(m))
            except (EbpfError, OSError, ValueError):
                return
            unread.discard(name)

        return read

    for _, m in sorted(rec.maps.items()):
        if m.source.startswith("pinned:"):
            entries, t = _pinned_entries(Path(m.source.removeprefix("pinned:")))
            maps.append(MapStatus(m.name, m.id, "", t, m.shape.max_entries, entries, m.source))
            continue
        if m.source:
            entries, t = _owned_entries(root_fd, _source_rel(m.source))
            maps.append(MapStatus(m.name, m.id, "", t, m.shape.max_entries, entries, m.source))
            continue
        if not m.pin:  # not pinned: reached through the programs that hold it
            entries, t = _pinned_entries(partial(open_map, root, rec, m), reader(m.name))
            if t == "?":
                t = _type_name(m.shape.type)
            maps.append(MapStatus(m.name, m.id, "", t, m.shape.max_entries, entries))
            continue
        entries, t = _owned_entries(root_fd, f"{rec.name}/{m.pin}", reader(m.name))
        maps.append(
            MapStatus(m.name, m.id, os.fspath(cdir / m.pin), t, m.shape.max_entries, entries)
        )
    dead = {
        d.name
        for d in ac.drift
        if d.kind == "attachment" and d.code in ("missing", "replaced", "detached")
    }
    attachments = tuple(
        AttachmentStatus(
            a.key,
            a.program,
            a.kind,
            a.link_id,
            os.fspath(cdir / a.pin),
            a.key not in dead,
            attachment_title(a.program, a.kind, a.target),
        )
        for _, a in sorted(rec.attachments.items())
    )
    if not ac.drift:
        condition, reason, message = "Ready", "Applied", "the kernel matches the record"
        observed = rec.generation
    else:
        condition = "Degraded" if dead else "Drifted"
        if dead:
            reason = "LinkDetached"
        elif any(d.kind == "attachment" and d.code == "mode" for d in ac.drift):
            reason = "ModeChanged"
        elif any(d.kind == "attachment" and d.code == "order" for d in ac.drift):
            reason = "OrderChanged"
        elif any(d.kind == "attachment" for d in ac.drift):
            reason = "ProgramChanged"
        else:
            reason = "PinMissing" if any(d.code == "missing" for d in ac.drift) else "PinReplaced"
        message = "; ".join(str(d) for d in ac.drift) + " (the next apply repairs it)"
        observed = rec.generation - 1
    return CollectionStatus(
        name=rec.name,
        generation=rec.generation,
        observed_generation=observed,
        digest=rec.digest,
        applied_at=rec.applied_at,
        manifest=rec.manifest,
        git_revision=rec.git_revision,
        condition=condition,
        reason=reason,
        message=message,
        programs=programs,
        maps=tuple(maps),
        attachments=attachments,
        drift=ac.drift,
        labels=rec.labels,
        constants=None if unread else constants,
    )


def build_status(root: Path, actual: ActualState) -> Status:
    try:
        root_fd: int | None = open_root(root)
    except FileNotFoundError:
        root_fd = None
    try:
        return Status(
            tuple(
                collection_status(root, ac, root_fd) for _, ac in sorted(actual.collections.items())
            ),
            actual.staging,
            actual.foreign,
            actual.ownership.adopted,
            actual.ownership.recovered,
        )
    finally:
        if root_fd is not None:
            os.close(root_fd)
