"""Named steps of an apply, where tests inject failures (and crashes) against the real kernel.

Steps, in the order an apply reaches them:

- ``load``: an object is about to be read and prepared (constants, substitutions);
- ``verify``: its programs are about to be loaded (the verifier runs);
- ``pin``: its new objects are about to be pinned under the staging directory;
- ``attach``: a new link is about to be created (new attachment or make-before-break);
- ``switch``: a link is about to be switched to the new program in place;
- ``commit``: a staged collection directory is about to be swapped into place (or a
  deleted one moved out), once per collection;
- ``record``: the state record is about to be written;
- ``release``: the record is written (the apply is committed); the old generation is about
  to be released. A failure here is only a warning (the leftovers go with the next apply).

A hook receives the subject (collection name, or attachment key for attach/switch, or "" for
record/release). Raising from a hook makes the step fail. ``BPFORCH_TEST_CRASH_AT=STEP`` (or
``STEP:N`` for the N-th time the step is reached) makes the process kill itself with SIGKILL
there, for crash tests in a subprocess.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

STEPS = ("load", "verify", "pin", "attach", "switch", "commit", "record", "release")
CRASH_ENV = "BPFORCH_TEST_CRASH_AT"

HookFn = Callable[[str], None]


@dataclass(frozen=True)
class Hooks:
    load: HookFn | None = None
    verify: HookFn | None = None
    pin: HookFn | None = None
    attach: HookFn | None = None
    switch: HookFn | None = None
    commit: HookFn | None = None
    record: HookFn | None = None
    release: HookFn | None = None
    _counts: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def call(self, step: str, subject: str = "") -> None:
        """Run the hook for ``step`` (and crash there if the environment asks for it)."""
        assert step in STEPS, step
        crash = os.environ.get(CRASH_ENV)
        if crash:
            name, _, nth = crash.partition(":")
            if name == step:
                n = self._counts.get(step, 0) + 1
                self._counts[step] = n
                if n >= (int(nth) if nth else 1):
                    os.kill(os.getpid(), signal.SIGKILL)
        fn: HookFn | None = getattr(self, step)
        if fn is not None:
            fn(subject)
