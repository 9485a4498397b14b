"""The checked desired state persisted across processes (orchestrator.manifest.checked): a
second load of unchanged manifests and objects gives the collections the full load gave,
field for field, without building or checking them; a changed manifest, object or mount
lookup is seen; a corrupt entry is ignored with a warning."""

from __future__ import annotations

import json
import logging
import shutil
import textwrap
from pathlib import Path

import pytest

from orchestrator.ebpf import mounts
from orchestrator.ebpf.diskcache import DiskCache
from orchestrator.manifest import ManifestError, ObjectStore, builder, checked, load_manifests
from orchestrator.manifest import loader as loader_module
from orchestrator.manifest.model import DesiredState

from .conftest import Write
from .test_load import FULL

ROOT = Path(__file__).resolve().parent.parent.parent

METRICS_AND_ENTRIES = """
apiVersion: bpforch.dev/v1
kind: Collection
metadata: {name: shaped, labels: {tier: "1"}}
spec:
  object: ../objs/net.o
  programs: [xdp_count]
  constants: {version: 3, greeting: "yo"}
  maps:
    counters: {entries: [{key: 3, value: 30}]}
    blocked:
      entries:
        - {key: 53, value: 1}
      entries_mode: merge
  metrics:
    - {name: shaped_packets, type: counter, map: counters, key: 0, help: packets}
    - {name: shaped_by_port, type: gauge, map: blocked, label: port}
---
apiVersion: bpforch.dev/v1
kind: Collection
metadata: {name: pinned}
spec:
  object: ../objs/user.o
  maps:
    shared_stats: {from: {pinned: /sys/fs/bpf/other/./shared_stats}}
"""


