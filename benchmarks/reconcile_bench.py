"""Reconciler speed, against comparators measured in the same run.

    .venv/bin/python benchmarks/reconcile_bench.py [--noop 200] [--scratch 50] [--reps 9]

1. **No-op apply**: ``--noop`` collections (tp_counter, each with its own constant and a
   tracepoint link) are applied once; then ``Reconciler.apply`` of the unchanged desired
   state is timed (observe: one BPF_OBJ_GET + one info call per pin; digests equal, so no
   object is read and nothing is loaded). Target: < 50 ms for 200 collections. Also shown:
   ``plan`` alone and ``load_manifests`` of the 200 unchanged manifests (the manifest layer's
   caches; the watch loop pays both).
2. **Apply from scratch**: ``--scratch`` collections applied into an empty root, against the
   sum of bare loader loads of the same specs (``Collection(spec)`` with the constants
   rewritten, from the parsed spec: what a caller that keeps the spec pays). Twice: without
   attachments (overhead: staging, pins, record, atomic swaps), and with one tracepoint link
   each (comparator: bare load + ``attach_tracepoint``). Target: overhead < 20 %. Also shown:
   bare loads that parse the object file each time (``CollectionSpec.from_file``), which is
   what a loader user without a spec cache pays (the reconciler reuses the manifest layer's
   parsed specs).

Figures are medians of ``--reps`` repetitions. Needs root, bpffs and tracefs. Everything is
made under a private bpffs directory and a temporary state directory, and removed.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator import ebpf  # noqa: E402
from orchestrator.ebpf import link as links  # noqa: E402
from orchestrator.manifest import load_manifests, object_spec  # noqa: E402
from orchestrator.reconcile import Reconciler  # noqa: E402

TGID_NOBODY = 1 << 30  # no process has this tgid: the programs count nothing
# A tracepoint takes at most 64 programs (BPF_TRACE_MAX_PROGS): spread the links (1,000
# collections: 56 each).
TRACEPOINTS = (  # rarely called syscalls, and never getppid (tests on this machine use it)
    "sys_enter_getpgrp",
    "sys_enter_getsid",
    "sys_enter_getresuid",
    "sys_enter_getresgid",
    "sys_enter_getpgid",
    "sys_enter_getpriority",
    "sys_enter_getitimer",
    "sys_enter_sched_getparam",
    "sys_enter_sched_getscheduler",
    "sys_enter_getrusage",
    "sys_enter_sched_get_priority_max",
    "sys_enter_sched_get_priority_min",
    "sys_enter_sched_rr_get_interval",
    "sys_enter_sched_getattr",
    "sys_enter_ustat",
    "sys_enter_sysfs",
    "sys_enter_setdomainname",
    "sys_enter_capget",
)


def write_manifests(directory: Path, n: int, obj: str, *, attach: bool) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.yaml"):
        old.unlink()
    for i in range(n):
        if obj == "tp_counter":
            consts = f"target_tgid: {TGID_NOBODY + i}"
            tp = TRACEPOINTS[i % len(TRACEPOINTS)]
            att = (
                "  attach:\n    - program: count_getppid\n"
                f"      tracepoint: {{group: syscalls, name: {tp}}}\n"
            )
        else:
            consts = f"version: {i}"
            att = ""
        (directory / f"c{i:03d}.yaml").write_text(
            "apiVersion: bpforch.dev/v1\nkind: Collection\n"
            f"metadata: {{name: c{i:03d}}}\n"
            f"spec:\n  object: {ROOT / 'bpf' / (obj + '.o')}\n"
            f"  constants: {{{consts}}}\n" + (att if attach else "")
        )


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def bench_noop(base: Path, state: Path, manifests: Path, n: int, reps: int) -> None:
    write_manifests(manifests, n, "tp_counter", attach=True)
    r = Reconciler(bpffs_root=base / "noop", state_dir=state / "noop")
    desired = load_manifests([manifests])
    r.apply(desired)
    try:
        apply_t, plan_t, manifest_t = [], [], []
        for _ in range(reps):
            gc.collect()
            t0 = time.perf_counter()
            d = load_manifests([manifests])
            t1 = time.perf_counter()
            result = r.apply(d)
            t2 = time.perf_counter()
            p = r.plan(d)
            t3 = time.perf_counter()
            assert not result.applied and not result.plan.has_changes and not p.has_changes
            manifest_t.append(t1 - t0)
            apply_t.append(t2 - t1)
            plan_t.append(t3 - t2)
        a = median_ms(apply_t)
        print(f"no-op, {n} collections (each with a tracepoint link):")
        print(
            f"  apply (observe + plan, nothing to do)   {a:8.2f} ms   target < 50 ms: "
            f"{'ok' if a < 50 else 'MISSED'}  ({a / 50:.2f}x of target)"
        )
        print(f"  plan alone                              {median_ms(plan_t):8.2f} ms")
        print(f"  load_manifests of {n} unchanged files  {median_ms(manifest_t):8.2f} ms")
        print(
            f"  apply + load_manifests                  "
            f"{median_ms([x + y for x, y in zip(apply_t, manifest_t, strict=True)]):8.2f} ms"
        )
    finally:
        r.destroy()


def bare_loads(n: int, obj: str, attach: bool, *, parse: bool = False) -> float:
    """Seconds for n bare loads (+ tracepoint attaches) of the same specs, then closed.
    ``parse``: parse the object file each time (``CollectionSpec.from_file``), as a plain
    loader user without a spec cache does."""
    path = ROOT / "bpf" / f"{obj}.o"
    spec0 = object_spec(path)
    made: list[object] = []
    t0 = time.perf_counter()
    for i in range(n):
        spec = ebpf.CollectionSpec.from_file(path) if parse else spec0.copy()
        if obj == "tp_counter":
            spec.rewrite_constants({"target_tgid": TGID_NOBODY + i})
        else:
            spec.rewrite_constants({"version": i})
        coll = ebpf.Collection(spec)
        made.append(coll)
        if attach:
            tp = TRACEPOINTS[i % len(TRACEPOINTS)]
            made.append(links.attach_tracepoint(coll.programs["count_getppid"], "syscalls", tp))
    dt = time.perf_counter() - t0
    for x in reversed(made):
        x.close()  # type: ignore[attr-defined]
    return dt


def bench_scratch(base: Path, state: Path, manifests: Path, n: int, reps: int) -> None:
    for obj, attach in (("xdp_counter", False), ("tp_counter", True)):
        write_manifests(manifests, n, obj, attach=attach)
        desired = load_manifests([manifests])
        ours, bare, parsed = [], [], []
        for rep in range(reps):
            r = Reconciler(
                bpffs_root=base / f"scratch-{obj}-{rep}", state_dir=state / f"s{obj}{rep}"
            )
            gc.collect()
            t0 = time.perf_counter()
            result = r.apply(desired)
            ours.append(time.perf_counter() - t0)
            assert result.applied and len(result.generations) == n
            r.destroy()
            gc.collect()
            bare.append(bare_loads(n, obj, attach))
            gc.collect()
            parsed.append(bare_loads(n, obj, attach, parse=True))
        o, b, bp = median_ms(ours), median_ms(bare), median_ms(parsed)
        what = "with a tracepoint link each" if attach else "no attachments"
        cmp = "bare load + attach_tracepoint" if attach else "bare Collection(spec) loads"
        print(f"apply from scratch, {n} collections ({what}):")
        print(f"  Reconciler.apply                        {o:8.2f} ms")
        print(f"  sum of {cmp:32s}{b:8.2f} ms")
        print(
            f"  ratio {o / b:.3f}  (overhead {100 * (o / b - 1):+.1f} %, target < +20 %: "
            f"{'ok' if o / b < 1.2 else 'MISSED'})"
        )
        print(
            f"  (bare loads that parse the object file each time: {bp:.2f} ms, ratio {o / bp:.3f})"
        )


def _is_tmpfs(path: Path) -> bool:
    TMPFS_MAGIC = 0x01021994
    from orchestrator.ebpf import _sys as bpfsys

    try:
        return bpfsys.fs_magic(os.fspath(path)) == TMPFS_MAGIC
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--noop", type=int, default=200)
    ap.add_argument("--scratch", type=int, default=50)
    ap.add_argument("--reps", type=int, default=9)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (bpf(), bpffs, tracefs)")
    base = Path("/sys/fs/bpf") / f"bpforch-bench-{uuid.uuid4().hex[:8]}"
    base.mkdir()
    # the record lives on tmpfs in production (/run): use /dev/shm when it is tmpfs
    shm = Path("/dev/shm")
    on_tmpfs = shm.is_dir() and os.statvfs(shm).f_bsize > 0 and _is_tmpfs(shm)
    tmp = Path(tempfile.mkdtemp(prefix="bpforch-bench-", dir=shm if on_tmpfs else None))
    print(f"state dir under {tmp} ({'tmpfs' if on_tmpfs else 'not tmpfs: fsync costs more'})")
    try:
        bench_noop(base, tmp / "state", tmp / "manifests", args.noop, args.reps)
        bench_scratch(base, tmp / "state", tmp / "manifests", args.scratch, max(3, args.reps // 2))
    finally:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
