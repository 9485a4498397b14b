"""The desired state: frozen values produced by the manifest loader and consumed by the
reconciler. Nothing here touches the kernel or the file system.

A :class:`DesiredState` maps collection names to :class:`DesiredCollection` values. Every
value remembers where it was declared (:class:`Source`), so that plan and apply errors can
name the file and line just like validation errors do.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.manifest.errors import ManifestProblem

from orchestrator.manifest.api import API_GROUP as API_GROUP
from orchestrator.manifest.api import API_VERSION as API_VERSION
from orchestrator.manifest.api import DEPRECATED_API_VERSIONS as DEPRECATED_API_VERSIONS
from orchestrator.manifest.api import KIND_COLLECTION as KIND_COLLECTION


@dataclass(frozen=True, slots=True)
class Source:
    """Where something was declared: file, 1-based line and column."""

    file: Path
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}:{self.column}"
        return str(self.file)


class OnIncompatible(enum.Enum):
    """What to do when a preserved map's new spec does not match the live map."""

    FAIL = "fail"
    RECREATE = "recreate"


@dataclass(frozen=True, slots=True)
class MapFrom:
    """A map substitution: use another collection's map, or a pinned map, instead of
    creating this one. Exactly one of ``collection``/``pinned`` is set."""

    collection: str | None = None  # name of another declared collection
    map: str | None = None  # that collection's map (defaults to the same map name)
    pinned: Path | None = None  # absolute path of an existing pin on bpffs

    def document(self) -> dict[str, object]:
        if self.pinned is not None:
            return {"pinned": str(self.pinned)}
        return {"collection": self.collection, "map": self.map}


class EntriesMode(enum.Enum):
    """How a map's declared ``entries`` are kept: ``exact`` (a set diff: entries not declared
    are deleted) or ``merge`` (declared entries are added or updated, others left alone)."""

    EXACT = "exact"
    MERGE = "merge"


@dataclass(frozen=True, slots=True)
class MapEntry:
    """One declared entry of a map (``entries: [{key, value}]``): the key and value as
    written (YAML literals, typed through the map's BTF when the object is read)."""

    key: object
    value: object
    source: Source | None = field(default=None, compare=False)

    def document(self) -> dict[str, object]:
        from orchestrator.ebpf.values import plain

        return {"key": plain(self.key), "value": plain(self.value)}


@dataclass(frozen=True, slots=True)
class MapOptions:
    """Per-map settings of a collection.

    ``pin``: pin the map at ``<root>/<collection>/maps/<name>``; without a pin the map is
    reached through the programs that use it. Some maps are pinned whatever ``pin`` says
    (see :func:`orchestrator.reconcile.rules.pin_reason`): preserved maps, maps another
    collection substitutes (``from``), prog arrays (the kernel empties a prog array when no
    pin or fd holds it) and maps whose values hold timers. ``pin_given``: whether the
    manifest spelled ``pin`` (an explicit ``pin: false`` on a map that must be pinned is an
    error).

    ``preserve``: the live map itself (same id) is handed to the next generation as a map
    replacement; nothing is read or copied. What that keeps depends on the type: data maps
    keep their entries; a ring buffer keeps its unread records, and its readers keep
    reading; a perf event array keeps its map, while each entry lives as long as the map fd
    that put it there; cgroup storage elements live with their program's attachment. Prog
    arrays, maps of maps and struct_ops maps hold programs or maps of one generation and
    refuse ``preserve``.

    ``entries``: the contents bpforch keeps in the map (``entries_mode``: exact, a set diff,
    or merge, add and update only); None when the manifest declares none. They are written
    by the apply, not loaded: they are not part of the digest.

    ``source_from``: the programs use that very map (any type, empty or not); it is never
    written, pinned or removed by this collection."""

    name: str
    pin: bool = False
    preserve: bool = False  # hand the live map to the next generation (implies pin)
    max_entries: int | None = None
    on_incompatible: OnIncompatible = OnIncompatible.FAIL
    source_from: MapFrom | None = None
    source: Source | None = field(default=None, compare=False)
    pin_given: bool = field(default=False, compare=False)
    # the declared contents (None: not declared; bpforch does not touch the contents)
    entries: tuple[MapEntry, ...] | None = None
    entries_mode: EntriesMode = EntriesMode.EXACT

    def document(self) -> dict[str, object]:
        """The normalized manifest form (defaults filled in; a valid manifest again)."""
        if self.source_from is not None:
            return {"from": self.source_from.document()}
        out: dict[str, object] = {
            "pin": self.pin,
            "preserve": self.preserve,
            "on_incompatible": self.on_incompatible.value,
        }
        if self.max_entries is not None:
            out["max_entries"] = self.max_entries
        if self.entries is not None:
            out["entries"] = [e.document() for e in self.entries]
            out["entries_mode"] = self.entries_mode.value
        return out


