"""Fault injection: make each step of an apply fail (for real where the kernel can be made to
fail, through a hook otherwise) and check that the previous generation is exactly intact and
live, and that nothing leaked: no fds, no pins, no links, no programs."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator import ebpf
from orchestrator.ebpf import Map, inspect
from orchestrator.reconcile import ApplyError, PlanError
from tests.conftest import ROOT
from tests.failpoints import OnStep, run_killed
from tests.netns import UdpReceiver, VethPair, send_udp
from tests.reconcile.conftest import Env, pins_under, snapshot
from tests.reconcile.test_apply import xdp_manifest

pytestmark = pytest.mark.kernel

EXTRA_C = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __type(key, __u32);
    __type(value, __u64);
    __uint(max_entries, 1);
} hits SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int NAME(void *ctx)
{
    __u32 k = 0;
    __u64 *v = bpf_map_lookup_elem(&hits, &k);
    CHECK
    __sync_fetch_and_add(v, 1);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
"""


def extra_object(compile_bpf: Callable[..., Path], name: str, *, valid: bool = True) -> Path:
    """A tracepoint object whose program has a unique name (so the test can look for it by
    name among all programs); ``valid=False`` makes it write past the map value, which the
    verifier rejects."""
    check = "if (!v) return 0;" + ("" if valid else " v += 1;")
    src = EXTRA_C.replace("NAME", name).replace("CHECK", check)
    return compile_bpf(src)


def write_extra(env: Env, obj: Path, max_entries: int | None = None) -> None:
    """The zz-extra manifest; a ``max_entries`` for its map makes each version reload."""
    lines = [
        "apiVersion: bpforch.dev/v1",
        "kind: Collection",
        "metadata: {name: zz-extra}",
        "spec:",
        f"  object: {obj}",
        f"  maps: {{hits: {{max_entries: {max_entries}}}}}" if max_entries else "",
        "  attach:",
        f"    - program: {prog_name_of(obj)}",
        "      tracepoint: {group: syscalls, name: sys_enter_getppid}",
    ]
    env.write("zz-extra", "\n".join(line for line in lines if line) + "\n")


_NAMES: dict[Path, str] = {}


def prog_name_of(obj: Path) -> str:
    return _NAMES[obj]


def programs_where(pred: Callable[[str, tuple[int, ...]], bool]) -> set[int]:
    """Ids of live programs whose (name, map ids) match ``pred`` (programs other tests load
    are never ours: we match on names and map ids that only this test has)."""
    out = set()
    for pid in inspect.program_ids():
        try:
            prog = ebpf.Program.from_id(pid)
        except ebpf.Error:
            continue
        with prog:
            name, map_ids = prog.name, prog.map_ids()
        if pred(name, map_ids):
            out.add(pid)
    return out


def settle(fn: Callable[[], set[int]], want: set[int]) -> set[int]:
    """Programs are freed after an RCU grace period: poll briefly."""
    deadline = time.monotonic() + 2
    got = fn()
    while got != want and time.monotonic() < deadline:
        time.sleep(0.02)
        got = fn()
    return got


