"""``bpforch`` (the console script) and ``python -m orchestrator``: the command line of
:mod:`orchestrator.cli` with the verbs of the modules above it (``bpforch demo``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """One command, then the process exits (``one_shot``: see :func:`orchestrator.cli.main`)."""
    from orchestrator import cli, demo

    return cli.main(argv, extra_commands=(demo.add_command,), one_shot=True)


if __name__ == "__main__":
    sys.exit(main())
