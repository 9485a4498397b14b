"""Observing: the record checked against the kernel, and the facts a plan needs.

:func:`observe` is cheap enough to run before every apply: each recorded map and program
pin is compared with its directory entry's inode (``BPF_OBJ_GET`` + info only when it
differs), each link is opened and its info read (no program is loaded, no object parsed);
with an :class:`~orchestrator.reconcile.cache.ObserveCache` (a Reconciler keeps one), a
listing and a fixed link's info are reused while their keys prove them unchanged.
:func:`gather_facts` reads objects and probes targets only for collections that will change.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator._gc import gc_paused
from orchestrator.ebpf import inspect as _kernel
from orchestrator.ebpf.errors import Error as EbpfError
from orchestrator.ebpf.errors import SyscallError
from orchestrator.ebpf.inspect import (
    FD,
    dir_stamp,
    is_mount_root,
    open_dir_at,
    open_pin_at,
    settled,
)
from orchestrator.reconcile.cache import (
    FIXED_LINKS,
    IdentityMemo,
    Listing,
    ObserveCache,
    SubStamp,
    sub_stamp,
)
from orchestrator.reconcile.errors import RecordError
from orchestrator.reconcile.owner import (
    MARK_PIN,
    OWNER_PIN,
    STAGING_PREFIX,
    collection_verdict,
    open_owned,
    open_root,
    root_token,
    staging_verdict,
)
from orchestrator.reconcile.state import (
    ActualCollection,
    ActualState,
    AttachmentRecord,
    CollectionRecord,
    Drift,
    Foreign,
    MapRecord,
    Ownership,
)
from orchestrator.reconcile.store import read_record

if TYPE_CHECKING:
    from orchestrator.ebpf import CollectionSpec, LinkInfo, Map


class MapGoneError(EbpfError):
    """A recorded map that is not pinned can't be reached: no program of its collection
    holds it any more."""


CGROUP2_SUPER_MAGIC = 0x63677270

# ---------------------------------------------------------------------------- observe


def _open_id(dir_fd: int, name: str, info: Callable[[FD], object]) -> tuple[int, object] | None:
    """(id, info) of the object pinned as ``name`` in ``dir_fd``; None if there is no pin
    (a symlink is never followed: :func:`check_collection` reports it before)."""
    try:
        fd = open_pin_at(dir_fd, name)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise
    except SyscallError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise
    with fd:
        try:
            i = info(fd)
        except SyscallError:
            return 0, None
    return (i if isinstance(i, int) else int(getattr(i, "id", 0))), i


def link_detached(kind: str, info: LinkInfo) -> bool:
    """Whether a link's hook is gone (``LINK_DETACH``, the interface or cgroup removed): the
    kernel then reports ifindex/cgroup id/netns inode 0 in the link info."""
    return kind in ("xdp", "tc", "cgroup", "netns") and not info.attached


SUBDIRS = ("maps", "progs", "links")


class _Tree:
    """One collection directory, read without following a symlink: the entries of its
    subdirectories (by name); their fds are opened when a pin has to be read."""

    __slots__ = (
        "cfd", "entries", "fds", "foreign", "gone", "ident", "links", "marked", "name", "present",
        "root",
    )  # fmt: skip

    def __init__(self, root: Path, name: str) -> None:
        self.root, self.name = root, name
        self.entries: dict[str, dict[str, os.DirEntry[str]]] = {}
        self.fds: dict[str, int] = {}
        self.cfd: int | None = None
        self.foreign: list[Foreign] = []
        self.marked = False
        self.present = False
        self.ident: tuple[int, int] | None = None  # (st_dev, st_ino) of the directory
        self.gone = ""  # why the directory can't be read (a symlink, a mount point)
        # the remembered listing's fixed links (see orchestrator.reconcile.cache), if any
        self.links: dict[str, tuple[int, int, int]] | None = None

    @property
    def path(self) -> Path:
        return self.root / self.name

    def fd(self, sub: str) -> int | None:
        """An fd of the subdirectory ``sub`` (O_NOFOLLOW), None if the listing has none."""
        fd = self.fds.get(sub)
        if fd is not None:
            return fd
        if self.cfd is None or sub not in self.entries:
            return None
        fd = self.fds[sub] = open_dir_at(self.cfd, sub)
        return fd

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        if self.cfd is not None:
            os.close(self.cfd)
            self.cfd = None


def _foreign_entry(path: Path, e: os.DirEntry[str], dir_fd: int, collection: str = "") -> Foreign:
    if e.is_symlink():
        try:
            target = os.readlink(e.name, dir_fd=dir_fd)
        except OSError:
            target = "?"
        return Foreign(path, f"symlink to {target}", collection)
    return Foreign(path, "not a pin or directory bpforch made", collection)


def _read_tree(
    root_fd: int | None, root: Path, name: str, cache: ObserveCache | None = None
) -> _Tree:
    """The tree of collection ``name``; with ``cache``, a listing whose directories all
    have their remembered stamps is reused (see :mod:`orchestrator.reconcile.cache`)."""
    tree = _Tree(root, name)
    if root_fd is None:
        return tree
    now = time.time_ns()
    try:
        cfd = open_dir_at(root_fd, name)
    except FileNotFoundError:
        return tree
    except (OSError, EbpfError) as err:
        if getattr(err, "errno", None) == errno.ELOOP:
            target = os.readlink(name, dir_fd=root_fd)
            tree.gone = f"symlink to {target}"
        else:
            tree.gone = "not a directory"
        tree.foreign.append(Foreign(tree.path, tree.gone, name))
        return tree
    try:
        top = dir_stamp(cfd)
        if top.mount_root:
            tree.gone = "a mount point"
            tree.foreign.append(Foreign(tree.path, tree.gone, name))
            os.close(cfd)
            return tree
        tree.present = True
        tree.ident = (top.dev, top.ino)
        tree.cfd = cfd
        known = cache.trees.get(name) if cache is not None else None
        if known is not None and known.still(top, cfd):
            assert cache is not None
            cache.hits += 1
            tree.entries = known.entries
            tree.marked = known.marked
            tree.foreign.extend(known.foreign)
            tree.links = known.links
            return tree
        subs: list[tuple[str, SubStamp]] = []
        with os.scandir(cfd) as it:
            listing_top = list(it)
        for e in listing_top:
            if e.name in SUBDIRS and e.is_dir(follow_symlinks=False):
                sub = tree.fds[e.name] = open_dir_at(cfd, e.name)
                if cache is not None:  # the listing's key, if it is remembered
                    subs.append((e.name, sub_stamp(os.fstat(sub))))
                with os.scandir(sub) as it:
                    listing = {x.name: x for x in it}
                tree.entries[e.name] = listing
                for x in listing.values():
                    if x.is_symlink():
                        tree.foreign.append(_foreign_entry(tree.path / e.name / x.name, x, sub))
            elif e.name == MARK_PIN and e.is_file(follow_symlinks=False):
                tree.marked = True
            elif e.is_symlink():
                tree.foreign.append(_foreign_entry(tree.path / e.name, e, cfd))
        if cache is not None:
            if settled(top.mtime_ns, top.ctime_ns, now) and all(
                settled(st[2], st[3], now) for _, st in subs
            ):
                known = Listing(top, tuple(subs), tree.entries, tree.marked, tuple(tree.foreign))
                cache.remember(name, known)
                tree.links = known.links
            else:
                cache.trees.pop(name, None)
    except BaseException:
        if tree.cfd is None:
            os.close(cfd)
        tree.close()
        raise
    return tree


def _reached_inode(tree: _Tree, sub: str, leaf: str) -> int | None:
    """The inode a lookup of pin ``sub/leaf`` reaches, through the subdirectory's own fd
    (opened O_NOFOLLOW). A mount over the pin shows here and not in the listing, whose
    entry keeps the covered pin's inode. None when it can't be stat-ed."""
    sub_fd = tree.fd(sub)
    if sub_fd is None:
        return None
    try:
        return os.stat(leaf, dir_fd=sub_fd, follow_symlinks=False).st_ino
    except OSError:
        return None


def _check_pin(
    tree: _Tree, kind: str, name: str, pin: str, want: int, ino: int,
    info: Callable[[FD], object],
) -> Drift | None:  # fmt: skip
    """A map or program pin against its record: the inode of the directory entry and the
    one a lookup reaches (one stat: a mount over the pin changes only the latter) first,
    then BPF_OBJ_GET + info to say what changed."""
    sub, _, leaf = pin.partition("/")
    e = tree.entries.get(sub, {}).get(leaf)
    if e is None:
        why = f" ({tree.path} is a {tree.gone}: never followed)" if tree.gone else ""
        return Drift(kind, name, f"pin {pin} is missing{why}")
    if e.is_symlink():
        return Drift(kind, name, f"pin {pin} is a symlink, not bpforch's pin", "replaced")
    if ino and e.inode() == ino and _reached_inode(tree, sub, leaf) == ino:
        return None
    sub_fd = tree.fd(sub)
    got = None if sub_fd is None else _open_id(sub_fd, leaf, info)
    if got is None:
        return Drift(kind, name, f"pin {pin} is missing")
    if got[0] != want:
        noun = "map" if kind == "map" else "program"
        return Drift(kind, name, f"pin {pin} holds {noun} id {got[0]}, not {want}", "replaced")
    return None


@dataclass(frozen=True, slots=True)
class CollectionCheck:
    drift: tuple[Drift, ...]
    foreign: tuple[Foreign, ...] = ()
    marked: bool = False  # the directory has its ownership marker
    present: bool = False  # the directory is there (a real directory, not a symlink)
    unrecorded_links: bool = False  # links/ holds a pin the record does not name
    ident: tuple[int, int] | None = None  # (st_dev, st_ino) of the directory, if present


def check_collection(
    root_fd: int | None, root: Path, rec: CollectionRecord, cache: ObserveCache | None = None
) -> CollectionCheck:
    """Every recorded pin of ``rec`` against the kernel, reading the collection directory
    without following a symlink: maps and programs by the pin's inode (from the directory
    listing), falling back to BPF_OBJ_GET + info to say what changed; links by BPF_OBJ_GET
    + link info (a link can be detached while its pin stays), except a link that can be
    neither switched nor detached whose pin is the inode the record names (the pin the apply
    made) or the one ``cache`` saw it through. Symlinks in the tree are reported as foreign;
    ``marked``: the directory has its ownership marker."""
    tree = _read_tree(root_fd, root, rec.name, cache)
    try:
        drift: list[Drift] = []
        for m in rec.maps.values():
            if m.source.startswith("pinned:"):
                drift.extend(_check_pinned_source(m))
                continue
            if m.source:  # substituted from another collection (see observe)
                continue
            if not m.pin:  # not pinned: its programs hold it; a pin there is not ours to have
                leaf = m.name.replace(".", "_")
                if leaf in tree.entries.get("maps", {}):
                    drift.append(
                        Drift(
                            "map",
                            m.name,
                            f"unexpected pin maps/{leaf} (the manifest does not pin this map)",
                            "extra",
                        )
                    )
                continue
            d = _check_pin(tree, "map", m.name, m.pin, m.id, m.ino, _kernel.map_id)
            if d is not None:
                drift.append(d)
        for p in rec.programs.values():
            d = _check_pin(tree, "program", p.name, p.pin, p.id, p.ino, _kernel.program_id)
            if d is not None:
                drift.append(d)
        for a in rec.attachments.values():
            drift.extend(_check_link(tree, rec, a))
        drift.extend(_check_order(rec, {x.name for x in drift if x.kind == "attachment"}))
        pins = tree.entries.get("links")
        # each attachment has its own pin under links/: with no drift (every recorded pin is
        # there), an entry the record does not name shows as one entry too many
        unrecorded = pins is not None and len(pins) > len(rec.attachments)
        return CollectionCheck(
            tuple(drift), tuple(tree.foreign), tree.marked, tree.present, unrecorded, tree.ident
        )
    finally:
        tree.close()


def _check_pinned_source(m: MapRecord) -> list[Drift]:
    """A ``from: {pinned}`` source must still hold the map our programs were loaded with.
    It is someone else's pin, outside the owned tree: resolved like the manifest names it."""
    path = m.source.removeprefix("pinned:")
    real = os.path.realpath(path)
    try:
        fd = _kernel.open_pin(real)
    except SyscallError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return [Drift("map", m.name, f"substitution source {path} is gone")]
        raise
    with fd:
        try:
            got = _kernel.map_id(fd)
        except SyscallError:
            got = 0
    if got != m.id:
        return [
            Drift(
                "map",
                m.name,
                f"substitution source {path} now holds map id {got}, not {m.id} (the "
                "programs are reloaded with it)",
                "replaced",
            )
        ]
    return []


