"""Manifest validation speed: ``load_manifests`` over many manifests, against reading the
same YAML with PyYAML's fastest loader (libyaml), in the same run.

    .venv/bin/python benchmarks/manifest_bench.py [--collections 200] [--reps 15]

Generates N manifests (one collection each, with constants, map options and an attachment)
over the shipped example objects in a temporary directory, then times, as medians:

- yaml: ``yaml.load(text, CSafeLoader)`` of every file (the least anyone has to do);
- cold: ``load_manifests`` with every cache cleared (YAML, schema, checks, object parsing);
- warm: ``load_manifests`` again with nothing changed (what a no-op plan or the watch loop
  pays);
- one changed: one manifest of N edited between runs.

Ratios are against the yaml figure. No kernel, no root.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.manifest import ObjectStore, load_manifests  # noqa: E402

OBJECTS = [
    (
        "xdp_counter.o",
        "xdp_count",
        "{{xdp: {{interface: veth{i}, netns: demo}}}}",
        "constants: {{verdict: 2, version: {i}}}\n  maps: {{counters: {{preserve: true}}}}",
    ),
    (
        "tc_filter.o",
        "tc_ingress",
        "{{tc: {{interface: veth{i}, direction: ingress}}}}",
        "maps: {{blocked_ports: {{pin: true, max_entries: 2048}}}}",
    ),
    (
        "tp_counter.o",
        "count_getppid",
        "{{tracepoint: {{group: syscalls, name: sys_enter_getppid}}}}",
        "constants: {{target_tgid: {i}}}",
    ),
    (
        "cgroup_egress.o",
        "cg_egress",
        "{{cgroup: {{path: app{i}, attach: egress}}}}",
        "maps: {{egress_stats: {{pin: true}}}}",
    ),
]


def manifest(i: int) -> str:
    obj, prog, target, extra = OBJECTS[i % len(OBJECTS)]
    attach = target.format(i=i)[1:-1]  # drop the outer braces of the format string
    return (
        "# yaml-language-server: $schema=../schemas/manifest.schema.json\n"
        "apiVersion: bpforch.dev/v1\nkind: Collection\n"
        f"metadata: {{name: c{i:04}, labels: {{team: net}}}}\n"
        f"spec:\n  object: {ROOT / 'bpf' / obj}\n  {extra.format(i=i)}\n"
        f"  attach:\n    - {{program: {prog}, {attach}}}\n"
    )


def median_ms(
    fn: Callable[[], object], reps: int, before: Callable[[], object] = lambda: None
) -> float:
    times = []
    for _ in range(reps):
        before()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--collections", type=int, default=200)
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        files = []
        for i in range(args.collections):
            f = d / f"c{i:04}.yaml"
            f.write_text(manifest(i))
            files.append(f)
        store = ObjectStore()
        state = load_manifests([d], store=store)
        assert len(state.collections) == args.collections

        def read_yaml() -> None:
            for f in files:
                yaml.load(f.read_text(), Loader=yaml.CSafeLoader)

        counter = iter(range(10**9))

        def touch_one() -> None:
            files[0].write_text(manifest(0) + f"# edit {next(counter)}\n")

        base = median_ms(read_yaml, args.reps)
        cold = median_ms(lambda: load_manifests([d], store=store), args.reps, store.clear)
        load_manifests([d], store=store)
        warm = median_ms(lambda: load_manifests([d], store=store), args.reps)
        one = median_ms(lambda: load_manifests([d], store=store), args.reps, touch_one)
    n = args.collections
    print(f"{n} manifests, medians of {args.reps}")
    print(f"  yaml (libyaml, comparator)  {base:8.1f} ms")
    print(f"  load_manifests cold         {cold:8.1f} ms  {cold / base:5.2f}x")
    print(f"  load_manifests warm         {warm:8.1f} ms  {warm / base:5.2f}x")
    print(f"  load_manifests, 1 changed   {one:8.1f} ms  {one / base:5.2f}x")


if __name__ == "__main__":
    main()
