"""Links: attaching programs to the kernel's hooks, in namespaces and cgroups the tests make."""

from __future__ import annotations

import os

import pytest

from orchestrator.ebpf.netlink import in_netns, netns_inode
from tests.netns import Cgroup, UdpReceiver, VethPair, send_udp

pytestmark = pytest.mark.kernel


# ---------------------------------------------------------------------------- test helpers


def test_veth_pair_is_quiet_and_carries_udp(veth: VethPair, fd_guard: None) -> None:
    assert veth.a.ns.path.exists() and veth.b.ns.path.exists()
    with UdpReceiver(veth.b, 4000) as rx:
        send_udp(veth.a, veth.b, 4000, count=25)
        assert rx.drain() == 25
    # nothing but our datagrams crossed the wire: no ARP, no IPv6 chatter
    out = veth.b.ns.ip("-s", "-j", "link", "show", "dev", veth.b.name).stdout
    import json

    stats = json.loads(out)[0]["stats64"]
    assert stats["rx"]["packets"] == 25
    assert stats["tx"]["packets"] == 0


def test_in_netns_switches_the_thread_and_back(veth: VethPair, fd_guard: None) -> None:
    home = netns_inode()
    with in_netns(veth.a.ns.path):
        assert netns_inode() == netns_inode(veth.a.ns.path) != home
    assert netns_inode() == home
    with pytest.raises(RuntimeError), in_netns(veth.b.ns.path):
        raise RuntimeError("boom")
    assert netns_inode() == home
    with pytest.raises(FileNotFoundError), in_netns("/var/run/netns/bpft-missing"):
        pass
    assert netns_inode() == home


def test_cgroup_spawn_starts_inside(cgroup: Cgroup) -> None:
    out = cgroup.run_python("import os; print(open('/proc/self/cgroup').read())")
    assert f"0::/{cgroup.path.name}\n" in out
    assert cgroup.procs() == []
    assert cgroup.id == os.stat(cgroup.path).st_ino