class Scenario:
    """xdp-counter v1 applied; the next desired state is xdp-counter v2 (in-place switch of
    its XDP link) plus a new collection zz-extra (a tracepoint, staged and attached after
    xdp-counter) whose program has a unique name."""

    def __init__(self, env: Env, veth: VethPair, compile_bpf: Callable[..., Path]) -> None:
        self.env, self.veth = env, veth
        self.name = f"fi{uuid.uuid4().hex[:10]}"
        self.good = extra_object(compile_bpf, self.name)
        _NAMES[self.good] = self.name
        self.bad = extra_object(compile_bpf, self.name, valid=False)
        _NAMES[self.bad] = self.name
        xdp_manifest(env, veth, version=1)
        env.reconciler().apply(env.desired())
        st = env.reconciler().status().get("xdp-counter")
        assert st is not None
        self.counters_id = st.map("counters").id
        self.v1 = st.program("xdp_count").id
        self.before = snapshot(env.reconciler().status())
        self.pins = pins_under(env.root)
        self.record = (env.state_dir / "state.json").read_text()

    def next_state(self, *, bad: bool = False) -> None:
        xdp_manifest(self.env, self.veth, version=2)
        write_extra(self.env, self.bad if bad else self.good)

    def ours(self) -> set[int]:
        return programs_where(lambda name, maps: self.counters_id in maps or name == self.name)

    def assert_intact(self) -> None:
        r = self.env.reconciler()
        assert snapshot(r.status()) == self.before
        assert pins_under(self.env.root) == self.pins  # no staging leftovers, no new pins
        assert (self.env.state_dir / "state.json").read_text() == self.record
        assert settle(self.ours, {self.v1}) == {self.v1}
        # the old program still runs: packets are counted with version 1
        with Map.from_pin(self.env.root / "xdp-counter" / "maps" / "counters") as counters:
            before = counters[0]
            with UdpReceiver(self.veth.b, 6000) as rx:
                send_udp(self.veth.a, self.veth.b, 6000, count=4)
                assert rx.drain() == 4
            assert counters[0] == before + 4  # type: ignore[operator]
            assert counters[2] == 1


def _raise(step: str, subject: str = "") -> Callable[[str], None]:
    def hook(got: str) -> None:
        if not subject or got == subject:
            raise RuntimeError(f"injected failure at {step}")

    return hook


STEP_FAULTS = ["load", "verify", "pin", "attach", "switch", "commit", "record"]


@pytest.mark.parametrize("step", STEP_FAULTS)
def test_failure_at_each_step_restores_the_previous_generation(
    step: str, env: Env, veth: VethPair, compile_bpf: Callable[..., Path], fd_guard: None
) -> None:
    sc = Scenario(env, veth, compile_bpf)
    sc.next_state()
    # fail on the second collection where there is one, so the first is already staged,
    # switched or swapped when the failure comes
    subject = {
        "load": "zz-extra",
        "verify": "zz-extra",
        "pin": "zz-extra",
        "commit": "zz-extra",
    }.get(step, "")
    if step == "attach":
        subject = f"{sc.name}@tracepoint:syscalls/sys_enter_getppid"
    failpoints = OnStep(**{step: _raise(step, subject)})
    with pytest.raises(ApplyError) as info:
        env.reconciler(failpoints).apply(env.desired())
    text = str(info.value)
    assert f"injected failure at {step}" in text
    assert "previous generation is live" in text
    if step in ("load", "verify", "pin"):
        assert "collection zz-extra (" in text and "zz-extra.yaml:" in text
    sc.assert_intact()
    # and the same apply without the fault goes through
    env.reconciler().apply(env.desired())
    st = env.reconciler().status()
    assert all(c.condition == "Ready" for c in st.collections)
    assert {c.name: c.generation for c in st.collections} == {"xdp-counter": 2, "zz-extra": 1}


def test_unloadable_object_restores_the_previous_generation(
    env: Env, veth: VethPair, compile_bpf: Callable[..., Path], tmp_path: Path, fd_guard: None
) -> None:
    sc = Scenario(env, veth, compile_bpf)
    # 1. the object file turns into garbage after the manifests were read: the plan reads
    #    it again and refuses before anything is touched
    obj = tmp_path / "extra.o"
    obj.write_bytes(sc.good.read_bytes())
    _NAMES[obj] = sc.name
    xdp_manifest(env, veth, version=2)
    write_extra(env, obj)
    desired = env.desired()
    obj.write_bytes(b"\x7fELF garbage")
    with pytest.raises(PlanError) as perr:
        env.reconciler().apply(desired)
    assert "collection zz-extra (" in str(perr.value) and f"object {obj}" in str(perr.value)
    sc.assert_intact()

    # 2. an object whose map the kernel refuses to create (a hash map of 0 entries)
    huge = compile_bpf(
        EXTRA_C.replace("NAME", sc.name)
        .replace("CHECK", "if (!v) return 0;")
        .replace("BPF_MAP_TYPE_ARRAY", "BPF_MAP_TYPE_HASH")
        .replace("__uint(max_entries, 1);", "__uint(max_entries, 0);")
    )
    _NAMES[huge] = sc.name
    write_extra(env, huge)
    with pytest.raises(ApplyError) as info:
        env.reconciler().apply(env.desired())
    text = str(info.value)
    assert "collection zz-extra (" in text and "map hits: create" in text, text
    assert "previous generation is live" in text
    sc.assert_intact()


