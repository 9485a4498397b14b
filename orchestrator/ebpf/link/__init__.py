"""Links: programs attached to the kernel's hooks, each owned through one BPF link fd.

Concepts follow the ``link`` package of cilium/ebpf. A :class:`Link` is what an ``attach_*``
function returns; closing its last fd (and having no pin) detaches the program. A link can be
pinned on bpffs so it outlives the process, re-adopted with :meth:`Link.from_pin` or
:meth:`Link.from_id`, switched to another program atomically with :meth:`Link.update` (the
hook is never empty), and detached explicitly with :meth:`Link.detach`.

Kernel requirements (the first kernel that has each):

============================  =====================================================  =====
attach function               mechanism                                              Linux
============================  =====================================================  =====
:func:`attach_xdp`            BPF_LINK_CREATE, attach type XDP                        5.9
:func:`attach_tcx`            BPF_LINK_CREATE, TCX_INGRESS/TCX_EGRESS                 6.6
:func:`attach_cgroup`         BPF_LINK_CREATE on a cgroup v2 directory fd             5.7
:func:`attach_netns`          BPF_LINK_CREATE on a netns fd (sk_lookup 5.9)           5.8
:func:`attach_tracepoint`     perf_event_open + BPF_LINK_CREATE (PERF_EVENT)          5.15
:func:`attach_uprobe`         uprobe PMU perf event + BPF_LINK_CREATE (PERF_EVENT)    5.15
:func:`attach_raw_tracepoint` BPF_RAW_TRACEPOINT_OPEN (raw_tp 4.17, tp_btf 5.5)       4.17
============================  =====================================================  =====

Link updates (BPF_LINK_UPDATE) exist for xdp, tcx, cgroup and netns links (and iterators);
perf_event and raw_tracepoint links cannot be updated: replace them make-before-break.

Links to an interface are made in the network namespace that owns the interface: pass
``netns=`` (a path such as ``/var/run/netns/NAME``) and the calling thread enters it for the
syscall only; the link stays attached to that interface after the thread went back.

Discovery for a reconciler: :func:`xdp_attached`, :func:`tcx_attached`,
:func:`cgroup_attached` report what is attached at a hook no matter who attached it (so a
plan can name a foreign owner), :func:`iter_links` lists every link in the kernel.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from orchestrator.ebpf import features as _features
from orchestrator.ebpf import netlink as _netlink
from orchestrator.ebpf import sys as _sys
from orchestrator.ebpf.errors import (
    AttachConflictError,
    AttachError,
    Error,
    NetlinkError,
    NotFoundError,
    NotSupportedError,
    PinError,
    SyscallError,
    TargetNotFoundError,
    clip,
)
from orchestrator.ebpf.files import open_file, read_text, reason, stat_regular
from orchestrator.ebpf.handle import Handle
from orchestrator.ebpf.netlink import in_netns
from orchestrator.ebpf.programs import Program
from orchestrator.ebpf.sys import FD, AttachType, Cmd, LinkType, PerfEventLinkType, ProgType

__all__ = [
    "Anchor",
    "AttachConflictError",
    "AttachError",
    "AttachedProgram",
    "CgroupTarget",
    "HookState",
    "Link",
    "LinkID",
    "LinkInfo",
    "LinkTarget",
    "NetnsTarget",
    "PerfEventTarget",
    "ProgramID",
    "RawTracepointTarget",
    "TCXTarget",
    "TargetNotFoundError",
    "TracepointTarget",
    "TracingTarget",
    "UnknownTarget",
    "UprobeTarget",
    "XDPAttachment",
    "XDPTarget",
    "attach_cgroup",
    "attach_fentry",
    "attach_kprobe",
    "attach_netns",
    "attach_raw_tracepoint",
    "attach_tcx",
    "attach_tracepoint",
    "attach_uprobe",
    "attach_xdp",
    "cgroup_attach_type",
    "cgroup_attached",
    "ifindex",
    "in_netns",
    "iter_links",
    "require_supported",
    "resolve_symbol",
    "set_xdp_netlink",
    "tcx_attached",
    "xdp_attached",
    "xdp_mode",
]

TRACEFS_ROOTS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
PMU_ROOT = _features.PMU_ROOT
CGROUP2_SUPER_MAGIC = 0x63677270

XDPMode = Literal["auto", "native", "generic"]
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


@dataclass(frozen=True, slots=True)
class XDPAttachment:
    """The XDP program on an interface, whoever attached it."""

    ifindex: int
    interface: str
    prog_id: int
    prog_name: str
    mode: Literal["native", "generic", "offload", "multi"]
    link_id: int | None  # None: attached through netlink (not a BPF link)


@dataclass(frozen=True, slots=True)
class AttachedProgram:
    """One program at a multi-program hook, in run order."""

    prog_id: int
    link_id: int | None  # None: attached with BPF_PROG_ATTACH (no link)


@dataclass(frozen=True, slots=True)
class HookState:
    """Everything attached at a tcx or cgroup hook; ``revision`` changes on every change
    (tcx only; 0 for cgroups) and can be passed to :func:`attach_tcx` as
    ``expected_revision`` to attach only if nothing changed since."""

    programs: tuple[AttachedProgram, ...]
    revision: int = 0

    @property
    def prog_ids(self) -> tuple[int, ...]:
        return tuple(p.prog_id for p in self.programs)

    @property
    def link_ids(self) -> tuple[int | None, ...]:
        return tuple(p.link_id for p in self.programs)


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

    @classmethod
    def from_fd(cls, fd: FD, description: str = "") -> Link:
        """Take ownership of ``fd`` (closed on error) after checking it is a link."""
        try:
            kind = _fd_kind(fd)
            if kind != "link":
                raise AttachError(f"fd {fd.raw}: not a link but a {kind}")
            raw = _sys.link_info(fd)
        except BaseException:
            fd.close()
            raise
        return cls(fd, id=raw.id, type=_enum(LinkType, raw.type), description=description)

    @classmethod
    def from_pin(cls, path: str | os.PathLike[str]) -> Link:
        """Re-adopt a pinned link (same id); the pin stays and is remembered for
        :meth:`unpin`."""
        p = os.fspath(path)
        try:
            fd = _sys.obj_get(p)
        except NotFoundError as err:
            raise err.replace(subject=f"link pin {p}", path=p, hint="no such pin") from err
        except SyscallError as err:
            raise PinError(f"link pin {p}: {err}") from err
        try:
            link = cls.from_fd(fd)
        except AttachError as err:
            raise PinError(f"link pin {p}: {err}") from err
        link._pinned = p
        link.description = f"link {link.id} ({_type_name(link.type)}) pinned at {p}"
        return link

    @classmethod
    def from_id(cls, link_id: int) -> Link:
        """A new fd for the link with this id (needs CAP_SYS_ADMIN)."""
        try:
            fd = _sys.fd_by_id(Cmd.LINK_GET_FD_BY_ID, link_id)
        except NotFoundError as err:
            raise err.replace(subject=f"link {link_id}", action="", detail="no such link") from err
        return cls.from_fd(fd)

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
    def pinned(self) -> str | None:
        return self._pinned

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


def _fd_kind(fd: FD) -> str:
    try:
        with open(f"/proc/self/fdinfo/{fd.raw}") as f:
            text = f.read()
    except OSError:
        return "unknown"
    if "link_id:" in text or "link_type:" in text:
        return "link"
    if "prog_type:" in text:
        return "program"
    if "map_type:" in text:
        return "map"
    return "file"


def _make(what: str, create: Callable[[], FD]) -> Link:
    """Run ``create`` (which returns a new link fd) and wrap its errors."""
    try:
        fd = create()
    except SyscallError as err:
        raise AttachError(f"{what}: {err.detail}") from err
    return Link.from_fd(fd, description=what)


# ---------------------------------------------------------------------------- namespaces


def _where(netns: NetnsPath) -> str:
    return f" in netns {os.fspath(netns)}" if netns is not None else ""


def ifindex(name: str, netns: NetnsPath = None) -> int:
    """The index of interface ``name`` in the namespace at ``netns`` (the caller's if None)."""
    import socket

    with in_netns(netns):
        try:
            return socket.if_nametoindex(name)
        except OSError as err:
            raise TargetNotFoundError(
                f"interface {name}: not found{_where(netns)} (check `ip link`)"
            ) from err


def _ifindex(iface: int | str, netns: NetnsPath) -> int:
    return ifindex(iface, netns) if isinstance(iface, str) else iface


def _if_exists(index: int, netns: NetnsPath) -> bool:
    try:
        _netlink.query_link(index, netns)
    except NetlinkError as err:
        return err.errno != errno.ENODEV
    return True


def _ifname(index: int, netns: NetnsPath) -> str:
    try:
        return _netlink.query_link(index, netns).name or f"ifindex {index}"
    except (NetlinkError, OSError):
        return f"ifindex {index}"


# ---------------------------------------------------------------------------- xdp

_XDP_FLAGS = {
    "auto": _sys.XDPFlags.NONE,
    "native": _sys.XDPFlags.DRV_MODE,
    "generic": _sys.XDPFlags.SKB_MODE,
}


def attach_xdp(
    prog: Program, iface: int | str, mode: XDPMode = "auto", *, netns: NetnsPath = None
) -> Link:
    """Attach an XDP program to an interface (by index or name) with a BPF link.

    ``mode``: "native" (in the driver), "generic" (skb), or "auto" (native where the driver
    supports it). Needs Linux 5.9 and CAP_NET_ADMIN. If any XDP program is already on the
    interface (by netlink or by another link) the kernel says EBUSY and this raises
    :class:`AttachConflictError` naming it."""
    if mode not in _XDP_FLAGS:
        raise ValueError(f"xdp mode {mode!r}: expected one of {', '.join(_XDP_FLAGS)}")
    index = _ifindex(iface, netns)
    attr = _sys.LinkCreateAttr(
        prog_fd=prog.fd.raw,
        target_fd=index,
        attach_type=AttachType.XDP,
        flags=int(_XDP_FLAGS[mode]),
    )
    try:
        with in_netns(netns):
            fd = _sys.link_create(attr)
    except SyscallError as err:
        raise _xdp_error(prog, index, mode, err, netns) from err
    return Link.from_fd(fd, description=f"xdp link of {prog.name} on {iface}")


def _xdp_error(prog: Program, index: int, mode: str, err: SyscallError, netns: NetnsPath) -> Error:
    name = _ifname(index, netns)
    what = f"xdp {prog.name} on {name}"
    if err.errno in (errno.ENODEV, errno.EINVAL) and not _if_exists(index, netns):
        # the kernel says EINVAL for an unknown ifindex (bpf_xdp_link_attach)
        return TargetNotFoundError(
            f"{what}: interface {index} not found{_where(netns)} (check `ip link`)"
        )
    if err.errno in (errno.EBUSY, errno.EEXIST):
        current = xdp_attached(index, netns)
        if current is not None:
            owner = (
                f"by link {current.link_id}" if current.link_id is not None else "through netlink"
            )
            return AttachConflictError(
                f"interface {name} already has XDP program {current.prog_id} "
                f"({current.prog_name}) attached by someone else ({owner}; "
                "detach it first or take it over explicitly)",
                prog_id=current.prog_id,
                prog_name=current.prog_name,
                link_id=current.link_id or 0,
            )
    if err.errno in (errno.EOPNOTSUPP, _sys.ENOTSUPP) and mode == "native":
        return NotSupportedError(f"{what}: the driver has no native XDP (use mode generic)")
    hint = ""
    if err.errno == errno.EINVAL:
        hint = " (is it an XDP program? mixing modes on one interface is refused)"
    return AttachError(f"{what}: {err.detail}{hint}")


def _prog_name(prog_id: int) -> str:
    try:
        fd = _sys.fd_by_id(Cmd.PROG_GET_FD_BY_ID, prog_id)
    except SyscallError:
        return "?"
    with fd:
        return str(_sys.prog_info(fd).name.decode("utf-8", "replace"))


def xdp_attached(iface: int | str, netns: NetnsPath = None) -> XDPAttachment | None:
    """The XDP program on an interface, whoever attached it (rtnetlink RTM_GETLINK
    IFLA_XDP), and the id of the BPF link that holds it, if a link does (found by iterating
    links: an xdp link with that ifindex and program). The kernel reports no namespace for
    xdp links, so if the same program is attached by links to interfaces with the same index
    in two namespaces, the first such link is named. Needs CAP_NET_ADMIN, CAP_SYS_ADMIN."""
    index = _ifindex(iface, netns)
    try:
        state = _netlink.query_link(index, netns)
    except NetlinkError as err:
        if err.errno == errno.ENODEV:
            raise TargetNotFoundError(
                f"interface {iface}: not found{_where(netns)} (check `ip link`)"
            ) from err
        raise AttachError(f"interface {iface}: {err}") from err
    xdp = state.xdp
    if xdp.mode == _netlink.XDPMode.NONE:
        return None
    prog_id = xdp.prog_id or xdp.drv_prog_id or xdp.skb_prog_id or xdp.hw_prog_id
    mode: Literal["native", "generic", "offload", "multi"] = {
        _netlink.XDPMode.DRV: "native",
        _netlink.XDPMode.SKB: "generic",
        _netlink.XDPMode.HW: "offload",
    }.get(xdp.mode, "multi")  # type: ignore[assignment]
    link_id = None
    for info in iter_links(LinkType.XDP):
        target = info.target
        if isinstance(target, XDPTarget) and target.ifindex == index and info.program_id == prog_id:
            link_id = info.id
            break
    return XDPAttachment(
        ifindex=index,
        interface=state.name,
        prog_id=prog_id,
        prog_name=_prog_name(prog_id),
        mode=mode,
        link_id=link_id,
    )


def xdp_mode(iface: int | str, prog_id: int, netns: NetnsPath = None) -> str | None:
    """The mode ("native", "generic" or "offload") in which program ``prog_id`` runs as XDP
    on the interface, or None if it does not run there (rtnetlink ``IFLA_XDP``: a BPF link
    reports no mode of its own). Needs CAP_NET_ADMIN (and CAP_SYS_ADMIN with ``netns``)."""
    index = _ifindex(iface, netns)
    try:
        state = _netlink.query_link(index, netns)
    except NetlinkError as err:
        if err.errno == errno.ENODEV:
            raise TargetNotFoundError(
                f"interface {iface}: not found{_where(netns)} (check `ip link`)"
            ) from err
        raise AttachError(f"interface {iface}: {err}") from err
    x = state.xdp
    for mode, attached in (
        ("native", x.drv_prog_id),
        ("generic", x.skb_prog_id),
        ("offload", x.hw_prog_id),
    ):
        if attached == prog_id:
            return mode
    if x.prog_id == prog_id and x.mode in (_netlink.XDPMode.DRV, _netlink.XDPMode.SKB):
        return "native" if x.mode == _netlink.XDPMode.DRV else "generic"
    return None


_NETLINK_XDP_MODES = {
    "auto": _sys.XDPFlags.NONE,
    "native": _sys.XDPFlags.DRV_MODE,
    "generic": _sys.XDPFlags.SKB_MODE,
    "offload": _sys.XDPFlags.HW_MODE,
}
_RTM_SETLINK = 19  # linux/rtnetlink.h
_IFLA_XDP_EXPECTED_FD = 8  # linux/if_link.h
_NLA_F_NESTED = 1 << 15


def set_xdp_netlink(
    iface: int | str,
    prog: Program | None,
    mode: str = "auto",
    *,
    expected: Program | None = None,
    netns: NetnsPath = None,
) -> None:
    """Attach (``prog``) or detach (None) an XDP program the old way, through rtnetlink
    (``RTM_SETLINK`` with the ``IFLA_XDP`` nest, what ``ip link set dev X xdp …`` does): no
    BPF link holds it. bpforch itself attaches with links; this exists to take over and to
    restore programs that other tools attached this way.

    ``mode`` must be the mode the program is (to be) attached in (a generic program is only
    detached with "generic"). With ``expected`` the kernel changes the interface only if that
    program is attached there now (``XDP_FLAGS_REPLACE`` + ``IFLA_XDP_EXPECTED_FD``, Linux
    5.7; else EEXIST), so a program attached in between is never removed. Without it, an
    attach is refused if any program is there (``XDP_FLAGS_UPDATE_IF_NOEXIST``). A BPF link
    cannot replace a program attached this way (the kernel says EBUSY): taking one over is
    detach-then-attach. Needs CAP_NET_ADMIN (and CAP_SYS_ADMIN with ``netns``)."""
    import socket
    import struct

    if mode not in _NETLINK_XDP_MODES:
        raise ValueError(f"xdp mode {mode!r}: expected one of {', '.join(_NETLINK_XDP_MODES)}")
    index = _ifindex(iface, netns)
    flags = _NETLINK_XDP_MODES[mode]
    flags |= _sys.XDPFlags.REPLACE if expected is not None else _sys.XDPFlags.UPDATE_IF_NOEXIST
    attrs = struct.pack("=HHi", 8, _netlink.IFLA_XDP_FD, prog.fd.raw if prog is not None else -1)
    attrs += struct.pack("=HHI", 8, _netlink.IFLA_XDP_FLAGS, int(flags))
    if expected is not None:
        attrs += struct.pack("=HHi", 8, _IFLA_XDP_EXPECTED_FD, expected.fd.raw)
    nest = struct.pack("=HH", 4 + len(attrs), _netlink.IFLA_XDP | _NLA_F_NESTED) + attrs
    payload = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, 0, 0) + nest
    what = (
        f"xdp {prog.name} on {_ifname(index, netns)} (netlink)"
        if prog is not None
        else f"xdp detach on {_ifname(index, netns)} (netlink)"
    )
    try:
        with in_netns(netns):
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        with sock:
            sock.bind((0, 0))
            _netlink._request(
                sock, _RTM_SETLINK, _netlink.NLM_F_REQUEST | _netlink.NLM_F_ACK, payload
            )
    except NetlinkError as err:
        if err.errno == errno.EEXIST and expected is not None:
            raise AttachConflictError(
                f"{what}: program {expected.id} ({expected.name}) is not attached there in "
                f"{mode} mode (any more: someone changed the interface)"
            ) from err
        if err.errno in (errno.EEXIST, errno.EBUSY):
            raise AttachConflictError(
                f"{what}: another XDP program or link is attached (check `ip link show`)"
            ) from err
        raise AttachError(f"{what}: {err}") from err


