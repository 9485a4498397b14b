"""Prometheus metrics: ``serve``/``watch`` with ``metrics_address`` serve them over HTTP,
``bpforch metrics`` prints them once (for node_exporter's textfile collector).

Two kinds of series (every name starts with ``bpforch_``, see docs/metrics.md):

- **the daemon's**, from its live status (the same numbers its status file holds, so
  ``bpforch metrics`` reports them too): reconciles by result, verifier rejections,
  degraded, the time of the last successful apply, the phase; and, on the endpoint only,
  the reconcile duration histogram;
- **the kernel's**, read at each scrape: collections by condition, drift, every owned
  program's run count and run time (the kernel counts them while statistics are enabled:
  ``program_stats: true`` holds BPF_ENABLE_STATS), every map's entries and capacity, and
  the metrics manifests declare from map values (``spec.metrics``).

A scrape runs in the HTTP server's thread, never in the daemon's loop, and never waits for
it: while an apply is running (or if one ran during the scrape) the kernel series of the
previous scrape are served again, so a half-committed generation never shows as drift.

The endpoint also answers ``/healthz`` (200 while the daemon runs) and ``/readyz`` (200 once
the manifests are applied and the daemon is not degraded; 503 with the reason otherwise),
for Kubernetes probes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socketserver
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.exposition import make_wsgi_app
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from orchestrator.manifest import metrics as rules
from orchestrator.manifest.model import DesiredState, MetricSpec, MetricType
from orchestrator.service.config import parse_address
from orchestrator.service.daemon_status import PHASES, DaemonStatus
from orchestrator.service.errors import ServiceError

if TYPE_CHECKING:
    from orchestrator.ebpf import Map, StatsEnabled
    from orchestrator.reconcile import ActualState, CollectionRecord, Status

_log = logging.getLogger(__name__)

CONDITIONS = ("Ready", "Drifted", "Degraded")
RESULTS = ("applied", "failed", "invalid", "deferred")
MAX_SERIES = 10_000  # per declared metric: a hash map with a million keys is not a metric
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True, slots=True)
class Target:
    """What a scrape reads: the owned root, the record, and the desired state whose
    ``spec.metrics`` say which map values to export (None: no declared metrics)."""

    bpffs_root: Path
    state_dir: Path
    desired: DesiredState | None = None


# ---------------------------------------------------------------------------- the daemon


class DaemonCollector(Collector):
    """The daemon's counters and state from a :class:`DaemonStatus` (the live one in the
    daemon, the status file for ``bpforch metrics``)."""

    def __init__(self, status: Callable[[], DaemonStatus | None]) -> None:
        self._status = status

    def collect(self) -> Iterable[Metric]:
        s = self._status()
        running = GaugeMetricFamily(
            "bpforch_daemon_running", "1 while a bpforch daemon runs with this state dir"
        )
        running.add_metric([], 1 if s is not None and s.alive else 0)
        yield running
        if s is None:
            return
        reconciles = CounterMetricFamily(
            "bpforch_reconciles",
            "reconciles by result: applied (the kernel matches the manifests), failed (the "
            "apply was rolled back), invalid (the manifests did not validate), deferred (the "
            "files changed while they were read)",
            labels=["result"],
        )
        for result, n in zip(RESULTS, (s.applied, s.failed, s.invalid, s.deferred), strict=True):
            reconciles.add_metric([result], n)
        yield reconciles
        rejections = CounterMetricFamily(
            "bpforch_verifier_rejections",
            "applies that failed because the verifier rejected a program",
        )
        rejections.add_metric([], s.rejected)
        yield rejections
        degraded = GaugeMetricFamily(
            "bpforch_degraded",
            "1 while the last reconcile failed or the manifests are invalid (the last good "
            "state stays live)",
        )
        degraded.add_metric([], 1 if s.degraded else 0)
        yield degraded
        if s.last_applied_at > 0:
            last = GaugeMetricFamily(
                "bpforch_last_success_timestamp_seconds",
                "when the manifests were last applied successfully (Unix time)",
            )
            last.add_metric([], s.last_applied_at)
            yield last
        phase = GaugeMetricFamily(
            "bpforch_daemon_phase", "1 for the daemon's phase, 0 for the others", labels=["phase"]
        )
        for p in PHASES:
            phase.add_metric([p], 1 if p == s.phase else 0)
        yield phase


# ---------------------------------------------------------------------------- the kernel


class KernelCollector(Collector):
    """The kernel's view at each scrape (see the module's docstring). ``busy``: a token
    that changes whenever an apply starts or ends, None while one runs; a scrape that sees
    it change serves the previous scrape's series."""

    def __init__(
        self,
        target: Callable[[], Target],
        *,
        busy: Callable[[], object] | None = None,
        stats_held: Callable[[], bool] = lambda: False,
    ) -> None:
        self._target = target
        self._busy = busy
        self._stats_held = stats_held
        self._lock = threading.Lock()
        self._last: list[Metric] | None = None

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            before = self._busy() if self._busy is not None else 0
            fresh = self._read()
            after = self._busy() if self._busy is not None else 0
            if before is None or after != before:
                if self._last is not None:
                    return list(self._last)
                _log.debug("an apply ran during the first scrape: serving what was read")
            self._last = fresh
            return list(fresh)

    def _read(self) -> list[Metric]:
        from orchestrator.reconcile import ReconcileError, Reconciler

        target = self._target()
        ok = GaugeMetricFamily(
            "bpforch_observe_success",
            "1 if this scrape could read the record and the kernel (else the kernel's series "
            "are missing)",
        )
        rec = Reconciler(bpffs_root=target.bpffs_root, state_dir=target.state_dir)
        try:
            actual = rec.observe()
            status = rec.status(actual)
        except (ReconcileError, OSError) as err:
            _log.warning("metrics: cannot observe: %s", err)
            ok.add_metric([], 0)
            return [ok, self._stats_enabled()]
        ok.add_metric([], 1)
        out: list[Metric] = [ok, self._stats_enabled()]
        out.extend(_collections(status))
        with _Root(target.bpffs_root) as root:
            out.extend(_programs(actual, root))
            out.extend(_maps(status))
            if target.desired is not None:
                out.extend(_declared(target.desired, actual, root))
        return out

    def _stats_enabled(self) -> Metric:
        from orchestrator.ebpf import stats_enabled

        g = GaugeMetricFamily(
            "bpforch_program_stats_enabled",
            "1 if the kernel counts program runs now (program_stats: true, or the sysctl "
            "kernel.bpf_stats_enabled)",
        )
        g.add_metric([], 1 if self._stats_held() or stats_enabled() else 0)
        return g