def test_verifier_rejection_restores_the_previous_generation(
    env: Env, veth: VethPair, compile_bpf: Callable[..., Path], fd_guard: None
) -> None:
    sc = Scenario(env, veth, compile_bpf)
    sc.next_state(bad=True)
    with pytest.raises(ApplyError) as info:
        env.reconciler().apply(env.desired())
    text = str(info.value)
    assert "collection zz-extra (" in text
    # the verifier's decisive message, with its source line and the fix
    assert ".c:18: __sync_fetch_and_add(v, 1); -- invalid access to map value" in text, text
    assert "check the index or offset against the value's size" in text
    from orchestrator.ebpf import VerifierError
    from orchestrator.ebpf.verifier import Rejection

    assert isinstance(info.value.__cause__, VerifierError)
    assert info.value.__cause__.kind is Rejection.MAP_VALUE_BOUNDS
    assert "processed" in info.value.__cause__.log or info.value.__cause__.log
    sc.assert_intact()


def test_real_attach_failure_restores_the_previous_generation(
    env: Env, veth: VethPair, compile_bpf: Callable[..., Path], fd_guard: None
) -> None:
    """Someone attaches XDP to an interface between plan and apply: the kernel refuses our
    attach (EBUSY) after xdp-counter's link was already switched in place; everything is
    rolled back, and the foreign program is left alone."""
    from orchestrator import ebpf
    from orchestrator.ebpf import link as links

    sc = Scenario(env, veth, compile_bpf)
    xdp_manifest(env, veth, version=2)
    env.write(
        "second",
        f"""
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {{name: zz-second}}
        spec:
          object: @BPF@/xdp_counter.o
          attach:
            - program: xdp_count
              xdp: {{interface: lo, netns: {veth.b.ns.path}, mode: generic}}
        """,
    )
    foreign: list[object] = []

    def intrude(subject: str) -> None:
        if ":lo" in subject:
            coll = ebpf.load_collection(ROOT / "bpf" / "xdp_counter.o")
            foreign.append(coll)
            foreign.append(
                links.attach_xdp(coll.programs["xdp_count"], "lo", "generic", netns=veth.b.ns.path)
            )

    try:
        with pytest.raises(ApplyError) as info:
            env.reconciler(OnStep(attach=intrude)).apply(env.desired())
        text = str(info.value)
        assert "collection zz-second (" in text and "second.yaml:" in text
        assert "previous generation is live" in text
        # the foreign program is still attached: bpforch never detached it
        state = links.xdp_attached("lo", veth.b.ns.path)
        link = foreign[1]
        assert isinstance(link, links.Link)
        assert state is not None and state.link_id == link.id
    finally:
        for obj in reversed(foreign):
            obj.close()  # type: ignore[attr-defined]
    sc.assert_intact()


