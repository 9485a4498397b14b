"""The error hierarchy of the service layer (watch loop, daemon, configuration)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class ServiceError(Exception):
    """Base class of every error raised by ``orchestrator.service``."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One problem found in a configuration file, with its location (1-based)."""

    file: Path
    line: int
    column: int
    path: str  # JSON path of the offending field, e.g. ``$.debounce_ms``
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else str(self.file)
        return f"{where}: {self.path}: {self.message}"


class ConfigError(ServiceError):
    """The configuration file is missing, unreadable or invalid. ``problems`` lists every
    problem found, each with its file:line:column."""

    def __init__(self, message: str, problems: tuple[ConfigProblem, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems


class NotifyError(ServiceError):
    """``$NOTIFY_SOCKET`` is malformed or names an address family we cannot use."""
