"""The plan: a pure diff of the desired state against the actual state.

:func:`plan` makes no syscall and reads no file: everything it needs from the kernel or the
file system (the record checked against the kernel, what the objects declare, whether the
targets exist and who owns them) is already in :class:`ActualState`.

Conventions follow the ones users know from terraform: ``+`` create, ``~`` update in place,
``-/+`` replace, ``-`` destroy, and ``Plan: X to add, Y to change, Z to destroy``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.manifest.model import DesiredState
from orchestrator.reconcile.budget import budget_warnings, recorded
from orchestrator.reconcile.lines import Action, Change, Kind, Op, PlanProblem, Unchanged
from orchestrator.reconcile.planner import (
    Planner,
    blocked_message,
    delete_collection,
    transaction_actions,
)
from orchestrator.reconcile.rules import (
    PinRules,
    field_changes,
    link_pin_name,
    load_key,
    pin_reason,
    previous_link,
    target_fields,
    target_kind,
    topo_order,
)
from orchestrator.reconcile.selector import Selector
from orchestrator.reconcile.state import ActualState, Foreign

if TYPE_CHECKING:
    from orchestrator.reconcile.actions import Delete, Detach


@dataclass(frozen=True, slots=True)
class Plan:
    """What an apply runs: ``actions`` in the order the transaction runs them (see
    :mod:`orchestrator.reconcile.actions`), plan-time problems, what bpforch leaves alone
    under its root (``foreign``), and collections adopted from their ownership markers
    because no record listed them (``adopted``) or because their tree holds a later
    generation than the record, left by a killed apply (``recovered``). ``owner_token``: of
    the root's owner marker, as observed (empty: the apply claims the root);
    ``own_programs``: the ids of bpforch's programs (recorded, or left by a killed apply),
    whose hooks are not someone else's.

    ``changes``, the lines the plan prints, are rendered from the actions: per collection
    (dependencies first; deletes last, dependents before what they use), in the order
    their actions run."""

    actions: tuple[Action, ...] = ()
    problems: tuple[PlanProblem, ...] = ()
    foreign: tuple[Foreign, ...] = ()
    adopted: tuple[str, ...] = ()
    recovered: tuple[str, ...] = ()
    owner_token: bytes = field(default=b"", repr=False, compare=False)
    own_programs: frozenset[int] = field(default=frozenset(), repr=False, compare=False)
    # programs above 80% of the verifier's budget at the last apply
    warnings: tuple[str, ...] = ()
    _changes: tuple[Change, ...] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def changes(self) -> tuple[Change, ...]:
        """The lines the plan prints: each action's lines, grouped per collection (in the
        order the collections first come), in the order the actions run."""
        if self._changes is None:
            by_collection: dict[str, list[Change]] = {}
            for action in self.actions:
                for line in action.lines:
                    by_collection.setdefault(line.collection, []).append(line)
            changes = tuple(line for lines in by_collection.values() for line in lines)
            object.__setattr__(self, "_changes", changes)
            return changes
        return self._changes

    @property
    def runs(self) -> bool:
        """Whether applying it runs a transaction (anything but leaving collections as they
        are: changes, leftovers to remove, or bookkeeping such as claiming the root)."""
        return any(not isinstance(a, Unchanged) for a in self.actions)

    @property
    def garbage(self) -> tuple[Path, ...]:
        """The leftovers of interrupted applies that this apply removes."""
        if not self.runs:  # only Unchanged actions
            return ()
        from orchestrator.reconcile.actions import RemoveLeftover

        return tuple(a.path for a in self.actions if isinstance(a, RemoveLeftover))

    @property
    def kept(self) -> frozenset[str]:
        """Updated collections whose live programs and maps stay (only attachments,
        metadata or pins change)."""
        if not self.runs:  # only Unchanged actions
            return frozenset()
        from orchestrator.reconcile.actions import Keep

        return frozenset(a.collection for a in self.actions if isinstance(a, Keep))

    def counts(self) -> tuple[int, int, int]:
        """(to add, to change, to destroy), counting maps, programs and attachments; a
        replacement counts as one add and one destroy."""
        add = change = destroy = 0
        with_children = {c.collection for c in self.changes if c.kind is not Kind.COLLECTION}
        for c in self.changes:
            if c.kind is Kind.COLLECTION and c.collection in with_children:
                continue
            if c.op is Op.CREATE:
                add += 1
            elif c.op is Op.UPDATE:
                change += 1
            elif c.op is Op.REPLACE:
                add += 1
                destroy += 1
            elif c.op is Op.DELETE:
                destroy += 1
        return add, change, destroy

    @property
    def has_changes(self) -> bool:
        return any(c.op is not Op.NOOP for a in self.actions for c in a.lines)

    def collection_op(self, name: str) -> Op | None:
        for c in self.changes:
            if c.kind is Kind.COLLECTION and c.collection == name:
                return c.op
        return None

    def collections(self, *ops: Op) -> list[str]:
        """Names of the collections whose collection-level op is one of ``ops``, in plan
        order."""
        return [c.collection for c in self.changes if c.kind is Kind.COLLECTION and c.op in ops]

    def change(self, collection: str, kind: Kind, name: str) -> Change | None:
        for c in self.changes:
            if c.collection == collection and c.kind == kind and c.name == name:
                return c
        return None

    def changes_for(self, collection: str, kind: Kind) -> list[Change]:
        """The lines of one kind about one collection, in plan order."""
        return [c for c in self.changes if c.collection == collection and c.kind == kind]

    def summary(self) -> str:
        add, change, destroy = self.counts()
        return f"Plan: {add} to add, {change} to change, {destroy} to destroy."

    def to_json(self) -> dict[str, object]:
        add, change, destroy = self.counts()
        return {
            "changes": [c.to_json() for c in self.changes],
            "problems": [p.to_json() for p in self.problems],
            "garbage": [str(p) for p in self.garbage],
            "foreign": [f.to_json() for f in self.foreign],
            "adopted": list(self.adopted),
            "recovered": list(self.recovered),
            "warnings": list(self.warnings),
            "counts": {"add": add, "change": change, "destroy": destroy},
            "has_changes": self.has_changes,
            "actions": [a.to_json() for a in self.actions],
        }

    def __str__(self) -> str:
        lines = [str(c) for c in self.changes if c.printed or c.kind is Kind.COLLECTION]
        lines += [f"error: {p}" for p in self.problems]
        lines.append(self.summary())
        return "\n".join(lines)


def _plan(
    actual: ActualState,
    actions: Sequence[Action],
    problems: Sequence[PlanProblem],
    warnings: tuple[str, ...] = (),
    programs: Iterable[int] | None = None,
) -> Plan:
    """The plan of ``actions``, with what the transaction needs from ``actual`` (the owner
    token, the ids of bpforch's programs: ``programs``, if known, and the leftovers')."""
    own = actual.ownership
    if programs is None:
        programs = {p.id for c in actual.collections.values() for p in c.record.programs.values()}
    return Plan(
        tuple(actions),
        tuple(problems),
        own.foreign,
        own.adopted,
        own.recovered,
        own.token,
        frozenset(programs) | own.leftover_programs,
        warnings,
    )


def plan(
    desired: DesiredState,
    actual: ActualState,
    *,
    prune: bool = False,
    selector: Selector | None = None,
) -> Plan:
    """Diff ``desired`` against ``actual``. Pure: no syscall, no file access.

    An unchanged collection (equal digest, no drift) gives one NOOP line. A changed one
    reloads its programs; its attachments are switched in place where the link type allows
    it (xdp, tcx, cgroup, netns) and make-before-break otherwise; preserved maps are handed
    to the new generation. Every field of an attachment is compared with the record: a
    field of the hook makes another attachment, an XDP mode the kernel does not run yet is
    a re-attach, a new tcx position a make-before-break with a fresh program instance (see
    :func:`reattached`), and anything else a recorded ``~`` change. With ``prune``,
    recorded collections that are no longer declared are deleted (dependents first).
    Programs of declared collections that used more than 80% of the verifier's budget at
    the last apply are ``warnings``. With a ``selector``, only the declared collections
    whose labels it selects are planned (and pruned: the recorded ones it selects); a
    selection that would leave a collection without the map it takes from another
    (``from``) is a problem naming both."""
    planner = Planner(desired, actual, prune, selector)
    actions = planner.run()
    records = {n: c.record for n, c in actual.collections.items()}
    warnings = budget_warnings(recorded(records, desired.collections), recorded=True)
    if actions is None:
        return Plan((), tuple(planner.problems), warnings=warnings)
    warnings = (*warnings, *planner.warnings)
    return _plan(actual, actions, planner.problems, warnings, planner.own_prog_ids)


def plan_destroy(
    actual: ActualState, names: Sequence[str] | None, selector: Selector | None = None
) -> Plan:
    """The plan that destroys ``names`` (every recorded collection if None), dependents
    first; with a ``selector``, only those of them whose recorded labels it selects.
    Unknown names are problems, and so is a collection destroyed under another that stays
    (a ``from`` of it)."""
    problems: list[PlanProblem] = []
    blocked = {f.collection: f for f in actual.foreign if f.collection}
    if names is None:
        chosen = dict(actual.collections)
    else:
        chosen = {}
        for n in names:
            if n in actual.collections:
                chosen[n] = actual.collections[n]
            elif n in blocked:
                problems.append(
                    PlanProblem(n, f"not applied by bpforch: {blocked_message(blocked[n])}")
                )
            else:
                known = ", ".join(sorted(actual.collections)) or "none"
                problems.append(PlanProblem(n, f"not applied by bpforch (applied: {known})"))
    if selector is not None:
        chosen = {n: c for n, c in chosen.items() if selector.matches(c.record.labels)}
    for n in sorted(chosen):
        if n in blocked:
            problems.append(PlanProblem(n, blocked_message(blocked[n])))
            del chosen[n]
    for name, c in sorted(actual.collections.items()):
        if name in chosen:
            continue
        for dep in c.record.depends_on:
            if dep in chosen:
                problems.append(
                    PlanProblem(
                        dep,
                        f"collection {name} uses its maps (destroy {name} too, or first)",
                    )
                )
    order, _ = topo_order({n: c.record.depends_on for n, c in chosen.items()})
    deleted: list[Delete] = []
    detaches: list[Detach] = []
    for name in reversed(order):
        delete_collection(deleted, detaches, chosen[name], "destroy")
    return _plan(actual, transaction_actions(actual, [], [], deleted, detaches), problems)


__all__ = [
    "Change",
    "Kind",
    "Op",
    "PinRules",
    "Plan",
    "PlanProblem",
    "field_changes",
    "link_pin_name",
    "load_key",
    "pin_reason",
    "plan",
    "plan_destroy",
    "previous_link",
    "target_fields",
    "target_kind",
]
