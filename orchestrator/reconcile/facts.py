"""Facts for the plan: what the manifests' objects declare (map shapes, program types, the
constants they will load with) and what their targets are (interfaces, cgroups, netns),
read once per plan; and which desired collections need work at all. Reads objects and the
kernel's hooks, changes nothing."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.ebpf import AttachType, MountNotFoundError, ProgType, tracefs_root
from orchestrator.ebpf import inspect as _kernel
from orchestrator.ebpf.errors import Error as EbpfError
from orchestrator.ebpf.errors import FileError
from orchestrator.ebpf.features import program_kind, program_support
from orchestrator.ebpf.files import reason as _reason
from orchestrator.ebpf.files import stat_regular
from orchestrator.ebpf.inspect import (
    bpffs_mount_of,
    is_bpffs,
)
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
from orchestrator.reconcile.rules import PinRules
from orchestrator.reconcile.state import (
    ActualState,
    CollectionFacts,
    Facts,
    MapShape,
    TargetFacts,
)

if TYPE_CHECKING:
    from orchestrator.ebpf import CollectionSpec, MapSpec
    from orchestrator.manifest.cache import ObjectSnapshot
from orchestrator.reconcile.cache import IdentityMemo
from orchestrator.reconcile.observe import CGROUP2_SUPER_MAGIC, held_maps, open_map

# whether a map value type holds timers, per parsed type (the object store keeps them)
_TIMERS = IdentityMemo()
# what an object declares for a manifest, per parsed spec (the object store's, never
# changed) and the manifest's parts that it depends on (see _collection_facts)
_DECLARED = IdentityMemo(1024)


def needs_work(d: DesiredCollection, actual: ActualState, pins: PinRules) -> bool:
    """Whether ``d`` may change (so its object and targets are worth a look): new, changed,
    drifted, or (by the ``pins`` of the whole desired state) a map of it must be pinned
    or unpinned because another collection's ``from`` came or went."""
    a = actual.collections.get(d.name)
    if a is None or not d.digest or a.record.digest != d.digest or bool(a.drift):
        return True
    return bool(pins.changes(d, a.record))


def _may_change(
    desired: DesiredState, actual: ActualState, pins: PinRules
) -> list[DesiredCollection]:
    """The collections that :func:`needs_work`, and those that take a map (``from``) from
    one of them, transitively: when that map is recreated, they are reloaded too, and the
    plan reads their objects like any other reload's."""
    work = {n for n, d in desired.collections.items() if needs_work(d, actual, pins)}
    grew = True
    while grew:
        grew = False
        for name, d in desired.collections.items():
            if name not in work and any(
                mo.source_from is not None and mo.source_from.collection in work
                for mo in d.maps.values()
            ):
                work.add(name)
                grew = True
    return [d for n, d in desired.collections.items() if n in work]


def map_shapes(d: DesiredCollection, spec: CollectionSpec) -> dict[str, MapShape]:
    """The shape of every map ``d`` creates, after ``max_entries`` overrides: all of the
    object's, or with a program binding only what the bound programs and the maps the
    manifest names (not substituted) need, as the transaction loads them."""
    names: Iterable[str] = spec.maps
    if d.programs is not None:
        named = [m for m, mo in d.maps.items() if m in spec.maps and mo.source_from is None]
        _, names = spec.subset([p for p in d.programs if p in spec.programs], named)
    out = {}
    for name in names:
        m = spec.maps[name]
        mo = d.maps.get(name)
        max_entries = mo.max_entries if mo is not None and mo.max_entries else m.max_entries
        out[name] = map_shape(m, max_entries)
    return out


def map_shape(m: MapSpec, max_entries: int) -> MapShape:
    # whether the value holds timers: a walk of its BTF types (parsed once, never changed),
    # remembered for them
    types = (m.value, m.btf_value_type)
    timers = _TIMERS.get(types)
    if not isinstance(timers, bool):
        timers = m.holds_timers
        _TIMERS.put(types, (), timers)
    return MapShape(
        int(m.type),
        m.key_size,
        m.value_size,
        max_entries,
        int(m.flags),
        timers=timers,
    )


