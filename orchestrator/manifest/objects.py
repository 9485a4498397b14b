"""Parsed object files as the manifest layer and the reconciler see them.

They are read through an :class:`~orchestrator.manifest.cache.ObjectStore`
(:func:`~orchestrator.manifest.cache.object_info`), which parses an object once while the
file is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.ebpf import CollectionSpec


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """A parsed object file: its spec (shared: never mutate it) and its sha256."""

    path: Path
    sha256: str
    spec: CollectionSpec


class ObjectError(Exception):
    """An object file could not be read or parsed. The message is the loader's; ``cause``
    is the :class:`OSError` when the file could not be read (missing, not a regular file,
    over the size limit), None when it was read and did not parse."""

    def __init__(self, message: str, cause: OSError | None = None) -> None:
        super().__init__(message)
        self.cause = cause
