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

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _text
from pathlib import Path
from typing import Any

from orchestrator.ebpf.errors import clip, quote

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
    def from_json(cls, d: object, at: str = "shape") -> MapShape:
        d = _mapping(d, at)
        return cls(
            type=_int(d, "type", at),
            key_size=_int(d, "key_size", at),
            value_size=_int(d, "value_size", at),
            max_entries=_int(d, "max_entries", at),
            flags=_int(d, "flags", at),
            timers=_bool(d, "timers", at, False),
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
    def from_json(cls, name: str, d: object, at: str = "") -> MapRecord:
        at = at or f"maps.{name}"
        d = _mapping(d, at)
        return cls(
            name=name,
            id=_int(d, "id", at),
            shape=MapShape.from_json(_mapping(_get(d, "shape", at), f"{at}.shape"), f"{at}.shape"),
            pin=_pin(d, "pin", at),
            preserve=_bool(d, "preserve", at, False),
            source=_source(d, "source", at),
            ino=_int(d, "ino", at, 0),
        )


@dataclass(frozen=True, slots=True)
class ProgramRecord:
    """A loaded program. ``verified_insns``: the instructions the verifier processed when
    it was loaded (0 in records written before it was kept), for budget warnings."""

    name: str
    id: int
    tag: str
    pin: str
    type: int = 0
    ino: int = 0
    verified_insns: int = 0

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "tag": self.tag,
            "pin": self.pin,
            "type": self.type,
            "ino": self.ino,
            "verified_insns": self.verified_insns,
        }

    @classmethod
    def from_json(cls, name: str, d: object, at: str = "") -> ProgramRecord:
        at = at or f"programs.{name}"
        d = _mapping(d, at)
        return cls(
            name=name,
            id=_int(d, "id", at),
            tag=_str(d, "tag", at),
            pin=_pin(d, "pin", at, None),
            type=_int(d, "type", at, 0),
            ino=_int(d, "ino", at, 0),
            verified_insns=_int(d, "verified_insns", at, 0),
        )


TargetValue = str | int | bool | None


@dataclass(frozen=True, slots=True)
class AttachmentRecord:
    """A link: ``key`` is :meth:`Attachment.key`, ``kind`` the target kind (xdp, tc,
    cgroup, netns, tracepoint, raw_tracepoint, uprobe, uretprobe). ``target``: every field
    of the target as applied (:func:`plan.target_fields`; None in records written before
    it was kept), so a plan sees a change of a field that is not part of the key (xdp
    ``mode``/``take_over``, tc ``before``/``after``). ``mode``: the XDP mode the kernel
    reported for the link when it was applied (native, generic …; "" for other kinds).
    ``ino``: the inode of the pin, for a link of a kind that can be neither switched to
    another program nor detached (tracepoint, raw_tracepoint, uprobe: a re-pin is a new
    inode, so the same inode is the same link, running the recorded program); 0 for the
    other kinds (read back on every observe) and in records written before it was kept."""

    key: str
    program: str
    kind: str
    link_id: int
    pin: str
    target: Mapping[str, TargetValue] | None = None
    mode: str = ""
    ino: int = 0

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
        if self.ino:
            out["ino"] = self.ino
        return out

    @classmethod
    def from_json(cls, key: str, d: object, at: str = "") -> AttachmentRecord:
        at = at or f"attachments.{key}"
        d = _mapping(d, at)
        target = d.get("target")
        if target is not None and not (
            isinstance(target, Mapping)
            and all(
                isinstance(k, str) and (v is None or isinstance(v, str | int | bool))
                for k, v in target.items()
            )
        ):
            raise RecordFieldError(f"{at}.target", "expected a mapping of fields")
        return cls(
            key=key,
            program=_str(d, "program", at),
            kind=_str(d, "kind", at),
            link_id=_int(d, "link_id", at),
            pin=_pin(d, "pin", at, None),
            target=dict(target) if target is not None else None,
            mode=_str(d, "mode", at, ""),
            ino=_int(d, "ino", at, 0),
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
    # map -> digest of the entries the last apply wrote there (declared contents and mode)
    entries: Mapping[str, str] = field(default_factory=dict)
    # the manifest's labels as applied; None in records written before they were kept
    labels: Mapping[str, str] | None = None

    def to_json(self) -> dict[str, object]:
        out = self._json()
        if self.entries:
            out["entries"] = dict(sorted(self.entries.items()))
        return out

    def _json(self) -> dict[str, object]:
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
            **({"labels": dict(sorted(self.labels.items()))} if self.labels is not None else {}),
        }

    @classmethod
    def from_json(cls, name: str, d: object, at: str = "") -> CollectionRecord:
        at = at or f"collections.{name}"
        d = _mapping(d, at)
        maps = _mapping(d.get("maps", {}), f"{at}.maps")
        progs = _mapping(d.get("programs", {}), f"{at}.programs")
        atts = _mapping(d.get("attachments", {}), f"{at}.attachments")
        deps = d.get("depends_on", [])
        if not isinstance(deps, list):
            raise RecordFieldError(f"{at}.depends_on", f"expected a list, got {_kind(deps)}")
        rev = d.get("git_revision")
        written = _mapping(d.get("entries", {}), f"{at}.entries")
        return cls(
            name=name,
            generation=_int(d, "generation", at),
            digest=_str(d, "digest", at),
            object_file=_str(d, "object", at),
            object_sha256=_str(d, "object_sha256", at, ""),
            manifest=_str(d, "manifest", at, ""),
            applied_at=_str(d, "applied_at", at, ""),
            git_revision=_str(d, "git_revision", at) if rev is not None else None,
            maps={
                k: MapRecord.from_json(k, v, f"{at}.maps.{_key(k)}") for k, v in _items(maps, at)
            },
            programs={
                k: ProgramRecord.from_json(k, v, f"{at}.programs.{_key(k)}")
                for k, v in _items(progs, at)
            },
            attachments={
                k: AttachmentRecord.from_json(k, v, f"{at}.attachments.{_key(k)}")
                for k, v in _items(atts, at)
            },
            depends_on=tuple(_name(x, f"{at}.depends_on[{i}]") for i, x in enumerate(deps)),
            load_key=_str(d, "load_key", at, ""),
            entries={k: _str(written, k, f"{at}.entries") for k, _ in _items(written, at)},
            labels=_labels(d, "labels", at),
        )


