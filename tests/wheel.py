"""bpforch as a user installs it: a wheel built from a source tree and installed with pip
into a fresh virtualenv, its dependencies from the wheelhouse ``.ci/setup`` fills (so no
network). Used by ``test_wheel.py`` and by the benchmarks that time the installed code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

WHEELHOUSE = Path(sys.prefix) / "wheelhouse"


def install_wheel(tree: Path, into: Path, wheelhouse: Path = WHEELHOUSE) -> Path:
    """The fresh virtualenv ``into/venv`` with the wheel of ``tree`` installed. The wheel is
    built from a copy of what a clean checkout holds: in a git checkout the files git knows
    (committed or not, ignored ones left out), elsewhere (an exported tree) every file;
    symlinks stay symlinks. The copy is removed afterwards, so nothing can be read from it.
    Raises RuntimeError with pip's output if a step fails."""
    src, dist, venv = into / "src", into / "dist", into / "venv"
    for name in _source_files(tree):
        s, d = tree / name, src / name
        if not s.is_symlink() and not s.exists():
            continue  # deleted, not yet committed
        d.parent.mkdir(parents=True, exist_ok=True)
        if s.is_symlink():
            d.symlink_to(os.readlink(s))
        else:
            shutil.copy2(s, d)
    pip = [sys.executable, "-m", "pip"]
    offline = ["-q", "--no-index"]
    _run([*pip, "wheel", *offline, "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)])
    (wheel,) = dist.glob("bpforch-*.whl")
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = str(venv / "bin" / "python")
    _run(
        [*pip, "--python", python, "install", *offline, "--find-links", str(wheelhouse), str(wheel)]
    )
    shutil.rmtree(src)
    return venv


def _source_files(tree: Path) -> list[str]:
    if not (tree / ".git").exists():
        return sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if not p.is_dir())
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        cwd=tree,
        check=True,
    ).stdout
    return sorted(set(listed.decode().split("\0")) - {""})


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}:\n{proc.stdout}{proc.stderr}")
