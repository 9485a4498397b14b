"""Log output of the watch loop and the daemon.

Human-readable lines on a terminal; one record per line as ``key=value`` (logfmt) or JSON
otherwise, which is what journald and log shippers parse. Structured fields are passed as
``extra={"fields": {...}}`` and appear as their own keys in the structured formats.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import TextIO

_ROOT = "orchestrator"


def _fields(record: logging.LogRecord) -> Mapping[str, object]:
    value = getattr(record, "fields", None)
    return value if isinstance(value, Mapping) else {}


def _timestamp(record: logging.LogRecord) -> str:
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{whole}.{int(record.msecs):03d}Z"


class HumanFormatter(logging.Formatter):
    """``12:00:01 info  message (key=value ...)`` for a person at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        text = f"{stamp} {record.levelname.lower():<7} {record.getMessage()}"
        fields = _fields(record)
        if fields:
            text += " (" + " ".join(f"{k}={v}" for k, v in fields.items()) + ")"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _logfmt_value(value: object) -> str:
    text = str(value)
    if text and not any(c in text for c in ' "=\\\n\t'):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


class LogfmtFormatter(logging.Formatter):
    """``ts=... level=info logger=... msg="..." key=value``: one line per record."""

    def format(self, record: logging.LogRecord) -> str:
        pairs: list[tuple[str, object]] = [
            ("ts", _timestamp(record)),
            ("level", record.levelname.lower()),
            ("logger", record.name),
            ("msg", record.getMessage()),
            *_fields(record).items(),
        ]
        if record.exc_info:
            pairs.append(("exc", self.formatException(record.exc_info)))
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in pairs)


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _fields(record).items():
            obj.setdefault(key, value if isinstance(value, int | float | bool) else str(value))
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, sort_keys=False)


def resolve_format(fmt: str, stream: TextIO) -> str:
    """``auto`` becomes ``human`` on a terminal and ``logfmt`` otherwise."""
    if fmt != "auto":
        return fmt
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return "human" if tty else "logfmt"


def formatter_for(fmt: str) -> logging.Formatter:
    if fmt == "human":
        return HumanFormatter()
    if fmt == "logfmt":
        return LogfmtFormatter()
    if fmt == "json":
        return JsonFormatter()
    raise ValueError(f"unknown log format {fmt!r} (expected auto, human, logfmt or json)")


def setup_logging(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Send the ``orchestrator`` loggers to ``stream`` (stderr) in the chosen format.
    Calling it again (on reload) replaces the previous handler."""
    out = sys.stderr if stream is None else stream
    logger = logging.getLogger(_ROOT)
    for handler in list(logger.handlers):
        if getattr(handler, "_bpforch", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter_for(resolve_format(fmt, out)))
    handler._bpforch = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
