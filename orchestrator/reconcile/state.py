"""What bpforch has applied: the state record, and the observed (actual) state.

The record (``state_dir/state.json``) lives on tmpfs (``/run``), so it has the same lifetime
as the kernel objects it describes. It lists, per collection, the digest that was applied, the
generation, the ids of its programs, maps and links and where they are pinned (relative to
``bpffs_root/<collection>/``). The kernel stays the source of truth: :func:`observe` checks
every recorded pin against it and reports what differs as :class:`Drift`.

Everything here is a frozen value; the file and kernel access live in
:mod:`orchestrator.reconcile.store` and :mod:`orchestrator.reconcile.observe`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

RECORD_VERSION = 1

# Link kinds that BPF_LINK_UPDATE can switch to a new program atomically.
IN_PLACE_KINDS = frozenset({"xdp", "tc", "cgroup", "netns"})


@dataclass(frozen=True, slots=True)
class MapShape:
    """The parts of a map that decide whether a live map can stand in for a new spec, and
    ``timers``: its values hold a ``bpf_timer`` or ``bpf_wq`` (the kernel cancels those,
    and refuses to start new ones, once no pin or fd holds the map: such a map is pinned)."""

    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    timers: bool = False

    def difference(self, new: MapShape) -> str | None:
        """None if a map of this shape can be handed to ``new``; else what differs."""
        for label, old_v, new_v in (
            ("type", self.type, new.type),
            ("key size", self.key_size, new.key_size),
            ("value size", self.value_size, new.value_size),
            ("max entries", self.max_entries, new.max_entries),
            ("flags", self.flags, new.flags),
        ):
            if old_v != new_v:
                return f"{label} {old_v} -> {new_v}"
        return None

    def to_json(self) -> dict[str, int | bool]:
        out: dict[str, int | bool] = {
            "type": self.type,
            "key_size": self.key_size,
            "value_size": self.value_size,
            "max_entries": self.max_entries,
            "flags": self.flags,
        }
        if self.timers:
            out["timers"] = True
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, object]) -> MapShape:
        return cls(
            type=_int(d["type"]),
            key_size=_int(d["key_size"]),
            value_size=_int(d["value_size"]),
            max_entries=_int(d["max_entries"]),
            flags=_int(d["flags"]),
            timers=d.get("timers", False) is True,
        )


@dataclass(frozen=True, slots=True)
class MapRecord:
    """A map of an applied collection. ``pin`` is relative to the collection directory, or
    empty for a map that is not pinned (its programs hold it: it is reached through their
    map ids); substituted maps (``source`` set) belong to someone else and have no pin of
    ours."""

    name: str
    id: int
    shape: MapShape
    pin: str = ""
    preserve: bool = False
    source: str = ""  # "collection/<name>/<map>" or "pinned:<path>" for substitutions
    ino: int = 0  # inode of the pin: a cheap identity check (a re-pin is a new inode)

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "shape": self.shape.to_json(),
            "pin": self.pin,
            "preserve": self.preserve,
            "source": self.source,
            "ino": self.ino,
        }

    @classmethod
    def from_json(cls, name: str, d: Mapping[str, object]) -> MapRecord:
        shape = d["shape"]
        assert isinstance(shape, Mapping)
        return cls(
            name=name,
            id=_int(d["id"]),
            shape=MapShape.from_json(shape),
            pin=str(d.get("pin", "")),
            preserve=bool(d.get("preserve", False)),
            source=str(d.get("source", "")),
            ino=_int(d.get("ino", 0)),
        )


@dataclass(frozen=True, slots=True)
class ProgramRecord:
    name: str
    id: int
    tag: str
    pin: str
    type: int = 0
    ino: int = 0

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "tag": self.tag, "pin": self.pin, "type": self.type, "ino": self.ino}

    @classmethod
    def from_json(cls, name: str, d: Mapping[str, object]) -> ProgramRecord:
        return cls(
            name=name,
            id=_int(d["id"]),
            tag=str(d["tag"]),
            pin=str(d["pin"]),
            type=_int(d.get("type", 0)),
            ino=_int(d.get("ino", 0)),
        )


TargetValue = str | int | bool | None


@dataclass(frozen=True, slots=True)
class AttachmentRecord:
    """A link: ``key`` is :meth:`Attachment.key`, ``kind`` the target kind (xdp, tc,
    cgroup, netns, tracepoint, raw_tracepoint, uprobe, uretprobe). ``target``: every field
    of the target as applied (:func:`plan.target_fields`; None in records written before
    it was kept), so a plan sees a change of a field that is not part of the key (xdp
    ``mode``/``take_over``, tc ``before``/``after``). ``mode``: the XDP mode the kernel
    reported for the link when it was applied (native, generic …; "" for other kinds)."""

    key: str
    program: str
    kind: str
    link_id: int
    pin: str
    target: Mapping[str, TargetValue] | None = None
    mode: str = ""

    @property
    def in_place(self) -> bool:
        return self.kind in IN_PLACE_KINDS

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "program": self.program,
            "kind": self.kind,
            "link_id": self.link_id,
            "pin": self.pin,
        }
        if self.target is not None:
            out["target"] = dict(sorted(self.target.items()))
        if self.mode:
            out["mode"] = self.mode
        return out

    @classmethod
    def from_json(cls, key: str, d: Mapping[str, object]) -> AttachmentRecord:
        target = d.get("target")
        if target is not None and not (
            isinstance(target, Mapping)
            and all(
                isinstance(k, str) and (v is None or isinstance(v, str | int | bool))
                for k, v in target.items()
            )
        ):
            raise ValueError(f"attachment {key}: target: expected a mapping of fields")
        return cls(
            key=key,
            program=str(d["program"]),
            kind=str(d["kind"]),
            link_id=_int(d["link_id"]),
            pin=str(d["pin"]),
            target=dict(target) if target is not None else None,
            mode=str(d.get("mode", "")),
        )


@dataclass(frozen=True, slots=True)
class CollectionRecord:
    """What one apply left live for one collection."""

    name: str
    generation: int
    digest: str
    object_file: str
    object_sha256: str
    manifest: str  # "file:line:column" of the document
    applied_at: str  # ISO 8601, UTC
    git_revision: str | None = None
    maps: Mapping[str, MapRecord] = field(default_factory=dict)
    programs: Mapping[str, ProgramRecord] = field(default_factory=dict)
    attachments: Mapping[str, AttachmentRecord] = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    # what the loaded objects depend on (object, constants, map options, program binding):
    # equal keys mean the live programs and maps can be kept when only attachments change
    load_key: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "load_key": self.load_key,
            "generation": self.generation,
            "digest": self.digest,
            "object": self.object_file,
            "object_sha256": self.object_sha256,
            "manifest": self.manifest,
            "applied_at": self.applied_at,
            "git_revision": self.git_revision,
            "depends_on": list(self.depends_on),
            "maps": {k: v.to_json() for k, v in sorted(self.maps.items())},
            "programs": {k: v.to_json() for k, v in sorted(self.programs.items())},
            "attachments": {k: v.to_json() for k, v in sorted(self.attachments.items())},
        }

    @classmethod
    def from_json(cls, name: str, d: Mapping[str, object]) -> CollectionRecord:
        maps = d.get("maps", {})
        progs = d.get("programs", {})
        atts = d.get("attachments", {})
        deps = d.get("depends_on", [])
        assert isinstance(maps, Mapping) and isinstance(progs, Mapping)
        assert isinstance(atts, Mapping) and isinstance(deps, list)
        rev = d.get("git_revision")
        return cls(
            name=name,
            generation=_int(d["generation"]),
            digest=str(d["digest"]),
            object_file=str(d["object"]),
            object_sha256=str(d.get("object_sha256", "")),
            manifest=str(d.get("manifest", "")),
            applied_at=str(d.get("applied_at", "")),
            git_revision=str(rev) if rev is not None else None,
            maps={str(k): MapRecord.from_json(str(k), v) for k, v in maps.items()},
            programs={str(k): ProgramRecord.from_json(str(k), v) for k, v in progs.items()},
            attachments={str(k): AttachmentRecord.from_json(str(k), v) for k, v in atts.items()},
            depends_on=tuple(str(x) for x in deps),
            load_key=str(d.get("load_key", "")),
        )


@dataclass(frozen=True, slots=True)
class StateRecord:
    collections: Mapping[str, CollectionRecord] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "version": RECORD_VERSION,
            "collections": {k: v.to_json() for k, v in sorted(self.collections.items())},
        }

    @classmethod
    def from_json(cls, d: Mapping[str, object]) -> StateRecord:
        colls = d.get("collections", {})
        assert isinstance(colls, Mapping)
        return cls({str(k): CollectionRecord.from_json(str(k), v) for k, v in colls.items()})


@dataclass(frozen=True, slots=True)
class Drift:
    """A difference between the record and the kernel. ``kind`` is map, program or
    attachment; ``name`` the map/program name or attachment key."""

    kind: str
    name: str
    message: str
    # missing (no pin), replaced (the pin holds another object), detached (link off its
    # hook), program (a live link runs another program than recorded), mode (an XDP link's
    # program runs in another mode than applied), order (a tcx link is not where its
    # before/after puts it), extra (a pin the record does not list: the map is not pinned by
    # the manifest)
    code: str = "missing"

    def __str__(self) -> str:
        return f"{self.kind} {self.name}: {self.message}"

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name, "message": self.message, "code": self.code}


@dataclass(frozen=True, slots=True)
class ActualCollection:
    record: CollectionRecord
    drift: tuple[Drift, ...] = ()

    def drifted(self, kind: str, name: str, *codes: str) -> bool:
        """Whether ``name`` drifted (with one of ``codes``, if given)."""
        return any(
            d.kind == kind and d.name == name and (not codes or d.code in codes) for d in self.drift
        )


@dataclass(frozen=True, slots=True)
class TargetFacts:
    """What the kernel says about one attachment target (gathered before planning, so that
    :func:`plan` stays pure). ``problem``: the target cannot be used (missing interface,
    cgroup or namespace). ``xdp_prog_id``/``xdp_prog_name``: the XDP program currently
    attached to the interface, if any, ``xdp_mode`` its mode (native, generic …) and
    ``xdp_link_id`` the link that holds it (0: attached through netlink, or not looked up:
    links are only searched for targets with ``take_over``)."""

    problem: str | None = None
    xdp_prog_id: int = 0
    xdp_prog_name: str = ""
    xdp_mode: str = ""
    xdp_link_id: int = 0


@dataclass(frozen=True, slots=True)
class CollectionFacts:
    """What the object of a changed collection declares, read before planning."""

    programs: tuple[str, ...] = ()  # programs that will be loaded
    object_sha256: str = ""
    maps: Mapping[str, MapShape] = field(default_factory=dict)  # after max_entries overrides
    problems: tuple[str, ...] = ()  # e.g. an attach type this kernel cannot do
    # maps the loaded programs hold (they refer to them, or hold them through a prog array
    # or a map of maps); None: not known
    held: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Facts:
    collections: Mapping[str, CollectionFacts] = field(default_factory=dict)
    targets: Mapping[str, TargetFacts] = field(default_factory=dict)  # by target key
    pinned: Mapping[Path, str | None] = field(default_factory=dict)  # source -> problem


@dataclass(frozen=True, slots=True)
class Foreign:
    """Something under the bpffs root that bpforch cannot prove it created (a symlink, a
    mount point, a directory without a valid ownership marker, a pin it did not make). It
    is never followed, changed or removed. ``collection``: the collection whose directory
    it stands in place of (that collection can't be applied or destroyed until it is gone)."""

    path: Path
    what: str
    collection: str = ""

    def __str__(self) -> str:
        return f"{self.path}: {self.what}"

    def to_json(self) -> dict[str, str]:
        return {"path": str(self.path), "what": self.what, "collection": self.collection}


@dataclass(frozen=True, slots=True)
class Ownership:
    """What the bpffs root says about ownership. ``token``: of the root's owner marker
    (empty: not claimed yet); ``foreign``: what bpforch leaves alone; ``adopted``:
    collections no record listed, rebuilt from their ownership markers; ``unmarked``:
    recorded collections without a marker (made before markers existed), marked by the
    next apply; ``leftover_programs``: ids of the programs that links in staging leftovers
    run (an apply killed after attaching them: the next apply releases them, so a hook they
    hold is not someone else's)."""

    token: bytes = b""
    foreign: tuple[Foreign, ...] = ()
    adopted: tuple[str, ...] = ()
    unmarked: tuple[str, ...] = ()
    leftover_programs: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class ActualState:
    """The record checked against the kernel. ``staging``: leftovers of interrupted applies
    (provably ours: the next apply removes them); ``ownership``: foreign entries under the
    root and collections adopted from their markers."""

    collections: Mapping[str, ActualCollection] = field(default_factory=dict)
    staging: tuple[Path, ...] = ()
    ownership: Ownership = field(default_factory=Ownership)
    facts: Facts = field(default_factory=Facts)

    @property
    def foreign(self) -> tuple[Foreign, ...]:
        return self.ownership.foreign

    @property
    def record(self) -> StateRecord:
        return StateRecord({k: v.record for k, v in self.collections.items()})


def _int(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"expected an integer, got {v!r}")
    return v