class XdpMode(enum.Enum):
    AUTO = "auto"  # let the kernel choose (native if the driver has it, else generic)
    NATIVE = "native"
    GENERIC = "generic"
    OFFLOAD = "offload"


class Direction(enum.Enum):
    INGRESS = "ingress"
    EGRESS = "egress"


@dataclass(frozen=True, slots=True)
class XdpTarget:
    """An XDP link on an interface. ``take_over``: if another tool's program is attached
    there (by netlink), replace it instead of refusing (it is restored if the apply fails)."""

    interface: str
    mode: XdpMode = XdpMode.AUTO
    netns: Path | None = None  # e.g. /var/run/netns/NAME; None: bpforch's own namespace
    take_over: bool = False

    def key(self) -> str:
        return f"xdp:{self.netns or ''}:{self.interface}"


@dataclass(frozen=True, slots=True)
class TcTarget:
    """A tcx link (Linux 6.6). ``before``/``after`` name another program attached by the
    same collection at the same hook; None means append."""

    interface: str
    direction: Direction
    netns: Path | None = None
    before: str | None = None
    after: str | None = None

    def key(self) -> str:
        return f"tc:{self.netns or ''}:{self.interface}:{self.direction.value}"


@dataclass(frozen=True, slots=True)
class CgroupTarget:
    path: Path  # absolute, inside a cgroup v2 mount
    attach: str  # kernel attach point, e.g. "ingress", "egress", "sock_create", "connect4"

    def key(self) -> str:
        return f"cgroup:{self.path}:{self.attach}"


@dataclass(frozen=True, slots=True)
class TracepointTarget:
    group: str
    name: str

    def key(self) -> str:
        return f"tracepoint:{self.group}/{self.name}"


@dataclass(frozen=True, slots=True)
class RawTracepointTarget:
    """raw_tp or tp_btf, by tracepoint name (e.g. ``sched_switch``)."""

    name: str

    def key(self) -> str:
        return f"raw_tracepoint:{self.name}"


@dataclass(frozen=True, slots=True)
class UprobeTarget:
    path: Path
    symbol: str | None = None
    offset: int = 0  # added to the symbol's address, or absolute if no symbol
    retprobe: bool = False
    pid: int | None = None

    def key(self) -> str:
        kind = "uretprobe" if self.retprobe else "uprobe"
        return f"{kind}:{self.path}:{self.symbol or ''}+{self.offset}:{self.pid or ''}"


@dataclass(frozen=True, slots=True)
class NetnsTarget:
    """sk_lookup or flow_dissector programs attach to a network namespace."""

    netns: Path | None = None  # None: bpforch's own namespace

    def key(self) -> str:
        return f"netns:{self.netns or ''}"


Target = (
    XdpTarget
    | TcTarget
    | CgroupTarget
    | TracepointTarget
    | RawTracepointTarget
    | UprobeTarget
    | NetnsTarget
)


_TARGET_KINDS: dict[type, str] = {
    XdpTarget: "xdp",
    TcTarget: "tc",
    CgroupTarget: "cgroup",
    TracepointTarget: "tracepoint",
    RawTracepointTarget: "raw_tracepoint",
    UprobeTarget: "uprobe",
    NetnsTarget: "netns",
}


@dataclass(frozen=True, slots=True)
class Attachment:
    program: str
    target: Target
    source: Source | None = field(default=None, compare=False)

    def key(self) -> str:
        """Identity of the attachment within a collection (program + hook)."""
        return f"{self.program}@{self.target.key()}"

    @property
    def kind(self) -> str:
        """The manifest's name of the target: xdp, tc, cgroup, tracepoint, …"""
        return _TARGET_KINDS[type(self.target)]

    def document(self) -> dict[str, object]:
        """The normalized manifest form (defaults filled in, paths as str, unset fields
        left out; a valid manifest again)."""
        target: dict[str, object] = {}
        for f in fields(self.target):
            name = f.name
            value = getattr(self.target, name)
            if value is None or (name == "take_over" and value is False):
                continue  # take_over: false is left out (digests from before it stay)
            if isinstance(value, enum.Enum):
                value = value.value
            elif isinstance(value, Path):
                value = str(value)
            target["path" if isinstance(self.target, NetnsTarget) else name] = value
        return {"program": self.program, self.kind: target}


