"""rtnetlink decoding, without the kernel: RTM_NEWLINK payloads built by hand."""

from __future__ import annotations

import errno
import struct
from pathlib import Path

import pytest

from orchestrator.ebpf import _netlink as netlink
from orchestrator.ebpf._netlink import XDPMode
from orchestrator.ebpf.errors import (
    AttachError,
    FileError,
    NetlinkError,
    NetnsError,
    NetnsFileError,
    NetnsNotFoundError,
    TargetNotFoundError,
)


def attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def newlink(index: int, *attrs: bytes) -> bytes:
    return struct.pack("=BxHiII", 0, 1, index, 0, 0) + b"".join(attrs)


def test_parse_name_and_xdp_nest() -> None:
    xdp = attr(
        netlink.IFLA_XDP | 0x8000,  # NLA_F_NESTED is ignored
        attr(netlink.IFLA_XDP_ATTACHED, b"\x02")
        + attr(netlink.IFLA_XDP_PROG_ID, struct.pack("=I", 77))
        + attr(netlink.IFLA_XDP_SKB_PROG_ID, struct.pack("=I", 77)),
    )
    state = netlink.parse_newlink(newlink(5, attr(netlink.IFLA_IFNAME, b"veth0\0"), xdp))
    assert state == netlink.LinkState(
        ifindex=5, name="veth0", xdp=netlink.XDPState(XDPMode.SKB, 77, skb_prog_id=77)
    )


def test_parse_without_xdp_and_unknown_attributes() -> None:
    state = netlink.parse_newlink(
        newlink(1, attr(999, b"junkjunk"), attr(netlink.IFLA_IFNAME, b"lo\0"))
    )
    assert state.name == "lo" and state.xdp.mode is XDPMode.NONE and state.xdp.prog_id == 0


def test_parse_multi_mode_and_unknown_mode() -> None:
    for raw, mode in ((b"\x04", XDPMode.MULTI), (b"\x09", XDPMode.MULTI), (b"\x01", XDPMode.DRV)):
        nest = attr(netlink.IFLA_XDP, attr(netlink.IFLA_XDP_ATTACHED, raw))
        assert netlink.parse_newlink(newlink(2, nest)).xdp.mode is mode


def test_truncated_input() -> None:
    with pytest.raises(NetlinkError, match="truncated"):
        netlink.parse_newlink(b"\0" * 8)
    # an attribute claiming more bytes than there are ends the walk instead of over-reading
    bad = newlink(3, attr(netlink.IFLA_IFNAME, b"ok\0"), struct.pack("=HH", 200, 3) + b"xx")
    assert netlink.parse_newlink(bad).name == "ok"


def test_in_netns_errors_are_loader_and_os_errors(tmp_path: Path, fd_guard: None) -> None:
    # One in_netns for the loader (which catches AttachError) and for callers that handle
    # OSError: its errors are both, and it leaves the thread where it was.
    home = netlink.netns_inode()
    missing = tmp_path / "missing"
    with pytest.raises(NetnsNotFoundError) as caught, netlink.in_netns(missing):
        pass
    err = caught.value
    assert isinstance(err, TargetNotFoundError) and isinstance(err, FileNotFoundError)
    assert (err.errno, err.filename) == (errno.ENOENT, str(missing))
    assert str(err) == (
        f"network namespace {missing}: no such file or directory "
        "(a path like /var/run/netns/NAME or /proc/PID/ns/net)"
    )
    plain = tmp_path / "plain"
    plain.write_text("not a namespace")
    with pytest.raises(NetnsError) as caught, netlink.in_netns(plain):
        pass
    err = caught.value
    assert isinstance(err, AttachError) and isinstance(err, OSError)
    assert not isinstance(err, TargetNotFoundError)
    assert err.errno == errno.EINVAL
    assert str(err).startswith(f"network namespace {plain}: invalid argument (")
    with pytest.raises(NetnsFileError) as refused, netlink.in_netns(tmp_path):
        pass
    err = refused.value  # refused by type before it is opened, as FileError says it
    assert isinstance(err, FileError) and isinstance(err, AttachError)
    assert (err.errno, err.strerror) == (errno.EISDIR, "is a directory")
    assert str(err).startswith(f"network namespace {tmp_path}: is a directory (")
    assert netlink.netns_inode() == home
