"""Loader speed: bpforch against libbpf on the same objects, in the same run.

    .venv/bin/python benchmarks/loader_bench.py [--reps 30] [--batch 5] [OBJ ...]

For each object (default: ``bpf/*.o`` and libxdp1's ``/usr/lib/x86_64-linux-gnu/bpf/*.o``)
it times, interleaved in batches so both sides see the same machine state, against libbpf's
``bpf_object__open_file`` (open) and ``bpf_object__load`` (load), which keep no cache:

- cold: bpforch ``CollectionSpec.from_file(obj, cache=False)`` (a full parse) and
  ``Collection(spec)`` on that new spec (its BTF is marshalled for the first time);
- warm: ``CollectionSpec.from_file(obj)`` served by the spec cache (a copy of the parsed
  spec) and ``Collection(spec)`` (the marshalled BTF and encoded func/line info are reused):
  what a long-running orchestrator pays for an object it has seen before.

Both ratios are bpforch / libbpf open+load measured in the same run.
The floor of a warm load: after the timed rounds, more warm loads run with the ``bpf()``
syscalls timed (bpforch's one call site, wrapped): the columns "warm in bpf()" (the
kernel's work, map creation and program loads: what no loader can avoid) and "warm
Python" (the rest), with the number of ``bpf()`` calls per load. The wrapper is not in
place while the ratios are timed.
libbpf runs in a small C harness (``benchmarks/harness``, built here with gcc against
Debian's libbpf-dev) that times each repetition itself, so process start-up is not counted.
Closing is not timed on either side. Figures are medians; ratios are bpforch / libbpf.
Also printed: the start-up costs in a fresh interpreter (imports, first parse, a second
uncached one, a cached one), and the **first load in a new process** of each object
(``--first-rounds``, default 5, each in a fresh interpreter started for it, after its
imports): served by the persisted spec cache (filled by an earlier process), and with no
persisted cache; against libbpf's first open+load in a fresh ``libbpf_bench`` process
(both sides pay their once-per-process costs: feature probes, first syscalls).
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
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator import ebpf  # noqa: E402
from orchestrator.ebpf import _sys  # noqa: E402

HARNESS_DIR = ROOT / "benchmarks" / "harness"
BUILD_DIR = ROOT / "benchmarks" / "build"
HARNESS = BUILD_DIR / "libbpf_bench"
LIBXDP_DIR = Path("/usr/lib/x86_64-linux-gnu/bpf")


@dataclass
class Samples:
    parse: list[float] = field(default_factory=list)  # libbpf open / bpforch cold parse
    full: list[float] = field(default_factory=list)  # open+load / cold parse+load
    warm_parse: list[float] = field(default_factory=list)  # bpforch: spec cache hit
    warm_full: list[float] = field(default_factory=list)  # bpforch: cache hit + load
    split: list[tuple[float, float, int]] = field(default_factory=list)  # warm: (all, bpf(), calls)
    error: str = ""


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
    """``n`` cold repetitions (no spec cache: a full parse, then a load whose BTF is
    marshalled afresh), then ``n`` warm ones (the spec cache holds the object: what a
    long-running orchestrator sees)."""
    opts = ebpf.CollectionOptions(pin_path=pin_root)
    try:
        for cache, parse, full in (
            (False, into.parse, into.full),
            (True, into.warm_parse, into.warm_full),
        ):
            gc.collect()
            for _ in range(n):
                t0 = time.perf_counter_ns()
                spec = ebpf.CollectionSpec.from_file(obj, cache=cache)
                t1 = time.perf_counter_ns()
                coll = ebpf.Collection(spec, opts)
                t2 = time.perf_counter_ns()
                coll.close()
                parse.append((t1 - t0) / 1e6)
                full.append((t2 - t0) / 1e6)
    except ebpf.Error as err:
        into.error = str(err).splitlines()[0]


class _TimedLibc:
    """Stands in for ``_sys._libc``: times every ``syscall()`` (bpf() on a load path)."""

    def __init__(self, libc: object) -> None:
        self._libc = libc
        self.ns = 0
        self.calls = 0

    def syscall(self, *args: object) -> int:
        t0 = time.perf_counter_ns()
        try:
            return self._libc.syscall(*args)  # type: ignore[attr-defined, no-any-return]
        finally:
            self.ns += time.perf_counter_ns() - t0
            self.calls += 1

    def __getattr__(self, name: str) -> object:
        return getattr(self._libc, name)


def warm_split(obj: Path, n: int, pin_root: Path, into: Samples) -> None:
    """``n`` warm parse+loads with ``bpf()`` timed: (total ms, ms inside bpf(), calls)."""
    opts = ebpf.CollectionOptions(pin_path=pin_root)
    real = _sys._libc
    timed = _TimedLibc(real)
    _sys._libc = timed  # type: ignore[assignment]
    try:
        for _ in range(n):
            timed.ns = timed.calls = 0
            t0 = time.perf_counter_ns()
            spec = ebpf.CollectionSpec.from_file(obj)
            coll = ebpf.Collection(spec, opts)
            t1 = time.perf_counter_ns()
            calls, ns = timed.calls, timed.ns
            coll.close()
            into.split.append(((t1 - t0) / 1e6, ns / 1e6, calls))
    except ebpf.Error as err:
        into.error = str(err).splitlines()[0]
    finally:
        _sys._libc = real


def cold_start(obj: Path) -> tuple[float, float, float, float, float]:
    """In fresh interpreters with bytecode cached (as an installed package runs; the
    bytecode goes under benchmarks/build): import of ``orchestrator.ebpf``, the lazy import of
    the ELF reader and the spec cache, the first parse, a second uncached parse
    and a cached one. Medians of 7."""
    code = (
        "import sys, time; t0 = time.perf_counter_ns(); sys.path.insert(0, sys.argv[1]);"
        "from orchestrator import ebpf; t1 = time.perf_counter_ns();"
        "import orchestrator.ebpf.elf, orchestrator.ebpf.speccache; t2 = time.perf_counter_ns();"
        "f = ebpf.CollectionSpec.from_file; p = sys.argv[2];"
        "f(p); t3 = time.perf_counter_ns(); f(p, cache=False); t4 = time.perf_counter_ns();"
        "f(p); t5 = time.perf_counter_ns();"
        "print(*((b - a) / 1e6 for a, b in ((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5))))"
    )
    env = dict(os.environ, PYTHONPYCACHEPREFIX=str(BUILD_DIR / "pycache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    runs = []
    for i in range(8):
        out = subprocess.run(
            [sys.executable, "-c", code, str(ROOT), str(obj)],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        ).stdout.split()
        if i:  # the first run writes the bytecode
            runs.append([float(x) for x in out])
    a, b, c, d, e = (statistics.median(col) for col in zip(*runs, strict=True))
    return a, b, c, d, e


@dataclass
class First:
    libbpf: list[float] = field(default_factory=list)  # first open+load in a process
    served: list[float] = field(default_factory=list)  # persisted spec cache + load
    parsed: list[float] = field(default_factory=list)  # no persisted cache: parse + load
    error: str = ""


def first_loads(objects: list[Path], pin_root: Path, rounds: int) -> dict[Path, First]:
    """The first load of each object in fresh processes (see the module docstring)."""
    env = dict(os.environ, PYTHONPYCACHEPREFIX=str(BUILD_DIR / "pycache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    child = [sys.executable, str(ROOT / "benchmarks" / "first_load_child.py"), str(ROOT)]
    out: dict[Path, First] = {o: First() for o in objects}

    def run(cache: str, obj: Path) -> tuple[float, bool]:
        proc = subprocess.run(
            [*child, cache, str(pin_root), str(obj)], capture_output=True, text=True, env=env
        )
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.strip().splitlines()[-1])
        _, full, served = proc.stdout.split()
        return float(full), served == "1"

    with tempfile.TemporaryDirectory(prefix="bpforch-bench-cache-") as tmp:
        cache_dir = Path(tmp) / "cache"  # made 0700 by the cache itself
        for o in objects:  # an earlier process parses each object and persists it
            try:
                run(str(cache_dir), o)
            except RuntimeError as err:
                out[o].error = str(err)
        for _r in range(rounds):
            for o in objects:
                f = out[o]
                if f.error:
                    continue
                lib = Samples()
                libbpf_batch(o, 1, pin_root, lib)
                if lib.error:
                    f.error = f"libbpf: {lib.error}"
                    continue
                f.libbpf.extend(lib.full)
                for cache, into in ((str(cache_dir), f.served), ("-", f.parsed)):
                    ms, served = run(cache, o)
                    if served != (cache != "-"):
                        f.error = "the persisted cache did not serve it"
                    into.append(ms)
    return out


def print_first(objects: list[Path], firsts: dict[Path, First], rounds: int) -> None:
    print(
        f"\nfirst load in a new process ({rounds} fresh processes per object and side,"
        " medians in ms, imports not counted)"
    )
    print(
        "| object | libbpf open+load | persisted cache + load | ratio"
        " | no persisted cache: parse + load | ratio |"
    )
    print("|" + "---|" * 6)
    served: list[float] = []
    parsed: list[float] = []
    for o in objects:
        f = firsts[o]
        name = o.name if o.parent == ROOT / "bpf" else f"libxdp/{o.name}"
        if f.error:
            print(f"| {name} | not compared ({f.error}) |||||")
            continue
        lib = med(f.libbpf)
        rs, rp = med(f.served) / lib, med(f.parsed) / lib
        served.append(rs)
        parsed.append(rp)
        print(
            f"| {name} | {lib:.3f} | {med(f.served):.3f} | {rs:.2f}x"
            f" | {med(f.parsed):.3f} | {rp:.2f}x |"
        )
    if served:
        print(
            f"\nfirst load in a new process vs libbpf's: served by the persisted cache median"
            f" {statistics.median(served):.2f}x (min {min(served):.2f}x, max {max(served):.2f}x);"
            f" without it median {statistics.median(parsed):.2f}x"
        )


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=5)
    ap.add_argument("--first-rounds", type=int, default=5, help="0: skip the first loads")
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
    firsts: dict[Path, First] = {}
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
        for o in objects:
            if not own[o].error:
                warm_split(o, args.reps, pin_root, own[o])
        if args.first_rounds > 0:
            firsts = first_loads(objects, pin_root, args.first_rounds)
    finally:
        shutil.rmtree(pin_root, ignore_errors=True)

    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"loader_bench {now}, {os.uname().release}, {args.reps} reps, medians in ms")
    print(
        "| object | libbpf open | libbpf open+load | cold parse | cold parse+load | cold ratio"
        " | warm parse | warm parse+load | warm ratio | warm in bpf() | warm Python | bpf() calls |"
    )
    print("|" + "---|" * 12)
    r_cold: list[float] = []
    r_warm: list[float] = []
    r_cold_parse: list[float] = []
    r_warm_parse: list[float] = []
    shares: list[float] = []  # warm: the share of bpf() in a parse+load
    for o in objects:
        a, b = own[o], lib[o]
        name = o.name if o.parent == ROOT / "bpf" else f"libxdp/{o.name}"
        if a.error or b.error:
            why = f"bpforch: {a.error}" if a.error else f"libbpf: {b.error}"
            print(f"| {name} | not compared ({why}) |||||||||||")
            continue
        rc, rw = med(a.full) / med(b.full), med(a.warm_full) / med(b.full)
        in_bpf = med([b for _, b, _ in a.split])
        python = med([t - b for t, b, _ in a.split])
        calls = a.split[0][2] if a.split else 0
        shares.append(in_bpf / (in_bpf + python) if in_bpf + python else 0.0)
        r_cold.append(rc)
        r_warm.append(rw)
        r_cold_parse.append(med(a.parse) / med(b.parse))
        r_warm_parse.append(med(a.warm_parse) / med(b.parse))
        print(
            f"| {name} | {med(b.parse):.3f} | {med(b.full):.3f}"
            f" | {med(a.parse):.3f} | {med(a.full):.3f} | {rc:.2f}x"
            f" | {med(a.warm_parse):.3f} | {med(a.warm_full):.3f} | {rw:.2f}x"
            f" | {in_bpf:.3f} | {python:.3f} | {calls} |"
        )
    if r_cold:
        print(
            f"\nparse+load vs libbpf open+load: cold median {statistics.median(r_cold):.2f}x"
            f" (min {min(r_cold):.2f}x, max {max(r_cold):.2f}x);"
            f" warm median {statistics.median(r_warm):.2f}x"
            f" (min {min(r_warm):.2f}x, max {max(r_warm):.2f}x)"
        )
        print(
            f"parse vs libbpf open: cold median {statistics.median(r_cold_parse):.1f}x;"
            f" warm median {statistics.median(r_warm_parse):.2f}x"
        )
        print(
            f"warm parse+load inside bpf(): median {statistics.median(shares):.0%} of the time"
            f" (min {min(shares):.0%}, max {max(shares):.0%}); the rest is Python"
        )
    if firsts:
        print_first(objects, firsts, args.first_rounds)
    sample = ROOT / "bpf" / "xdp_counter.o"
    imp, lazy, first, second, cached = cold_start(sample)
    print(
        f"fresh interpreter, {sample.name}: import orchestrator.ebpf {imp:.1f} ms;"
        f" first from_file {lazy + first:.2f} ms ({lazy:.1f} ms importing the ELF reader and"
        f" the spec cache, {first:.2f} ms parsing); second (uncached)"
        f" {second:.2f} ms; cached {cached:.3f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
