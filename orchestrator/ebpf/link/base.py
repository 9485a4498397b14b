"""A BPF link: the :class:`Link` handle (re-adopt, update, detach), and what the kernel
reports about a link (:class:`LinkInfo` and its target values)."""

from __future__ import annotations

import enum
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from orchestrator.ebpf import _sys
from orchestrator.ebpf._sys import FD, AttachType, Cmd, LinkType, PerfEventLinkType
from orchestrator.ebpf.errors import (
    AttachConflictError,
    AttachError,
    NotSupportedError,
    SyscallError,
)
from orchestrator.ebpf.handle import Handle

if TYPE_CHECKING:
    from orchestrator.ebpf.programs import Program


Direction = Literal["ingress", "egress"]
NetnsPath = str | os.PathLike[str] | None


# ---------------------------------------------------------------------------- info values


@dataclass(frozen=True, slots=True)
class XDPTarget:
    ifindex: int  # within the namespace the link was made in


@dataclass(frozen=True, slots=True)
class TCXTarget:
    ifindex: int
    attach_type: AttachType | int  # TCX_INGRESS or TCX_EGRESS

    @property
    def direction(self) -> Direction:
        return "ingress" if self.attach_type == AttachType.TCX_INGRESS else "egress"


@dataclass(frozen=True, slots=True)
class CgroupTarget:
    cgroup_id: int  # the inode number of the cgroup v2 directory
    attach_type: AttachType | int


@dataclass(frozen=True, slots=True)
class NetnsTarget:
    netns_ino: int  # the inode of /proc/PID/ns/net
    attach_type: AttachType | int


@dataclass(frozen=True, slots=True)
class RawTracepointTarget:
    name: str


@dataclass(frozen=True, slots=True)
class TracepointTarget:
    name: str  # the event name (the kernel does not report the group)


@dataclass(frozen=True, slots=True)
class UprobeTarget:
    path: str
    offset: int
    retprobe: bool


@dataclass(frozen=True, slots=True)
class PerfEventTarget:
    kind: PerfEventLinkType | int
    name: str = ""


@dataclass(frozen=True, slots=True)
class TracingTarget:
    attach_type: AttachType | int
    target_obj_id: int
    target_btf_id: int


@dataclass(frozen=True, slots=True)
class UnknownTarget:
    raw: bytes


LinkTarget = (
    XDPTarget
    | TCXTarget
    | CgroupTarget
    | NetnsTarget
    | RawTracepointTarget
    | TracepointTarget
    | UprobeTarget
    | PerfEventTarget
    | TracingTarget
    | UnknownTarget
)


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """What the kernel reports about a link (BPF_OBJ_GET_INFO_BY_FD)."""

    id: int
    type: LinkType | int
    program_id: int
    target: LinkTarget

    @property
    def type_name(self) -> str:
        return _type_name(self.type)

    @property
    def attached(self) -> bool:
        """False for a defunct link: detached with BPF_LINK_DETACH, or its interface,
        cgroup or namespace is gone (the kernel then reports a zero target)."""
        t = self.target
        if isinstance(t, XDPTarget | TCXTarget):
            return t.ifindex != 0
        if isinstance(t, CgroupTarget):
            return t.cgroup_id != 0
        if isinstance(t, NetnsTarget):
            return t.netns_ino != 0
        return True


def _type_name(t: LinkType | int) -> str:
    return t.name.lower() if isinstance(t, LinkType) else f"type {t}"


def _enum(kind: type[enum.IntEnum], value: int) -> int:
    try:
        return kind(value)
    except ValueError:
        return value


def _decode_info(raw: _sys.LinkInfo, name: str) -> LinkInfo:
    t = _enum(LinkType, raw.type)
    words = list(raw.union)

    def lo(i: int) -> int:
        return int(words[i]) & 0xFFFFFFFF

    def hi(i: int) -> int:
        return int(words[i]) >> 32

    target: LinkTarget
    if t == LinkType.XDP:
        target = XDPTarget(lo(0))
    elif t == LinkType.TCX:
        target = TCXTarget(lo(0), _enum(AttachType, hi(0)))
    elif t == LinkType.CGROUP:
        target = CgroupTarget(words[0], _enum(AttachType, lo(1)))
    elif t == LinkType.NETNS:
        target = NetnsTarget(lo(0), _enum(AttachType, hi(0)))
    elif t == LinkType.RAW_TRACEPOINT:
        target = RawTracepointTarget(name)
    elif t == LinkType.TRACING:
        target = TracingTarget(_enum(AttachType, lo(0)), hi(0), lo(1))
    elif t == LinkType.PERF_EVENT:
        kind = _enum(PerfEventLinkType, lo(0))
        if kind == PerfEventLinkType.TRACEPOINT:
            target = TracepointTarget(name)
        elif kind in (PerfEventLinkType.UPROBE, PerfEventLinkType.URETPROBE):
            target = UprobeTarget(name, hi(2), kind == PerfEventLinkType.URETPROBE)
        else:
            target = PerfEventTarget(kind, name)
    else:
        target = UnknownTarget(bytes(raw.union))
    return LinkInfo(id=raw.id, type=t, program_id=raw.prog_id, target=target)


