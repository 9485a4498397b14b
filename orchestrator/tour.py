"""A walk through the loader on the shipped objects: parse, load, test-run, read maps.

Run as ``python -m orchestrator.tour [OBJECT.o ...]`` (root; bpffs mounted). It touches no
network interface: programs run through BPF_PROG_TEST_RUN only, and nothing is pinned.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchestrator import ebpf

# the demo's objects (orchestrator/_demo/bpf: the repository's bpf/ in a source checkout)
BPF_DIR = (Path(__file__).resolve().parent / "_demo" / "bpf").resolve()

# An Ethernet + IPv4 + UDP packet (to 10.0.0.2:53) for the test runs.
_PACKET = bytes.fromhex(
    "ffffffffffff"
    "020000000001"
    "0800"
    "45000024000100004011"
    "0000"
    "0a000001"
    "0a000002"
    "d43100350010"
    "0000"
    "68656c6c6f2c20627066"
)
_RUNNABLE = {
    ebpf.ProgType.XDP,
    ebpf.ProgType.SCHED_CLS,
    ebpf.ProgType.SOCKET_FILTER,
    ebpf.ProgType.CGROUP_SKB,
}


def _describe(spec: ebpf.CollectionSpec) -> None:
    for name, m in sorted(spec.maps.items()):
        print(
            f"  map  {name:<22} {m.type.name.lower():<16} key {m.key_size:>3}B  "
            f"value {m.value_size:>5}B  max {m.max_entries}"
        )
    for name, p in sorted(spec.programs.items()):
        print(
            f"  prog {name:<22} {p.type.name.lower():<16} section {p.section}  "
            f"{len(p.instructions)} insns"
        )
    for name, v in sorted(spec.variables.items()):
        if v.linkage == "global":
            kind = "const" if v.constant else "var"
            print(f"  {kind:<4} {name:<22} = {v.value!r}")


def _run(path: Path) -> int:
    print(f"{path.name}")
    try:
        spec = ebpf.CollectionSpec.from_file(path)
    except ebpf.Error as err:
        print(f"  cannot parse: {err}")
        return 1
    _describe(spec)
    runnable = [n for n, p in spec.programs.items() if p.type in _RUNNABLE and p.autoload]
    if not runnable:
        return 0

    try:
        coll = ebpf.Collection(spec)
    except ebpf.Error as err:
        print(f"  cannot load: {err}")
        return 0 if isinstance(err, ebpf.NotSupportedError) else 1
    with coll:
        for name in runnable:
            try:
                res = coll.programs[name].test_run(_PACKET, repeat=1)
            except ebpf.Error as err:
                print(f"  run  {name}: {err}")
                continue
            print(f"  run  {name:<22} retval {res.retval}  ({res.duration_ns} ns)")
        for name, m in sorted(coll.maps.items()):
            if m.type in (
                ebpf.MapType.ARRAY,
                ebpf.MapType.HASH,
                ebpf.MapType.PERCPU_ARRAY,
                ebpf.MapType.PERCPU_HASH,
                ebpf.MapType.LRU_HASH,
            ) and not name.startswith("."):
                items = list(m.items())[:4]
                shown = ", ".join(f"{k!r}: {v!r}" for k, v in items)
                print(f"  read {name:<22} {{{shown}{', …' if len(items) == 4 else ''}}}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.tour", description=__doc__)
    parser.add_argument("objects", nargs="*", type=Path, help="objects (default: bpf/*.o)")
    args = parser.parse_args(argv)
    objects = args.objects or sorted(BPF_DIR.glob("*.o"))
    if not objects:
        print(f"no objects in {BPF_DIR} (run make -C bpf)", file=sys.stderr)
        return 1
    return max(_run(p) for p in objects)


if __name__ == "__main__":
    sys.exit(main())