class _Root:
    """An fd of the owned root for the scrape (None if it does not exist)."""

    def __init__(self, root: Path) -> None:
        self.path = root
        self.fd: int | None = None

    def __enter__(self) -> _Root:
        from orchestrator.reconcile import ReconcileError
        from orchestrator.reconcile.owner import open_root

        try:
            self.fd = open_root(self.path)
        except OSError:
            self.fd = None
        except ReconcileError as err:  # a symlink in its place
            _log.warning("metrics: %s", err)
            self.fd = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)


def _collections(status: Status) -> Iterator[Metric]:
    counts = dict.fromkeys(CONDITIONS, 0)
    condition = GaugeMetricFamily(
        "bpforch_collection_condition",
        "1 for each applied collection's condition: Ready (the kernel matches the record), "
        "Drifted, Degraded (an attachment is gone)",
        labels=["collection", "condition"],
    )
    drift = GaugeMetricFamily(
        "bpforch_collection_drift",
        "differences between the record and the kernel (the next apply repairs them)",
        labels=["collection"],
    )
    generation = GaugeMetricFamily(
        "bpforch_collection_generation",
        "applies that changed the collection",
        labels=["collection"],
    )
    for c in status.collections:
        counts[c.condition] = counts.get(c.condition, 0) + 1
        for k in CONDITIONS:
            condition.add_metric([c.name, k], 1 if k == c.condition else 0)
        drift.add_metric([c.name], len(c.drift))
        generation.add_metric([c.name], c.generation)
    by_state = GaugeMetricFamily(
        "bpforch_collections", "applied collections by condition", labels=["condition"]
    )
    for name, n in counts.items():
        by_state.add_metric([name], n)
    yield by_state
    yield condition
    yield drift
    yield generation


def _programs(actual: ActualState, root: _Root) -> Iterator[Metric]:
    from orchestrator.ebpf import Error as EbpfError
    from orchestrator.ebpf import Program
    from orchestrator.reconcile.owner import open_owned

    info = GaugeMetricFamily(
        "bpforch_program_info",
        "every owned program: its kernel id and tag",
        labels=["collection", "program", "id", "tag"],
    )
    runs = CounterMetricFamily(
        "bpforch_program_run_count",
        "times the program ran (counted while statistics are enabled)",
        labels=["collection", "program"],
    )
    run_time = CounterMetricFamily(
        "bpforch_program_run_time_ns",
        "nanoseconds the program ran in all (counted while statistics are enabled)",
        labels=["collection", "program"],
    )
    for name, ac in sorted(actual.collections.items()):
        for pname, p in sorted(ac.record.programs.items()):
            info.add_metric([name, pname, str(p.id), p.tag], 1)
            if root.fd is None or not p.pin:
                continue
            try:
                with Program.from_fd(open_owned(root.fd, f"{name}/{p.pin}")) as prog:
                    stats = prog.stats()
            except (EbpfError, OSError) as err:
                _log.debug("metrics: program %s/%s: %s", name, pname, err)
                continue
            runs.add_metric([name, pname], stats.run_count)
            run_time.add_metric([name, pname], stats.run_time_ns)
    yield info
    yield runs
    yield run_time


