"""Budget warnings (pure): programs above 80% of the verifier's 1,000,000 instructions, in
plans (figures recorded at the last apply), records and status."""

from __future__ import annotations

import dataclasses

from orchestrator.reconcile import CollectionRecord, ProgramRecord, plan
from orchestrator.reconcile.budget import budget_warnings, over_budget, recorded
from orchestrator.reconcile.state import StateRecord
from tests.reconcile.test_plan import actual, coll, desired, record


def _with_figures(name: str, **figures: int) -> CollectionRecord:
    rec = record(name, progs=tuple(figures))
    programs = {
        p: dataclasses.replace(pr, verified_insns=figures[p]) for p, pr in rec.programs.items()
    }
    return dataclasses.replace(rec, programs=programs)


def test_the_threshold_is_80_percent() -> None:
    assert not over_budget(800_000) and over_budget(800_001)
    assert budget_warnings({"a": {"p": 800_000}}) == ()
    [warning] = budget_warnings({"a": {"p": 850_123}})
    assert warning == (
        "collection a: program p: the verifier processed 850,123 instructions, 85% of its "
        "1,000,000 budget (a small change may get it rejected: bound loops tighter, use "
        "bpf_loop(), or split it with tail calls)"
    )
    [recorded_warning] = budget_warnings({"a": {"p": 999_999}}, recorded=True)
    assert "processed 999,999 instructions at the last apply, 100% of its" in recorded_warning


def test_warnings_are_in_name_order() -> None:
    figures = {"b": {"y": 900_000, "x": 900_000}, "a": {"z": 810_000, "small": 10}}
    assert [w.split(":")[0:2] for w in budget_warnings(figures)] == [
        ["collection a", " program z"],
        ["collection b", " program x"],
        ["collection b", " program y"],
    ]


def test_recorded_figures_of_declared_collections() -> None:
    a = _with_figures("a", big=900_000, small=5)
    b = _with_figures("b", other=950_000)
    records = {"a": a, "b": b}
    assert recorded(records, ["a", "nope"]) == {"a": {"big": 900_000, "small": 5}}


def test_plan_warns_from_the_last_apply() -> None:
    a = _with_figures("a", prog=900_000)
    gone = _with_figures("gone", prog=990_000)
    p = plan(desired(coll("a")), actual(a, gone))
    # only declared collections (a collection about to go is not warned about)
    [warning] = p.warnings
    assert warning.startswith("collection a: program prog: the verifier processed 900,000 ")
    assert "at the last apply" in warning
    assert p.to_json()["warnings"] == [warning]
    assert plan(desired(coll("a")), actual(record("a"))).warnings == ()


def test_records_keep_the_figure_and_read_old_ones() -> None:
    pr = ProgramRecord("p", 7, "ab", "progs/p", 6, 11, verified_insns=12_345)
    assert pr.to_json()["verified_insns"] == 12_345
    assert ProgramRecord.from_json("p", pr.to_json()) == pr
    old = pr.to_json()
    del old["verified_insns"]  # written before the figure was kept
    assert ProgramRecord.from_json("p", old).verified_insns == 0
    state = StateRecord({"a": _with_figures("a", p=1)})
    assert StateRecord.from_json(state.to_json()) == state
