"""End to end against the real kernel: apply the example objects in namespaces and a cgroup
the tests make, see them work, read status, destroy and check that nothing is left."""

from __future__ import annotations

import gc
import json
import os
import time
from pathlib import Path

import pytest

from orchestrator.ebpf import Map
from orchestrator.reconcile import ApplyError, Op, Reconciler
from tests.conftest import BPF_DIR
from tests.netns import CGROUP2_ROOT, Cgroup, UdpReceiver, VethPair, send_udp
from tests.reconcile.conftest import Env, link_alive, map_alive, pins_under, prog_alive

pytestmark = pytest.mark.kernel
ROOT_BPF = BPF_DIR


def xdp_manifest(env: Env, veth: VethPair, version: int = 1, name: str = "xdp-counter") -> None:
    env.write(
        name,
        f"""
        apiVersion: bpforch.dev/v1
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
        apiVersion: bpforch.dev/v1
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
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {{name: tp-counter}}
        spec:
          object: @BPF@/tp_counter.o
          constants: {{target_tgid: {tgid}}}
          maps: {{calls: {{pin: true}}}}
          attach:
            - program: count_getppid
              tracepoint: {{group: syscalls, name: sys_enter_getppid}}
        """,
    )


def cgroup_manifest(env: Env, cg: Cgroup) -> None:
    env.write(
        "cgroup-egress",
        f"""
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {{name: cgroup-egress}}
        spec:
          object: @BPF@/cgroup_egress.o
          maps: {{egress_stats: {{pin: true}}}}
          attach:
            - program: cg_egress
              cgroup: {{path: {cg.path}, attach: egress}}
        """,
    )


