"""Fixtures for the day-2 verbs, run as a user runs them: ``python -m orchestrator`` in a
subprocess, against a private bpffs root and state directory per test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT

# verbs that take --bpffs-root/--state-dir (after their own arguments)
_ROOTED = {"plan", "apply", "status", "destroy", "map", "events"}


@dataclass
class Cli:
    root: Path
    state_dir: Path
    manifests: Path

    def argv(self, *args: str) -> list[str]:
        argv = [sys.executable, "-m", "orchestrator", *args]
        if args and args[0] in _ROOTED and not (len(args) > 1 and args[1] in ("-h", "--help")):
            argv += ["--bpffs-root", str(self.root), "--state-dir", str(self.state_dir)]
        return argv

    def __call__(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``bpforch ARGS`` and return what it did (any exit code)."""
        return subprocess.run(
            self.argv(*args), capture_output=True, text=True, timeout=timeout, cwd=ROOT
        )

    def ok(self, *args: str) -> str:
        """Run ``bpforch ARGS``; its stdout, failing the test unless it exits 0."""
        proc = self(*args)
        assert proc.returncode == 0, f"bpforch {' '.join(args)}: {proc.returncode}\n{proc.stderr}"
        return proc.stdout

    def json(self, *args: str) -> object:
        return json.loads(self.ok(*args, "--output", "json"))

    def fails(self, *args: str) -> str:
        """Run ``bpforch ARGS``; its stderr, failing the test unless it exits 1 with nothing
        on stdout."""
        proc = self(*args)
        assert proc.returncode == 1, f"bpforch {' '.join(args)}: {proc.returncode}\n{proc.stdout}"
        assert proc.stdout == ""
        return proc.stderr

    def write(self, name: str, text: str) -> Path:
        path = self.manifests / f"{name}.yaml"
        path.write_text(textwrap.dedent(text))
        return path


@pytest.fixture
def cli(pin_dir: Path, tmp_path: Path) -> Iterator[Cli]:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    c = Cli(pin_dir / "root", tmp_path / "state", manifests)
    yield c
    if c.root.exists():  # never leave links attached to the test's namespaces
        subprocess.run(c.argv("destroy", "--all"), capture_output=True, cwd=ROOT, env=os.environ)
