"""The shipped systemd unit passes ``systemd-analyze verify`` and says what it must."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "bpforch.service"


def _unit() -> dict[str, dict[str, list[str]]]:
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out[section] = {}
            continue
        key, _, value = line.partition("=")
        out[section].setdefault(key, []).append(value)
    return out


def _verify(path: Path) -> subprocess.CompletedProcess[str]:
    tool = require_tool("systemd-analyze")
    return subprocess.run(
        [tool, "verify", "--man=no", str(path)], capture_output=True, text=True, timeout=60
    )


def test_unit_verifies(tmp_path: Path) -> None:
    exec_start = _unit()["Service"]["ExecStart"][0].split()[0]
    if Path(exec_start).exists():  # bpforch installed system-wide: verify the file as shipped
        proc = _verify(UNIT)
        assert proc.returncode == 0, proc.stderr
        return
    # Not installed here: the only complaint about the shipped file is the missing binary ...
    proc = _verify(UNIT)
    problems = [line for line in proc.stderr.splitlines() if line.strip()]
    assert problems == [
        f"bpforch.service: Command {exec_start} is not executable: No such file or directory"
    ], proc.stderr
    # ... and with the entry point of this checkout's environment in its place, it passes.
    entry = Path(sys.executable).parent / "bpforch"
    assert entry.exists() or shutil.which("bpforch"), "pip install -e . installs bpforch"
    copy = tmp_path / "bpforch.service"
    copy.write_text(UNIT.read_text().replace(f"ExecStart={exec_start} ", f"ExecStart={entry} "))
    proc = _verify(copy)
    assert proc.returncode == 0, proc.stderr


def test_unit_contents() -> None:
    unit = _unit()
    service = unit["Service"]
    assert service["Type"] == ["notify"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["ExecStart"][0].endswith(" serve --config /etc/bpforch/config.yaml")
    assert service["RuntimeDirectory"] == ["bpforch"]
    # the default cache_dir, writable under ProtectSystem=strict, private as bpforch wants
    assert service["CacheDirectory"] == ["bpforch"]
    assert service["CacheDirectoryMode"] == ["0700"]
    assert service["WatchdogSec"] == ["30s"]
    assert set(service["CapabilityBoundingSet"][0].split()) == {
        "CAP_BPF",
        "CAP_NET_ADMIN",
        "CAP_PERFMON",
        "CAP_SYS_ADMIN",
    }
    assert service["ProtectSystem"] == ["strict"]
    assert service["ReadWritePaths"] == ["/sys/fs/bpf"]
    assert service["SystemCallFilter"] == ["@system-service bpf perf_event_open"]
    assert "sys-fs-bpf.mount" in unit["Unit"]["After"][0].split()
    # the state directory of the example configuration is the unit's RuntimeDirectory
    from orchestrator.service.config import load_config

    assert load_config(ROOT / "packaging" / "config.yaml").state_dir == Path("/run/bpforch")
