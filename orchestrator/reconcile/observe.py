"""Observing: the record checked against the kernel, and the facts a plan needs.

:func:`observe` is cheap enough to run before every apply: per recorded pin one
``BPF_OBJ_GET`` and one ``BPF_OBJ_GET_INFO_BY_FD`` (no program is loaded, no object parsed).
:func:`gather_facts` reads objects and probes targets only for collections that will change.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.ebpf import AttachType, ProgType
from orchestrator.ebpf import sys as _sys
from orchestrator.ebpf.errors import Error as EbpfError
from orchestrator.ebpf.errors import FileError, SyscallError
from orchestrator.ebpf.features import program_kind, program_support
from orchestrator.ebpf.files import reason as _reason
from orchestrator.ebpf.files import stat_regular
from orchestrator.ebpf.pin import bpffs_mount_of, is_bpffs
from orchestrator.manifest.model import (
    CgroupTarget,
    DesiredCollection,
    DesiredState,
    NetnsTarget,
    RawTracepointTarget,
    Target,
    TcTarget,
    TracepointTarget,
    UprobeTarget,
    XdpTarget,
)
from orchestrator.reconcile.state import (
    ActualCollection,
    ActualState,
    AttachmentRecord,
    CollectionFacts,
    CollectionRecord,
    Drift,
    Facts,
    MapRecord,
    MapShape,
    TargetFacts,
)
from orchestrator.reconcile.store import read_record

if TYPE_CHECKING:
    from orchestrator.ebpf import CollectionSpec
    from orchestrator.manifest.objects import ObjectError, ObjectInfo

# bpffs refuses names with a dot; an underscore can't start a collection name (DNS label)
STAGING_PREFIX = "_staging-"
CGROUP2_SUPER_MAGIC = 0x63677270
TRACEFS_DIRS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))

# ---------------------------------------------------------------------------- observe


def _open_id(path: Path, info: Callable[[_sys.FD], object]) -> tuple[int, object] | None:
    """(id, info) of the object pinned at ``path``; None if there is no pin."""
    try:
        fd = _sys.obj_get(os.fspath(path))
    except SyscallError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise
    with fd:
        try:
            i = info(fd)
        except SyscallError:
            return 0, None
    return int(getattr(i, "id", 0)), i


def link_detached(kind: str, info: _sys.LinkInfo) -> bool:
    """Whether a link's hook is gone (``LINK_DETACH``, the interface or cgroup removed): the
    kernel then reports ifindex/cgroup id/netns inode 0 in the link info."""
    word = int(info.union[0])
    if kind in ("xdp", "tc"):
        return word & 0xFFFFFFFF == 0
    if kind == "cgroup":
        return word == 0
    if kind == "netns":
        return word & 0xFFFFFFFF == 0
    return False


def _same_pin(path: str, ino: int) -> bool:
    """The pin at ``path`` is still the one that was recorded (same inode): pins can't be
    re-pointed, so a replaced pin has a new inode."""
    if not ino:
        return False
    try:
        return os.stat(path).st_ino == ino
    except OSError:
        return False


def check_collection(root: Path, rec: CollectionRecord) -> tuple[Drift, ...]:
    """Every recorded pin of ``rec`` against the kernel: maps and programs by the pin's
    inode (a stat), falling back to BPF_OBJ_GET + info to say what changed; links always by
    BPF_OBJ_GET + link info (a link can be detached while its pin stays)."""
    cdir = os.path.join(root, rec.name)
    drift: list[Drift] = []
    for m in rec.maps.values():
        if m.source.startswith("pinned:"):
            drift.extend(_check_pinned_source(m))
            continue
        if m.source or not m.pin:  # substituted, or a frozen .rodata held by its programs
            continue
        path = os.path.join(cdir, m.pin)
        if _same_pin(path, m.ino):
            continue
        got = _open_id(Path(path), _sys.map_info)
        if got is None:
            drift.append(Drift("map", m.name, f"pin {m.pin} is missing"))
        elif got[0] != m.id:
            drift.append(
                Drift("map", m.name, f"pin {m.pin} holds map id {got[0]}, not {m.id}", "replaced")
            )
    for p in rec.programs.values():
        path = os.path.join(cdir, p.pin)
        if _same_pin(path, p.ino):
            continue
        got = _open_id(Path(path), _sys.prog_info)
        if got is None:
            drift.append(Drift("program", p.name, f"pin {p.pin} is missing"))
        elif got[0] != p.id:
            drift.append(
                Drift(
                    "program",
                    p.name,
                    f"pin {p.pin} holds program id {got[0]}, not {p.id}",
                    "replaced",
                )
            )
    for a in rec.attachments.values():
        drift.extend(_check_link(Path(cdir), rec, a))
    drift.extend(_check_order(rec, {x.name for x in drift if x.kind == "attachment"}))
    return tuple(drift)


def _check_pinned_source(m: MapRecord) -> list[Drift]:
    """A ``from: {pinned}`` source must still hold the map our programs were loaded with."""
    path = m.source.removeprefix("pinned:")
    got = _open_id(Path(os.path.realpath(path)), _sys.map_info)
    if got is None:
        return [Drift("map", m.name, f"substitution source {path} is gone")]
    if got[0] != m.id:
        return [
            Drift(
                "map",
                m.name,
                f"substitution source {path} now holds map id {got[0]}, not {m.id} (the "
                "programs are reloaded with it)",
                "replaced",
            )
        ]
    return []


def _check_link(cdir: Path, rec: CollectionRecord, a: AttachmentRecord) -> list[Drift]:
    got = _open_id(cdir / a.pin, _sys.link_info)
    if got is None:
        return [Drift("attachment", a.key, f"link pin {a.pin} is missing")]
    link_id, info = got
    if link_id != a.link_id or not isinstance(info, _sys.LinkInfo):
        return [
            Drift(
                "attachment",
                a.key,
                f"pin {a.pin} holds link id {link_id}, not {a.link_id}",
                "replaced",
            )
        ]
    if link_detached(a.kind, info):
        return [
            Drift("attachment", a.key, f"link {a.link_id} was detached from its hook", "detached")
        ]
    prog = rec.programs.get(a.program)
    if prog is not None and int(info.prog_id) != prog.id:
        return [
            Drift(
                "attachment",
                a.key,
                f"link {a.link_id} runs program id {info.prog_id}, not {prog.id} "
                "(an interrupted apply?)",
                "program",
            )
        ]
    if a.kind == "xdp" and a.mode:
        return _check_xdp_mode(a, int(info.union[0]) & 0xFFFFFFFF, int(info.prog_id))
    return []


def _netns_of(a: AttachmentRecord) -> str | None:
    netns = (a.target or {}).get("netns")
    return netns if isinstance(netns, str) and netns else None


def _check_xdp_mode(a: AttachmentRecord, ifindex: int, prog_id: int) -> list[Drift]:
    """The mode the kernel runs an XDP link's program in (rtnetlink: a link reports no
    mode) against the mode recorded when it was attached."""
    from orchestrator.ebpf import links as _links

    try:
        mode = _links.xdp_mode(ifindex, prog_id, _netns_of(a))
    except (EbpfError, OSError):
        return []  # the interface or namespace is gone: the link shows as detached
    if mode == a.mode:
        return []
    now = f"runs in {mode} mode" if mode is not None else "is not on the interface"
    return [
        Drift(
            "attachment",
            a.key,
            f"xdp link {a.link_id}: the program {now}, not in {a.mode} mode as applied",
            "mode",
        )
    ]


def _check_order(rec: CollectionRecord, drifted: set[str]) -> list[Drift]:
    """Each tcx link placed before/after another program of the collection, against the
    order the kernel runs the hook in (BPF_PROG_QUERY: the ordered link ids)."""
    from orchestrator.ebpf import links as _links

    hooks: dict[str, list[AttachmentRecord]] = {}
    for a in rec.attachments.values():
        t = a.target
        if a.kind == "tc" and t is not None and (t.get("before") or t.get("after")):
            hooks.setdefault(a.key.split("@", 1)[1], []).append(a)
    out: list[Drift] = []
    for hook, anchored in sorted(hooks.items()):
        t = anchored[0].target
        assert t is not None
        try:
            state = _links.tcx_attached(
                str(t.get("interface")),
                "egress" if t.get("direction") == "egress" else "ingress",
                _netns_of(anchored[0]),
            )
        except (EbpfError, OSError):
            continue  # the interface or namespace is gone: the links show as detached
        order = [i for i in state.link_ids if i is not None]
        for a in anchored:
            assert a.target is not None
            rel = "before" if a.target.get("before") else "after"
            other = rec.attachments.get(f"{a.target.get(rel)}@{hook}")
            if a.key in drifted or other is None or other.key in drifted:
                continue
            if a.link_id not in order or other.link_id not in order:
                continue
            mine, theirs = order.index(a.link_id), order.index(other.link_id)
            if (mine < theirs) != (rel == "before"):
                out.append(
                    Drift(
                        "attachment",
                        a.key,
                        f"tcx link {a.link_id} runs {'after' if rel == 'before' else 'before'} "
                        f"{other.program} (link {other.link_id}), not {rel} it",
                        "order",
                    )
                )
    return out


def _looks_owned(path: Path) -> bool:
    """Whether an unrecorded directory has the layout bpforch gives a collection (so it was
    left by an interrupted apply); anything else under the root is never touched."""
    try:
        names = {e.name for e in os.scandir(path)}
    except OSError:
        return False
    return names <= {"maps", "progs", "links"}


def observe(root: Path, state_dir: Path) -> ActualState:
    """The record, each collection checked against the kernel; staging leftovers and
    unrecorded collection directories under ``root``."""
    record = read_record(state_dir)
    collections = {
        name: ActualCollection(rec, check_collection(root, rec))
        for name, rec in record.collections.items()
    }
    staging: list[Path] = []
    orphans: list[str] = []
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        entries = []
    for e in entries:
        if e.name.startswith(STAGING_PREFIX):
            staging.append(Path(e.path))
        elif (
            e.is_dir(follow_symlinks=False)
            and e.name not in record.collections
            and _looks_owned(Path(e.path))
        ):
            orphans.append(e.name)
    return ActualState(collections, tuple(sorted(staging)), tuple(sorted(orphans)))


# ---------------------------------------------------------------------------- facts


def needs_work(d: DesiredCollection, actual: ActualState) -> bool:
    """Whether ``d`` may change (so its object and targets are worth a look)."""
    a = actual.collections.get(d.name)
    return a is None or not d.digest or a.record.digest != d.digest or bool(a.drift)


def map_shapes(d: DesiredCollection, spec: CollectionSpec) -> dict[str, MapShape]:
    """The shape of every map of ``d``'s object after ``max_entries`` overrides."""
    out = {}
    for name, m in spec.maps.items():
        mo = d.maps.get(name)
        max_entries = mo.max_entries if mo is not None and mo.max_entries else m.max_entries
        out[name] = MapShape(int(m.type), m.key_size, m.value_size, max_entries, int(m.flags))
    return out


