"""Restart and drift: a fresh reconciler adopts what an earlier process applied; changes made
behind bpforch's back are reported by status/plan and repaired by the next apply."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from orchestrator.ebpf import Map
from orchestrator.ebpf import link as links
from orchestrator.reconcile import Kind, Op, Reconciler
from tests.conftest import ROOT, require_tool
from tests.failpoints import OnStep
from tests.netns import UdpReceiver, VethPair, send_udp
from tests.reconcile.conftest import Env
from tests.reconcile.test_apply import xdp_manifest

pytestmark = pytest.mark.kernel


def packets(env: Env) -> int:
    with Map.from_pin(env.root / "xdp-counter" / "maps" / "counters") as m:
        v = m[0]
    assert isinstance(v, int)
    return v


def traffic(veth: VethPair, n: int = 3) -> None:
    with UdpReceiver(veth.b, 7000) as rx:
        send_udp(veth.a, veth.b, 7000, count=n)
        assert rx.drain() == n


def apply_in_subprocess(env: Env) -> None:
    code = (
        "import sys; from pathlib import Path\n"
        "from orchestrator.manifest import load_manifests\n"
        "from orchestrator.reconcile import Reconciler\n"
        "r = Reconciler(bpffs_root=Path(sys.argv[1]), state_dir=Path(sys.argv[2]))\n"
        "r.apply(load_manifests([Path(sys.argv[3])]))\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(env.root), str(env.state_dir), str(env.manifests)],
        cwd=ROOT,
        check=True,
        timeout=60,
    )


def test_restart_adopts_and_detects_a_detached_xdp_link(
    env: Env, veth: VethPair, fd_guard: None
) -> None:
    xdp_manifest(env, veth)
    apply_in_subprocess(env)  # another process applied; it is gone now

    r = Reconciler(bpffs_root=env.root, state_dir=env.state_dir)
    st = r.status().get("xdp-counter")
    assert st is not None and st.condition == "Ready" and st.generation == 1
    assert not r.plan(env.desired()).has_changes
    link_id = st.attachments[0].link_id
    traffic(veth)
    assert packets(env) == 3

    # ip cannot take XDP away from a link: the kernel refuses, nothing drifts
    ip = require_tool("ip")
    proc = veth.b.ns.run([ip, "link", "set", "dev", veth.b.name, "xdpgeneric", "off"], check=False)
    assert proc.returncode != 0 and "active BPF XDP link" in proc.stderr
    veth.b.ns.run([ip, "link", "set", "dev", veth.b.name, "xdp", "off"], check=False)
    state = links.xdp_attached(veth.b.name, veth.b.ns.path)
    assert state is not None and state.link_id == link_id
    st = r.status().get("xdp-counter")
    assert st is not None and st.condition == "Ready"

    # detached by hand (bpftool link detach): drift, reported and repaired
    bpftool = require_tool("bpftool")
    subprocess.run([bpftool, "link", "detach", "id", str(link_id)], check=True)
    assert links.xdp_attached(veth.b.name, veth.b.ns.path) is None
    st = r.status().get("xdp-counter")
    assert st is not None
    assert st.condition == "Degraded" and st.reason == "LinkDetached"
    assert f"link {link_id} was detached" in st.message
    assert st.attachments[0].alive is False
    assert st.observed_generation == st.generation - 1
    p = r.plan(env.desired())
    assert p.collection_op("xdp-counter") is Op.UPDATE
    assert "repair drift" in p.changes[0].reason
    att = p.changes_for("xdp-counter", Kind.ATTACHMENT)[0]
    assert att.op is Op.REPLACE and "re-attach" in att.reason

    r.apply(env.desired())
    st = r.status().get("xdp-counter")
    assert st is not None and st.condition == "Ready" and st.generation == 2
    assert st.attachments[0].link_id != link_id
    state = links.xdp_attached(veth.b.name, veth.b.ns.path)
    assert state is not None and state.link_id == st.attachments[0].link_id
    traffic(veth)
    assert packets(env) == 6  # the preserved map kept counting
    assert not r.plan(env.desired()).has_changes


def test_removed_pins_are_drift_and_repaired(env: Env, veth: VethPair, fd_guard: None) -> None:
    xdp_manifest(env, veth)
    r = env.reconciler()
    r.apply(env.desired())
    st = r.status().get("xdp-counter")
    assert st is not None
    link_id = st.attachments[0].link_id

    # a program pin removed: the link still runs it (Drifted, not Degraded)
    os.unlink(env.root / "xdp-counter" / "progs" / "xdp_count")
    st = r.status().get("xdp-counter")
    assert st is not None and st.condition == "Drifted" and st.reason == "PinMissing"
    assert "progs/xdp_count is missing" in st.message
    r.apply(env.desired())
    st = r.status().get("xdp-counter")
    assert st is not None and st.condition == "Ready"
    assert st.attachments[0].link_id == link_id  # repaired in place

    # the link pin removed: the kernel releases the link (XDP is gone): Degraded
    os.unlink(env.root / "xdp-counter" / st.attachments[0].pin.rsplit("xdp-counter/", 1)[1])
    st = r.status().get("xdp-counter")
    assert st is not None and st.condition == "Degraded"
    r.apply(env.desired())
    st = r.status().get("xdp-counter")
    assert st is not None and st.condition == "Ready"
    traffic(veth)
    assert packets(env) == 3


def test_staging_leftovers_are_removed_and_look_alikes_are_foreign(
    env: Env, veth: VethPair, fd_guard: None
) -> None:
    """A leftover of an interrupted apply carries its ownership marker and is removed by the
    next apply. A directory that only looks like a leftover or a collection (a name and a
    layout are no proof) is foreign: reported, never touched, not even by prune or destroy.
    (Before ownership markers, such look-alikes were removed as garbage and orphans.)"""
    xdp_manifest(env, veth)
    r = env.reconciler()
    r.apply(env.desired())

    def fail(_: str) -> None:
        raise RuntimeError("injected failure at release")

    xdp_manifest(env, veth, version=2)
    result = env.reconciler(OnStep(release=fail)).apply(env.desired())
    assert result.applied and "injected failure at release" in result.warnings[0]
    (leftover,) = [p for p in env.root.iterdir() if p.name.startswith("_staging-")]
    (env.root / "_staging-999-empty").mkdir()  # killed between its mkdir and its marker
    (env.root / "_staging-999-dead" / "xdp-counter").mkdir(parents=True)
    (env.root / "zombie" / "maps").mkdir(parents=True)
    foreign = {
        f"{env.root}/_staging-999-dead": "no ownership marker: not made by bpforch",
        f"{env.root}/zombie": "no ownership marker: not made by bpforch (it only looks like a "
        "collection)",
    }
    actual = r.observe()
    assert sorted(p.name for p in actual.staging) == sorted([leftover.name, "_staging-999-empty"])
    assert {str(f.path): f.what for f in actual.foreign} == foreign
    st = r.status()
    assert len(st.garbage) == 2 and {str(f.path): f.what for f in st.foreign} == foreign
    p = r.plan(env.desired())
    assert not p.has_changes and len(p.garbage) == 2
    r.apply(env.desired())  # removes the leftovers of ours
    assert not leftover.exists() and not (env.root / "_staging-999-empty").exists()
    assert (env.root / "_staging-999-dead" / "xdp-counter").is_dir()
    r.apply(env.desired(), prune=True)
    r.destroy()
    assert (env.root / "zombie" / "maps").is_dir()  # not ours: never touched
    assert (env.root / "_staging-999-dead" / "xdp-counter").is_dir()
    for d in ("zombie/maps", "zombie", "_staging-999-dead/xdp-counter", "_staging-999-dead"):
        (env.root / d).rmdir()
    assert os.listdir(env.root) == []  # destroy gave the root up: no owner marker is left


def test_whole_tree_removed_is_rebuilt(env: Env, veth: VethPair, fd_guard: None) -> None:
    """Someone removed bpforch's directory: every pin is drift; the next apply rebuilds the
    collection (the preserved map's contents are gone with it, and the plan says so)."""
    from orchestrator.ebpf.inspect import remove_tree

    xdp_manifest(env, veth)
    r = env.reconciler()
    r.apply(env.desired())
    traffic(veth)
    remove_tree(env.root / "xdp-counter")
    st = r.status().get("xdp-counter")
    assert st is not None and st.condition == "Degraded"
    p = r.plan(env.desired())
    counters = p.change("xdp-counter", Kind.MAP, "counters")
    assert counters is not None and counters.op is Op.REPLACE
    assert "recreated empty" in counters.reason
    r.apply(env.desired())
    st = r.status().get("xdp-counter")
    assert st is not None and st.condition == "Ready"
    traffic(veth, 2)
    assert packets(env) == 2


def test_a_replaced_program_pin_is_drift(env: Env, veth: VethPair, fd_guard: None) -> None:
    """Someone pinned another program where ours was: reported as replaced, repaired."""
    from orchestrator import ebpf

    xdp_manifest(env, veth)
    r = env.reconciler()
    r.apply(env.desired())
    pin = env.root / "xdp-counter" / "progs" / "xdp_count"
    os.unlink(pin)
    with ebpf.load_collection(ROOT / "bpf" / "xdp_counter.o") as other:
        other.programs["xdp_count"].pin(pin)
        other_id = other.programs["xdp_count"].id
    st = r.status().get("xdp-counter")
    assert st is not None and st.condition == "Drifted" and st.reason == "PinReplaced"
    assert f"holds program id {other_id}" in st.message
    r.apply(env.desired())
    st = r.status().get("xdp-counter")
    assert st is not None and st.condition == "Ready"
    assert st.program("xdp_count").id != other_id


def test_interface_removed_is_degraded_and_a_plan_problem(
    env: Env, veth: VethPair, fd_guard: None
) -> None:
    import time

    xdp_manifest(env, veth)
    r = env.reconciler()
    r.apply(env.desired())
    veth.b.ns.ip("link", "del", veth.b.name)
    deadline = time.monotonic() + 2
    st = r.status().get("xdp-counter")
    while st is not None and st.condition == "Ready" and time.monotonic() < deadline:
        time.sleep(0.02)  # the kernel detaches the link when the device goes away
        st = r.status().get("xdp-counter")
    assert st is not None and st.condition == "Degraded" and "detached" in st.message
    p = r.plan(env.desired())
    assert any(
        f"interface {veth.b.name} in" in str(x) and "does not exist" in str(x) for x in p.problems
    ), p.problems
