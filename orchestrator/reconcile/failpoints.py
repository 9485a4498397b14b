"""Failpoints: the named steps of an apply, where a caller can make the apply fail.

Steps, in the order an apply reaches them:

- ``load``: an object is about to be read and prepared (constants, substitutions);
- ``verify``: its programs are about to be loaded (the verifier runs);
- ``pin``: its new objects are about to be pinned under the staging directory;
- ``entries``: a map's declared entries are about to be written (subject
  ``collection/map``);
- ``attach``: a new link is about to be created (new attachment or make-before-break);
- ``take_over``: a foreign XDP program was detached (``take_over: true``) and the new link
  is about to be created in its place;
- ``switch``: a link is about to be switched to the new program in place;
- ``commit``: a staged collection directory is about to be swapped into place (or a
  deleted one moved out), once per collection;
- ``record``: the state record is about to be written;
- ``release``: the record is written (the apply is committed); the old generation is about
  to be released. A failure here is only a warning (the leftovers go with the next apply).

The transaction calls :meth:`Failpoints.reach` with the step and its subject (collection
name, attachment key for attach/switch/take_over, "" for record/release); raising there
makes the step fail, and the apply rolls back as for any other failure. The reconciler's
default, :class:`NoFailpoints`, does nothing. The test suite injects its own (raising,
pausing, or killing the process with SIGKILL for crash tests) through
``Reconciler(failpoints=...)``; nothing here reads the environment.
"""

from __future__ import annotations

from typing import Literal, Protocol, get_args

Step = Literal[
    "load",
    "verify",
    "pin",
    "entries",
    "attach",
    "take_over",
    "switch",
    "commit",
    "record",
    "release",
]
STEPS: tuple[Step, ...] = get_args(Step)


class Failpoints(Protocol):
    """What the transaction calls at each step of an apply."""

    def reach(self, step: Step, subject: str) -> None:
        """The apply reached ``step`` for ``subject``. Raising makes the step fail."""
        ...


class NoFailpoints:
    """Every step passes: what an apply runs with unless a caller injects failpoints."""

    def reach(self, step: Step, subject: str) -> None:
        return None

    def __repr__(self) -> str:
        return "NoFailpoints()"


__all__ = ["STEPS", "Failpoints", "NoFailpoints", "Step"]
