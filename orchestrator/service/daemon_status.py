"""The daemon's status, published as a file: ``<state_dir>/service.json`` (the status of
the collections it applied is :mod:`orchestrator.reconcile.collection_status`).

Why a file and not a control socket: the file is written atomically (temporary file,
fsync, rename) on every change of phase, so a reader never sees half of it; it needs no
listener thread, no protocol and no permission model beyond the directory's (the state
directory is the service's ``RuntimeDirectory``, writable only by it); and it stays
readable when the daemon hangs or died, with ``pid`` and ``pid_start`` (the process start
time from ``/proc/PID/stat``) to tell a live daemon from a stale file even if the pid was
reused. :func:`read_status` is what ``bpforch status`` calls.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from orchestrator.ebpf.files import read_file, reason
from orchestrator.service.errors import ServiceError

STATUS_FILE = "service.json"
STATUS_MAX = 4 << 20  # bytes: the problems listed are capped (see the daemon)

PHASES = ("starting", "ready", "degraded", "reloading", "stopping", "stopped")


def process_start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/PID/stat`` (clock ticks since boot), or None if no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses: split after the last ')'
    rest = text[text.rindex(")") + 2 :].split()
    return int(rest[19])


@dataclass(frozen=True, slots=True)
class DaemonStatus:
    """A snapshot of the daemon. ``reason`` says why it is degraded (first problem, with
    its file:line:col). Counters: ``reconciles`` attempts (each debounced burst, reload or
    start is one), ``applies`` calls into the kernel (only for a valid desired state),
    ``invalid`` attempts stopped by validation, ``deferred`` attempts dropped because the
    files changed while they were being read (read again once they settle), ``applied``
    applies that succeeded, ``failed`` attempts that failed (rolled back, or an internal
    error), ``rejected`` failed applies in which the verifier rejected a program."""

    pid: int
    pid_start: int
    phase: str
    reason: str = ""
    config: str = ""
    manifests: tuple[str, ...] = ()
    collections: tuple[str, ...] = ()  # of the last good (applied) desired state
    watched: tuple[str, ...] = ()
    started_at: float = 0.0
    updated_at: float = 0.0
    last_applied_at: float = 0.0
    reconciles: int = 0
    applies: int = 0
    invalid: int = 0
    deferred: int = 0
    applied: int = 0
    failed: int = 0
    rejected: int = 0
    summary: str = ""
    problems: tuple[str, ...] = field(default=())

    @property
    def degraded(self) -> bool:
        return self.phase == "degraded"

    def describe(self) -> str:
        """One line for ``bpforch status``: ``daemon: ready (pid 123): 2 collections ...``,
        or ``daemon: not running (last seen ...)`` when the process is gone."""
        if not self.alive:
            return f"daemon: not running (pid {self.pid} last said {self.phase})"
        text = f"daemon: {self.phase} (pid {self.pid})"
        if self.phase == "degraded" and self.reason:
            return f"{text}: {self.reason}"
        if self.summary:
            return f"{text}: {self.summary}"
        return text

    @property
    def alive(self) -> bool:
        """Whether the process that wrote this is still running (pid not reused)."""
        return process_start_time(self.pid) == self.pid_start

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        out["alive"] = self.alive
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> DaemonStatus:
        def strings(key: str) -> tuple[str, ...]:
            value = data.get(key, ())
            return tuple(str(v) for v in value) if isinstance(value, list | tuple) else ()

        def number(key: str) -> float:
            value = data.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int | float):
                return 0.0
            number = float(min(max(value, -(2**63)), 2**63))  # an int too big for a float
            return number if math.isfinite(number) else 0.0

        return cls(
            pid=int(number("pid")),
            pid_start=int(number("pid_start")),
            phase=str(data.get("phase", "")),
            reason=str(data.get("reason", "")),
            config=str(data.get("config", "")),
            manifests=strings("manifests"),
            collections=strings("collections"),
            watched=strings("watched"),
            started_at=number("started_at"),
            updated_at=number("updated_at"),
            last_applied_at=number("last_applied_at"),
            reconciles=int(number("reconciles")),
            applies=int(number("applies")),
            invalid=int(number("invalid")),
            deferred=int(number("deferred")),
            applied=int(number("applied")),
            failed=int(number("failed")),
            rejected=int(number("rejected")),
            summary=str(data.get("summary", "")),
            problems=strings("problems"),
        )


def write_status(state_dir: Path, status: DaemonStatus) -> None:
    """Replace ``<state_dir>/service.json`` atomically."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    fd, tmp = tempfile.mkstemp(prefix=".service.", suffix=".tmp", dir=state_dir)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(status), f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, state_dir / STATUS_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_status(state_dir: Path) -> DaemonStatus | None:
    """The daemon's last published status, or None if no daemon ever ran with this state
    directory. Check :attr:`DaemonStatus.alive` before trusting ``phase``."""
    path = state_dir / STATUS_FILE
    try:
        raw = read_file(path, limit=STATUS_MAX, what="a status file", follow=False)
        data = json.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as err:
        why = (
            reason(err)
            if isinstance(err, OSError)
            else "nested too deeply"
            if isinstance(err, RecursionError)
            else str(err)
        )
        raise ServiceError(f"daemon status {path}: {why} (is it a bpforch state dir?)") from err
    if not isinstance(data, dict):
        raise ServiceError(f"daemon status {path}: not a JSON object (is it a bpforch state dir?)")
    return DaemonStatus.from_json(data)
