"""End to end against the real kernel: apply the example objects in namespaces and a cgroup
the tests make, see them work, read status, destroy and check that nothing is left."""

from __future__ import annotations

import json
import os
import time

import pytest

from orchestrator.ebpf import Map
from orchestrator.reconcile import Op, Reconciler
from tests.netns import Cgroup, UdpReceiver, VethPair, send_udp
from tests.reconcile.conftest import Env, link_alive, map_alive, pins_under, prog_alive

pytestmark = pytest.mark.kernel


def xdp_manifest(env: Env, veth: VethPair, version: int = 1, name: str = "xdp-counter") -> None:
    env.write(
        name,
        f"""
        apiVersion: bpforch/v1
        kind: Collection
        metadata: {{name: {name}}}
        spec:
          object: @BPF@/xdp_counter.o
          constants: {{version: {version}}}
          maps:
            counters: {{pin: true, preserve: true}}
          attach:
            - program: xdp_count
              xdp: {{interface: {veth.b.name}, netns: {veth.b.ns.path}, mode: generic}}
        """,
    )


def tc_manifest(env: Env, veth: VethPair) -> None:
    env.write(
        "tc-filter",
        f"""
        apiVersion: bpforch/v1
        kind: Collection
        metadata: {{name: tc-filter}}
        spec:
          object: @BPF@/tc_filter.o
          maps:
            blocked_ports: {{pin: true, preserve: true}}
            stats: {{pin: true, preserve: true}}
          attach:
            - program: tc_ingress
              tc: {{interface: {veth.b.name}, netns: {veth.b.ns.path}, direction: ingress}}
        """,
    )


def tp_manifest(env: Env, tgid: int = 0) -> None:
    env.write(
        "tp-counter",
        f"""
        apiVersion: bpforch/v1
        kind: Collection
        metadata: {{name: tp-counter}}
        spec:
          object: @BPF@/tp_counter.o
          constants: {{target_tgid: {tgid}}}
          attach:
            - program: count_getppid
              tracepoint: {{group: syscalls, name: sys_enter_getppid}}
        """,
    )


def cgroup_manifest(env: Env, cg: Cgroup) -> None:
    env.write(
        "cgroup-egress",
        f"""
        apiVersion: bpforch/v1
        kind: Collection
        metadata: {{name: cgroup-egress}}
        spec:
          object: @BPF@/cgroup_egress.o
          attach:
            - program: cg_egress
              cgroup: {{path: {cg.path}, attach: egress}}
        """,
    )


def shared_manifests(env: Env) -> None:
    env.write(
        "shared",
        """
        apiVersion: bpforch/v1
        kind: Collection
        metadata: {name: shared-owner}
        spec:
          object: @BPF@/shared_owner.o
          maps:
            shared_stats: {pin: true, preserve: true}
          attach:
            - program: count_getpid
              tracepoint: {group: syscalls, name: sys_enter_getpid}
        ---
        apiVersion: bpforch/v1
        kind: Collection
        metadata: {name: shared-user}
        spec:
          object: @BPF@/shared_user.o
          maps:
            shared_stats:
              from: {collection: shared-owner, map: shared_stats}
          attach:
            - program: count_gettid
              tracepoint: {group: syscalls, name: sys_enter_gettid}
        """,
    )


def counter(env: Env, coll: str, mapname: str, key: int) -> int:
    with Map.from_pin(env.root / coll / "maps" / mapname) as m:
        v = m[key]
    assert isinstance(v, int)
    return v


