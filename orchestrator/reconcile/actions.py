"""The values a plan is made of: what each line says (:class:`Change`, its :class:`Op` and
:class:`Kind`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

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


@dataclass(frozen=True, slots=True)
class Change:
    """One line of the plan. ``kind`` says what it is about; ``name`` the map/program name,
    the attachment key, or the collection name again."""

    op: Op
    kind: Kind
    collection: str
    name: str
    reason: str
    source: Source | None = field(default=None, compare=False)

    def __str__(self) -> str:
        what = self.collection if self.kind is Kind.COLLECTION else f"{self.collection}/{self.name}"
        return f"{self.op.symbol} {self.kind.value} {what}: {self.reason}"

    def to_json(self) -> dict[str, object]:
        return {
            "op": self.op.value,
            "kind": self.kind.value,
            "collection": self.collection,
            "name": self.name,
            "reason": self.reason,
            "source": str(self.source) if self.source is not None else None,
        }


__all__ = ["Change", "Kind", "Op"]