def _check_link(tree: _Tree, rec: CollectionRecord, a: AttachmentRecord) -> list[Drift]:
    sub, _, leaf = a.pin.partition("/")
    e = tree.entries.get(sub, {}).get(leaf)
    if e is None:
        return [Drift("attachment", a.key, f"link pin {a.pin} is missing")]
    if e.is_symlink():
        return [
            Drift("attachment", a.key, f"link pin {a.pin} is a symlink, not bpforch's pin",
                  "replaced")
        ]  # fmt: skip
    prog = rec.programs.get(a.program)
    if (
        a.ino
        and prog is not None
        and a.kind in FIXED_LINKS
        and sub == "links"
        and e.inode() == a.ino
        and _reached_inode(tree, sub, leaf) == a.ino
    ):
        return []  # the pin the apply made (a re-pin is a new inode), so the link it made
    fixed = tree.links is not None and a.kind in FIXED_LINKS and sub == "links"
    if fixed and prog is not None:
        assert tree.links is not None
        seen = tree.links.get(leaf)
        if (
            seen is not None
            and seen == (e.inode(), a.link_id, prog.id)
            and _reached_inode(tree, sub, leaf) == seen[0]
        ):
            return []  # the same pin inode, so the same link: it still runs that program
    sub_fd = tree.fd(sub)
    got = None if sub_fd is None else _open_id(sub_fd, leaf, _kernel.link_info)
    if got is None:
        return [Drift("attachment", a.key, f"link pin {a.pin} is missing")]
    # imported here: a link the pin inode vouches for is never read (see above)
    from orchestrator.ebpf.link import LinkInfo, XDPTarget

    link_id, info = got
    if link_id != a.link_id or not isinstance(info, LinkInfo):
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
    if prog is not None and info.program_id != prog.id:
        return [
            Drift(
                "attachment",
                a.key,
                f"link {a.link_id} runs program id {info.program_id}, not {prog.id} "
                "(an interrupted apply?)",
                "program",
            )
        ]
    if a.kind == "xdp" and a.mode:
        ifindex = info.target.ifindex if isinstance(info.target, XDPTarget) else 0
        return _check_xdp_mode(a, ifindex, info.program_id)
    if fixed and prog is not None:
        assert tree.links is not None
        tree.links[leaf] = (e.inode(), link_id, info.program_id)
    return []


