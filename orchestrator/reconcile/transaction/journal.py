"""The journal: what the transaction did that must be undone if it fails before the record
is written, in the order it did it."""

from __future__ import annotations

from collections.abc import Callable


class Journal:
    """Undo entries, each a description (for the error that reports a failed undo) and the
    call that undoes one step: a link switched back, a new link detached, a taken-over
    program attached again, a tree swap or move reversed. :meth:`rollback` runs them newest
    first."""

    def __init__(self) -> None:
        self._entries: list[tuple[str, Callable[[], None]]] = []

    def add(self, what: str, undo: Callable[[], None]) -> None:
        """Note a step that ``undo`` reverses (``what`` says what undoing it does)."""
        self._entries.append((what, undo))

    def rollback(self) -> list[str]:
        """Undo every step, newest first, and forget them; what could not be undone, as
        "WHAT: ERROR" (every undo is tried even when one fails)."""
        problems = []
        for what, undo in reversed(self._entries):
            try:
                undo()
            except Exception as err:
                problems.append(f"{what}: {err}")
        self._entries.clear()
        return problems


__all__ = ["Journal"]