def _collection_facts(
    d: DesiredCollection, objects: ObjectSnapshot, *, constants: bool
) -> CollectionFacts:
    """What ``d``'s object declares; ``constants``: decode its constants as they will be
    loaded too (only compared with the live generation's, so only wanted where those are
    read: a new collection has none)."""
    from orchestrator.manifest.objects import ObjectError

    try:
        info = objects.get(d.object_file)
    except ObjectError as err:
        return CollectionFacts(problems=(f"object {d.object_file}: {err}",))
    # the same for every manifest of one object with the same program binding and map
    # options (many collections load one object with their own constants): remembered
    # for the parsed spec, which is never changed, and what of the manifest it depends on
    key = (
        d.object_file,
        info.sha256,
        d.programs,
        tuple((n, mo.max_entries, mo.source_from is None) for n, mo in sorted(d.maps.items())),
    )
    facts = _DECLARED.get((info.spec,), key)
    if not isinstance(facts, CollectionFacts):
        facts = _declared(d, info.spec, info.sha256)
        _DECLARED.put((info.spec,), key, facts)
    if not constants:
        return facts
    from orchestrator.reconcile.constants import object_constants

    return replace(facts, constants=object_constants(info.spec, d.constants))


def _declared(d: DesiredCollection, spec: CollectionSpec, sha256: str) -> CollectionFacts:
    """What ``spec`` (the object of ``d``, with that sha256) declares for ``d``: its
    programs that load, each one's support on this kernel, the maps it creates and their
    shapes, the maps the programs hold, the maps left unused."""
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
    maps = map_shapes(d, spec)
    return CollectionFacts(
        programs=names,
        object_sha256=sha256,
        maps=maps,
        problems=tuple(problems),
        held=held_maps(spec, names),
        unused_maps=tuple(m for m in spec.maps if m not in maps),
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

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(_kernel.in_netns(netns))
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
            magic = _kernel.fs_magic(os.fspath(target.path))
        except OSError:
            return TargetFacts(problem=f"cgroup {target.path} does not exist")
        if magic != CGROUP2_SUPER_MAGIC:
            return TargetFacts(problem=f"{target.path} is not a cgroup v2 directory")
        return TargetFacts()
    if isinstance(target, TracepointTarget):
        try:
            base = tracefs_root()
        except MountNotFoundError as err:
            return TargetFacts(problem=str(err))
        if not (base / "events" / target.group / target.name / "id").exists():
            return TargetFacts(problem=f"tracepoint {target.group}/{target.name} does not exist")
        return TargetFacts()
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
    try:
        held = _kernel.xdp_attached(ifindex, netns, find_link=find_link)
    except (EbpfError, OSError) as err:
        return TargetFacts(problem=str(err))
    if held is None or not held.prog_id:
        return TargetFacts()
    return TargetFacts(
        xdp_prog_id=held.prog_id,
        xdp_prog_name=held.prog_name,
        xdp_mode=held.mode,
        xdp_link_id=held.link_id if held.link_id is not None else 0,
    )


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
    desired: DesiredState,
    actual: ActualState,
    objects: ObjectSnapshot | None = None,
    root: Path | None = None,
) -> ActualState:
    """``actual`` with the facts :func:`plan` needs about the collections that may change:
    what their objects declare, whether their targets exist (and who holds XDP), whether
    their pinned substitution sources are pins on bpffs; with ``root``, the declared entries
    of every map that declares some and the live contents of those maps (no other map is
    read), and the constants the live generation runs with beside those that will be loaded,
    for the collections whose manifest or object changed (decoded nowhere else: they are
    only compared). Objects are read through ``objects`` (a snapshot of the
    default object store if None)."""
    if objects is None:
        from orchestrator.manifest.cache import default

        objects = default.snapshot()
    pins = PinRules.of(desired)
    colls: dict[str, CollectionFacts] = {}
    targets: dict[str, TargetFacts] = {}
    pinned: dict[Path, str | None] = {}
    for d in _may_change(desired, actual, pins):
        ac = actual.collections.get(d.name)
        live = root is not None and ac is not None and ac.record.digest != d.digest
        colls[d.name] = _collection_facts(d, objects, constants=live)
        if live:
            assert root is not None and ac is not None
            from orchestrator.reconcile.constants import live_constants

            colls[d.name] = replace(colls[d.name], live_constants=live_constants(root, ac.record))
        for a in d.attach:
            key = a.target.key()
            if key not in targets:
                targets[key] = target_facts(a.target)
        for mo in d.maps.values():
            if mo.source_from is not None and mo.source_from.pinned is not None:
                p = mo.source_from.pinned
                if p not in pinned:
                    pinned[p] = pinned_problem(p)
    entries = {}
    if root is not None:
        from orchestrator.reconcile.entries import entry_facts

        for d in desired.collections.values():
            ac = actual.collections.get(d.name)
            found = entry_facts(
                d,
                ac.record if ac is not None else None,
                objects.get,
                lambda rec, name: open_map(root, rec, rec.maps[name]),
            )
            if found:
                entries[d.name] = found
    return replace(actual, facts=Facts(colls, targets, pinned, entries))
