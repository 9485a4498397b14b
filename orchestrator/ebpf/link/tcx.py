"""tcx (Linux 6.6): multi-program ingress/egress hooks of an interface, with ordering
anchors and an expected revision."""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Literal

from orchestrator.ebpf import _sys
from orchestrator.ebpf._netlink import in_netns
from orchestrator.ebpf._sys import AttachType
from orchestrator.ebpf.errors import (
    AttachConflictError,
    AttachError,
    SyscallError,
    TargetNotFoundError,
)
from orchestrator.ebpf.link.base import (
    Direction,
    Link,
    NetnsPath,
)
from orchestrator.ebpf.link.iface import _ifindex, _ifname, _where
from orchestrator.ebpf.link.query import HookState, _query
from orchestrator.ebpf.programs import Program


def _tcx_type(direction: Direction | AttachType) -> AttachType:
    if direction in ("ingress", AttachType.TCX_INGRESS):
        return AttachType.TCX_INGRESS
    if direction in ("egress", AttachType.TCX_EGRESS):
        return AttachType.TCX_EGRESS
    raise ValueError(f"tcx direction {direction!r}: expected 'ingress' or 'egress'")


@dataclass(frozen=True, slots=True)
class ProgramID:
    """A program by id, as an anchor for :func:`attach_tcx`."""

    id: int


@dataclass(frozen=True, slots=True)
class LinkID:
    """A link by id, as an anchor for :func:`attach_tcx`."""

    id: int


Anchor = Program | Link | ProgramID | LinkID | Literal["all"]


def _anchor(anchor: Anchor) -> tuple[int, int]:
    """(flags, relative fd or id) for an anchor."""
    if anchor == "all":
        return 0, 0
    if isinstance(anchor, Program):
        return 0, anchor.fd.raw
    if isinstance(anchor, Link):
        return _sys.BPF_F_LINK, anchor.fd.raw
    if isinstance(anchor, ProgramID):
        return _sys.BPF_F_ID, anchor.id
    if isinstance(anchor, LinkID):
        return _sys.BPF_F_ID | _sys.BPF_F_LINK, anchor.id
    raise TypeError(f"tcx anchor {anchor!r}: expected a Program, Link, ProgramID, LinkID or 'all'")


def attach_tcx(
    prog: Program,
    iface: int | str,
    direction: Direction | AttachType,
    *,
    before: Anchor | None = None,
    after: Anchor | None = None,
    expected_revision: int = 0,
    netns: NetnsPath = None,
) -> Link:
    """Attach a tc (sched_cls) program to an interface's ingress or egress with a tcx link.

    Programs at one hook run in order; by default the new one is appended. ``before=X`` /
    ``after=X`` place it next to a program or link (object or :class:`ProgramID` /
    :class:`LinkID`); ``before="all"`` makes it first, ``after="all"`` last.
    ``expected_revision`` (from :func:`tcx_attached`) makes the attach fail with
    :class:`AttachConflictError` if the hook changed meanwhile. Needs Linux 6.6.
    """
    attach_type = _tcx_type(direction)
    if before is not None and after is not None:
        raise ValueError("tcx: give before or after, not both")
    flags, relative = 0, 0
    if before is not None:
        flags, relative = _anchor(before)
        flags |= _sys.BPF_F_BEFORE
    elif after is not None:
        flags, relative = _anchor(after)
        flags |= _sys.BPF_F_AFTER
    dirname = "ingress" if attach_type == AttachType.TCX_INGRESS else "egress"
    index = _ifindex(iface, netns)
    try:
        with in_netns(netns):
            fd = _sys.link_create_tcx(
                prog.fd, index, attach_type, flags, relative, expected_revision
            )
    except SyscallError as err:
        what = f"tcx {dirname} {prog.name} on {_ifname(index, netns)}"
        if err.errno == errno.ENODEV:
            raise TargetNotFoundError(
                f"{what}: interface {index} not found{_where(netns)} (check `ip link`)"
            ) from err
        if err.errno == errno.ESTALE:
            raise AttachConflictError(
                f"{what}: the hook changed since revision {expected_revision} (query it again)"
            ) from err
        if err.errno == errno.ENOENT and (before is not None or after is not None):
            raise TargetNotFoundError(
                f"{what}: the anchor program or link is not attached there"
            ) from err
        if err.errno == errno.EEXIST:
            raise AttachConflictError(
                f"{what}: the program is already attached at this hook"
            ) from err
        raise AttachError(f"{what}: {err.detail}") from err
    return Link.from_fd(fd, f"tcx {dirname} link of {prog.name} on {iface}")


def tcx_attached(
    iface: int | str, direction: Direction | AttachType, netns: NetnsPath = None
) -> HookState:
    """The programs at a tcx hook in run order, with their link ids (BPF_PROG_QUERY). Needs
    Linux 6.6."""
    attach_type = _tcx_type(direction)
    index = _ifindex(iface, netns)
    try:
        with in_netns(netns):
            return _query(index, attach_type, f"tcx on {iface}")
    except AttachError as err:
        if isinstance(err.__cause__, SyscallError) and err.__cause__.errno == errno.ENODEV:
            raise TargetNotFoundError(
                f"interface {iface}: not found{_where(netns)} (check `ip link`)"
            ) from err.__cause__
        raise
