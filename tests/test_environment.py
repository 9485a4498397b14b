"""Product code reads the environment only for what users set: no test seam is read from it
(fault injection is an object the tests inject, see tests/failpoints.py). And the tests'
own git commands never reach the repository of whoever runs them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

# module -> the variables it reads, each a user-facing setting
ALLOWED = {
    "orchestrator/commands/render.py": {"NO_COLOR"},  # no-color.org
    # defaults of --bpffs-root, --state-dir, --config and --cache-dir (shown in --help)
    "orchestrator/service/cli.py": {
        "BPFORCH_BPFFS_ROOT",
        "BPFORCH_STATE_DIR",
        "BPFORCH_CONFIG",
        "BPFORCH_CACHE_DIR",
    },
    # the service manager's protocol: sd_notify(3), sd_watchdog_enabled(3)
    "orchestrator/service/notify.py": {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"},
}


def _reads(tree: ast.AST) -> tuple[bool, set[str]]:
    """Whether the module touches os.environ/os.getenv, and every string constant it
    passes to a ``.get(...)``/``getenv(...)`` or subscript (the variable names it reads)."""
    touches = False
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb"):
            touches = True
        if isinstance(node, ast.Call) and node.args:
            first = node.args[0]
            func = node.func
            if (
                isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and isinstance(func, ast.Attribute)
                and func.attr in ("get", "getenv")
                and first.value.isupper()
            ):
                names.add(first.value)
    return touches, names


def test_product_code_reads_only_user_settings_from_the_environment() -> None:
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "orchestrator").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        assert "BPFORCH_TEST" not in text, rel
        touches, names = _reads(ast.parse(text))
        if touches:
            found[rel] = names
    assert set(found) == set(ALLOWED), found
    for rel, names in found.items():
        assert names <= ALLOWED[rel], (rel, names - ALLOWED[rel])


def test_git_in_tests_never_touches_the_callers_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under ``git rebase -x`` or a hook, GIT_DIR, GIT_WORK_TREE and GIT_INDEX_FILE name the
    outer repository: a test's ``git init``/``commit`` in its own directory must not reach
    it (nor rewrite its configuration)."""
    from tests.conftest import git_commit, run_git

    outer, inner = tmp_path / "outer", tmp_path / "inner"
    outer.mkdir()
    inner.mkdir()
    head = git_commit(outer, {"o.txt": "o"}, "outer")
    config = (outer / ".git" / "config").read_bytes()
    index = (outer / ".git" / "index").read_bytes()
    monkeypatch.setenv("GIT_DIR", str(outer / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(outer))
    monkeypatch.setenv("GIT_INDEX_FILE", str(outer / ".git" / "index"))
    monkeypatch.setenv("GIT_OBJECT_DIRECTORY", str(outer / ".git" / "objects"))

    run_git(inner, "init", "-q")
    (inner / "i.txt").write_text("i")
    run_git(inner, "add", ".")
    run_git(inner, "commit", "-q", "-m", "inner")
    assert run_git(inner, "log", "--format=%s") == "inner"
    assert run_git(inner, "ls-files") == "i.txt"
    monkeypatch.delenv("GIT_DIR")
    assert run_git(outer, "rev-parse", "HEAD") == head
    assert run_git(outer, "log", "--format=%s") == "outer"
    assert (outer / ".git" / "config").read_bytes() == config
    assert (outer / ".git" / "index").read_bytes() == index
