"""Parsed manifests persisted across processes (orchestrator.manifest.saved): a second load
of unchanged files restores their documents instead of parsing YAML and checking the
schema, and gives the same result; any edit is seen; problems keep their places."""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.ebpf.diskcache import DiskCache
from orchestrator.manifest import (
    ManifestError,
    ObjectStore,
    checked,
    load_manifests,
    parsing,
    saved,
)
from orchestrator.manifest.model import DesiredState

from .conftest import Write

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture(autouse=True)
def _documents_layer_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about the saved documents: the checked state persisted after them
    (orchestrator.manifest.checked, tested in test_checked.py) would serve an unchanged
    load before they are consulted, so it always misses here."""
    monkeypatch.setattr(checked.CheckedState, "get", lambda self, objects: None)


def doc(name: str, extra: str = "", api: str = "bpforch.dev/v1", labels: str = "") -> str:
    return (
        f"apiVersion: {api}\nkind: Collection\nmetadata: {{name: {name}{labels}}}\n"
        f"spec:\n  object: ../objs/net.o\n  constants: {{version: 3}}\n{extra}"
    )


class Parses:
    """Counts the files parsed (as YAML)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.files: list[str] = []
        real = parsing.parse_documents

        def counted(file: Path, *args: object, **kwargs: object) -> object:
            self.files.append(file.name)
            return real(file, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(parsing, "parse_documents", counted)


def load(paths: list[Path], disk: DiskCache | None) -> DesiredState:
    """A load as a new command runs it: a fresh store over ``disk``."""
    return load_manifests(paths, store=ObjectStore(manifests_disk=disk))


def entries(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.name.startswith(f"{saved.KIND}-"))


def test_a_second_load_restores_the_documents_and_gives_the_same_state(
    write: Write, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write("m/a.yaml", doc("a", labels=", labels: {team: net}") + "---\n" + doc("b"))
    write("m/c.yaml", doc("c", "  maps:\n    counters: {preserve: true}\n"))
    disk = DiskCache(tree / "cache")
    parses = Parses(monkeypatch)
    first = load([tree / "m"], disk)
    assert sorted(parses.files) == ["a.yaml", "c.yaml"]
    assert len(entries(tree / "cache")) == 1
    parses.files.clear()
    second = load([tree / "m"], disk)
    assert parses.files == []  # restored, not parsed
    assert second == first
    assert [c.digest for c in second.collections.values()] == [
        c.digest for c in first.collections.values()
    ]
    # without the disk cache: parsed again, the same state
    assert load([tree / "m"], None) == first and sorted(parses.files) == ["a.yaml", "c.yaml"]


def test_an_edit_is_seen(write: Write, tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = write("m/a.yaml", doc("a"))
    write("m/b.yaml", doc("b"))
    disk = DiskCache(tree / "cache")
    load([tree / "m"], disk)
    parses = Parses(monkeypatch)
    f.write_text(doc("a").replace("version: 3", "version: 4"))
    state = load([tree / "m"], disk)
    assert state.collections["a"].constants == {"version": 4}
    assert sorted(parses.files) == ["a.yaml", "b.yaml"]  # any change: all parsed again
    parses.files.clear()
    assert load([tree / "m"], disk) == state and parses.files == []
    # a file added (or removed) is a change of the set
    write("m/d.yaml", doc("d"))
    assert sorted(load([tree / "m"], disk).collections) == ["a", "b", "d"]
    assert sorted(parses.files) == ["a.yaml", "b.yaml", "d.yaml"]
    (tree / "m" / "d.yaml").unlink()
    assert sorted(load([tree / "m"], disk).collections) == ["a", "b"]


def test_restored_documents_keep_the_places_of_problems_and_warnings(
    write: Write, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # valid YAML and schema, so kept; the object has no such program or constant
    write(
        "m/a.yaml",
        doc("a", "  programs: [nope]\n", api="bpforch/v1").replace("version: 3", "versoin: 3"),
    )
    disk = DiskCache(tree / "cache")
    with pytest.raises(ManifestError) as first:
        load([tree / "m"], disk)
    assert len(entries(tree / "cache")) == 1
    parses = Parses(monkeypatch)
    with pytest.raises(ManifestError) as second:
        load([tree / "m"], disk)
    assert parses.files == []
    assert second.value.problems == first.value.problems
    lines = sorted((p.field, p.source.line, p.source.column) for p in second.value.problems)
    assert lines == [("spec.constants.versoin", 6, 15), ("spec.programs[0]", 7, 14)]
    # the deprecated apiVersion is warned about from a restored document too
    write("m/a.yaml", doc("a", api="bpforch/v1"))
    warned = load([tree / "m"], disk).warnings
    assert load([tree / "m"], disk).warnings == warned
    assert [(w.field, w.source.line) for w in warned] == [("apiVersion", 1)]


def test_files_with_problems_or_tagged_values_are_parsed_every_time(
    write: Write, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write("m/bad.yaml", doc("bad", "  unknown_field: 1\n"))
    write("m/good.yaml", doc("good"))
    entries_ = "  maps:\n    blocked:\n      entries:\n        - {key: 1, value: !hex 01}\n"
    write("m/hex.yaml", doc("hex", entries_))
    disk = DiskCache(tree / "cache")
    with pytest.raises(ManifestError) as first:
        load([tree / "m"], disk)
    parses = Parses(monkeypatch)
    with pytest.raises(ManifestError) as second:
        load([tree / "m"], disk)
    assert sorted(parses.files) == ["bad.yaml", "hex.yaml"]
    assert second.value.problems == first.value.problems
    assert [p.field for p in second.value.problems] == ["spec.unknown_field"]


def test_a_corrupt_entry_is_ignored_with_a_warning_and_replaced(
    write: Write, tree: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    write("m/a.yaml", doc("a"))
    disk = DiskCache(tree / "cache")
    state = load([tree / "m"], disk)
    key = saved.SavedDocuments(disk, [(tree / "m" / "a.yaml", _sha(tree / "m" / "a.yaml"))]).key
    payload = disk.get(saved.KIND, key)
    assert payload is not None and b'"values":[' in payload
    bad_payloads = [
        b"not json",
        b'{"format": 99, "files": []}',
        b'{"format": 1, "files": [{"path": "/elsewhere.yaml", "sha256": "00", "documents": []}]}',
        b'{"format": 1, "files": {}}',
        # positions that are not one per node
        payload.replace(b'"values":[', b'"values":[1,2,', 1),
        payload.replace(b'"keys":[', b'"keys":[1,', 1),
        # an index that is not an integer, a start that is not a (line, column) pair
        payload.replace(b'"index":0', b'"index":"0"', 1),
        re.sub(rb'"start":\[\d+,\d+\]', b'"start":[1]', payload, count=1),
    ]
    assert payload not in bad_payloads and len(set(bad_payloads)) == len(bad_payloads)
    reasons = ["", "format 99", "/elsewhere.yaml", "expected a list", "one per node"]
    reasons += ["one per node", "bad index or start", "bad index or start"]
    for bad, reason in zip(bad_payloads, reasons, strict=True):
        assert disk.put(saved.KIND, key, bad)
        parses = Parses(monkeypatch)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="orchestrator.ebpf.diskcache"):
            assert load([tree / "m"], DiskCache(tree / "cache")) == state
        assert parses.files == ["a.yaml"]
        assert "parsed manifests do not decode" in caplog.text, bad
        assert reason in caplog.text, bad
        parses.files.clear()
        assert load([tree / "m"], disk) == state and parses.files == []  # replaced


def test_the_command_line_persists_manifests_and_no_cache_turns_it_off(tmp_path: Path) -> None:
    d = tmp_path / "cache"
    out = io.StringIO()
    assert (
        main(["--cache-dir", str(d), "--no-cache", "validate", str(ROOT / "manifests")], out) == 0
    )
    assert not d.exists()
    assert main(["--cache-dir", str(d), "validate", str(ROOT / "manifests")], out) == 0
    assert len(entries(d)) == 1


def test_a_validate_served_from_the_entry_imports_no_yaml(tmp_path: Path) -> None:
    d = tmp_path / "cache"
    code = (
        "import sys\nfrom orchestrator.cli import main\n"
        f"code = main(['--cache-dir', {str(d)!r}, 'validate', {str(ROOT / 'manifests')!r}])\n"
        "print(code, 'yaml' in sys.modules, 'orchestrator.manifest.schema' in sys.modules)\n"
    )
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
        for _ in range(2)
    ]
    assert [r.stdout.splitlines()[-1] for r in runs] == ["0 True True", "0 False False"], runs


def _sha(path: Path) -> bytes:
    import hashlib

    return hashlib.sha256(path.read_bytes()).digest()


def test_the_key_names_the_code_that_parsed(
    write: Write, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another bpforch, parser, schema or PyYAML (``identity``) never reads this entry."""
    write("m/a.yaml", doc("a"))
    disk = DiskCache(tree / "cache")
    load([tree / "m"], disk)
    monkeypatch.setattr(saved, "identity", lambda: "another parser")
    parses = Parses(monkeypatch)
    load([tree / "m"], disk)
    assert parses.files == ["a.yaml"]
    assert len(entries(tree / "cache")) == 2


def test_the_identity_follows_pyyaml_and_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """PyYAML's files are part of the identity; if they can't be read (gone in the middle of
    an upgrade) the identity is another one, not an error."""
    import importlib.machinery
    import importlib.util

    real = saved.identity.__wrapped__()
    gone = importlib.machinery.ModuleSpec("yaml", None, origin="/nonexistent/yaml/__init__.py")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: gone)
    other = saved.identity.__wrapped__()
    assert other != real and len(other) == 64


@pytest.mark.parametrize("library", ["yaml", "jsonschema", "referencing"])
def test_the_identity_follows_the_parsing_and_validating_libraries(
    library: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Another PyYAML, jsonschema or referencing (here: the same library's modules with
    another size) gives another identity."""
    import importlib.machinery
    import importlib.util
    import shutil

    real_find = importlib.util.find_spec
    found = real_find(library)
    assert found is not None and found.origin is not None
    copy = tmp_path / library
    shutil.copytree(Path(found.origin).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = saved.identity.__wrapped__()

    def find(name: str) -> object:
        if name != library:
            return real_find(name)
        return importlib.machinery.ModuleSpec(name, None, origin=str(copy / "__init__.py"))

    monkeypatch.setattr(importlib.util, "find_spec", find)
    same_files = saved.identity.__wrapped__()  # the copy has other paths and mtimes
    assert same_files != before
    with open(copy / "__init__.py", "a") as f:
        f.write("\n# upgraded\n")
    assert saved.identity.__wrapped__() not in (before, same_files)
