"""The lines a plan prints (:class:`Change`, with its :class:`Op` and :class:`Kind`, and
the :class:`FieldDiff` under it), its problems (:class:`PlanProblem`), the base of its
actions (:class:`Action`) and the one action a plan that changes nothing is made of
(:class:`Unchanged`).

Every plan needs these; the actions that change something, and the order an apply runs
them in, are in :mod:`orchestrator.reconcile.actions` (which exports these names too),
imported only by a plan that has such an action to make, and by the transaction.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import ClassVar

from orchestrator.manifest.model import Source


class Op(enum.Enum):
    CREATE = "create"
    UPDATE = "update"  # in place
    REPLACE = "replace"  # -/+
    DELETE = "delete"
    NOOP = "noop"

    @property
    def symbol(self) -> str:
        return _SYMBOLS[self]


_SYMBOLS = {
    Op.CREATE: "+",
    Op.UPDATE: "~",
    Op.REPLACE: "-/+",
    Op.DELETE: "-",
    Op.NOOP: " ",
}


class Kind(enum.Enum):
    """What a line of the plan is about."""

    COLLECTION = "collection"
    MAP = "map"
    PROGRAM = "program"
    ATTACHMENT = "attachment"
    ENTRY = "entry"  # a map entry: name is the map, reason the key (and what changes)


def _shown(value: object) -> str:
    """A value of a field diff as a plan prints it: digests shortened, text bare, the rest
    as in a manifest (JSON)."""
    import json

    if value is None:
        return "(none)"
    if isinstance(value, str):
        if value.startswith("sha256:") and len(value) > 19:
            return value[:19] + "…"
        return value
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


@dataclass(frozen=True, slots=True)
class FieldDiff:
    """One field that changes, old -> new, printed as ``version: 1 → 2`` under the line it
    belongs to: a constant, a label or the object under a collection, ``max_entries`` under
    a map, an option under an attachment. None: the field is not set (on that side)."""

    field: str
    old: object
    new: object

    def __str__(self) -> str:
        return f"{self.field}: {_shown(self.old)} → {_shown(self.new)}"

    @staticmethod
    def shown(value: object) -> str:
        """A value as a plan (and status) prints it: digests shortened, text bare, the
        rest as in a manifest."""
        return _shown(value)

    def to_json(self) -> dict[str, object]:
        return {"field": self.field, "old": self.old, "new": self.new}


@dataclass(frozen=True, slots=True)
class Change:
    """One line of the plan. ``kind`` says what it is about; ``name`` the map/program name,
    the attachment key, or the collection name again. ``diffs``: the fields that change,
    printed under the line; ``title``: what the line shows in place of ``name`` (an
    attachment's program and hook, shorter than its key); ``shown``: a NOOP line the plan
    prints anyway, as ``=`` (a preserved map: what a reader looks for stays)."""

    op: Op
    kind: Kind
    collection: str
    name: str
    reason: str
    source: Source | None = field(default=None, compare=False)
    diffs: tuple[FieldDiff, ...] = field(default=(), compare=False)
    title: str = field(default="", compare=False)
    shown: bool = field(default=False, compare=False)

    @property
    def symbol(self) -> str:
        return "=" if self.shown and self.op is Op.NOOP else self.op.symbol

    @property
    def printed(self) -> bool:
        """Whether a rendered plan prints the line (changes, and NOOP lines ``shown``)."""
        return self.op is not Op.NOOP or self.shown

    def __str__(self) -> str:
        name = self.title or self.name
        what = self.collection if self.kind is Kind.COLLECTION else f"{self.collection}/{name}"
        if self.kind is Kind.ENTRY:
            return f"{self.symbol} entry {what} {self.reason}"
        diffs = "".join(f"; {d}" for d in self.diffs)
        return f"{self.symbol} {self.kind.value} {what}: {self.reason}{diffs}"

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "op": self.op.value,
            "kind": self.kind.value,
            "collection": self.collection,
            "name": self.name,
            "reason": self.reason,
            "source": str(self.source) if self.source is not None else None,
        }
        if self.title:
            out["title"] = self.title
        if self.diffs:
            out["diffs"] = [d.to_json() for d in self.diffs]
        return out


@dataclass(frozen=True, slots=True)
class PlanProblem:
    """A reason the plan cannot be applied, found before touching anything."""

    collection: str
    message: str
    source: Source | None = field(default=None, compare=False)

    def __str__(self) -> str:
        where = f" ({self.source})" if self.source is not None else ""
        return f"collection {self.collection}{where}: {self.message}"

    def to_json(self) -> dict[str, object]:
        return {
            "collection": self.collection,
            "message": self.message,
            "source": str(self.source) if self.source is not None else None,
        }


# ---------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True, kw_only=True)
class Action:
    """One step of an apply. ``lines``: what the plan prints for it."""

    action: ClassVar[str] = ""
    lines: tuple[Change, ...] = field(default=(), repr=False, compare=False)

    def to_json(self) -> dict[str, object]:
        return {"action": self.action}


@dataclass(frozen=True, slots=True)
class Unchanged(Action):
    """Leave a collection as it is (nothing runs)."""

    action: ClassVar[str] = "unchanged"
    collection: str

    def to_json(self) -> dict[str, object]:
        return {"action": self.action, "collection": self.collection}


__all__ = ["Action", "Change", "FieldDiff", "Kind", "Op", "PlanProblem", "Unchanged"]
