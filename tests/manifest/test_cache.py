"""The object store: what load_manifests, the reconciler, the command line and the daemon read
manifests and objects through, each given the one its caller made."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from orchestrator import cli
from orchestrator.manifest import ObjectError, ObjectStore, load_manifests
from orchestrator.manifest import cache as _cache
from orchestrator.reconcile import Reconciler
from orchestrator.service.backend import DeclarativeBackend

from .conftest import Write


def doc(name: str, obj: str = "../objs/net.o") -> str:
    return (
        f"apiVersion: bpforch/v1\nkind: Collection\nmetadata: {{name: {name}}}\n"
        f"spec:\n  object: {obj}\n"
    )


def default_counts() -> tuple[int, int, int]:
    st = _cache.default.specs.stats()
    return st.parsed + st.verified + st.hits, st.entries, _cache.default.manifests.usage().entries


def test_load_manifests_reads_through_the_store_it_is_given(write: Write, tree: Path) -> None:
    write("m/a.yaml", doc("a"))
    write("m/b.yaml", doc("b"))  # the same object
    before = default_counts()
    store = ObjectStore()
    state = load_manifests([tree / "m"], store=store)
    assert state.collections.keys() == {"a", "b"}
    assert store.manifests.usage().entries == 2
    st = store.specs.stats()
    assert (st.parsed, st.entries) == (1, 1)  # one object, parsed once for both manifests
    assert default_counts() == before  # the default store was not touched
    load_manifests([tree / "m"], store=store)
    assert store.specs.stats().parsed == 1
    store.clear()
    assert store.manifests.usage().entries == 0 and store.specs.stats().entries == 0


def test_a_snapshot_sees_each_object_once(tree: Path) -> None:
    """One apply's view: the first parse of a path holds for the whole apply, even if the
    file changes meanwhile; an error is remembered too. The store itself sees the change."""
    obj = tree / "objs" / "x.o"
    shutil.copyfile(tree / "objs" / "owner.o", obj)
    store = ObjectStore()
    snap = store.snapshot()
    first = snap.get(obj)
    assert "count_getpid" in first.spec.programs
    shutil.copyfile(tree / "objs" / "user.o", obj)
    assert snap.get(obj) is first
    assert "count_gettid" in store.object_info(obj).spec.programs
    assert "count_gettid" in store.snapshot().get(obj).spec.programs
    missing = tree / "objs" / "later.o"
    with pytest.raises(ObjectError, match="no such file or directory"):
        snap.get(missing)
    shutil.copyfile(tree / "objs" / "owner.o", missing)
    with pytest.raises(ObjectError, match="no such file or directory"):
        snap.get(missing)
    assert "count_getpid" in store.snapshot().get(missing).spec.programs


def test_a_reconciler_keeps_the_store_it_is_given(tmp_path: Path) -> None:
    store = ObjectStore()
    assert Reconciler(bpffs_root=tmp_path, state_dir=tmp_path, store=store).store is store
    assert Reconciler(bpffs_root=tmp_path, state_dir=tmp_path).store is _cache.default


def test_the_daemon_backend_loads_and_applies_through_one_store(
    write: Write, tree: Path, tmp_path: Path
) -> None:
    write("m/a.yaml", doc("a"))
    store = ObjectStore()
    backend = DeclarativeBackend(tmp_path / "root", tmp_path / "state", store)
    assert backend.reconciler.store is store
    backend.load([tree / "m"])
    assert store.manifests.usage().entries == 1 and store.specs.stats().entries == 1
    own = DeclarativeBackend(tmp_path / "root", tmp_path / "state")
    assert own.reconciler.store is not _cache.default  # a daemon makes its own


def test_the_command_line_uses_a_store_of_its_own(write: Write, tree: Path) -> None:
    write("m/a.yaml", doc("a"))
    before = default_counts()
    out, err = io.StringIO(), io.StringIO()
    assert cli.main(["validate", str(tree / "m")], out, err) == 0, err.getvalue()
    assert out.getvalue().startswith("valid: 1 collection")
    assert default_counts() == before