def test_crash_at_each_step_converges(
    env: Env, veth: VethPair, compile_bpf: Callable[..., Path], fd_guard: None
) -> None:
    """kill -9 of an apply subprocess at each step; the next apply converges and removes the
    staging leftovers."""
    sc = Scenario(env, veth, compile_bpf)
    version = 2
    steps = ("load", "verify", "pin", "attach", "switch", "commit", "commit:2", "record", "release")
    for step in steps:  # commit:2: after the first collection's tree was swapped in
        version += 1
        xdp_manifest(env, veth, version=version)
        write_extra(env, sc.good, max_entries=version)
        proc = run_killed(step, "apply", str(env.manifests), *env.cli_args())
        assert proc.returncode == -9, (step, proc.returncode, proc.stderr)
        r = env.reconciler()
        result = r.apply(env.desired())
        assert result.applied or not result.plan.has_changes
        assert not any(p.name.startswith("_staging-") for p in env.root.iterdir()), step
        st = r.status()
        assert [c.condition for c in st.collections] == ["Ready", "Ready"], (step, st)
        assert not r.plan(env.desired()).has_changes, step
        xdp = st.get("xdp-counter")
        assert xdp is not None
        live = xdp.program("xdp_count").id
        # exactly one xdp_count generation is left using the preserved counters map
        assert settle(lambda: programs_where(lambda n, m: sc.counters_id in m), {live}) == {live}, (
            step
        )
        assert xdp.map("counters").id == sc.counters_id
        with Map.from_pin(env.root / "xdp-counter" / "maps" / "counters") as counters:
            with UdpReceiver(veth.b, 6001) as rx:
                send_udp(veth.a, veth.b, 6001, count=2)
                rx.drain()
            assert counters[2] == version, step
        extra = st.get("zz-extra")
        assert extra is not None
        assert settle(
            lambda: programs_where(lambda n, m: n == sc.name),
            {extra.program(sc.name).id},
        ) == {extra.program(sc.name).id}, step


def test_incomplete_rollback_is_reported_and_the_next_apply_converges(
    env: Env, veth: VethPair, fd_guard: None
) -> None:
    """The record write fails and, at the same moment, someone detaches our XDP link: the
    link can't be switched back. The error says the rollback was incomplete and what is
    left; the next apply repairs it."""
    from orchestrator.ebpf import link as links

    xdp_manifest(env, veth, version=1)
    r = env.reconciler()
    r.apply(env.desired())
    st = r.status().get("xdp-counter")
    assert st is not None
    link_id = st.attachments[0].link_id
    xdp_manifest(env, veth, version=2)

    def sabotage(_: str) -> None:
        with links.Link.from_id(link_id) as link:
            link.detach()
        raise RuntimeError("injected failure at record")

    with pytest.raises(ApplyError) as info:
        env.reconciler(OnStep(record=sabotage)).apply(env.desired())
    text = str(info.value)
    assert "injected failure at record" in text
    assert f"rollback was incomplete: switch link {link_id} back" in text
    st = r.status().get("xdp-counter")
    assert st is not None and st.condition == "Degraded" and st.generation == 1
    assert not any(p.name.startswith("_staging-") for p in env.root.iterdir())
    r.apply(env.desired())
    st = r.status().get("xdp-counter")
    assert st is not None and st.condition == "Ready" and st.generation == 2
    with Map.from_pin(env.root / "xdp-counter" / "maps" / "counters") as counters:
        with UdpReceiver(veth.b, 6002) as rx:
            send_udp(veth.a, veth.b, 6002, count=2)
            assert rx.drain() == 2
        assert counters[2] == 2


