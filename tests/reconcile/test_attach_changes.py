"""A change to any field of an attachment is planned, applied and confirmed by the kernel,
never reported as converged while the kernel does something else.

The kernel cannot change the mode of an XDP link (and refuses native and generic programs on
one interface at once), nor move a tcx link or attach one program twice at a hook: a mode
change re-attaches (a short gap), a new tcx position attaches a fresh program instance
make-before-break. Every other field is part of the attachment's key: a new link is attached
and the old one detached."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.ebpf import Map, Program
from orchestrator.ebpf import link as links
from orchestrator.reconcile import ApplyError, Kind, Op, Reconciler
from tests.failpoints import OnStep, run_killed
from tests.netns import UdpReceiver, VethPair, send_udp
from tests.reconcile.conftest import Env, gone, link_alive, pins_under, prog_alive

pytestmark = pytest.mark.kernel


def xdp_manifest(env: Env, veth: VethPair, mode: str, *, take_over: bool = False) -> None:
    extra = ", take_over: true" if take_over else ""
    env.write(
        "xdp",
        f"""
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {{name: xdp}}
        spec:
          object: @BPF@/xdp_counter.o
          maps: {{counters: {{pin: true}}}}
          attach:
            - program: xdp_count
              xdp: {{interface: {veth.b.name}, netns: {veth.b.ns.path}, mode: {mode}{extra}}}
        """,
    )


def kernel_xdp(veth: VethPair) -> links.XDPAttachment:
    state = links.xdp_attached(veth.b.name, veth.b.ns.path)
    assert state is not None
    return state


def converged(r: Reconciler, env: Env, name: str) -> None:
    """Plan after apply is a no-op and status (read from the kernel) reports no drift."""
    p = r.plan(env.desired())
    assert not p.has_changes, str(p)
    st = r.status().get(name)
    assert st is not None and st.condition == "Ready", st


def test_xdp_mode_change_re_attaches_and_the_kernel_confirms_it(
    env: Env, veth: VethPair, fd_guard: None
) -> None:
    r = env.reconciler()
    xdp_manifest(env, veth, "generic")
    r.apply(env.desired())
    before = kernel_xdp(veth)
    assert before.mode == "generic" and before.link_id is not None
    st = r.status().get("xdp")
    assert st is not None
    prog_id = st.program("xdp_count").id

    xdp_manifest(env, veth, "native")
    p = r.plan(env.desired())
    (att,) = p.changes_for("xdp", Kind.ATTACHMENT)
    assert att.op is Op.REPLACE
    assert att.reason.startswith("xdp mode generic -> native: re-attach: link ")
    assert "the interface runs no XDP program for a moment" in att.reason
    assert p.counts() == (1, 0, 1)
    (prog,) = p.changes_for("xdp", Kind.PROGRAM)
    assert prog.op is Op.NOOP  # the program stays: only its link is made anew

    result = r.apply(env.desired())
    assert result.plan.counts() == (1, 0, 1)
    after = kernel_xdp(veth)
    assert after.mode == "native" and after.prog_id == prog_id
    assert after.link_id is not None and after.link_id != before.link_id
    assert gone(link_alive, before.link_id)
    converged(r, env, "xdp")

    # and back: native -> generic
    xdp_manifest(env, veth, "generic")
    (att,) = r.plan(env.desired()).changes_for("xdp", Kind.ATTACHMENT)
    assert att.op is Op.REPLACE and att.reason.startswith("xdp mode native -> generic")
    r.apply(env.desired())
    assert kernel_xdp(veth).mode == "generic"
    converged(r, env, "xdp")
    # the program runs: it counts the packet
    with (
        UdpReceiver(veth.b, 7300) as rx,
        Map.from_pin(env.root / "xdp" / "maps" / "counters") as counters,
    ):
        n = sum(v for v in counters.values() if isinstance(v, int))
        send_udp(veth.a, veth.b, 7300)
        assert rx.drain() == 1
        assert sum(v for v in counters.values() if isinstance(v, int)) > n


def test_a_mode_the_kernel_already_runs_is_recorded_without_a_re_attach(
    env: Env, veth: VethPair, fd_guard: None
) -> None:
    r = env.reconciler()
    xdp_manifest(env, veth, "generic")
    r.apply(env.desired())
    link_id = kernel_xdp(veth).link_id
    # auto accepts the mode the link runs in; take_over only matters when attaching
    xdp_manifest(env, veth, "auto", take_over=True)
    p = r.plan(env.desired())
    (att,) = p.changes_for("xdp", Kind.ATTACHMENT)
    assert att.op is Op.UPDATE
    assert att.reason == f"recorded: link {link_id} stays as it is"
    assert [str(d) for d in att.diffs] == ["mode: generic → auto", "take_over: false → true"]
    assert p.counts() == (0, 1, 0)
    r.apply(env.desired())
    assert kernel_xdp(veth).link_id == link_id and kernel_xdp(veth).mode == "generic"
    converged(r, env, "xdp")


def test_a_failed_apply_after_a_mode_change_puts_the_old_mode_back(
    env: Env, veth: VethPair, fd_guard: None
) -> None:
    r = env.reconciler()
    xdp_manifest(env, veth, "generic")
    r.apply(env.desired())
    before = kernel_xdp(veth)

    def fail(_: str) -> None:
        raise OSError(28, "no space left on device")

    xdp_manifest(env, veth, "native")
    with pytest.raises(ApplyError, match="no space left"):
        env.reconciler(OnStep(record=fail)).apply(env.desired())
    # the same program runs in generic mode again (by a new link, pinned in the old one's
    # place); the record still names the old link, so observe says so and apply repairs it
    now = kernel_xdp(veth)
    assert now.mode == "generic" and now.prog_id == before.prog_id
    assert now.link_id != before.link_id
    st = r.status().get("xdp")
    assert st is not None and st.condition == "Degraded"
    assert "holds link id" in st.message
    r.apply(env.desired())
    after = kernel_xdp(veth)
    assert after.mode == "native" and after.prog_id == before.prog_id
    assert now.link_id is not None and gone(link_alive, now.link_id)
    converged(r, env, "xdp")


@pytest.mark.parametrize("step", ["attach", "record", "release"])
def test_a_crash_during_a_mode_change_converges(
    env: Env, veth: VethPair, step: str, fd_guard: None
) -> None:
    """kill -9 of an apply subprocess: after the old link was detached and before the new
    one exists (attach), before the record is written, before the release. The next apply
    runs the program in the declared mode and nothing is left over."""
    r = env.reconciler()
    xdp_manifest(env, veth, "generic")
    r.apply(env.desired())
    before = kernel_xdp(veth)
    xdp_manifest(env, veth, "native")
    proc = run_killed(step, "apply", str(env.manifests), *env.cli_args())
    assert proc.returncode == -9, (proc.returncode, proc.stderr)
    r.apply(env.desired())
    after = kernel_xdp(veth)
    assert after.mode == "native" and after.prog_id == before.prog_id
    assert not any(p.name.startswith("_staging-") for p in env.root.iterdir())
    converged(r, env, "xdp")
    assert before.link_id is not None and gone(link_alive, before.link_id)


def test_observe_reads_the_xdp_mode_from_the_kernel(
    env: Env, veth: VethPair, fd_guard: None
) -> None:
    r = env.reconciler()
    xdp_manifest(env, veth, "generic")
    r.apply(env.desired())
    link_id = kernel_xdp(veth).link_id
    # a record that disagrees with the kernel (restored from elsewhere, edited): observe
    # believes the kernel
    path = env.state_dir / "state.json"
    data = json.loads(path.read_text())
    (att,) = data["collections"]["xdp"]["attachments"].values()
    assert att["mode"] == "generic" and att["target"]["mode"] == "generic"
    att["mode"] = "native"
    path.write_text(json.dumps(data))
    st = r.status().get("xdp")
    assert st is not None and st.condition == "Drifted" and st.reason == "ModeChanged"
    assert f"xdp link {link_id}: the program runs in generic mode, not in native mode" in (
        st.message
    )
    p = r.plan(env.desired())
    (att_change,) = p.changes_for("xdp", Kind.ATTACHMENT)
    assert att_change.op is Op.REPLACE and "repair drift" in att_change.reason
    r.apply(env.desired())
    assert kernel_xdp(veth).mode == "generic"
    converged(r, env, "xdp")


# ---------------------------------------------------------------------------- tcx order

TWO_TC = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __type(key, __u32);
    __type(value, __u64);
    __uint(max_entries, 8);
} seen SEC(".maps");
const volatile __u32 tag = 7;
static __always_inline int mark(__u32 who)
{
    __u64 one = 1, *v = bpf_map_lookup_elem(&seen, &who);
    if (v)
        __sync_fetch_and_add(v, 1);
    else
        bpf_map_update_elem(&seen, &who, &one, BPF_ANY);
    return -1; /* TC_ACT_UNSPEC: the next program runs */
}
SEC("tc") int tc_a(struct __sk_buff *skb) { return mark(tag); }
SEC("tc") int tc_b(struct __sk_buff *skb) { return mark(tag + 1); }
char LICENSE[] SEC("license") = "GPL";
"""


