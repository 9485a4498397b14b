"""The service configuration: ``/etc/bpforch/config.yaml``, validated against
:data:`CONFIG_SCHEMA` (``bpforch schema config`` prints it; ``schemas/config.schema.json``
is generated from it).

Every problem is reported with the file, line and column of the offending value, like
manifest errors are. Relative paths are resolved against the configuration file's own
directory, so a configuration and its manifests can move together.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.ebpf.errors import FileError, clip
from orchestrator.ebpf.files import read_text, reason
from orchestrator.ebpf.mounts import default_bpffs_root
from orchestrator.manifest.api import API_VERSION, DEPRECATED_API_VERSIONS
from orchestrator.reconcile import DEFAULT_BPFFS_ROOT, DEFAULT_STATE_DIR
from orchestrator.service.errors import ConfigError, ConfigProblem

if TYPE_CHECKING:
    import yaml

DEFAULT_CONFIG_PATH = Path("/etc/bpforch/config.yaml")

CONFIG_MAX = 1 << 20  # bytes of a configuration file
LOG_FORMATS = ("auto", "human", "logfmt", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
# HOST:PORT, HOST an IPv4 address, a name or [IPv6]; empty HOST: every address
METRICS_ADDRESS_PATTERN = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]*):[0-9]{1,5}$"


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """What the watch loop and the daemon run with. Paths are absolute."""

    manifests: tuple[Path, ...]
    bpffs_root: Path = DEFAULT_BPFFS_ROOT
    state_dir: Path = DEFAULT_STATE_DIR
    debounce_ms: int = 100
    max_delay_ms: int = 1000
    prune: bool = False
    detach_on_exit: bool = False
    log_format: str = "auto"
    log_level: str = "info"
    metrics_address: str | None = None  # HOST:PORT of the Prometheus endpoint (None: none)
    program_stats: bool = False  # hold BPF_ENABLE_STATS while running
    cache: bool = True  # the persisted cache of parsed objects and kernel BTF index
    cache_dir: Path | None = None  # its directory (None: $BPFORCH_CACHE_DIR or the default)
    source: Path | None = None  # the file it was read from (None: built from arguments)

    def with_overrides(self, **changes: object) -> ServiceConfig:
        """A copy with the given fields replaced (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[arg-type]


_API_VERSIONS = [API_VERSION, *DEPRECATED_API_VERSIONS]

CONFIG_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "urn:bpforch:schema:config:v1",
    "title": "bpforch service configuration (/etc/bpforch/config.yaml)",
    "description": "Read by `bpforch serve --config PATH` at start and again on SIGHUP. "
    "Relative paths are resolved against the directory of the configuration file.",
    "type": "object",
    "additionalProperties": False,
    "required": ["manifests"],
    "properties": {
        "apiVersion": {
            "description": f"Optional; when present it must be {API_VERSION} "
            f"({', '.join(DEPRECATED_API_VERSIONS)} is accepted too).",
            "enum": _API_VERSIONS,
        },
        "kind": {
            "description": "Optional; when present it must be ServiceConfig.",
            "const": "ServiceConfig",
        },
        "manifests": {
            "description": "Manifest files or directories (directories are read "
            "recursively: *.yaml, *.yml). Each is watched, together with every object file "
            "the manifests reference.",
            "type": "array",
            "minItems": 1,
            "uniqueItems": True,
            "items": {"type": "string", "minLength": 1},
        },
        "bpffs_root": {
            "description": "Directory on bpffs under which every owned map, program and link "
            "is pinned. Default: bpforch in the bpffs mount that /proc/self/mountinfo lists "
            "first (/sys/fs/bpf/bpforch on most hosts).",
            "type": "string",
            "minLength": 1,
        },
        "state_dir": {
            "description": "Directory of the apply record and of the daemon's status file "
            "(service.json). Same lifetime as the kernel objects: keep it under /run.",
            "type": "string",
            "minLength": 1,
            "default": str(DEFAULT_STATE_DIR),
        },
        "debounce_ms": {
            "description": "Quiet time after the last file change before reconciling; bursts "
            "of changes closer than this become one reconcile.",
            "type": "integer",
            "minimum": 0,
            "maximum": 60000,
            "default": 100,
        },
        "max_delay_ms": {
            "description": "Longest a continuous burst of changes may hold back a reconcile "
            "(must not be below debounce_ms).",
            "type": "integer",
            "minimum": 0,
            "maximum": 600000,
            "default": 1000,
        },
        "prune": {
            "description": "Remove owned collections that no manifest declares any more "
            "(only what bpforch's own record lists).",
            "type": "boolean",
            "default": False,
        },
        "detach_on_exit": {
            "description": "On SIGTERM/SIGINT remove every owned collection. By default "
            "programs stay attached and pinned, and a restarted daemon adopts them.",
            "type": "boolean",
            "default": False,
        },
        "metrics_address": {
            "description": "Serve Prometheus metrics over HTTP at HOST:PORT (e.g. "
            "127.0.0.1:9846, [::1]:9846, or :9846 for every address). Default: no endpoint.",
            "type": "string",
            "pattern": METRICS_ADDRESS_PATTERN,
        },
        "program_stats": {
            "description": "Hold BPF_ENABLE_STATS while the daemon runs, so that the kernel "
            "counts each program's runs and run time (bpforch_program_run_count, "
            "bpforch_program_run_time_ns; a few ns per program run).",
            "type": "boolean",
            "default": False,
        },
        "cache": {
            "description": "Keep parsed object files and the index of the kernel's BTF in "
            "cache_dir, shared across restarts and command-line runs (false: neither read "
            "nor write it; the command line's --no-cache). Read at start.",
            "type": "boolean",
            "default": True,
        },
        "cache_dir": {
            "description": "Directory of that cache: created mode 0700, used only while it "
            "is owned by the daemon's user with no group or other access. Default: "
            "$BPFORCH_CACHE_DIR, else /var/cache/bpforch.",
            "type": "string",
            "minLength": 1,
        },
        "log_format": {
            "description": "auto: human-readable on a terminal, key=value (logfmt) otherwise.",
            "enum": list(LOG_FORMATS),
            "default": "auto",
        },
        "log_level": {"enum": list(LOG_LEVELS), "default": "info"},
    },
}


