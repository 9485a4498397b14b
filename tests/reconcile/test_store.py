"""The state record on disk, the lock and the git revision (no kernel needed)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from orchestrator.reconcile import CollectionRecord, StateError, StateRecord
from orchestrator.reconcile.state import collection_text
from orchestrator.reconcile.store import git_revision, read_record, record_bytes, write_record


def rec(name: str) -> CollectionRecord:
    return CollectionRecord(
        name=name,
        generation=3,
        digest="d",
        object_file="/o.o",
        object_sha256="s",
        manifest="/m.yaml:1:1",
        applied_at="2026-01-01T00:00:00Z",
        git_revision=None,
        load_key="k",
    )


def test_write_then_read_round_trips_and_leaves_no_temp_files(tmp_path: Path) -> None:
    state = StateRecord({"a": rec("a"), "b": rec("b")})
    write_record(tmp_path / "s", state)
    assert read_record(tmp_path / "s") == state
    assert sorted(os.listdir(tmp_path / "s")) == ["state.json"]
    assert json.loads((tmp_path / "s" / "state.json").read_text())["version"] == 1
    assert read_record(tmp_path / "nothing") == StateRecord()
    # a writer killed between write and rename left its temp file: the next write drops it
    (tmp_path / "s" / ".state.json.999999.tmp").write_text("partial")
    write_record(tmp_path / "s", state)
    assert sorted(os.listdir(tmp_path / "s")) == ["state.json"]


def test_the_record_file_is_the_records_json_whether_texts_are_given_or_not(
    tmp_path: Path,
) -> None:
    """write_record writes ``json.dumps(record.to_json())`` (compact, keys sorted), taking a
    collection's entry from the texts the transaction encoded for its marker when given."""
    a = dataclasses.replace(rec("a"), entries={"m": "e"}, labels={"k": "v\u00e9"})
    state = StateRecord({"b": rec("b"), "a": a, "a-1": rec("a-1")})
    plain = json.dumps(state.to_json(), separators=(",", ":"), sort_keys=True).encode()
    texts = {n: collection_text(c) for n, c in state.collections.items()}
    assert record_bytes(state) == plain
    assert record_bytes(state, texts) == plain
    assert record_bytes(state, {"a": texts["a"]}) == plain  # the others encoded there
    assert record_bytes(StateRecord()) == b'{"collections":{},"version":1}'
    # a text given is taken as it is (made from this very record by the caller)
    assert json.loads(record_bytes(state, {"b": '{"x":1}'}))["collections"]["b"] == {"x": 1}
    write_record(tmp_path, state, texts)
    assert (tmp_path / "state.json").read_bytes() == plain
    assert read_record(tmp_path) == state


def test_a_failed_write_keeps_the_old_record(tmp_path: Path) -> None:
    d = tmp_path / "s"
    old = StateRecord({"a": rec("a")})
    write_record(d, old)
    (d / f".state.json.{os.getpid()}.tmp").mkdir()  # the temp file can't be created
    with pytest.raises(StateError) as info:
        write_record(d, StateRecord())
    assert "state.json: write" in str(info.value)
    assert read_record(d) == old


def test_unknown_record_version_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text('{"version": 99, "collections": {}}')
    with pytest.raises(StateError) as info:
        read_record(tmp_path)
    assert "unknown record version 99" in str(info.value)


def test_git_revision_of_a_checkout(tmp_path: Path) -> None:
    from tests.conftest import run_git

    def run(*args: str) -> str:
        return run_git(tmp_path, *args)

    assert git_revision(tmp_path / "m.yaml") is None
    run("init", "-q")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.yaml").write_text("x")
    run("add", ".")
    run("commit", "-q", "-m", "m")
    head = run("rev-parse", "HEAD")
    assert git_revision(tmp_path / "sub" / "m.yaml") == head
    run("pack-refs", "--all")  # the branch ref now lives in packed-refs only
    assert git_revision(tmp_path / "sub") == head
    run("checkout", "-q", "--detach")
    assert git_revision(tmp_path / "sub") == head