class Builds:
    """Counts the collections built from documents (parsed or restored)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = builder._Builder.build

        def counted(self_: builder._Builder) -> object:
            self.count += 1
            return real(self_)

        monkeypatch.setattr(builder._Builder, "build", counted)


def load(paths: list[Path], disk: DiskCache | None) -> DesiredState:
    """A load as a new command runs it: a fresh store over ``disk``."""
    return load_manifests(paths, store=ObjectStore(manifests_disk=disk))


def same(a: DesiredState, b: DesiredState) -> None:
    """Equal field for field, the fields equality leaves out (sources) too."""
    assert a == b
    assert list(a.collections) == list(b.collections)
    for name, coll in a.collections.items():
        assert repr(coll) == repr(b.collections[name])
        assert coll.digest == b.collections[name].digest != ""


def entries(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.name.startswith(f"{checked.KIND}-"))


def test_a_second_load_is_served_from_the_entry_field_for_field(
    write: Write, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write("m/net.yaml", FULL)
    write("m/shaped.yaml", METRICS_AND_ENTRIES)
    disk = DiskCache(tree / "cache")
    builds = Builds(monkeypatch)
    first = load([tree / "m"], disk)
    assert builds.count == 3 and len(entries(tree / "cache")) == 1
    second = load([tree / "m"], disk)
    assert builds.count == 3  # nothing built or checked again
    same(second, first)
    assert second.files == first.files and second.warnings == ()
    # the same as a load that never saw a cache
    same(load([tree / "m"], None), second)


def test_a_served_load_parses_no_object(write: Write, tree: Path) -> None:
    """The objects' sha256 are checked by hashing their bytes: none is parsed or read back
    from the persisted specs (a changed object is still seen: see the next tests)."""
    write("m/net.yaml", FULL)
    disk = DiskCache(tree / "cache")
    first = load([tree / "m"], disk)
    store = ObjectStore(manifests_disk=disk)
    same(load_manifests([tree / "m"], store=store), first)
    stats = store.specs.stats()
    assert (stats.parsed, stats.loaded, stats.entries) == (0, 0, 0)


def test_the_projects_manifests_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = DiskCache(tmp_path / "cache")
    first = load([ROOT / "manifests"], disk)
    builds = Builds(monkeypatch)
    same(load([ROOT / "manifests"], disk), first)
    assert builds.count == 0


def test_a_changed_manifest_or_object_is_seen(
    write: Write, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = write("m/a.yaml", FULL)
    disk = DiskCache(tree / "cache")
    before = load([tree / "m"], disk)
    f.write_text(FULL.replace("version: 0x10", "version: 0x11"))
    edited = load([tree / "m"], disk)
    assert edited.collections["net"].constants["version"] == 0x11
    assert edited.collections["net"].digest != before.collections["net"].digest
    same(load([tree / "m"], None), edited)
    # the object rebuilt (other bytes at the same path): checked again, a new digest
    obj = tree / "objs" / "net.o"
    data = obj.read_bytes()
    obj.write_bytes(data + b"\0" * 8)  # still a valid ELF file, another sha256
    builds = Builds(monkeypatch)
    rebuilt = load([tree / "m"], disk)
    assert builds.count == 1
    assert rebuilt.collections["net"].digest != edited.collections["net"].digest
    same(load([tree / "m"], None), rebuilt)
    # an object that can no longer be read is a problem again, not served from the entry
    shutil.copyfile(tree / "objs" / "user.o", obj)
    with pytest.raises(ManifestError, match="object has no program"):
        load([tree / "m"], disk)
    obj.write_bytes(data)
    same(load([tree / "m"], disk), edited)


def test_a_changed_mount_lookup_is_seen(
    write: Write, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write("m/a.yaml", FULL)  # a relative cgroup path: under the cgroup v2 mount
    disk = DiskCache(tree / "cache")
    first = load([tree / "m"], disk)
    root = mounts.cgroup2_root()
    web = [a for a in first.collections["net"].attach if a.program == "cg_egress"]
    assert web[0].target.path == root / "app" / "web"  # type: ignore[union-attr]

    def elsewhere(mountinfo: str | None = None) -> Path:
        return Path("/elsewhere/cgroup")

    monkeypatch.setattr(mounts, "cgroup2_root", elsewhere)
    monkeypatch.setattr(builder, "cgroup2_root", elsewhere)
    moved = load([tree / "m"], disk)
    web = [a for a in moved.collections["net"].attach if a.program == "cg_egress"]
    assert web[0].target.path == Path("/elsewhere/cgroup/app/web")  # type: ignore[union-attr]


def test_loads_with_warnings_or_values_json_does_not_carry_are_not_kept(
    write: Write, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = write("m/a.yaml", FULL.replace("bpforch.dev/v1", "bpforch/v1"))
    disk = DiskCache(tree / "cache")
    warned = load([tree / "m"], disk).warnings
    assert [w.field for w in warned] == ["apiVersion"]
    assert entries(tree / "cache") == []
    assert load([tree / "m"], disk).warnings == warned  # warned again
    hexed = textwrap.dedent(
        """\
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {name: hexed}
        spec:
          object: ../objs/net.o
          maps:
            blocked:
              entries:
                - {key: !be16 53, value: 1}
        """
    )
    f.write_text(hexed)
    first = load([tree / "m"], disk)
    assert entries(tree / "cache") == []
    builds = Builds(monkeypatch)
    same(load([tree / "m"], disk), first)
    assert builds.count == 1


def test_a_load_without_objects_or_with_problems_is_not_kept(write: Write, tree: Path) -> None:
    write("m/a.yaml", FULL)
    disk = DiskCache(tree / "cache")
    load_manifests([tree / "m"], check_objects=False, store=ObjectStore(manifests_disk=disk))
    assert entries(tree / "cache") == []
    write("m/b.yaml", FULL)  # the same collection name twice
    for _ in range(2):
        with pytest.raises(ManifestError, match="declared twice"):
            load([tree / "m"], disk)
    assert entries(tree / "cache") == []


def test_a_corrupt_entry_is_ignored_with_a_warning_and_replaced(
    write: Write, tree: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    write("m/a.yaml", FULL)
    disk = DiskCache(tree / "cache")
    state = load([tree / "m"], disk)
    (entry,) = entries(tree / "cache")
    key = checked.CheckedState(disk, [(f, _sha(f)) for f in state.files]).key
    payload = disk.get(checked.KIND, key)
    assert payload is not None and b'"c":["DesiredCollection",' in payload
    bad_payloads = [
        b"not json",
        b'{"format": 99}',
        b'{"format": 1, "mounts": [], "objects": {}, "collections": []}',
        payload.replace(b'"c":["DesiredCollection",', b'"c":["Unknown",', 1),
        payload.replace(b'"c":["DesiredCollection",', b'"q":["DesiredCollection",', 1),
        payload.replace(b'"c":["DesiredCollection","net",', b'"c":["DesiredCollection",', 1),
        payload.replace(b'"e":["XdpMode",', b'"e":["Nope",', 1),
        _with_collections(payload, [{"c": ["Source", {"p": "/x.yaml"}, 1, 2]}]),
        _with(payload, "mounts", {"tmpfs": "/tmp"}),
    ]
    reasons = ["", "format 99", "not an object", "not a model value", "unknown tag"]
    reasons += ["not a model value", "not an enum value", "not a collection", "tmpfs"]
    assert payload not in bad_payloads and len(set(bad_payloads)) == len(bad_payloads)
    for bad, reason in zip(bad_payloads, reasons, strict=True):
        assert disk.put(checked.KIND, key, bad)
        builds = Builds(monkeypatch)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="orchestrator.ebpf.diskcache"):
            same(load([tree / "m"], DiskCache(tree / "cache")), state)
        assert builds.count == 1, bad
        assert "checked manifests do not decode" in caplog.text, bad
        assert reason in caplog.text, bad
        monkeypatch.undo()
        builds = Builds(monkeypatch)
        same(load([tree / "m"], disk), state)  # replaced
        assert builds.count == 0, bad
    assert entry.exists()


def test_a_served_load_reads_every_manifest(
    write: Write, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entry is found by the bytes of every file: a load that never reads them could
    not notice an edit made within one mtime tick."""
    write("m/a.yaml", FULL)
    disk = DiskCache(tree / "cache")
    load([tree / "m"], disk)
    read: list[Path] = []
    real = loader_module._read_manifest

    def counted(file: Path) -> object:
        read.append(file)
        return real(file)

    monkeypatch.setattr(loader_module, "_read_manifest", counted)
    load([tree / "m"], disk)
    assert read == [tree / "m" / "a.yaml"]


def _with(payload: bytes, key: str, value: object) -> bytes:
    raw = json.loads(payload)
    raw[key] = value
    return json.dumps(raw).encode()


def _with_collections(payload: bytes, collections: list[object]) -> bytes:
    return _with(payload, "collections", collections)


def _sha(path: Path) -> bytes:
    import hashlib

    return hashlib.sha256(path.read_bytes()).digest()
