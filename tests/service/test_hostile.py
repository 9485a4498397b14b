"""The real daemon against special files: an object that is ``/dev/zero`` or a FIFO, a
manifest that is a FIFO. It used to grow to gigabytes (while saying ready), or block
forever and ignore SIGTERM. Now each is a degraded status naming the file, the live state
is kept, the daemon stays small, reconciles the next change and stops on SIGTERM."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.service.daemon_status import read_status
from tests.service.helpers import NotifySocket
from tests.service.served import NAME, XDP_PASS, Served

pytestmark = pytest.mark.kernel


@pytest.fixture
def served(tmp_path: Path, pin_dir: Path) -> Iterator[Served]:
    notify = NotifySocket(tmp_path)
    s = Served(tmp_path, pin_dir / "root", notify)
    try:
        yield s
    finally:
        s.cleanup()
        notify.close()


def rss_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmRSS")


def other(name: str, obj: str) -> str:
    return (
        f"apiVersion: bpforch.dev/v1\nkind: Collection\nmetadata: {{name: {name}}}\n"
        f"spec:\n  object: {obj}\n"
    )


@pytest.mark.parametrize("verb", ["serve", "watch"])
def test_special_files_degrade_and_the_daemon_keeps_going(served: Served, verb: str) -> None:
    served.setup(version=1)
    served.start(verb=verb)
    assert served.next() == {"STATUS": "starting: 1 manifest path(s)"}
    assert served.next()["STATUS"] == "ready: 1 collection applied, 1 changed"
    live = served.prog_id()
    m = served.manifest.parent

    # an object that is /dev/zero: refused from its type, not read
    (m / "zero.yaml").write_text(other("zero", "/dev/zero"))
    msg = served.next()
    assert msg["STATUS"].startswith(f"degraded: invalid manifest: {m / 'zero.yaml'}:5:11: "), msg
    assert "spec.object: cannot read object: /dev/zero: not a regular file" in msg["STATUS"]
    status = read_status(served.state_dir)
    assert status is not None and status.phase == "degraded" and status.alive
    assert any("/dev/zero: not a regular file" in p for p in status.problems)
    assert rss_mib(served.proc.pid) < 150
    assert served.prog_id() == live and served.run() == (XDP_PASS, 1)  # kept

    # an object that is a FIFO: refused, not opened
    fifo = served.tmp / "obj.o"
    os.mkfifo(fifo)
    os.replace(_written(m / ".tmp", other("zero", str(fifo))), m / "zero.yaml")
    msg = served.next()
    assert f"cannot read object: {fifo}: not a regular file (a fifo)" in msg["STATUS"], msg

    # a manifest that is a FIFO
    os.unlink(m / "zero.yaml")
    os.mkfifo(m / "pipe.yaml")
    msg = served.next()
    assert msg["STATUS"] == (
        f"degraded: invalid manifest: {m / 'pipe.yaml'}: not a regular file (a fifo) "
        "(only regular files are read)"
    ), msg

    # the loop still reconciles: the FIFO goes, a change is applied
    os.unlink(m / "pipe.yaml")
    assert served.next()["STATUS"].startswith("ready: 1 collection applied")
    served.write(version=2)
    assert served.next() == {"STATUS": "ready: 1 collection applied, 1 changed"}
    assert served.run() == (XDP_PASS, 2)

    # and stops on SIGTERM while a FIFO sits among the manifests
    os.mkfifo(m / "pipe.yaml")
    assert served.next()["STATUS"].startswith("degraded: ")
    served.signal(signal.SIGTERM)
    assert served.next()["STOPPING"] == "1"
    assert served.proc.wait(10) == 0
    assert (served.bpffs_root / NAME).exists()  # stopping leaves programs in place


def test_a_fifo_object_at_start_then_sigterm(served: Served) -> None:
    """Degraded from the first reconcile (no READY=1), and SIGTERM still stops it."""
    fifo = served.tmp / "obj.o"
    os.mkfifo(fifo)
    served.setup(obj=fifo)
    served.start()
    assert served.next() == {"STATUS": "starting: 1 manifest path(s)"}
    msg = served.next()
    assert "READY" not in msg and msg["STATUS"].startswith("degraded: invalid manifest: "), msg
    assert f"{fifo}: not a regular file (a fifo)" in msg["STATUS"]
    served.signal(signal.SIGTERM)
    assert served.proc.wait(10) == 0


def _written(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