def _maps(status: Status) -> Iterator[Metric]:
    entries = GaugeMetricFamily(
        "bpforch_map_entries",
        "elements in the map (a hash map's keys, counted at each scrape; an array's size)",
        labels=["collection", "map"],
    )
    capacity = GaugeMetricFamily(
        "bpforch_map_capacity", "the map's max_entries", labels=["collection", "map"]
    )
    for c in status.collections:
        for m in c.maps:
            capacity.add_metric([c.name, m.name], m.max_entries)
            if m.entries is not None:
                entries.add_metric([c.name, m.name], m.entries)
    yield entries
    yield capacity


def _open_map(root: _Root, rec: CollectionRecord, name: str) -> Map:
    """A map of an applied collection, as ``bpforch status`` reaches it: its pin (never
    through a symlink), the programs that hold it, or its substitution source."""
    from orchestrator.ebpf import Map
    from orchestrator.reconcile.observe import open_map
    from orchestrator.reconcile.owner import open_owned

    mr = rec.maps.get(name)
    if mr is None:
        raise LookupError(f"collection {rec.name} has no map {name} applied")
    if mr.source.startswith("pinned:"):
        return Map.from_pin(mr.source.removeprefix("pinned:"))
    if root.fd is None:
        raise LookupError(f"bpffs root {root.path} is gone")
    if mr.source:
        _, coll, mname = mr.source.split("/", 2)
        return Map.from_fd(open_owned(root.fd, f"{coll}/maps/{mname.replace('.', '_')}"))
    if mr.pin:
        return Map.from_fd(open_owned(root.fd, f"{rec.name}/{mr.pin}"))
    return open_map(root.path, rec, mr)


def _declared(desired: DesiredState, actual: ActualState, root: _Root) -> Iterator[Metric]:
    from orchestrator.ebpf import Error as EbpfError

    families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
    errors = GaugeMetricFamily(
        "bpforch_metric_errors",
        "1 for a declared metric that could not be read at this scrape (see the log)",
        labels=["collection", "metric"],
    )
    for cname, coll in sorted(desired.collections.items()):
        ac = actual.collections.get(cname)
        if ac is None or not coll.metrics:
            continue
        for spec in coll.metrics:
            family = families.get(spec.name)
            if family is None:
                family = _family(spec)
                families[spec.name] = family
            try:
                with _open_map(root, ac.record, spec.map) as m:
                    for labels, value in _read(m, spec):
                        family.add_metric([cname, *labels], value)
            except (EbpfError, OSError, LookupError, rules.MetricValueError) as err:
                _log.debug("metrics: %s/%s: %s", cname, spec.name, err)
                errors.add_metric([cname, spec.name], 1)
    yield from families.values()
    yield errors


def _family(spec: MetricSpec) -> CounterMetricFamily | GaugeMetricFamily:
    labels = ["collection", *([spec.label] if spec.label is not None else [])]
    help_text = spec.help or f"map {spec.map}"
    if spec.type is MetricType.COUNTER:
        return CounterMetricFamily(spec.name, help_text, labels=labels)
    return GaugeMetricFamily(spec.name, help_text, labels=labels)


def _read(m: Map, spec: MetricSpec) -> Iterator[tuple[list[str], float]]:
    per_cpu = m.type.per_cpu if hasattr(m.type, "per_cpu") else False
    if spec.key is not None:
        value = m.lookup(spec.key, None)
        yield [], 0 if value is None else rules.total(value, spec.value_path, per_cpu)
        return
    if spec.names is not None:
        for i, name in enumerate(spec.names):
            value = m.lookup(i, None)
            yield [name], 0 if value is None else rules.total(value, spec.value_path, per_cpu)
        return
    enumerators = m.key_names()
    for n, (key, value) in enumerate(m.items()):
        if n >= MAX_SERIES:
            _log.warning("metrics: %s: more than %d entries, the rest left out", spec.name, n)
            return
        label = rules.label_value(key, None, enumerators)
        if label is not None:
            yield [label], rules.total(value, spec.value_path, per_cpu)


# ---------------------------------------------------------------------------- output


def new_registry() -> CollectorRegistry:
    """An empty registry (prometheus_client's global one holds its process metrics)."""
    return CollectorRegistry(auto_describe=False)


def registry_for(
    target: Callable[[], Target], status: Callable[[], DaemonStatus | None]
) -> CollectorRegistry:
    """A registry with the daemon's and the kernel's series (``bpforch metrics``)."""
    registry = new_registry()
    registry.register(DaemonCollector(status))
    registry.register(KernelCollector(target))
    return registry