def collection_text(rec: CollectionRecord) -> str:
    """One collection's entry of the record as JSON text (compact, keys sorted), as the
    state file and the collection's ownership marker hold it: exactly
    ``json.dumps(rec.to_json(), separators=(",", ":"), sort_keys=True)``, written field by
    field with each object's keys in sorted order (an apply encodes every collection it
    stages; building the dicts of ``to_json`` and sorting them costs twice as much). A part
    whose fields are not of their declared types is written by ``json.dumps`` of its
    ``to_json``. tests/reconcile/test_record_text.py holds it to ``json.dumps``."""
    if not (
        type(rec.generation) is int
        and type(rec.applied_at)
        is type(rec.digest)
        is type(rec.load_key)
        is type(rec.manifest)
        is type(rec.object_file)
        is type(rec.object_sha256)
        is str
        and (rec.git_revision is None or type(rec.git_revision) is str)
        and all(type(x) is str for x in rec.depends_on)
    ):
        return _dumps(rec.to_json())
    rev = "null" if rec.git_revision is None else _text(rec.git_revision)
    entries = f'"entries":{_object_text(rec.entries)},' if len(rec.entries) > 0 else ""
    labels = f'"labels":{_object_text(rec.labels)},' if rec.labels is not None else ""
    return "".join(
        (
            f'{{"applied_at":{_text(rec.applied_at)},"attachments":{{',
            ",".join(
                f"{_text(k)}:{_attachment_text(v)}" for k, v in sorted(rec.attachments.items())
            ),
            f'}},"depends_on":[{",".join(map(_text, rec.depends_on))}],'
            f'"digest":{_text(rec.digest)},{entries}"generation":{rec.generation},'
            f'"git_revision":{rev},{labels}"load_key":{_text(rec.load_key)},'
            f'"manifest":{_text(rec.manifest)},"maps":{{',
            ",".join(f"{_text(k)}:{_map_text(v)}" for k, v in sorted(rec.maps.items())),
            f'}},"object":{_text(rec.object_file)},'
            f'"object_sha256":{_text(rec.object_sha256)},"programs":{{',
            ",".join(f"{_text(k)}:{_program_text(v)}" for k, v in sorted(rec.programs.items())),
            "}}",
        )
    )


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


_SCALARS: dict[type, Callable[[Any], str]] = {
    str: _text,
    int: int.__repr__,
    bool: lambda b: "true" if b else "false",
}


