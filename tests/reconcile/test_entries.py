"""Declared map entries inside the apply transaction, against the real kernel: a staged map
is filled before any link switches to it, a failed apply puts the previous contents back,
a preserved map keeps what is not declared only in merge mode, and the record notes the
entries written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.ebpf import Map
from orchestrator.reconcile import ApplyError
from tests.conftest import BPF_DIR
from tests.failpoints import OnStep
from tests.netns import VethPair
from tests.reconcile.conftest import Env

pytestmark = pytest.mark.kernel


def tc_filter(
    env: Env,
    veth: VethPair,
    ports: dict[int, int],
    *,
    stats: dict[int, int] | None = None,
    extra: str = "",
    attach: bool = True,
) -> None:
    """tc_filter with blocked_ports (and stats) declared; attached to veth b's ingress."""
    entries = ", ".join(f"{{key: {k}, value: {v}}}" for k, v in ports.items())
    stats_yaml = ""
    if stats is not None:
        listed = ", ".join(f"{{key: {k}, value: {v}}}" for k, v in stats.items())
        stats_yaml = f"\n            stats: {{entries: [{listed}], entries_mode: merge}}"
    attach_yaml = ""
    if attach:
        attach_yaml = (
            "\n          attach:\n            - program: tc_ingress\n              tc: "
            f"{{interface: {veth.b.name}, netns: {veth.b.ns.path}, direction: ingress}}"
        )
    env.write(
        "tc-filter",
        f"""
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {{name: tc-filter}}
        spec:
          object: {BPF_DIR}/tc_filter.o
          maps:
            blocked_ports: {{pin: true, entries: [{entries}]{extra}}}{stats_yaml}{attach_yaml}
        """,
    )


def contents(path: Path) -> dict[object, object]:
    with Map.from_pin(path) as m:
        return dict(m.items())


def blocked(env: Env) -> dict[object, object]:
    return contents(env.root / "tc-filter" / "maps" / "blocked_ports")


def record(env: Env) -> dict[str, object]:
    data: dict[str, object] = json.loads((env.state_dir / "state.json").read_text())
    return data


def test_a_failed_apply_puts_the_previous_contents_back(env: Env, veth: VethPair) -> None:
    tc_filter(env, veth, {53: 1, 9999: 1}, attach=False)
    env.reconciler().apply(env.desired())
    with Map.from_pin(env.root / "tc-filter" / "maps" / "blocked_ports") as m:
        m.update(4444, 7)  # someone else's, deleted by exact mode
    before = blocked(env)
    assert before == {53: 1, 9999: 1, 4444: 7}
    state = (env.state_dir / "state.json").read_text()

    # entries change, and an attachment is added: the attach fails after the writes
    tc_filter(env, veth, {9999: 2, 7777: 1})

    def fail(subject: str) -> None:
        assert blocked(env) == {9999: 2, 7777: 1}  # written before the links
        raise RuntimeError("injected")

    with pytest.raises(ApplyError, match="injected"):
        env.reconciler(OnStep(attach=fail)).apply(env.desired())
    assert blocked(env) == before
    assert (env.state_dir / "state.json").read_text() == state
    # and the next apply converges
    env.reconciler().apply(env.desired())
    assert blocked(env) == {9999: 2, 7777: 1}


def test_a_failure_between_two_maps_restores_the_first(env: Env, veth: VethPair) -> None:
    tc_filter(env, veth, {53: 1}, stats={0: 0}, attach=False)
    env.reconciler().apply(env.desired())
    tc_filter(env, veth, {54: 1}, stats={0: 5}, attach=False)
    reached: list[str] = []

    def fail_second(subject: str) -> None:
        reached.append(subject)
        if len(reached) == 2:
            assert blocked(env) == {54: 1}
            raise RuntimeError("injected")

    with pytest.raises(ApplyError, match="injected"):
        env.reconciler(OnStep(entries=fail_second)).apply(env.desired())
    assert reached == ["tc-filter/blocked_ports", "tc-filter/stats"]
    assert blocked(env) == {53: 1}


