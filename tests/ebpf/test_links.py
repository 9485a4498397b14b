"""Links: attaching programs to the kernel's hooks, in namespaces and cgroups the tests make.

Every test attaches only inside namespaces/cgroups created by ``tests/netns.py`` fixtures,
pins only under ``pin_dir``, and checks with ``fd_guard`` that nothing leaks.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator import ebpf
from orchestrator.ebpf import link as links
from orchestrator.ebpf import mounts
from orchestrator.ebpf._netlink import in_netns, netns_inode
from orchestrator.ebpf._sys import FD, AttachType, LinkType
from orchestrator.ebpf.errors import (
    AttachConflictError,
    AttachError,
    KindError,
    MountNotFoundError,
    NotFoundError,
    NotSupportedError,
    PinError,
    TargetNotFoundError,
)
from orchestrator.ebpf.link import Link, LinkID, ProgramID
from tests.conftest import ROOT, obj, require_tool
from tests.deadline import promptly
from tests.netns import Cgroup, NetNS, UdpReceiver, UdpStream, VethPair, send_udp

pytestmark = pytest.mark.kernel

Build = Callable[..., Path]
PORT = 5555  # the UDP port the test programs count

PROGS = r"""
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define PORT 5555

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 8);
} hits SEC(".maps");

/* order[0]: next position; order[slot]: position at which program <slot> last ran */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 8);
} order SEC(".maps");

const volatile __u32 target_tgid = 0;

static __always_inline int ours(void *data, void *end)
{
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);

	if ((void *)(udp + 1) > end)
		return 0;
	return eth->h_proto == bpf_htons(ETH_P_IP) && ip->protocol == IPPROTO_UDP &&
		ip->ihl == 5 && udp->dest == bpf_htons(PORT);
}

static __always_inline void bump(__u32 slot)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&hits, &slot), *next, *pos;

	if (n)
		__sync_fetch_and_add(n, 1);
	next = bpf_map_lookup_elem(&order, &zero);
	pos = bpf_map_lookup_elem(&order, &slot);
	if (next && pos) {
		*next += 1;
		*pos = *next;
	}
}

#define XDP(name, slot) \
SEC("xdp") int name(struct xdp_md *ctx) \
{ if (ours((void *)(long)ctx->data, (void *)(long)ctx->data_end)) bump(slot); return XDP_PASS; }
XDP(xdp_a, 1)
XDP(xdp_b, 2)

#define TC(name, slot) \
SEC("tc") int name(struct __sk_buff *ctx) \
{ if (ours((void *)(long)ctx->data, (void *)(long)ctx->data_end)) bump(slot); return -1; }
/* -1: TCX_NEXT, the next program at the hook runs */
TC(tc_a, 1)
TC(tc_b, 2)
TC(tc_c, 3)

static __always_inline int mine(void)
{
	return target_tgid == 0 || (bpf_get_current_pid_tgid() >> 32) == target_tgid;
}

SEC("raw_tp/sys_enter")
int raw_getppid(struct bpf_raw_tracepoint_args *ctx)
{
	if (ctx->args[1] == 110 /* __NR_getppid on x86_64 */ && mine())
		bump(4);
	return 0;
}

SEC("uprobe")
int on_call(void *ctx) { if (mine()) bump(5); return 0; }

SEC("uretprobe")
int on_return(void *ctx) { if (mine()) bump(6); return 0; }

SEC("sk_lookup")
int lookup(struct bpf_sk_lookup *ctx)
{
	if (ctx->protocol == IPPROTO_UDP && ctx->local_port == PORT)
		bump(7);
	return SK_PASS;
}

SEC("sk_lookup")
int lookup2(struct bpf_sk_lookup *ctx) { return SK_PASS; }

SEC("flow_dissector")
int dissect(struct __sk_buff *ctx) { return BPF_OK; }

SEC("flow_dissector")
int dissect2(struct __sk_buff *ctx) { return BPF_OK; }

char LICENSE[] SEC("license") = "GPL";
"""

UPROBE_TARGET = r"""
#include <stdio.h>
#include <stdlib.h>