def test_git_revision_of_a_worktree_and_past_odd_dot_git_entries(tmp_path: Path) -> None:
    from tests.conftest import git_commit, run_git

    repo = tmp_path / "repo"
    repo.mkdir()
    head = git_commit(repo, {"m.yaml": "x"})
    # a linked worktree: its .git is a file naming the git directory
    run_git(repo, "worktree", "add", "-q", "--detach", str(tmp_path / "wt"))
    assert (tmp_path / "wt" / ".git").is_file()
    assert git_revision(tmp_path / "wt") == head
    # a .git that is a symlink loop, a dangling symlink or a fifo is no checkout: the
    # search goes on upwards
    for i, make in enumerate(
        (
            lambda p: p.symlink_to(p),
            lambda p: p.symlink_to(p.parent / "missing"),
            lambda p: os.mkfifo(p),
        )
    ):
        sub = repo / f"sub{i}"
        sub.mkdir()
        make(sub / ".git")
        assert git_revision(sub) == head
    # a .git file that is not a worktree's: not a checkout, and no further search
    (repo / "odd").mkdir()
    (repo / "odd" / ".git").write_text("not a gitdir line\n")
    assert git_revision(repo / "odd") is None


def test_git_revision_is_remembered_until_what_it_read_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.reconcile import store
    from tests.conftest import run_git

    def run(*args: str) -> str:
        return run_git(tmp_path, *args)

    reads: list[str] = []
    real = store.read_file

    def counted(path: Path, **kw: object) -> bytes:
        reads.append(os.fspath(path))
        return real(path, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "read_file", counted)
    sub = tmp_path / "sub"
    sub.mkdir()
    assert git_revision(sub) is None
    run("init", "-q", "-b", "main")
    (sub / "m.yaml").write_text("1")
    run("add", ".")
    run("commit", "-q", "-m", "1")
    first = run("rev-parse", "HEAD")
    assert git_revision(sub) == first  # a .git made up the tree is seen
    reads.clear()
    assert git_revision(sub) == first
    assert reads == []  # nothing changed: nothing read again
    (sub / "m.yaml").write_text("2")
    run("commit", "-q", "-am", "2")  # the branch's ref is replaced
    second = run("rev-parse", "HEAD")
    assert git_revision(sub) == second
    run("checkout", "-q", "-b", "other", first)  # HEAD names another ref
    assert git_revision(sub) == first
    run("checkout", "-q", "main")
    run("pack-refs", "--all")  # the loose ref goes, packed-refs has it
    assert git_revision(sub) == second
    run_git(sub, "init", "-q")  # a checkout of its own below: no commit yet
    assert git_revision(sub) is None


def test_labels_are_recorded_and_older_records_have_none() -> None:
    import dataclasses

    from orchestrator.reconcile.state import RecordFieldError

    labelled = dataclasses.replace(rec("a"), labels={"team": "net"})
    data = labelled.to_json()
    assert data["labels"] == {"team": "net"}
    assert CollectionRecord.from_json("a", data).labels == {"team": "net"}
    del data["labels"]
    assert CollectionRecord.from_json("a", data).labels is None
    data["labels"] = {"team": 1}
    with pytest.raises(RecordFieldError, match=r"labels\.team"):
        CollectionRecord.from_json("a", data)


def test_a_git_revision_that_could_not_be_read_is_read_again(tmp_path: Path) -> None:
    """A read that fails for a reason of the moment (here: no file descriptor left) gives
    None that time, and is not remembered: the next call reads the revision, although
    nothing in the checkout changed."""
    import subprocess
    import sys

    from tests.conftest import run_git

    run_git(tmp_path, "init", "-q", "-b", "main")
    (tmp_path / "m.yaml").write_text("1")
    run_git(tmp_path, "add", ".")
    run_git(tmp_path, "commit", "-q", "-m", "1")
    head = run_git(tmp_path, "rev-parse", "HEAD")
    script = """
import os, resource, sys
from pathlib import Path
from orchestrator.reconcile.store import git_revision
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
held = []
try:
    while True:
        held.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
starved = git_revision(Path(sys.argv[1]))
for fd in held:
    os.close(fd)
print(starved, git_revision(Path(sys.argv[1])))
"""
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert out == ["None", head]
