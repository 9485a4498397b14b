"""Errors of the reconciler. Messages name the collection and the manifest file:line."""

from __future__ import annotations

from orchestrator.manifest.model import Source


class ReconcileError(Exception):
    """Base class of plan and apply errors."""


class PlanError(ReconcileError):
    """The plan has problems (foreign owners, missing targets, incompatible maps …)."""


class ApplyError(ReconcileError):
    """Applying failed; the previous generation was restored (see the message).
    ``collection``: the collection the message starts by naming ("" when it names none, and
    the transaction puts where it was in front)."""

    def __init__(self, message: str, *, collection: str = "") -> None:
        super().__init__(message)
        self.collection = collection


class StateError(ReconcileError):
    """The state record can't be read or written, the lock can't be taken, or the bpffs
    root belongs to another state directory."""


class RecordError(StateError):
    """The state record exists but can't be understood. ``path`` and ``reason`` say which
    and why; the message ends with what to do."""

    def __init__(self, path: str, reason: str, hint: str) -> None:
        super().__init__(f"state record {path}: unreadable ({reason}) ({hint})")
        self.path = path
        self.reason = reason


def where(collection: str, source: Source | None) -> str:
    """``collection NAME (file:line:col)`` for messages."""
    if source is None:
        return f"collection {collection}"
    return f"collection {collection} ({source})"