__attribute__((noinline)) int bpforch_target(int x)
{
	__asm__ volatile("" ::: "memory");
	return x * 2;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 1, sum = 0;

	if (argc > 2)
		getchar(); /* wait until the test says go */
	for (int i = 0; i < n; i++)
		sum += bpforch_target(i);
	printf("%d\n", sum);
	return 0;
}
"""


@pytest.fixture
def progs(compile_bpf: Build) -> Iterator[ebpf.Collection]:
    spec = ebpf.CollectionSpec.from_file(compile_bpf(PROGS))
    spec.rewrite_constants({"target_tgid": os.getpid()})
    with ebpf.Collection(spec) as coll:
        yield coll


def hits(coll: ebpf.Collection, slot: int) -> int:
    value = coll.maps["hits"][slot]
    assert isinstance(value, int)
    return value


def position(coll: ebpf.Collection, slot: int) -> int:
    value = coll.maps["order"][slot]
    assert isinstance(value, int)
    return value


def wait_for(predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


# ---------------------------------------------------------------------------- test helpers


def test_veth_pair_is_quiet_and_carries_udp(veth: VethPair, fd_guard: None) -> None:
    assert veth.a.ns.path.exists() and veth.b.ns.path.exists()
    with UdpReceiver(veth.b, 4000) as rx:
        send_udp(veth.a, veth.b, 4000, count=25)
        assert rx.drain() == 25
    # nothing but our datagrams crossed the wire: no ARP, no IPv6 chatter
    out = veth.b.ns.ip("-s", "-j", "link", "show", "dev", veth.b.name).stdout
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


# ---------------------------------------------------------------------------- xdp


@pytest.mark.parametrize("mode", ["native", "generic"])
def test_xdp_link_counts_udp_across_veth(
    veth: VethPair, progs: ebpf.Collection, mode: str, fd_guard: None
) -> None:
    prog = progs.programs["xdp_a"]
    home = netns_inode()
    with links.attach_xdp(prog, veth.b.name, mode, netns=veth.b.ns.path) as link:  # type: ignore[arg-type]
        assert netns_inode() == home  # the thread went back
        assert link.type == LinkType.XDP
        info = link.info()
        assert info.id == link.id and info.program_id == prog.id
        assert info.target == links.XDPTarget(veth.b.ifindex)
        # the link keeps working after setns back: packets cross from a to b
        assert send_udp(veth.a, veth.b, PORT, count=40) == 40
        send_udp(veth.a, veth.b, PORT + 1, count=5)  # other ports are not counted
        assert wait_for(lambda: hits(progs, 1) == 40), hits(progs, 1)
        state = links.xdp_attached(veth.b.name, netns=veth.b.ns.path)
        assert state is not None
        assert (state.prog_id, state.mode, state.link_id) == (prog.id, mode, link.id)
        assert state.prog_name == "xdp_a" and state.interface == veth.b.name
        # the other end has nothing
        assert links.xdp_attached(veth.a.ifindex, netns=veth.a.ns.path) is None
    # closing the only fd detached it
    assert links.xdp_attached(veth.b.ifindex, netns=veth.b.ns.path) is None
    send_udp(veth.a, veth.b, PORT, count=3)
    time.sleep(0.05)
    assert hits(progs, 1) == 40


def test_xdp_update_under_traffic_loses_nothing(
    veth: VethPair, progs: ebpf.Collection, fd_guard: None
) -> None:
    a, b = progs.programs["xdp_a"], progs.programs["xdp_b"]
    with (
        UdpReceiver(veth.b, PORT) as rx,
        links.attach_xdp(a, veth.b.ifindex, netns=veth.b.ns.path) as link,
    ):
        stream = UdpStream(veth.a, veth.b, PORT, interval=0.0002).start()
        try:
            stream.wait_for(50)
            current = a
            for i in range(20):
                new = b if current is a else a
                link.update(new, old_prog=current if i % 2 else None)
                assert link.program_id == new.id
                current = new
                stream.wait_for(stream.sent + 20)
        finally:
            sent = stream.stop()
        assert link.id == link.info().id
        assert wait_for(lambda: hits(progs, 1) + hits(progs, 2) == sent), (
            sent,
            hits(progs, 1),
            hits(progs, 2),
        )
        assert hits(progs, 1) > 0 and hits(progs, 2) > 0
        assert rx.drain() == sent  # XDP_PASS: every datagram also reached the socket


def test_xdp_update_refuses_a_stale_old_program(
    veth: VethPair, progs: ebpf.Collection, fd_guard: None
) -> None:
    a, b = progs.programs["xdp_a"], progs.programs["xdp_b"]
    with links.attach_xdp(a, veth.b.ifindex, netns=veth.b.ns.path) as link:
        with pytest.raises(AttachConflictError, match="not xdp_b"):
            link.update(a, old_prog=b)
        assert link.program_id == a.id
        with pytest.raises(AttachError, match="update to tc_a"):
            link.update(progs.programs["tc_a"])  # wrong program type


def test_xdp_attached_by_netlink_is_foreign(
    veth: VethPair, progs: ebpf.Collection, fd_guard: None
) -> None:
    require_tool("ip")
    ns, dev = veth.b.ns, veth.b.name
    ns.ip("link", "set", "dev", dev, "xdpgeneric", "obj", str(obj("xdp_counter.o")), "sec", "xdp")
    try:
        state = links.xdp_attached(dev, netns=ns.path)
        assert state is not None
        assert state.link_id is None  # netlink, not a BPF link
        assert state.mode == "generic" and state.prog_name == "xdp_count"
        with pytest.raises(AttachConflictError) as exc:
            links.attach_xdp(progs.programs["xdp_a"], dev, netns=ns.path)
        message = str(exc.value)
        assert f"interface {dev} already has XDP program {state.prog_id} (xdp_count)" in message
        assert "someone else" in message
        assert exc.value.prog_id == state.prog_id and exc.value.link_id == 0
    finally:
        ns.ip("link", "set", "dev", dev, "xdpgeneric", "off")
    assert links.xdp_attached(dev, netns=ns.path) is None


def test_xdp_conflict_with_our_own_link_names_the_link(
    veth: VethPair, progs: ebpf.Collection, fd_guard: None
) -> None:
    with links.attach_xdp(progs.programs["xdp_a"], veth.b.name, netns=veth.b.ns.path) as first:
        with pytest.raises(AttachConflictError, match=f"by link {first.id}") as exc:
            links.attach_xdp(progs.programs["xdp_b"], veth.b.name, netns=veth.b.ns.path)
        assert exc.value.link_id == first.id and exc.value.prog_name == "xdp_a"


def test_xdp_link_released_in_deferred_work_is_a_retryable_conflict(
    veth: VethPair, progs: ebpf.Collection, pin_dir: Path, fd_guard: None
) -> None:
    """Removing a link's last pin releases it in the kernel's deferred work: an attach
    right after may get EBUSY although the interface is free by the time it is asked. That
    is an AttachConflictError with prog_id 0 (retry), never a bare AttachError."""
    ns, dev = veth.b.ns.path, veth.b.name
    prog = progs.programs["xdp_a"]
    pin = pin_dir / "xdp_link"
    busy = attached = 0
    for _ in range(60):
        with links.attach_xdp(prog, dev, "generic", netns=ns) as first:
            first.pin(pin)
        os.unlink(pin)  # the last reference: the link is freed in a work item
        try:
            again = links.attach_xdp(prog, dev, "generic", netns=ns)
        except AttachConflictError as err:
            held = links.xdp_attached(dev, netns=ns)
            if err.prog_id == 0:
                assert "was busy" in str(err) and "try again" in str(err), err
            else:
                assert err.prog_id == prog.id, err  # still held by the link being released
            busy += 1
            assert wait_for(lambda: links.xdp_attached(dev, netns=ns) is None), held
            continue
        with again:
            attached += 1
    assert busy + attached == 60
    assert links.xdp_attached(dev, netns=ns) is None


def test_xdp_busy_on_a_free_interface_says_retry(
    veth: VethPair, progs: ebpf.Collection, fd_guard: None
) -> None:
    """The kernel's EBUSY mapped when the interface is free again by the time it is asked
    (the window above is too short to hit on demand)."""
    from orchestrator.ebpf.errors import SyscallError
    from orchestrator.ebpf.link.xdp import _xdp_error

    prog, ns = progs.programs["xdp_a"], veth.b.ns.path
    busy = SyscallError("create link", errno.EBUSY)
    err = _xdp_error(prog, veth.b.ifindex, "generic", busy, ns)
    assert isinstance(err, AttachConflictError) and err.prog_id == 0, err
    assert str(err) == (
        f"interface {veth.b.name} was busy: an XDP program held it when the link was made "
        "and none does now (a link being released); try again"
    )
    mixed = _xdp_error(
        prog, veth.b.ifindex, "generic", SyscallError("create link", errno.EEXIST), ns
    )
    assert type(mixed) is AttachError and "EEXIST" in str(mixed), mixed


def test_xdp_missing_interface(veth: VethPair, progs: ebpf.Collection, fd_guard: None) -> None:
    prog = progs.programs["xdp_a"]
    with pytest.raises(TargetNotFoundError, match="interface nope0: not found in netns"):
        links.attach_xdp(prog, "nope0", netns=veth.b.ns.path)
    with pytest.raises(TargetNotFoundError, match="interface 4242 not found"):
        links.attach_xdp(prog, 4242, netns=veth.b.ns.path)
    with pytest.raises(TargetNotFoundError, match="network namespace /var/run/netns/bpft-gone"):
        links.attach_xdp(prog, 1, netns="/var/run/netns/bpft-gone")
    with pytest.raises(TargetNotFoundError):
        links.xdp_attached(4242, netns=veth.b.ns.path)
    with pytest.raises(ValueError, match="xdp mode"):
        links.attach_xdp(prog, 1, "turbo", netns=veth.b.ns.path)  # type: ignore[arg-type]


def test_xdp_detach_empties_the_hook_while_the_link_is_held(
    veth: VethPair, progs: ebpf.Collection, fd_guard: None
) -> None:
    with links.attach_xdp(progs.programs["xdp_a"], veth.b.name, netns=veth.b.ns.path) as link:
        assert link.info().attached
        link.detach()
        assert not link.info().attached  # defunct: the kernel reports ifindex 0
        assert links.xdp_attached(veth.b.name, netns=veth.b.ns.path) is None
        send_udp(veth.a, veth.b, PORT, count=3)
        time.sleep(0.05)
        assert hits(progs, 1) == 0
        link.detach()  # detaching twice is harmless
        with pytest.raises(AttachError, match="link has been severed") as exc:
            link.update(progs.programs["xdp_b"])
        assert exc.value.errno == errno.ENOLINK
        # the hook is free again for someone else
        with links.attach_xdp(progs.programs["xdp_b"], veth.b.name, netns=veth.b.ns.path) as nxt:
            # deleting the interface leaves the link defunct (drift a reconciler must see)
            veth.b.ns.ip("link", "del", "dev", veth.b.name)
            assert not nxt.info().attached


# ---------------------------------------------------------------------------- tcx


def test_tcx_counts_and_orders(veth: VethPair, progs: ebpf.Collection, fd_guard: None) -> None:
    ns = veth.b.ns.path
    pa, pb, pc = (progs.programs[n] for n in ("tc_a", "tc_b", "tc_c"))
    with links.attach_tcx(pa, veth.b.name, "ingress", netns=ns) as la:
        info = la.info()
        assert info.type == LinkType.TCX
        assert info.target == links.TCXTarget(veth.b.ifindex, AttachType.TCX_INGRESS)
        assert info.target.direction == "ingress"
        send_udp(veth.a, veth.b, PORT, count=10)
        assert wait_for(lambda: hits(progs, 1) == 10)
        with (
            links.attach_tcx(pb, veth.b.name, "ingress", before=la, netns=ns) as lb,
            links.attach_tcx(pc, veth.b.ifindex, "ingress", after=LinkID(la.id), netns=ns) as lc,
        ):
            state = links.tcx_attached(veth.b.name, "ingress", netns=ns)
            assert state.prog_ids == (pb.id, pa.id, pc.id)
            assert state.link_ids == (lb.id, la.id, lc.id)
            send_udp(veth.a, veth.b, PORT, count=1)
            assert wait_for(lambda: hits(progs, 3) == 1)
            assert position(progs, 2) < position(progs, 1) < position(progs, 3)
            # the other direction and the other end are untouched
            assert links.tcx_attached(veth.b.name, "egress", netns=ns).programs == ()
            # expected_revision: attaching against a stale revision is refused
            with pytest.raises(AttachConflictError, match="changed since revision"):
                links.attach_tcx(
                    pb, veth.b.name, "egress", expected_revision=state.revision + 7, netns=ns
                )
        # before="all" puts a program first; ProgramID anchors work too
        with (
            links.attach_tcx(pc, veth.b.name, "ingress", before="all", netns=ns),
            links.attach_tcx(pb, veth.b.name, "ingress", after=ProgramID(pa.id), netns=ns),
        ):
            assert links.tcx_attached(veth.b.name, "ingress", netns=ns).prog_ids == (
                pc.id,
                pa.id,
                pb.id,
            )
    assert links.tcx_attached(veth.b.name, "ingress", netns=ns).programs == ()


def test_tcx_update_under_traffic_loses_nothing(
    veth: VethPair, progs: ebpf.Collection, fd_guard: None
) -> None:
    pa, pb = progs.programs["tc_a"], progs.programs["tc_b"]
    with links.attach_tcx(pa, veth.b.name, "ingress", netns=veth.b.ns.path) as link:
        stream = UdpStream(veth.a, veth.b, PORT, interval=0.0002).start()
        try:
            stream.wait_for(50)
            for i in range(20):
                link.update(pb if i % 2 == 0 else pa)
                stream.wait_for(stream.sent + 20)
        finally:
            sent = stream.stop()
        assert wait_for(lambda: hits(progs, 1) + hits(progs, 2) == sent), (
            sent,
            hits(progs, 1),
            hits(progs, 2),
        )
        assert link.program_id == pa.id
        state = links.tcx_attached(veth.b.name, "ingress", netns=veth.b.ns.path)
        assert state.prog_ids == (pa.id,) and state.link_ids == (link.id,)


def test_tcx_errors(veth: VethPair, progs: ebpf.Collection, fd_guard: None) -> None:
    ns = veth.b.ns.path
    pa, pb = progs.programs["tc_a"], progs.programs["tc_b"]
    with pytest.raises(TargetNotFoundError, match="interface 4242 not found"):
        links.attach_tcx(pa, 4242, "ingress", netns=ns)
    with pytest.raises(ValueError, match="direction"):
        links.attach_tcx(pa, 1, "sideways", netns=ns)  # type: ignore[arg-type]
    with links.attach_tcx(pa, veth.b.name, "egress", netns=ns):
        with pytest.raises(AttachConflictError, match="already attached"):
            links.attach_tcx(pa, veth.b.name, "egress", netns=ns)
        with pytest.raises(TargetNotFoundError, match="anchor"):
            links.attach_tcx(pb, veth.b.name, "egress", before=ProgramID(pb.id), netns=ns)


# ---------------------------------------------------------------------------- cgroups

SEND_UDP = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else {n}):
    s.sendto(b"x" * 10, ("{addr}", {port}))
"""


