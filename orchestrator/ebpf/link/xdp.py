"""XDP: attach with a BPF link (or, for a foreign program, replace through netlink), and
report what is attached to an interface and in which mode."""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from orchestrator.ebpf import _netlink, _sys
from orchestrator.ebpf._netlink import in_netns
from orchestrator.ebpf._sys import AttachType, LinkType
from orchestrator.ebpf.errors import (
    AttachConflictError,
    AttachError,
    Error,
    NetlinkError,
    NotSupportedError,
    SyscallError,
    TargetNotFoundError,
)
from orchestrator.ebpf.link.base import (
    Link,
    NetnsPath,
    XDPTarget,
)
from orchestrator.ebpf.link.iface import _if_exists, _ifindex, _ifname, _where
from orchestrator.ebpf.link.query import _prog_name, iter_links

if TYPE_CHECKING:
    from orchestrator.ebpf.programs import Program

XDPMode = Literal["auto", "native", "generic"]


@dataclass(frozen=True, slots=True)
class XDPAttachment:
    """The XDP program on an interface, whoever attached it."""

    ifindex: int
    interface: str
    prog_id: int
    prog_name: str
    mode: Literal["native", "generic", "offload", "multi"]
    link_id: int | None  # None: attached through netlink (not a BPF link)


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
    :class:`AttachConflictError` naming it; one whose ``prog_id`` is 0 says the interface
    was free again by the time it was asked (a link the kernel was still releasing): retry."""
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
    return Link.from_fd(fd, f"xdp link of {prog.name} on {iface}")


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
        if err.errno == errno.EBUSY:
            # busy when the link was made, free now: the holder was a link the kernel
            # releases in deferred work (its last pin just removed); a retry succeeds
            return AttachConflictError(
                f"interface {name} was busy: an XDP program held it when the link was made "
                "and none does now (a link being released); try again"
            )
    if err.errno in (errno.EOPNOTSUPP, _sys.ENOTSUPP) and mode == "native":
        return NotSupportedError(f"{what}: the driver has no native XDP (use mode generic)")
    hint = ""
    if err.errno == errno.EINVAL:
        hint = " (is it an XDP program? mixing modes on one interface is refused)"
    return AttachError(f"{what}: {err.detail}{hint}")


def xdp_attached(
    iface: int | str, netns: NetnsPath = None, *, find_link: bool = True
) -> XDPAttachment | None:
    """The XDP program on an interface, whoever attached it (rtnetlink RTM_GETLINK
    IFLA_XDP), and the id of the BPF link that holds it, if a link does (found by iterating
    links: an xdp link with that ifindex and program; skipped, and ``link_id`` None, without
    ``find_link``). The kernel reports no namespace for xdp links, so if the same program is
    attached by links to interfaces with the same index in two namespaces, the first such
    link is named. Needs CAP_NET_ADMIN, CAP_SYS_ADMIN."""
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
    for info in iter_links(LinkType.XDP) if find_link else ():
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
