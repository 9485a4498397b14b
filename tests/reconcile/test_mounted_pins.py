"""A mount over one of bpforch's pins (a bind mount of another pin, made behind bpforch's
back) changes what a lookup of the pin reaches but not the directory listing, whose entry
keeps the covered pin's inode: observe must see it, with and without its cache."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import ebpf
from orchestrator.ebpf import Program
from orchestrator.ebpf import link as links
from orchestrator.reconcile.observe import observe
from tests.reconcile.conftest import Env

pytestmark = pytest.mark.kernel


@contextlib.contextmanager
def bind_mounted(source: Path, target: Path) -> Iterator[None]:
    subprocess.run(["mount", "--bind", os.fspath(source), os.fspath(target)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", os.fspath(target)], check=True)


def test_a_mount_over_a_pin_is_drift(env: Env) -> None:
    env.write(
        "a",
        """\
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {name: a}
        spec:
          object: @BPF@/tp_counter.o
          constants: {target_tgid: 1073741823}
          maps:
            calls: {pin: true}
          attach:
            - program: count_getppid
              tracepoint: {group: syscalls, name: sys_enter_getpgid}
        """,
    )
    r = env.reconciler()
    d = env.desired()
    r.apply(d)
    time.sleep(1.1)  # listings are remembered once their directories are a second old
    assert not r.plan(d).has_changes
    assert not r.plan(d).has_changes  # served from the cache now
    assert r.cache.hits > 0
    coll = env.root / "a"
    (lpin,) = os.listdir(coll / "links")
    other = env.root.parent / "other"
    other.mkdir()
    try:
        # another link of the same program, pinned outside the tree, mounted over our pin
        with Program.from_pin(coll / "progs" / "count_getppid") as prog:
            extra = links.attach_tracepoint(prog, "syscalls", "sys_enter_getsid")
        with extra:
            extra.pin(other / "link")
            extra_id = extra.id
        with bind_mounted(other / "link", coll / "links" / lpin):
            for actual in (observe(env.root, env.state_dir), r.observe()):
                drift = [str(x) for c in actual.collections.values() for x in c.drift]
                assert any(f"holds link id {extra_id}" in x for x in drift), drift
            assert r.plan(d).has_changes
        # and a map pin covered by another map
        with ebpf.Map.create(ebpf.MapSpec("cover", ebpf.MapType.ARRAY, 4, 8, 1)) as cover:
            cover.pin(other / "map")
            cover_id = cover.id
        with bind_mounted(other / "map", coll / "maps" / "calls"):
            for actual in (observe(env.root, env.state_dir), r.observe()):
                drift = [str(x) for c in actual.collections.values() for x in c.drift]
                assert any(f"holds map id {cover_id}" in x for x in drift), drift
        assert not r.plan(d).has_changes  # unmounted: the pins are ours again
    finally:
        for leaf in ("link", "map"):
            with contextlib.suppress(FileNotFoundError):
                (other / leaf).unlink()
        other.rmdir()
        r.destroy()
