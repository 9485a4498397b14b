"""The reconciler: observe, plan, apply (stage → switch → commit | rollback), destroy, status.

Kernel requirements: bpffs mounted (the root must be on it), Linux 6.6 for tcx links,
``renameat2(RENAME_EXCHANGE)`` on bpffs, CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON (and
CAP_SYS_ADMIN to enter other network namespaces).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from orchestrator._gc import gc_paused
from orchestrator.ebpf import Error as EbpfError
from orchestrator.manifest.cache import ObjectStore
from orchestrator.manifest.cache import default as default_store
from orchestrator.manifest.model import DesiredState
from orchestrator.reconcile.budget import budget_warnings, recorded
from orchestrator.reconcile.cache import ObserveCache
from orchestrator.reconcile.defaults import DEFAULT_BPFFS_ROOT, DEFAULT_STATE_DIR
from orchestrator.reconcile.errors import PlanError, StateError
from orchestrator.reconcile.facts import gather_facts
from orchestrator.reconcile.failpoints import Failpoints, NoFailpoints
from orchestrator.reconcile.observe import observe
from orchestrator.reconcile.owner import locked
from orchestrator.reconcile.plan import Op, Plan, plan, plan_destroy
from orchestrator.reconcile.selector import Selector
from orchestrator.reconcile.state import ActualState

if TYPE_CHECKING:  # status() imports it: plan and apply never need it
    from orchestrator.reconcile.collection_status import Status


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What an apply (or destroy) did. ``generations``: the generation of every collection
    the record lists afterwards. ``warnings``: problems while releasing the old generation
    after the commit (leftovers that the next apply removes), and programs that use more
    than 80% of the verifier's budget (see :mod:`orchestrator.reconcile.budget`)."""

    plan: Plan
    generations: Mapping[str, int]
    duration_s: float
    applied: bool = False  # False for dry runs and no-op applies
    warnings: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, object]:
        return {
            "plan": self.plan.to_json(),
            "generations": dict(sorted(self.generations.items())),
            "duration_s": round(self.duration_s, 6),
            "applied": self.applied,
            "warnings": list(self.warnings),
        }


def raise_problems(p: Plan) -> None:
    if p.problems:
        lines = "\n".join(f"  {x}" for x in p.problems)
        err = PlanError(f"plan has {len(p.problems)} problem(s), nothing was changed:\n{lines}")
        err.problems = p.problems  # type: ignore[attr-defined]
        raise err