def _object_text(d: Mapping[str, object]) -> str:
    """A mapping of strings to str, int, bool or None, as ``json.dumps`` writes it."""
    texts: list[str] = []
    if all(type(k) is str for k in d):
        for k, v in sorted(d.items()):
            enc = _SCALARS.get(type(v))
            if v is not None and enc is None:
                break
            texts.append(f"{_text(k)}:{'null' if enc is None else enc(v)}")
    if len(texts) != len(d):  # a key or value of another type: as json.dumps has it
        return _dumps(d)
    return "{" + ",".join(texts) + "}"


def _map_text(m: MapRecord) -> str:
    s = m.shape
    if not (
        type(m.id)
        is type(m.ino)
        is type(s.flags)
        is type(s.key_size)
        is type(s.max_entries)
        is type(s.type)
        is type(s.value_size)
        is int
        and type(m.preserve) is type(s.timers) is bool
        and type(m.pin) is type(m.source) is str
    ):
        return _dumps(m.to_json())
    timers = ',"timers":true' if s.timers else ""
    return (
        f'{{"id":{m.id},"ino":{m.ino},"pin":{_text(m.pin)},'
        f'"preserve":{"true" if m.preserve else "false"},"shape":{{"flags":{s.flags},'
        f'"key_size":{s.key_size},"max_entries":{s.max_entries}{timers},'
        f'"type":{s.type},"value_size":{s.value_size}}},"source":{_text(m.source)}}}'
    )


def _program_text(p: ProgramRecord) -> str:
    if not (
        type(p.id) is type(p.ino) is type(p.type) is type(p.verified_insns) is int
        and type(p.tag) is type(p.pin) is str
    ):
        return _dumps(p.to_json())
    return (
        f'{{"id":{p.id},"ino":{p.ino},"pin":{_text(p.pin)},"tag":{_text(p.tag)},'
        f'"type":{p.type},"verified_insns":{p.verified_insns}}}'
    )