# ---------------------------------------------------------------------------- tcx


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
    return Link.from_fd(fd, description=f"tcx {dirname} link of {prog.name} on {iface}")


def _query(target_fd: int, attach_type: AttachType, what: str) -> HookState:
    try:
        prog_ids, link_ids, revision = _sys.prog_query(target_fd, attach_type)
    except SyscallError as err:
        raise AttachError(f"{what}: query: {err.detail}") from err
    return HookState(
        programs=tuple(
            AttachedProgram(p, k or None) for p, k in zip(prog_ids, link_ids, strict=True)
        ),
        revision=revision,
    )


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


# ---------------------------------------------------------------------------- cgroups

_CGROUP_TYPES: dict[str, AttachType] = {
    "ingress": AttachType.CGROUP_INET_INGRESS,
    "egress": AttachType.CGROUP_INET_EGRESS,
    "sock_create": AttachType.CGROUP_INET_SOCK_CREATE,
    "sock_release": AttachType.CGROUP_INET_SOCK_RELEASE,
    "sock_ops": AttachType.CGROUP_SOCK_OPS,
    "device": AttachType.CGROUP_DEVICE,
    "bind4": AttachType.CGROUP_INET4_BIND,
    "bind6": AttachType.CGROUP_INET6_BIND,
    "post_bind4": AttachType.CGROUP_INET4_POST_BIND,
    "post_bind6": AttachType.CGROUP_INET6_POST_BIND,
    "connect4": AttachType.CGROUP_INET4_CONNECT,
    "connect6": AttachType.CGROUP_INET6_CONNECT,
    "sendmsg4": AttachType.CGROUP_UDP4_SENDMSG,
    "sendmsg6": AttachType.CGROUP_UDP6_SENDMSG,
    "recvmsg4": AttachType.CGROUP_UDP4_RECVMSG,
    "recvmsg6": AttachType.CGROUP_UDP6_RECVMSG,
    "getpeername4": AttachType.CGROUP_INET4_GETPEERNAME,
    "getpeername6": AttachType.CGROUP_INET6_GETPEERNAME,
    "getsockname4": AttachType.CGROUP_INET4_GETSOCKNAME,
    "getsockname6": AttachType.CGROUP_INET6_GETSOCKNAME,
    "sysctl": AttachType.CGROUP_SYSCTL,
    "getsockopt": AttachType.CGROUP_GETSOCKOPT,
    "setsockopt": AttachType.CGROUP_SETSOCKOPT,
}


