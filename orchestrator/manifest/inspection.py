"""What an object contains, without loading it (``bpforch inspect``), and a starting manifest
for it (``bpforch inspect --manifest``).

Programs are matched against every kind of manifest target with the same rules validation
uses (:func:`orchestrator.manifest.kernel_hooks.target_mismatch`), so the hooks listed for
a program are the ones a manifest may attach it to. Constants and variables show their
initial values from the object's data sections, decoded as map values are
(:mod:`orchestrator.ebpf.values`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from orchestrator.ebpf import CollectionSpec, MapFlags, MapType, ProgramSpec, ProgType, btf
from orchestrator.ebpf.errors import Error as EbpfError
from orchestrator.ebpf.values import decode, plain
from orchestrator.manifest.cache import object_info
from orchestrator.manifest.kernel_hooks import CGROUP_HOOKS, target_mismatch
from orchestrator.manifest.literals import render
from orchestrator.manifest.model import (
    CgroupTarget,
    Direction,
    NetnsTarget,
    RawTracepointTarget,
    Target,
    TcTarget,
    TracepointTarget,
    UprobeTarget,
    XdpTarget,
)

__all__ = [
    "ConstantInfo",
    "ExternInfo",
    "MapDescription",
    "ObjectReport",
    "ProgramDescription",
    "inspect_object",
    "starter_manifest",
]

# One target of each kind and variant, to ask target_mismatch() which ones a program fits.
_PROBES: tuple[tuple[str, Target], ...] = (
    ("xdp", XdpTarget("x")),
    ("tc ingress", TcTarget("x", Direction.INGRESS)),
    ("tc egress", TcTarget("x", Direction.EGRESS)),
    *((f"cgroup {a}", CgroupTarget(Path("/x"), a)) for a in CGROUP_HOOKS),
    ("tracepoint", TracepointTarget("g", "n")),
    ("uprobe", UprobeTarget(Path("/x"))),
    ("uretprobe", UprobeTarget(Path("/x"), retprobe=True)),
    ("netns", NetnsTarget()),
)

# Program types that a manifest never attaches, and what attaches them instead.
_ELSEWHERE = {
    ProgType.SOCKET_FILTER: "a socket filter: the process that owns the socket attaches it",
    ProgType.STRUCT_OPS: "a struct_ops program: its struct_ops map registers it",
    ProgType.SK_MSG: "an sk_msg program: it attaches to a sockmap",
    ProgType.SK_SKB: "an sk_skb program: it attaches to a sockmap",
    ProgType.PERF_EVENT: "a perf_event program: it attaches to a perf event",
    ProgType.SYSCALL: "a syscall program: it is run, not attached",
    ProgType.EXT: "a freplace program: it replaces a function of another program",
}


@dataclass(frozen=True, slots=True)
class ProgramDescription:
    """``fits``: the manifest hooks the program may be attached to (``xdp``, ``tc
    ingress``, ``cgroup egress``, ``tracepoint`` …); ``loadable``: None, or why the object
    itself keeps it from loading."""

    name: str
    section: str
    type: str
    attach_type: str | None
    attach_to: str
    instructions: int
    fits: tuple[str, ...]
    autoload: bool
    unloadable: str | None

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "section": self.section,
            "type": self.type,
            "attach_type": self.attach_type,
            "attach_to": self.attach_to,
            "instructions": self.instructions,
            "fits": list(self.fits),
            "autoload": self.autoload,
            "unloadable": self.unloadable,
        }


@dataclass(frozen=True, slots=True)
class MapDescription:
    name: str
    type: str
    key_size: int
    value_size: int
    key_type: str | None
    value_type: str | None
    max_entries: int
    flags: tuple[str, ...]
    pinning: str
    inner_map: str | None
    data_section: bool

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "type": self.type,
            "key_size": self.key_size,
            "value_size": self.value_size,
            "key_type": self.key_type,
            "value_type": self.value_type,
            "max_entries": self.max_entries,
            "flags": list(self.flags),
            "pinning": self.pinning,
            "inner_map": self.inner_map,
            "data_section": self.data_section,
        }


@dataclass(frozen=True, slots=True)
class ConstantInfo:
    """A constant (``.rodata``) or a variable (``.data``, ``.bss``): its initial value as a
    literal (None when it has no BTF type)."""

    name: str
    section: str
    type: str
    size: int
    value: object

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "section": self.section,
            "type": self.type,
            "size": self.size,
            "value": plain(self.value),
        }


@dataclass(frozen=True, slots=True)
class ExternInfo:
    name: str
    kind: str
    type: str
    weak: bool

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind, "type": self.type, "weak": self.weak}


@dataclass(frozen=True, slots=True)
class ObjectReport:
    path: Path
    sha256: str
    license: str
    programs: tuple[ProgramDescription, ...]
    maps: tuple[MapDescription, ...]
    constants: tuple[ConstantInfo, ...]
    variables: tuple[ConstantInfo, ...]
    externs: tuple[ExternInfo, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "object": str(self.path),
            "sha256": self.sha256,
            "license": self.license,
            "programs": [p.to_json() for p in self.programs],
            "maps": [m.to_json() for m in self.maps],
            "constants": [c.to_json() for c in self.constants],
            "variables": [v.to_json() for v in self.variables],
            "externs": [x.to_json() for x in self.externs],
        }


def _label(value: object) -> str:
    name = getattr(value, "name", None)
    return name.lower() if isinstance(name, str) else str(value)


def _fits(prog: ProgramSpec) -> tuple[str, ...]:
    out = []
    for kind, target in _PROBES:
        if target_mismatch(prog, target) is None:
            out.append(kind)
    raw = RawTracepointTarget(prog.attach_to or "x")
    if target_mismatch(prog, raw) is None:
        out.append("raw_tracepoint")
    return tuple(out)


def _unloadable(prog: ProgramSpec) -> str | None:
    if prog.unresolved:
        return str(prog.unresolved[0])
    if not prog.known_section:
        return f"section '{prog.section}' names no known program type"
    return None


def _type_text(t: btf.Type | None) -> str | None:
    return btf.describe(t) if t is not None else None


def _flags(flags: int) -> tuple[str, ...]:
    out = [f.name.lower() for f in MapFlags if f and flags & f and f.name is not None]
    rest = flags & ~sum(int(f) for f in MapFlags)
    if rest:
        out.append(hex(rest))
    return tuple(out)


def _initial(name: str, var: object) -> ConstantInfo:
    from orchestrator.ebpf import VariableSpec

    assert isinstance(var, VariableSpec)
    value: object = None
    type_text = f"{var.size} bytes"
    if var.type is not None:
        type_text = btf.describe(var.type)
        try:
            value = decode(var.type, var.raw)
        except EbpfError:
            value = None
    return ConstantInfo(name, var.section, type_text, var.size, value)


def describe_spec(path: Path, sha256: str, spec: CollectionSpec) -> ObjectReport:
    """The report of a parsed object (no kernel needed)."""
    programs = tuple(
        ProgramDescription(
            name=p.name,
            section=p.section,
            type=_label(p.type),
            attach_type=_label(p.attach_type) if p.attach_type is not None else None,
            attach_to=p.attach_to,
            instructions=len(p.instructions),
            fits=_fits(p),
            autoload=p.autoload,
            unloadable=_unloadable(p),
        )
        for p in spec.programs.values()
    )
    maps = tuple(
        MapDescription(
            name=m.name,
            type=_label(m.type),
            key_size=m.key_size,
            value_size=m.value_size,
            key_type=_type_text(m.key),
            value_type=_type_text(
                m.btf_value_type if isinstance(m.btf_value_type, btf.Datasec) else m.value
            ),
            max_entries=m.max_entries,
            flags=_flags(m.flags),
            pinning=_label(m.pinning),
            inner_map=m.inner_map.name if m.inner_map is not None else None,
            data_section=m.is_data_section,
        )
        for m in spec.maps.values()
    )
    constants = tuple(_initial(n, v) for n, v in spec.variables.items() if v.constant)
    variables = tuple(_initial(n, v) for n, v in spec.variables.items() if not v.constant)
    externs = tuple(
        ExternInfo(x.name, x.kind.value, btf.describe(x.type), x.weak)
        for x in spec.externs.values()
    )
    licenses = {p.license for p in spec.programs.values() if p.license}
    return ObjectReport(
        path,
        sha256,
        ", ".join(sorted(licenses)),
        programs,
        maps,
        constants,
        variables,
        externs,
    )


def inspect_object(path: Path) -> ObjectReport:
    """What the object at ``path`` declares. Raises ObjectError (unreadable, not an eBPF
    object)."""
    info = object_info(path.absolute())
    return describe_spec(path, info.sha256, info.spec)


# ---------------------------------------------------------------------------- manifest

_DNS = re.compile(r"[^a-z0-9-]+")
# maps whose zero max_entries the kernel does not take (the tool sizes them at run time)
_SIZED_AT_RUN_TIME = frozenset(
    {
        MapType.RINGBUF,
        MapType.USER_RINGBUF,
        MapType.HASH,
        MapType.ARRAY,
        MapType.PERCPU_HASH,
        MapType.PERCPU_ARRAY,
        MapType.LRU_HASH,
        MapType.LRU_PERCPU_HASH,
        MapType.LPM_TRIE,
        MapType.STACK_TRACE,
        MapType.QUEUE,
        MapType.STACK,
        MapType.BLOOM_FILTER,
    }
)


# maps each generation fills anew (they refuse preserve)
_GENERATION_BOUND = frozenset(
    {MapType.PROG_ARRAY, MapType.ARRAY_OF_MAPS, MapType.HASH_OF_MAPS, MapType.STRUCT_OPS}
)


def collection_name(path: Path) -> str:
    """A DNS label from an object's file name: ``xdp_counter.bpf.o`` -> ``xdp-counter``."""
    stem = path.name.split(".")[0].lower()
    name = _DNS.sub("-", stem.replace("_", "-")).strip("-")[:63].strip("-")
    return name or "collection"


