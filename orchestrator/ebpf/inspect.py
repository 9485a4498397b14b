"""Inspecting what the kernel holds: the public surface a reconciler (or a tool) reads the
kernel through, so that nothing outside the loader needs its private syscall, bpffs or
netlink modules.

- **Pins**, opened relative to a directory fd and never through a symlink
  (:func:`open_dir_at`, :func:`open_pin_at`, :func:`pin_at`), or by path
  (:func:`open_pin`); whether a path is on bpffs (:func:`is_bpffs`,
  :func:`bpffs_mount_of`, :func:`is_mount_root`, :func:`ensure_dir`); removing a pin tree
  the caller made, never through a symlink or across a mount (:func:`remove_tree_at`, and
  :func:`remove_tree`, which raises when something had to be left).
- **Ids**: every program, map or link id in the kernel (:func:`program_ids`,
  :func:`map_ids`, :func:`link_ids`; needs CAP_SYS_ADMIN); open one with ``from_id`` of
  :class:`~orchestrator.ebpf.Program`, :class:`~orchestrator.ebpf.Map` or
  :class:`~orchestrator.ebpf.Link`. Whether an id is still in use, without taking a
  reference (:func:`map_exists`, :func:`program_exists`, :func:`link_exists`).
- **Objects by fd**: the kernel id of a map or program behind an fd (:func:`map_id`,
  :func:`program_id`: one BPF_OBJ_GET_INFO_BY_FD each), the maps a program uses
  (:func:`program_map_ids`), what a link is attached to (:func:`link_info`). Objects by id
  and the fields of a live handle: :meth:`Map.from_id <orchestrator.ebpf.Map.from_id>`,
  :attr:`Program.id <orchestrator.ebpf.Program.id>` and ``tag`` (read once, then kept).
- **Hooks**: what is attached at an interface, a tcx or a cgroup hook, whoever attached it
  (:func:`xdp_attached`, :func:`xdp_mode`, :func:`tcx_attached`, :func:`cgroup_attached`),
  every link in the kernel (:func:`iter_links`), and the file system type of a path
  (:func:`fs_magic`, e.g. to tell a cgroup v2 directory).

Every function raises :class:`~orchestrator.ebpf.errors.Error` subclasses (or ``OSError``
for plain file-system failures) and leaves no fd open except the one it returns.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from orchestrator import _lazy
from orchestrator.ebpf import _sys
from orchestrator.ebpf._bpffs import (
    DirStamp,
    bpffs_mount_of,
    dir_stamp,
    ensure_dir,
    is_bpffs,
    is_mount_root,
    open_dir_at,
    open_pin_at,
    pin_at,
    remove_tree,
    remove_tree_at,
    settled,
)
from orchestrator.ebpf._sys import FD, fs_magic

if TYPE_CHECKING:
    # imported on first use (orchestrator._lazy): a no-op plan of tracepoint collections
    # needs neither netlink nor the xdp/cgroup queries
    from orchestrator.ebpf._netlink import in_netns
    from orchestrator.ebpf._sys import AttachType
    from orchestrator.ebpf.link import Direction, HookState, NetnsPath
    from orchestrator.ebpf.link.base import LinkInfo
    from orchestrator.ebpf.link.cgroup import cgroup_attached
    from orchestrator.ebpf.link.query import iter_links
    from orchestrator.ebpf.link.xdp import xdp_attached, xdp_mode

__all__ = [
    "FD",
    "DirStamp",
    "bpffs_mount_of",
    "cgroup_attached",
    "dir_stamp",
    "ensure_dir",
    "fs_magic",
    "in_netns",
    "is_bpffs",
    "is_mount_root",
    "iter_links",
    "link_exists",
    "link_ids",
    "link_info",
    "map_exists",
    "map_id",
    "map_ids",
    "open_dir_at",
    "open_pin",
    "open_pin_at",
    "pin_at",
    "program_exists",
    "program_id",
    "program_ids",
    "program_map_ids",
    "remove_tree",
    "remove_tree_at",
    "settled",
    "tcx_attached",
    "xdp_attached",
    "xdp_mode",
]


def tcx_attached(
    iface: int | str, direction: Direction | AttachType, netns: NetnsPath = None
) -> HookState:
    """:func:`orchestrator.ebpf.link.tcx_attached` (imported on first use: the tcx module
    needs the program layer, which a plan of other hooks never loads)."""
    from orchestrator.ebpf.link import tcx

    return tcx.tcx_attached(iface, direction, netns)


def open_pin(path: str | os.PathLike[str]) -> FD:
    """A new fd for the object pinned at ``path`` (BPF_OBJ_GET; symlinks on the way are
    resolved by the kernel: use :func:`open_pin_at` for paths bpforch owns)."""
    return _sys.obj_get(os.fspath(path))


def map_id(fd: FD) -> int:
    """The kernel id of the map behind ``fd`` (one BPF_OBJ_GET_INFO_BY_FD)."""
    return int(_sys.map_info(fd).id)


def program_id(fd: FD) -> int:
    """The kernel id of the program behind ``fd`` (one BPF_OBJ_GET_INFO_BY_FD)."""
    return int(_sys.prog_info(fd).id)


def program_map_ids(fd: FD) -> tuple[int, ...]:
    """The ids of the maps the program behind ``fd`` uses (two info calls, no
    instructions copied)."""
    return tuple(_sys.prog_map_ids(fd))


def link_info(fd: FD, *, names: bool = False) -> LinkInfo:
    """What the kernel reports about the link behind ``fd``: its id, program and target
    (:attr:`LinkInfo.attached` is False once its hook is gone), in one info call. With
    ``names``, also the tracepoint or file name that raw_tp and perf_event links report (a
    second call for those); without, their target's name is ""."""
    from orchestrator.ebpf.link.base import _decode_info  # not needed by a pin-inode check

    if names:
        raw, name = _sys.link_info_named(fd)
        return _decode_info(raw, name)
    return _decode_info(_sys.link_info(fd), "")


