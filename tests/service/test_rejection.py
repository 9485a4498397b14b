"""A verifier rejection in the daemon: the degraded reason (STATUS=, the status file and
``bpforch status``) is the same one-line summary the CLI prints, and the live generation
stays."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import cli
from orchestrator.service.daemon_status import read_status
from tests.service.helpers import NotifySocket, replace_file
from tests.service.served import NAME, XDP_PASS, Served

pytestmark = pytest.mark.kernel

BROKEN = Path(__file__).resolve().parents[2] / "bpf" / "broken" / "null_map_value.o"
SUMMARY = (
    "program null_map_value: null_map_value.c:20: return *v ? XDP_PASS : XDP_DROP; -- R0 "
    "invalid mem access 'map_value_or_null': a map lookup can return NULL; check the pointer "
    "before using it"
)


@pytest.fixture
def served(tmp_path: Path, pin_dir: Path) -> Iterator[Served]:
    notify = NotifySocket(tmp_path)
    s = Served(tmp_path, pin_dir / "root", notify)
    try:
        yield s
    finally:
        s.cleanup()
        notify.close()


def test_degraded_reason_is_the_rejection_summary(served: Served) -> None:
    served.setup(version=1)
    served.start()
    assert served.next()["STATUS"].startswith("starting")
    assert served.next()["STATUS"] == "ready: 1 collection applied, 1 changed"
    live = served.prog_id()

    replace_file(
        served.manifest,
        f"apiVersion: bpforch.dev/v1\nkind: Collection\nmetadata:\n  name: {NAME}\n"
        f"spec:\n  object: {BROKEN}\n",
    )
    msg = served.next()
    status = msg["STATUS"]
    assert status.startswith(f"degraded: apply failed: collection {NAME} ("), status
    assert f"): {SUMMARY} (nothing was changed: the previous generation is live)" in status
    assert "\n" not in status
    daemon = read_status(served.state_dir)
    assert daemon is not None and daemon.reason == status.removeprefix("degraded: ")
    out, err = io.StringIO(), io.StringIO()
    where = ["--bpffs-root", str(served.bpffs_root), "--state-dir", str(served.state_dir)]
    assert cli.main(["status", *where], out, err) == 0
    assert SUMMARY in out.getvalue().splitlines()[0]
    # the previous generation is untouched and still runs
    assert served.prog_id() == live and served.run() == (XDP_PASS, 1)
