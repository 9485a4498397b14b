"""The ``bpforch`` command line over the real kernel: verbs, exit codes, JSON output, and the
README's main job (``python -m orchestrator.demo``) run end to end."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import cli, ebpf
from orchestrator.service.daemon_status import (
    STATUS_FILE,
    DaemonStatus,
    process_start_time,
    write_status,
)
from tests.conftest import BPF_DIR, ROOT, require_tool
from tests.netns import CGROUP2_ROOT

TP_MANIFEST = f"""\
apiVersion: bpforch.dev/v1
kind: Collection
metadata:
  name: tp
spec:
  object: {BPF_DIR}/tp_counter.o
  constants: {{target_tgid: {os.getpid()}}}
  maps:
    calls: {{pin: true, preserve: true}}
  attach:
    - program: count_getppid
      tracepoint: {{group: syscalls, name: sys_enter_getppid}}
"""


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def where(pin_dir: Path, tmp_path: Path) -> list[str]:
    return ["--bpffs-root", str(pin_dir / "root"), "--state-dir", str(tmp_path / "state")]


def test_validate_ok_and_json(tmp_path: Path) -> None:
    (tmp_path / "tp.yaml").write_text(TP_MANIFEST)
    code, out, _ = run_cli("validate", str(tmp_path))
    assert code == cli.EXIT_OK
    assert out.startswith("valid: 1 collection in 1 file (tp)")
    code, out, _ = run_cli("validate", "-o", "json", str(tmp_path))
    data = json.loads(out)
    assert code == 0 and data["valid"] is True
    assert data["collections"]["tp"]["object"] == str(BPF_DIR / "tp_counter.o")
    assert len(data["collections"]["tp"]["digest"]) == 64


def test_validate_errors_name_file_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(TP_MANIFEST.replace("calls: {pin", "calls: {pni"))
    code, out, err = run_cli("validate", str(tmp_path))
    assert code == cli.EXIT_ERROR and out == ""
    assert f"{bad}:9:" in err
    assert "spec.maps.calls" in err and "pni" in err
    assert "1 problem found, nothing was changed" in err
    code, out, _ = run_cli("validate", "--output", "json", str(tmp_path))
    data = json.loads(out)
    assert code == 1 and data["valid"] is False
    [problem] = data["problems"]
    assert problem["file"] == str(bad) and problem["line"] == 9
    assert problem["field"].startswith("spec.maps.calls")


def test_validate_missing_path(tmp_path: Path) -> None:
    code, _, err = run_cli("validate", str(tmp_path / "nope"))
    assert code == cli.EXIT_ERROR
    assert str(tmp_path / "nope") in err


@pytest.mark.kernel
def test_plan_apply_status_destroy(tmp_path: Path, where: list[str]) -> None:
    manifests = tmp_path / "m"
    manifests.mkdir()
    (manifests / "tp.yaml").write_text(TP_MANIFEST)

    code, out, _ = run_cli("plan", str(manifests), *where)
    assert code == cli.EXIT_CHANGES
    assert "+ collection tp" in out and "Plan: " in out and "to add" in out
    code, out, _ = run_cli("plan", "-o", "json", str(manifests), *where)
    assert code == cli.EXIT_CHANGES and json.loads(out)["has_changes"] is True

    code, out, _ = run_cli("apply", str(manifests), *where)
    assert code == cli.EXIT_OK, out
    assert "Apply complete!" in out

    for _ in range(7):
        os.getppid()
    code, out, _ = run_cli("status", "-o", "json", *where)
    assert code == 0
    [coll] = json.loads(out)["collections"]
    assert coll["name"] == "tp" and coll["condition"] == "Ready"
    calls = next(m for m in coll["maps"] if m["name"] == "calls")
    with ebpf.Map.from_pin(calls["pin"]) as m:
        assert m[0] == 7  # only this process is counted (target_tgid)

    code, out, _ = run_cli("plan", str(manifests), *where)
    assert code == cli.EXIT_OK
    assert "No changes." in out
    code, out, _ = run_cli("status", *where)
    assert code == 0 and out.startswith("tp: Ready (generation 1")
    code, _, err = run_cli("status", "nope", *where)
    assert code == cli.EXIT_ERROR and "not applied: nope" in err

    code, out, _ = run_cli("destroy", "tp", *where)
    assert code == 0 and "- collection tp" in out
    code, out, _ = run_cli("status", *where)
    assert out.strip() == "No collections applied."
    assert not Path(calls["pin"]).exists()


@pytest.mark.kernel
def test_plan_problems_exit_1(tmp_path: Path, where: list[str]) -> None:
    (tmp_path / "x.yaml").write_text(
        TP_MANIFEST.replace(
            "tracepoint: {group: syscalls, name: sys_enter_getppid}",
            "xdp: {interface: veth0, netns: bpforch-test-no-such-ns}",
        )
    )
    code, out, err = run_cli("plan", str(tmp_path), *where)
    # an xdp attachment of a tracepoint program is a validation problem
    assert code == cli.EXIT_ERROR
    assert "spec.attach[0]" in err and out == ""


@pytest.mark.kernel
def test_apply_refuses_missing_target_and_changes_nothing(tmp_path: Path, where: list[str]) -> None:
    (tmp_path / "x.yaml").write_text(
        TP_MANIFEST.replace("tp_counter.o", "cgroup_egress.o")
        .replace("constants: {target_tgid: " + str(os.getpid()) + "}", "")
        .replace("calls:", "egress_stats:")
        .replace("count_getppid", "cg_egress")
        .replace(
            "tracepoint: {group: syscalls, name: sys_enter_getppid}",
            "cgroup: {path: bpforch-test-missing, attach: egress}",
        )
    )
    code, out, err = run_cli("apply", str(tmp_path), *where)
    assert code == cli.EXIT_ERROR
    assert f"cgroup {CGROUP2_ROOT / 'bpforch-test-missing'} does not exist" in err
    assert "nothing was changed" in err
    code, out, _ = run_cli("status", *where)
    assert out.strip() == "No collections applied."


def test_destroy_needs_names_or_all(where: list[str]) -> None:
    code, _, err = run_cli("destroy", *where)
    assert code == cli.EXIT_ERROR and "--all" in err
    code, _, err = run_cli("destroy", "a", "--all", *where)
    assert code == cli.EXIT_ERROR and "not both" in err


def test_entry_points() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "--version"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0 and proc.stdout.startswith("bpforch ")
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "frobnicate"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


@pytest.mark.kernel
def test_main_job(pin_dir: Path, tmp_path: Path) -> None:
    """The README's main job, exactly as a user runs it (with a private root)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.demo",
            "--bpffs-root",
            str(pin_dir / "root"),
            "--state-dir",
            str(tmp_path / "state"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    counters = {
        line.split()[1]: int(line.split()[0])
        for line in proc.stdout.splitlines()
        if line.startswith("  ") and line.split()[0].isdigit()
    }
    assert counters["tc-filter/stats[1]"] == 20  # every datagram to the blocked port dropped
    assert counters["tc-filter/stats[0]"] >= 110  # 100 + 10 from the cgroup (+ ARP)
    assert counters["xdp-counter/counters[0]"] >= 130
    assert counters["xdp-counter/counters[2]"] == 1  # the manifest's `version`
    assert counters["cgroup-egress/egress_stats[0]"] == 10
    assert counters["tp-counter/calls[0]"] >= 50
    assert counters["shared-owner/shared_stats[0]"] >= 50  # getpid
    assert counters["shared-owner/shared_stats[1]"] >= 50  # gettid, through the shared map
    assert "No changes. The kernel matches the manifests." in proc.stdout
    assert "Plan: 0 to add, 0 to change, 20 to destroy." in proc.stdout
    assert not (pin_dir / "root").exists()  # destroyed, and the empty root removed
    assert not Path("/var/run/netns/bpforch-demo").exists()


def test_status_shows_the_daemons_live_view(where: list[str]) -> None:
    state_dir = Path(where[3])
    code, out, _ = run_cli("status", "-o", "json", *where)
    assert code == 0 and json.loads(out)["daemon"] is None
    me = DaemonStatus(
        pid=os.getpid(),
        pid_start=process_start_time(os.getpid()) or 0,
        phase="degraded",
        reason="invalid manifest: m.yaml:3:1: kind: unknown",
    )
    write_status(state_dir, me)
    code, out, _ = run_cli("status", *where)
    assert code == 0
    assert out.splitlines()[0].startswith(f"daemon: degraded (pid {os.getpid()})")
    assert "m.yaml:3:1" in out.splitlines()[0]
    data = json.loads(run_cli("status", "-o", "json", *where)[1])
    assert data["daemon"]["phase"] == "degraded" and data["daemon"]["alive"] is True


def test_status_survives_a_corrupt_daemon_file(where: list[str]) -> None:
    state_dir = Path(where[3])
    state_dir.mkdir(parents=True)
    (state_dir / STATUS_FILE).write_text("{not json")
    code, out, err = run_cli("status", *where)
    assert code == 0 and out.strip() == "No collections applied."
    assert "warning: daemon status" in err and str(state_dir) in err


def test_validate_needs_no_privileges() -> None:
    """`bpforch validate` reads YAML and objects only: it works with no capability at all
    (an empty bounding set, so even uid 0 cannot call bpf())."""
    setpriv = require_tool("setpriv")
    argv = [setpriv, "--bounding-set=-all", "--inh-caps=-all"]
    probe = subprocess.run(
        [*argv, "grep", "CapEff", "/proc/self/status"], capture_output=True, text=True
    )
    assert probe.stdout.split() == ["CapEff:", "0000000000000000"]
    proc = subprocess.run(
        [*argv, sys.executable, "-m", "orchestrator", "validate", str(ROOT / "manifests")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("valid: 6 collections in 5 files")


@pytest.mark.kernel
def test_dry_run_and_refresh_only(tmp_path: Path, where: list[str]) -> None:
    manifests = tmp_path / "m"
    manifests.mkdir()
    (manifests / "tp.yaml").write_text(TP_MANIFEST)
    code, out, _ = run_cli("apply", "--dry-run", str(manifests), *where)
    assert code == 0 and "+ collection tp" in out and "Dry run: nothing was changed." in out
    code, out, _ = run_cli("status", *where)
    assert out.strip() == "No collections applied."

    assert run_cli("apply", str(manifests), *where)[0] == 0
    code, out, _ = run_cli("plan", "--refresh-only", str(manifests), *where)
    assert code == cli.EXIT_OK and "No drift" in out

    status = json.loads(run_cli("status", "-o", "json", *where)[1])
    [prog] = status["collections"][0]["programs"]
    pins = [p for p in Path(where[1], "tp").rglob("*") if p.is_file() and "progs" in p.parts]
    assert pins, "the program is pinned under the collection"
    for pin in pins:
        pin.unlink()
    code, out, _ = run_cli("plan", "--refresh-only", str(manifests), *where)
    assert code == cli.EXIT_CHANGES
    assert f"drift: tp: program {prog['name']}" in out and "the next apply repairs it" in out
    code, out, _ = run_cli("plan", "--refresh-only", "-o", "json", str(manifests), *where)
    drift = json.loads(out)["drift"]
    assert code == 2 and drift[0]["collection"] == "tp" and drift[0]["kind"] == "program"
    # a selector: only the drift of the collections it selects (tp has no labels)
    code, out, _ = run_cli("plan", "--refresh-only", "-l", "team", str(manifests), *where)
    assert code == cli.EXIT_OK and "No drift" in out
    code, out, _ = run_cli("plan", "--refresh-only", "-l", "!team", str(manifests), *where)
    assert code == cli.EXIT_CHANGES and "drift: tp: program" in out

    assert run_cli("apply", str(manifests), *where)[0] == 0  # repairs the drift
    assert run_cli("plan", "--refresh-only", str(manifests), *where)[0] == cli.EXIT_OK
    assert run_cli("destroy", "--all", *where)[0] == 0


def test_interrupt_exits_130(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def interrupted(*_: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_validate", interrupted)
    code, _, err = run_cli("validate", str(tmp_path))
    assert code == 130 and err.strip() == "interrupted"


@pytest.mark.kernel
def test_ownership_in_the_cli(tmp_path: Path, pin_dir: Path, where: list[str]) -> None:
    """Foreign entries and adopted collections are shown by plan and status; a second state
    directory on the root is an error naming both (exit 1)."""
    manifests = tmp_path / "m"
    manifests.mkdir()
    (manifests / "tp.yaml").write_text(TP_MANIFEST)
    assert run_cli("apply", str(manifests), *where)[0] == 0
    root, state_dir = Path(where[1]), Path(where[3])
    evil = root / "_staging-1-evil"
    (pin_dir / "elsewhere").mkdir()
    evil.symlink_to(pin_dir / "elsewhere")
    line = f"foreign: {evil}: symlink to {pin_dir / 'elsewhere'} (not bpforch's: "
    code, out, _ = run_cli("status", *where)
    assert code == 0 and line + "never followed, changed or removed)" in out.splitlines()
    code, out, _ = run_cli("plan", str(manifests), *where)
    assert code == 0 and out.splitlines()[1:] == [line + "left alone)"]
    data = json.loads(run_cli("status", "-o", "json", *where)[1])
    assert data["foreign"] == [
        {"path": str(evil), "what": f"symlink to {pin_dir / 'elsewhere'}", "collection": ""}
    ]
    other = tmp_path / "other"
    code, _, err = run_cli("status", "--bpffs-root", str(root), "--state-dir", str(other))
    assert code == cli.EXIT_ERROR
    assert err.startswith(
        f"error: bpffs root {root} belongs to state dir {os.path.realpath(state_dir)}, not "
        f"{os.path.realpath(other)}"
    )
    (state_dir / "state.json").unlink()
    code, out, _ = run_cli("status", *where)
    assert code == 0 and out.startswith("tp: Ready (generation 1")
    assert "adopted: tp (no record listed it: rebuilt from its ownership marker; the next " in out
    assert json.loads(run_cli("status", "-o", "json", *where)[1])["adopted"] == ["tp"]
    code, out, _ = run_cli("apply", str(manifests), *where)
    assert code == 0 and "adopted: tp (no record listed it: rebuilt from its marker)" in out
    assert json.loads(run_cli("status", "-o", "json", *where)[1])["adopted"] == []
    assert run_cli("destroy", "--all", *where)[0] == 0
    evil.unlink()
    assert os.listdir(root) == []


@pytest.mark.kernel
def test_a_tree_newer_than_the_record_is_recovered(tmp_path: Path, where: list[str]) -> None:
    """An apply that put its tree in place and died before writing the record (simulated:
    the earlier record written back) leaves a later generation than recorded: status and
    plan say so, and the next apply records what the tree's marker says."""
    manifests = tmp_path / "m"
    manifests.mkdir()
    (manifests / "tp.yaml").write_text(TP_MANIFEST)
    assert run_cli("apply", str(manifests), *where)[0] == 0
    record = Path(where[3]) / "state.json"
    first = record.read_bytes()
    changed = TP_MANIFEST.replace(f"target_tgid: {os.getpid()}", f"target_tgid: {os.getpid() + 1}")
    (manifests / "tp.yaml").write_text(changed)
    assert run_cli("apply", str(manifests), *where)[0] == 0
    record.write_bytes(first)
    code, out, _ = run_cli("status", *where)
    assert code == 0 and out.startswith("tp: Ready (generation 2"), out
    assert (
        "recovered: tp (an apply was killed after putting its tree in place, before writing "
        "the record: what the tree holds is read from its ownership marker; the next apply "
        "records it)"
    ) in out.splitlines(), out
    assert json.loads(run_cli("status", "-o", "json", *where)[1])["recovered"] == ["tp"]
    code, out, _ = run_cli("plan", str(manifests), *where)
    assert code == 0 and out.splitlines() == [
        "No changes. The kernel matches the manifests.",
        "recovered: tp (an apply was killed after putting its tree in place, before writing "
        "the record: what the tree holds is read from its ownership marker)",
    ], out
    assert run_cli("apply", str(manifests), *where)[0] == 0
    assert json.loads(run_cli("status", "-o", "json", *where)[1])["recovered"] == []
    assert json.loads(record.read_text())["collections"]["tp"]["generation"] == 2
    assert run_cli("destroy", "--all", *where)[0] == 0


def test_a_deprecated_api_version_is_a_warning(tmp_path: Path) -> None:
    (tmp_path / "tp.yaml").write_text(TP_MANIFEST.replace("bpforch.dev/v1", "bpforch/v1"))
    code, out, err = run_cli("validate", str(tmp_path))
    assert code == cli.EXIT_OK and out.startswith("valid: 1 collection")
    assert err == (
        f"warning: {tmp_path / 'tp.yaml'}:1:13: apiVersion: bpforch/v1 is deprecated "
        "(write apiVersion: bpforch.dev/v1; it means the same)\n"
    )
    code, out, err = run_cli("validate", "-o", "json", str(tmp_path))
    assert json.loads(out)["warnings"][0]["message"] == "bpforch/v1 is deprecated"
