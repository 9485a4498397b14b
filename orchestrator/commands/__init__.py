"""Day-2 verbs of the ``bpforch`` command line: ``inspect``, ``map`` and ``events``, added to
the parser by :func:`add_commands` (``orchestrator/cli.py`` calls it). Each verb is argument
parsing and rendering over a library API: :mod:`orchestrator.manifest.inspection`,
:mod:`orchestrator.reconcile.live_maps`, :class:`orchestrator.ebpf.PerfReader`."""

from __future__ import annotations

import argparse

from orchestrator.commands.events import add_command as add_events
from orchestrator.commands.maps import add_command as add_map
from orchestrator.commands.objects import add_command as add_inspect


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``inspect``, ``map`` and ``events``. Each sets ``func(args, out, err) -> int``."""
    add_inspect(subparsers)
    add_map(subparsers)
    add_events(subparsers)