def cgroup_attach_type(name: str | AttachType) -> AttachType:
    """The attach type for a cgroup hook name ("ingress", "egress", "sock_create",
    "connect4" …, as in section names without the ``cgroup/`` prefix)."""
    if isinstance(name, AttachType):
        return name
    key = name.removeprefix("cgroup_skb/").removeprefix("cgroup/").replace("inet_", "")
    try:
        return _CGROUP_TYPES[key]
    except KeyError:
        raise ValueError(
            f"cgroup attach type {name!r}: expected one of {', '.join(_CGROUP_TYPES)}"
        ) from None


@contextlib.contextmanager
def _cgroup_fd(path: str | os.PathLike[str]) -> Iterator[int]:
    p = os.fspath(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError as err:
        raise TargetNotFoundError(
            f"cgroup {p}: no such directory (cgroup v2 is usually at /sys/fs/cgroup or "
            "/sys/fs/cgroup/unified)"
        ) from err
    except OSError as err:
        raise AttachError(f"cgroup {p}: {(err.strerror or str(err)).lower()}") from err
    try:
        if _sys.fs_magic(p) != CGROUP2_SUPER_MAGIC:
            raise AttachError(f"cgroup {p}: not a cgroup v2 directory (mount -t cgroup2)")
        yield fd
    finally:
        os.close(fd)


def attach_cgroup(
    prog: Program, cgroup_path: str | os.PathLike[str], attach_type: str | AttachType
) -> Link:
    """Attach a cgroup program (cgroup_skb, cgroup/sock, connect4 …) to a cgroup v2
    directory with a link, in multi-program mode: other programs at the hook keep running.
    Needs Linux 5.7 and CAP_NET_ADMIN (CAP_SYS_ADMIN for some hooks)."""
    at = cgroup_attach_type(attach_type)
    what = f"cgroup {at.name.lower()} link of {prog.name} on {os.fspath(cgroup_path)}"
    with _cgroup_fd(cgroup_path) as cg:
        attr = _sys.LinkCreateAttr(prog_fd=prog.fd.raw, target_fd=cg, attach_type=at)
        try:
            fd = _sys.link_create(attr)
        except SyscallError as err:
            if err.errno == errno.EPERM:
                # a program attached exclusively (BPF_PROG_ATTACH without ALLOW_MULTI) refuses
                # every other attachment at the hook
                state = _query(cg, at, what)
                if state.programs:
                    first = state.programs[0].prog_id
                    raise AttachConflictError(
                        f"{what}: the hook is held by program {first} ({_prog_name(first)}) "
                        "attached exclusively by someone else",
                        prog_id=first,
                        prog_name=_prog_name(first),
                    ) from err
            hint = " (does the program type match the attach type?)" if err.errno == 22 else ""
            raise AttachError(f"{what}: {err.detail}{hint}") from err
    return Link.from_fd(fd, description=what)


def cgroup_attached(path: str | os.PathLike[str], attach_type: str | AttachType) -> HookState:
    """The programs attached directly to a cgroup hook (not inherited ones), with the ids
    of the links that hold them (the kernel's query, completed from the list of links where
    it does not report link ids)."""
    at = cgroup_attach_type(attach_type)
    with _cgroup_fd(path) as cg:
        state = _query(cg, at, f"cgroup {os.fspath(path)}")
    if all(p.link_id is not None for p in state.programs):
        return state
    cgroup_id = os.stat(os.fspath(path)).st_ino
    by_prog: dict[int, list[int]] = {}
    for info in iter_links(LinkType.CGROUP):
        t = info.target
        if isinstance(t, CgroupTarget) and t.cgroup_id == cgroup_id and t.attach_type == at:
            by_prog.setdefault(info.program_id, []).append(info.id)
    programs = []
    for p in state.programs:
        ids = by_prog.get(p.prog_id, [])
        programs.append(AttachedProgram(p.prog_id, p.link_id or (ids.pop(0) if ids else None)))
    return HookState(tuple(programs), state.revision)


# ---------------------------------------------------------------------------- netns


def attach_netns(prog: Program, netns: NetnsPath, attach_type: str | AttachType) -> Link:
    """Attach an sk_lookup or flow_dissector program to a network namespace (``None``: the
    calling thread's) with a netns link. ``attach_type``: "sk_lookup" / "flow_dissector" or
    the AttachType. Needs Linux 5.8 (flow_dissector), 5.9 (sk_lookup)."""
    at: AttachType
    if isinstance(attach_type, AttachType):
        at = attach_type
    elif attach_type in ("sk_lookup", "flow_dissector"):
        at = AttachType[attach_type.upper()]
    else:
        raise ValueError(f"netns attach type {attach_type!r}: expected sk_lookup/flow_dissector")
    p = os.fspath(netns) if netns is not None else "/proc/thread-self/ns/net"
    what = f"netns {at.name.lower()} link of {prog.name} on {p}"
    try:
        nsfd = _netlink.open_netns(p)
    except FileNotFoundError as err:
        raise TargetNotFoundError(
            f"{what}: no such namespace (a path like /var/run/netns/NAME)"
        ) from err
    except OSError as err:
        raise AttachError(f"{what}: {reason(err)} (not a network namespace)") from err
    try:
        attr = _sys.LinkCreateAttr(prog_fd=prog.fd.raw, target_fd=nsfd, attach_type=at)
        try:
            fd = _sys.link_create(attr)
        except SyscallError as err:
            if err.errno in (errno.EEXIST, errno.E2BIG):
                # E2BIG: the hook is full (a flow dissector hook holds one program, sk_lookup
                # 64); EEXIST: a program is attached there without a link
                raise AttachConflictError(
                    f"{what}: the namespace already has a {at.name.lower()} program "
                    "(a flow dissector hook holds one; sk_lookup up to 64)"
                ) from err
            hint = " (is it a netns file?)" if err.errno == errno.EINVAL else ""
            raise AttachError(f"{what}: {err.detail}{hint}") from err
    finally:
        os.close(nsfd)
    return Link.from_fd(fd, description=what)


# ---------------------------------------------------------------------------- tracing


def _tracefs() -> Path:
    for root in TRACEFS_ROOTS:
        if (root / "events").is_dir():
            return root
    raise NotSupportedError("tracefs is not mounted (mount -t tracefs tracefs /sys/kernel/tracing)")


def _perf_link(prog: Program, perf: FD, what: str) -> Link:
    """A perf_event link on ``perf``; the link holds its own reference to the perf event,
    so ``perf`` is closed here on every path: the link alone owns the event's lifetime."""
    with perf:
        try:
            fd = _sys.link_create_perf_event(prog.fd, perf)
        except SyscallError as err:
            hint = ""
            if err.errno == errno.EINVAL:
                hint = " (does the program type match the event?)"
            elif err.errno == errno.EEXIST:
                hint = " (the program is already attached to this event)"
            raise AttachError(f"{what}: {err.detail}{hint}") from err
    return Link.from_fd(fd, description=what)


def attach_tracepoint(prog: Program, group: str, name: str) -> Link:
    """Attach a tracepoint program to ``group/name`` (e.g. syscalls/sys_enter_getppid):
    perf_event_open on the tracepoint id from tracefs, then a perf_event link. Needs tracefs
    mounted, CAP_PERFMON (or CAP_SYS_ADMIN) and Linux 5.15 (perf links). The program runs for
    every CPU and process."""
    what = f"tracepoint {group}/{name} of {prog.name}"
    if "/" in group or "/" in name or group in ("", ".", "..") or name in ("", ".", ".."):
        raise ValueError(f"{what}: group and name must be plain names")
    id_file = _tracefs() / "events" / group / name / "id"
    try:
        tp_id = int(read_text(id_file, limit=4096))
    except FileNotFoundError as err:
        raise TargetNotFoundError(
            f"{what}: no such tracepoint ({id_file} is missing; see "
            f"{id_file.parents[2] / 'available_events'})"
        ) from err
    attr = _sys.PerfEventAttr(
        type=_sys.PERF_TYPE_TRACEPOINT, config=tp_id, sample_period=1, wakeup_events=1
    )
    try:
        perf = _sys.perf_event_open(attr, pid=-1, cpu=0)
    except SyscallError as err:
        raise AttachError(f"{what}: {err.detail}") from err
    return _perf_link(prog, perf, what)


def attach_raw_tracepoint(prog: Program, name: str | None = None) -> Link:
    """Attach a raw_tp program to raw tracepoint ``name`` (e.g. "sys_enter"), or a tp_btf
    program (``name`` None: its target came from BTF at load time), with
    BPF_RAW_TRACEPOINT_OPEN. Needs Linux 4.17 (raw_tp), 5.5 (tp_btf), CAP_PERFMON."""
    what = f"raw tracepoint {name or '(btf)'} of {prog.name}"
    if name is None and prog.type in (ProgType.RAW_TRACEPOINT, ProgType.RAW_TRACEPOINT_WRITABLE):
        raise AttachError(f"{what}: raw_tp programs need a name (e.g. sys_enter)")
    try:
        fd = _sys.raw_tracepoint_open(prog.fd, name)
    except SyscallError as err:
        if err.errno == errno.ENOENT:
            raise TargetNotFoundError(
                f"{what}: no such raw tracepoint (names are those of the kernel's "
                "tracepoints without the group, e.g. sys_enter)"
            ) from err
        hint = ""
        if err.errno == errno.EINVAL:
            hint = " (raw_tp programs need a name; tp_btf programs must not get one)"
        raise AttachError(f"{what}: {err.detail}{hint}") from err
    return Link.from_fd(fd, description=what)


def _pmu(kind: str) -> tuple[int, dict[str, str]]:
    """The type number of a dynamic PMU and its format fields (name -> "config:0")."""
    base = PMU_ROOT / kind
    try:
        pmu_type = int(read_text(base / "type", limit=4096))
    except FileNotFoundError as err:
        raise NotSupportedError(
            f"{kind}: no {kind} PMU in {PMU_ROOT} (kernel built without)"
        ) from err
    fields: dict[str, str] = {}
    fmt = base / "format"
    if fmt.is_dir():
        for entry in fmt.iterdir():
            fields[entry.name] = read_text(entry, limit=4096).strip()
    return pmu_type, fields


def _format_bit(spec: str, what: str) -> int:
    # "config:0" -> bit 0 of config
    field, _, bits = spec.partition(":")
    if field != "config" or not bits.isdigit():
        raise NotSupportedError(f"{what}: unexpected PMU format {spec!r}")
    return int(bits)


def resolve_symbol(path: str | os.PathLike[str], symbol: str) -> int:
    """The file offset of function ``symbol`` in the ELF file at ``path`` (from .symtab,
    else .dynsym): its address translated through the PT_LOAD segment that holds it."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    p = os.fspath(path)
    try:
        f = open_file(p)  # a regular file, opened without blocking
    except FileNotFoundError as err:
        raise TargetNotFoundError(f"uprobe {p}: no such file") from err
    except OSError as err:
        raise AttachError(f"uprobe {p}: {reason(err)}") from err
    with f:
        try:
            elf = ELFFile(f)
            address = None
            for section_name in (".symtab", ".dynsym"):
                section = elf.get_section_by_name(section_name)
                if section is None or not hasattr(section, "get_symbol_by_name"):
                    continue
                for sym in section.get_symbol_by_name(symbol) or []:
                    if sym["st_info"]["type"] in ("STT_FUNC", "STT_GNU_IFUNC") and sym["st_value"]:
                        address = int(sym["st_value"])
                        break
                if address is not None:
                    break
            if address is None:
                raise TargetNotFoundError(
                    f"uprobe {p}: symbol {symbol} not found in .symtab/.dynsym "
                    "(is the binary stripped? give an offset instead)"
                )
            for seg in elf.iter_segments():
                if seg["p_type"] != "PT_LOAD":
                    continue
                start = int(seg["p_vaddr"])
                if start <= address < start + int(seg["p_memsz"]):
                    return address - start + int(seg["p_offset"])
        except (ELFError, EOFError, struct.error, ValueError) as err:
            raise AttachError(f"uprobe {p}: not an ELF file: {clip(str(err))}") from err
        except OSError as err:  # FileError: it turned into a stream since it was opened
            raise AttachError(f"uprobe {p}: {reason(err)}") from err
    raise AttachError(f"uprobe {p}: symbol {symbol} at {address:#x} is in no loadable segment")


def attach_uprobe(
    prog: Program,
    path: str | os.PathLike[str],
    symbol: str | None = None,
    offset: int = 0,
    *,
    retprobe: bool = False,
    pid: int | None = None,
) -> Link:
    """Attach a kprobe-type program as a uprobe (or uretprobe) on a function of an ELF file:
    at ``symbol`` (+ ``offset``), or at file ``offset`` when no symbol is given. Uses the
    uprobe PMU (``/sys/bus/event_source/devices/uprobe``) and a perf_event link; ``pid``
    limits it to one process (default: every process). Needs Linux 5.15 and CAP_PERFMON
    (or CAP_SYS_ADMIN)."""
    p = os.path.realpath(os.fspath(path))
    what = f"uprobe {p}:{symbol or hex(offset)} of {prog.name}"
    if retprobe:
        what = "uret" + what[1:]
    try:
        stat_regular(p)  # the kernel refuses anything else, with a bare EINVAL
    except FileNotFoundError as err:
        raise TargetNotFoundError(f"{what}: no such file") from err
    except OSError as err:
        raise AttachError(f"{what}: {reason(err)}") from err
    file_offset = offset
    if symbol is not None:
        file_offset = resolve_symbol(p, symbol) + offset
    pmu_type, fields = _pmu("uprobe")
    config = 0
    if retprobe:
        if "retprobe" not in fields:
            raise NotSupportedError(f"{what}: the uprobe PMU has no retprobe format bit")
        config |= 1 << _format_bit(fields["retprobe"], what)
    path_buf = ctypes.create_string_buffer(os.fsencode(p) + b"\0")
    attr = _sys.PerfEventAttr(
        type=pmu_type,
        config=config,
        config1=ctypes.addressof(path_buf),
        config2=file_offset,
        sample_period=1,
        wakeup_events=1,
    )
    try:
        perf = _sys.perf_event_open(
            attr, pid=pid if pid is not None else -1, cpu=0 if pid is None else -1
        )
    except SyscallError as err:
        if err.errno == errno.ESRCH:
            raise TargetNotFoundError(f"{what}: no process {pid}") from err
        raise AttachError(f"{what}: {err.detail}") from err
    return _perf_link(prog, perf, what)


# ---------------------------------------------------------------------------- unsupported

# kind -> (program type, attach type) of the programs such attachments need
_TRAMPOLINE_KINDS: dict[str, tuple[ProgType, AttachType | None]] = {
    "fentry": (ProgType.TRACING, AttachType.TRACE_FENTRY),
    "fexit": (ProgType.TRACING, AttachType.TRACE_FEXIT),
    "fmod_ret": (ProgType.TRACING, AttachType.MODIFY_RETURN),
    "lsm": (ProgType.LSM, AttachType.LSM_MAC),
    "freplace": (ProgType.EXT, None),
}


def _unsupported_reason(kind: str) -> str | None:
    """Why attachments of ``kind`` cannot work here (None: they can), from the kernel
    feature probes (:mod:`orchestrator.ebpf.features`, each run once per process)."""
    if kind in ("kprobe", "kretprobe"):
        support = _features.kprobe_pmu()
    elif kind in _TRAMPOLINE_KINDS:
        support = _features.program_support(*_TRAMPOLINE_KINDS[kind])
    else:
        raise ValueError(f"unknown attachment kind {kind!r}")
    return None if support.ok else support.reason


def require_supported(kind: str) -> None:
    """Raise :class:`NotSupportedError` if attachments of ``kind`` ("kprobe", "kretprobe",
    "fentry", "fexit", "fmod_ret", "lsm", "freplace") cannot work on this kernel; for a plan
    to refuse them before loading anything."""
    reason = _unsupported_reason(kind)
    if reason is not None:
        raise NotSupportedError(f"{kind} attachments are not supported on this kernel: {reason}")


def attach_kprobe(prog: Program, symbol: str, *, retprobe: bool = False) -> Link:
    """kprobe/kretprobe attachments: not implemented, because they cannot be tested here.
    Raises :class:`NotSupportedError` naming the kernel's reason when kprobes are compiled
    out (no kprobe PMU), and a not-implemented one otherwise."""
    kind = "kretprobe" if retprobe else "kprobe"
    reason = _unsupported_reason(kind)
    if reason is not None:
        raise NotSupportedError(f"{kind} {symbol} of {prog.name}: not supported: {reason}")
    raise NotSupportedError(
        f"{kind} {symbol} of {prog.name}: kprobe links are not implemented by bpforch yet"
    )


def attach_fentry(prog: Program) -> Link:
    """fentry/fexit/fmod_ret/lsm attachments (BPF_LINK_CREATE of a tracing link). Raises
    :class:`NotSupportedError` up front where the kernel refuses those program types."""
    reason = _unsupported_reason("fentry")
    if reason is not None:
        raise NotSupportedError(f"fentry/fexit {prog.name}: not supported: {reason}")
    if prog.type not in (ProgType.TRACING, ProgType.LSM, ProgType.EXT):
        raise AttachError(f"fentry/fexit {prog.name}: not a tracing program ({prog.type})")
    attach_type = prog.attach_type or AttachType.TRACE_FENTRY
    attr = _sys.LinkCreateAttr(prog_fd=prog.fd.raw, attach_type=attach_type)
    return _make(f"{attach_type.name.lower()} of {prog.name}", lambda: _sys.link_create(attr))


# ---------------------------------------------------------------------------- discovery


def iter_links(link_type: LinkType | None = None) -> Iterator[LinkInfo]:
    """Every link in the kernel (BPF_LINK_GET_NEXT_ID), optionally of one type, as
    :class:`LinkInfo` values (no fd stays open). Links that vanish meanwhile are skipped.
    Needs CAP_SYS_ADMIN."""
    for link_id in _sys.iter_ids(Cmd.LINK_GET_NEXT_ID):
        try:
            fd = _sys.fd_by_id(Cmd.LINK_GET_FD_BY_ID, link_id)
        except SyscallError:
            continue  # gone since we saw its id
        with fd:
            try:
                if link_type is not None and _sys.link_info(fd).type != link_type:
                    continue
                raw, name = _sys.link_info_named(fd)
            except SyscallError:
                continue
        yield _decode_info(raw, name)
