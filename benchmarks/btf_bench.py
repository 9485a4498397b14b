"""Kernel BTF and CO-RE load speed: bpforch against libbpf, in the same run.

    .venv/bin/python benchmarks/btf_bench.py [--reps 15] [--object TOOL]

Prints medians (ms) and ratios bpforch / libbpf for:

- vmlinux BTF: read ``/sys/kernel/btf/vmlinux``, index it and look ``task_struct`` up by
  name. bpforch: ``btf.Spec.parse`` + ``type_by_name`` (cold: a fresh spec each time);
  libbpf: ``btf__load_vmlinux_btf`` + ``btf__find_by_name_kind``. Also bpforch's cached
  path (``kernel_btf.load``, what every load after the first in a process pays).
- a CO-RE-heavy object from Debian's libbpf-tools (default: biolatency, 70 relocations),
  extracted from the tool binary: parse + CO-RE + load + close. libbpf re-reads vmlinux BTF
  on every load; bpforch caches it per process, so its warm figure excludes that and the
  "cold" figure includes a fresh kernel BTF parse each round.

- the first CO-RE load in a new process (``--first-rounds``, default 7): a fresh interpreter
  per round (imports not timed) loads the object once, with the persisted caches (spec and
  kernel BTF index, filled by an earlier process) and without them; libbpf's figure is its
  own first load in a fresh harness process (it reads and parses vmlinux BTF each time).

libbpf runs in ``tests/ebpf/harness/libbpf_load.c`` (built here with gcc -lbpf), which times
each repetition itself. Needs root. The machine may be shared: the rounds of both sides are
interleaved and the figures are medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator import ebpf  # noqa: E402
from orchestrator.ebpf import btf  # noqa: E402
from orchestrator.ebpf.btf import kernel as kernel_btf  # noqa: E402
from tests.ebpf.test_libbpf_tools import extract_objects  # noqa: E402

HARNESS_SRC = ROOT / "tests" / "ebpf" / "harness" / "libbpf_load.c"
VMLINUX = Path("/sys/kernel/btf/vmlinux")


def harness(out: Path) -> Path:
    exe = out / "libbpf_load"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(HARNESS_SRC), "-lbpf"], check=True)
    return exe


def libbpf_times(exe: Path, *args: str) -> list[float]:
    proc = subprocess.run([str(exe), *args], capture_output=True, text=True, check=True)
    return [int(ln.split()[1]) / 1e6 for ln in proc.stdout.splitlines() if ln.startswith("NS ")]


def timed(fn: object, reps: int) -> list[float]:
    assert callable(fn)
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def parse_vmlinux() -> None:
    spec = btf.Spec.parse(VMLINUX.read_bytes())
    spec.type_by_name("task_struct", btf.Struct)


def load_object(path: Path, cold: bool) -> None:
    if cold:
        kernel_btf._CACHE.clear()
    spec = ebpf.CollectionSpec.from_file(path)
    with ebpf.Collection(spec):
        pass


def first_loads(exe: Path, obj: Path, rounds: int, out: Path) -> tuple[list[float], ...]:
    """(libbpf, bpforch with the persisted caches, bpforch without) first loads of ``obj``,
    each in a fresh process."""
    env = dict(os.environ, PYTHONPYCACHEPREFIX=str(ROOT / "benchmarks" / "build" / "pycache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    child = [sys.executable, str(ROOT / "benchmarks" / "first_load_child.py"), str(ROOT)]
    cache = out / "cache"
    pins = Path("/sys/fs/bpf") / f"bpforch-btfbench-{os.getpid()}"
    pins.mkdir()
    try:

        def ours(cache_arg: str, check: bool = True) -> float:
            proc = subprocess.run(
                [*child, cache_arg, str(pins), str(obj)],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            _, full, served = proc.stdout.split()
            if check and (served == "1") != (cache_arg != "-"):
                sys.exit("the persisted cache did not serve the object")
            return float(full)

        ours(str(cache), check=False)  # an earlier process fills the caches
        theirs: list[float] = []
        served: list[float] = []
        parsed: list[float] = []
        for _ in range(rounds):
            theirs += libbpf_times(exe, "bench", "1", str(obj))
            served.append(ours(str(cache)))
            parsed.append(ours("-"))
        return theirs, served, parsed
    finally:
        shutil.rmtree(pins, ignore_errors=True)


def row(label: str, ours: list[float], theirs: list[float]) -> None:
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"{label:<44} {a:9.2f} {b:9.2f} {a / b:7.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--object", default="biolatency")
    ap.add_argument("--first-rounds", type=int, default=7, help="0: skip the first loads")
    args = ap.parse_args()
    tool = shutil.which(args.object) or f"/usr/sbin/{args.object}"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        exe = harness(out)
        objs = extract_objects(Path(tool).read_bytes())
        if not objs:
            sys.exit(f"{tool}: no embedded eBPF object")
        obj = out / f"{args.object}.bpf.o"
        obj.write_bytes(objs[0])
        nrelo = sum(len(p.core_relos) for p in ebpf.CollectionSpec.from_file(obj).programs.values())

        ours_btf: list[float] = []
        theirs_btf: list[float] = []
        ours_cold: list[float] = []
        ours_warm: list[float] = []
        theirs_load: list[float] = []
        load_object(obj, cold=False)  # warm imports and the kernel BTF cache once
        for _ in range(3):  # interleave so both sides see the same machine state
            n = max(1, args.reps // 3)
            ours_btf += timed(parse_vmlinux, n)
            theirs_btf += libbpf_times(exe, "btf", str(n))
            ours_warm += timed(lambda: load_object(obj, cold=False), n)
            ours_cold += timed(lambda: load_object(obj, cold=True), n)
            theirs_load += libbpf_times(exe, "bench", str(n), str(obj))
        cached = timed(kernel_btf.load, args.reps)
        firsts = first_loads(exe, obj, args.first_rounds, out) if args.first_rounds else None

    print(f"median of {len(ours_btf)} runs, ms       {'bpforch':>9} {'libbpf':>9} {'ratio':>8}")
    row("vmlinux BTF parse + index + lookup", ours_btf, theirs_btf)
    row("vmlinux BTF, bpforch process cache", cached, theirs_btf)
    row(f"{args.object} ({nrelo} CO-RE relos) load, warm", ours_warm, theirs_load)
    row(f"{args.object} load, cold kernel BTF each time", ours_cold, theirs_load)
    if firsts is not None:
        theirs_first, served, parsed = firsts
        print(f"first load in a new process, median of {len(served)} fresh processes each:")
        row(f"{args.object}, persisted spec + kernel BTF index", served, theirs_first)
        row(f"{args.object}, no persisted cache", parsed, theirs_first)


if __name__ == "__main__":
    main()
