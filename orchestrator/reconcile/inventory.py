"""Everything on the hooks bpforch manages, whoever put it there (``bpforch status --all``).

Like ``bpftool net`` and ``bpfman list``, but limited to where bpforch works and marking what
is its own:

- XDP and tcx on every interface of bpforch's own network namespace and of every namespace
  the record's attachments name (the XDP program whoever attached it, by link or by
  netlink; each tcx hook's programs in run order);
- every cgroup hook of the cgroups the record's attachments name;
- tracepoint links (perf-event tracepoints, raw tracepoints, tp_btf) system-wide.

A program or link is **owned** when the record lists its id (the collection is named), and
**foreign** otherwise. Reading only: nothing is attached, detached or pinned. Needs what
``bpftool`` needs: CAP_SYS_ADMIN (ids to fds), CAP_NET_ADMIN, and setns for namespaces.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from orchestrator.ebpf import Error as EbpfError
from orchestrator.ebpf import Program
from orchestrator.reconcile.state import ActualState

HOST = "(host)"  # bpforch's own network namespace, as shown


@dataclass(frozen=True, slots=True)
class HookEntry:
    """One program at one hook. ``owner``: the collection whose record lists the program or
    link, "" for a foreign one. ``link_id``: None when no BPF link holds it (netlink XDP,
    BPF_PROG_ATTACH). ``detail``: the XDP mode, the position at a tcx hook."""

    hook: str  # xdp, tcx/ingress, tcx/egress, cgroup/<attach>, tracepoint, raw_tracepoint
    target: str  # interface, cgroup path or tracepoint name
    netns: str  # the namespace of an interface (HOST for bpforch's own), else ""
    program_id: int
    program: str
    link_id: int | None
    owner: str
    detail: str = ""

    @property
    def owned(self) -> bool:
        return self.owner != ""

    def to_json(self) -> dict[str, object]:
        return {
            "hook": self.hook,
            "target": self.target,
            "netns": self.netns,
            "program_id": self.program_id,
            "program": self.program,
            "link_id": self.link_id,
            "owned": self.owned,
            "collection": self.owner or None,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class Inventory:
    entries: tuple[HookEntry, ...]
    problems: tuple[str, ...] = ()  # hooks that could not be read (a namespace that is gone)

    def to_json(self) -> dict[str, object]:
        return {
            "hooks": [e.to_json() for e in self.entries],
            "problems": list(self.problems),
        }


class _Owners:
    def __init__(self, actual: ActualState) -> None:
        self.programs: dict[int, str] = {}
        self.links: dict[int, str] = {}
        self.netns: set[str] = set()
        self.cgroups: set[str] = set()
        for name, ac in actual.collections.items():
            rec = ac.record
            for p in rec.programs.values():
                self.programs[p.id] = name
            for a in rec.attachments.values():
                self.links[a.link_id] = name
                target = a.target or {}
                if a.kind in ("xdp", "tc") and isinstance(target.get("netns"), str):
                    self.netns.add(str(target["netns"]))
                if a.kind == "cgroup" and isinstance(target.get("path"), str):
                    self.cgroups.add(str(target["path"]))

    def owner(self, prog_id: int, link_id: int | None) -> str:
        if link_id is not None and link_id in self.links:
            return self.links[link_id]
        return self.programs.get(prog_id, "")


def _prog_name(prog_id: int, cache: dict[int, str]) -> str:
    if prog_id not in cache:
        try:
            with Program.from_id(prog_id) as p:
                cache[prog_id] = p.name
        except EbpfError:
            cache[prog_id] = "?"
    return cache[prog_id]


def _interfaces(netns: str | None) -> list[tuple[int, str]]:
    from orchestrator.ebpf.inspect import in_netns

    with in_netns(netns):
        return sorted(socket.if_nameindex())


def _net_hooks(
    netns: str | None, owners: _Owners, names: dict[int, str], problems: list[str]
) -> Iterator[HookEntry]:
    from orchestrator.ebpf import link as links

    shown = HOST if netns is None else netns
    try:
        interfaces = _interfaces(netns)
    except (EbpfError, OSError) as err:
        problems.append(f"network namespace {shown}: {err}")
        return
    for index, name in interfaces:
        try:
            xdp = links.xdp_attached(index, netns)
        except EbpfError as err:
            problems.append(f"xdp on {name} in {shown}: {err}")
            xdp = None
        if xdp is not None:
            yield HookEntry(
                "xdp",
                name,
                shown,
                xdp.prog_id,
                xdp.prog_name or _prog_name(xdp.prog_id, names),
                xdp.link_id,
                owners.owner(xdp.prog_id, xdp.link_id),
                xdp.mode + ("" if xdp.link_id is not None else ", netlink"),
            )
        for direction in ("ingress", "egress"):
            try:
                state = links.tcx_attached(index, direction, netns)
            except EbpfError:
                continue  # no tcx on this kernel or interface
            for i, p in enumerate(state.programs):
                yield HookEntry(
                    f"tcx/{direction}",
                    name,
                    shown,
                    p.prog_id,
                    _prog_name(p.prog_id, names),
                    p.link_id,
                    owners.owner(p.prog_id, p.link_id),
                    f"{i + 1} of {len(state.programs)}",
                )


def _cgroup_hooks(
    path: str, owners: _Owners, names: dict[int, str], problems: list[str]
) -> Iterator[HookEntry]:
    from orchestrator.ebpf import link as links
    from orchestrator.manifest.kernel_hooks import CGROUP_HOOKS

    if not os.path.isdir(path):
        problems.append(f"cgroup {path}: gone")
        return
    for hook in sorted(CGROUP_HOOKS):
        try:
            state = links.cgroup_attached(path, hook)
        except (EbpfError, ValueError):
            continue  # an attach type this kernel does not know
        for p in state.programs:
            yield HookEntry(
                f"cgroup/{hook}",
                path,
                "",
                p.prog_id,
                _prog_name(p.prog_id, names),
                p.link_id,
                owners.owner(p.prog_id, p.link_id),
            )


def _tracepoint_hooks(owners: _Owners, names: dict[int, str]) -> Iterator[HookEntry]:
    from orchestrator.ebpf import link as links

    for info in links.iter_links():
        t = info.target
        if isinstance(t, links.TracepointTarget):
            hook, target = "tracepoint", t.name
        elif isinstance(t, links.RawTracepointTarget):
            hook, target = "raw_tracepoint", t.name
        else:
            continue
        yield HookEntry(
            hook,
            target,
            "",
            info.program_id,
            _prog_name(info.program_id, names),
            info.id,
            owners.owner(info.program_id, info.id),
        )


def inventory(actual: ActualState) -> Inventory:
    """What is attached at every hook bpforch manages (see the module's docstring)."""
    owners = _Owners(actual)
    names: dict[int, str] = {}
    problems: list[str] = []
    entries: list[HookEntry] = []
    for netns in [None, *sorted(owners.netns)]:
        if netns is not None and not Path(netns).exists():
            problems.append(f"network namespace {netns}: gone")
            continue
        entries.extend(_net_hooks(netns, owners, names, problems))
    for path in sorted(owners.cgroups):
        entries.extend(_cgroup_hooks(path, owners, names, problems))
    tracepoints = _tracepoint_hooks(owners, names)
    entries.extend(sorted(tracepoints, key=lambda e: (e.hook, e.target, e.link_id or 0)))
    return Inventory(tuple(entries), tuple(problems))
