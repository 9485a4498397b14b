"""The ``watch``/``serve`` verbs' argument errors, and the daemon's error paths that are
not about manifests: an unwritable status file, a failing detach on exit, a directory that
cannot be watched, a corrupt status file."""

from __future__ import annotations

import argparse
import io
import logging
import os
import signal
import threading
from pathlib import Path

import pytest

from orchestrator.service.backend import ApplyFailedError
from orchestrator.service.cli import add_commands
from orchestrator.service.config import ServiceConfig
from orchestrator.service.daemon import Daemon
from orchestrator.service.daemon_status import DaemonStatus, read_status, write_status
from orchestrator.service.errors import ServiceError
from orchestrator.service.notify import Notifier
from orchestrator.service.watch import FileWatcher, WatchSet
from tests.service.helpers import NotifySocket
from tests.service.test_daemon import FakeBackend


def _run(argv: list[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="bpforch")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    code = args.func(args, out, err)
    return code, err.getvalue()


def test_watch_argument_errors(tmp_path: Path) -> None:
    code, err = _run(["watch", str(tmp_path), "--debounce-ms", "500", "--max-delay-ms", "100"])
    assert code == 1 and "need 0 <= --debounce-ms <= --max-delay-ms" in err
    code, err = _run(["watch", str(tmp_path / "nope")])
    assert code == 1 and f"no such file or directory: {tmp_path / 'nope'}" in err


def test_serve_config_errors(tmp_path: Path) -> None:
    code, err = _run(["serve", "--config", str(tmp_path / "missing.yaml")])
    assert code == 1 and "cannot read" in err and "missing.yaml" in err
    bad = tmp_path / "c.yaml"
    bad.write_text("manifests: [m]\nlog_level: loud\nfoo: 1\n")
    code, err = _run(["serve", "--config", str(bad)])
    assert code == 1
    assert f"error: {bad}:2:12: $.log_level: " in err and f"error: {bad}:3:1: $.foo: " in err


def test_bad_notify_socket_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "m").mkdir()
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/notify.sock")
    code, err = _run(["watch", str(tmp_path / "m"), "--state-dir", str(tmp_path / "s")])
    assert code == 1 and "NOTIFY_SOCKET: unsupported address" in err
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    monkeypatch.setenv("WATCHDOG_USEC", "soon")
    code, err = _run(["watch", str(tmp_path / "m"), "--state-dir", str(tmp_path / "s")])
    assert code == 1 and "WATCHDOG_USEC: 'soon' is not an integer" in err


class FailingDestroy(FakeBackend):
    def destroy_all(self) -> None:
        raise ApplyFailedError("detach on exit failed: injected")


def test_unwritable_status_and_failing_detach_do_not_stop_the_daemon(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mdir = tmp_path / "m"
    mdir.mkdir()
    (mdir / "a.yaml").write_text("a=1\n")
    not_a_dir = tmp_path / "state"
    not_a_dir.write_text("a file where the state dir should be")
    config = ServiceConfig(manifests=(mdir,), state_dir=not_a_dir, detach_on_exit=True)
    notify = NotifySocket(abstract=True)
    backend = FailingDestroy()
    daemon = Daemon(
        config, lambda c: backend, notifier=Notifier(b"\0" + notify.env_value[1:].encode())
    )

    def script() -> None:
        notify.next()
        notify.next()
        os.kill(os.getpid(), signal.SIGTERM)

    t = threading.Thread(target=script)
    t.start()
    with caplog.at_level(logging.WARNING, logger="orchestrator.service"):
        assert daemon.run() == 0
    t.join(10)
    notify.close()
    assert backend.applied == [{"a": "1"}]
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("cannot write the status file:") for m in messages), messages
    assert "detach on exit failed: injected" in messages


def test_unwatchable_directory_is_logged_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    w = FileWatcher(lambda p: None)
    real = w._observer.schedule

    def schedule(handler: object, path: str, **kw: object) -> object:
        if path == str(bad):
            raise OSError(28, "inotify watch limit reached")
        return real(handler, path, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(w._observer, "schedule", schedule)
    w.start()
    try:
        with caplog.at_level(logging.WARNING, logger="orchestrator.service.watch"):
            w.update(WatchSet.build([good, bad]))
    finally:
        w.stop()
    assert w.directories == ((good, False),)
    assert any(f"cannot watch {bad}" in r.getMessage() for r in caplog.records)


def test_corrupt_status_file(tmp_path: Path) -> None:
    (tmp_path / "service.json").write_text("{not json")
    with pytest.raises(ServiceError, match=r"daemon status .*service.json"):
        read_status(tmp_path)
    (tmp_path / "service.json").write_text("[]")
    with pytest.raises(ServiceError, match="not a JSON object"):
        read_status(tmp_path)


def test_describe() -> None:
    from orchestrator.service.daemon_status import process_start_time

    start = process_start_time(os.getpid()) or 0
    s = DaemonStatus(pid=os.getpid(), pid_start=start, phase="ready", summary="2 applied")
    assert s.describe() == f"daemon: ready (pid {os.getpid()}): 2 applied"
    d = DaemonStatus(pid=os.getpid(), pid_start=start, phase="degraded", reason="x.yaml:1:2: y")
    assert d.describe() == f"daemon: degraded (pid {os.getpid()}): x.yaml:1:2: y"
    gone = DaemonStatus(pid=os.getpid(), pid_start=start + 1, phase="ready")
    assert gone.describe() == f"daemon: not running (pid {os.getpid()} last said ready)"


def test_write_status_leaves_no_temporary_on_failure(tmp_path: Path) -> None:
    (tmp_path / "service.json").mkdir()  # rename onto a directory fails
    with pytest.raises(OSError):
        write_status(tmp_path, DaemonStatus(pid=1, pid_start=1, phase="ready"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["service.json"]


def test_refuses_a_second_daemon_on_the_same_state_dir(tmp_path: Path) -> None:
    import subprocess

    from orchestrator.service.daemon_status import process_start_time

    (tmp_path / "m").mkdir()
    other = subprocess.Popen(["sleep", "30"])
    try:
        start = process_start_time(other.pid)
        assert start is not None
        write_status(tmp_path / "s", DaemonStatus(pid=other.pid, pid_start=start, phase="ready"))
        code, err = _run(["watch", str(tmp_path / "m"), "--state-dir", str(tmp_path / "s")])
        assert code == 1
        assert f"another bpforch daemon (pid {other.pid}) runs with state dir" in err
    finally:
        other.kill()
        other.wait()
