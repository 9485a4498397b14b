"""A real ``bpforch serve``/``watch`` subprocess for kernel tests: its own manifest dir,
config, bpffs root (inside a per-test pin dir), state dir and notify socket."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.ebpf import Map, Program
from tests.netns import VethEnd
from tests.service.helpers import NotifySocket, replace_file

ROOT = Path(__file__).resolve().parents[2]
XDP_OBJ = ROOT / "bpf" / "xdp_counter.o"
XDP_PASS, XDP_DROP = 2, 1
NAME = "xdp-a"


def manifest_text(
    *, version: int = 1, verdict: int = XDP_PASS, attach: VethEnd | None = None, obj: Path = XDP_OBJ
) -> str:
    text = f"""\
apiVersion: bpforch.dev/v1
kind: Collection
metadata:
  name: {NAME}
spec:
  object: {obj}
  constants:
    version: {version}
    verdict: {verdict}
  maps:
    counters: {{pin: true, preserve: true}}
"""
    if attach is not None:
        text += f"""\
  attach:
    - program: xdp_count
      xdp: {{interface: {attach.name}, netns: {attach.ns.path}}}
"""
    return text


@dataclass
class Served:
    tmp: Path
    bpffs_root: Path
    notify: NotifySocket
    attach: VethEnd | None = None
    debounce_ms: int = 50
    max_delay_ms: int = 1000
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        return self.tmp / "state"

    @property
    def manifest(self) -> Path:
        return self.tmp / "m" / "xdp.yaml"

    @property
    def config(self) -> Path:
        return self.tmp / "config.yaml"

    @property
    def log(self) -> Path:
        return self.tmp / "daemon.log"

    def setup(self, **manifest: Any) -> None:
        self.manifest.parent.mkdir(parents=True, exist_ok=True)
        self.write(**manifest)
        self.setup_config()

    def setup_config(self) -> None:
        self.config.write_text(
            f"manifests: [m]\nbpffs_root: {self.bpffs_root}\nstate_dir: state\n"
            f"debounce_ms: {self.debounce_ms}\nmax_delay_ms: {self.max_delay_ms}\n"
            "log_format: logfmt\n"
        )

    def write(self, *, atomic: bool = True, **kw: Any) -> None:
        kw.setdefault("attach", self.attach)
        text = manifest_text(**kw)
        if atomic:
            replace_file(self.manifest, text)
        else:
            self.manifest.write_text(text)

    def start(
        self, *argv: str, verb: str = "serve", env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        if verb == "serve":
            args = ["serve", "--config", str(self.config), *argv]
        else:
            args = [
                "watch",
                str(self.manifest.parent),
                "--bpffs-root",
                str(self.bpffs_root),
                "--state-dir",
                str(self.state_dir),
                "--debounce-ms",
                str(self.debounce_ms),
                *argv,
            ]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")}
        full_env["NOTIFY_SOCKET"] = self.notify.env_value
        full_env.update(env or {})
        with self.log.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "orchestrator", *args],
                cwd=ROOT,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self.procs.append(proc)
        return proc

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.procs[-1]

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def next(self, timeout: float = 30.0) -> dict[str, str]:
        try:
            return self.notify.next(timeout)
        except AssertionError as err:
            raise AssertionError(f"{err}\n--- daemon log:\n{self.log.read_text()}") from None

    def program(self) -> Program:
        return Program.from_pin(self.bpffs_root / NAME / "progs" / "xdp_count")

    def prog_id(self) -> int:
        with self.program() as p:
            return p.id

    def run(self) -> tuple[int, int]:
        """Run the pinned program once (BPF_PROG_TEST_RUN): its verdict, and the
        ``version`` constant it stored into counters[2]."""
        with self.program() as p:
            retval = p.test_run(data=bytes(64)).retval
        return retval, self.counter(2)

    def counter(self, index: int) -> int:
        with Map.from_pin(self.bpffs_root / NAME / "maps" / "counters") as m:
            value = m[index]
        assert isinstance(value, int)
        return value

    def stop(self, timeout: float = 10.0) -> int:
        self.signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        from orchestrator.reconcile import Reconciler

        with contextlib.suppress(Exception):
            Reconciler(bpffs_root=self.bpffs_root, state_dir=self.state_dir).destroy()


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> float:
    """Poll ``predicate()`` until true; the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s")
        time.sleep(0.002)
    return time.monotonic() - start
