"""Helpers shared by the service tests: a notify socket the test binds, and waiting."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path


class NotifySocket:
    """A unix datagram socket standing in for systemd's ``$NOTIFY_SOCKET``. ``abstract``
    binds ``@bpforch-test-<random>``; otherwise a path under ``directory``."""

    def __init__(self, directory: Path | None = None, *, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        if abstract or directory is None:
            name = f"bpforch-test-{uuid.uuid4().hex[:12]}"
            self.sock.bind(b"\0" + name.encode())
            self.env_value = "@" + name
        else:
            path = directory / "notify.sock"
            if len(str(path)) >= 100:  # sun_path limit: fall back to a short private dir
                short = Path("/tmp") / f"bpforch-notify-{uuid.uuid4().hex[:8]}"
                short.mkdir(mode=0o700)
                path = short / "notify.sock"
            self.sock.bind(str(path))
            self.env_value = str(path)
        self.messages: list[dict[str, str]] = []

    def receive(self, timeout: float) -> dict[str, str] | None:
        """The next datagram as an ordered dict of its assignments, or None on timeout."""
        self.sock.settimeout(max(timeout, 0.0001))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return None
        fields: dict[str, str] = {}
        for line in data.decode().split("\n"):
            key, _, value = line.partition("=")
            fields[key] = value
        self.messages.append(fields)
        return fields

    def next(self, timeout: float = 10.0, *, skip_watchdog: bool = True) -> dict[str, str]:
        """The next notification (WATCHDOG=1 pings skipped unless asked for)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            msg = self.receive(remaining)
            if msg is None:
                raise AssertionError(f"no notification within {timeout}s; so far: {self.messages}")
            if skip_watchdog and list(msg) == ["WATCHDOG"]:
                continue
            return msg

    def quiet(self, seconds: float, *, skip_watchdog: bool = True) -> list[dict[str, str]]:
        """Everything (but pings) that arrives within ``seconds``."""
        deadline = time.monotonic() + seconds
        got = []
        while (remaining := deadline - time.monotonic()) > 0:
            msg = self.receive(remaining)
            if msg is not None and not (skip_watchdog and list(msg) == ["WATCHDOG"]):
                got.append(msg)
        return got

    def close(self) -> None:
        name = self.sock.getsockname()
        self.sock.close()
        if isinstance(name, str) and name:
            Path(name).unlink(missing_ok=True)
            if Path(name).parent.name.startswith("bpforch-notify-"):
                os.rmdir(Path(name).parent)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.01)


def replace_file(path: Path, text: str) -> None:
    """Write like an editor or git does: a temporary file renamed over the old one."""
    tmp = path.with_name(f".{path.name}.tmp{uuid.uuid4().hex[:6]}")
    tmp.write_text(text)
    os.replace(tmp, path)
