"""One first load in a fresh interpreter, for loader_bench.py, btf_bench.py and
first_load_bench.py.

    python benchmarks/first_load_child.py ROOT CACHE_DIR PIN_ROOT OBJ [OBJ ...]

``ROOT``: the checkout to import bpforch from, ``-`` for the one installed with the
interpreter.

Imports the loader (not timed: that is the command line's import cost, measured on its
own), points the spec cache and the kernel BTF index at the persisted cache in CACHE_DIR
(``-`` for none), then for each object times its first ``from_file`` + ``Collection`` in
this process and prints ``<parse ms> <parse+load ms> <served>``, where ``served`` says
whether the spec came from the persisted cache (1) or was parsed (0).

With ``BPFORCH_FIRST_LOAD_PHASES=1`` in the environment it takes the first object apart
instead, doing what the spec cache does for a file it has not seen, one step at a time, and
prints ``<step>=<us>`` for each: ``identity`` (the persisted cache's identity of the loader's
code, once per process; it includes the process's first sha256), ``object`` (reading and
hashing the object), ``entry`` (reading and checking the persisted entry), ``decode`` (the
entry back into a spec), ``load`` (the ``Collection``).
"""

from __future__ import annotations

import itertools
import os
import sys
import time


def main() -> None:
    root, cache_dir, pin_root, *objects = sys.argv[1:]
    if root != "-":  # else: the installed package
        sys.path.insert(0, root)
    # names bound here, as a program's imports bind them: the package resolves its names
    # on first use (an import step, not part of a load)
    from orchestrator.ebpf import Collection, CollectionOptions, diskcache, speccache, specfile
    from orchestrator.ebpf.btf import core, kernel  # noqa: F401

    disk = None if cache_dir == "-" else diskcache.DiskCache(cache_dir)
    kernel.use_disk(disk)
    cache = speccache.SpecCache(disk=disk)
    opts = CollectionOptions(pin_path=pin_root)
    if os.environ.get("BPFORCH_FIRST_LOAD_PHASES") == "1":
        import hashlib

        if disk is None:
            sys.exit("first_load_child: the phases need a persisted cache")
        obj = objects[0]
        t = [time.perf_counter_ns()]
        diskcache.code_identity()
        t.append(time.perf_counter_ns())
        digest = hashlib.sha256(speccache._read(obj, obj)).hexdigest()
        t.append(time.perf_counter_ns())
        payload = disk.get(speccache.SPEC_KIND, digest)
        t.append(time.perf_counter_ns())
        if payload is None:
            sys.exit(f"first_load_child: {obj} is not in the persisted cache")
        spec = specfile.decode(payload, name=os.path.basename(obj), path=obj)
        t.append(time.perf_counter_ns())
        Collection(spec, opts).close()
        t.append(time.perf_counter_ns())
        steps = ("identity", "object", "entry", "decode", "load")
        spans = [(b - a) / 1e3 for a, b in itertools.pairwise(t)]
        print(" ".join(f"{s}={us:.1f}" for s, us in zip(steps, spans, strict=True)))
        return
    for obj in objects:
        before = cache.stats().loaded
        t0 = time.perf_counter_ns()
        spec = cache.get(obj)
        t1 = time.perf_counter_ns()
        coll = Collection(spec, opts)
        t2 = time.perf_counter_ns()
        coll.close()
        served = int(cache.stats().loaded > before)
        print(f"{(t1 - t0) / 1e6} {(t2 - t0) / 1e6} {served}", flush=True)


if __name__ == "__main__":
    main()
