"""YAML documents that remember where every value came from: :class:`Document` holds a
document's value and the line and column of every node in it, so that a problem anywhere
in it names its place. :mod:`orchestrator.manifest.parsing` makes them from YAML text (and
:mod:`orchestrator.manifest.saved` back from the persisted cache, without importing YAML).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.ebpf.errors import clip
from orchestrator.manifest.model import Source

PathKey = tuple[str | int, ...]


def render_path(path: PathKey) -> str:
    """``("spec", "attach", 0, "xdp")`` -> ``spec.attach[0].xdp``; a key longer than
    :data:`~orchestrator.ebpf.errors.QUOTE_MAX` characters is cut."""
    out = ""
    for part in path:
        if isinstance(part, str):
            part = clip(part)
        if isinstance(part, int):
            out += f"[{part}]"
        elif part and "." not in part and "[" not in part and " " not in part:
            out += f".{part}" if out else part
        else:
            out += f'["{part}"]'
    return out


@dataclass(slots=True)
class Document:
    """One YAML document of a file: its value and the position of every node."""

    file: Path
    index: int  # 0-based position of the document within its file
    value: object
    start: tuple[int, int]  # 1-based (line, column) of the document's first node
    values: dict[PathKey, tuple[int, int]] = field(default_factory=dict)
    keys: dict[PathKey, tuple[int, int]] = field(default_factory=dict)

    def at(self, path: PathKey) -> Source:
        """Where the value at ``path`` is (or its nearest ancestor that exists)."""
        for i in range(len(path), -1, -1):
            pos = self.values.get(path[:i])
            if pos is not None:
                return Source(self.file, *pos)
        return Source(self.file, *self.start)

    def key_at(self, path: PathKey) -> Source:
        """Where the key of ``path`` is written (falls back to the value, then ancestors)."""
        pos = self.keys.get(path)
        if pos is not None:
            return Source(self.file, *pos)
        return self.at(path)
