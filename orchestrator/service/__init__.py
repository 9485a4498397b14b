"""Running bpforch for real: the watch loop (``bpforch watch``) and the systemd service
(``bpforch serve``), their configuration file, logging and the sd_notify protocol."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator import _lazy

if TYPE_CHECKING:
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

_EXPORTS = {
    "ApplyFailedError": "orchestrator.service.backend:ApplyFailedError",
    "ApplySummary": "orchestrator.service.backend:ApplySummary",
    "Backend": "orchestrator.service.backend:Backend",
    "ConfigError": "orchestrator.service.errors:ConfigError",
    "ConfigProblem": "orchestrator.service.errors:ConfigProblem",
    "Daemon": "orchestrator.service.daemon:Daemon",
    "DaemonStatus": "orchestrator.service.daemon_status:DaemonStatus",
    "Debouncer": "orchestrator.service.watch:Debouncer",
    "DeclarativeBackend": "orchestrator.service.backend:DeclarativeBackend",
    "FileWatcher": "orchestrator.service.watch:FileWatcher",
    "InvalidStateError": "orchestrator.service.backend:InvalidStateError",
    "Notifier": "orchestrator.service.notify:Notifier",
    "NotifyError": "orchestrator.service.errors:NotifyError",
    "ServiceConfig": "orchestrator.service.config:ServiceConfig",
    "ServiceError": "orchestrator.service.errors:ServiceError",
    "WatchSet": "orchestrator.service.watch:WatchSet",
    "WatchdogSettings": "orchestrator.service.notify:WatchdogSettings",
    "load_config": "orchestrator.service.config:load_config",
    "parse_config": "orchestrator.service.config:parse_config",
    "read_status": "orchestrator.service.daemon_status:read_status",
}

_lazy.install(__name__, _EXPORTS)