def exposition(registry: CollectorRegistry) -> str:
    """The text exposition format (what ``bpforch metrics`` prints)."""
    return generate_latest(registry).decode("utf-8")


class DaemonMetrics:
    """The daemon's side: the reconcile duration histogram (the rest comes from its
    status) and the apply-in-progress token the kernel collector checks."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.duration = Histogram(
            "bpforch_reconcile_duration_seconds",
            "time from a trigger (a change, a reload, a retry) to the end of its reconcile",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self._applying = False
        self._epoch = 0

    def token(self) -> object:
        return None if self._applying else self._epoch

    @contextlib.contextmanager
    def applying(self) -> Iterator[None]:
        self._epoch += 1
        self._applying = True
        try:
            yield
        finally:
            self._applying = False
            self._epoch += 1

    def reconciled(self, seconds: float) -> None:
        self.duration.observe(seconds)


# ---------------------------------------------------------------------------- the endpoint


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        _log.debug("metrics endpoint: " + format, *args)


class MetricsServer:
    """The HTTP endpoint: ``/metrics``, ``/healthz``, ``/readyz``. ``ready()`` gives
    (ready, reason)."""

    def __init__(self, registry: CollectorRegistry, ready: Callable[[], tuple[bool, str]]) -> None:
        self._metrics_app = make_wsgi_app(registry)
        self._ready = ready
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.address = ""

    def _app(
        self, environ: dict[str, object], start_response: Callable[..., object]
    ) -> list[bytes]:
        path = str(environ.get("PATH_INFO", ""))
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"ok\n"]
        if path == "/readyz":
            ok, reason = self._ready()
            status = "200 OK" if ok else "503 Service Unavailable"
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [f"{reason}\n".encode()]
        if path in ("/metrics", "/"):
            body: list[bytes] = self._metrics_app(environ, start_response)
            return body
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: try /metrics, /healthz or /readyz\n"]

    def start(self, address: str) -> None:
        """Listen on ``HOST:PORT`` (ServiceError if it cannot)."""
        host, port = parse_address(address)
        try:
            server = make_server(
                host or "0.0.0.0",
                port,
                self._app,
                server_class=_Server,
                handler_class=_QuietHandler,
            )
        except OSError as err:
            why = (err.strerror or str(err)).lower()
            raise ServiceError(
                f"metrics endpoint {address}: {why} (choose another metrics_address)"
            ) from err
        self.stop()
        self._server = server
        self.address = address
        self._thread = threading.Thread(
            target=server.serve_forever, name="bpforch-metrics", daemon=True
        )
        self._thread.start()
        _log.info("serving metrics", extra={"fields": {"address": address}})

    @property
    def port(self) -> int:
        """The port it listens on (the one the system chose for port 0)."""
        return self._server.server_address[1] if self._server is not None else 0

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.address = ""


def readiness(status: DaemonStatus) -> tuple[bool, str]:
    """Ready once the manifests are applied and the daemon is not degraded."""
    if status.phase == "ready":
        return True, f"ready: {status.summary}"
    if status.phase == "degraded":
        return False, f"degraded: {status.reason}"
    return status.last_applied_at > 0 and status.phase == "reloading", status.phase


class Runtime:
    """What a running daemon's configuration asks for beyond reconciling: the metrics
    endpoint (``metrics_address``) and the kernel's program statistics
    (``program_stats``), started, moved and stopped as the configuration changes."""

    def __init__(self, registry: CollectorRegistry, ready: Callable[[], tuple[bool, str]]) -> None:
        self.server = MetricsServer(registry, ready)
        self._stats: StatsEnabled | None = None

    def stats_held(self) -> bool:
        return self._stats is not None

    def configure(self, address: str | None, program_stats: bool) -> None:
        """Follow the configuration. ServiceError if the endpoint cannot listen (the one
        that was listening keeps listening); statistics that cannot be enabled are logged,
        not fatal: the programs matter more than their counts."""
        if (address or "") != self.server.address:
            previous = self.server.address
            self.server.stop()
            if address is not None:
                try:
                    self.server.start(address)
                except ServiceError:
                    if previous:
                        self.server.start(previous)
                    raise
        if program_stats and self._stats is None:
            from orchestrator.ebpf import Error as EbpfError
            from orchestrator.ebpf import enable_stats

            try:
                self._stats = enable_stats()
                _log.info("program statistics enabled (BPF_ENABLE_STATS)")
            except EbpfError as err:
                _log.error("program_stats: %s", err)
        elif not program_stats and self._stats is not None:
            self._stats.close()
            self._stats = None
            _log.info("program statistics released")

    def close(self) -> None:
        self.server.stop()
        if self._stats is not None:
            self._stats.close()
            self._stats = None
