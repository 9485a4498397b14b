"""Loader speed: bpforch against libbpf on the same objects, in the same run.

    .venv/bin/python benchmarks/loader_bench.py [--reps 30] [--batch 5] [OBJ ...]

For each object (default: ``bpf/*.o`` and libxdp1's ``/usr/lib/x86_64-linux-gnu/bpf/*.o``)
it times, interleaved in batches so both sides see the same machine state:

- parse: bpforch ``CollectionSpec.from_file`` vs libbpf ``bpf_object__open_file``;
- parse+load: the above plus bpforch ``Collection(spec)`` vs libbpf ``bpf_object__load``;
- load only: bpforch ``Collection(spec)`` from an already parsed spec (bpforch keeps no
  spec cache of its own; this is what a caller that keeps the spec pays).

libbpf runs in a small C harness (``benchmarks/harness``, built here with gcc against
Debian's libbpf-dev) that times each repetition itself, so process start-up is not counted.
Closing is not timed on either side. Figures are medians; ratios are bpforch / libbpf.
Also printed: a cold first parse in a fresh interpreter (imports excluded) vs warm.
Needs root and bpffs (maps pinned by name go under a temporary bpffs directory).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator import ebpf  # noqa: E402

HARNESS_DIR = ROOT / "benchmarks" / "harness"
BUILD_DIR = ROOT / "benchmarks" / "build"
HARNESS = BUILD_DIR / "libbpf_bench"
LIBXDP_DIR = Path("/usr/lib/x86_64-linux-gnu/bpf")


@dataclass
class Samples:
    parse: list[float] = field(default_factory=list)
    full: list[float] = field(default_factory=list)
    load_only: list[float] = field(default_factory=list)  # bpforch: from a parsed spec
    error: str = ""

    @property
    def load(self) -> list[float]:
        """Load time alone: measured (bpforch) or parse+load minus parse (libbpf)."""
        return self.load_only or [f - p for f, p in zip(self.full, self.parse, strict=True)]


def build_harness() -> Path:
    """Compile the C harness (gcc + libbpf-dev); returns its path."""
    subprocess.run(
        ["make", "-s", "-C", str(HARNESS_DIR), f"OUT={BUILD_DIR}"],
        check=True,
        capture_output=True,
        text=True,
    )
    return HARNESS


def libbpf_batch(obj: Path, n: int, pin_root: Path, into: Samples) -> None:
    proc = subprocess.run(
        [str(HARNESS), str(obj), str(n), str(pin_root)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        into.error = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
        return
    for line in proc.stdout.split("\n"):
        if line:
            parse_ns, full_ns = line.split()
            into.parse.append(int(parse_ns) / 1e6)
            into.full.append(int(full_ns) / 1e6)


def bpforch_batch(obj: Path, n: int, pin_root: Path, into: Samples) -> None:
    opts = ebpf.CollectionOptions(pin_path=pin_root)
    gc.collect()
    try:
        for _ in range(n):
            t0 = time.perf_counter_ns()
            spec = ebpf.CollectionSpec.from_file(obj)
            t1 = time.perf_counter_ns()
            coll = ebpf.Collection(spec, opts)
            t2 = time.perf_counter_ns()
            coll.close()
            into.parse.append((t1 - t0) / 1e6)
            into.full.append((t2 - t0) / 1e6)
            t3 = time.perf_counter_ns()
            coll = ebpf.Collection(spec, opts)
            t4 = time.perf_counter_ns()
            coll.close()
            into.load_only.append((t4 - t3) / 1e6)
    except ebpf.Error as err:
        into.error = str(err).splitlines()[0][:90]


def cold_vs_warm(obj: Path) -> tuple[float, float]:
    """First from_file in a fresh interpreter (imports done first) and a warm one after it."""
    code = (
        "import sys, time; sys.path.insert(0, sys.argv[1]);"
        "from orchestrator import ebpf;"
        "t0 = time.perf_counter_ns(); ebpf.CollectionSpec.from_file(sys.argv[2]);"
        "t1 = time.perf_counter_ns(); ebpf.CollectionSpec.from_file(sys.argv[2]);"
        "t2 = time.perf_counter_ns(); print((t1 - t0) / 1e6, (t2 - t1) / 1e6)"
    )
    colds, warms = [], []
    for _ in range(5):
        out = subprocess.run(
            [sys.executable, "-c", code, str(ROOT), str(obj)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        colds.append(float(out[0]))
        warms.append(float(out[1]))
    return statistics.median(colds), statistics.median(warms)


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=5)
    ap.add_argument("objects", nargs="*", type=Path)
    args = ap.parse_args()
    objects: list[Path] = [o.resolve() for o in args.objects] or sorted(
        (ROOT / "bpf").glob("*.o")
    ) + sorted(LIBXDP_DIR.glob("*.o"))
    build_harness()
    pin_root = Path("/sys/fs/bpf") / f"bpforch-bench-{uuid.uuid4().hex[:8]}"
    pin_root.mkdir()
    lib: dict[Path, Samples] = {o: Samples() for o in objects}
    own: dict[Path, Samples] = {o: Samples() for o in objects}
    try:
        for o in objects:  # one untimed round each: first-use probes, page cache
            bpforch_batch(o, 1, pin_root, Samples())
            libbpf_batch(o, 1, pin_root, Samples())
        rounds = max(1, args.reps // args.batch)
        for r in range(rounds):
            for o in objects:
                first, second = (
                    (libbpf_batch, bpforch_batch) if r % 2 else (bpforch_batch, libbpf_batch)
                )
                for fn in (first, second):
                    target = lib[o] if fn is libbpf_batch else own[o]
                    if not target.error:
                        fn(o, args.batch, pin_root, target)
    finally:
        shutil.rmtree(pin_root, ignore_errors=True)

    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"loader_bench {now}, {os.uname().release}, {args.reps} reps, medians in ms")
    head = (
        "| object | parse bpforch | parse libbpf | ratio | parse+load bpforch"
        " | parse+load libbpf | ratio | load bpforch | load libbpf | ratio |"
    )
    print(head)
    print("|" + "---|" * 10)
    ratios_full: list[float] = []
    ratios_parse: list[float] = []
    ratios_load: list[float] = []
    for o in objects:
        a, b = own[o], lib[o]
        name = o.name if o.parent == ROOT / "bpf" else f"libxdp/{o.name}"
        if a.error or b.error:
            why = f"bpforch: {a.error}" if a.error else f"libbpf: {b.error}"
            print(f"| {name} | not compared ({why}) |||||||||")
            continue
        rp, rf = med(a.parse) / med(b.parse), med(a.full) / med(b.full)
        rl = med(a.load) / med(b.load)
        ratios_parse.append(rp)
        ratios_full.append(rf)
        ratios_load.append(rl)
        print(
            f"| {name} | {med(a.parse):.2f} | {med(b.parse):.2f} | {rp:.1f}x"
            f" | {med(a.full):.2f} | {med(b.full):.2f} | {rf:.1f}x"
            f" | {med(a.load):.2f} | {med(b.load):.2f} | {rl:.1f}x |"
        )
    if ratios_full:
        print(
            f"\nparse+load ratio: median {statistics.median(ratios_full):.2f}x,"
            f" min {min(ratios_full):.2f}x, max {max(ratios_full):.2f}x;"
            f" parse ratio: median {statistics.median(ratios_parse):.1f}x;"
            f" load ratio: median {statistics.median(ratios_load):.1f}x"
        )
    sample = ROOT / "bpf" / "xdp_counter.o"
    cold, warm = cold_vs_warm(sample)
    print(f"cold first parse of {sample.name}: {cold:.2f} ms; warm: {warm:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