class Reconciler:
    """Applies desired states to the kernel, owning everything under ``bpffs_root``."""

    def __init__(
        self,
        *,
        bpffs_root: Path = DEFAULT_BPFFS_ROOT,
        state_dir: Path = DEFAULT_STATE_DIR,
        failpoints: Failpoints | None = None,
        store: ObjectStore | None = None,
        remember: bool = True,
    ) -> None:
        """``store``: where parsed objects are kept across calls; give the one the manifests
        were loaded with (``load_manifests(..., store=...)``), or None for the default
        store. ``failpoints``: called at each step of an apply (see
        :mod:`orchestrator.reconcile.failpoints`; tests inject failures there).
        ``remember``: keep what each observe read for the next one (:attr:`cache`); False
        for a reconciler that observes once (the command line's ``plan``, ``status``), which then
        spends nothing on keeping it."""
        self.bpffs_root = Path(bpffs_root)
        self.state_dir = Path(state_dir)
        self.failpoints: Failpoints = NoFailpoints() if failpoints is None else failpoints
        self.store = default_store if store is None else store
        # what the last observe read, reused where a cheap exact key proves it unchanged
        self.cache = ObserveCache()
        self.remember = remember

    def __repr__(self) -> str:
        return f"Reconciler(bpffs_root={self.bpffs_root}, state_dir={self.state_dir})"

    def observe(self) -> ActualState:
        """The record checked against the kernel (drift), staging leftovers of ours,
        collections adopted from their ownership markers, foreign entries under the root."""
        try:
            return observe(self.bpffs_root, self.state_dir, self.cache if self.remember else None)
        except (EbpfError, OSError) as err:
            raise StateError(
                f"observe {self.bpffs_root}: {err} (is bpffs mounted, and are we root?)"
            ) from err

    def plan(
        self,
        desired: DesiredState,
        *,
        prune: bool = False,
        actual: ActualState | None = None,
        selector: Selector | None = None,
    ) -> Plan:
        """Observe (unless ``actual`` is given), gather facts about what may change, and
        diff (only the collections ``selector`` selects, if given). Problems are in
        ``Plan.problems``; nothing is raised for them."""
        if actual is None:
            actual = self.observe()
        facts = gather_facts(desired, actual, self.store.snapshot(), self.bpffs_root)
        return plan(desired, facts, prune=prune, selector=selector)

    def apply(
        self,
        desired: DesiredState,
        *,
        prune: bool = False,
        dry_run: bool | Literal["kernel"] = False,
        selector: Selector | None = None,
    ) -> ApplyResult:
        """Make the kernel match ``desired``, all or nothing (see
        :mod:`orchestrator.reconcile.transaction`). Raises :class:`PlanError` for plan
        problems (nothing changed) and :class:`ApplyError` when a step fails (the previous
        generation was restored).

        ``dry_run=True``: plan only (no lock, nothing created). ``dry_run="kernel"``: also
        load every changed collection through the verifier (preserved maps and substitutions
        included, so map incompatibilities show), then close it all; nothing is pinned,
        attached or recorded. ``selector``: only the collections it selects by their labels
        (see :mod:`orchestrator.reconcile.selector`) are applied (and pruned).
        """
        from orchestrator.reconcile.transaction import Transaction

        start = time.perf_counter()
        lock: contextlib.AbstractContextManager[int | None] = (
            contextlib.nullcontext() if dry_run is True else locked(self.bpffs_root, self.state_dir)
        )
        # the plan and the transaction build a bounded burst of small objects (actions,
        # records, loaded collections) that stay alive until the apply ends: the collector
        # runs after it, not through it (see orchestrator._gc)
        with gc_paused(), lock as root_fd:
            objects = self.store.snapshot()
            actual = gather_facts(desired, self.observe(), objects, self.bpffs_root)
            p = plan(desired, actual, prune=prune, selector=selector)
            raise_problems(p)
            gens = {n: c.record.generation for n, c in actual.collections.items()}
            budget = p.warnings  # the figures recorded at the last apply
            if dry_run == "kernel":
                assert root_fd is not None
                check = Transaction(
                    self.bpffs_root,
                    self.state_dir,
                    self.failpoints,
                    p,
                    objects,
                    root_fd=root_fd,
                )
                check.verify()
                records = {n: c.record for n, c in actual.collections.items()}
                kept = {
                    n: f
                    for n, f in recorded(records, desired.collections).items()
                    if n not in check.verified
                }
                budget = (
                    *budget_warnings(check.verified),
                    *budget_warnings(kept, recorded=True),
                )
            if dry_run or not p.runs:
                return ApplyResult(p, gens, time.perf_counter() - start, warnings=budget)
            assert root_fd is not None
            tx = Transaction(
                self.bpffs_root,
                self.state_dir,
                self.failpoints,
                p,
                objects,
                root_fd=root_fd,
            )
            gens, warnings = tx.run()
            assert tx.record is not None
            budget = budget_warnings(recorded(tx.record.collections, desired.collections))
        return ApplyResult(p, gens, time.perf_counter() - start, True, (*warnings, *budget))

    def destroy(
        self,
        names: Sequence[str] | None = None,
        *,
        dry_run: bool = False,
        selector: Selector | None = None,
    ) -> ApplyResult:
        """Detach, unpin and forget ``names`` (every owned collection if None; with a
        ``selector``, those of them whose recorded labels it selects). ``dry_run``: only
        plan it (no lock, nothing changed)."""
        from orchestrator.reconcile.transaction import Transaction

        start = time.perf_counter()
        if dry_run:
            actual = self.observe()
            p = plan_destroy(actual, names, selector)
            raise_problems(p)
            gens = {n: c.record.generation for n, c in actual.collections.items()}
            return ApplyResult(p, gens, time.perf_counter() - start)
        with locked(self.bpffs_root, self.state_dir) as root_fd:
            actual = self.observe()
            p = plan_destroy(actual, names, selector)
            raise_problems(p)
            gens = {n: c.record.generation for n, c in actual.collections.items()}
            if not p.runs:
                return ApplyResult(p, gens, time.perf_counter() - start)
            tx = Transaction(
                self.bpffs_root,
                self.state_dir,
                self.failpoints,
                p,
                root_fd=root_fd,
            )
            gens, warnings = tx.run()
        return ApplyResult(p, gens, time.perf_counter() - start, True, tuple(warnings))

    def status(self, actual: ActualState | None = None) -> Status:
        """What is applied and its drift (of ``actual``, observed now if not given)."""
        from orchestrator.reconcile.collection_status import build_status

        return build_status(self.bpffs_root, actual if actual is not None else self.observe())


__all__ = ["DEFAULT_BPFFS_ROOT", "DEFAULT_STATE_DIR", "ApplyResult", "Op", "Reconciler"]