def test_apply_all_examples_then_destroy(
    env: Env, veth: VethPair, cgroup: Cgroup, fd_guard: None
) -> None:
    xdp_manifest(env, veth)
    tc_manifest(env, veth)
    tp_manifest(env, tgid=os.getpid())
    cgroup_manifest(env, cgroup)
    shared_manifests(env)
    r = env.reconciler()
    desired = env.desired()

    p = r.plan(desired)
    assert not p.problems, p.problems
    names = p.collections(Op.CREATE)
    # the map owner comes before the collection that substitutes its map
    assert names.index("shared-owner") < names.index("shared-user")
    result = r.apply(desired)
    assert result.applied
    assert result.generations == {n: 1 for n in desired.collections}

    # XDP and tc see real UDP across the veth; a blocked port is dropped by tc
    with Map.from_pin(env.root / "tc-filter" / "maps" / "blocked_ports") as blocked:
        blocked[4001] = 1
    with UdpReceiver(veth.b, 4000) as ok, UdpReceiver(veth.b, 4001) as dropped:
        send_udp(veth.a, veth.b, 4000, count=10)
        send_udp(veth.a, veth.b, 4001, count=5)
        assert ok.drain() == 10
        assert dropped.drain() == 0
    assert counter(env, "xdp-counter", "counters", 0) == 15
    assert counter(env, "xdp-counter", "counters", 2) == 1  # version
    assert counter(env, "tc-filter", "stats", 0) == 10
    assert counter(env, "tc-filter", "stats", 1) == 5

    # tracepoint: only this process (target_tgid) is counted
    before = counter(env, "tp-counter", "calls", 0)
    for _ in range(7):
        os.getppid()
    assert counter(env, "tp-counter", "calls", 0) == before + 7

    # cgroup egress: a process in the cgroup sends 3 datagrams
    cgroup.run_python(
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for _ in range(3): s.sendto(b'x', ('127.0.0.1', 9))"
    )
    assert counter(env, "cgroup-egress", "egress_stats", 0) >= 3

    # shared map: both programs count into the owner's map
    with Map.from_pin(env.root / "shared-owner" / "maps" / "shared_stats") as shared:
        p0, p1 = shared[0], shared[1]
        os.getpid()
        import threading

        threading.get_native_id()
        assert isinstance(p0, int) and isinstance(p1, int)
        time.sleep(0.01)
        assert shared[0] > p0  # type: ignore[operator]

    status = r.status()
    doc = json.loads(json.dumps(status.to_json()))
    assert sorted(c["name"] for c in doc["collections"]) == sorted(desired.collections)
    for c in status.collections:
        assert c.condition == "Ready", c.message
        assert c.generation == 1 and c.digest == desired.collections[c.name].digest
        assert all(a.alive for a in c.attachments)
    user = status.get("shared-user")
    owner = status.get("shared-owner")
    assert user is not None and owner is not None
    # substitution: the user's map is the owner's map (same id)
    assert user.map("shared_stats").id == owner.map("shared_stats").id
    assert user.map("shared_stats").source == "collection/shared-owner/shared_stats"
    tc = status.get("tc-filter")
    assert tc is not None
    assert {m.name: m.entries for m in tc.maps}["blocked_ports"] == 1

    ids = [(p.id, "prog") for c in status.collections for p in c.programs]
    ids += [(a.link_id, "link") for c in status.collections for a in c.attachments]
    ids += [(m.id, "map") for c in status.collections for m in c.maps]

    # a second apply with nothing changed is a no-op
    again = r.apply(env.desired())
    assert not again.applied and not again.plan.has_changes

    gone = r.destroy()
    assert gone.applied and gone.generations == {}
    assert pins_under(env.root) == []
    assert r.status().collections == ()
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and any(
        (prog_alive if kind == "prog" else link_alive if kind == "link" else map_alive)(i)
        for i, kind in ids
    ):
        time.sleep(0.02)  # programs and maps are freed after an RCU grace period
    for i, kind in ids:
        alive = {"prog": prog_alive, "link": link_alive, "map": map_alive}[kind](i)
        assert not alive, f"{kind} {i} is still alive after destroy"


def test_second_reconciler_sees_what_the_first_applied(env: Env, veth: VethPair) -> None:
    xdp_manifest(env, veth)
    env.reconciler().apply(env.desired())
    fresh = Reconciler(bpffs_root=env.root, state_dir=env.state_dir)
    p = fresh.plan(env.desired())
    assert not p.has_changes
    st = fresh.status().get("xdp-counter")
    assert st is not None and st.condition == "Ready"
