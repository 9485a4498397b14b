"""Network namespaces and the little rtnetlink the loader needs.

- :func:`in_netns` runs a block with the calling thread inside another network namespace
  (``setns(2)`` on the thread, and back, also on error). A network namespace is a
  per-thread property, so other threads of the process are not affected, and objects made
  inside the block (sockets, links to its interfaces) stay bound to that namespace after
  the block ends.
- :func:`query_link` asks the kernel about one interface with ``RTM_GETLINK`` over an
  ``AF_NETLINK``/``NETLINK_ROUTE`` socket and decodes the attributes we need: the name and
  the ``IFLA_XDP`` nest (which XDP program is attached and in which mode, no matter whether
  it was attached by a BPF link or by netlink, e.g. ``ip link set dev X xdp obj ...``).

Only the standard library is used: ``socket`` speaks AF_NETLINK, the messages are packed
with ``struct`` (layouts from linux/netlink.h, linux/rtnetlink.h and linux/if_link.h).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import itertools
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator.ebpf import _sys
from orchestrator.ebpf.errors import (
    FileError,
    NetlinkError,
    NetnsError,
    NetnsFileError,
    NetnsNotFoundError,
)
from orchestrator.ebpf.files import reason, stat_regular

if TYPE_CHECKING:
    import socket

# linux/netlink.h
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED and NLA_F_NET_BYTEORDER
# linux/rtnetlink.h
RTM_NEWLINK = 16
RTM_GETLINK = 18
# linux/if_link.h
IFLA_IFNAME = 3
IFLA_XDP = 43
IFLA_XDP_FD = 1
IFLA_XDP_ATTACHED = 2
IFLA_XDP_FLAGS = 3
IFLA_XDP_PROG_ID = 4
IFLA_XDP_DRV_PROG_ID = 5
IFLA_XDP_SKB_PROG_ID = 6
IFLA_XDP_HW_PROG_ID = 7

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")  # family, pad, type, index, flags, change
_NLATTR = struct.Struct("=HH")  # len, type

_seq = itertools.count(1)


class XDPMode(enum.IntEnum):
    """``XDP_ATTACHED_*`` from linux/if_link.h: how an XDP program sits on an interface."""

    NONE = 0
    DRV = 1  # native, in the driver
    SKB = 2  # generic
    HW = 3  # offloaded
    MULTI = 4  # more than one mode at once


@dataclass(frozen=True, slots=True)
class XDPState:
    """The ``IFLA_XDP`` nest of one interface: mode and the program id per mode."""

    mode: XDPMode
    prog_id: int  # the single program's id (IFLA_XDP_PROG_ID); 0 under MULTI
    drv_prog_id: int = 0
    skb_prog_id: int = 0
    hw_prog_id: int = 0


@dataclass(frozen=True, slots=True)
class LinkState:
    """What ``RTM_GETLINK`` says about one interface."""

    ifindex: int
    name: str
    xdp: XDPState


@contextlib.contextmanager
def in_netns(path: str | os.PathLike[str] | None) -> Iterator[None]:
    """Run the block with the calling thread in the network namespace at ``path`` (e.g.
    ``/var/run/netns/NAME`` or ``/proc/PID/ns/net``); ``None`` runs it where the thread is.

    The thread returns to its original namespace when the block ends, also on error; links
    made inside keep working afterwards. Needs CAP_SYS_ADMIN (setns on a network namespace).
    Raises, before entering, :class:`NetnsNotFoundError` for a missing path,
    :class:`NetnsFileError` for one that is no regular file (refused before it is opened)
    and :class:`NetnsError` for one it cannot enter; all are ``AttachError`` and ``OSError``
    too. Nothing is left open.
    """
    if path is None:
        yield
        return
    try:
        target = open_netns(path)
    except OSError as err:
        raise _netns_error(path, err) from err
    try:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except BaseException as err:
        os.close(target)
        if isinstance(err, OSError):
            raise _netns_error(path, err) from err
        raise
    try:
        try:
            _sys.setns(target, _sys.CLONE_NEWNET)  # EINVAL: not a netns file
        except OSError as err:
            raise _netns_error(path, err) from err
        try:
            yield
        finally:
            # Going home cannot fail for a namespace we were in a moment ago (we hold its fd).
            _sys.setns(home, _sys.CLONE_NEWNET)
    finally:
        os.close(home)
        os.close(target)


def open_netns(path: str | os.PathLike[str]) -> int:
    """An fd of the namespace file at ``path``. A namespace file (nsfs, also when bind
    mounted under /var/run/netns) is a regular file: anything else, a FIFO above all (its
    open would wait for a writer), is refused with :class:`FileError` before it is opened."""
    stat_regular(path)
    return os.open(os.fspath(path), os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)


def _netns_error(path: str | os.PathLike[str], err: OSError) -> NetnsError:
    """What :func:`in_netns` raises when opening or entering ``path`` failed with ``err``."""
    code = err.errno or 0
    klass: type[NetnsError] = NetnsError
    if isinstance(err, FileError):
        klass = NetnsFileError
    elif code == errno.ENOENT:
        klass = NetnsNotFoundError
    why = reason(err) if isinstance(err, FileError) or not code else os.strerror(code).lower()
    where = os.fspath(path)
    return klass(
        f"network namespace {where}: {why} (a path like /var/run/netns/NAME or /proc/PID/ns/net)",
        err,
        where,
    )


def netns_inode(path: str | os.PathLike[str] | None = None) -> int:
    """The inode number that identifies a network namespace (the calling thread's when
    ``path`` is None); the same number netns links report in their info."""
    return os.stat(os.fspath(path) if path is not None else "/proc/thread-self/ns/net").st_ino


def _attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    off = 0
    while off + _NLATTR.size <= len(data):
        length, kind = _NLATTR.unpack_from(data, off)
        if length < _NLATTR.size or off + length > len(data):
            return
        yield kind & NLA_TYPE_MASK, data[off + _NLATTR.size : off + length]
        off += (length + 3) & ~3


def _u32(data: bytes) -> int:
    return int(struct.unpack_from("=I", data)[0]) if len(data) >= 4 else 0


def _parse_xdp(nest: bytes) -> XDPState:
    values = {kind: payload for kind, payload in _attrs(nest)}
    raw_mode = values.get(IFLA_XDP_ATTACHED, b"\0")[0]
    try:
        mode = XDPMode(raw_mode)
    except ValueError:
        mode = XDPMode.MULTI
    return XDPState(
        mode=mode,
        prog_id=_u32(values.get(IFLA_XDP_PROG_ID, b"")),
        drv_prog_id=_u32(values.get(IFLA_XDP_DRV_PROG_ID, b"")),
        skb_prog_id=_u32(values.get(IFLA_XDP_SKB_PROG_ID, b"")),
        hw_prog_id=_u32(values.get(IFLA_XDP_HW_PROG_ID, b"")),
    )


def parse_newlink(msg: bytes) -> LinkState:
    """Decode the payload of an ``RTM_NEWLINK`` message (after the nlmsghdr)."""
    if len(msg) < _IFINFOMSG.size:
        raise NetlinkError("rtnetlink: truncated ifinfomsg", errno.EPROTO)
    _family, _type, index, _flags, _change = _IFINFOMSG.unpack_from(msg)
    name = ""
    xdp = XDPState(mode=XDPMode.NONE, prog_id=0)
    for kind, payload in _attrs(msg[_IFINFOMSG.size :]):
        if kind == IFLA_IFNAME:
            name = payload.split(b"\0", 1)[0].decode("utf-8", "replace")
        elif kind == IFLA_XDP:
            xdp = _parse_xdp(payload)
    return LinkState(ifindex=index, name=name, xdp=xdp)


def _request(sock: socket.socket, msg_type: int, flags: int, payload: bytes) -> list[bytes]:
    """Send one request, return the payloads of the answers (up to DONE or the error/ack)."""
    seq = next(_seq)
    header = _NLMSGHDR.pack(_NLMSGHDR.size + len(payload), msg_type, flags, seq, 0)
    sock.send(header + payload)
    out: list[bytes] = []
    while True:
        data = sock.recv(65536)
        off = 0
        while off + _NLMSGHDR.size <= len(data):
            length, kind, _f, rseq, _pid = _NLMSGHDR.unpack_from(data, off)
            if length < _NLMSGHDR.size:
                raise NetlinkError("rtnetlink: malformed answer", errno.EPROTO)
            body = data[off + _NLMSGHDR.size : off + length]
            off += (length + 3) & ~3
            if rseq != seq:
                continue
            if kind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", body)[0]
                if code:
                    raise NetlinkError(f"rtnetlink: {os.strerror(code).lower()}", code)
                return out  # an ack
            if kind == NLMSG_DONE:
                return out
            out.append(body)
            if not flags & NLM_F_ACK:
                return out


def query_link(ifindex: int, netns: str | os.PathLike[str] | None = None) -> LinkState:
    """``RTM_GETLINK`` for one interface of the namespace at ``netns`` (the calling thread's
    when None). Raises :class:`NetlinkError` with ENODEV when there is no such interface."""
    import socket  # here: a plan that reads no interface does not import it

    with in_netns(netns):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
    with sock:
        sock.bind((0, 0))
        payload = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, ifindex, 0, 0)
        answers = _request(sock, RTM_GETLINK, NLM_F_REQUEST, payload)
    for body in answers:
        return parse_newlink(body)
    raise NetlinkError(f"rtnetlink: no answer for ifindex {ifindex}", errno.ENODEV)
