"""Building the desired state from one validated manifest document: :class:`_Builder` turns
a document that passed the schema into a :class:`~orchestrator.manifest.model.DesiredCollection`,
with paths resolved against the manifest's directory and a problem at the position of
every value it cannot use (:mod:`orchestrator.manifest.loader` reads the files and checks
across them)."""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path
from types import MappingProxyType
from typing import cast

from orchestrator.ebpf.errors import MountNotFoundError, quote
from orchestrator.ebpf.mounts import bpffs_mounts, cgroup2_root
from orchestrator.manifest.document import Document, PathKey, render_path
from orchestrator.manifest.errors import ManifestProblem
from orchestrator.manifest.model import (
    Attachment,
    CgroupTarget,
    DesiredCollection,
    Direction,
    EntriesMode,
    MapEntry,
    MapFrom,
    MapOptions,
    MetricSpec,
    MetricType,
    NetnsTarget,
    OnIncompatible,
    RawTracepointTarget,
    Target,
    TcTarget,
    TracepointTarget,
    UprobeTarget,
    XdpMode,
    XdpTarget,
)

NETNS_DIR = "/var/run/netns"
PATH_MAX = 4096  # linux/limits.h, with the terminating NUL
# what `bpforch inspect --manifest` leaves for the user to fill in: <INTERFACE>, <CGROUP> …
PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*>")


def _resolve(base: Path, text: str) -> Path:
    """Absolute, lexically normalized; relative paths are relative to ``base``."""
    joined = text if posixpath.isabs(text) else os.path.join(base, text)
    return Path(posixpath.normpath(joined))


def _netns(base: Path, text: str) -> Path:
    if "/" not in text:
        return Path(NETNS_DIR) / text
    return _resolve(base, text)