def _target_line(prog: ProgramDescription, fits: tuple[str, ...], xdp_index: int) -> str:
    """The target of an attachment for ``prog`` (which fits ``fits``), with placeholders."""
    kind = fits[0]
    if kind == "xdp":
        iface = "<INTERFACE>" if xdp_index == 0 else f"<INTERFACE_{xdp_index + 1}>"
        return f"xdp: {{interface: {iface}}}"
    if kind.startswith("tc "):
        direction = kind.split()[1]
        other = "egress" if direction == "ingress" else "ingress"
        note = f"  # or direction: {other}" if f"tc {other}" in fits else ""
        return f"tc: {{interface: <INTERFACE>, direction: {direction}}}{note}"
    if kind.startswith("cgroup "):
        attach = kind.split()[1]
        others = [f.split()[1] for f in fits if f.startswith("cgroup ") and f != kind]
        note = f"  # or attach: {', '.join(others[:4])}{', …' if len(others) > 4 else ''}"
        return f"cgroup: {{path: <CGROUP>, attach: {attach}}}" + (note if others else "")
    if kind == "tracepoint":
        group, _, name = prog.attach_to.partition("/")
        if group and name:
            return f"tracepoint: {{group: {render(group)}, name: {render(name)}}}"
        return "tracepoint: {group: <GROUP>, name: <TRACEPOINT>}"
    if kind == "raw_tracepoint":
        name = render(prog.attach_to) if prog.attach_to else "<TRACEPOINT>"
        return f"raw_tracepoint: {{name: {name}}}"
    if kind in ("uprobe", "uretprobe"):
        binary, _, symbol = prog.attach_to.partition(":")
        path = render(binary) if binary.startswith("/") else "<BINARY>"
        sym = render(symbol) if symbol and binary.startswith("/") else "<SYMBOL>"
        ret = ", retprobe: true" if kind == "uretprobe" else ""
        return f"uprobe: {{path: {path}, symbol: {sym}{ret}}}"
    return "netns: {}  # the namespace bpforch runs in; path: NAME for another"