def test_a_staged_map_is_filled_before_the_switch(env: Env, veth: VethPair) -> None:
    tc_filter(env, veth, {53: 1})
    env.reconciler().apply(env.desired())
    old_id = record_map_id(env)
    # a new max_entries makes a new map: it is filled in the staging tree, then switched to
    tc_filter(env, veth, {53: 1, 80: 1}, extra=", max_entries: 2048")
    seen: list[dict[object, object]] = []

    def at_switch(subject: str) -> None:
        (staged,) = env.root.glob("_staging-*/tc-filter/maps/blocked_ports")
        seen.append(contents(staged))

    result = env.reconciler(OnStep(switch=at_switch)).apply(env.desired())
    assert seen == [{53: 1, 80: 1}]
    assert record_map_id(env) != old_id
    assert blocked(env) == {53: 1, 80: 1}
    lines = [str(c) for c in result.plan.changes if c.kind.value == "entry"]
    # a new map: every declared entry is added to it
    assert lines == ["+ entry tc-filter/blocked_ports 53", "+ entry tc-filter/blocked_ports 80"]


def record_map_id(env: Env) -> int:
    colls = record(env)["collections"]
    return int(colls["tc-filter"]["maps"]["blocked_ports"]["id"])  # type: ignore[index]


@pytest.mark.parametrize("mode", ["merge", "exact"])
def test_a_preserved_map_keeps_what_is_not_declared_only_in_merge(
    env: Env, veth: VethPair, mode: str
) -> None:
    extra = f", preserve: true, entries_mode: {mode}"
    tc_filter(env, veth, {53: 1}, extra=extra)
    env.reconciler().apply(env.desired())
    old_id = record_map_id(env)
    with Map.from_pin(env.root / "tc-filter" / "maps" / "blocked_ports") as m:
        m.update(4444, 7)
    # a reload: the other map, stats, gets a new max_entries (blocked_ports is handed over)
    env.write(
        "tc-filter",
        (env.manifests / "tc-filter.yaml")
        .read_text()
        .replace("{key: 53, value: 1}", "{key: 53, value: 2}, {key: 80, value: 1}")
        .replace("\n  attach:", "\n    stats: {max_entries: 4}\n  attach:"),
    )
    result = env.reconciler().apply(env.desired())
    assert record_map_id(env) == old_id  # the same map, handed over
    reloaded = [c for c in result.plan.changes if c.kind.value == "program"]
    assert [(c.name, c.op.value) for c in reloaded] == [("tc_ingress", "replace")]
    want: dict[object, object] = {53: 2, 80: 1}
    if mode == "merge":
        want[4444] = 7
    assert blocked(env) == want


def test_the_record_notes_the_entries_written(env: Env, veth: VethPair) -> None:
    tc_filter(env, veth, {53: 1}, attach=False)
    env.reconciler().apply(env.desired())
    first = record(env)["collections"]["tc-filter"]["entries"]  # type: ignore[index]
    assert set(first) == {"blocked_ports"}
    tc_filter(env, veth, {53: 2}, attach=False)
    env.reconciler().apply(env.desired())
    second = record(env)["collections"]["tc-filter"]["entries"]  # type: ignore[index]
    assert second["blocked_ports"] != first["blocked_ports"]
    # without entries, nothing is noted
    env.write(
        "tc-filter",
        (env.manifests / "tc-filter.yaml")
        .read_text()
        .replace("entries: [{key: 53, value: 2}]", "preserve: false"),
    )
    env.reconciler().apply(env.desired())
    assert blocked(env) == {53: 2}  # contents nobody declares are left alone


def test_cidr_keys_and_per_cpu_values(env: Env) -> None:
    """An LPM trie keyed by CIDRs and a per-CPU hash (one value for every CPU, or one each):
    what is declared is what the kernel holds, and a per-CPU value changed on one CPU is
    drift that apply repairs."""
    from orchestrator.ebpf._sys import possible_cpus

    ncpus = possible_cpus()
    each = list(range(5, 5 + ncpus))
    env.write(
        "types",
        f"""
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {{name: types}}
        spec:
          object: @BPF@/map_types.o
          maps:
            m_lpm_trie:
              pin: true
              entries:
                - {{key: "10.0.0.0/8", value: 1}}
                - {{key: "192.168.1.0/24", value: 2}}
            m_percpu_hash:
              pin: true
              entries:
                - {{key: 1, value: {each}}}
                - {{key: 2, value: 7}}
        """,
    )
    r = env.reconciler()
    result = r.apply(env.desired())
    lines = [str(c) for c in result.plan.changes if c.kind.value == "entry"]
    assert lines == [
        "+ entry types/m_lpm_trie 10.0.0.0/8",
        "+ entry types/m_lpm_trie 192.168.1.0/24",
        "+ entry types/m_percpu_hash 1",
        "+ entry types/m_percpu_hash 2",
    ]
    from orchestrator.ebpf.map_codec import LiteralMap

    with Map.from_pin(env.root / "types" / "maps" / "m_lpm_trie") as m:
        assert dict(LiteralMap(m).items()) == {"10.0.0.0/8": 1, "192.168.1.0/24": 2}
        LiteralMap(m).update("10.1.0.0/16", 3)
    with Map.from_pin(env.root / "types" / "maps" / "m_percpu_hash") as m:
        assert dict(LiteralMap(m).items()) == {1: each, 2: [7] * ncpus}
        LiteralMap(m).update(2, [8, *([7] * (ncpus - 1))])
    lines = [str(c) for c in r.plan(env.desired()).changes if c.kind.value == "entry"]
    assert lines == [  # maps in name order, as their WriteEntries actions run
        "- entry types/m_lpm_trie 10.1.0.0/16 (not declared)",
        f"~ entry types/m_percpu_hash 2: [8, {', '.join(['7'] * (ncpus - 1))}] → 7",
    ]
    r.apply(env.desired())
    assert not r.plan(env.desired()).has_changes
    with Map.from_pin(env.root / "types" / "maps" / "m_percpu_hash") as m:
        assert dict(LiteralMap(m).items()) == {1: each, 2: [7] * ncpus}