def _netns_of(a: AttachmentRecord) -> str | None:
    netns = (a.target or {}).get("netns")
    return netns if isinstance(netns, str) and netns else None


def _check_xdp_mode(a: AttachmentRecord, ifindex: int, prog_id: int) -> list[Drift]:
    """The mode the kernel runs an XDP link's program in (rtnetlink: a link reports no
    mode) against the mode recorded when it was attached."""
    from orchestrator.ebpf import link as _links

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
    from orchestrator.ebpf import link as _links

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


def _check_substitutions(
    rec: CollectionRecord, records: Mapping[str, CollectionRecord]
) -> tuple[Drift, ...]:
    """A ``from: {collection}`` map must be the very map its source collection records
    (its programs were loaded with it); anything else is drift."""
    out = []
    for m in rec.maps.values():
        if not m.source.startswith("collection/"):
            continue
        _, coll, mname = m.source.split("/", 2)
        src = records.get(coll)
        theirs = src.maps.get(mname) if src is not None else None
        if theirs is None:
            out.append(Drift("map", m.name, f"substitution source {coll}/{mname} is not applied"))
        elif theirs.id != m.id:
            out.append(
                Drift(
                    "map",
                    m.name,
                    f"uses map id {m.id}, but {coll}/{mname} is map id {theirs.id} (the "
                    "programs are reloaded with it)",
                    "replaced",
                )
            )
    return tuple(out)


