"""The daemon's loop, debouncing and notification sequence, with a fake backend (no
kernel): the daemon runs in the test's main thread (it owns the signals) while a helper
thread edits files and sends signals, and a datagram socket plays systemd."""

from __future__ import annotations

import itertools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from orchestrator.manifest.model import DesiredCollection, DesiredState, Source
from orchestrator.service import daemon as daemon_module
from orchestrator.service.backend import ApplyFailedError, ApplySummary, InvalidStateError
from orchestrator.service.config import ServiceConfig
from orchestrator.service.daemon import Daemon
from orchestrator.service.daemon_status import DaemonStatus, read_status, write_status
from orchestrator.service.errors import ConfigError, ConfigProblem
from orchestrator.service.metrics import DaemonMetrics, new_registry
from orchestrator.service.notify import Notifier, WatchdogSettings
from tests.service.helpers import NotifySocket, replace_file, wait_until


@dataclass
class FakeBackend:
    """Reads ``name=value`` lines from every manifest file; a line ``bad`` is invalid, a
    line ``fail`` makes apply fail, ``boom`` raises a bug-like error."""

    applied: list[dict[str, str]] = field(default_factory=list)
    loads: int = 0
    destroyed: int = 0

    def load(self, paths: Sequence[Path]) -> DesiredState:
        self.loads += 1
        values: dict[str, str] = {}
        files = []
        for p in paths:
            if not p.exists():
                raise InvalidStateError(f"invalid manifest: {p}: no such file or directory")
            if p.name == "crash.yaml":
                raise KeyError("bug")
            found = (
                [f for f in p.rglob("*.yaml") if not any(x.startswith(".") for x in f.parts)]
                if p.is_dir()
                else [p]
            )
            for f in sorted(found):
                files.append(f)
                for n, line in enumerate(f.read_text().splitlines(), 1):
                    if line.strip() == "bad":
                        raise InvalidStateError(
                            f"invalid manifest: {f}:{n}:1: bad line", [f"{f}:{n}:1: bad line"]
                        )
                    key, _, value = line.partition("=")
                    values[key] = value
        colls = {
            k: DesiredCollection(
                name=k, object_file=Path("/nonexistent") / f"{k}.o", source=Source(files[0])
            )
            for k in values
        }
        self._values = values
        return DesiredState(collections=colls, files=tuple(files))

    def apply(self, desired: DesiredState, prune: bool) -> ApplySummary:
        if "fail" in self._values:
            raise ApplyFailedError("apply failed: collection fail: injected")
        if "boom" in self._values:
            raise RuntimeError("boom")
        changed = 0 if self.applied and self.applied[-1] == self._values else 1
        self.applied.append(dict(self._values))
        return ApplySummary(collections=len(desired.collections), changed=changed)

    def destroy_all(self) -> None:
        self.destroyed += 1


@dataclass
class Harness:
    tmp: Path
    notify: NotifySocket
    backend: FakeBackend
    manifest: Path
    config: ServiceConfig
    made_for: list[ServiceConfig] = field(default_factory=list)

    @property
    def notify_address(self) -> str | bytes:
        value = self.notify.env_value
        return value.replace("@", "\0", 1).encode() if value.startswith("@") else value

    def factory(self, config: ServiceConfig) -> FakeBackend:
        self.made_for.append(config)
        return self.backend

    def run(
        self,
        script: Callable[[Harness], None],
        *,
        watchdog: WatchdogSettings | None = None,
        reload_config: Callable[[], ServiceConfig] | None = None,
        config: ServiceConfig | None = None,
        retry: tuple[float, float] = (1.0, 60.0),
        on_config: Callable[[ServiceConfig], None] | None = None,
        notifier: Notifier | None = None,
        metrics: DaemonMetrics | None = None,
    ) -> Daemon:
        """Run the daemon in this (main) thread while ``script`` runs in another; the
        script must end by stopping the daemon (SIGTERM)."""
        daemon = Daemon(
            config or self.config,
            self.factory,
            notifier=notifier if notifier is not None else Notifier(self.notify_address),
            watchdog=watchdog,
            reload_config=reload_config,
            retry=retry,
            on_config=on_config,
            metrics=metrics,
        )
        errors: list[BaseException] = []

        def body() -> None:
            try:
                script(self)
            except BaseException as err:
                errors.append(err)
                daemon.request_stop()

        t = threading.Thread(target=body)
        t.start()
        try:
            assert daemon.run() == 0
        finally:
            t.join(10)
        if errors:
            raise errors[0]
        return daemon


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    notify = NotifySocket(abstract=True)
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    manifest = mdir / "a.yaml"
    manifest.write_text("a=1\n")
    config = ServiceConfig(
        manifests=(mdir,), state_dir=tmp_path / "state", debounce_ms=50, max_delay_ms=400
    )
    try:
        yield Harness(tmp_path, notify, FakeBackend(), manifest, config)
    finally:
        notify.close()


