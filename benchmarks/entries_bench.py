"""Declared map entries at scale: 100,000 entries applied from a manifest, against
``bpftool map update`` in a loop and one BPF_MAP_UPDATE_BATCH from C, in the same run.

    .venv/bin/python benchmarks/entries_bench.py [--entries 100000] [--rounds 5]
                                                 [--bpftool-sample 2000]

The map is a hash of __u32 -> __u64 (``benchmarks/harness/entries_map.bpf.c``, 131,072
entries), pinned by a collection under a temporary bpffs directory. Each round:

- **bpforch apply**: ``Reconciler.apply`` of a manifest declaring N entries (key k, value
  3k) on the applied collection whose map is empty: observe, the live map read, the diff,
  the writes (BPF_MAP_UPDATE_BATCH) and the record, end to end. The manifest is loaded
  before the timing (its load is timed on its own, once, against libyaml's
  ``yaml.load`` of the same file); then the apply of a manifest
  declaring no entries (``entries: []``, exact: the N entries deleted with
  BPF_MAP_DELETE_BATCH);
- **bpforch batch**: only the write, ``reconcile.entries.update`` of N raw pairs (one
  BPF_MAP_UPDATE_BATCH from Python), then ``delete``;
- **C**: ``benchmarks/harness/entries_batch.c`` (gcc against libbpf-dev): one
  ``bpf_map_update_batch`` of the same N pairs, then one ``bpf_map_delete_batch``, timed
  inside the process.

**bpftool**: ``bpftool map update pinned PATH key … value …`` for ``--bpftool-sample``
keys, one process each, as a shell loop does it; the total for N is extrapolated from
the sample (N / sample times its time), and says so. Also printed: a no-op plan with the
N entries declared (the map is read and compared).

Figures are medians of the rounds; the machine may be shared and loaded, so the ratios,
measured in the same run, say more than the times. Needs root, bpffs, clang, gcc,
libbpf-dev and bpftool.
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
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.ebpf import Map  # noqa: E402
from orchestrator.manifest import ObjectStore, load_manifests  # noqa: E402
from orchestrator.reconcile import Reconciler  # noqa: E402
from orchestrator.reconcile import entries as _entries  # noqa: E402

HARNESS_DIR = ROOT / "benchmarks" / "harness"
BUILD_DIR = ROOT / "benchmarks" / "build"
HARNESS = BUILD_DIR / "entries_batch"
OBJECT = BUILD_DIR / "entries_map.o"


def build() -> None:
    """Compile the C harness (gcc + libbpf-dev) and the BPF object (clang)."""
    subprocess.run(
        ["make", "-s", "-C", str(HARNESS_DIR), f"OUT={BUILD_DIR}", str(HARNESS), str(OBJECT)],
        check=True,
        capture_output=True,
        text=True,
    )


def manifest(path: Path, n: int) -> None:
    lines = [
        "apiVersion: bpforch.dev/v1",
        "kind: Collection",
        "metadata: {name: bench}",
        "spec:",
        f"  object: {OBJECT}",
        "  maps:",
        "    allowed:",
        "      pin: true",
        "      entries:" + (" []" if n == 0 else ""),
    ]
    lines += [f"        - {{key: {k}, value: {3 * k}}}" for k in range(n)]
    path.write_text("\n".join(lines) + "\n")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--bpftool-sample", type=int, default=2000)
    args = ap.parse_args()
    n = args.entries
    build()
    work = Path(tempfile.mkdtemp(prefix="entries-bench-"))
    root = Path("/sys/fs/bpf") / f"entries-bench-{uuid.uuid4().hex[:8]}"
    full_dir, empty_dir = work / "full", work / "empty"
    full_dir.mkdir()
    empty_dir.mkdir()
    manifest(full_dir / "bench.yaml", n)
    manifest(empty_dir / "bench.yaml", 0)
    store = ObjectStore()
    rec = Reconciler(bpffs_root=root, state_dir=work / "state", store=store)
    try:
        text = (full_dir / "bench.yaml").read_text()
        t0 = time.perf_counter()
        yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        yaml_time = time.perf_counter() - t0
        t0 = time.perf_counter()
        full = load_manifests([full_dir], store=store)
        load_time = time.perf_counter() - t0
        empty = load_manifests([empty_dir], store=store)
        rec.apply(empty)
        pin = root / "bench" / "maps" / "allowed"
        keys = [k.to_bytes(4, "little") for k in range(n)]
        values = [(3 * k).to_bytes(8, "little") for k in range(n)]
        apply_s, delete_s, plan_s, py_s, py_del_s, c_s, c_del_s = ([] for _ in range(7))
        for r in range(args.rounds):
            t0 = time.perf_counter()
            result = rec.apply(full)
            apply_s.append(time.perf_counter() - t0)
            assert result.applied
            with Map.from_pin(pin) as m:
                got = sum(1 for _ in m.keys_bytes())
                assert got == n, f"round {r}: {got} entries after the apply, not {n}"
            t0 = time.perf_counter()
            p = rec.plan(full)
            plan_s.append(time.perf_counter() - t0)
            assert not p.has_changes, "a plan right after the apply has changes"
            t0 = time.perf_counter()
            rec.apply(empty)
            delete_s.append(time.perf_counter() - t0)
            with Map.from_pin(pin) as m:
                t0 = time.perf_counter()
                _entries.update(m, keys, values)
                py_s.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                _entries.delete(m, keys)
                py_del_s.append(time.perf_counter() - t0)
            out = subprocess.run(
                [str(HARNESS), str(pin), str(n)], check=True, capture_output=True, text=True
            ).stdout.split()
            c_s.append(int(out[0]) / 1e9)
            c_del_s.append(int(out[1]) / 1e9)
        sample = min(args.bpftool_sample, n)
        bpftool = shutil.which("bpftool") or "bpftool"
        t0 = time.perf_counter()
        for k in range(sample):
            key = [str(b) for b in k.to_bytes(4, "little")]
            value = [str(b) for b in (3 * k).to_bytes(8, "little")]
            argv = [bpftool, "map", "update", "pinned", str(pin), "key", *key, "value", *value]
            subprocess.run(argv, check=True, capture_output=True)
        tool_sample = time.perf_counter() - t0
        tool_total = tool_sample * n / sample
        with Map.from_pin(pin) as m:
            _entries.delete(m, keys[:sample])
    finally:
        with_root = root.exists()
        if with_root:
            rec.destroy()
            os.rmdir(root)
        shutil.rmtree(work)

    med = statistics.median
    print(f"{n:,} entries (__u32 -> __u64 hash), medians of {args.rounds} rounds")
    print(f"  manifest load (YAML, schema, BTF check), once  {ms(load_time)}")
    print(f"  yaml.load (libyaml) of the same file, once      {ms(yaml_time)}")
    print(f"  bpforch apply, end to end (batch writes)        {ms(med(apply_s))}")
    print(f"  bpforch apply of entries: [] (batch deletes)    {ms(med(delete_s))}")
    print(f"  bpforch no-op plan (map read and compared)      {ms(med(plan_s))}")
    print(f"  bpforch batch update alone (Python)            {ms(med(py_s))}")
    print(f"  bpforch batch delete alone (Python)            {ms(med(py_del_s))}")
    print(f"  C: one BPF_MAP_UPDATE_BATCH (libbpf)           {ms(med(c_s))}")
    print(f"  C: one BPF_MAP_DELETE_BATCH (libbpf)           {ms(med(c_del_s))}")
    print(
        f"  bpftool map update loop: {sample:,} invocations took {ms(tool_sample)}; "
        f"extrapolated to {n:,}: {tool_total:,.1f} s"
    )
    print("ratios:")
    print(f"  manifest load / yaml.load               {load_time / yaml_time:8.1f}x")
    print(f"  bpforch apply / C batch update          {med(apply_s) / med(c_s):8.1f}x")
    print(f"  bpforch batch update / C batch update   {med(py_s) / med(c_s):8.1f}x")
    print(f"  bpftool loop (extrapolated) / bpforch apply  {tool_total / med(apply_s):8.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
