"""Upgrades under traffic: the XDP link is switched in place, preserved maps keep counting."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.ebpf import Map
from orchestrator.reconcile import Kind, Op
from tests.netns import Cgroup, UdpReceiver, UdpStream, VethPair
from tests.reconcile.conftest import Env, prog_alive
from tests.reconcile.test_apply import tp_manifest, xdp_manifest

pytestmark = pytest.mark.kernel


def test_upgrade_under_traffic_loses_nothing(env: Env, veth: VethPair, fd_guard: None) -> None:
    r = env.reconciler()
    xdp_manifest(env, veth, version=1)
    r.apply(env.desired())
    status = r.status().get("xdp-counter")
    assert status is not None
    link_id = status.attachments[0].link_id
    map_id = status.map("counters").id
    prog_ids = [status.programs[0].id]

    with UdpReceiver(veth.b, 5000) as rx:
        stream = UdpStream(veth.a, veth.b, 5000, interval=0.0002).start()
        try:
            stream.wait_for(50)
            for version in range(2, 22):
                xdp_manifest(env, veth, version=version)
                result = r.apply(env.desired())
                change = result.plan.change(
                    "xdp-counter",
                    Kind.ATTACHMENT,
                    result.plan.changes_for("xdp-counter", Kind.ATTACHMENT)[0].name,
                )
                assert change is not None and change.op is Op.UPDATE
                st = r.status().get("xdp-counter")
                assert st is not None and st.condition == "Ready"
                assert st.generation == version
                assert st.attachments[0].link_id == link_id  # in place: same link
                assert st.map("counters").id == map_id  # preserved: same map
                assert st.programs[0].id not in prog_ids
                prog_ids.append(st.programs[0].id)
                time.sleep(0.01)
        finally:
            sent = stream.stop()
        received = rx.drain(settle=0.2)

    with Map.from_pin(env.root / "xdp-counter" / "maps" / "counters") as counters:
        packets = counters[0]
        last_version = counters[2]
    assert sent > 100
    assert received == sent  # nothing dropped on the wire
    assert packets == sent  # every packet ran through one of the programs: 0 lost
    assert last_version == 21
    # old generations are released (their programs freed), the live one is not
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and any(prog_alive(i) for i in prog_ids[:-1]):
        time.sleep(0.02)
    assert [i for i in prog_ids[:-1] if prog_alive(i)] == []
    assert prog_alive(prog_ids[-1])


def test_tracepoint_upgrade_is_make_before_break(env: Env, fd_guard: None) -> None:
    import os

    r = env.reconciler()
    tp_manifest(env, tgid=os.getpid())
    r.apply(env.desired())
    st = r.status().get("tp-counter")
    assert st is not None
    old_link = st.attachments[0].link_id
    with Map.from_pin(env.root / "tp-counter" / "maps" / "calls") as calls:
        start = calls[0]
        tp_manifest(env, tgid=os.getpid() + 0)  # same manifest: nothing to do
        assert not r.plan(env.desired()).has_changes
        text = (env.manifests / "tp-counter.yaml").read_text()
        assert "maps: {calls: {pin: true}}" in text
        # a bigger calls map: the programs are reloaded
        env.write(
            "tp-counter",
            text.replace("{calls: {pin: true}}", "{calls: {pin: true, max_entries: 2}}"),
        )
        p = r.plan(env.desired())
        att = p.changes_for("tp-counter", Kind.ATTACHMENT)[0]
        assert att.op is Op.REPLACE and "make-before-break" in att.reason
        r.apply(env.desired())
        st = r.status().get("tp-counter")
        assert st is not None and st.condition == "Ready"
        assert st.attachments[0].link_id != old_link
        # calls is not preserved: the new generation counts from zero in a new map
        os.getppid()
    with Map.from_pin(env.root / "tp-counter" / "maps" / "calls") as calls:
        assert calls[0] == 1
    assert isinstance(start, int)


def test_metadata_or_attachment_changes_keep_programs_and_maps(
    env: Env, veth: VethPair, fd_guard: None
) -> None:
    """Only labels change: the record moves to the next generation, nothing is reloaded or
    re-attached. A new attachment: only that link is made."""
    import os

    r = env.reconciler()
    xdp_manifest(env, veth)
    r.apply(env.desired())
    st = r.status().get("xdp-counter")
    assert st is not None
    ids = (st.program("xdp_count").id, st.map("counters").id, st.attachments[0].link_id)

    text = (env.manifests / "xdp-counter.yaml").read_text()
    env.write(
        "xdp-counter", text.replace("name: xdp-counter}", "name: xdp-counter, labels: {a: b}}")
    )
    p = r.plan(env.desired())
    assert p.collection_op("xdp-counter") is Op.UPDATE
    assert "programs and maps are kept" in p.changes[0].reason
    assert all(c.op is Op.NOOP for c in p.changes[1:]), p
    assert p.counts() == (0, 0, 0)
    r.apply(env.desired())
    st = r.status().get("xdp-counter")
    assert st is not None and st.condition == "Ready" and st.generation == 2
    assert (st.program("xdp_count").id, st.map("counters").id, st.attachments[0].link_id) == ids
    assert not r.plan(env.desired()).has_changes

    # one more attachment: the XDP program also on lo (same namespace)
    text = (env.manifests / "xdp-counter.yaml").read_text()
    extra = (
        "    - program: xdp_count\n"
        f"      xdp: {{interface: lo, netns: {veth.b.ns.path}, mode: generic}}\n"
    )
    env.write("xdp-counter", text + extra)
    p = r.plan(env.desired())
    created = [c for c in p.changes if c.op is not Op.NOOP and c.kind is not Kind.COLLECTION]
    assert [(c.kind, c.op) for c in created] == [(Kind.ATTACHMENT, Op.CREATE)]
    r.apply(env.desired())
    st = r.status().get("xdp-counter")
    assert st is not None and st.condition == "Ready" and len(st.attachments) == 2
    assert st.program("xdp_count").id == ids[0]
    assert ids[2] in {a.link_id for a in st.attachments}
    with UdpReceiver(veth.b, 5100) as rx:
        from tests.netns import send_udp

        send_udp(veth.a, veth.b, 5100, count=3)
        assert rx.drain() == 3
    with Map.from_pin(env.root / "xdp-counter" / "maps" / "counters") as counters:
        assert counters[0] == 3

    # and removing it again detaches only that link
    env.write("xdp-counter", text)
    r.apply(env.desired())
    st = r.status().get("xdp-counter")
    assert st is not None and [a.link_id for a in st.attachments] == [ids[2]]
    assert os.path.exists(env.root / "xdp-counter" / "progs" / "xdp_count")


TWO_C = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, __u32); __type(value, __u64);
         __uint(max_entries, 1); } used SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_HASH); __type(key, __u32); __type(value, __u64);
         __uint(max_entries, 8); } table SEC(".maps");
const volatile __u64 gen = 0;
SEC("tracepoint/syscalls/sys_enter_getppid") int bound(void *ctx)
{ __u32 k = 0; __u64 *v = bpf_map_lookup_elem(&used, &k); if (v) *v = gen; return 0; }
SEC("tracepoint/syscalls/sys_enter_getppid") int unbound(void *ctx)
{ __u32 k = 0; __u64 one = 1; bpf_map_update_elem(&table, &k, &one, 0); return 0; }
char LICENSE[] SEC("license") = "GPL";
"""


