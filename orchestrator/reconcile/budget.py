"""Budget warnings: programs that use most of the verifier's budget.

The verifier processes at most 1,000,000 instructions per program, counting every path and
every loop iteration it walks (``verified_insns``). A program close to that limit can be
rejected after a small change, or on a kernel that explores it differently, so apply, plan
and status warn about every program above 80% of it. Apply and a kernel dry run use the
figures of the programs they load; plan and status, which load nothing, use the figure
recorded at the last apply. Pure: no kernel, no files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from orchestrator.ebpf.limits import BUDGET, BUDGET_WARNING
from orchestrator.reconcile.state import CollectionRecord

Figures = Mapping[str, Mapping[str, int]]  # collection -> program -> verified_insns


def recorded(collections: Mapping[str, CollectionRecord], names: Iterable[str]) -> Figures:
    """The figures recorded for the collections ``names`` (those the record lists)."""
    return {
        n: {p: pr.verified_insns for p, pr in collections[n].programs.items()}
        for n in names
        if n in collections
    }


def over_budget(insns: int) -> bool:
    return insns > BUDGET * BUDGET_WARNING


def budget_warning(
    collection: str, program: str, insns: int, *, recorded: bool, kind: str = "collection"
) -> str:
    """``kind`` names what ``collection`` is ("" when it names itself: an object file)."""
    when = " at the last apply" if recorded else ""
    subject = f"{kind} {collection}" if kind != "" else collection
    return (
        f"{subject}: program {program}: the verifier processed {insns:,} "
        f"instructions{when}, {insns / BUDGET:.0%} of its {BUDGET:,} budget (a small change "
        "may get it rejected: bound loops tighter, use bpf_loop(), or split it with tail calls)"
    )


def budget_warnings(
    figures: Figures, *, recorded: bool = False, kind: str = "collection"
) -> tuple[str, ...]:
    """One warning per program above 80% of the budget, in name order."""
    return tuple(
        budget_warning(coll, prog, insns, recorded=recorded, kind=kind)
        for coll in sorted(figures)
        for prog, insns in sorted(figures[coll].items())
        if over_budget(insns)
    )
