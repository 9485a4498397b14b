"""The reconciler against hostile files: a state record of the wrong shape (each refusal
names the field), one that is not a regular file or too large, a git checkout whose files
are FIFOs, and a uprobe target that is a FIFO (refused at plan time, promptly, so the
apply lock is not held while something blocks)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.reconcile import PlanError, StateError
from orchestrator.reconcile.state import RecordFieldError, StateRecord
from orchestrator.reconcile.store import RECORD_MAX, git_revision, read_record
from tests.deadline import promptly

from .conftest import Env

SHAPE = {"type": 2, "key_size": 4, "value_size": 8, "max_entries": 1, "flags": 0}


def coll(**over: object) -> dict[str, object]:
    c: dict[str, object] = {
        "generation": 1,
        "digest": "d",
        "object": "/x.o",
        "maps": {"m": {"id": 5, "shape": SHAPE, "pin": "maps/m", "source": ""}},
        "programs": {"p": {"id": 6, "tag": "t", "pin": "progs/p"}},
        "attachments": {"k": {"program": "p", "kind": "xdp", "link_id": 7, "pin": "links/k"}},
    }
    c.update(over)
    return c


def write(tmp_path: Path, data: object) -> Path:
    (tmp_path / "state.json").write_text(json.dumps(data))
    return tmp_path


def refused(tmp_path: Path, data: object) -> str:
    with pytest.raises(StateError) as info:
        read_record(write(tmp_path, data))
    text = str(info.value)
    assert text.startswith(f"state record {tmp_path / 'state.json'}: unreadable (")
    return text


def test_a_well_formed_record_is_read(tmp_path: Path) -> None:
    rec = read_record(write(tmp_path, {"version": 1, "collections": {"web": coll()}}))
    c = rec.collections["web"]
    assert c.maps["m"].pin == "maps/m" and c.programs["p"].id == 6
    assert c.attachments["k"].link_id == 7
    assert StateRecord.from_json(rec.to_json()) == rec


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "the record: expected an object, got a list"),
        ("x", "the record: expected an object, got the string 'x'"),
        ({"version": 1, "collections": []}, "collections: expected an object, got a list"),
        ({"version": 1, "collections": {"a": []}}, "collections.a: expected an object, got a list"),
        ({"version": 1, "collections": {"a": 3}}, "collections.a: expected an object, got the"),
        (
            {"version": 1, "collections": {"A/b": coll()}},
            "collections.'A/b': the string 'A/b' is not a collection name",
        ),
        ({"version": 1, "collections": {"a": coll(generation=None)}}, "a.generation: expected an"),
        ({"version": 1, "collections": {"a": coll(generation=True)}}, "got a boolean"),
        ({"version": 1, "collections": {"a": coll(generation=-1)}}, "got the number -1"),
        ({"version": 1, "collections": {"a": coll(digest=7)}}, "a.digest: expected a string"),
        ({"version": 1, "collections": {"a": coll(maps={"m": "x"})}}, "a.maps.m: expected an obj"),
        ({"version": 1, "collections": {"a": coll(depends_on="b")}}, "a.depends_on: expected a"),
        ({"version": 1, "collections": {"a": coll(depends_on=["B"])}}, "depends_on[0]: the str"),
        ({"version": 1, "collections": {"a": coll(git_revision=1)}}, "a.git_revision: expected"),
    ],
)
def test_shapes_are_refused_naming_the_field(tmp_path: Path, data: object, message: str) -> None:
    assert message in refused(tmp_path, data)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("pin", "maps/m\0x", "maps.m.pin: 'maps/m\\x00x' contains a NUL byte"),
        ("pin", "../../etc", "maps.m.pin: '../../etc' is not a relative pin path"),
        ("pin", "/sys/fs/bpf/x", "maps.m.pin: '/sys/fs/bpf/x' is not a relative pin path"),
        ("pin", "maps//m", "is not a relative pin path"),
        ("source", "bogus:x", "maps.m.source: unknown source 'bogus:x'"),
        ("source", "collection/a", "unknown source 'collection/a'"),
        ("source", "pinned:relative", "unknown source 'pinned:relative'"),
        ("source", "pinned:/sys/fs/bpf/\0", "contains a NUL byte"),
        ("shape", [], "maps.m.shape: expected an object, got a list"),
        ("preserve", "yes", "maps.m.preserve: expected true or false"),
        ("id", 2**64, "maps.m.id: expected an integer from 0 to 2^64-1"),
    ],
)
def test_map_fields_are_checked(tmp_path: Path, field: str, value: object, message: str) -> None:
    m = {"id": 5, "shape": SHAPE, "pin": "maps/m", "source": ""}
    m[field] = value
    text = refused(tmp_path, {"version": 1, "collections": {"a": coll(maps={"m": m})}})
    assert f"collections.a.{message}" in text or message in text


def test_names_with_nul_bytes_and_valid_sources(tmp_path: Path) -> None:
    assert "a name must be non-empty" in refused(
        tmp_path, {"version": 1, "collections": {"a": coll(programs={"p\0": {}})}}
    )
    m = {"id": 5, "shape": SHAPE, "pin": "", "source": "collection/other/m"}
    rec = read_record(write(tmp_path, {"version": 1, "collections": {"a": coll(maps={"m": m})}}))
    assert rec.collections["a"].maps["m"].source == "collection/other/m"
    m["source"] = "pinned:/sys/fs/bpf/firewall/blocked"
    rec = read_record(write(tmp_path, {"version": 1, "collections": {"a": coll(maps={"m": m})}}))
    assert rec.collections["a"].maps["m"].source.startswith("pinned:/")


def test_deep_nesting_and_wide_integers(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text(
        '{"version": 1, "collections": ' + "[" * 100_000 + "]" * 100_000 + "}"
    )
    with pytest.raises(StateError, match=r"unreadable \(nested too deeply\)"):
        read_record(tmp_path)
    (tmp_path / "state.json").write_text('{"version": 1, "collections": {}, "x": ' + "9" * 5000)
    with pytest.raises(StateError, match="unreadable"):
        read_record(tmp_path)
    (tmp_path / "state.json").write_bytes(b'{"version": 1, "collections": {"\xff": 1}}')
    with pytest.raises(StateError, match="unreadable"):
        read_record(tmp_path)


def test_record_error_carries_the_field() -> None:
    with pytest.raises(RecordFieldError) as info:
        StateRecord.from_json({"collections": {"a": coll(maps={"m": {"id": 1}})}})
    assert info.value.field == "collections.a.maps.m.shape" and "missing" in str(info.value)


def test_a_record_that_is_not_a_regular_file_or_too_large(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "state.json")
    with pytest.raises(StateError, match=r"state\.json: not a regular file \(a fifo\)"):
        promptly(lambda: read_record(tmp_path))
    os.unlink(tmp_path / "state.json")
    real = tmp_path / "elsewhere.json"
    real.write_text('{"version": 1, "collections": {}}')
    (tmp_path / "state.json").symlink_to(real)  # a symlink in the state dir: not followed
    with pytest.raises(StateError, match=r"not a regular file \(a symlink\)"):
        read_record(tmp_path)
    os.unlink(tmp_path / "state.json")
    with open(tmp_path / "state.json", "wb") as f:
        f.truncate(RECORD_MAX + 1)
    with pytest.raises(StateError, match=r"16\.0 MiB, over the 16 MiB limit for a state record"):
        read_record(tmp_path)


def test_git_revision_never_blocks_on_a_fifo(tmp_path: Path) -> None:
    git = tmp_path / ".git"
    git.mkdir()
    os.mkfifo(git / "HEAD")
    assert promptly(lambda: git_revision(tmp_path / "m.yaml")) is None
    os.unlink(git / "HEAD")
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "refs" / "heads").mkdir(parents=True)
    os.mkfifo(git / "packed-refs")
    assert promptly(lambda: git_revision(tmp_path / "m.yaml")) is None
    (git / "refs" / "heads" / "main").write_text("abc123\n")
    assert git_revision(tmp_path / "m.yaml") == "abc123"


UPROBE_C = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("uprobe")
int probe(void *ctx) { return 0; }
char LICENSE[] SEC("license") = "GPL";
"""