def program_ids() -> Iterator[int]:
    """The id of every program in the kernel, ascending (BPF_PROG_GET_NEXT_ID; a program
    may be gone by the time its id is used)."""
    return _sys.iter_ids(_sys.Cmd.PROG_GET_NEXT_ID)


def map_ids() -> Iterator[int]:
    """The id of every map in the kernel, ascending (BPF_MAP_GET_NEXT_ID)."""
    return _sys.iter_ids(_sys.Cmd.MAP_GET_NEXT_ID)


def link_ids() -> Iterator[int]:
    """The id of every link in the kernel, ascending (BPF_LINK_GET_NEXT_ID)."""
    return _sys.iter_ids(_sys.Cmd.LINK_GET_NEXT_ID)


def _exists(cmd: _sys.Cmd, obj_id: int) -> bool:
    return obj_id > 0 and _sys.get_next_id(cmd, obj_id - 1) == obj_id


def map_exists(map_id: int) -> bool:
    """Whether a map with this id is alive, asked without opening it (BPF_MAP_GET_NEXT_ID).

    Polling a dying map with ``Map.from_id`` is not harmless: each open and close of a
    prog array whose last user reference is gone schedules the kernel's deferred clear
    again, and a clear scheduled while the previous one is pending leaks a reference, so
    the map is never freed (Linux 6.18, ``prog_array_map_clear``). This takes none."""
    return _exists(_sys.Cmd.MAP_GET_NEXT_ID, map_id)


def program_exists(prog_id: int) -> bool:
    """Whether a program with this id is alive, without opening it (BPF_PROG_GET_NEXT_ID)."""
    return _exists(_sys.Cmd.PROG_GET_NEXT_ID, prog_id)


def link_exists(link_id: int) -> bool:
    """Whether a link with this id is alive, without opening it (BPF_LINK_GET_NEXT_ID)."""
    return _exists(_sys.Cmd.LINK_GET_NEXT_ID, link_id)


_lazy.install(
    __name__,
    {
        "in_netns": "orchestrator.ebpf._netlink:in_netns",
        "cgroup_attached": "orchestrator.ebpf.link.cgroup:cgroup_attached",
        "iter_links": "orchestrator.ebpf.link.query:iter_links",
        "xdp_attached": "orchestrator.ebpf.link.xdp:xdp_attached",
        "xdp_mode": "orchestrator.ebpf.link.xdp:xdp_mode",
    },
)