def test_cgroup_egress_counts_packets_of_a_process_inside(
    veth: VethPair, cgroup: Cgroup, fd_guard: None
) -> None:
    with ebpf.load_collection(obj("cgroup_egress.o")) as coll:
        prog = coll.programs["cg_egress"]
        with links.attach_cgroup(prog, cgroup.path, "egress") as link:
            info = link.info()
            assert info.type == LinkType.CGROUP
            assert info.target == links.CgroupTarget(cgroup.id, AttachType.CGROUP_INET_EGRESS)
            state = links.cgroup_attached(cgroup.path, "egress")
            assert state.prog_ids == (prog.id,) and state.link_ids == (link.id,)
            assert links.cgroup_attached(cgroup.path, "ingress").programs == ()
            # a process inside the cgroup sends 12 datagrams from namespace a to b
            cgroup.run_python(SEND_UDP.format(n=12, addr=veth.b.addr, port=PORT), netns=veth.a.ns)
            assert wait_for(lambda: coll.maps["egress_stats"][0] == 12)
            # this process is not in the cgroup: its packets are not counted
            send_udp(veth.a, veth.b, PORT, count=5)
            time.sleep(0.05)
            assert coll.maps["egress_stats"][0] == 12
            # update in place: the link keeps its id, the new program runs
            with ebpf.load_collection(obj("cgroup_egress.o")) as coll2:
                link.update(coll2.programs["cg_egress"], old_prog=prog)
                assert link.program_id == coll2.programs["cg_egress"].id
                cgroup.run_python(
                    SEND_UDP.format(n=3, addr=veth.b.addr, port=PORT), netns=veth.a.ns
                )
                assert wait_for(lambda: coll2.maps["egress_stats"][0] == 3)
                assert coll.maps["egress_stats"][0] == 12
                link.detach()
                assert links.cgroup_attached(cgroup.path, "egress").programs == ()