def starter_manifest(report: ObjectReport) -> str:
    """A manifest that loads the object, with every program attached to a target of the
    kind it fits. What only you know is a ``<PLACEHOLDER>`` (an interface, a cgroup …):
    validation refuses a manifest until each is filled in."""
    lines = [
        f"# A starting manifest for {report.path} (bpforch inspect --manifest).",
        "# Fill in the <...> placeholders, then: bpforch validate FILE && bpforch plan FILE",
        "apiVersion: bpforch/v1",
        "kind: Collection",
        "metadata:",
        f"  name: {collection_name(report.path)}",
        "spec:",
        f"  object: {render(str(report.path.absolute()))}",
    ]
    loadable = [p for p in report.programs if p.unloadable is None]
    skipped = [p for p in report.programs if p.unloadable is not None]
    if skipped or any(not p.autoload for p in loadable):
        lines.append("  programs:  # the programs to load")
        for p in loadable:
            lines.append(f"    - {render(p.name)}")
        for p in skipped:
            lines.append(f"    # - {p.name}: cannot be loaded: {p.unloadable}")
    if report.constants:
        lines.append("  # constants:  # the object's defaults: uncomment what you change")
        for c in report.constants:
            if c.value is None:
                lines.append(f"  #   {c.name}: …  # {c.type}, no BTF type: give !hex bytes")
                continue
            value = render(c.value)
            if len(value) > 72:
                value = f"{value[:60]}…"
            lines.append(f"  #   {c.name}: {value}  # {c.type}")
    maps = [m for m in report.maps if not m.data_section]
    sized = [m for m in maps if m.max_entries == 0 and _map_type(m.type) in _SIZED_AT_RUN_TIME]
    if maps:
        lines.append("  maps:" if sized else "  # maps:")
        for m in maps:
            shape = m.type
            if m.key_type is not None or m.value_type is not None:
                shape += f", {m.key_type or m.key_size} -> {m.value_type or m.value_size}"
            if m in sized:
                lines.append(f"    {m.name}: {{max_entries: <MAX_ENTRIES>}}  # {shape}")
                continue
            keep = "" if _map_type(m.type) in _GENERATION_BOUND else ", preserve: true"
            lines.append(f"  #   {m.name}: {{pin: true{keep}}}  # {shape}, {m.max_entries} entries")
    attach: list[str] = []
    notes: list[str] = []
    xdp = 0
    for p in loadable:
        fits = p.fits
        if not fits:
            ptype = _prog_type(p.type)
            why = _ELSEWHERE.get(ptype, "no manifest hook fits it") if ptype else "no hook fits it"
            notes.append(f"  # {p.name} ({p.type}): {why}")
            continue
        attach.append(f"    - program: {render(p.name)}")
        attach.append(f"      {_target_line(p, fits, xdp)}")
        if fits[0] == "xdp":
            xdp += 1
    lines.append("  attach:" if attach else "  attach: []")
    lines += attach
    lines += notes
    return "\n".join(lines) + "\n"


def _map_type(label: str) -> MapType | None:
    return MapType.__members__.get(label.upper())


def _prog_type(label: str) -> ProgType | None:
    return ProgType.__members__.get(label.upper())
