"""Validation problems and the error that carries them.

A :class:`ManifestProblem` names where (file, line, column and the field path inside the
document), what is wrong, and a hint about what to do. :func:`~orchestrator.manifest.load_manifests`
collects every problem of every file and raises one :class:`ManifestError` with all of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from orchestrator.manifest.model import Source


@dataclass(frozen=True, slots=True)
class ManifestProblem:
    """One thing wrong with a manifest.

    ``field`` is a dotted path into the document (``spec.maps.counters.max_entries``,
    ``spec.attach[0].xdp.interface``); empty when the problem concerns the whole file.
    """

    source: Source
    field: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        text = f"{self.source}: "
        if self.field:
            text += f"{self.field}: "
        text += self.message
        if self.hint:
            text += f" ({self.hint})"
        return text

    def sort_key(self) -> tuple[str, int, int, str, str]:
        return (
            str(self.source.file),
            self.source.line,
            self.source.column,
            self.field,
            self.message,
        )

    def to_dict(self) -> dict[str, str | int]:
        """A JSON-ready form (for ``bpforch validate --output json``)."""
        return {
            "file": str(self.source.file),
            "line": self.source.line,
            "column": self.source.column,
            "field": self.field,
            "message": self.message,
            "hint": self.hint,
        }


class ManifestError(Exception):
    """The manifests are invalid. ``problems`` lists everything found, sorted by place;
    ``str()`` renders one problem per line."""

    def __init__(self, problems: Iterable[ManifestProblem]) -> None:
        self.problems: tuple[ManifestProblem, ...] = tuple(
            sorted(problems, key=ManifestProblem.sort_key)
        )
        super().__init__("\n".join(str(p) for p in self.problems))

    def __reduce__(self) -> tuple[type[ManifestError], tuple[tuple[ManifestProblem, ...]]]:
        # the default would call ManifestError(message), losing the problems
        return (type(self), (self.problems,))