def test_cgroup_errors(cgroup: Cgroup, progs: ebpf.Collection, fd_guard: None) -> None:
    with ebpf.load_collection(obj("cgroup_egress.o")) as coll:
        prog = coll.programs["cg_egress"]
        missing = cgroup.path / "nope"
        with pytest.raises(TargetNotFoundError, match=f"cgroup {missing}: no such directory"):
            links.attach_cgroup(prog, missing, "egress")
        with pytest.raises(AttachError, match="not a cgroup v2 directory"):
            links.attach_cgroup(prog, "/sys/fs/bpf", "egress")
        with pytest.raises(ValueError, match="cgroup attach type 'sideways'"):
            links.attach_cgroup(prog, cgroup.path, "sideways")
        with pytest.raises(AttachError, match="does the program type match"):
            links.attach_cgroup(progs.programs["xdp_a"], cgroup.path, "egress")
    assert links.cgroup_attach_type("cgroup_skb/egress") == AttachType.CGROUP_INET_EGRESS
    assert links.cgroup_attach_type("cgroup/connect4") == AttachType.CGROUP_INET4_CONNECT
    assert links.cgroup_attach_type("sock_create") == AttachType.CGROUP_INET_SOCK_CREATE


# ---------------------------------------------------------------------------- tracing


def test_tracepoint_link_counts_getppid_and_cannot_be_updated(
    progs: ebpf.Collection, fd_guard: None
) -> None:
    spec = ebpf.CollectionSpec.from_file(obj("tp_counter.o"))
    spec.rewrite_constants({"target_tgid": os.getpid()})
    with ebpf.Collection(spec) as coll:
        prog = coll.programs["count_getppid"]
        with links.attach_tracepoint(prog, "syscalls", "sys_enter_getppid") as link:
            for _ in range(100):
                os.getppid()
            assert coll.maps["calls"][0] == 100
            info = link.info()
            assert info.type == LinkType.PERF_EVENT and info.program_id == prog.id
            assert info.target == links.TracepointTarget("sys_enter_getppid")
            with pytest.raises(NotSupportedError, match="perf_event links cannot be updated"):
                link.update(prog)
            with pytest.raises(NotSupportedError, match="perf_event links cannot be detached"):
                link.detach()
        os.getppid()
        assert coll.maps["calls"][0] == 100  # closing the link detached it


