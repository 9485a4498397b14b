"""The sd_notify datagram protocol against sockets the test binds (path and abstract)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from orchestrator.service.errors import NotifyError
from orchestrator.service.notify import (
    Notifier,
    WatchdogSettings,
    format_message,
    monotonic_usec,
    parse_address,
)
from tests.service.helpers import NotifySocket


def test_parse_address() -> None:
    assert parse_address("/run/systemd/notify") == "/run/systemd/notify"
    assert parse_address("@abc/def") == b"\0abc/def"
    with pytest.raises(NotifyError, match="empty abstract"):
        parse_address("@")
    with pytest.raises(NotifyError, match="unsupported address"):
        parse_address("vsock:2:1234")
    with pytest.raises(NotifyError, match="unsupported address"):
        parse_address("relative/path")
    with pytest.raises(NotifyError, match="too long"):
        parse_address("/" + "x" * 120)


def test_format_message_keeps_order_and_rejects_newlines() -> None:
    assert format_message({"READY": 1, "STATUS": "ok: a b"}) == b"READY=1\nSTATUS=ok: a b"
    with pytest.raises(NotifyError):
        format_message({"STATUS": "two\nlines"})
    with pytest.raises(NotifyError):
        format_message({"A=B": "x"})


@pytest.mark.parametrize("abstract", [False, True])
def test_sends_datagrams(tmp_path: Path, abstract: bool) -> None:
    sock = NotifySocket(tmp_path, abstract=abstract)
    try:
        with Notifier.from_env({"NOTIFY_SOCKET": sock.env_value}) as n:
            assert n.enabled
            assert n.notify(READY=1, STATUS="ready: 1 collection")
            assert n.notify(WATCHDOG=1)
        assert sock.next() == {"READY": "1", "STATUS": "ready: 1 collection"}
        assert sock.next(skip_watchdog=False) == {"WATCHDOG": "1"}
    finally:
        sock.close()


def test_without_socket_is_a_noop() -> None:
    n = Notifier.from_env({})
    assert not n.enabled
    assert n.notify(READY=1) is False


def test_send_failure_is_logged_once_and_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    n = Notifier(str(tmp_path / "nobody-listens.sock"))
    with caplog.at_level(logging.WARNING, logger="orchestrator.service.notify"):
        assert n.notify(READY=1) is False
        assert n.notify(STATUS="x") is False
    n.close()
    assert len([r for r in caplog.records if "cannot notify" in r.getMessage()]) == 1


def test_monotonic_usec_is_clock_monotonic() -> None:
    a = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    b = monotonic_usec()
    c = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert a <= b <= c


def test_watchdog_settings_from_env() -> None:
    assert WatchdogSettings.from_env({}) is None
    w = WatchdogSettings.from_env({"WATCHDOG_USEC": "30000000"})
    assert w is not None and w.timeout == 30.0 and w.interval == 15.0
    mine = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert WatchdogSettings.from_env(mine) == WatchdogSettings(2.0)
    # inherited from a parent: not for us
    assert WatchdogSettings.from_env({"WATCHDOG_USEC": "1", "WATCHDOG_PID": "1"}) is None
    with pytest.raises(NotifyError, match="not an integer"):
        WatchdogSettings.from_env({"WATCHDOG_USEC": "soon"})
    with pytest.raises(NotifyError, match="not positive"):
        WatchdogSettings.from_env({"WATCHDOG_USEC": "0"})