def stop() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def test_start_change_invalid_recover_reload_stop_sequence(harness: Harness) -> None:
    seen: list[dict[str, str]] = []

    def script(h: Harness) -> None:
        n = h.notify
        seen.append(n.next())  # starting
        seen.append(n.next())  # READY=1
        assert h.backend.applied == [{"a": "1"}]
        replace_file(h.manifest, "a=2\n")
        seen.append(n.next())
        assert h.backend.applied[-1] == {"a": "2"}
        applies = len(h.backend.applied)
        replace_file(h.manifest, "a=3\nbad\n")
        seen.append(n.next())
        assert len(h.backend.applied) == applies  # the invalid change was never applied
        status = read_status(h.config.state_dir)
        assert status is not None and status.phase == "degraded"
        assert f"{h.manifest}:2:1" in status.reason
        replace_file(h.manifest, "a=4\n")
        seen.append(n.next())
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        os.kill(os.getpid(), signal.SIGHUP)
        seen.append(n.next())
        seen.append(n.next())
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert before <= int(seen[-2]["MONOTONIC_USEC"]) <= after
        stop()
        seen.append(n.next())
        assert n.quiet(0.2) == []

    harness.run(script)
    assert seen == [
        {"STATUS": "starting: 1 manifest path(s)"},
        {"READY": "1", "STATUS": "ready: 1 collection applied, 1 changed"},
        {"STATUS": "ready: 1 collection applied, 1 changed"},
        {
            "STATUS": f"degraded: invalid manifest: {harness.manifest}:2:1: bad line",
        },
        {"STATUS": "ready: 1 collection applied, 1 changed"},
        {
            "RELOADING": "1",
            "MONOTONIC_USEC": seen[5]["MONOTONIC_USEC"],
            "STATUS": "reloading configuration",
        },
        {"READY": "1", "STATUS": "ready: 1 collection applied, 0 changed"},
        {"STOPPING": "1", "STATUS": "stopping: programs stay attached"},
    ]
    assert harness.backend.destroyed == 0
    status = read_status(harness.config.state_dir)
    assert status is not None and status.phase == "stopped"
    assert status.applies == 4 and status.invalid == 1 and status.reconciles == 5


def test_invalid_at_start_is_not_ready_until_fixed(harness: Harness) -> None:
    harness.manifest.write_text("bad\n")

    def script(h: Harness) -> None:
        assert h.notify.next() == {"STATUS": "starting: 1 manifest path(s)"}
        msg = h.notify.next()
        assert msg["STATUS"].startswith("degraded: invalid manifest:") and "READY" not in msg
        replace_file(h.manifest, "a=1\n")
        assert h.notify.next() == {
            "READY": "1",
            "STATUS": "ready: 1 collection applied, 1 changed",
        }
        stop()
        assert "STOPPING" in h.notify.next()

    harness.run(script)


def test_apply_failure_and_internal_error_degrade_without_dying(harness: Harness) -> None:
    def script(h: Harness) -> None:
        h.notify.next()
        h.notify.next()
        replace_file(h.manifest, "a=1\nfail\n")
        assert h.notify.next() == {"STATUS": "degraded: apply failed: collection fail: injected"}
        replace_file(h.manifest, "a=1\nboom\n")
        assert h.notify.next() == {"STATUS": "degraded: internal error: RuntimeError('boom')"}
        replace_file(h.manifest, "a=5\n")
        assert h.notify.next()["STATUS"].startswith("ready: ")
        stop()
        h.notify.next()

    harness.run(script)
    assert harness.backend.applied[-1] == {"a": "5"}


