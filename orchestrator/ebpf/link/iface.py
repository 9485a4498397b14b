"""Network interfaces by name or index, in the caller's or another network namespace."""

from __future__ import annotations

import errno
import os

from orchestrator.ebpf import _netlink
from orchestrator.ebpf._netlink import in_netns
from orchestrator.ebpf.errors import (
    NetlinkError,
    TargetNotFoundError,
)
from orchestrator.ebpf.link.base import (
    NetnsPath,
)


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