class ObjectCache:
    """Parsed objects for one apply: each object file is looked up once (the manifest
    layer's cache re-checks the file on every lookup)."""

    def __init__(self) -> None:
        self._infos: dict[Path, ObjectInfo | ObjectError] = {}

    def get(self, path: Path) -> ObjectInfo:
        from orchestrator.manifest.objects import ObjectError, object_info

        hit = self._infos.get(path)
        if hit is None:
            try:
                hit = object_info(path)
            except ObjectError as err:
                hit = err
            self._infos[path] = hit
        if isinstance(hit, ObjectError):
            raise hit
        return hit


def _collection_facts(d: DesiredCollection, objects: ObjectCache) -> CollectionFacts:
    from orchestrator.manifest.objects import ObjectError

    try:
        info = objects.get(d.object_file)
    except ObjectError as err:
        return CollectionFacts(problems=(f"object {d.object_file}: {err}",))
    spec = info.spec
    names = (
        tuple(d.programs)
        if d.programs is not None
        else tuple(n for n, p in spec.programs.items() if p.autoload)
    )
    problems = []
    for n in names:
        p = spec.programs.get(n)
        if p is None:
            problems.append(f"program {n}: not in object {d.object_file}")
            continue
        if not p.known_section:
            continue  # the load says which section names are known
        support = program_support(p.type, p.attach_type)
        if not support.ok:
            kind = program_kind(p.type, p.attach_type)
            problems.append(
                f"program {n} (section {p.section}): {kind} programs are not supported on "
                f"this kernel: {support.reason}{_alternative(p.type, p.attach_type)}"
            )
    return CollectionFacts(
        programs=names,
        object_sha256=info.sha256,
        maps=map_shapes(d, spec),
        problems=tuple(problems),
    )