def tc_manifest(env: Env, obj: Path, veth: VethPair, *entries: tuple[str, str]) -> None:
    """entries: (program, extra tc fields such as ", before: tc_a")."""
    hook = f"interface: {veth.b.name}, netns: {veth.b.ns.path}, direction: ingress"
    attach = "".join(
        f"\n            - program: {prog}\n              tc: {{{hook}{extra}}}"
        for prog, extra in entries
    )
    env.write(
        "tcx",
        f"""
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {{name: tcx}}
        spec:
          object: {obj}
          maps:
            seen: {{pin: true}}
          attach:{attach}
        """,
    )


def hook_order(r: Reconciler, veth: VethPair) -> list[str]:
    """The programs at the hook in the order the kernel runs them, by name."""
    st = r.status().get("tcx")
    assert st is not None
    names = {p.id: p.name for p in st.programs}
    state = links.tcx_attached(veth.b.name, "ingress", veth.b.ns.path)
    return [names.get(i, f"foreign {i}") for i in state.prog_ids]


def test_swapping_the_tcx_order_attaches_a_fresh_instance_make_before_break(
    env: Env, veth: VethPair, compile_bpf: Callable[..., Path], fd_guard: None
) -> None:
    obj = compile_bpf(TWO_TC)
    r = env.reconciler()
    tc_manifest(env, obj, veth, ("tc_a", ""), ("tc_b", ", before: tc_a"))
    r.apply(env.desired())
    assert hook_order(r, veth) == ["tc_b", "tc_a"]
    st = r.status().get("tcx")
    assert st is not None
    ids = {p.name: p.id for p in st.programs}
    map_ids = {m.name: m.id for m in st.maps}
    link_ids = {a.program: a.link_id for a in st.attachments}

    tc_manifest(env, obj, veth, ("tc_b", ""), ("tc_a", ", before: tc_b"))
    p = r.plan(env.desired())
    atts = {c.name.split("@")[0]: c for c in p.changes_for("tcx", Kind.ATTACHMENT)}
    assert atts["tc_a"].op is Op.REPLACE
    assert atts["tc_a"].reason.startswith("tc position appended -> before tc_b: make-before-break")
    assert "a new program instance runs beside the old one for a moment" in atts["tc_a"].reason
    assert atts["tc_b"].op is Op.UPDATE
    assert atts["tc_b"].reason.startswith("recorded: link")
    assert [str(d) for d in atts["tc_b"].diffs] == ["before: tc_a → (none)"]
    assert [str(d) for d in atts["tc_a"].diffs] == ["before: (none) → tc_b"]
    progs = {c.name: c for c in p.changes_for("tcx", Kind.PROGRAM)}
    assert progs["tc_a"].op is Op.REPLACE and "new instance" in progs["tc_a"].reason
    assert progs["tc_b"].op is Op.NOOP
    assert all(c.op is Op.NOOP for c in p.changes_for("tcx", Kind.MAP))

    r.apply(env.desired())
    assert hook_order(r, veth) == ["tc_a", "tc_b"]
    st = r.status().get("tcx")
    assert st is not None
    now = {p.name: p.id for p in st.programs}
    assert now["tc_b"] == ids["tc_b"] and now["tc_a"] != ids["tc_a"]
    assert gone(prog_alive, ids["tc_a"])  # the old instance went with its link
    assert {m.name: m.id for m in st.maps} == map_ids
    new_links = {a.program: a.link_id for a in st.attachments}
    assert new_links["tc_b"] == link_ids["tc_b"] and gone(link_alive, link_ids["tc_a"])
    # the fresh instance shares every map (the hash and the frozen .rodata) with tc_b
    with Program.from_id(now["tc_a"]) as a, Program.from_id(now["tc_b"]) as b:
        assert set(a.info().map_ids) == set(b.info().map_ids)
    converged(r, env, "tcx")
    # both run, in that order, and count into the one map
    with UdpReceiver(veth.b, 7400) as rx:
        send_udp(veth.a, veth.b, 7400)
        assert rx.drain() == 1
    with Map.from_pin(env.root / "tcx" / "maps" / "seen") as seen:
        assert seen[7] >= 1 and seen[8] >= 1

    # and with after: tc_b after tc_a is where it already runs, yet it is placed anew
    tc_manifest(env, obj, veth, ("tc_a", ""), ("tc_b", ", after: tc_a"))
    p = r.plan(env.desired())
    atts = {c.name.split("@")[0]: c for c in p.changes_for("tcx", Kind.ATTACHMENT)}
    assert atts["tc_b"].op is Op.REPLACE and "appended -> after tc_a" in atts["tc_b"].reason
    r.apply(env.desired())
    assert hook_order(r, veth) == ["tc_a", "tc_b"]
    converged(r, env, "tcx")
    r.destroy()
    assert pins_under(env.root) == []
    assert links.tcx_attached(veth.b.name, "ingress", veth.b.ns.path).programs == ()