def shared_manifests(env: Env) -> None:
    env.write(
        "shared",
        """
        apiVersion: bpforch.dev/v1
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
        apiVersion: bpforch.dev/v1
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
    assert counter(env, "cgroup-egress", "egress_stats", 0) == 3

    # shared map: both programs count into the owner's map ([0] getpid, [1] gettid)
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    with Map.from_pin(env.root / "shared-owner" / "maps" / "shared_stats") as shared:
        p0, p1 = shared[0], shared[1]
        assert isinstance(p0, int) and isinstance(p1, int)
        libc.syscall(39)  # getpid (x86_64)
        libc.syscall(186)  # gettid
        assert shared[0] > p0  # type: ignore[operator]
        assert shared[1] > p1  # type: ignore[operator]

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


def test_prog_array_keeps_its_entries_after_the_applying_process(
    env: Env, veth: VethPair, fd_guard: None
) -> None:
    """The prog array is pinned with the collection, so tail calls keep working when the
    process that applied is gone (the kernel clears a prog array with no user reference)."""
    from orchestrator.ebpf import Program
    from tests.reconcile.test_drift import apply_in_subprocess

    env.write(
        "tail",
        f"""
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {{name: tail}}
        spec:
          object: @BPF@/tailcall.o
          maps: {{hits: {{pin: true}}}}  # jump_table is a prog array: pinned anyway
          attach:
            - program: xdp_entry
              xdp: {{interface: {veth.b.name}, netns: {veth.b.ns.path}, mode: generic}}
        """,
    )
    apply_in_subprocess(env)
    st = env.reconciler().status().get("tail")
    assert st is not None and st.condition == "Ready"
    assert (env.root / "tail" / "maps" / "jump_table").exists()
    with Program.from_pin(env.root / "tail" / "progs" / "xdp_entry") as entry:
        res = entry.test_run(data=bytes([0]) + bytes(63))
        assert res.retval == 2  # XDP_PASS from tail_pass, reached through the prog array
        res = entry.test_run(data=bytes([2]) + bytes(63))
        assert res.retval == 1  # XDP_DROP from tail_drop
    with Map.from_pin(env.root / "tail" / "maps" / "hits") as hits:
        assert hits[0] == 1 and hits[2] == 1


def test_foreign_xdp_owner_is_a_plan_problem(env: Env, veth: VethPair, fd_guard: None) -> None:
    from orchestrator import ebpf
    from orchestrator.ebpf import link as links
    from orchestrator.reconcile import PlanError

    xdp_manifest(env, veth)
    with ebpf.load_collection(ROOT_BPF / "xdp_counter.o") as coll:
        prog = coll.programs["xdp_count"]
        with links.attach_xdp(prog, veth.b.name, "generic", netns=veth.b.ns.path) as link:
            r = env.reconciler()
            p = r.plan(env.desired())
            assert len(p.problems) == 1
            text = str(p.problems[0])
            assert f"id {prog.id}" in text and "xdp_count" in text
            assert "attached by someone else" in text and "xdp-counter.yaml:" in text
            with pytest.raises(PlanError):
                r.apply(env.desired())
            state = links.xdp_attached(veth.b.name, veth.b.ns.path)
            assert state is not None and state.link_id == link.id  # left alone
            assert pins_under(env.root) == []


def test_missing_targets_are_plan_problems(env: Env, tmp_path: Path) -> None:
    env.write(
        "missing",
        """
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {name: missing}
        spec:
          object: @BPF@/xdp_counter.o
          attach:
            - program: xdp_count
              xdp: {interface: nosuchif0, netns: /var/run/netns/bpft-nosuchns}
        ---
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {name: missing-cg}
        spec:
          object: @BPF@/cgroup_egress.o
          attach:
            - program: cg_egress
              cgroup: {path: bpft-nosuchgroup, attach: egress}
        """,
    )
    try:
        desired = env.desired()
    except Exception as err:  # the manifest layer may already refuse missing targets
        pytest.fail(f"manifests should load without kernel checks: {err}")
    texts = sorted(str(x) for x in env.reconciler().plan(desired).problems)
    assert len(texts) == 2, texts
    assert "network namespace /var/run/netns/bpft-nosuchns does not exist" in texts[0]
    assert f"cgroup {CGROUP2_ROOT / 'bpft-nosuchgroup'} does not exist" in texts[1]


def test_dry_run_and_prune(env: Env, veth: VethPair, fd_guard: None) -> None:
    xdp_manifest(env, veth)
    tp_manifest(env)
    r = env.reconciler()
    dry = r.apply(env.desired(), dry_run=True)
    assert not dry.applied and dry.plan.counts() == (8, 0, 0)  # 2 x (2 maps, prog, link)
    assert pins_under(env.root) == [] and r.status().collections == ()
    r.apply(env.desired())
    env.remove("tp-counter")
    # without prune, an undeclared collection stays
    p = r.plan(env.desired())
    assert not p.has_changes
    r.apply(env.desired())
    assert r.status().get("tp-counter") is not None
    p = r.plan(env.desired(), prune=True)
    assert p.collection_op("tp-counter") is Op.DELETE
    result = r.apply(env.desired(), prune=True)
    assert result.generations == {"xdp-counter": 1}
    assert r.status().get("tp-counter") is None
    assert not (env.root / "tp-counter").exists()


def test_applies_never_interleave(env: Env, veth: VethPair, tmp_path: Path) -> None:
    """The lock is on the bpffs root itself: an instance holding it with another state
    directory keeps this apply waiting too."""
    import threading

    from orchestrator.reconcile.owner import locked

    xdp_manifest(env, veth)
    done = threading.Event()
    with locked(env.root, tmp_path / "another-state-dir"):
        t = threading.Thread(target=lambda: (env.reconciler().apply(env.desired()), done.set()))
        t.start()
        time.sleep(0.3)
        assert not done.is_set()  # waits for the lock
        assert not (env.root / "xdp-counter").exists()
    t.join(10)
    assert done.is_set()
    assert (env.root / "xdp-counter").exists()


def test_noop_apply_only_reads(
    env: Env, veth: VethPair, monkeypatch: pytest.MonkeyPatch, fd_guard: None
) -> None:
    """A second apply with nothing changed reads the record, lists the collection
    directories (map and program pins are checked by inode), asks the kernel about the XDP
    link (BPF_OBJ_GET + info: it can be switched or detached while its pin stays; the
    tracepoint link is known by the pin inode the record names) and reads the root's
    ownership marker (BPF_OBJ_GET, info, lookup): no load, no create, no pin."""
    from orchestrator.ebpf import _sys as bpfsys

    xdp_manifest(env, veth)
    tp_manifest(env)
    r = env.reconciler()
    r.apply(env.desired())
    desired = env.desired()
    seen: list[bpfsys.Cmd] = []
    real = bpfsys.bpf

    def spy(cmd: bpfsys.Cmd, attr: object) -> int:
        seen.append(cmd)
        return real(cmd, attr)

    monkeypatch.setattr(bpfsys, "bpf", spy)
    result = r.apply(desired)
    monkeypatch.undo()
    assert not result.applied and not result.plan.has_changes
    links_n = 1  # the XDP collection's link; not the tracepoint's (its pin's inode)
    owner = [bpfsys.Cmd.OBJ_GET, bpfsys.Cmd.OBJ_GET_INFO_BY_FD, bpfsys.Cmd.MAP_LOOKUP_ELEM]
    assert sorted(seen) == sorted(
        [bpfsys.Cmd.OBJ_GET] * links_n + [bpfsys.Cmd.OBJ_GET_INFO_BY_FD] * links_n + owner
    )


def test_status_names_the_git_revision_of_the_manifests(env: Env, veth: VethPair) -> None:
    from tests.conftest import run_git

    xdp_manifest(env, veth)

    def run(*args: str) -> str:
        return run_git(env.manifests, *args)

    run("init", "-q")
    run("add", ".")
    run("commit", "-q", "-m", "m")
    head = run("rev-parse", "HEAD")
    r = env.reconciler()
    r.apply(env.desired())
    st = r.status().get("xdp-counter")
    assert st is not None and st.git_revision == head
    assert st.manifest.startswith(str(env.manifests / "xdp-counter.yaml") + ":")
    assert st.applied_at.endswith("Z")


def test_an_apply_reads_objects_through_the_store_the_manifests_were_loaded_with(
    env: Env, fd_guard: None
) -> None:
    """Validation parsed the object; plan and apply find it in the same store (parsed once),
    and the module's default store is never consulted."""
    from orchestrator.manifest import cache

    def default_lookups() -> int:
        st = cache.default.specs.stats()
        return st.parsed + st.verified + st.hits

    tp_manifest(env)
    before = default_lookups()
    desired = env.desired()
    assert env.store.specs.stats().parsed == 1
    r = env.reconciler()
    assert r.plan(desired).has_changes
    assert r.apply(desired).applied
    st = env.store.specs.stats()
    assert st.parsed == 1 and st.hits + st.verified >= 2  # plan's and apply's lookups
    assert default_lookups() == before
    assert r.status().get("tp-counter") is not None


def tp_collections(env: Env, *names: str) -> None:
    """Collections of tp_counter.o without attachments, each with its own constant (so
    each loads its own programs from the one object)."""
    for i, name in enumerate(names):
        env.write(
            name,
            f"""
            apiVersion: bpforch.dev/v1
            kind: Collection
            metadata: {{name: {name}}}
            spec:
              object: @BPF@/tp_counter.o
              constants: {{target_tgid: {(1 << 30) + i}}}
            """,
        )


def test_collections_of_one_object_share_its_btf(env: Env, fd_guard: None) -> None:
    """An apply loads an object's BTF once for all the collections that load that object
    (each with its own constants): their programs hold one kernel BTF object, and the
    transaction keeps no fd of it (fd_guard). A later apply that reloads one of them loads
    the BTF again (its own transaction)."""
    from orchestrator.ebpf import Program

    tp_collections(env, "tp-a", "tp-b", "tp-c")
    r = env.reconciler()
    r.apply(env.desired())

    def btf_ids() -> dict[str, int]:
        out = {}
        for name in ("tp-a", "tp-b", "tp-c"):
            with Program.from_pin(env.root / name / "progs" / "count_getppid") as p:
                out[name] = p.info().btf_id
        return out

    first = btf_ids()
    assert len(set(first.values())) == 1 and 0 not in first.values()
    env.write(
        "tp-c",
        """
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {name: tp-c}
        spec:
          object: @BPF@/tp_counter.o
          constants: {target_tgid: 7}
        """,
    )
    r.apply(env.desired())
    second = btf_ids()
    assert second["tp-a"] == second["tp-b"] == first["tp-a"] != second["tp-c"] != 0
    r.destroy()


def test_a_failed_apply_leaves_no_shared_btf(env: Env, fd_guard: None) -> None:
    """An apply that fails after its collections loaded one object's BTF through the
    transaction's cache (at the commit of the second) rolls back and closes the cache:
    no fd is left (fd_guard) and the kernel BTF object the staged programs shared is
    freed."""
    import glob

    from orchestrator.ebpf import Program, _sys
    from orchestrator.reconcile import ApplyError
    from tests.failpoints import OnStep

    tp_collections(env, "tp-a", "tp-b")
    seen: dict[str, int] = {}

    def fail_second(subject: str) -> None:
        if subject == "tp-a":
            for name in ("tp-a", "tp-b"):
                (pin,) = glob.glob(f"{env.root}/_staging-*/{name}/progs/count_getppid")
                with Program.from_pin(pin) as p:
                    seen[name] = p.info().btf_id
        if subject == "tp-b":
            raise RuntimeError("injected")

    # the error is held (its traceback holds the transaction): the cache was closed, not
    # collected
    with pytest.raises(ApplyError, match="injected") as info:
        env.reconciler(OnStep(commit=fail_second)).apply(env.desired())
    assert seen["tp-a"] == seen["tp-b"] != 0

    def btf_alive(btf_id: int) -> bool:
        return _sys.get_next_id(_sys.Cmd.BTF_GET_NEXT_ID, btf_id - 1) == btf_id

    deadline = time.monotonic() + 10
    while btf_alive(seen["tp-a"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not btf_alive(seen["tp-a"])
    assert os.listdir(env.root) == []
    del info


class _Watch:
    """Failpoints that note whether the cyclic collector runs at each step, and fail at one."""

    def __init__(self, fail_at: str = "") -> None:
        self.fail_at = fail_at
        self.seen: dict[str, bool] = {}

    def reach(self, step: str, subject: str) -> None:
        self.seen[step] = gc.isenabled()
        if step == self.fail_at:
            raise RuntimeError(f"failpoint {step}")


@pytest.mark.kernel
def test_the_collector_is_paused_through_an_apply_and_enabled_after(env: Env) -> None:
    tp_manifest(env)
    assert gc.isenabled()
    watch = _Watch(fail_at="record")
    with pytest.raises(ApplyError, match="failpoint record"):
        env.reconciler(watch).apply(env.desired())
    assert watch.seen == {
        "load": False,
        "verify": False,
        "pin": False,
        "attach": False,
        "commit": False,
        "record": False,
    }
    assert gc.isenabled()  # enabled again after the failure
    watch = _Watch()
    assert env.reconciler(watch).apply(env.desired()).applied
    assert set(watch.seen.values()) == {False} and "release" in watch.seen
    assert gc.isenabled()


@pytest.mark.kernel
def test_a_staged_tree_that_cannot_be_made_is_named_by_its_whole_path(env: Env) -> None:
    """The transaction makes each staged tree relative to its staging directory's fd; when
    that fails, the error still names the tree by its whole path (what a user would look
    up), and nothing of the apply is left live."""
    from orchestrator.reconcile.owner import STAGING_PREFIX
    from tests.failpoints import OnStep

    tp_manifest(env)
    made: list[Path] = []

    def squat(name: str) -> None:  # the staged tree's place is taken just before it is made
        (staging,) = (p for p in env.root.iterdir() if p.name.startswith(STAGING_PREFIX))
        made.append(staging / name)
        made[-1].mkdir()

    with pytest.raises(ApplyError) as info:
        env.reconciler(OnStep(pin=squat)).apply(env.desired())
    assert made and f"File exists: '{made[0]}'" in str(info.value), str(info.value)
    assert pins_under(env.root) == []
    assert not made[0].parent.exists()  # the staging directory went, empty tree and all
    assert env.reconciler().apply(env.desired()).applied  # and the next one goes through


@pytest.mark.kernel
def test_a_staged_link_that_cannot_be_pinned_is_named_by_its_whole_path(env: Env) -> None:
    """A new link is pinned in its staged tree relative to the staging directory's fd, as
    the tree's programs and maps are; when that fails, the error names the pin by its
    whole path, and nothing of the apply is left live."""
    from orchestrator.reconcile.owner import STAGING_PREFIX
    from tests.failpoints import OnStep

    tp_manifest(env)
    gone: list[Path] = []

    def unmake(key: str) -> None:  # the staged tree's links/ goes just before the attach
        (staging,) = (p for p in env.root.iterdir() if p.name.startswith(STAGING_PREFIX))
        gone.append(staging / "tp-counter" / "links")
        gone[-1].rmdir()

    with pytest.raises(ApplyError) as info:
        env.reconciler(OnStep(attach=unmake)).apply(env.desired())
    assert gone and f"pin {gone[0]}/" in str(info.value), str(info.value)
    assert "(does the directory exist?)" in str(info.value)
    assert pins_under(env.root) == []
    assert not gone[0].parent.parent.exists()  # the staging directory went
    assert env.reconciler().apply(env.desired()).applied  # and the next one goes through