def test_storm_is_debounced_into_few_reconciles(harness: Harness) -> None:
    def script(h: Harness) -> None:
        h.notify.next()
        h.notify.next()
        start = time.monotonic()
        for i in range(500):
            replace_file(h.manifest, f"a={i}\n")
            time.sleep(max(0.0, start + (i + 1) * 0.004 - time.monotonic()))
        wait_until(lambda: h.backend.applied[-1] == {"a": "499"}, 5, "the final state")
        time.sleep(0.3)  # nothing more may follow
        stop()

    daemon = harness.run(script)
    # 2 s of writes, a 400 ms max delay: at most ~2/0.4 forced reconciles + the final one
    assert daemon.status.reconciles - 1 <= 7, daemon.status
    assert harness.backend.applied[-1] == {"a": "499"}


def test_editor_noise_does_not_reconcile(harness: Harness) -> None:
    def script(h: Harness) -> None:
        h.notify.next()
        h.notify.next()
        d = h.manifest.parent
        (d / ".a.yaml.swp").write_text("x")
        (d / "4913").write_text("")
        (d / "a.yaml~").write_text("x")
        (d / "notes.txt").write_text("x")
        h.manifest.read_text()  # opening/reading is not a change
        assert h.notify.quiet(0.4) == []
        stop()
        h.notify.next()

    daemon = harness.run(script)
    assert daemon.status.reconciles == 1


def test_watchdog_pings_at_half_the_timeout(harness: Harness) -> None:
    times: list[float] = []

    def script(h: Harness) -> None:
        h.notify.next()
        h.notify.next()
        t0 = time.monotonic()
        while len(times) < 4:
            msg = h.notify.next(5, skip_watchdog=False)
            assert msg == {"WATCHDOG": "1"}
            times.append(time.monotonic() - t0)
        stop()

    harness.run(script, watchdog=WatchdogSettings(timeout=0.4))
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(0.12 <= g <= 0.32 for g in gaps), gaps


def test_reload_rereads_config_and_keeps_old_one_when_invalid(harness: Harness) -> None:
    other = harness.tmp / "other"
    other.mkdir()
    (other / "b.yaml").write_text("b=1\n")
    configs: list[ServiceConfig | ConfigError] = [
        ConfigError(
            "invalid configuration: c.yaml:1:1: $.foo: unknown field",
            (ConfigProblem(Path("c.yaml"), 1, 1, "$.foo", "unknown field"),),
        ),
        ServiceConfig(manifests=(other,), state_dir=harness.config.state_dir, debounce_ms=20),
    ]

    def reload() -> ServiceConfig:
        item = configs.pop(0)
        if isinstance(item, ConfigError):
            raise item
        return item

    def script(h: Harness) -> None:
        h.notify.next()
        h.notify.next()
        os.kill(os.getpid(), signal.SIGHUP)
        assert h.notify.next()["RELOADING"] == "1"
        msg = h.notify.next()
        assert msg["READY"] == "1"
        assert msg["STATUS"].startswith("degraded: invalid configuration: c.yaml:1:1")
        os.kill(os.getpid(), signal.SIGHUP)
        assert h.notify.next()["RELOADING"] == "1"
        assert h.notify.next() == {
            "READY": "1",
            "STATUS": "ready: 1 collection applied, 1 changed",
        }
        assert h.backend.applied[-1] == {"b": "1"}
        replace_file(other / "b.yaml", "b=2\n")  # the new directory is watched now
        assert h.notify.next()["STATUS"].startswith("ready:")
        replace_file(h.manifest, "a=9\n")  # the old one is not
        assert h.notify.quiet(0.3) == []
        stop()
        h.notify.next()

    harness.run(script, reload_config=reload)
    assert harness.backend.applied[-1] == {"b": "2"}


def test_detach_on_exit_destroys(harness: Harness) -> None:
    def script(h: Harness) -> None:
        h.notify.next()
        h.notify.next()
        stop()
        assert h.notify.next() == {
            "STOPPING": "1",
            "STATUS": "stopping: detaching every collection",
        }

    cfg = harness.config.with_overrides(detach_on_exit=True)
    harness.run(script, config=cfg)
    assert harness.backend.destroyed == 1