_TRACING_ALTERNATIVES = (
    ("tracepoint", ProgType.TRACEPOINT, None),
    ("raw_tp", ProgType.RAW_TRACEPOINT, None),
    ("tp_btf", ProgType.TRACING, AttachType.TRACE_RAW_TP),
)


def _alternative(prog_type: ProgType, attach_type: AttachType | None) -> str:
    """A hint naming the tracing program types that do load here (probed), for a tracing
    type that does not."""
    if prog_type not in (ProgType.TRACING, ProgType.LSM, ProgType.EXT):
        return ""
    usable = [
        name
        for name, pt, at in _TRACING_ALTERNATIVES
        if (pt, at) != (prog_type, attach_type) and program_support(pt, at).ok
    ]
    if not usable:
        return ""
    names = usable[-1] if len(usable) == 1 else f"{', '.join(usable[:-1])} or {usable[-1]}"
    return f" (use a {names} program instead)"


def _ifindex(name: str, netns: Path | None) -> int | str:
    """The index of interface ``name`` in ``netns``, or why it can't be had: entering the
    namespace failing (EPERM without CAP_SYS_ADMIN, EINVAL for a file that is no network
    namespace) is told apart from a missing interface."""
    import socket

    from orchestrator.ebpf.netlink import in_netns

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(in_netns(netns))
        except OSError as err:
            return _netns_problem(netns, err)
        try:
            return socket.if_nametoindex(name)
        except OSError:
            where = f" in {netns}" if netns else ""
            return f"interface {name}{where} does not exist"


