"""The configuration file: schema validation with file:line:col, defaults, paths; the
shipped example validates; logging formats; the status file."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import pytest

from orchestrator.ebpf.mounts import default_bpffs_root, find_mount
from orchestrator.service.config import (
    DEFAULT_BPFFS_ROOT,
    DEFAULT_STATE_DIR,
    ServiceConfig,
    load_config,
    parse_config,
)
from orchestrator.service.daemon_status import DaemonStatus, read_status, write_status
from orchestrator.service.errors import ConfigError
from orchestrator.service.logs import resolve_format, setup_logging

ROOT = Path(__file__).resolve().parents[2]
CFG = Path("/etc/bpforch/config.yaml")


def test_minimal_config_gets_defaults_and_resolves_relative_paths() -> None:
    c = parse_config("manifests: [manifests, /srv/m.yaml]\n", CFG)
    assert c == ServiceConfig(
        manifests=(Path("/etc/bpforch/manifests"), Path("/srv/m.yaml")),
        bpffs_root=DEFAULT_BPFFS_ROOT,
        state_dir=DEFAULT_STATE_DIR,
        debounce_ms=100,
        max_delay_ms=1000,
        source=CFG,
    )


def test_full_config() -> None:
    text = """\
apiVersion: bpforch.dev/v1
kind: ServiceConfig
manifests: [m]
bpffs_root: /sys/fs/bpf/x
state_dir: state
debounce_ms: 20
max_delay_ms: 20
prune: true
detach_on_exit: true
log_format: json
log_level: debug
"""
    c = parse_config(text, CFG)
    assert c.state_dir == Path("/etc/bpforch/state")
    assert (c.debounce_ms, c.max_delay_ms, c.prune, c.detach_on_exit) == (20, 20, True, True)
    assert (c.log_format, c.log_level) == ("json", "debug")


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("manifests: [m]\ndebounce: 5\n", "2:1: $.debounce", "unknown field"),
        ("manifests: [m]\ndebounce_ms: -1\n", "2:14: $.debounce_ms", "less than the minimum"),
        ("manifests: [m]\ndebounce_ms: fast\n", "2:14: $.debounce_ms", "is not of type"),
        ("manifests: []\n", "1:12: $.manifests", "should be non-empty"),
        ("manifests: [m, '']\n", "1:16: $.manifests[1]", "should be non-empty"),
        ("manifests: [m]\nlog_format: xml\n", "2:13: $.log_format", "is not one of"),
        ("manifests: [m]\nprune: yes please\n", "2:8: $.prune", "is not of type 'boolean'"),
        ("manifests: [m]\napiVersion: v2\n", "2:13: $.apiVersion", "is not one of"),
        ("bpffs_root: /x\n", "1:1: $", "'manifests' is a required property"),
        (
            "manifests: [m]\ndebounce_ms: 500\nmax_delay_ms: 100\n",
            "3:15: $.max_delay_ms",
            "below debounce_ms 500",
        ),
        ("manifests: [m\n", "2:1: $", "invalid yaml"),
        ("- just\n- a list\n", "1:1: $", "is not of type 'object'"),
    ],
)
def test_invalid_configs_name_file_line_column(text: str, where: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, CFG)
    first = str(info.value.problems[0])
    assert first.startswith(f"{CFG}:{where}: "), first
    assert message in first
    assert str(info.value).startswith("invalid configuration: ")


def test_every_problem_is_reported() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("manifests: 3\nfoo: 1\nlog_level: loud\n", CFG)
    assert {p.path for p in info.value.problems} == {"$.manifests", "$.foo", "$.log_level"}
    assert "(and 2 more)" in str(info.value)


def test_unreadable_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read configuration .*no such file"):
        load_config(tmp_path / "missing.yaml")


def test_shipped_example_config_is_valid() -> None:
    c = load_config(ROOT / "packaging" / "config.yaml")
    assert c.bpffs_root == DEFAULT_BPFFS_ROOT and c.state_dir == DEFAULT_STATE_DIR
    assert c.detach_on_exit is False


def test_with_overrides_ignores_none() -> None:
    c = ServiceConfig(manifests=(Path("/m"),))
    assert c.with_overrides(log_format=None, detach_on_exit=True).detach_on_exit is True
    assert c.with_overrides(log_format=None) == c


# ---------------------------------------------------------------------------- logging


def _log_line(fmt: str) -> str:
    stream = io.StringIO()
    setup_logging(fmt, "info", stream)
    logging.getLogger("orchestrator.service.test").info(
        "applied: %s", "2 collections", extra={"fields": {"file": "/m/a b.yaml", "line": 3}}
    )
    logging.getLogger("orchestrator.service.test").debug("hidden")
    setup_logging("logfmt", "warning", io.StringIO())  # detach the test stream
    return stream.getvalue()


def test_log_formats() -> None:
    human = _log_line("human")
    assert "info" in human and "applied: 2 collections (file=/m/a b.yaml line=3)" in human
    logfmt = _log_line("logfmt")
    assert logfmt.count("\n") == 1
    assert ' level=info logger=orchestrator.service.test msg="applied: 2 collections"' in logfmt
    assert 'file="/m/a b.yaml" line=3' in logfmt
    record = json.loads(_log_line("json"))
    assert record["msg"] == "applied: 2 collections" and record["line"] == 3
    assert record["level"] == "info" and record["file"] == "/m/a b.yaml"


def test_auto_format_is_human_on_a_tty_only() -> None:
    assert resolve_format("auto", io.StringIO()) == "logfmt"
    r, w = os.openpty()
    try:
        with os.fdopen(w, "w", closefd=False) as tty:
            assert resolve_format("auto", tty) == "human"
    finally:
        os.close(r)
        os.close(w)
    assert resolve_format("json", io.StringIO()) == "json"
    with pytest.raises(ValueError, match="unknown log format"):
        setup_logging("xml", "info", io.StringIO())


# ---------------------------------------------------------------------------- status file


def test_status_file_roundtrip_and_liveness(tmp_path: Path) -> None:
    assert read_status(tmp_path) is None
    from orchestrator.service.daemon_status import process_start_time

    me = DaemonStatus(
        pid=os.getpid(),
        pid_start=process_start_time(os.getpid()) or 0,
        phase="degraded",
        reason="invalid manifest: /m/a.yaml:3:1: x",
        collections=("a", "b"),
        reconciles=3,
    )
    write_status(tmp_path, me)
    got = read_status(tmp_path)
    assert got == me and got.alive and got.degraded
    assert oct((tmp_path / "service.json").stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir()] == ["service.json"]  # no temporary left
    stale = DaemonStatus(pid=os.getpid(), pid_start=me.pid_start + 1, phase="ready")
    write_status(tmp_path, stale)
    got = read_status(tmp_path)
    assert got is not None and not got.alive
    assert got.to_json()["alive"] is False


def test_schema_is_a_valid_2020_12_schema_and_matches_the_defaults() -> None:
    import jsonschema

    from orchestrator.service.config import schema

    s = schema()
    jsonschema.Draft202012Validator.check_schema(s)
    props = s["properties"]
    assert isinstance(props, dict)
    d = ServiceConfig(manifests=(Path("/m"),))
    for name in (
        "debounce_ms",
        "max_delay_ms",
        "prune",
        "detach_on_exit",
        "log_format",
        "log_level",
    ):
        assert props[name]["default"] == getattr(d, name), name
    assert props["state_dir"]["default"] == str(d.state_dir)
    # bpffs_root has no fixed default: it is bpforch under the bpffs mount that mountinfo
    # lists first (/sys/fs/bpf/bpforch on this machine)
    assert "default" not in props["bpffs_root"]
    assert "/proc/self/mountinfo" in props["bpffs_root"]["description"]
    assert parse_config("manifests: [m]\n", CFG).bpffs_root == default_bpffs_root()
    mount = find_mount("bpf")
    if mount is not None:
        assert default_bpffs_root() == mount / "bpforch"


def test_defaults_agree_with_the_reconciler() -> None:
    import orchestrator.reconcile as reconcile

    assert reconcile.DEFAULT_BPFFS_ROOT == DEFAULT_BPFFS_ROOT
    assert reconcile.DEFAULT_STATE_DIR == DEFAULT_STATE_DIR
