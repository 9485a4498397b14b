"""The Python side of a warm load, without the kernel's: CPU time per load, two trees compared.

    .venv/bin/python benchmarks/warm_python.py [--loads 1000] [--rounds 3]
        [--against TREE] [OBJ ...]

What ``loader_bench.py`` calls a warm load (``CollectionSpec.from_file(obj)`` served by the
spec cache, then ``Collection(spec)``), plus the close, repeated ``--loads`` times after one
real load (so the load plans exist), with every ``bpf()`` answered in user space: a command
that makes an object returns a new fd of /dev/null, any other returns 0. What is left is
the loader's own Python, which the wall-clock figures of ``loader_bench.py`` mix with the
kernel's time and the machine's noise. Each figure is the least CPU time per load of 9
batches. The "spec hit" column is the part of it that ``from_file`` takes (the spec
cache's hit: a ``stat`` of the file and a served copy), timed alone the same way. A map
pinned by name is reopened from its real pin (under a temporary bpffs directory, made by
the first load): BPF_OBJ_GET and BPF_OBJ_GET_INFO_BY_FD go to the kernel, so those two
calls' kernel time is in the figures of objects with such maps (pinned.o).

With ``--against TREE`` (e.g. a ``git worktree`` of the revision to compare with) each
round runs this tree and TREE in turn, each in a fresh interpreter, and the medians of the
rounds and their ratio (this tree / TREE) are printed. Needs root and bpffs (the first,
real load of each object).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = (
    "cgroup_egress.o",
    "globals.o",
    "map_types.o",
    "model.o",
    "pinned.o",
    "tailcall.o",
    "tc_filter.o",
    "tp_counter.o",
    "xdp_counter.o",
)


def _least_cpu_us(work: Callable[[], object], loads: int) -> float:
    """The least CPU time of 9 batches of ``loads`` calls of ``work``, in µs per call."""
    best = float("inf")
    for _ in range(9):
        t0 = time.process_time_ns()
        for _ in range(loads):
            work()
        best = min(best, (time.process_time_ns() - t0) / loads / 1e3)
    return best


def measure(root: Path, objects: list[Path], loads: int) -> dict[str, list[float] | str]:
    """In this interpreter, with ``root``'s bpforch: µs of CPU per warm load and per spec
    cache hit alone, by object."""
    sys.path.insert(0, str(root))
    from orchestrator import ebpf
    from orchestrator.ebpf import _sys

    makes = {int(_sys.Cmd.MAP_CREATE), int(_sys.Cmd.BTF_LOAD), int(_sys.Cmd.PROG_LOAD)}
    reopen = {int(_sys.Cmd.OBJ_GET), int(_sys.Cmd.OBJ_GET_INFO_BY_FD)}  # a pin's: real
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    class UserSpaceBPF:
        """Stands in for ``_sys._libc``: answers bpf() without the kernel, but for
        reopening a pinned map (a real bpffs file)."""

        def __init__(self, libc: Any) -> None:
            self._libc = libc

        def syscall(self, nr: int, cmd: int, *args: object) -> int:
            if int(cmd) in reopen:
                return int(self._libc.syscall(nr, cmd, *args))
            return os.dup(null) if int(cmd) in makes else 0

        def __getattr__(self, name: str) -> object:
            return getattr(self._libc, name)

    out: dict[str, list[float] | str] = {}
    with tempfile.TemporaryDirectory(dir="/sys/fs/bpf", prefix="bpforch-warmpy-") as pins:
        opts = ebpf.CollectionOptions(pin_path=pins)
        for obj in objects:
            try:
                spec = ebpf.CollectionSpec.from_file(obj)
                ebpf.Collection(spec, opts).close()  # a real load: plans and pins are made
            except ebpf.Error as err:
                out[obj.name] = str(err).splitlines()[0]
                continue
            real = _sys._libc
            _sys._libc = UserSpaceBPF(real)  # type: ignore[assignment]
            try:
                hit = functools.partial(ebpf.CollectionSpec.from_file, obj)

                def load(hit: Callable[[], ebpf.CollectionSpec] = hit) -> None:
                    ebpf.Collection(hit(), opts).close()

                out[obj.name] = [_least_cpu_us(load, loads), _least_cpu_us(hit, loads)]
            finally:
                _sys._libc = real
    os.close(null)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loads", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--against", type=Path, help="another checkout to compare with")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("objects", nargs="*", type=Path)
    args = ap.parse_args()
    objects = [o.resolve() for o in args.objects] or [ROOT / "bpf" / n for n in DEFAULT]
    if args.child is not None:
        print(json.dumps(measure(args.child, objects, args.loads)))
        return 0
    trees = [ROOT] + ([args.against.resolve()] if args.against is not None else [])
    runs: dict[Path, list[dict[str, list[float] | str]]] = {t: [] for t in trees}
    for r in range(args.rounds):
        for tree in trees if r % 2 == 0 else trees[::-1]:
            proc = subprocess.run(
                [sys.executable, __file__, "--child", str(tree), "--loads", str(args.loads)]
                + [str(o) for o in objects],
                capture_output=True,
                text=True,
                check=True,
            )
            runs[tree].append(json.loads(proc.stdout))
    head = "| object | this tree µs | spec hit µs |" + (
        " against µs | spec hit µs | ratio |" if len(trees) > 1 else ""
    )
    print(f"warm_python: CPU µs per warm load, bpf() answered in user space, {args.rounds} rounds")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    ratios: list[float] = []
    for obj in objects:
        cells: list[str] = []
        meds: list[float] = []
        for tree in trees:
            got = [run[obj.name] for run in runs[tree]]
            nums = [g for g in got if not isinstance(g, str)]
            if len(nums) != len(got):
                why = next(g for g in got if isinstance(g, str))
                cells.append(f"not measured ({why}) | ")
                continue
            meds.append(statistics.median(n[0] for n in nums))
            cells.append(f"{meds[-1]:.1f} | {statistics.median(n[1] for n in nums):.1f}")
        if len(trees) > 1 and len(meds) == 2:
            ratios.append(meds[0] / meds[1])
            cells.append(f"{ratios[-1]:.2f}x")
        print(f"| {obj.name} | " + " | ".join(cells) + " |")
    if ratios:
        print(f"\nthis tree / {trees[1]}: median {statistics.median(ratios):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