def _netns_problem(netns: Path | None, err: OSError) -> str:
    """Why entering the network namespace at ``netns`` failed, with a hint."""
    code = err.errno or 0
    why = _reason(err) if isinstance(err, FileError) else os.strerror(code).lower()
    why = why if code else str(err)
    if code == errno.ENOENT:
        return f"network namespace {netns} does not exist"
    if code in (errno.EPERM, errno.EACCES):
        return (
            f"network namespace {netns}: cannot enter it: {why} (entering another network "
            "namespace needs CAP_SYS_ADMIN: run bpforch as root or grant it that capability)"
        )
    if code == errno.EINVAL:
        return (
            f"network namespace {netns}: cannot enter it: {why} (not a network namespace "
            "file: use a path like /var/run/netns/NAME or /proc/PID/ns/net)"
        )
    return f"network namespace {netns}: cannot enter it: {why}"


def target_facts(target: Target) -> TargetFacts:
    """Does the target exist; for XDP, which program is attached now."""
    if isinstance(target, XdpTarget | TcTarget):
        if target.netns is not None and not target.netns.exists():
            return TargetFacts(problem=f"network namespace {target.netns} does not exist")
        ifindex = _ifindex(target.interface, target.netns)
        if isinstance(ifindex, str):
            return TargetFacts(problem=ifindex)
        if isinstance(target, XdpTarget):
            return _xdp_facts(ifindex, target.netns, find_link=target.take_over)
        return TargetFacts()
    if isinstance(target, CgroupTarget):
        try:
            magic = _sys.fs_magic(os.fspath(target.path))
        except OSError:
            return TargetFacts(problem=f"cgroup {target.path} does not exist")
        if magic != CGROUP2_SUPER_MAGIC:
            return TargetFacts(problem=f"{target.path} is not a cgroup v2 directory")
        return TargetFacts()
    if isinstance(target, TracepointTarget):
        for base in TRACEFS_DIRS:
            if (base / "events").is_dir():
                if not (base / "events" / target.group / target.name / "id").exists():
                    return TargetFacts(
                        problem=f"tracepoint {target.group}/{target.name} does not exist"
                    )
                return TargetFacts()
        return TargetFacts(
            problem="tracefs is not mounted (mount -t tracefs tracefs /sys/kernel/tracing)"
        )
    if isinstance(target, UprobeTarget):
        try:
            stat_regular(target.path)  # a FIFO would block the symbol lookup at attach
        except FileNotFoundError:
            return TargetFacts(problem=f"uprobe binary {target.path} does not exist")
        except OSError as err:
            return TargetFacts(problem=f"uprobe binary {target.path}: {_reason(err)}")
        return TargetFacts()
    if isinstance(target, NetnsTarget):
        if target.netns is not None and not target.netns.exists():
            return TargetFacts(problem=f"network namespace {target.netns} does not exist")
        return TargetFacts()
    assert isinstance(target, RawTracepointTarget)
    return TargetFacts()


