"""Finding manifest files: directories, hidden entries, Kubernetes ConfigMap mounts, several
documents per file, and each logical file read once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.manifest import ManifestError, load_manifests, manifest_files

from .conftest import Write


def doc(name: str, obj: str = "../objs/owner.o") -> str:
    return (
        f"apiVersion: bpforch.dev/v1\nkind: Collection\nmetadata: {{name: {name}}}\n"
        f"spec: {{object: {obj}}}\n"
    )


def test_directories_are_searched_recursively_in_sorted_order(write: Write, tree: Path) -> None:
    write("m/b.yaml", doc("b"))
    write("m/a.yml", doc("a"))
    write("m/sub/c.yaml", doc("c", "../../objs/owner.o"))
    write("m/sub/deeper/d.yaml", doc("d", "../../../objs/owner.o"))
    write("m/notes.txt", "not yaml")
    write("m/.hidden.yaml", "this: {is not: read")
    write("m/.git/x.yaml", "neither: [is this")
    write("m/README.md", "# docs")
    state = load_manifests([tree / "m"])
    m = tree / "m"
    assert state.files == (m / "a.yml", m / "b.yaml", m / "sub/c.yaml", m / "sub/deeper/d.yaml")
    assert list(state.collections) == ["a", "b", "c", "d"]
    # objects are relative to each manifest's own directory
    assert {c.object_file for c in state.collections.values()} == {tree / "objs/owner.o"}


def test_explicit_files_are_read_whatever_their_name(write: Write, tree: Path) -> None:
    path = write("m/.odd-name", doc("odd"))
    assert list(load_manifests([path]).collections) == ["odd"]


def test_a_file_given_twice_is_read_once(write: Write, tree: Path) -> None:
    path = write("m/a.yaml", doc("a"))
    state = load_manifests([tree / "m", path, tree / "m" / "." / "a.yaml"])
    assert state.files == (path,)
    assert list(state.collections) == ["a"]


def test_relative_paths_are_taken_from_the_working_directory(
    write: Write, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write("m/a.yaml", doc("a"))
    monkeypatch.chdir(tree)
    state = load_manifests([Path("m")])
    assert state.files == (tree / "m" / "a.yaml",)
    assert state.collections["a"].object_file == tree / "objs" / "owner.o"


def test_kubernetes_configmap_layout(write: Write, tree: Path) -> None:
    """kubelet mounts a ConfigMap as ``..2024_x/`` (the data), ``..data -> ..2024_x`` and
    ``a.yaml -> ..data/a.yaml``; an update writes a new ``..2024_y`` and swaps ``..data``."""
    m = tree / "m"
    write("m/..2024_01/a.yaml", doc("a"))
    write("m/..2024_01/b.yaml", doc("b"))
    os.symlink("..2024_01", m / "..data")
    for name in ("a.yaml", "b.yaml"):
        os.symlink(f"..data/{name}", m / name)
    state = load_manifests([m])
    assert state.files == (m / "a.yaml", m / "b.yaml")  # each logical file once
    assert list(state.collections) == ["a", "b"]
    # the swap: new data directory, ..data re-pointed, the old one removed
    write("m/..2024_02/a.yaml", doc("a2"))
    write("m/..2024_02/b.yaml", doc("b"))
    os.symlink("..2024_02", m / "..data_tmp")
    os.rename(m / "..data_tmp", m / "..data")
    (m / "..2024_01" / "a.yaml").unlink()
    (m / "..2024_01" / "b.yaml").unlink()
    (m / "..2024_01").rmdir()
    assert list(load_manifests([m]).collections) == ["a2", "b"]


def test_symlinked_directory_loops_end(write: Write, tree: Path) -> None:
    write("m/a.yaml", doc("a"))
    os.symlink(".", tree / "m" / "again")
    os.symlink("..", tree / "m" / "up")
    state = load_manifests([tree / "m"])
    assert list(state.collections) == ["a"]
    assert state.files == (tree / "m" / "a.yaml",)


def test_multi_document_files(write: Write, tree: Path) -> None:
    path = write(
        "m/all.yaml",
        "---\n" + doc("one") + "---\n" + "# just a comment\n---\n" + doc("two") + "...\n---\n",
    )
    state = load_manifests([path])
    assert list(state.collections) == ["one", "two"]
    assert state.collections["one"].source.line == 4
    assert state.collections["two"].source.line == 11


def test_problems_of_all_files_and_documents_are_collected(write: Write, tree: Path) -> None:
    write("m/a.yaml", doc("a") + "---\n" + doc("b").replace("spec:", "spek:"))
    write("m/b.yaml", doc("c").replace("owner.o", "gone.o"))
    write("m/c.yaml", "key: [unclosed\n")
    with pytest.raises(ManifestError) as info:
        load_manifests([tree / "m"])
    got = [(p.source.file.name, p.source.line, p.field) for p in info.value.problems]
    assert got == [
        ("a.yaml", 6, "spec"),  # missing (reported at the document's start)
        ("a.yaml", 9, "spek"),
        ("b.yaml", 4, "spec.object"),
        ("c.yaml", 2, ""),
    ]


def test_an_empty_directory_gives_an_empty_state(tree: Path) -> None:
    (tree / "empty").mkdir()
    state = load_manifests([tree / "empty"])
    assert state.collections == {} and state.files == ()


def test_unreadable_and_non_utf8_files(write: Write, tree: Path) -> None:
    (tree / "m").mkdir()
    (tree / "m" / "bin.yaml").write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ManifestError) as info:
        load_manifests([tree / "m"])
    (p,) = info.value.problems
    assert p.source.file == tree / "m" / "bin.yaml" and "not UTF-8" in p.message


def test_manifest_files_lists_without_reading(write: Write, tree: Path) -> None:
    write("m/x/b.yaml", "not: [valid")
    write("m/a.yaml", "")
    problems: list[object] = []
    files = manifest_files([tree / "m"], problems)  # type: ignore[arg-type]
    assert files == [tree / "m/a.yaml", tree / "m/x/b.yaml"] and problems == []
