"""The wheel as a user gets it: built once from the sources, installed with pip into a fresh
virtualenv (dependencies from the wheelhouse .ci/setup fills, so no network), and run from a
directory that is not the source checkout. Nothing may come from the checkout: the schemas,
the demo's manifests and objects are package data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator import __version__, schemas
from tests.conftest import ROOT
from tests.netns import CGROUP2_MOUNT
from tests.wheel import WHEELHOUSE, install_wheel


@dataclass(frozen=True)
class Installed:
    venv: Path
    site: Path  # its site-packages
    elsewhere: Path  # an empty directory to run from

    def bpforch(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.venv / "bin" / "bpforch"), *argv],
            capture_output=True,
            text=True,
            cwd=self.elsewhere,
            timeout=timeout,
            env=_env(),
        )


def _env() -> dict[str, str]:
    """The environment without anything that points back at the checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    if not WHEELHOUSE.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"no wheelhouse at {WHEELHOUSE} (.ci/setup makes it)")
        pytest.skip(f"no wheelhouse at {WHEELHOUSE} (run .ci/setup)")
    base = tmp_path_factory.mktemp("wheel")
    venv = install_wheel(ROOT, base, WHEELHOUSE)  # the sources' copy removed: none read
    (wheel,) = (base / "dist").glob("bpforch-*.whl")
    assert wheel.name == f"bpforch-{__version__}-py3-none-any.whl"
    (site,) = (venv / "lib").glob("python3*/site-packages")
    (base / "elsewhere").mkdir()
    yield Installed(venv, site, base / "elsewhere")


def test_it_runs_from_another_directory(installed: Installed) -> None:
    for flag in ("-V", "--version"):
        proc = installed.bpforch(flag)
        assert (proc.returncode, proc.stdout) == (0, f"bpforch {__version__}\n")
    proc = subprocess.run(
        [
            str(installed.venv / "bin" / "python"),
            "-c",
            "import orchestrator; print(orchestrator.__file__)",
        ],
        capture_output=True,
        text=True,
        cwd=installed.elsewhere,
        env=_env(),
    )
    assert Path(proc.stdout.strip()) == installed.site / "orchestrator" / "__init__.py"
    dist = next(installed.site.glob("bpforch-*.dist-info"))
    assert (dist / "licenses" / "LICENSE").read_text() == (ROOT / "LICENSE").read_text()
    metadata = (dist / "METADATA").read_text()
    assert "License-Expression: Apache-2.0" in metadata


@pytest.mark.parametrize("name", schemas.NAMES)
def test_the_schemas_are_package_data(installed: Installed, name: str) -> None:
    proc = installed.bpforch("schema", name)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == schemas.render(name)


