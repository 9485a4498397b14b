"""Run the model-based test of the declarative layer (tests/reconcile/model.py) for longer
than CI does, and say how much it explored.

    .venv/bin/python benchmarks/state_machine.py                  # 100 examples of <= 40 steps
    .venv/bin/python benchmarks/state_machine.py --min-steps 2000 # until 2,000 steps ran
    .venv/bin/python benchmarks/state_machine.py --shrink         # shrink a failure (slow)

Needs root and bpffs, like the kernel tests. A failure prints the (shrunk, with --shrink)
sequence of steps; turn it into a regression test in tests/reconcile/test_model.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from tests.reconcile import model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=100, help="examples per round")
    ap.add_argument("--steps", type=int, default=40, help="most steps per example")
    ap.add_argument("--min-steps", type=int, default=0, help="run rounds until this many steps")
    ap.add_argument("--shrink", action="store_true", help="shrink a failure (slow)")
    args = ap.parse_args(argv)
    start = time.monotonic()
    failed: BaseException | None = None
    with model.world() as w:
        rounds = 0
        while True:
            rounds += 1
            test = run_state_machine_as_test
            cfg = settings(
                max_examples=args.examples,
                stateful_step_count=args.steps,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
                report_multiple_bugs=False,
                phases=[Phase.generate, Phase.shrink] if args.shrink else [Phase.generate],
            )
            try:
                test(model.ModelMachine, settings=cfg)
            except BaseException as err:  # report what was explored, then the failure
                failed = err
                break
            if w.steps >= args.min_steps:
                break
        took = time.monotonic() - start
        print(f"state machine: {w.summary()}")
        print(f"{rounds} round(s) in {took:.1f} s ({w.steps / max(took, 1e-9):.1f} steps/s)")
    if failed is not None:
        print(f"FAILED: {failed!r}", file=sys.stderr)
        raise failed
    return 0


if __name__ == "__main__":
    sys.exit(main())
