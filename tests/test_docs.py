"""The README, docs/ and the code name only files that exist in this repository: every path
under one of its top-level directories, every link between the docs, every ``NAME.md``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import ROOT

TOP = ("orchestrator", "tests", "bpf", "schemas", "packaging", "docs", "manifests", "benchmarks")
PATH = re.compile(r"(?<![\w/.~<-])((?:\.ci|" + "|".join(TOP) + r")/[\w./*{},-]*[\w*}])")
PLACEHOLDER = re.compile(r"^[A-Z]+(\.\w+)?$")  # tests/ebpf/core/NAME, bpf/broken/NAME.c
DOC_NAME = re.compile(r"(?<![\w/.-])([A-Z][A-Z_]+\.md)\b")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _texts() -> Iterator[tuple[Path, str]]:
    files = [
        ROOT / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
        ROOT / "schemas" / "README.md",
        *sorted((ROOT / "packaging").rglob("*")),
        *sorted((ROOT / "orchestrator").rglob("*.py")),
        *sorted((ROOT / "tests").rglob("*.py")),
        *sorted((ROOT / "benchmarks").glob("*.py")),
        ROOT / ".ci" / "setup",
        ROOT / ".ci" / "run",
        ROOT / "pyproject.toml",
    ]
    for f in files:
        if f.is_file() and "__pycache__" not in f.parts:
            yield f, f.read_text(encoding="utf-8", errors="replace")


def _ignored() -> set[str]:
    """What .gitignore names (built or cached at run time: named, not committed)."""
    lines = (ROOT / ".gitignore").read_text().splitlines()
    return {line.strip().rstrip("/") for line in lines if line.strip() and "*" not in line}


def _exists(name: str) -> bool:
    name = name.rstrip(".,")
    if any(PLACEHOLDER.match(part) for part in name.split("/")) or name in _ignored():
        return True
    if "{" in name:  # a brace list like {maps,progs,links}/: the directory before it
        name = name.split("{", 1)[0]
    if "*" in name:
        return any(ROOT.glob(name))
    return (ROOT / name).exists()


def test_every_named_file_exists() -> None:
    missing = []
    for file, text in _texts():
        if file.resolve() == Path(__file__).resolve():
            continue
        for m in PATH.finditer(text):
            if not _exists(m.group(1)):
                missing.append(f"{file.relative_to(ROOT)}: {m.group(1)}")
        for m in DOC_NAME.finditer(text):
            name = m.group(1)
            if not any((d / name).exists() for d in (ROOT, ROOT / "docs", ROOT / "schemas")):
                missing.append(f"{file.relative_to(ROOT)}: {name}")
    assert missing == []


def test_every_link_in_the_docs_resolves() -> None:
    broken = []
    for doc in [
        ROOT / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
        ROOT / "schemas" / "README.md",
    ]:
        for m in LINK.finditer(doc.read_text()):
            target = m.group(1)
            if "://" in target:
                continue
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert broken == []


def test_the_scanner_sees_what_it_must() -> None:
    """The patterns find the kinds of reference that went stale before."""
    text = "see DESIGN.md §5 and orchestrator/nosuch.py, tests/x/y.py:12 (KERNEL_NOTES.md)"
    assert [m.group(1) for m in PATH.finditer(text)] == ["orchestrator/nosuch.py", "tests/x/y.py"]
    assert [m.group(1) for m in DOC_NAME.finditer(text)] == ["DESIGN.md", "KERNEL_NOTES.md"]
    assert not PATH.search("/sys/fs/bpf/bpforch and kernel/bpf/syscall.c")