@pytest.mark.kernel
def test_a_fifo_as_uprobe_path_is_refused_at_plan_and_holds_no_lock(
    env: Env, compile_bpf: Callable[..., Path], tmp_path: Path
) -> None:
    """It used to block the ELF symbol lookup while apply held the lock, so every later
    apply and destroy blocked too."""
    obj = compile_bpf(UPROBE_C)
    fifo = tmp_path / "target"
    os.mkfifo(fifo)

    def manifest(path: Path, symbol: str = "main") -> None:
        env.write(
            "up",
            f"""
            apiVersion: bpforch.dev/v1
            kind: Collection
            metadata: {{name: up}}
            spec:
              object: {obj}
              attach:
                - program: probe
                  uprobe: {{path: {path}, symbol: {symbol}}}
            """,
        )

    for target in (fifo, Path("/dev/zero")):
        manifest(target)
        with pytest.raises(PlanError) as info:
            promptly(lambda: env.reconciler().apply(env.desired()))
        assert f"uprobe binary {target}: not a regular file" in str(info.value)
    # the lock is free: a concurrent apply and a destroy finish
    manifest(Path(os.path.realpath("/proc/self/exe")))
    results: list[object] = []
    threads = [
        threading.Thread(target=lambda: results.append(env.reconciler().plan(env.desired())))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 2
    promptly(lambda: env.reconciler().destroy())


@pytest.mark.kernel
def test_a_fifo_as_network_namespace_is_refused_promptly(env: Env, tmp_path: Path) -> None:
    """Opening a FIFO as a namespace file would wait for a writer: it is refused by type."""
    fifo = tmp_path / "ns"
    os.mkfifo(fifo)
    env.write(
        "x",
        f"""
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {{name: x}}
        spec:
          object: @BPF@/xdp_counter.o
          attach:
            - program: xdp_count
              xdp: {{interface: lo, netns: {fifo}}}
        """,
    )
    plan = promptly(lambda: env.reconciler().plan(env.desired()))
    [problem] = [str(p) for p in plan.problems]
    assert f"network namespace {fifo}: cannot enter it: not a regular file (a fifo)" in problem
