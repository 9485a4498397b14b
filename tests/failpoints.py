"""Failpoints the tests inject into the reconciler (product code only has the no-op ones, see
:mod:`orchestrator.reconcile.failpoints`).

- :class:`OnStep` calls a function at some steps (raise to fail the step, or pause, plant
  something, count): ``env.reconciler(OnStep(commit=pause))``;
- :class:`KillAt` kills the process with SIGKILL the n-th time a step is reached. It only
  makes sense in a process of its own: run this module as a program, ``python -m
  tests.failpoints STEP[:N] COMMAND ARGS...``, which is ``bpforch COMMAND ARGS...`` with
  ``KillAt(STEP, N)`` injected into its reconciler; :func:`run_killed` runs it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence

from orchestrator.reconcile import STEPS, Step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _step(name: str) -> Step:
    for s in STEPS:
        if s == name:
            return s
    raise ValueError(f"unknown step {name!r} (steps: {', '.join(STEPS)})")


class OnStep:
    """Call ``calls[step](subject)`` when the apply reaches ``step``."""

    def __init__(self, **calls: Callable[[str], None]) -> None:
        for name in calls:
            _step(name)
        self.calls = calls

    def reach(self, step: Step, subject: str) -> None:
        fn = self.calls.get(step)
        if fn is not None:
            fn(subject)


class KillAt:
    """SIGKILL this process the ``nth`` time the apply reaches ``step``."""

    def __init__(self, step: str, nth: int = 1) -> None:
        if nth < 1:
            raise ValueError(f"nth must be at least 1, got {nth}")
        self.step = _step(step)
        self.nth = nth
        self.count = 0

    @classmethod
    def parse(cls, text: str) -> KillAt:
        """``STEP`` or ``STEP:N``."""
        name, _, nth = text.partition(":")
        return cls(name, int(nth) if nth else 1)

    def reach(self, step: Step, subject: str) -> None:
        if step != self.step:
            return
        self.count += 1
        if self.count >= self.nth:
            os.kill(os.getpid(), signal.SIGKILL)


def run_killed(
    at: str, *argv: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``bpforch ARGV...`` in a subprocess, killed at ``at`` (``STEP`` or ``STEP:N``)."""
    return subprocess.run(
        [sys.executable, "-m", "tests.failpoints", at, *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def main(argv: Sequence[str]) -> int:
    from orchestrator.cli import main as bpforch

    if len(argv) < 2:
        print("usage: python -m tests.failpoints STEP[:N] COMMAND ARGS...", file=sys.stderr)
        return 2
    return bpforch(list(argv[1:]), failpoints=KillAt.parse(argv[0]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
