"""The reconcile daemon behind ``bpforch watch`` and ``bpforch serve``.

One thread decides everything: it blocks in a selector on one socket that wakes it for
signals (``signal.set_wakeup_fd``) and for file changes (written by the watcher's thread),
with a timeout only when a deadline is pending (the end of a debounce window, the next
watchdog ping). An idle daemon therefore sleeps in the kernel and uses no CPU.

Notifications (sd_notify(3)), each line one datagram:

- start: ``STATUS=starting: ...``, then after the first successful reconcile
  ``READY=1`` + ``STATUS=ready: ...``;
- a reconcile after a change: ``STATUS=ready: ...`` or ``STATUS=degraded: <reason>``;
- SIGHUP: ``RELOADING=1`` + ``MONOTONIC_USEC=...`` + ``STATUS=reloading ...``, then
  ``READY=1`` + ``STATUS=...`` (also when degraded: the reload itself is over);
- SIGTERM/SIGINT: ``STOPPING=1`` + ``STATUS=stopping: ...``;
- ``WATCHDOG=1`` every half of ``$WATCHDOG_USEC``.

An invalid change never reaches the kernel: the last good state stays live, the problems
are logged with their file:line:col, and the status says ``degraded: <reason>`` until a
valid change is applied. A file still being written is not read until it is closed, and a
read during which the files changed is dropped and done again. A failed apply (the
reconciler rolled back) is retried after 1, 2, 4 … 60 s, since the same manifests may
apply later (an interface that appears). Stopping leaves every program attached and
pinned (a restarted daemon adopts them without reloading), unless ``detach_on_exit`` is
set.

Needs Linux inotify, plus what the reconciler needs: bpffs, CAP_BPF, CAP_NET_ADMIN and
CAP_PERFMON, and CAP_SYS_ADMIN for targets in another network namespace (setns).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from types import FrameType
from typing import TYPE_CHECKING

from orchestrator.manifest.model import DesiredState
from orchestrator.service.backend import (
    ApplyFailedError,
    ApplySummary,
    Backend,
    InvalidStateError,
)
from orchestrator.service.config import ServiceConfig
from orchestrator.service.daemon_status import DaemonStatus, process_start_time, write_status
from orchestrator.service.errors import ConfigError
from orchestrator.service.notify import Notifier, WatchdogSettings, monotonic_usec
from orchestrator.service.watch import Debouncer, FileWatcher, WatchSet, referenced_objects

if TYPE_CHECKING:
    from orchestrator.service.metrics import DaemonMetrics

_log = logging.getLogger(__name__)

_STATUS_MAX = 400  # characters of a STATUS= line
MAX_PROBLEMS = 100  # problems logged and kept in the status file per reconcile
# How long a file that is being written (modified, not closed yet) may hold back a
# reconcile; after that its writer is not waited for.
WRITE_SETTLE_MAX = 5.0
# A failed apply may succeed later with the same manifests (an interface or cgroup that
# appears, a lock held by a manual `bpforch apply`): retry with a doubling delay.
RETRY_MIN = 1.0
RETRY_MAX = 60.0


def _capped(problems: tuple[str, ...]) -> tuple[str, ...]:
    """At most :data:`MAX_PROBLEMS` problems, for the log and the status file (a manifest
    can have a hundred thousand): the rest are counted."""
    if len(problems) <= MAX_PROBLEMS:
        return problems
    rest = len(problems) - MAX_PROBLEMS
    return (*problems[:MAX_PROBLEMS], f"... and {rest} more (run bpforch validate)")


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _STATUS_MAX else line[: _STATUS_MAX - 3] + "..."


class Daemon:
    """Runs the watch/reconcile loop until SIGTERM or SIGINT.

    ``backend_factory`` makes the backend for a configuration (called again on reload when
    the bpffs root or state dir changed); ``reload_config`` re-reads the configuration on
    SIGHUP (None for ``bpforch watch``, whose configuration comes from arguments);
    ``on_config`` is called with every configuration taken into use (to set up logging).
    """

    def __init__(
        self,
        config: ServiceConfig,
        backend_factory: Callable[[ServiceConfig], Backend],
        *,
        notifier: Notifier | None = None,
        watchdog: WatchdogSettings | None = None,
        reload_config: Callable[[], ServiceConfig] | None = None,
        on_config: Callable[[ServiceConfig], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        retry: tuple[float, float] = (RETRY_MIN, RETRY_MAX),
        metrics: DaemonMetrics | None = None,
    ) -> None:
        self.config = config
        self._metrics = metrics
        self._retry_min, self._retry_max = retry
        self._retry_delay = self._retry_min
        self._retry_at: float | None = None
        self._reconcile_started: float | None = None  # until its metrics are recorded
        self._marks: dict[str, float] = {}  # the running reconcile's times (see _timing)
        self._backend_factory = backend_factory
        self._backend = backend_factory(config)
        self._notifier = notifier if notifier is not None else Notifier(None)
        self._watchdog = watchdog
        self._reload_config = reload_config
        self._on_config = on_config
        self._clock = clock
        self._lock = threading.Lock()
        self._debouncer = self._new_debouncer(config)
        self._watcher: FileWatcher | None = None
        self._good: DesiredState | None = None
        self._ready_sent = False
        self._changes = 0  # relevant changes seen (a torn read shows as a change during it)
        self._quiet = False  # inside a reload: its READY=1 carries the final STATUS
        self._line = ""
        self._stop_requested = False
        self._signals: collections.deque[int] = collections.deque()
        self._wake_r, self._wake_w = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._status = DaemonStatus(
            pid=os.getpid(),
            pid_start=process_start_time(os.getpid()) or 0,
            phase="starting",
            config=str(config.source or ""),
            manifests=tuple(str(m) for m in config.manifests),
            started_at=time.time(),
        )

    @staticmethod
    def _new_debouncer(config: ServiceConfig) -> Debouncer:
        quiet = config.debounce_ms / 1000
        return Debouncer(quiet, max(quiet, config.max_delay_ms / 1000))

    # ------------------------------------------------------------------ public

    @property
    def status(self) -> DaemonStatus:
        return self._status

    @property
    def desired(self) -> DesiredState | None:
        """The last desired state that was applied successfully (None before the first)."""
        return self._good

    def request_stop(self) -> None:
        """Stop the loop from another thread (tests, embedding)."""
        self._stop_requested = True
        self._wake()

    def run(self) -> int:
        """Run until stopped; returns the process exit code (0)."""
        previous = self._install_signals()
        selector = selectors.DefaultSelector()
        selector.register(self._wake_r, selectors.EVENT_READ)
        self._watcher = FileWatcher(self._changed)
        try:
            self._publish("starting", f"starting: {len(self.config.manifests)} manifest path(s)")
            self._notify(STATUS=self._status_line())
            self._watcher.start()
            self._retarget(None)
            self._reconcile("start")
            next_ping = self._clock() + self._watchdog.interval if self._watchdog else None
            while not self._stop_requested:
                timeout = self._timeout(next_ping)
                selector.select(timeout)
                self._drain()
                for signum in self._take_signals():
                    if signum == signal.SIGHUP:
                        self._reload()
                    else:
                        _log.info("stopping on %s", signal.Signals(signum).name)
                        self._stop_requested = True
                if self._stop_requested:
                    break
                now = self._clock()
                if next_ping is not None and self._watchdog is not None and now >= next_ping:
                    self._notify(WATCHDOG=1)
                    next_ping = now + self._watchdog.interval
                with self._lock:
                    burst = self._debouncer.take(now)
                    taken = self._debouncer.taken
                if burst:
                    if self._writes_in_progress(now):
                        continue
                    assert taken is not None
                    self._reconcile(f"{burst} change(s)", changes=(*taken, now))
                elif self._retry_at is not None and now >= self._retry_at:
                    self._retry_at = None
                    self._reconcile("retry")
            self._shutdown()
        finally:
            self._watcher.stop()
            selector.close()
            self._restore_signals(previous)
            self._wake_r.close()
            self._wake_w.close()
        return 0

    # ------------------------------------------------------------------ loop parts

    def _timeout(self, next_ping: float | None) -> float | None:
        with self._lock:
            deadline = self._debouncer.deadline()
        deadlines = [d for d in (deadline, next_ping, self._retry_at) if d is not None]
        if not deadlines:
            return None  # nothing pending: sleep until a signal or a file change
        return max(0.0, min(deadlines) - self._clock())

    def _writes_in_progress(self, now: float) -> bool:
        """True (and the debounce window re-armed) while a watched file is half-written."""
        if self._watcher is None:
            return False
        busy = self._watcher.writing(WRITE_SETTLE_MAX)
        if not busy:
            return False
        _log.debug("waiting for writes to finish", extra={"fields": {"files": ",".join(busy)}})
        with self._lock:
            self._debouncer.touch(now)
        return True

    def _changed(self, path: str) -> None:
        """Called by the watcher thread for each relevant change."""
        with self._lock:
            self._changes += 1
            self._debouncer.touch(self._clock())
        _log.debug("change", extra={"fields": {"path": path}})
        self._wake()

    def _wake(self) -> None:
        # BlockingIOError: already awake (buffer full); OSError: shutting down
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _drain(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _install_signals(self) -> dict[int, object]:
        def handler(signum: int, _frame: FrameType | None) -> None:
            self._signals.append(signum)

        previous: dict[int, object] = {}
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, handler)
        previous[-1] = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        return previous

    @staticmethod
    def _restore_signals(previous: dict[int, object]) -> None:
        for sig, old in previous.items():
            if sig == -1:
                signal.set_wakeup_fd(old if isinstance(old, int) else -1)
            elif callable(old) or isinstance(old, signal.Handlers | int):
                signal.signal(sig, old)

    def _take_signals(self) -> list[int]:
        # popleft is atomic with respect to the handler appending (both in this thread)
        taken = []
        while self._signals:
            taken.append(self._signals.popleft())
        return taken

    # ------------------------------------------------------------------ actions

    def _reconcile(
        self, why: str, *, changes: tuple[float, float, float, float] | None = None
    ) -> bool:
        """Validate, then apply. True if the kernel now matches the manifests.
        ``changes``: for a reconcile of file changes, the times of the burst's first and
        last change, of its debounce deadline and of the loop's wake-up (for the latency
        figures it logs)."""
        started = self._clock()
        self._reconcile_started = started
        self._marks = {"start": started}
        if changes is not None:
            self._marks.update(zip(("first", "last", "due", "woke"), changes, strict=True))
        try:
            return self._reconcile_once(why, started)
        finally:
            self._record_reconcile()  # one that announced nothing (a torn read, a bug)

    def _record_reconcile(self) -> None:
        """Record the running reconcile's duration, once. Called before its outcome is
        announced (status file, readiness, sd_notify): whoever sees the outcome and then
        scrapes the metrics sees this reconcile counted."""
        started, self._reconcile_started = self._reconcile_started, None
        if started is not None and self._metrics is not None:
            self._metrics.reconciled(self._clock() - started)

    def _reconcile_once(self, why: str, started: float) -> bool:
        with self._lock:
            changes_before = self._changes
        self._status = replace(self._status, reconciles=self._status.reconciles + 1)
        try:
            desired = self._backend.load(self.config.manifests)
            self._marks["loaded"] = self._clock()
        except InvalidStateError as err:
            if self._changed_while_read(changes_before):
                return False
            shown = _capped(err.problems)
            for problem in shown:
                _log.error("invalid: %s", problem, extra={"fields": {"trigger": why}})
            self._status = replace(self._status, invalid=self._status.invalid + 1, problems=shown)
            self._retarget(None)
            self._degraded(str(err))
            return False
        except Exception as err:  # a bug in validation must not stop the daemon either
            _log.exception("internal error while validating", extra={"fields": {"trigger": why}})
            self._status = replace(
                self._status, failed=self._status.failed + 1, problems=(repr(err),)
            )
            self._retarget(None)
            self._degraded(f"internal error: {err!r}")
            return False
        if self._changed_while_read(changes_before):
            return False
        self._retarget(desired)
        self._status = replace(self._status, applies=self._status.applies + 1)
        try:
            self._marks["watched"] = self._clock()
            with self._applying():
                summary = self._backend.apply(desired, self.config.prune)
        except ApplyFailedError as err:
            _log.error("%s", err, extra={"fields": {"trigger": why}})
            self._status = replace(
                self._status,
                failed=self._status.failed + 1,
                rejected=self._status.rejected + (1 if err.rejected else 0),
                problems=(str(err),),
            )
            self._degraded(str(err), retry=True)
            return False
        except Exception as err:  # a bug must not take the live programs' daemon down
            _log.exception("internal error while applying", extra={"fields": {"trigger": why}})
            self._status = replace(
                self._status, failed=self._status.failed + 1, problems=(repr(err),)
            )
            self._degraded(f"internal error: {err!r}", retry=True)
            return False
        self._status = replace(self._status, applied=self._status.applied + 1)
        self._retry_at, self._retry_delay = None, self._retry_min
        self._good = desired
        self._marks["applied"] = self._clock()
        fields = {"trigger": why, "ms": f"{(self._marks['applied'] - started) * 1000:.1f}"}
        if "last" in self._marks:  # from the last change seen to applied
            fields["latency_ms"] = f"{(self._marks['applied'] - self._marks['last']) * 1000:.1f}"
        _log.info("applied: %s", summary, extra={"fields": fields})
        _log.debug("reconcile timing", extra={"fields": self._timing()})
        self._ready(summary)
        return True

    def _timing(self) -> dict[str, str]:
        """Where a reconcile's time went, in ms: from the burst's first to its last change
        (``burst``), the debounce after the last one (``quiet``), the loop waking up after
        the deadline (``wake``), the wait for writers to finish (``settle``), validation
        (``load``), re-targeting the watches (``watch``) and the apply (``apply``)."""
        m = self._marks
        spans = (
            ("burst", "first", "last"),
            ("quiet", "last", "due"),
            ("wake", "due", "woke"),
            ("settle", "woke", "start"),
            ("load", "start", "loaded"),
            ("watch", "loaded", "watched"),
            ("apply", "watched", "applied"),
        )
        return {
            f"{name}_ms": f"{(m[end] - m[begin]) * 1000:.1f}"
            for name, begin, end in spans
            if begin in m and end in m
        }

    def _applying(self) -> contextlib.AbstractContextManager[None]:
        """Tells the metrics' scrapes that an apply runs (they serve their last reading)."""
        if self._metrics is None:
            return contextlib.nullcontext()
        return self._metrics.applying()

    def _changed_while_read(self, changes_before: int) -> bool:
        """Whether the files changed while they were read: then what was read may mix old
        and new contents, so it is neither applied nor reported; the change that came in
        has re-armed the debounce window and the next reconcile reads the files again."""
        with self._lock:
            changed = self._changes != changes_before
            if changed:
                self._debouncer.touch(self._clock())
        if not changed:
            return False
        self._status = replace(self._status, deferred=self._status.deferred + 1)
        _log.debug("files changed while being read: reading them again after they settle")
        return True

    def _ready(self, summary: ApplySummary) -> None:
        assert self._good is not None
        self._record_reconcile()
        self._status = replace(
            self._status,
            collections=tuple(sorted(self._good.collections)),
            last_applied_at=time.time(),
            summary=str(summary),
            problems=(),
        )
        self._publish("ready", f"ready: {summary}")
        if self._quiet:
            return
        if not self._ready_sent:
            self._ready_sent = True
            self._notify(READY=1, STATUS=self._status_line())
        else:
            self._notify(STATUS=self._status_line())

    def _degraded(self, reason: str, *, retry: bool = False) -> None:
        """Report a degraded state. ``retry``: the apply failed, so try again later (with
        a doubling delay) even if no file changes; a repeated identical failure is not
        notified again. Invalid manifests are not retried: only a change can fix them."""
        self._record_reconcile()
        line = _one_line(f"degraded: {reason}")
        repeated = retry and self._status.phase == "degraded" and line == self._line
        if retry:
            self._retry_at = self._clock() + self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, self._retry_max)
        else:
            self._retry_at, self._retry_delay = None, self._retry_min
        self._publish("degraded", line, reason=line[len("degraded: ") :])
        if not self._quiet and not repeated:
            self._notify(STATUS=self._status_line())

    def _reload(self) -> None:
        """SIGHUP: re-read the configuration (if any) and reconcile. Always ends with
        ``READY=1``: the reload is over even when the result is degraded."""
        _log.info("reloading")
        self._publish("reloading", "reloading configuration")
        self._notify(RELOADING=1, MONOTONIC_USEC=monotonic_usec(), STATUS=self._status_line())
        self._quiet = True
        try:
            self._reload_quietly()
        finally:
            self._quiet = False
        self._ready_sent = True
        self._notify(READY=1, STATUS=self._status_line())

    def _reload_quietly(self) -> None:
        if self._reload_config is not None:
            try:
                new = self._reload_config()
            except ConfigError as err:
                for problem in err.problems or (err,):
                    _log.error("configuration: %s", problem)
                self._degraded(f"{err} (kept the previous configuration)")
                return
            self._use_config(new)
        with self._lock:
            self._debouncer.take(float("inf"))  # this reconcile covers pending changes
        self._retarget(self._good)
        self._reconcile("reload")

    def _use_config(self, new: ServiceConfig) -> None:
        old = self.config
        if (new.bpffs_root, new.state_dir) != (old.bpffs_root, old.state_dir):
            self._backend = self._backend_factory(new)
        with self._lock:
            self._debouncer = self._new_debouncer(new)
        self.config = new
        self._status = replace(
            self._status,
            config=str(new.source or ""),
            manifests=tuple(str(m) for m in new.manifests),
        )
        if self._on_config is not None:
            self._on_config(new)

    def _shutdown(self) -> None:
        if self.config.detach_on_exit:
            line = "stopping: detaching every collection"
        else:
            line = "stopping: programs stay attached"
        self._publish("stopping", line)
        self._notify(STOPPING=1, STATUS=self._status_line())
        if self._watcher is not None:
            self._watcher.stop()
        if self.config.detach_on_exit:
            try:
                self._backend.destroy_all()
                _log.info("detached every collection")
            except ApplyFailedError as err:
                _log.error("%s", err)
        self._publish("stopped", "stopped")

    # ------------------------------------------------------------------ plumbing

    def _retarget(self, desired: DesiredState | None) -> None:
        """Watch the manifests and every object they reference (of the last good state,
        plus a lenient scan so that a not-yet-valid manifest's object is watched too)."""
        if self._watcher is None:
            return
        objects = set(referenced_objects(self.config.manifests))
        for state in (desired, self._good):
            if state is not None:
                objects.update(state.objects())
        watch_set = WatchSet.build(self.config.manifests, objects)
        initial = not self._watcher.directories
        if self._watcher.update(watch_set) and not initial:
            # a new directory: what was written into it before its watch existed is read
            # by one more reconcile (a no-op if there was nothing)
            with self._lock:
                self._debouncer.touch(self._clock())
        self._status = replace(
            self._status, watched=tuple(str(d) for d, _ in self._watcher.directories)
        )

    def _status_line(self) -> str:
        return self._line

    def _publish(self, phase: str, line: str, *, reason: str = "") -> None:
        self._line = _one_line(line)
        self._status = replace(self._status, phase=phase, reason=reason, updated_at=time.time())
        try:
            write_status(self.config.state_dir, self._status)
        except OSError as err:
            _log.warning("cannot write the status file: %s", err)

    def _notify(self, **fields: str | int) -> None:
        self._notifier.notify(**fields)
