"""The other hook kinds through the reconciler: raw tracepoint and uprobe links (replaced
make-before-break on upgrade), a netns (sk_lookup) link (switched in place), a program swap
on one XDP hook (switched in place), tcx ordering, and the kernel dry run."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.ebpf import Map
from orchestrator.ebpf import link as links
from orchestrator.reconcile import ApplyError, Kind, Op
from tests.netns import UdpReceiver, VethPair, send_udp
from tests.reconcile.conftest import Env, pins_under

pytestmark = pytest.mark.kernel

HOOKS_C = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __type(key, __u32);
    __type(value, __u64);
    __uint(max_entries, 4);
} hits SEC(".maps");

const volatile __u64 gen = 0;
const volatile __u32 only_tgid = 0;

static __always_inline void hit(__u32 idx)
{
    __u64 *v = bpf_map_lookup_elem(&hits, &idx);
    if (v)
        __sync_fetch_and_add(v, 1);
    idx = 3;
    v = bpf_map_lookup_elem(&hits, &idx);
    if (v)
        *v = gen;
}

SEC("raw_tracepoint/sys_enter")
int count_sys(void *ctx)
{
    if ((bpf_get_current_pid_tgid() >> 32) == only_tgid)
        hit(0);
    return 0;
}

SEC("uprobe")
int count_call(void *ctx)
{
    hit(1);
    return 0;
}

SEC("sk_lookup")
int lookup(struct bpf_sk_lookup *ctx)
{
    hit(2);
    return SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";
"""


def libc_path() -> str:
    with open("/proc/self/maps") as f:
        for line in f:
            if "libc.so" in line or "libc-" in line:
                return line.split()[-1]
    raise AssertionError("libc is not mapped")


def hooks_manifest(env: Env, obj: Path, veth: VethPair, gen: int) -> None:
    env.write(
        "hooks",
        f"""
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {{name: hooks}}
        spec:
          object: {obj}
          constants: {{gen: {gen}, only_tgid: {os.getpid()}}}
          maps:
            hits: {{pin: true, preserve: true}}
          attach:
            - program: count_sys
              raw_tracepoint: {{name: sys_enter}}
            - program: count_call
              uprobe: {{path: {libc_path()}, symbol: getppid, pid: {os.getpid()}}}
            - program: lookup
              netns: {{path: {veth.b.ns.path}}}
        """,
    )


def hits(env: Env) -> list[int]:
    with Map.from_pin(env.root / "hooks" / "maps" / "hits") as m:
        out = [m[i] for i in range(4)]
    assert all(isinstance(v, int) for v in out)
    return out  # type: ignore[return-value]


def poke(veth: VethPair) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.getppid()  # a syscall (raw tp) through libc's getppid (uprobe)
    with UdpReceiver(veth.b, 7100) as rx:
        send_udp(veth.a, veth.b, 7100)  # a socket lookup in b's namespace
        assert rx.drain() == 1


def test_raw_tracepoint_uprobe_and_netns_links(
    env: Env, veth: VethPair, compile_bpf: Callable[..., Path], fd_guard: None
) -> None:
    obj = compile_bpf(HOOKS_C)
    hooks_manifest(env, obj, veth, gen=1)
    r = env.reconciler()
    r.apply(env.desired())
    st = r.status().get("hooks")
    assert st is not None and st.condition == "Ready", st
    kinds = {a.kind: a.link_id for a in st.attachments}
    assert set(kinds) == {"raw_tracepoint", "uprobe", "netns"}
    before = hits(env)
    poke(veth)
    after = hits(env)
    assert after[0] > before[0] and after[1] == before[1] + 1 and after[2] > before[2]
    assert after[3] == 1

    hooks_manifest(env, obj, veth, gen=2)
    p = r.plan(env.desired())
    ops = {c.name.split("@")[1].split(":")[0]: c for c in p.changes_for("hooks", Kind.ATTACHMENT)}
    assert (
        ops["raw_tracepoint"].op is Op.REPLACE
        and "make-before-break" in ops["raw_tracepoint"].reason
    )
    assert ops["uprobe"].op is Op.REPLACE
    assert ops["netns"].op is Op.UPDATE
    r.apply(env.desired())
    st = r.status().get("hooks")
    assert st is not None and st.condition == "Ready"
    now = {a.kind: a.link_id for a in st.attachments}
    assert now["netns"] == kinds["netns"]  # in place
    assert now["raw_tracepoint"] != kinds["raw_tracepoint"]
    assert now["uprobe"] != kinds["uprobe"]
    # the old make-before-break links are gone
    live = {info.id for info in links.iter_links()}
    assert kinds["raw_tracepoint"] not in live and kinds["uprobe"] not in live
    before = hits(env)
    poke(veth)
    after = hits(env)
    assert after[1] == before[1] + 1  # exactly one uprobe link runs
    assert after[3] == 2
    r.destroy()
    assert pins_under(env.root) == []
    live = {info.id for info in links.iter_links()}
    assert not set(now.values()) & live


