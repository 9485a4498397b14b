"""Rendering shared by the day-2 verbs: ``--output``, JSON, aligned tables."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import TextIO

EXIT_OK = 0
EXIT_ERROR = 1


def output_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-o",
        "--output",
        choices=("human", "json"),
        default="human",
        help="output format (default: human)",
    )


def emit_json(data: object, out: TextIO) -> None:
    json.dump(data, out, indent=2, default=str)
    out.write("\n")


def table(rows: Sequence[Sequence[str]], out: TextIO, indent: str = "") -> None:
    """Rows (the first is the header) in columns, each as wide as its widest cell."""
    if not rows:
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        cells = [c.ljust(w) for c, w in zip(r, widths, strict=True)]
        print(indent + "  ".join(cells).rstrip(), file=out)


def error(err: TextIO, message: str) -> int:
    print(f"error: {message}", file=err)
    return EXIT_ERROR
