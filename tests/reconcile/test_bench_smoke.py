"""benchmarks/reconcile_bench.py runs and says where an apply from scratch spends its time
(not a timing test: two collections, one round)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent

pytestmark = pytest.mark.kernel


def test_scratch_steps_and_fixed_cost(pin_dir: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "reconcile_bench.py"),
            *("--noop", "0", "--scratch", "2", "--reps", "1", "--bpffs", str(pin_dir)),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    assert "no-op" not in out  # --noop 0: the apply from scratch only
    for what in ("no attachments", "with a tracepoint link each"):
        part = out.split(f"apply from scratch, 2 collections ({what}):")[1]
        part = part.split("apply from scratch")[0]
        steps = dict(re.findall(r"^    (\w+) +([\d.]+) ms", part, re.M))
        # the steps an apply from scratch runs, each timed (Attach only with a link)
        for step in ("observe", "facts", "plan", "ClaimRoot", "Stage", "Seal", "Commit"):
            assert step in steps, (step, part)
        assert ("Attach" in steps) == (what != "no attachments")
        assert "Delete" not in steps and "Detach" not in steps  # the destroy's steps
        assert re.search(r"an apply of 1 collection: cpu [\d.]+ ms \(one bare load", part)
    assert list(pin_dir.iterdir()) == []  # everything it made is removed