def test_program_swap_on_one_xdp_hook_is_in_place(env: Env, veth: VethPair, fd_guard: None) -> None:
    """Attaching another program of the collection to the same interface switches the one
    link (an XDP hook takes one program: attaching a second would be refused)."""

    def manifest(program: str) -> None:
        env.write(
            "tail",
            f"""
            apiVersion: bpforch.dev/v1
            kind: Collection
            metadata: {{name: tail}}
            spec:
              object: @BPF@/tailcall.o
              attach:
                - program: {program}
                  xdp: {{interface: {veth.b.name}, netns: {veth.b.ns.path}, mode: generic}}
            """,
        )

    r = env.reconciler()
    manifest("tail_pass")
    r.apply(env.desired())
    st = r.status().get("tail")
    assert st is not None
    link_id = st.attachments[0].link_id
    with UdpReceiver(veth.b, 7200) as rx:
        send_udp(veth.a, veth.b, 7200)
        assert rx.drain() == 1
        manifest("tail_drop")
        p = r.plan(env.desired())
        (att,) = p.changes_for("tail", Kind.ATTACHMENT)
        assert att.op is Op.UPDATE and "from tail_pass to tail_drop" in att.reason
        r.apply(env.desired())
        st = r.status().get("tail")
        assert st is not None and st.condition == "Ready"
        assert st.attachments[0].link_id == link_id and st.attachments[0].program == "tail_drop"
        send_udp(veth.a, veth.b, 7200)
        assert rx.drain() == 1  # dropped by tail_drop
    state = links.xdp_attached(veth.b.name, veth.b.ns.path)
    assert state is not None and state.prog_id == st.program("tail_drop").id


def test_tcx_programs_keep_their_declared_order(env: Env, veth: VethPair, fd_guard: None) -> None:
    env.write(
        "tc",
        f"""
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {{name: tc}}
        spec:
          object: @BPF@/tc_filter.o
          attach:
            - program: tc_ingress
              tc: {{interface: {veth.b.name}, netns: {veth.b.ns.path}, direction: ingress}}
        ---
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {{name: tc-first}}
        spec:
          object: @BPF@/tc_filter.o
          attach:
            - program: tc_ingress
              tc: {{interface: {veth.b.name}, netns: {veth.b.ns.path}, direction: ingress}}
        """,
    )
    r = env.reconciler()
    r.apply(env.desired())
    st = r.status()
    hook = links.tcx_attached(veth.b.name, "ingress", netns=veth.b.ns.path)
    ids = {c.name: c.program("tc_ingress").id for c in st.collections}
    assert set(hook.prog_ids) == set(ids.values())
    # an upgrade switches each link in place: the order at the hook is unchanged
    order = hook.prog_ids
    text = (env.manifests / "tc.yaml").read_text()
    first, rest = text.split("---", 1)
    # a bigger blocked_ports map in one collection: its program is reloaded
    first = first.replace("  attach:", "  maps: {blocked_ports: {max_entries: 2048}}\n  attach:")
    env.write("tc", first + "---" + rest)
    r.apply(env.desired())
    st = r.status()
    new_ids = {c.name: c.program("tc_ingress").id for c in st.collections}
    hook = links.tcx_attached(veth.b.name, "ingress", netns=veth.b.ns.path)
    assert new_ids["tc-first"] == ids["tc-first"] and new_ids["tc"] != ids["tc"]
    assert hook.prog_ids == tuple(new_ids["tc"] if i == ids["tc"] else i for i in order)


def test_kernel_dry_run(
    env: Env, veth: VethPair, compile_bpf: Callable[..., Path], fd_guard: None
) -> None:
    from tests.reconcile.test_apply import xdp_manifest
    from tests.reconcile.test_faults import EXTRA_C

    xdp_manifest(env, veth)
    r = env.reconciler()
    result = r.apply(env.desired(), dry_run="kernel")
    assert not result.applied and result.plan.has_changes
    assert pins_under(env.root) == [] and not (env.state_dir / "state.json").exists()
    bad = compile_bpf(
        EXTRA_C.replace("NAME", "dry_bad").replace("CHECK", "if (!v) return 0; v += 1;")
    )
    env.write(
        "bad",
        f"""
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {{name: bad}}
        spec:
          object: {bad}
        """,
    )
    with pytest.raises(ApplyError) as info:
        r.apply(env.desired(), dry_run="kernel")
    assert "collection bad (" in str(info.value) and "kernel dry run" in str(info.value)
    assert pins_under(env.root) == []