def test_the_demo_ships_its_manifests_and_objects(installed: Installed) -> None:
    demo = installed.site / "orchestrator" / "_demo"
    proc = installed.bpforch("validate", "-o", "json", str(demo / "manifests"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    collections = json.loads(proc.stdout)["collections"]
    assert sorted(collections) == [
        "cgroup-egress",
        "shared-owner",
        "shared-user",
        "tc-filter",
        "tp-counter",
        "xdp-counter",
    ]
    for c in collections.values():
        assert Path(c["object"]).parent == demo / "bpf"
        assert (
            Path(c["object"]).read_bytes() == (ROOT / "bpf" / Path(c["object"]).name).read_bytes()
        )


def test_completion_from_the_wheel(installed: Installed) -> None:
    proc = installed.bpforch("completion", "bash")
    assert proc.returncode == 0 and "complete -F _bpforch bpforch" in proc.stdout


@pytest.mark.kernel
def test_serve_finds_its_config_schema(installed: Installed, pin_dir: Path) -> None:
    """``bpforch serve`` validates its configuration against the schema it carries, applies,
    and reports ready in its status file."""
    work = installed.elsewhere / "serve"
    (work / "manifests").mkdir(parents=True)
    demo = installed.site / "orchestrator" / "_demo"
    (work / "manifests" / "tp.yaml").write_text(
        (demo / "manifests" / "tp-counter.yaml").read_text().replace("../bpf/", f"{demo / 'bpf'}/")
    )
    (work / "config.yaml").write_text(
        f"manifests: [manifests]\nbpffs_root: {pin_dir / 'root'}\nstate_dir: state\n"
        "log_format: logfmt\n"
    )
    proc = installed.bpforch("serve", "--config", str(work / "bad.yaml"))
    assert (proc.returncode, proc.stderr) == (
        1,
        f"error: {work / 'bad.yaml'}: $: cannot read: no such file or directory\n",
    )
    (work / "bad.yaml").write_text("manifests: [m]\ndebounce_ms: soon\n")
    proc = installed.bpforch("serve", "--config", str(work / "bad.yaml"))
    assert proc.returncode == 1
    assert f"error: {work / 'bad.yaml'}:2:14: $.debounce_ms: 'soon' is not of type" in proc.stderr
    daemon = subprocess.Popen(
        [str(installed.venv / "bin" / "bpforch"), "serve", "--config", str(work / "config.yaml")],
        cwd=installed.elsewhere,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        status = work / "state" / "service.json"
        deadline = time.monotonic() + 30
        phase = ""
        while time.monotonic() < deadline and phase != "ready":
            time.sleep(0.05)
            if status.exists():
                phase = json.loads(status.read_text())["phase"]
        assert phase == "ready", daemon.stderr.read() if daemon.poll() is not None else phase
        assert (pin_dir / "root" / "tp-counter").is_dir()
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err
    proc = installed.bpforch(
        "destroy",
        "--all",
        "--bpffs-root",
        str(pin_dir / "root"),
        "--state-dir",
        str(work / "state"),
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.kernel
def test_the_demo_on_a_host_with_only_cgroup_v2(installed: Installed, pin_dir: Path) -> None:
    """``bpforch demo`` from the wheel, in a mount namespace laid out as current
    distributions are: cgroup v2 alone at /sys/fs/cgroup (this machine has the hybrid
    layout; tests/test_cli.py runs the demo on it)."""
    assert CGROUP2_MOUNT is not None
    cgroup_mounts = "/sys/fs/cgroup"
    state = installed.elsewhere / "demo-state"
    script = (
        f"umount -R {cgroup_mounts}\n"
        "mount -t cgroup2 none /sys/fs/cgroup\n"
        f"exec {installed.venv / 'bin' / 'bpforch'} demo --bpffs-root {pin_dir / 'root'} "
        f"--state-dir {state}\n"
    )
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-ec", script],
        capture_output=True,
        text=True,
        cwd=installed.elsewhere,
        env=_env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    counters = {
        line.split()[1]: int(line.split()[0])
        for line in proc.stdout.splitlines()
        if line.startswith("  ") and line.split()[0].isdigit()
    }
    assert counters["cgroup-egress/egress_stats[0]"] == 10  # the cgroup under /sys/fs/cgroup
    assert counters["tc-filter/stats[1]"] == 20
    assert "No changes. The kernel matches the manifests." in proc.stdout
    assert not (pin_dir / "root").exists()


def _code_identity(installed: Installed) -> tuple[str, bool]:
    """The installed bpforch's cache key for its code, and whether its RECORD made it."""
    script = (
        "import os; from orchestrator import __version__; from orchestrator.ebpf import diskcache"
        " as d; root = os.path.dirname(d.__file__);"
        " print(d.code_identity(), d._installed_record(root, __version__) is not None)"
    )
    proc = subprocess.run(
        [str(installed.venv / "bin" / "python"), "-c", script],
        capture_output=True,
        text=True,
        cwd=installed.elsewhere,
        timeout=60,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stderr
    identity, from_record = proc.stdout.split()
    return identity, from_record == "True"


def test_the_cache_key_of_an_installed_wheel_follows_its_record(installed: Installed) -> None:
    """Installed by pip, the persisted cache identifies the loader's code by the
    distribution's RECORD (one file read, not a stat per module): a RECORD that changes (a
    reinstall of other contents) is another key, the same RECORD the same key."""
    record = next(installed.site.glob("bpforch-*.dist-info")) / "RECORD"
    original = record.read_bytes()
    first, from_record = _code_identity(installed)
    assert from_record
    line = next(li for li in original.split(b"\n") if li.startswith(b"orchestrator/ebpf/spec.py,"))
    try:
        record.write_bytes(original.replace(line, line.replace(b"sha256=", b"sha256=X")))
        changed, _ = _code_identity(installed)
        assert changed != first
    finally:
        record.write_bytes(original)
    assert _code_identity(installed) == (first, True)


def test_nothing_was_written_into_site_packages(installed: Installed) -> None:
    """Run last in this module: no command wrote a file into the installed package (byte
    code caches aside)."""
    record = next(installed.site.glob("bpforch-*.dist-info")) / "RECORD"
    listed = {line.split(",", 1)[0] for line in record.read_text().splitlines()}
    present = {
        str(p.relative_to(installed.site))
        for p in (installed.site / "orchestrator").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert present <= listed, present - listed