def test_tracepoint_errors_leak_nothing(progs: ebpf.Collection, fd_guard: None) -> None:
    with pytest.raises(TargetNotFoundError, match="tracepoint syscalls/sys_enter_nothing"):
        links.attach_tracepoint(progs.programs["raw_getppid"], "syscalls", "sys_enter_nothing")
    with pytest.raises(ValueError, match="plain names"):
        links.attach_tracepoint(progs.programs["raw_getppid"], "..", "x")
    # the perf event opens, the link is refused (wrong program type): the perf fd is closed
    with pytest.raises(AttachError, match="does the program type match"):
        links.attach_tracepoint(progs.programs["xdp_a"], "syscalls", "sys_enter_getppid")


def test_raw_tracepoint_link(progs: ebpf.Collection, fd_guard: None) -> None:
    prog = progs.programs["raw_getppid"]
    with links.attach_raw_tracepoint(prog, "sys_enter") as link:
        for _ in range(30):
            os.getppid()
        assert hits(progs, 4) == 30
        info = link.info()
        assert info.type == LinkType.RAW_TRACEPOINT
        assert info.target == links.RawTracepointTarget("sys_enter")
        with pytest.raises(NotSupportedError, match="raw_tracepoint links cannot be updated"):
            link.update(prog)
    os.getppid()
    assert hits(progs, 4) == 30
    with pytest.raises(TargetNotFoundError, match="raw tracepoint no_such_tp"):
        links.attach_raw_tracepoint(prog, "no_such_tp")


@pytest.fixture(scope="session")
def uprobe_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = require_tool("gcc")
    out = tmp_path_factory.mktemp("uprobe") / "target"
    src = out.with_suffix(".c")
    src.write_text(UPROBE_TARGET)
    subprocess.run([gcc, "-O1", "-g", "-o", str(out), str(src)], check=True)
    return out


def test_uprobe_and_uretprobe_count_calls(
    uprobe_binary: Path, compile_bpf: Build, fd_guard: None
) -> None:
    spec = ebpf.CollectionSpec.from_file(compile_bpf(PROGS))  # count every process
    with ebpf.Collection(spec) as coll:
        entry, ret = coll.programs["on_call"], coll.programs["on_return"]
        with (
            links.attach_uprobe(entry, uprobe_binary, "bpforch_target") as l1,
            links.attach_uprobe(ret, uprobe_binary, "bpforch_target", retprobe=True) as l2,
        ):
            out = subprocess.run([str(uprobe_binary), "7"], capture_output=True, text=True)
            assert out.stdout.strip() == str(2 * sum(range(7)))
            assert (hits(coll, 5), hits(coll, 6)) == (7, 7)
            offset = links.resolve_symbol(uprobe_binary, "bpforch_target")
            assert l1.info().target == links.UprobeTarget(str(uprobe_binary), offset, False)
            assert l2.info().target == links.UprobeTarget(str(uprobe_binary), offset, True)
            # by offset instead of symbol: same place
            with links.attach_uprobe(entry, uprobe_binary, offset=offset):
                subprocess.run([str(uprobe_binary), "2"], check=True, capture_output=True)
            assert hits(coll, 5) == 7 + 2 * 2
        subprocess.run([str(uprobe_binary), "3"], check=True, capture_output=True)
        assert hits(coll, 5) == 11


def test_uprobe_errors(uprobe_binary: Path, progs: ebpf.Collection, fd_guard: None) -> None:
    prog = progs.programs["on_call"]
    with pytest.raises(TargetNotFoundError, match="symbol no_such_fn not found"):
        links.attach_uprobe(prog, uprobe_binary, "no_such_fn")
    with pytest.raises(TargetNotFoundError, match="no such file"):
        links.attach_uprobe(prog, uprobe_binary.with_name("missing"), "main")
    with pytest.raises(TargetNotFoundError, match="no process"):
        links.attach_uprobe(prog, uprobe_binary, "main", pid=2**22 + 1)
    with pytest.raises(AttachError, match="not an ELF file"):
        links.attach_uprobe(prog, uprobe_binary.with_suffix(".c"), "main")


def test_uprobe_on_a_fifo_or_device_is_refused_without_blocking(
    tmp_path: Path, progs: ebpf.Collection, fd_guard: None
) -> None:
    """A FIFO would block the symbol lookup until someone writes (and an apply holds the
    lock meanwhile); the kernel refuses anything but a regular file with a bare EINVAL."""
    prog = progs.programs["on_call"]
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        for symbol in ("main", None):
            with pytest.raises(AttachError, match=r"not a regular file \(a (fifo|character)"):
                promptly(lambda p=path, s=symbol: links.attach_uprobe(prog, p, s))  # type: ignore[misc]
    with pytest.raises(AttachError, match="not a regular file"):
        promptly(lambda: links.resolve_symbol(fifo, "main"))


def test_kprobe_and_fentry_are_refused_with_a_reason(progs: ebpf.Collection) -> None:
    prog = progs.programs["on_call"]
    with pytest.raises(NotSupportedError, match=r"kprobe vfs_read of on_call: .*CONFIG_KPROBES"):
        links.attach_kprobe(prog, "vfs_read")
    with pytest.raises(NotSupportedError, match="kretprobe"):
        links.attach_kprobe(prog, "vfs_read", retprobe=True)
    with pytest.raises(NotSupportedError, match=r"fentry/fexit on_call: not supported.*EPERM"):
        links.attach_fentry(prog)
    for kind in ("kprobe", "fentry", "fexit", "lsm", "freplace"):
        with pytest.raises(NotSupportedError, match=f"{kind} attachments are not supported"):
            links.require_supported(kind)
    with pytest.raises(ValueError, match="unknown attachment kind"):
        links.require_supported("teleport")


# ---------------------------------------------------------------------------- netns links