def test_an_apply_killed_between_two_maps_converges(env: Env, veth: VethPair) -> None:
    """kill -9 after the first map's entries are written: nothing undoes them (the journal
    died with the process), the record is the old one, and the next plan shows what is
    left to write; the next apply writes it."""
    import signal

    from tests.failpoints import run_killed

    tc_filter(env, veth, {53: 1}, stats={0: 0}, attach=False)
    env.reconciler().apply(env.desired())
    state = (env.state_dir / "state.json").read_text()
    tc_filter(env, veth, {54: 1}, stats={0: 5}, attach=False)
    proc = run_killed("entries:2", "apply", str(env.manifests), *env.cli_args())
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert blocked(env) == {54: 1}  # the first map was written
    assert (env.state_dir / "state.json").read_text() == state
    lines = [
        str(c) for c in env.reconciler().plan(env.desired()).changes if c.kind.value == "entry"
    ]
    assert lines == ["~ entry tc-filter/stats 0: 0 → 5"]
    env.reconciler().apply(env.desired())
    assert not env.reconciler().plan(env.desired()).has_changes


def test_a_map_whose_pin_is_gone_is_recreated_and_filled(env: Env, veth: VethPair) -> None:
    """The pin of a map with entries removed by hand: drift, the collection is reloaded and
    the new map filled (the live one is not read: it is not kept)."""
    tc_filter(env, veth, {53: 1}, attach=False)
    r = env.reconciler()
    r.apply(env.desired())
    old_id = record_map_id(env)
    (env.root / "tc-filter" / "maps" / "blocked_ports").unlink()
    p = r.plan(env.desired())
    assert p.problems == ()
    assert [str(c) for c in p.changes if c.kind.value == "entry"] == [
        "+ entry tc-filter/blocked_ports 53"
    ]
    r.apply(env.desired())
    assert record_map_id(env) != old_id
    assert blocked(env) == {53: 1}


def test_a_kept_map_that_cannot_be_read_is_a_plan_problem(env: Env, veth: VethPair) -> None:
    """A map that stays but whose contents cannot be read (the opener fails: a kernel
    error, say) is a problem of the plan, at the map's place, and nothing is applied."""
    from dataclasses import replace

    from orchestrator.reconcile.entries import entry_facts
    from orchestrator.reconcile.facts import gather_facts
    from orchestrator.reconcile.plan import plan

    tc_filter(env, veth, {53: 1}, attach=False)
    r = env.reconciler()
    r.apply(env.desired())
    tc_filter(env, veth, {54: 1}, attach=False)
    desired = env.desired()
    actual = gather_facts(desired, r.observe(), env.store.snapshot(), env.root)

    def unreadable(rec: object, name: str) -> Map:
        raise OSError(f"map {name}: injected")

    rec = actual.collections["tc-filter"].record
    found = entry_facts(desired.collections["tc-filter"], rec, env.store.snapshot().get, unreadable)
    assert found["blocked_ports"].unreadable == (
        "map blocked_ports: cannot read its entries: map blocked_ports: injected"
    )
    facts = replace(actual.facts, entries={"tc-filter": found})
    p = plan(desired, replace(actual, facts=facts))
    assert [str(x) for x in p.problems] == [
        f"collection tc-filter ({env.manifests}/tc-filter.yaml:8:5): map blocked_ports: "
        "cannot read its entries: map blocked_ports: injected"
    ]
    assert [str(c) for c in p.changes if c.kind.value == "entry"] == []
