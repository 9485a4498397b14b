"""``--cache-dir`` and ``--no-cache`` (global options), and ``cache``/``cache_dir`` in the
service configuration: where the persisted cache of parsed objects lives, and that turning
it off writes nothing."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.ebpf import diskcache
from orchestrator.service import cli as service_cli
from orchestrator.service.config import parse_config

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def test_cache_dir_holds_the_parsed_objects(tmp_path: Path) -> None:
    d = tmp_path / "cache"
    before = diskcache.for_kernel_btf()
    code, _, err = _run("--cache-dir", str(d), "validate", str(MANIFESTS))
    assert code == 0, err
    entries = [p for p in d.iterdir() if p.name.startswith("spec-")]
    assert entries  # one per object the manifests name
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    # a second run is served from there: same result
    code2, _out2, err2 = _run("--cache-dir", str(d), "validate", str(MANIFESTS))
    assert (code2, err2) == (0, "")
    assert diskcache.for_kernel_btf() is before  # the command's setting does not outlive it


def test_no_cache_writes_nothing(tmp_path: Path) -> None:
    d = tmp_path / "cache"
    code, _, err = _run("--cache-dir", str(d), "--no-cache", "validate", str(MANIFESTS))
    assert code == 0, err
    assert not d.exists()


def test_no_cache_writes_nothing_in_a_new_process(tmp_path: Path) -> None:
    d = tmp_path / "cache"
    env = dict(os.environ, BPFORCH_CACHE_DIR=str(d))
    argv = [sys.executable, "-m", "orchestrator", "--no-cache", "validate", str(MANIFESTS)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert not d.exists()
    proc = subprocess.run(argv[:3] + argv[4:], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert any(p.name.startswith("spec-") for p in d.iterdir())  # the default is on


def test_an_untrusted_cache_dir_warns_and_the_command_works(tmp_path: Path) -> None:
    d = tmp_path / "cache"
    d.mkdir(mode=0o777)
    d.chmod(0o777)
    code, _out, _err = _run("--cache-dir", str(d), "validate", str(MANIFESTS))
    assert code == 0
    assert list(d.iterdir()) == []


def test_default_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BPFORCH_CACHE_DIR")
    disk = service_cli.disk_cache(True, None)
    assert disk is not None and disk.path == Path("/var/cache/bpforch")
    # an unprivileged command may not write the default: no fault; the daemon must
    assert disk.quiet_denied is True
    disk = service_cli.disk_cache(True, None, daemon=True)
    assert disk is not None and disk.quiet_denied is False
    disk = service_cli.disk_cache(True, Path("/tmp/chosen"))
    assert disk is not None and disk.quiet_denied is False  # asked for: warned about
    monkeypatch.setenv("BPFORCH_CACHE_DIR", "/tmp/elsewhere")
    disk = service_cli.disk_cache(True, None)
    assert disk is not None and disk.path == Path("/tmp/elsewhere")
    assert disk.quiet_denied is False
    assert service_cli.disk_cache(False, Path("/x")) is None


def test_help_names_the_options() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert "--cache-dir DIR" in proc.stdout and "--no-cache" in proc.stdout


def test_service_config_cache_fields(tmp_path: Path) -> None:
    f = tmp_path / "config.yaml"
    c = parse_config("manifests: [m]\ncache: false\ncache_dir: c\n", f)
    assert c.cache is False and c.cache_dir == tmp_path / "c"
    c = parse_config("manifests: [m]\n", f)
    assert c.cache is True and c.cache_dir is None
    assert c.with_overrides(cache=False, cache_dir=None).cache is False


def test_service_config_rejects_a_bad_cache_field(tmp_path: Path) -> None:
    from orchestrator.service.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        parse_config("manifests: [m]\ncache: 3\n", tmp_path / "config.yaml")
    assert "$.cache" in str(info.value)
    with pytest.raises(ConfigError):
        parse_config("manifests: [m]\ncache_dir: ''\n", tmp_path / "config.yaml")