def test_sk_lookup_netns_link_sees_every_datagram(
    veth: VethPair, progs: ebpf.Collection, fd_guard: None
) -> None:
    prog, other = progs.programs["lookup"], progs.programs["lookup2"]
    with (
        UdpReceiver(veth.b, PORT) as rx,
        links.attach_netns(prog, veth.b.ns.path, "sk_lookup") as link,
    ):
        info = link.info()
        assert info.type == LinkType.NETNS
        assert info.target == links.NetnsTarget(netns_inode(veth.b.ns.path), AttachType.SK_LOOKUP)
        send_udp(veth.a, veth.b, PORT, count=9)
        assert rx.drain() == 9
        assert hits(progs, 7) == 9
        link.update(other)  # netns links update in place
        assert link.program_id == other.id
        send_udp(veth.a, veth.b, PORT, count=4)
        assert rx.drain() == 13
        assert hits(progs, 7) == 9
    # a link made for the caller's own namespace while inside it (netns=None)
    with in_netns(veth.a.ns.path), links.attach_netns(prog, None, "sk_lookup") as own:
        target = own.info().target
        assert isinstance(target, links.NetnsTarget)
        assert target.netns_ino == netns_inode(veth.a.ns.path)


def test_flow_dissector_netns_link_holds_one_program(
    netns: NetNS, progs: ebpf.Collection, fd_guard: None
) -> None:
    first, second = progs.programs["dissect"], progs.programs["dissect2"]
    with links.attach_netns(first, netns.path, AttachType.FLOW_DISSECTOR) as link:
        assert link.info().target == links.NetnsTarget(
            netns_inode(netns.path), AttachType.FLOW_DISSECTOR
        )
        with pytest.raises(AttachConflictError, match="already has a flow_dissector program"):
            links.attach_netns(second, netns.path, "flow_dissector")
        link.update(second, old_prog=first)
        assert link.program_id == second.id
        link.detach()
        with links.attach_netns(first, netns.path, "flow_dissector"):
            pass  # the hook is free after detach
    with pytest.raises(TargetNotFoundError, match="no such namespace"):
        links.attach_netns(first, "/var/run/netns/bpft-gone", "flow_dissector")
    with pytest.raises(ValueError, match="netns attach type"):
        links.attach_netns(first, netns.path, "xdp")


# ---------------------------------------------------------------------------- pins, ids


def test_pinned_link_survives_close_and_is_readopted(
    veth: VethPair, progs: ebpf.Collection, pin_dir: Path, fd_guard: None
) -> None:
    ns = veth.b.ns.path
    pin = pin_dir / "xdp_link"
    link = links.attach_xdp(progs.programs["xdp_a"], veth.b.name, "generic", netns=ns)
    link_id = link.id
    link.pin(pin)
    assert link.pinned == str(pin)
    with pytest.raises(PinError, match="exists"):
        link.pin(pin)
    link.close()
    # the pin keeps it attached and working without any fd
    state = links.xdp_attached(veth.b.name, netns=ns)
    assert state is not None and state.link_id == link_id
    send_udp(veth.a, veth.b, PORT, count=6)
    assert wait_for(lambda: hits(progs, 1) == 6)
    with Link.from_pin(pin) as again:
        assert again.id == link_id and again.type == LinkType.XDP
        assert again.pinned == str(pin)
        with Link.from_id(link_id) as by_id:
            assert by_id.info() == again.info()
        again.update(progs.programs["xdp_b"])  # an adopted link can be upgraded in place
        send_udp(veth.a, veth.b, PORT, count=2)
        assert wait_for(lambda: hits(progs, 2) == 2)
        again.unpin()
        assert not pin.exists() and again.pinned is None
        assert links.xdp_attached(veth.b.name, netns=ns) is not None  # the fd still holds it
    assert links.xdp_attached(veth.b.name, netns=ns) is None


def test_pin_and_adoption_errors(
    pin_dir: Path, progs: ebpf.Collection, veth: VethPair, fd_guard: None
) -> None:
    with pytest.raises(NotFoundError, match=r"^link pin .*/missing: open pin: no such file"):
        Link.from_pin(pin_dir / "missing")
    progs.programs["xdp_a"].pin(pin_dir / "prog")
    with pytest.raises(PinError, match=r"^link pin .*/prog: not a link but a program$"):
        Link.from_pin(pin_dir / "prog")
    with pytest.raises(NotFoundError, match=r"^link id 2147483643: open by id: no such file"):
        Link.from_id(2**31 - 5)
    with links.attach_xdp(progs.programs["xdp_a"], veth.b.name, netns=veth.b.ns.path) as link:
        with pytest.raises(PinError, match="does the directory exist"):
            link.pin(pin_dir / "nodir" / "x")
        link.unpin()  # nothing pinned: a no-op


def test_maps_programs_and_links_open_only_their_own_kind(
    pin_dir: Path, progs: ebpf.Collection, veth: VethPair, fd_guard: None
) -> None:
    """One from_fd/from_pin/from_id (ebpf.handle.Handle) for the three kinds: each checks
    what the fd holds (the kernel's info command cannot tell: it answers a program's fd
    with a program's info whatever was asked), remembers the pin it was opened from, and
    keeps the id it read."""
    prog = progs.programs["xdp_a"]
    with links.attach_xdp(prog, veth.b.name, "generic", netns=veth.b.ns.path) as link:
        made: dict[str, ebpf.Map | ebpf.Program | Link] = {
            "map": progs.maps["hits"],
            "program": prog,
            "link": link,
        }
        for kind, handle in made.items():
            handle.pin(pin_dir / kind)
        classes: dict[str, type[ebpf.Map] | type[ebpf.Program] | type[Link]] = {
            "map": ebpf.Map,
            "program": ebpf.Program,
            "link": Link,
        }
        for kind, cls in classes.items():
            with cls.from_pin(pin_dir / kind) as same:
                assert same.pinned == str(pin_dir / kind) and same.id == made[kind].id
            with cls.from_id(made[kind].id) as same:
                assert same.pinned is None and same.id == made[kind].id
            for other, handle in made.items():
                if other == kind:
                    continue
                with pytest.raises(PinError) as pin_err:
                    cls.from_pin(pin_dir / other)
                assert (
                    str(pin_err.value)
                    == f"{kind} pin {pin_dir / other}: not a {kind} but a {other}"
                )
                fd = handle.fd.dup()
                with pytest.raises(KindError) as kind_err:
                    cls.from_fd(fd)
                assert fd.closed  # ownership passed: closed on the error
                assert (kind_err.value.wanted, kind_err.value.found) == (kind, other)
                assert str(kind_err.value).endswith(f": not a {kind} but a {other}")
            with open(os.devnull) as f, pytest.raises(KindError, match=f"not a {kind} but a file$"):
                cls.from_fd(FD(os.dup(f.fileno())))
        link.unpin()
        assert link.pinned is None