def test_a_re_attached_anchor_takes_the_links_placed_next_to_it_along(
    env: Env, veth: VethPair, compile_bpf: Callable[..., Path], fd_guard: None
) -> None:
    obj = compile_bpf(TWO_TC)
    r = env.reconciler()
    tc_manifest(env, obj, veth, ("tc_a", ""), ("tc_b", ", after: tc_a"))
    r.apply(env.desired())
    assert hook_order(r, veth) == ["tc_a", "tc_b"]
    st = r.status().get("tcx")
    assert st is not None
    link_a = next(a.link_id for a in st.attachments if a.program == "tc_a")
    # someone detaches tc_a's link: it is re-attached last, so tc_b (after tc_a) must move
    subprocess.run(["bpftool", "link", "detach", "id", str(link_a)], check=True)
    st = r.status().get("tcx")
    assert st is not None and st.condition == "Degraded"
    p = r.plan(env.desired())
    atts = {c.name.split("@")[0]: c for c in p.changes_for("tcx", Kind.ATTACHMENT)}
    assert atts["tc_a"].op is Op.REPLACE and "re-attach" in atts["tc_a"].reason
    assert atts["tc_b"].op is Op.REPLACE
    assert atts["tc_b"].reason.startswith("tc_a is attached anew, so this link is placed after")
    r.apply(env.desired())
    assert hook_order(r, veth) == ["tc_a", "tc_b"]
    converged(r, env, "tcx")


def test_observe_reads_the_tcx_order_from_the_kernel(
    env: Env, veth: VethPair, compile_bpf: Callable[..., Path], fd_guard: None
) -> None:
    obj = compile_bpf(TWO_TC)
    r = env.reconciler()
    tc_manifest(env, obj, veth, ("tc_a", ""), ("tc_b", ", before: tc_a"))
    r.apply(env.desired())
    assert hook_order(r, veth) == ["tc_b", "tc_a"]
    # a record that says tc_b runs after tc_a (restored from elsewhere, edited): observe
    # compares it with the order the kernel reports
    path = env.state_dir / "state.json"
    data = json.loads(path.read_text())
    for att in data["collections"]["tcx"]["attachments"].values():
        if att["program"] == "tc_b":
            att["target"]["before"], att["target"]["after"] = None, "tc_a"
    path.write_text(json.dumps(data))
    st = r.status().get("tcx")
    assert st is not None and st.condition == "Drifted" and st.reason == "OrderChanged"
    assert "runs before tc_a" in st.message and "not after it" in st.message
    r.apply(env.desired())
    assert hook_order(r, veth) == ["tc_b", "tc_a"]
    converged(r, env, "tcx")
