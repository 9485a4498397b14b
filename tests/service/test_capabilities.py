"""Which capabilities the daemon needs: it runs as root with a reduced bounding set
(``setpriv --bounding-set``, so no CAP_DAC_OVERRIDE either) and applies real manifests.

Found (and asserted here): loading xdp/tc programs needs CAP_BPF + CAP_NET_ADMIN +
CAP_PERFMON (the example programs use pointer arithmetic that the verifier allows only with
CAP_PERFMON); tracepoints need CAP_BPF + CAP_PERFMON; cgroup links CAP_BPF + CAP_NET_ADMIN;
CAP_SYS_ADMIN only to enter another network namespace (a target with ``netns:``) — the same
XDP attachment made by a daemon running inside that namespace does without it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.reconcile import Reconciler
from tests.conftest import require_tool
from tests.netns import Cgroup, VethPair
from tests.service.helpers import NotifySocket

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[2]
THREE = ("bpf", "net_admin", "perfmon")


def _collection(obj: str, attach: str) -> str:
    return (
        "apiVersion: bpforch.dev/v1\nkind: Collection\nmetadata: {name: c}\n"
        f"spec:\n  object: {ROOT / 'bpf' / obj}\n  attach:\n    - {attach}\n"
    )


class Runner:
    def __init__(self, tmp: Path, pin_dir: Path) -> None:
        self.tmp, self.pin_dir = tmp, pin_dir
        self.n = 0

    def ready(self, manifest: str, caps: tuple[str, ...], netns: Path | None = None) -> bool:
        """Start ``serve`` with only ``caps`` in its bounding set; True if it became READY,
        False if its first reconcile was degraded (then nothing may be pinned)."""
        self.n += 1
        d = self.tmp / f"run{self.n}"
        (d / "m").mkdir(parents=True)
        (d / "m" / "c.yaml").write_text(manifest)
        root = self.pin_dir / f"root{self.n}"
        (d / "config.yaml").write_text(
            f"manifests: [m]\nbpffs_root: {root}\nstate_dir: state\nlog_format: logfmt\n"
        )
        notify = NotifySocket(d)  # a path: abstract sockets belong to a network namespace
        bounding = "-all" + "".join(f",+{c}" for c in caps)
        pre = ["nsenter", f"--net={netns}"] if netns is not None else []
        argv = [*pre, require_tool("setpriv"), f"--bounding-set={bounding}", "--inh-caps=-all"]
        argv += [sys.executable, "-m", "orchestrator", "serve", "--config", str(d / "config.yaml")]
        env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")}
        env["NOTIFY_SOCKET"] = notify.env_value
        with (d / "log").open("wb") as log:
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=log)
        try:
            assert notify.next(30)["STATUS"].startswith("starting")
            msg = notify.next(30)
        finally:
            proc.terminate()
            proc.wait(10)
            notify.close()
        ok = "READY" in msg
        if ok:
            Reconciler(bpffs_root=root, state_dir=d / "state").destroy()
        else:
            assert msg["STATUS"].startswith("degraded: "), msg
            assert not (root / "c").exists()  # nothing was applied
        shutil.rmtree(root, ignore_errors=True)
        return ok


@pytest.fixture
def runner(tmp_path: Path, pin_dir: Path) -> Iterator[Runner]:
    require_tool("nsenter")
    yield Runner(tmp_path, pin_dir)


def test_tracepoint_needs_bpf_and_perfmon(runner: Runner) -> None:
    m = _collection(
        "tp_counter.o",
        "{program: count_getppid, tracepoint: {group: syscalls, name: sys_enter_getppid}}",
    )
    assert runner.ready(m, ("bpf", "perfmon"))
    assert not runner.ready(m, ("bpf", "net_admin"))


def test_cgroup_needs_bpf_and_net_admin(runner: Runner, cgroup: Cgroup) -> None:
    m = _collection(
        "cgroup_egress.o",
        f"{{program: cg_egress, cgroup: {{path: {cgroup.path}, attach: egress}}}}",
    )
    assert runner.ready(m, ("bpf", "net_admin"))
    assert not runner.ready(m, ("bpf", "perfmon"))


def test_xdp_needs_three_and_sys_admin_only_to_enter_a_netns(
    runner: Runner, veth: VethPair
) -> None:
    b = veth.b
    in_ns = _collection("xdp_counter.o", f"{{program: xdp_count, xdp: {{interface: {b.name}}}}}")
    other_ns = _collection(
        "xdp_counter.o",
        f"{{program: xdp_count, xdp: {{interface: {b.name}, netns: {b.ns.path}}}}}",
    )
    # the daemon inside the namespace: no setns(), no CAP_SYS_ADMIN
    assert runner.ready(in_ns, THREE, netns=b.ns.path)
    assert not runner.ready(in_ns, ("bpf", "net_admin"), netns=b.ns.path)
    # a target in another namespace: setns() needs CAP_SYS_ADMIN
    assert not runner.ready(other_ns, THREE)
    assert runner.ready(other_ns, (*THREE, "sys_admin"))