class MetricType(enum.Enum):
    COUNTER = "counter"
    GAUGE = "gauge"


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """A Prometheus metric read from a map's values at every scrape (``spec.metrics``).

    ``key``: one series, the value at this key. ``label``: one series per entry, the key
    (or ``names[key]``) as the value of this label. ``value_path`` (the manifest's
    ``field``, split at its dots): the member of a struct value to read, an integer
    component indexing an array. Per-CPU values are summed. Declarations change what is
    read, never what is loaded: they are not part of the digest, and a change takes effect
    without an apply."""

    name: str
    type: MetricType
    map: str
    help: str = ""
    key: int | str | None = None
    label: str | None = None
    names: tuple[str, ...] | None = None
    value_path: tuple[str, ...] = ()  # the manifest's `field`, split at the dots
    source: Source | None = field(default=None, compare=False)

    def document(self) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name, "type": self.type.value, "map": self.map}
        if self.help:
            out["help"] = self.help
        if self.key is not None:
            out["key"] = self.key
        if self.label is not None:
            out["label"] = self.label
        if self.names is not None:
            out["names"] = list(self.names)
        if self.value_path:
            out["field"] = ".".join(self.value_path)
        return out


@dataclass(frozen=True, slots=True)
class DesiredCollection:
    """One ``kind: Collection`` document, validated and with paths resolved."""

    name: str
    object_file: Path  # absolute path of the ELF object (manifest field `object`)
    source: Source = field(compare=False)
    labels: Mapping[str, str] = field(default_factory=dict)
    sha256: str | None = None  # declared digest of the object, checked when loading
    programs: tuple[str, ...] | None = None  # None: every program in the object
    constants: Mapping[str, object] = field(default_factory=dict)
    maps: Mapping[str, MapOptions] = field(default_factory=dict)
    attach: tuple[Attachment, ...] = ()
    metrics: tuple[MetricSpec, ...] = ()
    # sha256 over the normalized document (metrics aside) and the object's bytes: equal
    # digests mean nothing to do for this collection.
    digest: str = ""

    def document(self) -> dict[str, object]:
        """The normalized manifest (JSON-ready): paths resolved, defaults filled in, in a
        canonical order; loading it again gives an equal collection. The digest is computed
        over this and the object's bytes."""
        spec: dict[str, object] = {"object": str(self.object_file)}
        if self.sha256 is not None:
            spec["sha256"] = self.sha256
        if self.programs is not None:
            spec["programs"] = list(self.programs)
        spec["constants"] = dict(sorted(self.constants.items()))
        spec["maps"] = {n: m.document() for n, m in sorted(self.maps.items())}
        spec["attach"] = [a.document() for a in self.attach]
        if self.metrics:
            spec["metrics"] = [m.document() for m in self.metrics]
        return {
            "apiVersion": API_VERSION,
            "kind": KIND_COLLECTION,
            "metadata": {"name": self.name, "labels": dict(sorted(self.labels.items()))},
            "spec": spec,
        }

    def depends_on(self) -> frozenset[str]:
        """Names of the collections whose maps this one substitutes."""
        return frozenset(
            m.source_from.collection
            for m in self.maps.values()
            if m.source_from is not None and m.source_from.collection is not None
        )


@dataclass(frozen=True, slots=True)
class DesiredState:
    """``warnings``: what is accepted but should change (a deprecated apiVersion), each
    with its file:line:col, as problems are."""

    collections: Mapping[str, DesiredCollection] = field(default_factory=dict)
    files: tuple[Path, ...] = ()  # every manifest file read (for status and the watcher)
    warnings: tuple[ManifestProblem, ...] = ()

    def objects(self) -> frozenset[Path]:
        """Every object file referenced (for the watcher)."""
        return frozenset(c.object_file for c in self.collections.values())