def open_map(root: Path, rec: CollectionRecord, mr: MapRecord) -> Map:
    """An fd of a recorded map of ``rec`` (not a substituted one): through its pin, or, for
    a map that is not pinned, through the programs that hold it: a program's pin is opened
    and the map taken by id only if the program's map ids list it (while that program fd is
    open, the id cannot name another map)."""
    from orchestrator.ebpf import Map

    def inside(rel: str) -> str:
        parts = [rec.name, *rel.split("/")]
        if any(part in ("", ".", "..") for part in parts):
            raise MapGoneError(f"map {mr.name} of collection {rec.name}: {rel}: not a pin path")
        return "/".join(parts)

    root_fd = open_root(root)
    try:
        if mr.pin:
            return Map.from_fd(open_owned(root_fd, inside(mr.pin)))
        return _held_map(root_fd, rec, mr, inside)
    finally:
        os.close(root_fd)


def _held_map(
    root_fd: int, rec: CollectionRecord, mr: MapRecord, inside: Callable[[str], str]
) -> Map:
    """An unpinned map of ``rec``, by id, from a program of ``rec`` that lists it."""
    from orchestrator.ebpf import Map

    for p in rec.programs.values():
        try:
            fd = open_owned(root_fd, inside(p.pin))
        except (SyscallError, EbpfError, OSError):
            continue
        with fd:
            try:
                ids = _kernel.program_map_ids(fd)
            except SyscallError:
                continue
            if mr.id in ids:
                m = Map.from_id(mr.id)
                m.name = mr.name
                return m
    raise MapGoneError(
        f"map {mr.name} of collection {rec.name}: no program of the collection holds map id "
        f"{mr.id} (it is not pinned, and its programs are gone: the next apply recreates it)"
    )