def test_iter_links_lists_ours(veth: VethPair, progs: ebpf.Collection, fd_guard: None) -> None:
    ns = veth.b.ns.path
    with (
        links.attach_xdp(progs.programs["xdp_a"], veth.b.name, netns=ns) as lx,
        links.attach_tcx(progs.programs["tc_a"], veth.b.name, "egress", netns=ns) as lt,
    ):
        every = {info.id: info for info in links.iter_links()}
        assert every[lx.id] == lx.info()
        assert every[lt.id] == lt.info()
        assert every[lt.id].type_name == "tcx"
        only_tcx = {info.id for info in links.iter_links(LinkType.TCX)}
        assert lt.id in only_tcx and lx.id not in only_tcx
    remaining = {info.id for info in links.iter_links()}
    assert lx.id not in remaining and lt.id not in remaining


def test_ifindex_and_in_netns_errors(veth: VethPair, fd_guard: None) -> None:
    assert links.ifindex(veth.b.name, veth.b.ns.path) == veth.b.ifindex
    assert links.ifindex("lo", veth.b.ns.path) == 1
    with pytest.raises(TargetNotFoundError, match=f"interface {veth.b.name}: not found"):
        links.ifindex(veth.b.name)  # not in this namespace
    with (
        pytest.raises(TargetNotFoundError, match="network namespace /nonexistent"),
        links.in_netns("/nonexistent"),
    ):
        pass
    with (
        pytest.raises(AttachError, match="network namespace /etc/hostname"),
        links.in_netns("/etc/hostname"),
    ):
        pass
    home = netns_inode()
    with pytest.raises(KeyError), links.in_netns(veth.b.ns.path):
        assert netns_inode() == netns_inode(veth.b.ns.path)
        raise KeyError("inside")
    assert netns_inode() == home