def schema() -> Mapping[str, object]:
    """The configuration's JSON Schema (2020-12)."""
    return CONFIG_SCHEMA


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port): ``[::1]:9846`` gives ``::1``, ``:9846`` an empty host
    (every address). ValueError says what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{clip(text)} is not HOST:PORT (e.g. 127.0.0.1:9846)")
    if not 0 < int(port) < 65536:
        raise ValueError(f"port {port} is out of range (1-65535)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{clip(text)}: put an IPv6 address in brackets ([::1]:9846)")
    return host, int(port)


Marks = dict[tuple[str | int, ...], tuple[int, int]]


def _to_python(
    node: yaml.Node, path: tuple[str | int, ...], marks: Marks, key_marks: Marks
) -> object:
    """Convert a composed YAML node to plain values, remembering where each value (and
    each mapping key) is."""
    import yaml

    marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, object] = {}
        for key_node, value_node in node.value:
            key = str(_scalar(key_node))
            key_marks[(*path, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = _to_python(value_node, (*path, key), marks, key_marks)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(item, (*path, i), marks, key_marks) for i, item in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> object:
    import yaml

    constructor = yaml.constructor.SafeConstructor()
    try:
        return constructor.construct_object(node, deep=True)
    except ValueError as err:  # int() of more than 4,300 digits
        raise _BadValue("integer too large") from err


class _BadValue(Exception):
    """A scalar that cannot be turned into a value (the message says why)."""


def _last_path(marks: Marks) -> tuple[str | int, ...]:
    # dicts keep insertion order: the value being built when it failed was marked last
    return next(reversed(marks)) if marks else ()


def _last_mark(marks: Marks) -> tuple[int, int]:
    return marks[_last_path(marks)] if marks else (0, 0)


def _json_path(path: Sequence[str | int]) -> str:
    out = "$"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{clip(part)}"
    return out


def parse_config(text: str, file: Path) -> ServiceConfig:
    """Validate configuration text that was read from ``file``."""
    import jsonschema
    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
        what = getattr(err, "problem", None) or str(err)
        problem = ConfigProblem(file, line, col, "$", f"invalid yaml: {what}")
        raise ConfigError(f"invalid configuration: {problem}", (problem,)) from err
    except RecursionError as err:  # the pure-Python composer recurses per nesting level
        problem = ConfigProblem(file, 0, 0, "$", "invalid yaml: nested too deeply")
        raise ConfigError(f"invalid configuration: {problem}", (problem,)) from err
    marks: Marks = {}
    key_marks: Marks = {}
    try:
        data = {} if node is None else _to_python(node, (), marks, key_marks)
    except RecursionError as err:  # pragma: no cover - compose recurses deeper and fails first
        problem = ConfigProblem(file, 0, 0, "$", "invalid yaml: nested too deeply")
        raise ConfigError(f"invalid configuration: {problem}", (problem,)) from err
    except _BadValue as err:
        problem = ConfigProblem(file, *_last_mark(marks), _json_path(_last_path(marks)), str(err))
        raise ConfigError(f"invalid configuration: {problem}", (problem,)) from err
    validator = jsonschema.Draft202012Validator(schema())
    problems = []
    for error in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.path))):
        path = tuple(error.absolute_path)
        # jsonschema quotes the value in full: cut the message (the file is up to 1 MiB)
        message = clip(error.message[:1].lower() + error.message[1:], 200)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            # point at each unknown key rather than at the mapping that holds it
            known = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
            for key in error.instance:
                if key not in known:
                    line, col = key_marks.get((*path, key), (0, 0))
                    problems.append(
                        ConfigProblem(
                            file, line, col, _json_path((*path, key)), "unknown field (a typo?)"
                        )
                    )
            continue
        # the mark of the deepest path that exists (a missing key points at its parent)
        line, col = 0, 0
        for i in range(len(path), -1, -1):
            if path[:i] in marks:
                line, col = marks[path[:i]]
                break
        problems.append(ConfigProblem(file, line, col, _json_path(path), message))
    if not problems and isinstance(data, dict) and "metrics_address" in data:
        try:
            parse_address(str(data["metrics_address"]))
        except ValueError as err:
            line, col = marks.get(("metrics_address",), (0, 0))
            problems.append(ConfigProblem(file, line, col, "$.metrics_address", str(err)))
    if not problems and isinstance(data, dict):
        debounce = int(data.get("debounce_ms", 100))
        max_delay = int(data.get("max_delay_ms", max(1000, debounce)))
        if max_delay < debounce:
            line, col = marks.get(("max_delay_ms",), (0, 0))
            problems.append(
                ConfigProblem(
                    file,
                    line,
                    col,
                    "$.max_delay_ms",
                    f"{max_delay} is below debounce_ms {debounce} (raise it or leave it out)",
                )
            )
    if problems:
        summary = str(problems[0])
        if len(problems) > 1:
            summary += f" (and {len(problems) - 1} more)"
        raise ConfigError(f"invalid configuration: {summary}", tuple(problems))
    assert isinstance(data, dict)
    base = file.parent

    def path_of(value: object) -> Path:
        p = Path(str(value)).expanduser()
        return p if p.is_absolute() else (base / p).absolute()

    debounce_ms = int(data.get("debounce_ms", 100))
    return ServiceConfig(
        manifests=tuple(path_of(m) for m in data["manifests"]),
        bpffs_root=path_of(data["bpffs_root"]) if "bpffs_root" in data else default_bpffs_root(),
        state_dir=path_of(data.get("state_dir", DEFAULT_STATE_DIR)),
        debounce_ms=debounce_ms,
        max_delay_ms=int(data.get("max_delay_ms", max(1000, debounce_ms))),
        prune=bool(data.get("prune", False)),
        detach_on_exit=bool(data.get("detach_on_exit", False)),
        log_format=str(data.get("log_format", "auto")),
        log_level=str(data.get("log_level", "info")),
        metrics_address=str(data["metrics_address"]) if "metrics_address" in data else None,
        program_stats=bool(data.get("program_stats", False)),
        cache=bool(data.get("cache", True)),
        cache_dir=path_of(data["cache_dir"]) if "cache_dir" in data else None,
        source=file,
    )


def load_config(file: Path = DEFAULT_CONFIG_PATH) -> ServiceConfig:
    """Read and validate a configuration file: a regular file of at most
    :data:`CONFIG_MAX` bytes (read without blocking)."""
    file = file.absolute()
    try:
        text = read_text(file, limit=CONFIG_MAX, what="a configuration")
    except (OSError, UnicodeDecodeError) as err:
        why = reason(err) if isinstance(err, OSError) else f"not UTF-8 text: {err.reason}"
        problem = ConfigProblem(file, 0, 0, "$", f"cannot read: {why}")
        hint = (
            "give a regular file"
            if isinstance(err, FileError) and err.errno != errno.EFBIG
            else "pass --config PATH or create it; see packaging/config.yaml"
        )
        raise ConfigError(f"cannot read configuration {file}: {why} ({hint})", (problem,)) from err
    return parse_config(text, file)
