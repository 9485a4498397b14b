"""Fixtures for reconciler tests: a private bpffs root and state dir per test, manifests
written into tmp_path, and kernel-object checks by id."""

from __future__ import annotations

import contextlib
import os
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from orchestrator.ebpf import inspect as ebpf_inspect
from orchestrator.manifest import ObjectStore, load_manifests
from orchestrator.manifest.model import DesiredState
from orchestrator.reconcile import Failpoints, Reconciler, Status
from tests.conftest import BPF_DIR


@dataclass
class Env:
    root: Path
    state_dir: Path
    manifests: Path
    # the test's own: what desired() loads through and every reconciler() reads objects from
    store: ObjectStore = field(default_factory=ObjectStore)

    def reconciler(self, failpoints: Failpoints | None = None) -> Reconciler:
        return Reconciler(
            bpffs_root=self.root,
            state_dir=self.state_dir,
            failpoints=failpoints,
            store=self.store,
        )

    def cli_args(self) -> tuple[str, ...]:
        """The ``bpforch`` options for this root and state dir."""
        return ("--bpffs-root", str(self.root), "--state-dir", str(self.state_dir))

    def write(self, name: str, text: str) -> Path:
        path = self.manifests / f"{name}.yaml"
        path.write_text(textwrap.dedent(text).replace("@BPF@", os.fspath(BPF_DIR)))
        return path

    def remove(self, name: str) -> None:
        (self.manifests / f"{name}.yaml").unlink()

    def desired(self) -> DesiredState:
        return load_manifests([self.manifests], store=self.store)


@pytest.fixture
def env(pin_dir: Path, tmp_path: Path) -> Iterator[Env]:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    e = Env(pin_dir / "root", tmp_path / "state", manifests)
    yield e
    # whatever a test left: never leave links attached to the test's namespaces
    with contextlib.suppress(Exception):
        e.reconciler().destroy()


def prog_alive(prog_id: int) -> bool:
    return ebpf_inspect.program_exists(prog_id)


def link_alive(link_id: int) -> bool:
    return ebpf_inspect.link_exists(link_id)


def gone(alive: Callable[[int], bool], object_id: int, timeout: float = 10.0) -> bool:
    """Whether the object is freed within ``timeout`` seconds: the kernel frees a link or a
    program whose last fd or pin went in deferred work (an RCU grace period, a work item),
    which takes longer on a loaded machine. Polled by id, without taking a reference."""
    deadline = time.monotonic() + timeout
    while alive(object_id) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not alive(object_id)


def map_alive(map_id: int) -> bool:
    # asked without opening the map: polling a dying prog array by opening it leaks it
    return ebpf_inspect.map_exists(map_id)


def snapshot(status: Status) -> dict[str, object]:
    """Ids and pins of everything applied (to compare before/after a failed apply)."""
    return {
        c.name: (
            c.generation,
            c.digest,
            tuple((p.name, p.id) for p in c.programs),
            tuple((m.name, m.id, m.pin) for m in c.maps),
            tuple((a.key, a.link_id, a.alive) for a in c.attachments),
            c.condition,
        )
        for c in status.collections
    }


def pins_under(root: Path) -> list[str]:
    if not root.exists():
        return []
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            out.append(os.path.relpath(os.path.join(dirpath, f), root))
    return sorted(out)


MakeFn = Callable[..., Path]