def test_uprobe_pid_filter(uprobe_binary: Path, compile_bpf: Build, fd_guard: None) -> None:
    spec = ebpf.CollectionSpec.from_file(compile_bpf(PROGS))
    with ebpf.Collection(spec) as coll:
        prog = coll.programs["on_call"]
        with subprocess.Popen(
            [str(uprobe_binary), "5", "wait"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        ) as child:
            try:
                with links.attach_uprobe(prog, uprobe_binary, "bpforch_target", pid=child.pid):
                    # another process calling the function is not counted
                    subprocess.run([str(uprobe_binary), "4"], check=True, capture_output=True)
                    assert hits(coll, 5) == 0
                    child.communicate(b"\n", timeout=10)
                    assert child.returncode == 0
                    assert hits(coll, 5) == 5
            finally:
                if child.poll() is None:
                    child.kill()


CHILD_ATTACH = """
import os, sys
from orchestrator import ebpf
spec = ebpf.CollectionSpec.from_file(sys.argv[1])
spec.rewrite_constants({"target_tgid": int(sys.argv[2])})
coll = ebpf.Collection(spec)
coll.maps["calls"].pin(sys.argv[3] + "/calls")
link = ebpf.attach_tracepoint(coll.programs["count_getppid"], "syscalls", "sys_enter_getppid")
link.pin(sys.argv[3] + "/link")
print(link.id)
os._exit(0)  # no cleanup at all: only the pins keep anything alive
"""


def test_pinned_tracepoint_link_outlives_its_process(pin_dir: Path, fd_guard: None) -> None:
    """A perf_event link owns its perf event: after the process that opened the event and
    made the link exits, the pinned link still counts, and is re-adopted with its id."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD_ATTACH,
            str(obj("tp_counter.o")),
            str(os.getpid()),
            str(pin_dir),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
    )
    link_id = int(out.stdout)
    with ebpf.Map.from_pin(pin_dir / "calls") as calls:
        for _ in range(10):
            os.getppid()
        assert calls.lookup(0) == 10
        with Link.from_pin(pin_dir / "link") as link:
            assert link.id == link_id
            assert link.info().target == links.TracepointTarget("sys_enter_getppid")
            link.unpin()
            os.getppid()
            assert calls.lookup(0) == 11  # still held by our fd
        os.getppid()
        assert calls.lookup(0) == 11  # last reference gone: detached, the perf event released


# ---------------------------------------------------------------------------- more error paths


def test_cgroup_exclusive_foreign_program_is_a_conflict(
    cgroup: Cgroup, pin_dir: Path, fd_guard: None
) -> None:
    bpftool = require_tool("bpftool")
    with ebpf.load_collection(obj("cgroup_egress.o")) as coll:
        prog = coll.programs["cg_egress"]
        prog.pin(pin_dir / "foreign")
        # someone else attaches with BPF_PROG_ATTACH, no flags: exclusive, no link
        subprocess.run(
            [
                bpftool,
                "cgroup",
                "attach",
                str(cgroup.path),
                "egress",
                "pinned",
                str(pin_dir / "foreign"),
            ],
            check=True,
            capture_output=True,
        )
        state = links.cgroup_attached(cgroup.path, "egress")
        assert state.programs == (links.AttachedProgram(prog.id, None),)
        with ebpf.load_collection(obj("cgroup_egress.o")) as mine:
            with pytest.raises(AttachConflictError, match="attached exclusively") as exc:
                links.attach_cgroup(mine.programs["cg_egress"], cgroup.path, "egress")
            assert exc.value.prog_id == prog.id and exc.value.prog_name == "cg_egress"
        subprocess.run(
            [
                bpftool,
                "cgroup",
                "detach",
                str(cgroup.path),
                "egress",
                "pinned",
                str(pin_dir / "foreign"),
            ],
            check=True,
            capture_output=True,
        )


def test_environment_error_paths(
    progs: ebpf.Collection,
    netns: NetNS,
    cgroup: Cgroup,
    uprobe_binary: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fd_guard: None,
) -> None:
    # lo has no native XDP
    with pytest.raises(NotSupportedError, match="no native XDP"):
        links.attach_xdp(progs.programs["xdp_a"], "lo", "native", netns=netns.path)
    with pytest.raises(TargetNotFoundError, match="interface 4242: not found"):
        links.tcx_attached(4242, "ingress", netns=netns.path)
    with pytest.raises(AttachError, match="is it a netns file"):
        links.attach_netns(progs.programs["lookup"], cgroup.path / "cgroup.procs", "sk_lookup")
    with pytest.raises(AttachError, match="raw_tp programs need a name"):
        links.attach_raw_tracepoint(progs.programs["raw_getppid"], None)
    with pytest.raises(AttachError, match=r"cgroup .*cgroup\.procs: not a directory"):
        links.attach_cgroup(progs.programs["xdp_a"], cgroup.path / "cgroup.procs", "egress")
    # no tracefs, no uprobe PMU, a PMU without the retprobe bit
    monkeypatch.setattr(mounts, "read_mountinfo", lambda: "1 0 0:1 / / rw - ext4 /dev/root rw")
    mounts.clear_cache()
    with pytest.raises(MountNotFoundError, match="tracefs is not mounted"):
        links.attach_tracepoint(progs.programs["raw_getppid"], "syscalls", "sys_enter_getppid")
    monkeypatch.setattr(links.uprobe, "PMU_ROOT", tmp_path)
    with pytest.raises(NotSupportedError, match="no uprobe PMU"):
        links.attach_uprobe(progs.programs["on_call"], uprobe_binary, "main")
    (tmp_path / "uprobe").mkdir()
    (tmp_path / "uprobe" / "type").write_text("9\n")
    with pytest.raises(NotSupportedError, match="no retprobe format bit"):
        links.attach_uprobe(progs.programs["on_call"], uprobe_binary, "main", retprobe=True)


def _insn(op: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", op, dst | src << 4, off, imm)


def _tp_btf_counter(map_fd: int, tgid: int) -> bytes:
    """A tp_btf/sys_enter program, assembled by hand because the loader does not resolve
    tp_btf targets (attach_btf_id) yet: if ctx[1] (the syscall id) is getppid and the caller
    is ``tgid``, add 1 to element 0 of the map."""
    return b"".join(
        [
            _insn(0xBF, 6, 1),  # r6 = r1 (ctx: u64 args[])
            _insn(0x79, 7, 6, 8),  # r7 = ctx[1]: the syscall id
            _insn(0x55, 7, off=12, imm=110),  # if r7 != __NR_getppid goto exit
            _insn(0x85, imm=14),  # call bpf_get_current_pid_tgid
            _insn(0x77, 0, imm=32),  # r0 >>= 32
            _insn(0x55, 0, off=9, imm=tgid),  # if r0 != tgid goto exit
            _insn(0x62, 10, off=-4, imm=0),  # *(u32 *)(r10 - 4) = 0
            _insn(0x18, 1, 1, imm=map_fd),  # r1 = map (ld_imm64, BPF_PSEUDO_MAP_FD)
            _insn(0x00),
            _insn(0xBF, 2, 10),  # r2 = r10
            _insn(0x07, 2, imm=-4),  # r2 += -4
            _insn(0x85, imm=1),  # call bpf_map_lookup_elem
            _insn(0x15, 0, off=2),  # if r0 == 0 goto exit
            _insn(0xB7, 1, imm=1),  # r1 = 1
            _insn(0xDB, 0, 1),  # lock *(u64 *)(r0 + 0) += r1
            _insn(0xB7, 0),  # exit: r0 = 0
            _insn(0x95),
        ]
    )


def test_tp_btf_link(fd_guard: None) -> None:
    from orchestrator.ebpf import btf
    from orchestrator.ebpf._sys import MapType, ProgType
    from orchestrator.ebpf.programs import LoadRequest
    from orchestrator.ebpf.spec import MapSpec

    vmlinux = btf.Spec.parse(Path("/sys/kernel/btf/vmlinux").read_bytes())
    target = vmlinux.type_id(vmlinux.type_by_name("btf_trace_sys_enter"))
    spec = MapSpec(name="tp_btf_n", type=MapType.ARRAY, key_size=4, value_size=8, max_entries=1)
    with ebpf.Map.create(spec) as counter:
        req = LoadRequest(
            name="tp_btf_enter",
            type=ProgType.TRACING,
            instructions=_tp_btf_counter(counter.fd.raw, os.getpid()),
            license="GPL",
            attach_type=AttachType.TRACE_RAW_TP,
            attach_btf_id=target,
        )
        with ebpf.Program.load(req) as prog, links.attach_raw_tracepoint(prog) as link:
            for _ in range(25):
                os.getppid()
            value = counter[0]
            assert isinstance(value, bytes) and int.from_bytes(value, "little") == 25
            info = link.info()
            assert info.type == LinkType.RAW_TRACEPOINT and info.program_id == prog.id
            assert info.target == links.RawTracepointTarget("sys_enter")
            with pytest.raises(AttachError, match="tp_btf programs must not get one"):
                links.attach_raw_tracepoint(prog, "sys_enter")
