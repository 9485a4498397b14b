"""The cyclic garbage collector paused while a bounded burst of allocation runs.

Loading a directory of manifests or reading the state record builds some hundred thousand
small objects that all stay alive (documents, positions, records). Each generation-2
collection the allocation triggers walks every object in the process, the imported modules
included, and finds nothing to free: a tenth of a no-op ``bpforch plan``'s time. The inputs
are bounded (size caps on manifests and on the record), and what cyclic garbage the burst
makes is collected once the collector runs again.

Pauses nest and may overlap across threads: the collector is enabled again when the last
pause ends, and only if it was enabled when the first began (a caller that disabled it keeps
it disabled).

A process that runs one bounded command and exits (the console script's ``plan``,
``apply`` …: see :func:`freeze_bursts`) also freezes what each burst built when the last
pause ends (``gc.freeze``): it stays alive until the command ends anyway, and the collector
would otherwise walk it once per generation it passes through (a no-op ``plan`` of 1,000
collections spent a tenth of its time there). Cyclic garbage a frozen burst made is then
never collected, so a long-running process (the daemon, a test run) never freezes.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_was_enabled = False
_freeze = False


def freeze_bursts(on: bool = True) -> None:
    """From now on in this process, freeze what a burst built when its last pause ends
    (see the module; ``on=False`` stops it). Only for a process that runs one bounded
    command and exits."""
    global _freeze
    _freeze = on


@contextmanager
def gc_paused() -> Iterator[None]:
    """Run the body with the cyclic garbage collector disabled (see the module)."""
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                if _freeze:
                    gc.freeze()
                if _was_enabled:
                    gc.enable()
