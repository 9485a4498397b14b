"""One first load in a fresh interpreter, for loader_bench.py and btf_bench.py.

    python benchmarks/first_load_child.py ROOT CACHE_DIR PIN_ROOT OBJ [OBJ ...]

``ROOT``: the checkout to import bpforch from, ``-`` for the one installed with the
interpreter.

Imports the loader (not timed: that is the command line's import cost, measured on its
own), points the spec cache and the kernel BTF index at the persisted cache in CACHE_DIR
(``-`` for none), then for each object times its first ``from_file`` + ``Collection`` in
this process and prints ``<parse ms> <parse+load ms> <served>``, where ``served`` says
whether the spec came from the persisted cache (1) or was parsed (0).
"""

from __future__ import annotations

import sys
import time


def main() -> None:
    root, cache_dir, pin_root, *objects = sys.argv[1:]
    if root != "-":  # else: the installed package
        sys.path.insert(0, root)
    from orchestrator import ebpf
    from orchestrator.ebpf import diskcache, speccache, specfile  # noqa: F401
    from orchestrator.ebpf.btf import core, kernel  # noqa: F401

    disk = None if cache_dir == "-" else diskcache.DiskCache(cache_dir)
    kernel.use_disk(disk)
    cache = speccache.SpecCache(disk=disk)
    opts = ebpf.CollectionOptions(pin_path=pin_root)
    for obj in objects:
        before = cache.stats().loaded
        t0 = time.perf_counter_ns()
        spec = cache.get(obj)
        t1 = time.perf_counter_ns()
        coll = ebpf.Collection(spec, opts)
        t2 = time.perf_counter_ns()
        coll.close()
        served = int(cache.stats().loaded > before)
        print(f"{(t1 - t0) / 1e6} {(t2 - t0) / 1e6} {served}", flush=True)


if __name__ == "__main__":
    main()