_HELD = IdentityMemo()


def held_maps(spec: CollectionSpec, programs: Iterable[str]) -> frozenset[str]:
    """The maps that loading ``programs`` of ``spec`` leaves held by programs: those the
    programs refer to, the programs and maps in the initial contents of those maps (prog
    arrays, maps of maps), and theirs, transitively (:meth:`CollectionSpec.subset`). Nothing
    else outlives the load unless it is pinned. ``spec`` is one the object store parsed
    (never changed: the answer is remembered for it)."""
    names = tuple(p for p in programs if p in spec.programs)
    got = _HELD.get((spec,), names)
    if isinstance(got, frozenset):
        return got
    _, maps = spec.subset(list(names))
    out = frozenset(maps)
    _HELD.put((spec,), names, out)
    return out


def observe(root: Path, state_dir: Path, cache: ObserveCache | None = None) -> ActualState:
    """The record, each collection checked against the kernel; staging leftovers of ours,
    collections adopted from their ownership markers (no record lists them), and foreign
    entries under ``root``. Raises StateError if another state directory owns ``root``.
    ``cache``: what an earlier observe of the same root and state directory read, reused
    where its key proves it unchanged (:mod:`orchestrator.reconcile.cache`)."""
    with gc_paused():  # the record and a check per collection (see orchestrator._gc)
        return _observe_root(root, state_dir, cache)


