"""Digests (equal digest: nothing to do) and the parsed-object cache."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.ebpf import speccache
from orchestrator.manifest import (
    ManifestError,
    ObjectError,
    ObjectStore,
    load_manifests,
    object_info,
    object_spec,
)

from .conftest import HEADER, Write

BASE = """\
apiVersion: bpforch.dev/v1
kind: Collection
metadata:
  name: net
  labels: {team: net}
spec:
  object: ../objs/net.o
  programs: [xdp_count, tc_ingress]
  constants: {verdict: 1}
  maps:
    counters: {pin: true, max_entries: 8}
  attach:
    - {program: xdp_count, xdp: {interface: veth0}}
    - {program: tc_ingress, tc: {interface: veth0, direction: ingress}}
"""


def digest_of(path: Path) -> str:
    return load_manifests([path]).collections["net"].digest


def test_digest_is_stable_across_runs_and_formatting(write: Write, tree: Path) -> None:
    path = write("m/a.yaml", BASE)
    first = digest_of(path)
    # parsed again, in a store of its own: the same digest
    assert load_manifests([path], store=ObjectStore()).collections["net"].digest == first
    # another process (other hash seed): the same digest
    code = (
        "import sys; from pathlib import Path; from orchestrator.manifest import load_manifests;"
        "print(load_manifests([Path(sys.argv[1])]).collections['net'].digest)"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.strip() == first
    # layout, comments, key order, flow vs block style and spelled-out defaults don't count
    reformatted = (
        "# comment\n"
        "kind: Collection\napiVersion: bpforch.dev/v1\n"
        "metadata: {labels: {team: net}, name: net}\n"
        "spec:\n"
        "  constants:\n    verdict: 0x1\n"
        "  object: ./../objs/net.o\n"
        "  maps: {counters: {max_entries: 8, pin: true, preserve: false,"
        " on_incompatible: fail}}\n"
        "  programs:\n    - xdp_count\n    - tc_ingress\n"
        "  attach:\n"
        "    - {program: xdp_count, xdp: {interface: veth0, mode: auto}}\n"
        "    - {tc: {direction: ingress, interface: veth0}, program: tc_ingress}\n"
    )
    assert digest_of(write("m/a.yaml", reformatted)) == first


CHANGES = [
    ("name: net\n  labels: {team: net}", "name: net\n  labels: {team: other}"),
    ("programs: [xdp_count, tc_ingress]", "programs: [tc_ingress, xdp_count]"),
    ("constants: {verdict: 1}", "constants: {verdict: 2}"),
    ("constants: {verdict: 1}", "constants: {verdict: 1, version: 0}"),
    ("max_entries: 8", "max_entries: 16"),
    ("{pin: true, max_entries: 8}", "{pin: false, max_entries: 8}"),
    ("{pin: true, max_entries: 8}", "{preserve: true, max_entries: 8}"),
    ("max_entries: 8}", "max_entries: 8, on_incompatible: recreate}"),
    ("interface: veth0}}", "interface: veth1}}"),
    ("interface: veth0}}", "interface: veth0, mode: native}}"),
    ("interface: veth0}}", "interface: veth0, netns: blue}}"),
    ("direction: ingress", "direction: egress"),
    ("  constants: {verdict: 1}\n", "  constants: {verdict: 1}\n  sha256: SHA\n"),
]


@pytest.mark.parametrize(("old", "new"), CHANGES, ids=[n for _, n in CHANGES])
def test_digest_changes_with_every_field(write: Write, tree: Path, old: str, new: str) -> None:
    before = digest_of(write("m/a.yaml", BASE))
    assert old in BASE
    sha = object_info(tree / "objs" / "net.o").sha256
    after = digest_of(write("m/a.yaml", BASE.replace(old, new).replace("SHA", sha)))
    assert after != before


def test_digest_follows_the_object_and_its_resolved_path(write: Write, tree: Path) -> None:
    path = write("m/a.yaml", BASE)
    before = digest_of(path)
    # the same bytes at another path: a different collection definition
    shutil.copyfile(tree / "objs" / "net.o", tree / "objs" / "net2.o")
    assert digest_of(write("m/a.yaml", BASE.replace("net.o", "net2.o"))) != before
    # the manifest unchanged, the object rebuilt (one byte of padding appended)
    path = write("m/a.yaml", BASE)
    with open(tree / "objs" / "net.o", "ab") as f:
        f.write(b"\0")
    assert digest_of(path) != before


def test_without_objects_nothing_is_read_and_digests_are_empty(write: Write, tree: Path) -> None:
    path = write("m/a.yaml", BASE.replace("net.o", "missing.o"))
    state = load_manifests([path], check_objects=False)
    assert state.collections["net"].digest == ""
    assert state.collections["net"].object_file == tree / "objs" / "missing.o"


def test_cache_returns_the_same_spec_while_the_file_is_unchanged(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    obj = tree / "objs" / "net.o"
    # not "racy": the cache trusts a file's identity only once its mtime *and* ctime are
    # older than the entry by RACY_NS, and a just-written file's ctime cannot be set back
    monkeypatch.setattr(speccache, "RACY_NS", 0)
    store = ObjectStore()
    spec = object_spec(obj, store)
    assert object_spec(obj, store) is spec
    assert object_spec(obj, store) is spec
    stats = store.specs.stats()
    assert stats.parsed == 1
    assert stats.parsed + stats.verified == 1  # hashed once: the two later lookups were stat-only
    assert stats.hits == 2


def test_cache_reparses_after_a_change(tree: Path) -> None:
    obj = tree / "objs" / "x.o"
    shutil.copyfile(tree / "objs" / "owner.o", obj)
    first = object_spec(obj)
    assert "count_getpid" in first.programs
    # rewritten in place (same inode) with another object
    shutil.copyfile(tree / "objs" / "user.o", obj)
    second = object_spec(obj)
    assert second is not first and "count_gettid" in second.programs
    # replaced by rename (new inode)
    shutil.copyfile(tree / "objs" / "owner.o", tree / "objs" / "tmp.o")
    os.rename(tree / "objs" / "tmp.o", obj)
    assert "count_getpid" in object_spec(obj).programs


def test_cache_sees_a_same_size_rewrite_within_one_clock_tick(
    tree: Path, compile_bpf: Callable[..., Path]
) -> None:
    """Same size, same mtime (restored with utime), same inode: only the content changed."""
    src = HEADER + 'const volatile __u32 v = VALUE;\nSEC("xdp") int f(void *c) { return v; }\n'
    one, two = (compile_bpf(src.replace("VALUE", n)).read_bytes() for n in ("1", "2"))
    assert len(one) == len(two) and one != two
    obj = tree / "objs" / "x.o"
    obj.write_bytes(one)
    st = os.stat(obj)
    assert object_spec(obj).variables["v"].value == 1
    with open(obj, "r+b") as f:
        f.write(two)
    os.utime(obj, ns=(st.st_atime_ns, st.st_mtime_ns))
    now = os.stat(obj)
    assert (now.st_size, now.st_mtime_ns, now.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)
    assert object_spec(obj).variables["v"].value == 2


def test_a_broken_object_is_an_error_until_it_is_fixed(tree: Path) -> None:
    bad = tree / "objs" / "bad.o"
    bad.write_bytes(b"not an elf at all" * 8)
    with pytest.raises(ObjectError, match="not an ELF file"):
        object_spec(bad)
    with pytest.raises(ObjectError, match="not an ELF file"):
        object_spec(bad)
    shutil.copyfile(tree / "objs" / "owner.o", bad)
    assert "count_getpid" in object_spec(bad).programs


def test_missing_object(tree: Path) -> None:
    with pytest.raises(ObjectError, match="no such file or directory"):
        object_spec(tree / "objs" / "nope.o")


def test_revalidation_sees_an_object_change_under_an_unchanged_manifest(
    write: Write, tree: Path
) -> None:
    path = write("m/a.yaml", BASE)
    before = digest_of(path)
    assert digest_of(path) == before  # from the caches
    shutil.copyfile(tree / "objs" / "net.o", tree / "objs" / "net.bak")
    shutil.copyfile(tree / "objs" / "owner.o", tree / "objs" / "net.o")
    with pytest.raises(ManifestError) as info:
        load_manifests([path])
    assert [p.field for p in info.value.problems] == [
        "spec.programs[0]",
        "spec.programs[1]",
        "spec.constants.verdict",
        "spec.maps.counters",
        "spec.attach[0].program",
        "spec.attach[1].program",
    ]
    os.rename(tree / "objs" / "net.bak", tree / "objs" / "net.o")
    assert digest_of(path) == before


def test_the_deprecated_api_version_is_read_with_a_warning_and_the_same_digest(
    write: Write, tree: Path
) -> None:
    """Collections applied before the apiVersion became bpforch.dev/v1 keep their digests:
    upgrading bpforch, or the manifests' apiVersion, reloads nothing."""
    current = load_manifests([write("m/a.yaml", BASE)])
    assert current.warnings == ()
    old = write("m/a.yaml", BASE.replace("bpforch.dev/v1", "bpforch/v1"))
    legacy = load_manifests([old])
    assert [str(w) for w in legacy.warnings] == [
        f"{old}:1:13: apiVersion: bpforch/v1 is deprecated "
        "(write apiVersion: bpforch.dev/v1; it means the same)"
    ]
    c = current.collections["net"]
    assert legacy.collections["net"].digest == c.digest
    # what the versions before bpforch.dev/v1 computed, and recorded, for this collection
    document = c.document()
    assert document["apiVersion"] == "bpforch.dev/v1"
    document["apiVersion"] = "bpforch/v1"
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    sha = object_info(tree / "objs" / "net.o").sha256
    assert c.digest == hashlib.sha256(text.encode() + b"\0" + sha.encode()).hexdigest()
