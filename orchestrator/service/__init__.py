"""Running bpforch for real: the watch loop (``bpforch watch``) and the systemd service
(``bpforch serve``), their configuration file, logging and the sd_notify protocol."""

from __future__ import annotations

from orchestrator.service.backend import (
    ApplyFailedError,
    ApplySummary,
    Backend,
    DeclarativeBackend,
    InvalidStateError,
)
from orchestrator.service.config import ServiceConfig, load_config, parse_config
from orchestrator.service.daemon import Daemon
from orchestrator.service.daemon_status import DaemonStatus, read_status
from orchestrator.service.errors import ConfigError, ConfigProblem, NotifyError, ServiceError
from orchestrator.service.notify import Notifier, WatchdogSettings
from orchestrator.service.watch import Debouncer, FileWatcher, WatchSet

__all__ = [
    "ApplyFailedError",
    "ApplySummary",
    "Backend",
    "ConfigError",
    "ConfigProblem",
    "Daemon",
    "DaemonStatus",
    "Debouncer",
    "DeclarativeBackend",
    "FileWatcher",
    "InvalidStateError",
    "Notifier",
    "NotifyError",
    "ServiceConfig",
    "ServiceError",
    "WatchSet",
    "WatchdogSettings",
    "load_config",
    "parse_config",
    "read_status",
]