def _observe_root(root: Path, state_dir: Path, cache: ObserveCache | None) -> ActualState:
    try:
        root_fd = open_root(root)
    except FileNotFoundError:
        try:
            record = read_record(state_dir)
        except RecordError as err:
            hint = f"move it away and re-apply: {root} does not exist, so nothing is adopted"
            raise RecordError(err.path, err.reason, hint) from err
        return ActualState(
            {
                n: ActualCollection(r, check_collection(None, root, r).drift)
                for n, r in record.collections.items()
            }
        )
    try:
        if cache is not None:
            cache.for_root(root_fd)
        return _observe(root_fd, root, state_dir, cache)
    finally:
        os.close(root_fd)


def _observe(
    root_fd: int, root: Path, state_dir: Path, cache: ObserveCache | None = None
) -> ActualState:
    token = root_token(root_fd, root, state_dir)
    try:
        record = read_record(state_dir, cache)
    except RecordError as err:
        raise RecordError(err.path, err.reason, _rebuild_hint(root_fd, root, token)) from err
    collections: dict[str, ActualCollection] = {}
    foreign: list[Foreign] = []
    staging: list[Path] = []
    adopted: list[str] = []
    unmarked: list[str] = []
    leftover: set[int] = set()
    recovered: list[str] = []
    for name, rec in record.collections.items():
        check = check_collection(root_fd, root, rec, cache)
        if check.marked and (check.drift or check.unrecorded_links):
            newer = _newer_marker(root_fd, name, token, rec)
            if newer is not None:
                rec, check = newer, check_collection(root_fd, root, newer, cache)
                recovered.append(name)
        collections[name] = ActualCollection(rec, check.drift, check.ident)
        foreign.extend(check.foreign)
        if check.present and not check.marked:
            unmarked.append(name)
    with os.scandir(root_fd) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        name = e.name
        if name == OWNER_PIN or name in record.collections:
            continue
        path = root / name
        if not e.is_dir(follow_symlinks=False):
            foreign.append(_foreign_entry(path, e, root_fd, _collection_name(name)))
            continue
        if is_mount_root(root_fd, name):
            foreign.append(Foreign(path, "a mount point", _collection_name(name)))
            continue
        if name.startswith(STAGING_PREFIX):
            why = staging_verdict(root_fd, name, token)
            if why is None:
                staging.append(path)
                foreign.extend(_foreign_inside(root_fd, name, path))
                leftover.update(_leftover_programs(root_fd, name))
            else:
                foreign.append(Foreign(path, why))
            continue
        verdict = collection_verdict(root_fd, name, token)
        if isinstance(verdict, str):
            foreign.append(Foreign(path, verdict, _collection_name(name)))
            continue
        check = check_collection(root_fd, root, verdict)
        collections[name] = ActualCollection(verdict, check.drift, check.ident)
        foreign.extend(check.foreign)
        adopted.append(name)
    records = {n: c.record for n, c in collections.items()}
    for n, c in collections.items():
        extra = _check_substitutions(c.record, records)
        if extra:
            collections[n] = ActualCollection(c.record, c.drift + extra, c.ident)
    ownership = Ownership(
        token,
        tuple(foreign),
        tuple(adopted),
        tuple(sorted(unmarked)),
        frozenset(leftover),
        tuple(recovered),
    )
    return ActualState(collections, tuple(staging), ownership)