def test_signals_are_restored_after_run(harness: Harness) -> None:
    before = signal.getsignal(signal.SIGTERM)

    def script(h: Harness) -> None:
        h.notify.next()
        h.notify.next()
        stop()

    harness.run(script)
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_file_being_written_is_not_read_until_closed(harness: Harness) -> None:
    """A writer pauses in the middle of an in-place save for longer than the debounce
    window: nothing is read (or applied) until it closes the file."""

    def script(h: Harness) -> None:
        h.notify.next()
        h.notify.next()
        loads = h.backend.loads
        with h.manifest.open("w") as f:  # truncates: IN_MODIFY, then no close for 0.4 s
            f.write("a=2\nb=")
            f.flush()
            time.sleep(0.4)
            assert h.backend.loads == loads  # half a file was never even read
            f.write("3\n")
        assert h.notify.next() == {"STATUS": "ready: 2 collections applied, 1 changed"}
        stop()
        h.notify.next()

    harness.run(script)
    assert harness.backend.applied == [{"a": "1"}, {"a": "2", "b": "3"}]


def test_changes_during_the_read_are_not_applied(harness: Harness) -> None:
    """The files change while the backend reads them (a torn read): that result is
    dropped, and the files are read again once they settle."""
    original = harness.backend.load
    calls = 0

    def load(paths: Sequence[Path]) -> DesiredState:
        nonlocal calls
        calls += 1
        desired = original(paths)
        if calls == 2:  # the first reload of a change: a writer strikes mid-read
            replace_file(harness.manifest, "a=3\n")
            time.sleep(0.1)  # the inotify event is in before the read "ends"
        return desired

    harness.backend.load = load  # type: ignore[method-assign]

    def script(h: Harness) -> None:
        h.notify.next()
        h.notify.next()
        replace_file(h.manifest, "a=2\n")
        assert h.notify.next() == {"STATUS": "ready: 1 collection applied, 1 changed"}
        stop()
        h.notify.next()

    daemon = harness.run(script)
    assert harness.backend.applied == [{"a": "1"}, {"a": "3"}]  # a=2 (torn) never applied
    assert daemon.status.deferred == 1


def test_git_checkout_of_many_files_is_one_reconcile(harness: Harness) -> None:
    from tests.conftest import run_git

    repo = harness.manifest.parent

    def run(*args: str) -> None:
        run_git(repo, *args)

    for i in range(50):
        (repo / f"c{i:02}.yaml").write_text(f"c{i:02}=1\n")
    run("init", "-q", "-b", "one")
    run("add", ".")
    run("commit", "-q", "-m", "one")
    run("checkout", "-q", "-b", "two")
    for i in range(50):
        (repo / f"c{i:02}.yaml").write_text(f"c{i:02}=2\n")
    run("commit", "-q", "-am", "two")
    run("checkout", "-q", "one")

    def script(h: Harness) -> None:
        h.notify.next()
        assert h.notify.next()["STATUS"] == "ready: 51 collections applied, 1 changed"
        run("checkout", "-q", "two")  # rewrites 50 files (and git's index, lock files)
        assert h.notify.next() == {"STATUS": "ready: 51 collections applied, 1 changed"}
        assert h.notify.quiet(0.3) == []
        stop()
        h.notify.next()

    daemon = harness.run(script)
    assert harness.backend.applied[-1] == {"a": "1", **{f"c{i:02}": "2" for i in range(50)}}
    assert daemon.status.reconciles == 2
    assert daemon.status.watched == (str(repo),)  # not .git and its many directories


def test_a_missing_manifest_dir_is_watched_for(harness: Harness) -> None:
    """The configured directory does not exist yet (a volume not mounted, a checkout not
    cloned): degraded, and its creation is noticed through the parent directory."""
    later = harness.tmp / "later"

    def script(h: Harness) -> None:
        h.notify.next()
        msg = h.notify.next()
        assert msg == {"STATUS": f"degraded: invalid manifest: {later}: no such file or directory"}
        later.mkdir()
        assert h.notify.next() == {  # an empty directory: valid, nothing declared
            "READY": "1",
            "STATUS": "ready: 0 collections applied, 1 changed",
        }
        replace_file(later / "x.yaml", "x=1\n")
        assert h.notify.next() == {"STATUS": "ready: 1 collection applied, 1 changed"}
        stop()
        h.notify.next()

    harness.run(script, config=harness.config.with_overrides(manifests=(later,)))
    assert harness.backend.applied[-1] == {"x": "1"}


def test_a_bug_in_validation_degrades_without_dying(harness: Harness) -> None:
    crash = harness.manifest.parent / "crash.yaml"

    def script(h: Harness) -> None:
        h.notify.next()
        assert h.notify.next() == {"STATUS": "degraded: internal error: KeyError('bug')"}
        stop()
        assert "STOPPING" in h.notify.next()

    crash.write_text("")
    harness.run(script, config=harness.config.with_overrides(manifests=(crash,)))
    assert harness.backend.applied == []