# ---------------------------------------------------------------------------- Link

_UPDATABLE = frozenset({LinkType.XDP, LinkType.TCX, LinkType.CGROUP, LinkType.NETNS, LinkType.ITER})


class Link(Handle):
    """One BPF link, owned through one fd. ``close()`` (or ``with``) releases the fd; the
    kernel detaches the program when the last fd and pin are gone."""

    def __init__(self, fd: FD, *, id: int, type: LinkType | int, description: str = "") -> None:
        self._fd = fd
        self._id = id
        self._type = type
        self.description = description or f"link {id} ({_type_name(type)})"
        self._pinned: str | None = None

    _kind = "link"
    _by_id = Cmd.LINK_GET_FD_BY_ID

    @classmethod
    def _adopt(cls, fd: FD, name: str | None) -> Link:
        raw = _sys.link_info(fd)
        return cls(fd, id=raw.id, type=_enum(LinkType, raw.type), description=name or "")

    def _adopt_pin(self, path: str) -> None:
        self._pinned = path
        self.description = f"link {self.id} ({_type_name(self.type)}) pinned at {path}"

    # ------------------------------------------------------------------ basics

    def _what(self) -> str:
        return self.description

    @property
    def id(self) -> int:
        return self._id

    @property
    def type(self) -> LinkType | int:
        return self._type

    @property
    def program_id(self) -> int:
        """The id of the program the link runs now (changes with :meth:`update`)."""
        return int(_sys.link_info(self._fd).prog_id)

    def info(self) -> LinkInfo:
        raw, name = _sys.link_info_named(self._fd)
        return _decode_info(raw, name)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd.raw}"
        return f"Link({self._id}, {_type_name(self._type)}, {state})"

    # ------------------------------------------------------------------ pinning

    # ------------------------------------------------------------------ changes

    def update(self, new_prog: Program, old_prog: Program | None = None) -> None:
        """Switch the link to ``new_prog`` atomically (BPF_LINK_UPDATE): packets or events
        see either the old or the new program, never none. With ``old_prog``, only if that
        program is still the one attached (else :class:`AttachConflictError`).

        xdp, tcx, cgroup and netns links (Linux 5.7+; tcx 6.6). perf_event (tracepoint,
        uprobe) and raw_tracepoint links cannot be updated: :class:`NotSupportedError`.
        """
        if self._type not in _UPDATABLE:
            raise NotSupportedError(
                f"{self.description}: {_type_name(self._type)} links cannot be updated in "
                "place (attach the new program first, then close or unpin this link)"
            )
        try:
            _sys.link_update(self._fd, new_prog.fd, old_prog.fd if old_prog is not None else None)
        except SyscallError as err:
            if err.errno == errno.EPERM and old_prog is not None:
                raise AttachConflictError(
                    f"{self.description}: update: the attached program is not "
                    f"{old_prog.name} any more (someone else changed it)"
                ) from err
            hint = ""
            if err.errno == errno.EINVAL:
                hint = " (is the new program of the same type and attach type?)"
            elif err.errno == errno.ENOLINK:
                hint = " (the link was detached)"
            raise AttachError(
                f"{self.description}: update to {new_prog.name}: {err.detail}{hint}"
            ) from err

    def detach(self) -> None:
        """Detach the program now (BPF_LINK_DETACH), even while pins or other fds hold the
        link; the link object stays, defunct. xdp, tcx, cgroup, netns (Linux 5.9+);
        perf_event and raw_tracepoint links raise :class:`NotSupportedError`: unpin and
        close them instead."""
        try:
            _sys.link_detach(self._fd)
        except SyscallError as err:
            if err.errno in (errno.EOPNOTSUPP, _sys.ENOTSUPP):
                raise NotSupportedError(
                    f"{self.description}: {_type_name(self._type)} links cannot be detached "
                    "(unpin and close every fd of the link to release it)"
                ) from err
            raise AttachError(f"{self.description}: detach: {err.detail}") from err


def _make(what: str, create: Callable[[], FD]) -> Link:
    """Run ``create`` (which returns a new link fd) and wrap its errors."""
    try:
        fd = create()
    except SyscallError as err:
        raise AttachError(f"{what}: {err.detail}") from err
    return Link.from_fd(fd, what)