def _newer_marker(
    root_fd: int, name: str, token: bytes, rec: CollectionRecord
) -> CollectionRecord | None:
    """The record in the ownership marker of recorded collection ``name``'s tree if it is a
    later generation than ``rec``: an apply swapped that tree into place and was killed
    before it wrote the record, so the marker, not the record, says what the tree holds
    (its links among it: a hook they hold is bpforch's own). None otherwise."""
    verdict = collection_verdict(root_fd, name, token)
    if isinstance(verdict, str) or verdict.generation <= rec.generation:
        return None
    return verdict


def _foreign_inside(dir_fd: int, name: str, path: Path, depth: int = 8) -> list[Foreign]:
    """Symlinks, mount points and special files anywhere in the tree ``name`` (a leftover
    of ours, which the next apply removes around them), walked without following any.
    bpforch's trees are 3 levels deep: anything much deeper is foreign too."""
    out: list[Foreign] = []
    if depth == 0:
        return [Foreign(path, "nested deeper than bpforch makes its directories")]
    try:
        fd = open_dir_at(dir_fd, name)
    except OSError:
        return out
    try:
        with os.scandir(fd) as it:
            entries = list(it)
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                if is_mount_root(fd, e.name):
                    out.append(Foreign(path / e.name, "a mount point"))
                else:
                    out.extend(_foreign_inside(fd, e.name, path / e.name, depth - 1))
            elif not e.is_file(follow_symlinks=False):
                out.append(_foreign_entry(path / e.name, e, fd))
    finally:
        os.close(fd)
    return out


def _leftover_programs(root_fd: int, name: str) -> set[int]:
    """Ids of the programs run by the links pinned in the staging leftover ``name``
    (``<name>/<collection>/links/*``), read without following a symlink."""
    out: set[int] = set()
    with contextlib.ExitStack() as stack:
        try:
            sfd = open_dir_at(root_fd, name)
        except OSError:
            return out
        stack.callback(os.close, sfd)
        with os.scandir(sfd) as it:
            trees = [e.name for e in it if e.is_dir(follow_symlinks=False)]
        for tree in trees:
            try:
                tfd = open_dir_at(sfd, tree)
                stack.callback(os.close, tfd)
                lfd = open_dir_at(tfd, "links")
                stack.callback(os.close, lfd)
            except OSError:
                continue
            with os.scandir(lfd) as it:
                pins = [e.name for e in it if e.is_file(follow_symlinks=False)]
            from orchestrator.ebpf.link import LinkInfo

            for pin in pins:
                got = _open_id(lfd, pin, _kernel.link_info)
                if got is not None and isinstance(got[1], LinkInfo):
                    out.add(got[1].program_id)
    return out


def _collection_name(name: str) -> str:
    """The collection a root entry stands in place of (names starting with ``_`` are
    bpforch's own: no collection has such a name)."""
    return "" if name.startswith("_") else name


def _rebuild_hint(root_fd: int, root: Path, token: bytes) -> str:
    """What re-applying without the record would do, exactly: which collections are rebuilt
    from their markers and which directories are left alone."""
    ours: list[str] = []
    theirs: list[str] = []
    with os.scandir(root_fd) as it:
        names = sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
    for name in names:
        if name.startswith("_"):
            continue
        verdict = collection_verdict(root_fd, name, token)
        (theirs if isinstance(verdict, str) else ours).append(name)
    text = "move it away and re-apply: the record is rebuilt from the ownership markers"
    if ours:
        keep = "keeps its" if len(ours) == 1 else "keep their"
        text += (
            f" ({', '.join(ours)} {keep} programs, links and maps, preserved maps with their "
            "contents)"
        )
    else:
        text += f" (no collection under {root} has one: nothing is adopted)"
    if theirs:
        have = "has" if len(theirs) == 1 else "have"
        text += (
            f"; {', '.join(theirs)} under {root} {have} no valid marker: reported as foreign "
            "and left alone, and applying a collection of that name is refused"
        )
    return text


# ---------------------------------------------------------------------------- facts
