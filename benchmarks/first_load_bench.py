"""The first load of a known object in a new process, against libbpf's, in one run.

    .venv/bin/python benchmarks/first_load_bench.py [--rounds 7] [--installed]
        [--against TREE] [--phases] [OBJ ...]

For each object (default: ``bpf/*.o`` and libxdp1's objects, as ``loader_bench.py``) and
round, in this order (rotated every round so no side always goes first): libbpf's first
open+load in a fresh ``libbpf_bench`` process, and bpforch's first ``from_file`` +
``Collection`` in a fresh interpreter (``first_load_child.py``, imports not counted) served
by the persisted spec cache, which an earlier untimed process of the same side filled.

The bpforch sides: this checkout run from its sources; with ``--installed`` also a wheel
built from it and installed with pip into a fresh virtualenv (what a user runs: the cache
key then identifies the code by the distribution's RECORD); with ``--against TREE`` the
same for another checkout (a ``git worktree`` of the revision to compare with). Each side
has its own cache directory. Printed: per object the medians in ms and each side's ratio
to libbpf, then the median ratio per side over all objects. With ``--phases``, then for
each side where its first load goes, step by step (see ``first_load_child.py``): medians in
microseconds per object, from as many more fresh processes per object as rounds.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from loader_bench import LIBXDP_DIR, Samples, build_harness, libbpf_batch, med  # noqa: E402

from tests.wheel import install_wheel  # noqa: E402

CHILD = ROOT / "benchmarks" / "first_load_child.py"
STEPS = ["identity", "object", "entry", "decode", "load"]  # first_load_child's, in order


@dataclass
class Side:
    name: str
    argv: list[str]  # the child's interpreter and its ROOT argument
    cache: Path
    ms: dict[Path, list[float]] = field(default_factory=dict)
    error: dict[Path, str] = field(default_factory=dict)
    phases: dict[Path, dict[str, list[float]]] = field(default_factory=dict)


def run(side: Side, obj: Path, pin_root: Path, env: dict[str, str]) -> float:
    proc = subprocess.run(
        [*side.argv, str(side.cache), str(pin_root), str(obj)],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError((proc.stderr.strip().splitlines() or ["failed"])[-1])
    _, full, served = proc.stdout.split()
    if served != "1":
        raise RuntimeError("the persisted cache did not serve it")
    return float(full)


def phases(side: Side, obj: Path, pin_root: Path, env: dict[str, str]) -> None:
    """One first load of ``obj`` taken apart (see ``first_load_child.py``), into
    ``side.phases``."""
    proc = subprocess.run(
        [*side.argv, str(side.cache), str(pin_root), str(obj)],
        capture_output=True,
        text=True,
        env=dict(env, BPFORCH_FIRST_LOAD_PHASES="1"),
    )
    if proc.returncode != 0:
        raise RuntimeError((proc.stderr.strip().splitlines() or ["failed"])[-1])
    steps = side.phases.setdefault(obj, {})
    for item in proc.stdout.split():
        step, _, us = item.partition("=")
        steps.setdefault(step, []).append(float(us))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--installed", action="store_true", help="also from an installed wheel")
    ap.add_argument("--against", type=Path, action="append", default=[], help="another tree")
    ap.add_argument("--phases", action="store_true", help="also where the time goes")
    ap.add_argument("objects", nargs="*", type=Path)
    args = ap.parse_args()
    objects: list[Path] = [o.resolve() for o in args.objects] or sorted(
        (ROOT / "bpf").glob("*.o")
    ) + sorted(LIBXDP_DIR.glob("*.o"))
    build_harness()
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    pin_root = Path("/sys/fs/bpf") / f"bpforch-first-{uuid.uuid4().hex[:8]}"
    pin_root.mkdir()
    try:
        with tempfile.TemporaryDirectory(prefix="bpforch-first-") as tmp:
            base = Path(tmp)
            sides: list[Side] = []
            for i, tree in enumerate([ROOT, *(t.resolve() for t in args.against)]):
                label = "this tree" if i == 0 else str(tree)
                sides.append(
                    Side(
                        f"{label} (sources)",
                        [sys.executable, str(CHILD), str(tree)],
                        base / f"cache-{i}-src",
                    )
                )
                if args.installed:
                    py = install_wheel(tree, base / f"wheel-{i}") / "bin" / "python"
                    sides.append(
                        Side(
                            f"{label} (installed)",
                            [str(py), str(CHILD), "-"],
                            base / f"cache-{i}-whl",
                        )
                    )
            lib: dict[Path, Samples] = {o: Samples() for o in objects}
            for s in sides:  # fill each side's persisted cache; compile its bytecode
                for o in objects:
                    s.ms[o] = []
                    for _ in range(2):
                        try:
                            run(s, o, pin_root, env)
                        except RuntimeError as err:
                            if "did not serve" not in str(err):
                                s.error[o] = str(err)
            for r in range(args.rounds):
                for o in objects:
                    order: list[Side | None] = [None, *sides]
                    k = r % len(order)
                    for s in order[k:] + order[:k]:
                        if s is None:
                            if not lib[o].error:
                                libbpf_batch(o, 1, pin_root, lib[o])
                        elif o not in s.error:
                            try:
                                s.ms[o].append(run(s, o, pin_root, env))
                            except RuntimeError as err:
                                s.error[o] = str(err)
            for r in range(args.rounds if args.phases else 0):
                for o in objects:
                    k = r % len(sides)  # rotated as above: the kernel may still be freeing
                    for s in sides[k:] + sides[:k]:  # what the previous object's load made
                        if o not in s.error:
                            try:
                                phases(s, o, pin_root, env)
                            except RuntimeError as err:
                                s.error[o] = str(err)
    finally:
        shutil.rmtree(pin_root, ignore_errors=True)

    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"first_load_bench {now}, {os.uname().release}, {args.rounds} rounds, medians in ms")
    print("| object | libbpf | " + " | ".join(f"{s.name} | ratio" for s in sides) + " |")
    print("|" + "---|" * (2 + 2 * len(sides)))
    ratios: dict[str, list[float]] = {s.name: [] for s in sides}
    for o in objects:
        name = o.name if o.parent == ROOT / "bpf" else f"libxdp/{o.name}"
        if lib[o].error:
            print(f"| {name} | libbpf: {lib[o].error} |")
            continue
        cells = [f"{med(lib[o].full):.3f}"]
        for s in sides:
            if o in s.error:
                cells += [s.error[o], ""]
                continue
            ratio = med(s.ms[o]) / med(lib[o].full)
            ratios[s.name].append(ratio)
            cells += [f"{med(s.ms[o]):.3f}", f"{ratio:.2f}x"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    for s in sides:
        rs = ratios[s.name]
        if rs:
            print(
                f"{s.name}: first load vs libbpf's median {statistics.median(rs):.2f}x"
                f" (min {min(rs):.2f}x, max {max(rs):.2f}x, {len(rs)} objects)"
            )
    for s in sides if args.phases else []:
        steps = sorted({k for v in s.phases.values() for k in v}, key=STEPS.index)
        print(f"\n{s.name}: where the first load goes, medians in us")
        print("| object | " + " | ".join(steps) + " |")
        print("|" + "---|" * (1 + len(steps)))
        for o, by_step in s.phases.items():
            name = o.name if o.parent == ROOT / "bpf" else f"libxdp/{o.name}"
            cells = [f"{med(by_step[k]):.0f}" for k in steps]
            print(f"| {name} | " + " | ".join(cells) + " |")
        if s.phases:
            cells = [
                f"{statistics.median(med(v[k]) for v in s.phases.values()):.0f}" for k in steps
            ]
            print("| median | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