def test_program_binding_keeps_preserved_maps_it_does_not_use(
    env: Env, compile_bpf: Callable[..., Path], fd_guard: None
) -> None:
    obj = compile_bpf(TWO_C)

    def manifest(gen: int) -> None:
        env.write(
            "two",
            f"""
            apiVersion: bpforch.dev/v1
            kind: Collection
            metadata: {{name: two}}
            spec:
              object: {obj}
              programs: [bound]
              constants: {{gen: {gen}}}
              maps:
                table: {{pin: true, preserve: true}}
            """,
        )

    r = env.reconciler()
    manifest(1)
    r.apply(env.desired())
    st = r.status().get("two")
    assert st is not None and [p.name for p in st.programs] == ["bound"]
    table_id = st.map("table").id
    with Map.from_pin(env.root / "two" / "maps" / "table") as table:
        table[7] = 42
    manifest(2)
    r.apply(env.desired())
    st = r.status().get("two")
    assert st is not None and st.generation == 2 and st.map("table").id == table_id
    with Map.from_pin(env.root / "two" / "maps" / "table") as table:
        assert table[7] == 42


def test_cgroup_link_is_switched_in_place(env: Env, cgroup: Cgroup, fd_guard: None) -> None:
    from tests.reconcile.test_apply import cgroup_manifest

    r = env.reconciler()
    cgroup_manifest(env, cgroup)
    r.apply(env.desired())
    st = r.status().get("cgroup-egress")
    assert st is not None
    link_id, prog_id = st.attachments[0].link_id, st.program("cg_egress").id
    text = (env.manifests / "cgroup-egress.yaml").read_text()
    bigger = "{egress_stats: {pin: true, max_entries: 4}}"
    env.write("cgroup-egress", text.replace("{egress_stats: {pin: true}}", bigger))
    p = r.plan(env.desired())
    assert p.changes_for("cgroup-egress", Kind.ATTACHMENT)[0].op is Op.UPDATE
    r.apply(env.desired())
    st = r.status().get("cgroup-egress")
    assert st is not None and st.condition == "Ready"
    assert st.attachments[0].link_id == link_id and st.program("cg_egress").id != prog_id
    cgroup.run_python(
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.sendto(b'x', ('127.0.0.1', 9))"
    )
    with Map.from_pin(env.root / "cgroup-egress" / "maps" / "egress_stats") as stats:
        assert stats[0] == 1


def test_incompatible_preserved_map_is_refused_unless_recreate(
    env: Env, veth: VethPair, fd_guard: None
) -> None:
    from orchestrator.reconcile import PlanError

    r = env.reconciler()
    xdp_manifest(env, veth)
    r.apply(env.desired())
    st = r.status().get("xdp-counter")
    assert st is not None
    old = st.map("counters").id
    text = (env.manifests / "xdp-counter.yaml").read_text()
    assert "counters: {pin: true, preserve: true}" in text
    env.write(
        "xdp-counter",
        text.replace(
            "counters: {pin: true, preserve: true}",
            "counters: {pin: true, preserve: true, max_entries: 8}",
        ),
    )
    with pytest.raises(PlanError) as info:
        r.apply(env.desired())
    assert "max entries 4 -> 8" in str(info.value) and "xdp-counter.yaml:" in str(info.value)
    st = r.status().get("xdp-counter")
    assert st is not None and st.generation == 1 and st.map("counters").id == old
    env.write(
        "xdp-counter",
        text.replace(
            "counters: {pin: true, preserve: true}",
            "counters: {pin: true, preserve: true, max_entries: 8, on_incompatible: recreate}",
        ),
    )
    p = r.plan(env.desired())
    c = p.change("xdp-counter", Kind.MAP, "counters")
    assert c is not None and c.op is Op.REPLACE and "contents are lost" in c.reason
    r.apply(env.desired())
    st = r.status().get("xdp-counter")
    assert st is not None and st.generation == 2
    assert st.map("counters").id != old and st.map("counters").max_entries == 8
