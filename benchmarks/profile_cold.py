"""Where the loader's cold path spends its time: cProfile over parse+load, or a ledger of
the parse's stages.

    .venv/bin/python benchmarks/profile_cold.py [--reps 200] [--top 30] [--sort tottime]
                                                [--phase parse|load|both] [OBJ ...]
    .venv/bin/python benchmarks/profile_cold.py --ledger [--libbpf] [--reps 200] [OBJ ...]

Each repetition is what ``loader_bench.py`` times as "cold": ``CollectionSpec.from_file(obj,
cache=False)`` (a full parse, no cache of any kind) and ``Collection(spec)`` on that new spec
(BTF marshalled for the first time, maps created, programs loaded), then a close that is not
profiled. With ``--phase parse`` only the parse is profiled (nothing touches the kernel, so no
root is needed); with ``--phase load`` only the load. One untimed round per object first,
so that first-use costs (imports, feature probes, the kernel's BTF) stay out of the profile.
Prints the top functions by ``--sort`` (tottime: time in the function itself; cumulative:
with its callees) and the share of the time spent inside ``bpf()``.
Default objects: ``bpf/*.o`` that load here. Needs root and bpffs for the load phase.

``--ledger``: no profiler; each stage of the ELF reader (the reader's own methods, wrapped
with a clock) is timed in every parse, and the median microseconds of each stage per
object are printed with their share of the median parse ("other": the rest, the glue
between stages, building the spec and freeing the reader's tables when the parse returns;
what the clocks themselves cost, measured first, is taken off the total). With
``--libbpf`` (root, bpffs, the C harness of ``loader_bench.py``, built here), libbpf's
``bpf_object__open`` of the same object is timed in batches alternating with bpforch's,
and the ratio printed.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator import ebpf  # noqa: E402

DEFAULT = ("xdp_counter.o", "tc_filter.o", "map_types.o", "model.o", "tailcall.o", "pinned.o")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--sort", default="tottime", choices=("tottime", "cumulative", "ncalls"))
    ap.add_argument("--phase", default="both", choices=("parse", "load", "both"))
    ap.add_argument("--ledger", action="store_true", help="time the parse's stages")
    ap.add_argument("--libbpf", action="store_true", help="with --ledger: libbpf's open too")
    ap.add_argument("objects", nargs="*", type=Path)
    args = ap.parse_args()
    objects = [o.resolve() for o in args.objects] or [ROOT / "bpf" / n for n in DEFAULT]
    if args.ledger:
        return ledger(objects, args.reps, args.libbpf)
    pin_root = Path("/sys/fs/bpf") / f"bpforch-profile-{uuid.uuid4().hex[:8]}"
    loading = args.phase != "parse"
    if loading:
        pin_root.mkdir()
    opts = ebpf.CollectionOptions(pin_path=pin_root)
    prof = cProfile.Profile()
    try:
        for obj in objects:  # untimed: imports, feature probes, the kernel's BTF
            spec = ebpf.CollectionSpec.from_file(obj, cache=False)
            if loading:
                ebpf.Collection(spec, opts).close()
        for _ in range(args.reps):
            for obj in objects:
                if args.phase != "load":
                    prof.enable()
                spec = ebpf.CollectionSpec.from_file(obj, cache=False)
                if args.phase == "parse":
                    prof.disable()
                    continue
                prof.enable()
                coll = ebpf.Collection(spec, opts)
                prof.disable()
                coll.close()
    finally:
        if loading:
            shutil.rmtree(pin_root, ignore_errors=True)
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    total = stats.total_tt  # type: ignore[attr-defined]
    in_bpf = sum(
        tt
        for (file, _line, fn), (_cc, _nc, tt, _ct, _callers) in stats.stats.items()  # type: ignore[attr-defined]
        if fn == "<built-in method syscall>" or (fn == "bpf" and file.endswith("_sys/__init__.py"))
    )
    n = args.reps * len(objects)
    print(
        f"{args.phase} of {len(objects)} objects x {args.reps} reps: {total * 1e3 / n:.3f} ms"
        f" per object under the profiler; inside bpf(): {in_bpf / total:.0%}"
    )
    stats.sort_stats(args.sort).print_stats(args.top)
    print(out.getvalue())
    return 0


# The stages of a parse: (label, owner, attribute) of what is wrapped with a clock. They do
# not call each other, so their times add up.
def _stages() -> list[tuple[str, object, str]]:
    from orchestrator.ebpf import elf, externs
    from orchestrator.ebpf.btf import decode, ext

    reader = elf._Reader
    return [
        ("read the file", elf, "read_file"),
        ("section table, symbols, relocations", reader, "_load_sections"),
        (".BTF: header, index, bulk check", None, "btf.parse"),
        ("DATASEC fix-up", reader, "_fixup_datasecs"),
        (".BTF.ext", ext, "parse_ext"),
        ("BTF map definitions", reader, "_read_btf_maps"),
        ("legacy map definitions", reader, "_read_legacy_maps"),
        ("data sections, variables", reader, "_read_data_sections"),
        ("externs", externs, "collect"),
        ("functions", reader, "_read_functions"),
        ("linking programs", reader, "_link"),
        ("map contents", reader, "_read_map_contents"),
        ("kconfig", reader, "_read_kconfig"),
        ("struct_ops", reader, "_read_struct_ops"),
        ("validate (types not decoded)", decode, "validate"),
    ]


def _timed(spent: dict[str, int], label: str, fn: Callable[..., object]) -> Callable[..., object]:
    """``fn``, adding the nanoseconds of each call to ``spent[label]`` and counting the calls
    in ``spent["#" + label]``."""

    def wrapper(*args: object, **kwargs: object) -> object:
        t0 = time.perf_counter_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[label] = spent.get(label, 0) + time.perf_counter_ns() - t0
            spent["#" + label] = spent.get("#" + label, 0) + 1

    return wrapper


def _clock_cost() -> float:
    """What wrapping adds to one call, in µs: a wrapped no-op against the bare one."""
    spent: dict[str, int] = {}

    def noop() -> None:
        return None

    wrapped = _timed(spent, "noop", noop)
    rounds = []
    for _ in range(20):
        t0 = time.perf_counter_ns()
        for _ in range(200):
            wrapped()
        t1 = time.perf_counter_ns()
        for _ in range(200):
            noop()
        rounds.append((t1 - t0 - (time.perf_counter_ns() - t1)) / 200 / 1e3)
    return max(statistics.median(rounds), 0.0)


@contextmanager
def _clocked(spent: dict[str, int]) -> Iterator[None]:
    """Wrap every stage so that it adds its nanoseconds to ``spent[label]``."""
    from orchestrator.ebpf.btf import Spec

    undo: list[Callable[[], None]] = []

    def timed(label: str, fn: Callable[..., object]) -> Callable[..., object]:
        return _timed(spent, label, fn)

    try:
        for label, owner, attr in _stages():
            if owner is None:  # Spec.parse, a classmethod
                parse = Spec.__dict__["parse"]
                setattr(Spec, "parse", classmethod(timed(label, parse.__func__)))  # noqa: B010
                undo.append(lambda parse=parse: setattr(Spec, "parse", parse))  # type: ignore[misc]
                continue
            fn = getattr(owner, attr)
            setattr(owner, attr, timed(label, fn))
            undo.append(lambda owner=owner, attr=attr, fn=fn: setattr(owner, attr, fn))  # type: ignore[misc]
        yield
    finally:
        for step in reversed(undo):
            step()


def _libbpf_open(obj: Path, n: int, pin_root: Path) -> list[float]:
    """``n`` of libbpf's open of ``obj`` in the C harness, in µs (empty if it fails)."""
    proc = subprocess.run(
        [str(ROOT / "benchmarks" / "build" / "libbpf_bench"), str(obj), str(n), str(pin_root)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        return []
    return [int(line.split()[0]) / 1e3 for line in proc.stdout.splitlines() if line]


def ledger(objects: list[Path], reps: int, libbpf: bool) -> int:
    """Print, per object, the median µs of each stage of a cold parse."""
    pin_root = Path("/sys/fs/bpf") / f"bpforch-profile-{uuid.uuid4().hex[:8]}"
    if libbpf:
        subprocess.run(
            [
                "make",
                "-s",
                "-C",
                str(ROOT / "benchmarks" / "harness"),
                f"OUT={ROOT / 'benchmarks' / 'build'}",
            ],
            check=True,
        )
        pin_root.mkdir()
    labels = [label for label, _, _ in _stages()]
    batch = 10
    clock = _clock_cost()
    print(f"(each stage's clock costs {clock:.2f} µs a call, taken off the totals)")
    try:
        for obj in objects:
            ebpf.CollectionSpec.from_file(obj, cache=False)  # untimed: first-use costs
            totals: list[float] = []
            by_stage: dict[str, list[float]] = {label: [] for label in labels}
            theirs: list[float] = []
            done = calls = 0
            while done < reps:
                if libbpf:
                    theirs += _libbpf_open(obj, batch, pin_root)
                for _ in range(min(batch, reps - done)):
                    spent: dict[str, int] = {}
                    with _clocked(spent):
                        t0 = time.perf_counter_ns()
                        ebpf.CollectionSpec.from_file(obj, cache=False)
                        totals.append((time.perf_counter_ns() - t0) / 1e3)
                    for label in labels:
                        by_stage[label].append(spent.get(label, 0) / 1e3)
                    calls = sum(spent.get("#" + label, 0) for label in labels)
                    done += 1
            # what the clocks add (the wrappers' own calls), taken off the total
            total = statistics.median(totals) - clock * calls
            print(f"{obj.name}: parse {total:.1f} µs (median of {reps})", end="")
            if theirs:
                open_us = statistics.median(theirs)
                print(f"; libbpf open {open_us:.1f} µs: {total / open_us:.1f}x", end="")
            print()
            rest = total
            for label in labels:
                us = statistics.median(by_stage[label])
                rest -= us
                if us >= 0.05:
                    print(f"  {label:38s} {us:7.1f} µs {us / total:5.1%}")
            print(f"  {'other':38s} {rest:7.1f} µs {rest / total:5.1%}")
    finally:
        if libbpf:
            shutil.rmtree(pin_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