def test_a_file_written_right_into_a_new_directory_is_applied(harness: Harness) -> None:
    """mkdir + write at once: the file may land before the new directory has its watch;
    the reconcile that adds the watch schedules one more read, which finds it."""

    def script(h: Harness) -> None:
        h.notify.next()
        h.notify.next()
        sub = h.manifest.parent / "sub" / "deeper"
        sub.mkdir(parents=True)
        (sub / "b.yaml").write_text("b=1\n")
        wait_until(lambda: bool(h.backend.applied) and "b" in h.backend.applied[-1], 5)
        time.sleep(0.3)
        (sub / "b.yaml").write_text("b=2\n")  # and it is watched from now on
        wait_until(lambda: h.backend.applied[-1].get("b") == "2", 5)
        stop()

    harness.run(script)


def test_failed_apply_is_retried_with_backoff(harness: Harness) -> None:
    """The same manifests may apply later (an interface appears, a lock is released):
    a failed apply is retried with a doubling delay, without any file change; the repeated
    identical failure is not notified again."""
    attempts: list[float] = []
    original = harness.backend.apply

    def apply(desired: DesiredState, prune: bool) -> ApplySummary:
        attempts.append(time.monotonic())
        if len(attempts) <= 3:
            raise ApplyFailedError("apply failed: interface veth0 does not exist")
        return original(desired, prune)

    harness.backend.apply = apply  # type: ignore[method-assign]

    def script(h: Harness) -> None:
        h.notify.next()
        assert h.notify.next() == {
            "STATUS": "degraded: apply failed: interface veth0 does not exist"
        }
        assert h.notify.next() == {
            "READY": "1",
            "STATUS": "ready: 1 collection applied, 1 changed",
        }
        assert h.notify.quiet(0.5) == []  # no more retries once it worked
        stop()
        h.notify.next()

    harness.run(script, retry=(0.1, 0.25))
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert len(attempts) == 4
    assert 0.1 <= gaps[0] < 0.2 and 0.2 <= gaps[1] < 0.3 and 0.25 <= gaps[2] < 0.35, gaps


def test_invalid_manifests_are_not_retried(harness: Harness) -> None:
    harness.manifest.write_text("bad\n")

    def script(h: Harness) -> None:
        h.notify.next()
        assert h.notify.next()["STATUS"].startswith("degraded: invalid manifest")
        loads = h.backend.loads
        time.sleep(0.5)
        assert h.backend.loads == loads
        stop()
        h.notify.next()

    harness.run(script, retry=(0.1, 0.2))


def test_sigint_stops_like_sigterm(harness: Harness) -> None:
    def script(h: Harness) -> None:
        h.notify.next()
        h.notify.next()
        os.kill(os.getpid(), signal.SIGINT)
        assert h.notify.next() == {"STOPPING": "1", "STATUS": "stopping: programs stay attached"}

    harness.run(script)


def test_reload_takes_the_new_config_into_use(harness: Harness) -> None:
    """A reload with another bpffs root / state dir makes a new backend for them, and the
    new configuration is handed to ``on_config`` (which sets up logging)."""
    new = harness.config.with_overrides(
        bpffs_root=Path("/sys/fs/bpf/elsewhere"),
        state_dir=harness.tmp / "state2",
        log_format="json",
    )
    seen: list[ServiceConfig] = []

    def script(h: Harness) -> None:
        h.notify.next()
        h.notify.next()
        os.kill(os.getpid(), signal.SIGHUP)
        h.notify.next()
        assert h.notify.next()["READY"] == "1"
        stop()
        h.notify.next()

    daemon = harness.run(script, reload_config=lambda: new, on_config=seen.append)
    assert seen == [new]
    assert harness.made_for == [harness.config, new]
    assert daemon.config == new
    status = read_status(new.state_dir)
    assert status is not None and status.phase == "stopped"


def test_reload_with_the_same_roots_keeps_the_backend(harness: Harness) -> None:
    def script(h: Harness) -> None:
        h.notify.next()
        h.notify.next()
        os.kill(os.getpid(), signal.SIGHUP)
        h.notify.next()
        h.notify.next()
        stop()
        h.notify.next()

    harness.run(script, reload_config=lambda: harness.config.with_overrides(debounce_ms=10))
    assert harness.made_for == [harness.config]


