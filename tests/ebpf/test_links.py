"""Links: attaching programs to the kernel's hooks, in namespaces and cgroups the tests make.

Every test attaches only inside namespaces/cgroups created by ``tests/netns.py`` fixtures,
pins only under ``pin_dir``, and checks with ``fd_guard`` that nothing leaks.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator import ebpf
from orchestrator.ebpf import links
from orchestrator.ebpf.links import (
    AttachConflictError,
    AttachError,
    LinkID,
    ProgramID,
    TargetNotFoundError,
)
from orchestrator.ebpf.netlink import in_netns, netns_inode
from orchestrator.ebpf.sys import AttachType, LinkType
from tests.conftest import obj, require_tool
from tests.netns import Cgroup, UdpReceiver, UdpStream, VethPair, send_udp

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
        link.detach()
        assert links.xdp_attached(veth.b.name, netns=veth.b.ns.path) is None
        send_udp(veth.a, veth.b, PORT, count=3)
        time.sleep(0.05)
        assert hits(progs, 1) == 0
        # the hook is free again for someone else
        with links.attach_xdp(progs.programs["xdp_b"], veth.b.name, netns=veth.b.ns.path):
            pass


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
