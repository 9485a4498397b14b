"""Under ``CI=true`` a test that skips fails instead (tests/conftest.py), whatever asked for
the skip; outside CI a skip stays a skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


SKIPS = (
    "import pytest\n\n"
    "def test_needs_a_tool():\n    pytest.skip('frobnicate is not installed')\n\n"
    "@pytest.mark.skipif(True, reason='no frob mount')\n"
    "def test_marked():\n    pass\n\n"
    "@pytest.mark.xfail(reason='known')\n"
    "def test_xfail():\n    assert False\n"
)
MODULE_SKIP = (
    "import pytest\n\npytest.skip('no frob module', allow_module_level=True)\n\n"
    "def test_never_collected():\n    pass\n"
)


def _run(tmp_path: Path, ci: str, text: str = SKIPS) -> subprocess.CompletedProcess[str]:
    test = tmp_path / "test_skips.py"
    test.write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"CI": ci}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(ROOT),
         "-c", str(ROOT / "pyproject.toml"), "--confcutdir", str(ROOT),
         "-p", "tests.conftest", str(test)],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_a_skip_fails_under_ci(tmp_path: Path) -> None:
    r = _run(tmp_path, "true")
    assert r.returncode == 1, r.stdout + r.stderr
    # a skip in the call fails the test, a skip marker (setup) errors it: neither passes
    assert "1 failed, 1 xfailed, 1 error" in r.stdout, r.stdout
    assert "skipped under CI=true, where nothing may skip: frobnicate is not installed" in (
        r.stdout
    )
    assert "skipped under CI=true, where nothing may skip: no frob mount" in r.stdout


def test_a_skip_stays_a_skip_outside_ci(tmp_path: Path) -> None:
    r = _run(tmp_path, "")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 skipped, 1 xfailed" in r.stdout, r.stdout


def test_a_module_skipped_as_it_is_collected_fails_under_ci(tmp_path: Path) -> None:
    r = _run(tmp_path, "true", MODULE_SKIP)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "skipped under CI=true, where nothing may skip: no frob module" in r.stdout
    assert _run(tmp_path, "", MODULE_SKIP).returncode == 5  # outside CI: skipped, none ran
