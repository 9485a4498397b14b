"""Whole-process command-line speed, against comparators measured in the same run.

    .venv/bin/python benchmarks/cli_bench.py [--runs 15] [--rounds 3] [--collections 5]

Each command runs ``--runs`` times per round in a fresh process, the commands interleaved
(so that each sees the same load on a shared machine); a round's figure is its median, and
the figure shown is the median of the rounds' medians (the spread of the rounds beside
it). Wall time is what the targets are about; the CPU time of the child (user + system,
from wait4) is shown too, since it is much less sensitive to other load on the machine.

- ``bpforch --help`` (target < 80 ms);
- ``bpforch validate manifests/`` (target < 150 ms);
- a no-op ``bpforch plan`` (target < 150 ms for the project's few collections; for more,
  150 ms plus 0.1 ms per collection, 250 ms for 1,000): ``--collections`` tp_counter
  collections with a tracepoint link each are applied first under a private bpffs
  directory and state directory (removed afterwards), then ``plan`` of the same manifests
  exits 0;
- comparators: ``python -c pass`` (the interpreter's own start-up in the same virtualenv,
  the floor of any Python command line) and ``bpftool version`` (a C tool); with
  ``--baseline DIR`` (a checkout of another revision, e.g. ``git archive main | tar -x -C
  DIR``) also the same three commands of DIR's bpforch, installed the same way.

bpforch runs as a user gets it: a wheel built from the sources (the files git knows) and
installed with pip into a fresh virtualenv, dependencies from .ci/setup's wheelhouse (pip
compiles the bytecode; no editable-install finder runs at start-up). ``--checkout`` runs
this checkout's editable install instead (bytecode compiled first with compileall, since
the environment here sets PYTHONDONTWRITEBYTECODE). Needs root, bpffs and tracefs.
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from reconcile_bench import write_manifests  # noqa: E402

from orchestrator.ebpf import bpffs_root  # noqa: E402
from tests.wheel import install_wheel  # noqa: E402

TARGETS_MS = {"--help": 80.0, "validate": 150.0, "plan (no-op)": 150.0}


def _sh(argv: list[str], cwd: Path | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}:\n{done.stdout}{done.stderr}")
    return done.stdout


def run_once(argv: list[str], expect: int) -> tuple[float, float]:
    """(wall, cpu) seconds of one run in a fresh process (in ``/``: nothing is imported
    from the current directory)."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd="/")
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    err = child.stderr.read() if child.stderr is not None else b""
    if child.stderr is not None:
        child.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code != expect:
        raise SystemExit(f"{' '.join(argv)}: exit {code}, expected {expect}\n{err.decode()}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=15, help="runs per command per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--collections", type=int, default=5, help="collections of the plan")
    ap.add_argument("--baseline", type=Path, metavar="DIR", help="also run DIR's bpforch")
    ap.add_argument("--checkout", action="store_true", help="run the editable checkout")
    opts = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bpforch-clibench-"))
    if opts.checkout:
        compileall.compile_dir(str(ROOT / "orchestrator"), quiet=1)
        bindir = Path(sys.executable).parent
    else:
        bindir = install_wheel(ROOT, work / "new") / "bin"
    exe, python = [str(bindir / "bpforch")], str(bindir / "python")
    root = bpffs_root() / f"bpforch-clibench-{uuid.uuid4().hex[:8]}"
    where = ["--bpffs-root", str(root), "--state-dir", str(work / "state")]
    manifests = work / "manifests"
    write_manifests(manifests, opts.collections, "tp_counter", attach=True)
    commands: dict[str, tuple[list[str], int]] = {
        "python -c pass": ([python, "-c", "pass"], 0),
        "bpftool version": (["bpftool", "version"], 0),
        "--help": ([*exe, "--help"], 0),
        "validate": ([*exe, "validate", str(ROOT / "manifests")], 0),
        "plan (no-op)": ([*exe, "plan", str(manifests), *where], 0),
    }
    if shutil.which("bpftool") is None:
        del commands["bpftool version"]
    if opts.baseline is not None:
        old = [str(install_wheel(opts.baseline.resolve(), work / "baseline") / "bin" / "bpforch")]
        commands["baseline --help"] = ([*old, "--help"], 0)
        commands["baseline validate"] = ([*old, "validate", str(ROOT / "manifests")], 0)
        commands["baseline plan"] = ([*old, "plan", str(manifests), *where], 0)
    try:
        run_once([*exe, "apply", str(manifests), *where], 0)
        rounds: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for _ in range(opts.rounds):
            samples: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
            for _ in range(opts.runs):
                for name, (argv, expect) in commands.items():
                    samples[name].append(run_once(argv, expect))
            for name, got in samples.items():
                walls, cpus = zip(*got, strict=True)
                rounds[name].append((statistics.median(walls), statistics.median(cpus)))
    finally:
        subprocess.run([*exe, "destroy", "--all", *where], capture_output=True, check=False)
        if root.exists():
            root.rmdir()  # empty once destroyed: bpforch removes what it made
        shutil.rmtree(work)

    load = os.getloadavg()[0]
    print(
        f"{opts.rounds} rounds x {opts.runs} runs per command, fresh processes, "
        f"{opts.collections} collections in the plan; load average {load:.1f} on "
        f"{os.cpu_count()} CPUs; medians of the rounds' medians (min-max of the rounds)"
    )
    base_wall = statistics.median(w for w, _ in rounds["python -c pass"])
    base_cpu = statistics.median(c for _, c in rounds["python -c pass"])
    print(f"{'command':<18} {'wall ms':>18} {'cpu ms':>8} {'wall/python':>12}  target")
    for name, figures in rounds.items():
        wall_ms = [w * 1000 for w, _ in figures]
        cpu_ms = [c * 1000 for _, c in figures]
        wall, cpu = statistics.median(wall_ms), statistics.median(cpu_ms)
        spread = f"({min(wall_ms):.0f}-{max(wall_ms):.0f})"
        ratio = wall / (base_wall * 1000)
        target = TARGETS_MS.get(name)
        if name == "plan (no-op)" and opts.collections > 5:
            target = 150.0 + 0.1 * opts.collections
        verdict = ""
        if target is not None:
            verdict = f"< {target:.0f} ms: {'met' if wall < target else 'NOT met'}"
        print(f"{name:<18} {wall:>8.1f} {spread:>9} {cpu:>8.1f} {ratio:>11.2f}x  {verdict}")
    print(
        f"start-up of this interpreter: {base_wall * 1000:.1f} ms wall, "
        f"{base_cpu * 1000:.1f} ms CPU"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