class _Builder:
    def __init__(self, doc: Document, problems: list[ManifestProblem]) -> None:
        self.doc = doc
        self.base = doc.file.parent
        self.problems = problems

    def problem(self, path: PathKey, message: str, hint: str = "", *, key: bool = False) -> None:
        src = self.doc.key_at(path) if key else self.doc.at(path)
        self.problems.append(ManifestProblem(src, render_path(path), message, hint))

    def path_text(self, path: PathKey, value: object) -> str:
        """A path field's text; a NUL byte or more than PATH_MAX bytes is a problem (no
        system call takes such a path)."""
        text = str(value)
        if "\0" in text:
            self.problem(path, f"path {quote(text)} contains a NUL byte", "remove it")
        elif len(text.encode("utf-8", "surrogatepass")) >= PATH_MAX:
            self.problem(
                path,
                f"path {quote(text)} is longer than {PATH_MAX - 1} bytes",
                "Linux paths are shorter (PATH_MAX)",
            )
        return text

    def build(self) -> DesiredCollection:
        v = cast(dict[str, object], self.doc.value)
        meta = cast(dict[str, object], v["metadata"])
        spec = cast(dict[str, object], v["spec"])
        labels = cast(dict[str, str], meta.get("labels") or {})
        programs = spec.get("programs")
        sha = spec.get("sha256")
        maps = cast(dict[str, dict[str, object]], spec.get("maps") or {})
        attach = cast(list[dict[str, object]], spec.get("attach") or [])
        metrics = cast(list[dict[str, object]], spec.get("metrics") or [])
        return DesiredCollection(
            name=str(meta["name"]),
            object_file=_resolve(self.base, self.path_text(("spec", "object"), spec["object"])),
            source=self.doc.at(("metadata", "name")),
            labels=MappingProxyType(dict(labels)),
            sha256=str(sha).lower() if sha is not None else None,
            programs=tuple(cast(list[str], programs)) if programs is not None else None,
            constants=MappingProxyType(dict(cast(dict[str, object], spec.get("constants") or {}))),
            maps=MappingProxyType(
                {name: self.map_options(name, opts) for name, opts in maps.items()}
            ),
            attach=tuple(self.attachment(i, a) for i, a in enumerate(attach)),
            metrics=self.metrics(metrics),
        )

    def metrics(self, raw: list[dict[str, object]]) -> tuple[MetricSpec, ...]:
        out: list[MetricSpec] = []
        seen: dict[str, int] = {}
        for i, m in enumerate(raw):
            path: PathKey = ("spec", "metrics", i)
            name, label = str(m["name"]), m.get("label")
            if name.startswith("bpforch_"):
                self.problem(
                    (*path, "name"),
                    f"metric name {quote(name)} is reserved",
                    "bpforch_* are bpforch's own metrics; choose another prefix",
                )
            if name in seen:
                self.problem(
                    (*path, "name"),
                    f"metric {quote(name)} is declared twice (also spec.metrics[{seen[name]}])",
                    "give each metric its own name, or one metric a label",
                )
            seen.setdefault(name, i)
            if label == "collection":
                self.problem(
                    (*path, "label"),
                    "label 'collection' is bpforch's (it names the collection)",
                    "choose another label name",
                )
            names = m.get("names")
            field_text = m.get("field")
            key = m.get("key")
            out.append(
                MetricSpec(
                    name=name,
                    type=MetricType(m["type"]),
                    map=str(m["map"]),
                    help=str(m.get("help", "")),
                    key=cast(int | str, key) if key is not None else None,
                    label=str(label) if label is not None else None,
                    names=tuple(cast(list[str], names)) if names is not None else None,
                    value_path=tuple(str(field_text).split(".")) if field_text else (),
                    source=self.doc.at(path),
                )
            )
        return tuple(out)

    def map_options(self, name: str, opts: dict[str, object]) -> MapOptions:
        path: PathKey = ("spec", "maps", name)
        preserve = bool(opts.get("preserve", False))
        pin_given = opts.get("pin")
        if preserve and pin_given is False:
            self.problem(
                (*path, "pin"),
                "a preserved map is pinned",
                "remove pin: false, or preserve: true",
            )
        pin = bool(pin_given) if pin_given is not None else preserve
        source_from: MapFrom | None = None
        raw_from = opts.get("from")
        if isinstance(raw_from, dict):
            source_from = self.map_from(path, name, cast(dict[str, object], raw_from))
            for option in ("entries", "entries_mode"):
                if option in opts:
                    self.problem(
                        (*path, option),
                        f"'{option}' does not apply to a substituted map",
                        f"the map's owner declares its entries in its own manifest; "
                        f"remove '{option}' here",
                        key=True,
                    )
            for option in ("pin", "preserve", "max_entries", "on_incompatible"):
                if option in opts:
                    self.problem(
                        (*path, option),
                        f"'{option}' does not apply to a substituted map",
                        "the map's owner decides; remove it or 'from'",
                        key=True,
                    )
        max_entries = opts.get("max_entries")
        on_incompatible = opts.get("on_incompatible")
        raw_entries = opts.get("entries")
        entries: tuple[MapEntry, ...] | None = None
        if isinstance(raw_entries, list):
            entries = tuple(
                MapEntry(e["key"], e["value"], self.doc.at((*path, "entries", i)))
                for i, e in enumerate(cast(list[dict[str, object]], raw_entries))
            )
        mode = opts.get("entries_mode")
        if mode is not None and entries is None:
            self.problem(
                (*path, "entries_mode"),
                "entries_mode without entries",
                "declare the entries, or remove entries_mode",
                key=True,
            )
        return MapOptions(
            name=name,
            pin=pin,
            preserve=preserve,
            max_entries=int(cast(int, max_entries)) if max_entries is not None else None,
            on_incompatible=OnIncompatible(on_incompatible)
            if on_incompatible is not None
            else OnIncompatible.FAIL,
            source_from=source_from,
            source=self.doc.key_at(path),
            pin_given=pin_given is not None,
            entries=entries,
            entries_mode=EntriesMode(mode) if mode is not None else EntriesMode.EXACT,
        )

    def map_from(self, path: PathKey, name: str, raw: dict[str, object]) -> MapFrom:
        if "pinned" in raw:
            text = self.path_text((*path, "from", "pinned"), raw["pinned"])
            pinned = Path(posixpath.normpath(text))
            mounts = bpffs_mounts()
            shown = ", ".join(map(str, mounts)) if mounts else "/sys/fs/bpf"
            if not posixpath.isabs(text):
                self.problem(
                    (*path, "from", "pinned"),
                    f"pinned map path {quote(text)} is not absolute",
                    f"give the full path under {shown}",
                )
            elif mounts and not any(str(pinned).startswith(f"{m}/") for m in mounts):
                # without bpffs here (a build machine) the plan checks it on the node
                self.problem(
                    (*path, "from", "pinned"),
                    f"pinned map path {quote(str(pinned))} is not under {shown}",
                    "a substituted map must be pinned on bpffs",
                )
            return MapFrom(pinned=pinned)
        return MapFrom(collection=str(raw["collection"]), map=str(raw.get("map", name)))

    def cgroup_path(self, path: PathKey, text: str) -> Path:
        """An absolute cgroup path as it is; a relative one under the cgroup v2 mount
        (read from mountinfo: /sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts)."""
        if posixpath.isabs(text):
            return Path(posixpath.normpath(text))
        try:
            root = str(cgroup2_root())
        except MountNotFoundError as err:
            self.problem(
                path, f"relative cgroup path {quote(text)}: {err}", "or give an absolute path"
            )
            return Path(posixpath.normpath(posixpath.join("/", text)))
        cg = Path(posixpath.normpath(posixpath.join(root, text)))
        if not str(cg).startswith(root.rstrip("/") + "/"):
            self.problem(
                path,
                f"relative cgroup path {quote(text)} leaves {root}",
                "give an absolute path",
            )
        return cg

    def netns(self, path: PathKey, value: object) -> Path | None:
        if value is None:
            return None
        text = self.path_text(path, value)
        if text in (".", ".."):
            self.problem(path, f"{quote(text)} is not a network namespace", "give a name or a path")
        return _netns(self.base, text)

    def attachment(self, index: int, raw: dict[str, object]) -> Attachment:
        path: PathKey = ("spec", "attach", index)
        kind = next(k for k in raw if k != "program")
        t = cast(dict[str, object], raw[kind])
        tpath = (*path, kind)
        for name, value in t.items():
            if isinstance(value, str) and PLACEHOLDER.fullmatch(value):
                self.problem(
                    (*tpath, name),
                    f"{value} is a placeholder",
                    "fill it in (bpforch inspect --manifest leaves these)",
                )
        target: Target
        if kind == "xdp":
            netns = t.get("netns")
            target = XdpTarget(
                interface=str(t["interface"]),
                mode=XdpMode(t.get("mode", "auto")),
                netns=self.netns((*tpath, "netns"), netns),
                take_over=bool(t.get("take_over", False)),
            )
        elif kind == "tc":
            netns = t.get("netns")
            before, after = t.get("before"), t.get("after")
            if before is not None and after is not None:
                self.problem(
                    (*tpath, "after"),
                    "give either before or after, not both",
                    "a tcx program is placed relative to one other program",
                    key=True,
                )
            target = TcTarget(
                interface=str(t["interface"]),
                direction=Direction(t["direction"]),
                netns=self.netns((*tpath, "netns"), netns),
                before=str(before) if before is not None else None,
                after=str(after) if after is not None else None,
            )
        elif kind == "cgroup":
            text = self.path_text((*tpath, "path"), t["path"])
            target = CgroupTarget(
                path=self.cgroup_path((*tpath, "path"), text), attach=str(t["attach"])
            )
        elif kind == "tracepoint":
            target = TracepointTarget(group=str(t["group"]), name=str(t["name"]))
        elif kind == "raw_tracepoint":
            target = RawTracepointTarget(name=str(t["name"]))
        elif kind == "uprobe":
            symbol, pid = t.get("symbol"), t.get("pid")
            target = UprobeTarget(
                path=_resolve(self.base, self.path_text((*tpath, "path"), t["path"])),
                symbol=str(symbol) if symbol is not None else None,
                offset=int(cast(int, t.get("offset", 0))),
                retprobe=bool(t.get("retprobe", False)),
                pid=int(cast(int, pid)) if pid is not None else None,
            )
        else:  # netns
            netns = t.get("path")
            target = NetnsTarget(netns=self.netns((*tpath, "path"), netns))
        return Attachment(program=str(raw["program"]), target=target, source=self.doc.at(path))