def _xdp_facts(ifindex: int, netns: Path | None, *, find_link: bool = False) -> TargetFacts:
    """Which XDP program the interface runs; with ``find_link`` also the link holding it
    (that walks every XDP link in the kernel: only done for targets with take_over)."""
    from orchestrator.ebpf import links as _links
    from orchestrator.ebpf.netlink import NetlinkError, XDPMode, query_link

    try:
        state = query_link(ifindex, netns)
    except (NetlinkError, OSError) as err:
        return TargetFacts(problem=f"interface {ifindex}: {err}")
    x = state.xdp
    prog_id = x.prog_id or x.drv_prog_id or x.skb_prog_id or x.hw_prog_id
    if not prog_id:
        return TargetFacts()
    name = ""
    try:
        with _sys.fd_by_id(_sys.Cmd.PROG_GET_FD_BY_ID, prog_id) as fd:
            name = _sys.prog_info(fd).name.decode("utf-8", "replace")
    except EbpfError:
        pass
    mode = {XDPMode.DRV: "native", XDPMode.SKB: "generic", XDPMode.HW: "offload"}.get(
        x.mode, "multi"
    )
    link_id = 0
    if find_link:
        for info in _links.iter_links(_sys.LinkType.XDP):
            t = info.target
            if (
                isinstance(t, _links.XDPTarget)
                and t.ifindex == ifindex
                and info.program_id == prog_id
            ):
                link_id = info.id
                break
    return TargetFacts(xdp_prog_id=prog_id, xdp_prog_name=name, xdp_mode=mode, xdp_link_id=link_id)


def pinned_problem(path: Path) -> str | None:
    """None if ``path`` is a pin on bpffs (after resolving symlinks); else why not."""
    real = Path(os.path.realpath(path))
    if not real.exists():
        return f"pinned map {path} does not exist"
    if bpffs_mount_of(real) is None or not is_bpffs(real):
        return (
            f"pinned map {shown_path(path, real)} is not on a bpf file system (a substitution "
            "source must be a pin under a bpffs mount such as /sys/fs/bpf)"
        )
    if real.is_dir():
        return f"pinned map {shown_path(path, real)} is a directory, not a pin"
    return None


def shown_path(path: Path, real: Path) -> str:
    return f"{path}" if real == path else f"{path} (resolves to {real})"


def gather_facts(
    desired: DesiredState, actual: ActualState, objects: ObjectCache | None = None
) -> ActualState:
    """``actual`` with the facts :func:`plan` needs about the collections that may change:
    what their objects declare, whether their targets exist (and who holds XDP), whether
    their pinned substitution sources are pins on bpffs."""
    if objects is None:
        objects = ObjectCache()
    colls: dict[str, CollectionFacts] = {}
    targets: dict[str, TargetFacts] = {}
    pinned: dict[Path, str | None] = {}
    todo: Iterable[DesiredCollection] = (
        d for d in desired.collections.values() if needs_work(d, actual)
    )
    for d in todo:
        colls[d.name] = _collection_facts(d, objects)
        for a in d.attach:
            key = a.target.key()
            if key not in targets:
                targets[key] = target_facts(a.target)
        for mo in d.maps.values():
            if mo.source_from is not None and mo.source_from.pinned is not None:
                p = mo.source_from.pinned
                if p not in pinned:
                    pinned[p] = pinned_problem(p)
    return replace(actual, facts=Facts(colls, targets, pinned))
