"""The ``watch`` and ``serve`` verbs, added to the ``bpforch`` parser by
:func:`add_commands` (``orchestrator/cli.py`` calls it)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from orchestrator.ebpf.mounts import default_bpffs_root
from orchestrator.reconcile import DEFAULT_BPFFS_ROOT, DEFAULT_STATE_DIR
from orchestrator.service.config import (
    DEFAULT_CONFIG_PATH,
    LOG_FORMATS,
    LOG_LEVELS,
    ServiceConfig,
    load_config,
    parse_address,
)
from orchestrator.service.errors import ServiceError

if TYPE_CHECKING:
    from orchestrator.ebpf.diskcache import DiskCache
    from orchestrator.service.daemon_status import DaemonStatus

EXIT_OK = 0
EXIT_ERROR = 1


def _logging_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=None,
        help="auto (default): human on a terminal, key=value otherwise",
    )
    p.add_argument("--log-level", choices=LOG_LEVELS, default=None, help="default: info")
    p.add_argument(
        "--detach-on-exit",
        action="store_true",
        default=None,
        help="remove every owned collection on SIGTERM/SIGINT (default: programs stay "
        "attached and pinned, and a restart adopts them)",
    )


def _default_bpffs_root() -> Path:
    env = os.environ.get("BPFORCH_BPFFS_ROOT")
    return Path(env) if env is not None else default_bpffs_root()


def _metrics_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--metrics-address",
        metavar="HOST:PORT",
        default=None,
        help="serve Prometheus metrics (and /healthz, /readyz) at HOST:PORT, e.g. "
        "127.0.0.1:9846 (default: none)",
    )
    p.add_argument(
        "--program-stats",
        action="store_true",
        default=None,
        help="hold BPF_ENABLE_STATS while running, so that the kernel counts each "
        "program's runs and run time (needs CAP_SYS_ADMIN)",
    )


def add_root_options(p: argparse.ArgumentParser) -> None:
    """``--bpffs-root`` and ``--state-dir``, shared by every verb that touches the kernel."""
    p.add_argument(
        "--bpffs-root",
        type=Path,
        default=_default_bpffs_root(),
        help="bpffs directory bpforch owns (default: bpforch in the bpffs mount found in "
        f"/proc/self/mountinfo, usually {DEFAULT_BPFFS_ROOT}; or $BPFORCH_BPFFS_ROOT)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("BPFORCH_STATE_DIR", DEFAULT_STATE_DIR)),
        help=f"where the record of what was applied and the daemon's status live "
        f"(default: {DEFAULT_STATE_DIR}, or $BPFORCH_STATE_DIR)",
    )


DEFAULT_CACHE_DIR = Path("/var/cache/bpforch")


def add_cache_options(p: argparse.ArgumentParser) -> None:
    """``--cache-dir`` and ``--no-cache``: the persisted cache of parsed objects and of the
    kernel BTF index, shared by every bpforch process (global options)."""
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where parsed objects and the kernel BTF index are cached across runs, in a "
        f"0700 directory of the user's own (default: {DEFAULT_CACHE_DIR}, or "
        "$BPFORCH_CACHE_DIR)",
    )
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="neither read nor write that cache",
    )


def disk_cache(enabled: bool, cache_dir: Path | None, *, daemon: bool = False) -> DiskCache | None:
    """The persisted cache for these settings (None: off). ``cache_dir`` None: the
    default, ``$BPFORCH_CACHE_DIR`` or :data:`DEFAULT_CACHE_DIR`. A directory that cannot
    be used is warned about once, except the default one of a command (not ``daemon``)
    that the user may not write: an unprivileged ``bpforch validate`` is no fault."""
    if not enabled:
        return None
    from orchestrator.ebpf.diskcache import DiskCache

    quiet = False
    if cache_dir is None:
        env = os.environ.get("BPFORCH_CACHE_DIR")
        cache_dir = Path(env) if env else DEFAULT_CACHE_DIR
        quiet = not env and not daemon
    return DiskCache(cache_dir, quiet_denied=quiet)


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``watch`` and ``serve`` to the ``bpforch`` command line. Each sets
    ``func(args, out, err) -> int``."""
    p = subparsers.add_parser(
        "watch",
        help="apply manifests, then re-apply on every change (foreground)",
        description="Apply the manifests, then watch them and every object file they "
        "reference, and re-apply after each burst of changes. Invalid changes are never "
        "applied: the last good state stays live. SIGHUP re-applies; SIGTERM/SIGINT stop "
        "and leave the programs attached.",
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or directories")
    add_root_options(p)
    p.add_argument(
        "--debounce-ms",
        type=int,
        default=100,
        help="quiet time after the last change before applying (default: 100)",
    )
    p.add_argument(
        "--max-delay-ms",
        type=int,
        default=1000,
        help="longest a continuous burst of changes may delay an apply (default: 1000)",
    )
    p.add_argument(
        "--prune",
        action="store_true",
        help="remove owned collections that no manifest declares any more",
    )
    _logging_options(p)
    _metrics_options(p)
    p.set_defaults(func=cmd_watch)

    p = subparsers.add_parser(
        "serve",
        help="run as a systemd service (Type=notify) from a configuration file",
        description="Like watch, but configured by a file (re-read on SIGHUP) and speaking "
        "the systemd notification protocol when $NOTIFY_SOCKET is set.",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=Path(os.environ.get("BPFORCH_CONFIG", DEFAULT_CONFIG_PATH)),
        help=f"configuration file (default: {DEFAULT_CONFIG_PATH}, or $BPFORCH_CONFIG)",
    )
    _logging_options(p)
    _metrics_options(p)
    p.set_defaults(func=cmd_serve)


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    return {
        "log_format": args.log_format,
        "log_level": args.log_level,
        "detach_on_exit": args.detach_on_exit,
        "metrics_address": args.metrics_address,
        "program_stats": args.program_stats,
        "cache": False if getattr(args, "no_cache", False) else None,
        "cache_dir": getattr(args, "cache_dir", None),
    }


def cmd_watch(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.metrics_address is not None:
        try:
            parse_address(args.metrics_address)
        except ValueError as exc:
            print(f"error: --metrics-address: {exc}", file=err)
            return EXIT_ERROR
    if args.debounce_ms < 0 or args.max_delay_ms < args.debounce_ms:
        print(
            "error: need 0 <= --debounce-ms <= --max-delay-ms (raise --max-delay-ms)",
            file=err,
        )
        return EXIT_ERROR
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        print(f"error: no such file or directory: {', '.join(missing)}", file=err)
        return EXIT_ERROR
    config = ServiceConfig(
        manifests=tuple(p.absolute() for p in args.paths),
        bpffs_root=args.bpffs_root.absolute(),
        state_dir=args.state_dir.absolute(),
        debounce_ms=args.debounce_ms,
        max_delay_ms=args.max_delay_ms,
        prune=args.prune,
    ).with_overrides(**_overrides(args))
    return _run(config, None, err)


def cmd_serve(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    overrides = _overrides(args)
    path: Path = args.config

    def reload() -> ServiceConfig:
        return load_config(path).with_overrides(**overrides)

    try:
        config = reload()
    except ServiceError as exc:
        for problem in getattr(exc, "problems", ()) or (exc,):
            print(f"error: {problem}", file=err)
        return EXIT_ERROR
    return _run(config, reload, err)


def _run(config: ServiceConfig, reload: Callable[[], ServiceConfig] | None, err: TextIO) -> int:
    import logging

    from orchestrator.service import metrics
    from orchestrator.service.backend import DeclarativeBackend
    from orchestrator.service.daemon import Daemon
    from orchestrator.service.daemon_status import read_status
    from orchestrator.service.logs import setup_logging
    from orchestrator.service.notify import Notifier, WatchdogSettings

    daemon: Daemon | None = None

    def status() -> DaemonStatus | None:
        return daemon.status if daemon is not None else None

    def target() -> metrics.Target:
        c = daemon.config if daemon is not None else config
        return metrics.Target(c.bpffs_root, c.state_dir, daemon.desired if daemon else None)

    def ready() -> tuple[bool, str]:
        s = status()
        return metrics.readiness(s) if s is not None else (False, "starting")

    registry = metrics.new_registry()
    daemon_metrics = metrics.DaemonMetrics(registry)
    runtime = metrics.Runtime(registry, ready)
    registry.register(metrics.DaemonCollector(status))
    registry.register(
        metrics.KernelCollector(target, busy=daemon_metrics.token, stats_held=runtime.stats_held)
    )

    def use(c: ServiceConfig) -> None:
        setup_logging(c.log_format, c.log_level, err)
        if daemon is not None:  # a reload: a failure keeps what runs
            try:
                runtime.configure(c.metrics_address, c.program_stats)
            except ServiceError as exc:
                logging.getLogger(__name__).error("%s", exc)

    use(config)
    # the parsed manifests and objects, for the daemon's lifetime (a reload that changes
    # the bpffs root or the state dir makes a new backend, with the same store)
    # (the cache settings of a reload apply from the next start)
    from orchestrator.ebpf.btf import kernel as kernel_btf
    from orchestrator.ebpf.speccache import SpecCache
    from orchestrator.manifest import ObjectStore

    disk = disk_cache(config.cache, config.cache_dir, daemon=True)
    kernel_btf.use_disk(disk)
    store = ObjectStore(SpecCache(disk=disk))
    try:
        runtime.configure(config.metrics_address, config.program_stats)
    except ServiceError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_ERROR
    try:
        other = read_status(config.state_dir)
        if other is not None and other.alive and other.pid != os.getpid():
            print(
                f"error: another bpforch daemon (pid {other.pid}) runs with state dir "
                f"{config.state_dir} (stop it first, or use another --state-dir)",
                file=err,
            )
            return EXIT_ERROR
        notifier = Notifier.from_env()
        watchdog = WatchdogSettings.from_env()
        daemon = Daemon(
            config,
            lambda c: DeclarativeBackend(c.bpffs_root, c.state_dir, store),
            notifier=notifier,
            watchdog=watchdog,
            reload_config=reload,
            on_config=use,
            metrics=daemon_metrics,
        )
    except ServiceError as exc:
        runtime.close()
        print(f"error: {exc}", file=err)
        return EXIT_ERROR
    try:
        with notifier:
            return daemon.run()
    finally:
        runtime.close()