def test_an_object_rebuilt_after_the_plan_is_refused(
    env: Env, compile_bpf: Callable[..., Path], tmp_path: Path, fd_guard: None
) -> None:
    """The transaction loads the object the plan read, or nothing: one rebuilt in between
    (the plan's map shapes and pins would not be its) fails the apply before anything is
    loaded, and everything is rolled back."""
    import shutil

    from orchestrator.manifest import ObjectStore
    from orchestrator.reconcile import NoFailpoints
    from orchestrator.reconcile.facts import gather_facts
    from orchestrator.reconcile.owner import locked
    from orchestrator.reconcile.plan import plan
    from orchestrator.reconcile.transaction import Transaction

    obj = tmp_path / "rebuilt.o"
    shutil.copy(extra_object(compile_bpf, "first_build"), obj)
    env.write(
        "rebuilt",
        f"""
        apiVersion: bpforch/v1
        kind: Collection
        metadata: {{name: rebuilt}}
        spec:
          object: {obj}
        """,
    )
    r = env.reconciler()
    desired = env.desired()
    with locked(env.root, env.state_dir) as root_fd:
        store = ObjectStore()
        objects = store.snapshot()
        p = plan(desired, gather_facts(desired, r.observe(), objects))
        assert p.runs and not p.problems
        shutil.copy(extra_object(compile_bpf, "second_build"), obj)
        # the apply's own view of the files (a new snapshot: the store reads the file again)
        tx = Transaction(
            env.root, env.state_dir, NoFailpoints(), p, store.snapshot(), root_fd=root_fd
        )
        with pytest.raises(ApplyError) as info:
            tx.run()
    text = str(info.value)
    assert f"object {obj} changed since the plan (plan and apply again)" in text
    assert "nothing was changed" in text
    assert pins_under(env.root) == []
    assert r.status().collections == ()
    r.apply(env.desired())  # a new plan reads the new object
    st = r.status().get("rebuilt")
    assert (
        st is not None
        and st.condition == "Ready"
        and [p.name for p in st.programs] == ["second_build"]
    )


def test_an_object_s_facts_are_shared_only_by_manifests_that_declare_the_same(
    env: Env, compile_bpf: Callable[..., Path], tmp_path: Path
) -> None:
    """Collections of one object with their own constants share what the object declares
    (worked out once); a manifest that binds programs, sets a map's max_entries or
    substitutes a map gets facts of its own, and an object rebuilt in place (another
    parse) is read anew."""
    import shutil

    from orchestrator.manifest import ObjectStore, load_manifests
    from orchestrator.reconcile.facts import gather_facts

    def write(name: str, extra: str = "", constants: str = "{version: 1}") -> None:
        env.write(
            name,
            "apiVersion: bpforch.dev/v1\nkind: Collection\n"
            f"metadata: {{name: {name}}}\nspec:\n"
            f"  object: @BPF@/xdp_counter.o\n  constants: {constants}\n{extra}",
        )

    write("a")
    write("b", constants="{version: 2}")
    write("sized", "  maps: {counters: {max_entries: 64}}\n")
    write("bound", "  programs: [xdp_count]\n")
    r = env.reconciler()
    desired = env.desired()
    facts = gather_facts(desired, r.observe(), env.store.snapshot()).facts.collections
    assert facts["a"] is facts["b"]  # the same declarations: one result
    assert facts["a"].maps["counters"].max_entries == 4
    assert facts["sized"].maps["counters"].max_entries == 64
    assert facts["bound"] is not facts["a"] and facts["bound"].programs == ("xdp_count",)
    assert facts["a"].maps.keys() == facts["sized"].maps.keys()

    obj = tmp_path / "rebuilt.o"
    shutil.copy(extra_object(compile_bpf, "first_build"), obj)
    for name in ("a", "b", "sized", "bound"):
        env.remove(name)
    env.write(
        "rebuilt",
        f"""
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {{name: rebuilt}}
        spec:
          object: {obj}
        """,
    )
    store = ObjectStore()
    desired = load_manifests([env.manifests], store=store)
    first = gather_facts(desired, r.observe(), store.snapshot()).facts.collections["rebuilt"]
    shutil.copy(extra_object(compile_bpf, "second_build"), obj)
    desired = load_manifests([env.manifests], store=store)
    second = gather_facts(desired, r.observe(), store.snapshot()).facts.collections["rebuilt"]
    assert second.object_sha256 != first.object_sha256
    assert (second.maps, second.programs) != (first.maps, first.programs)
