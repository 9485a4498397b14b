"""The systemd notification protocol (``sd_notify``), spoken directly over the socket.

The service manager passes ``$NOTIFY_SOCKET``: an absolute path of a unix datagram socket,
or an abstract socket name written with a leading ``@``. Each notification is one datagram
of newline-separated ``KEY=VALUE`` assignments (``READY=1``, ``STATUS=...``, ...), see
sd_notify(3). Without ``$NOTIFY_SOCKET`` every call is a no-op, so the same daemon code runs
in a terminal, under systemd, and in tests that bind their own socket.

Nothing here needs privileges or a particular kernel beyond AF_UNIX.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass

from orchestrator.service.errors import NotifyError

_log = logging.getLogger(__name__)


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as systemd expects in ``MONOTONIC_USEC``."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def parse_address(value: str) -> str | bytes:
    """The socket address for a ``$NOTIFY_SOCKET`` value: a path (str) or an abstract
    name (bytes starting with NUL)."""
    if value.startswith("@"):
        if len(value) < 2:
            raise NotifyError("NOTIFY_SOCKET: empty abstract socket name (expected @NAME)")
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        if len(value.encode()) >= 108:
            raise NotifyError(
                f"NOTIFY_SOCKET: path {value!r} is too long for a unix socket (max 107 bytes)"
            )
        return value
    raise NotifyError(
        f"NOTIFY_SOCKET: unsupported address {value!r} (expected an absolute path or @NAME)"
    )


def format_message(fields: Mapping[str, str | int]) -> bytes:
    """One datagram: ``KEY=VALUE`` lines in the given order. Values may not contain a
    newline (the protocol has no escaping)."""
    lines = []
    for key, value in fields.items():
        text = str(value)
        if "\n" in text or "\n" in key or "=" in key or not key:
            raise NotifyError(f"notify field {key!r}: a key or value contains a newline or '='")
        lines.append(f"{key}={text}")
    return "\n".join(lines).encode()


class Notifier:
    """Sends notifications to the service manager. Failures to send are logged once and
    never stop the daemon: systemd going away must not take the programs down."""

    def __init__(self, address: str | bytes | None) -> None:
        self._address = address
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        value = env.get("NOTIFY_SOCKET", "")
        return cls(parse_address(value) if value else None)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, **fields: str | int) -> bool:
        """Send one datagram; True if it was sent. Keys are the protocol's (``READY``,
        ``STATUS`` ...)."""
        if self._address is None:
            return False
        data = format_message(fields)
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(data, self._address)
        except OSError as err:
            if not self._warned:
                _log.warning("cannot notify the service manager: %s", err)
                self._warned = True
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class WatchdogSettings:
    """The service watchdog asked for by the manager: ping every ``interval`` seconds,
    half of ``$WATCHDOG_USEC`` as sd_watchdog_enabled(3) recommends."""

    timeout: float  # seconds after which the manager kills us

    @property
    def interval(self) -> float:
        return self.timeout / 2

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WatchdogSettings | None:
        """None when no watchdog was requested, or when ``$WATCHDOG_PID`` names another
        process (the variables were inherited)."""
        env = os.environ if environ is None else environ
        usec = env.get("WATCHDOG_USEC", "")
        if not usec:
            return None
        pid = env.get("WATCHDOG_PID", "")
        if pid and pid != str(os.getpid()):
            return None
        try:
            value = int(usec)
        except ValueError as err:
            raise NotifyError(f"WATCHDOG_USEC: {usec!r} is not an integer") from err
        if value <= 0:
            raise NotifyError(f"WATCHDOG_USEC: {value} is not positive")
        return cls(timeout=value / 1_000_000)