def _attachment_text(a: AttachmentRecord) -> str:
    if not (
        type(a.link_id) is type(a.ino) is int
        and type(a.kind) is type(a.mode) is type(a.pin) is type(a.program) is str
    ):
        return _dumps(a.to_json())
    ino = f'"ino":{a.ino},' if a.ino else ""
    mode = f'"mode":{_text(a.mode)},' if a.mode else ""
    target = f',"target":{_object_text(a.target)}' if a.target is not None else ""
    return (
        f'{{{ino}"kind":{_text(a.kind)},"link_id":{a.link_id},{mode}'
        f'"pin":{_text(a.pin)},"program":{_text(a.program)}{target}}}'
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
    def from_json(cls, d: object) -> StateRecord:
        """The record from its JSON form; :class:`RecordFieldError` names the first field that
        does not have the shape this version writes."""
        d = _mapping(d, "the record")
        colls = _mapping(d.get("collections", {}), "collections")
        out = {}
        shapes: dict[_ShapeKey, MapShape] = {}
        for k, v in colls.items():
            if type(k) is str and _COLLECTION.fullmatch(k):
                written = _written_collection(k, v, shapes)
                if written is not None:
                    out[k] = written
                    continue
            name = _name(k, f"collections.{_key(k)}")
            out[name] = CollectionRecord.from_json(name, v, f"collections.{_key(k)}")
        return cls(out)


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
    """A recorded (or adopted) collection as observe found it. ``ident``: the (st_dev,
    st_ino) of its directory under the root (None: no directory there), so that a commit
    swaps out only the tree the plan proved ours."""

    record: CollectionRecord
    drift: tuple[Drift, ...] = ()
    ident: tuple[int, int] | None = field(default=None, compare=False)

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
    unused_maps: tuple[str, ...] = ()  # in the object, but no bound program needs them
    # every constant of the object as it will be loaded (the manifest's value, else the
    # object's), decoded through BTF as a manifest writes it; None: not known, or not
    # decoded (no live constants to compare them with: see gather_facts)
    constants: Mapping[str, object] | None = None
    # the constants of the live generation, read back from its .rodata maps; None: not
    # read (a new collection, or the maps could not be read)
    live_constants: Mapping[str, object] | None = None


@dataclass(frozen=True, slots=True)
class EntryFacts:
    """A map's declared entries and its live contents, read before planning (only for maps
    that declare entries). Keys are raw; values raw bytes, or the name a prog array or map
    of maps holds. ``live``: None when the map is not live yet (or could not be read:
    ``unreadable``); ``problem``: the declared entries do not fit. ``show``: how a key or
    value is printed. ``digest``: of the declared entries and mode, as recorded by the
    apply that writes them. ``arrays``: the map always holds every index (an entry not
    declared is reset to zero)."""

    mode: str
    declared: Mapping[bytes, bytes | str]
    digest: str
    live: Mapping[bytes, bytes | str] | None = None
    problem: str | None = None
    arrays: bool = False
    # why the live map could not be read (a problem only if the plan keeps that map)
    unreadable: str | None = None
    # what a map loaded anew holds: the object's initial contents
    initial: Mapping[bytes, bytes | str] = field(default_factory=dict)
    # how a raw key ("key"), a live value ("value") or the declared value at a raw key
    # ("declared") is printed (the literal a manifest takes)
    show: Callable[[bytes | str, str], str] = field(default=lambda raw, what: repr(raw))


@dataclass(frozen=True, slots=True)
class Facts:
    collections: Mapping[str, CollectionFacts] = field(default_factory=dict)
    targets: Mapping[str, TargetFacts] = field(default_factory=dict)  # by target key
    pinned: Mapping[Path, str | None] = field(default_factory=dict)  # source -> problem
    # collection -> map -> its declared entries and live contents
    entries: Mapping[str, Mapping[str, EntryFacts]] = field(default_factory=dict)


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
    hold is not someone else's); ``recovered``: recorded collections whose tree holds a later
    generation than the record names (an apply killed after swapping it into place, before
    writing the record), taken from their markers and recorded by the next apply."""

    token: bytes = b""
    foreign: tuple[Foreign, ...] = ()
    adopted: tuple[str, ...] = ()
    unmarked: tuple[str, ...] = ()
    leftover_programs: frozenset[int] = frozenset()
    recovered: tuple[str, ...] = ()


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


# ---------------------------------------------------------------------------- reading

# A pin is a path relative to the collection directory (maps/NAME, progs/NAME, links/NAME).
_PIN_PART = re.compile(r"[^/\0]+")
# Collection names are DNS labels (the manifest schema's rule).
_COLLECTION = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_MISSING = object()
_U64_END = 1 << 64


class RecordFieldError(ValueError):
    """The state record does not have the shape this version of bpforch writes; ``field``
    is where (``collections.web.maps.counters.pin``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _key(k: str) -> str:
    return clip(k) if _PIN_PART.fullmatch(k) and "." not in k else quote(k)


def _kind(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, str):
        return f"the string {quote(v)}"
    if isinstance(v, int | float):
        return f"the number {quote(v)}"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, Mapping):
        return "an object"
    return f"a {type(v).__name__}"  # pragma: no cover - json.loads makes no other type


# Each reader below returns at once for the value a record written by bpforch has (an exact
# type test, no helper call), and checks the rest the long way: a record of 1,000 collections
# has some 40,000 fields.


def _mapping(v: object, at: str) -> Mapping[str, object]:
    if type(v) is dict:
        return v
    if not isinstance(v, Mapping):
        raise RecordFieldError(at, f"expected an object, got {_kind(v)}")
    return v


def _items(m: Mapping[str, object], at: str) -> list[tuple[str, object]]:
    for k in m:
        if "\0" in k or not k:
            raise RecordFieldError(f"{at}.{_key(k)}", "a name must be non-empty, without NUL bytes")
    return list(m.items())


def _get(d: Mapping[str, object], key: str, at: str, default: object = _MISSING) -> object:
    v = d.get(key, default)
    if v is _MISSING:
        raise RecordFieldError(f"{at}.{key}", "missing")
    return v


def _int(d: Mapping[str, object], key: str, at: str, default: object = _MISSING) -> int:
    v = d.get(key, default)
    if type(v) is int and 0 <= v < _U64_END:
        return v
    v = _get(d, key, at, default)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 1 << 64:
        raise RecordFieldError(
            f"{at}.{key}", f"expected an integer from 0 to 2^64-1, got {_kind(v)}"
        )
    return v


def _bool(d: Mapping[str, object], key: str, at: str, default: object = _MISSING) -> bool:
    v = d.get(key, default)
    if type(v) is bool:
        return v
    v = _get(d, key, at, default)
    if not isinstance(v, bool):
        raise RecordFieldError(f"{at}.{key}", f"expected true or false, got {_kind(v)}")
    return v


def _str(d: Mapping[str, object], key: str, at: str, default: object = _MISSING) -> str:
    v = d.get(key, default)
    if type(v) is str and "\0" not in v:
        return v
    v = _get(d, key, at, default)
    if not isinstance(v, str):
        raise RecordFieldError(f"{at}.{key}", f"expected a string, got {_kind(v)}")
    if "\0" in v:
        raise RecordFieldError(f"{at}.{key}", f"{quote(v)} contains a NUL byte")
    return v


def _labels(d: Mapping[str, object], key: str, at: str) -> dict[str, str] | None:
    v = d.get(key)
    if v is None:
        return None
    m = _mapping(v, f"{at}.{key}")
    return {k: _str(m, k, f"{at}.{key}") for k, _ in _items(m, f"{at}.{key}")}


def _name(v: object, at: str) -> str:
    if not isinstance(v, str) or not _COLLECTION.fullmatch(v):
        raise RecordFieldError(at, f"{_kind(v)} is not a collection name")
    return v


def _pin(d: Mapping[str, object], key: str, at: str, default: object = "") -> str:
    """A pin relative to the collection directory: no NUL, no '.' or '..' parts, not
    absolute (a record must not steer an unpin outside the owned tree)."""
    v = _str(d, key, at, default)
    if v and not all(_PIN_PART.fullmatch(p) and p not in (".", "..") for p in v.split("/")):
        raise RecordFieldError(f"{at}.{key}", f"{quote(v)} is not a relative pin path")
    return v


def _source(d: Mapping[str, object], key: str, at: str) -> str:
    """ "" (the collection's own map), ``collection/<name>/<map>`` or ``pinned:<path>``."""
    v = _str(d, key, at, "")
    if not v:
        return v
    kind, _, rest = v.partition(":")
    if kind == "pinned" and rest.startswith("/"):
        return v
    parts = v.split("/")
    if (
        len(parts) == 3
        and parts[0] == "collection"
        and _COLLECTION.fullmatch(parts[1])
        and parts[2]
    ):
        return v
    raise RecordFieldError(
        f"{at}.{key}",
        f"unknown source {quote(v)}, expected collection/<name>/<map> or pinned:<path>",
    )


# ---------------------------------------------------------------------------- the written form

# A record of 1,000 collections has some 40,000 fields: reading one back checks each in the
# form bpforch writes it with exact type tests, and builds no field path. Anything else (a
# wrong type, a value out of range, a bad pin or name, a missing field) is handed to the
# ``from_json`` methods above, which accept exactly what this accepts (tests/reconcile:
# test_record_fast_path) and name the field that is wrong.


class _NotWritten(Exception):
    """A value bpforch does not write: the long way says what is wrong with it."""


# a pin: parts of anything but '/' and NUL, none of them '.' or '..' (see _pin)
_PIN_PATH = re.compile(r"(?!\.\.?(?:/|\Z))[^/\0]+(?:/(?!\.\.?(?:/|\Z))[^/\0]+)*")


def _w_int(v: object) -> int:
    if type(v) is int and 0 <= v < _U64_END:
        return v
    raise _NotWritten


def _w_str(v: object) -> str:
    if type(v) is str and "\0" not in v:
        return v
    raise _NotWritten


def _w_bool(v: object) -> bool:
    if type(v) is bool:
        return v
    raise _NotWritten


def _w_pin(v: object) -> str:
    if type(v) is str and (v == "" or _PIN_PATH.fullmatch(v)):
        return v
    raise _NotWritten


def _w_names(v: object) -> dict[str, object]:
    """An object whose keys are names (non-empty, no NUL: see _items)."""
    if type(v) is not dict:
        raise _NotWritten
    for k in v:
        if not k or "\0" in k:
            raise _NotWritten
    return v


# the keys each object of the written form may have: one this code does not know (a field
# added to the record and not here) sends the collection the long way, never dropped
_COLLECTION_KEYS = frozenset(
    ("generation", "digest", "object", "object_sha256", "manifest", "applied_at", "git_revision",
     "maps", "programs", "attachments", "depends_on", "load_key", "entries", "labels")
)  # fmt: skip
_MAP_KEYS = frozenset(("id", "shape", "pin", "preserve", "source", "ino"))
_SHAPE_KEYS = frozenset(("type", "key_size", "value_size", "max_entries", "flags", "timers"))
_PROGRAM_KEYS = frozenset(("id", "tag", "pin", "type", "ino", "verified_insns"))
_ATTACHMENT_KEYS = frozenset(("program", "kind", "link_id", "pin", "target", "mode", "ino"))


# a shape's checked fields, in MapShape's order: each is of one exact type (int, or bool for
# timers), so equal keys are equal shapes
_ShapeKey = tuple[int, int, int, int, int, bool]


def _w_map(name: str, d: object, shapes: dict[_ShapeKey, MapShape]) -> MapRecord:
    """``shapes``: the shapes decoded so far from this record, shared (a MapShape is
    immutable, and the same few shapes recur in every collection of one object)."""
    if type(d) is not dict or not d.keys() <= _MAP_KEYS:
        raise _NotWritten
    shape = d.get("shape")
    if type(shape) is not dict or not shape.keys() <= _SHAPE_KEYS:
        raise _NotWritten
    source = d.get("source", "")
    if source != "":
        _source({"source": _w_str(source)}, "source", "")  # rare: the long check
    key = (
        _w_int(shape.get("type")),
        _w_int(shape.get("key_size")),
        _w_int(shape.get("value_size")),
        _w_int(shape.get("max_entries")),
        _w_int(shape.get("flags")),
        _w_bool(shape.get("timers", False)),
    )
    got = shapes.get(key)
    if got is None:
        got = shapes[key] = MapShape(*key)
    return MapRecord(
        name=name,
        id=_w_int(d.get("id")),
        shape=got,
        pin=_w_pin(d.get("pin", "")),
        preserve=_w_bool(d.get("preserve", False)),
        source=source,
        ino=_w_int(d.get("ino", 0)),
    )


def _w_program(name: str, d: object) -> ProgramRecord:
    if type(d) is not dict or not d.keys() <= _PROGRAM_KEYS:
        raise _NotWritten
    return ProgramRecord(
        name=name,
        id=_w_int(d.get("id")),
        tag=_w_str(d.get("tag")),
        pin=_w_pin(d.get("pin")),
        type=_w_int(d.get("type", 0)),
        ino=_w_int(d.get("ino", 0)),
        verified_insns=_w_int(d.get("verified_insns", 0)),
    )


def _w_attachment(key: str, d: object) -> AttachmentRecord:
    if type(d) is not dict or not d.keys() <= _ATTACHMENT_KEYS:
        raise _NotWritten
    target = d.get("target")
    if target is not None:
        if type(target) is not dict:
            raise _NotWritten
        for k, v in target.items():
            if type(k) is not str or (v is not None and type(v) not in (str, int, bool)):
                raise _NotWritten
        target = dict(target)
    return AttachmentRecord(
        key=key,
        program=_w_str(d.get("program")),
        kind=_w_str(d.get("kind")),
        link_id=_w_int(d.get("link_id")),
        pin=_w_pin(d.get("pin")),
        target=target,
        mode=_w_str(d.get("mode", "")),
        ino=_w_int(d.get("ino", 0)),
    )


def _written_collection(
    name: str, d: object, shapes: dict[_ShapeKey, MapShape] | None = None
) -> CollectionRecord | None:
    """Collection ``name`` (a valid name) of the record if ``d`` is in the form bpforch
    writes, else None (see above). ``shapes``: see :func:`_w_map`."""
    if shapes is None:
        shapes = {}
    try:
        if type(d) is not dict or not d.keys() <= _COLLECTION_KEYS:
            return None
        deps = d.get("depends_on", [])
        if type(deps) is not list or not all(
            type(x) is str and _COLLECTION.fullmatch(x) for x in deps
        ):
            return None
        rev = d.get("git_revision")
        labels = d.get("labels")
        return CollectionRecord(
            name=name,
            generation=_w_int(d.get("generation")),
            digest=_w_str(d.get("digest")),
            object_file=_w_str(d.get("object")),
            object_sha256=_w_str(d.get("object_sha256", "")),
            manifest=_w_str(d.get("manifest", "")),
            applied_at=_w_str(d.get("applied_at", "")),
            git_revision=None if rev is None else _w_str(rev),
            maps={k: _w_map(k, v, shapes) for k, v in _w_names(d.get("maps", {})).items()},
            programs={k: _w_program(k, v) for k, v in _w_names(d.get("programs", {})).items()},
            attachments={
                k: _w_attachment(k, v) for k, v in _w_names(d.get("attachments", {})).items()
            },
            depends_on=tuple(deps),
            load_key=_w_str(d.get("load_key", "")),
            entries={k: _w_str(v) for k, v in _w_names(d.get("entries", {})).items()},
            labels=None if labels is None else {k: _w_str(v) for k, v in _w_names(labels).items()},
        )
    except (_NotWritten, RecordFieldError):
        return None