def test_a_reconcile_is_in_the_metrics_before_it_is_announced(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever sees a reconcile's outcome (the status file, readiness, sd_notify) and then
    scrapes sees its duration counted: the count is read at the very moment each outcome
    is published, in the daemon's thread, so this holds on any machine speed."""
    registry = new_registry()
    metrics = DaemonMetrics(registry)

    def counted() -> float:
        value = registry.get_sample_value("bpforch_reconcile_duration_seconds_count")
        assert value is not None
        return value

    written: list[tuple[str, int, float]] = []

    def recording_write(state_dir: Path, status: DaemonStatus) -> None:
        written.append((status.phase, status.reconciles, counted()))
        write_status(state_dir, status)

    monkeypatch.setattr(daemon_module, "write_status", recording_write)
    notified: list[tuple[str, float]] = []

    class RecordingNotifier(Notifier):
        def notify(self, **fields: str | int) -> bool:
            if "STATUS" in fields:
                notified.append((str(fields["STATUS"]).split(":")[0], counted()))
            return super().notify(**fields)

    def script(h: Harness) -> None:
        h.notify.next()
        h.notify.next()
        replace_file(h.manifest, "a=2\n")
        assert h.notify.next()["STATUS"].startswith("ready")
        replace_file(h.manifest, "a=3\nbad\n")
        assert h.notify.next()["STATUS"].startswith("degraded: invalid")
        replace_file(h.manifest, "a=3\nfail\n")
        assert h.notify.next()["STATUS"].startswith("degraded: apply failed")
        replace_file(h.manifest, "a=4\n")
        assert h.notify.next()["STATUS"].startswith("ready")
        os.kill(os.getpid(), signal.SIGHUP)
        h.notify.next()
        assert h.notify.next()["READY"] == "1"
        stop()
        h.notify.next()

    harness.run(script, notifier=RecordingNotifier(harness.notify_address), metrics=metrics)
    # every status file written shows exactly the reconciles the metrics have counted
    assert [(phase, n) for phase, n, _ in written] == [
        ("starting", 0),
        ("ready", 1),
        ("ready", 2),
        ("degraded", 3),
        ("degraded", 4),
        ("ready", 5),
        ("reloading", 5),
        ("ready", 6),
        ("stopping", 6),
        ("stopped", 6),
    ]
    assert all(count == n for _, n, count in written), written
    assert notified == [
        ("starting", 0),
        ("ready", 1),
        ("ready", 2),
        ("degraded", 3),
        ("degraded", 4),
        ("ready", 5),
        ("reloading configuration", 5),
        ("ready", 6),
        ("stopping", 6),
    ]


def test_an_applied_change_logs_its_latency_and_where_it_went(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    def script(h: Harness) -> None:
        h.notify.next()
        h.notify.next()
        replace_file(h.manifest, "a=2\n")
        assert h.notify.next()["STATUS"].startswith("ready")
        stop()
        h.notify.next()

    with caplog.at_level(logging.DEBUG, logger="orchestrator.service.daemon"):
        harness.run(script)

    def fields(record: logging.LogRecord) -> dict[str, str]:
        found: dict[str, str] = getattr(record, "fields", {})
        return found

    applied = [fields(r) for r in caplog.records if r.getMessage().startswith("applied: ")]
    assert len(applied) == 2
    assert "latency_ms" not in applied[0]  # the start: no change to measure from
    after = applied[1]
    assert after["trigger"] == "1 change(s)"
    # from the change seen to applied: at least the 50 ms debounce, at most a loaded second
    assert 50.0 <= float(after["latency_ms"]) < 1000
    (timing,) = [fields(r) for r in caplog.records if r.getMessage() == "reconcile timing"][1:]
    assert set(timing) == {
        "burst_ms",
        "quiet_ms",
        "wake_ms",
        "settle_ms",
        "load_ms",
        "watch_ms",
        "apply_ms",
    }
    assert timing["burst_ms"] == "0.0" and timing["quiet_ms"] == "50.0"  # one rename
    spans = sum(float(v) for k, v in timing.items() if k != "burst_ms")
    # after the last change, the spans add up to the latency (each rounded to 0.1 ms)
    assert spans == pytest.approx(float(after["latency_ms"]), abs=0.5)
