"""Where the loader's cold path spends its time: cProfile over parse+load.

    .venv/bin/python benchmarks/profile_cold.py [--reps 200] [--top 30] [--sort tottime]
                                                [--phase parse|load|both] [OBJ ...]

Each repetition is what ``loader_bench.py`` times as "cold": ``CollectionSpec.from_file(obj,
cache=False)`` (a full parse, no cache of any kind) and ``Collection(spec)`` on that new spec
(BTF marshalled for the first time, maps created, programs loaded), then a close that is not
profiled. With ``--phase parse`` only the parse is profiled (nothing touches the kernel, so no
root is needed); with ``--phase load`` only the load. One untimed round per object first,
so that first-use costs (imports, feature probes, the kernel's BTF) stay out of the profile.
Prints the top functions by ``--sort`` (tottime: time in the function itself; cumulative:
with its callees) and the share of the time spent inside ``bpf()``.
Default objects: ``bpf/*.o`` that load here. Needs root and bpffs for the load phase.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import sys
import uuid
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
    ap.add_argument("objects", nargs="*", type=Path)
    args = ap.parse_args()
    objects = [o.resolve() for o in args.objects] or [ROOT / "bpf" / n for n in DEFAULT]
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


if __name__ == "__main__":
    raise SystemExit(main())
