"""The real daemon (``python -m orchestrator serve|watch``) as a subprocess against the real
kernel, with a notify socket the test binds: the exact notification sequences, watch
latency, kill -9 under traffic with adoption, an event storm, the watchdog, detach on exit.
Every test has its own bpffs root (in a per-test pin dir), state dir and namespaces."""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.ebpf.link import Link
from orchestrator.manifest import load_manifests
from orchestrator.reconcile import Reconciler
from orchestrator.service.daemon_status import read_status
from tests.netns import NetNS, UdpReceiver, UdpStream, VethPair
from tests.service.helpers import NotifySocket
from tests.service.served import NAME, XDP_DROP, XDP_OBJ, XDP_PASS, Served, wait_for

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


def _link(served: Served) -> Link:
    links = list((served.bpffs_root / NAME / "links").iterdir())
    assert len(links) == 1, links
    return Link.from_pin(links[0])


def test_notify_sequence(served: Served, veth: VethPair) -> None:
    """start, a change, an invalid manifest, an invalid object, recovery, SIGHUP, stop."""
    served.attach = veth.b
    obj = served.tmp / "xdp_counter.o"  # a copy that the test can break like make would
    obj.write_bytes(XDP_OBJ.read_bytes())
    served.setup(version=1, obj=obj)
    served.start()
    assert served.next() == {"STATUS": "starting: 1 manifest path(s)"}
    assert served.next() == {"READY": "1", "STATUS": "ready: 1 collection applied, 1 changed"}
    assert served.run() == (XDP_PASS, 1)
    first_id = served.prog_id()
    with _link(served) as link:
        link_id = link.id
        assert link.program_id == first_id

    # a change: new program, same link, updated in place
    served.write(version=2, obj=obj)
    assert served.next() == {"STATUS": "ready: 1 collection applied, 1 changed"}
    assert served.run() == (XDP_PASS, 2)
    second_id = served.prog_id()
    assert second_id != first_id
    with _link(served) as link:
        assert (link.id, link.program_id) == (link_id, second_id)

    # an invalid manifest: degraded, with file:line:col, and the kernel untouched
    served.manifest.write_text(served.manifest.read_text().replace("version: 2", "version: x"))
    msg = served.next()
    assert msg["STATUS"].startswith(f"degraded: invalid manifest: {served.manifest}:"), msg
    line = next(
        n for n, t in enumerate(served.manifest.read_text().splitlines(), 1) if "version: x" in t
    )
    assert f"{served.manifest}:{line}:" in msg["STATUS"]
    assert served.prog_id() == second_id and served.run() == (XDP_PASS, 2)
    status = read_status(served.state_dir)
    assert status is not None and status.phase == "degraded" and status.alive
    assert status.reason == msg["STATUS"].removeprefix("degraded: ")

    # recovery, then a half-written object (as make leaves it): degraded, untouched
    served.write(version=3, obj=obj)
    assert served.next() == {"STATUS": "ready: 1 collection applied, 1 changed"}
    third_id = served.prog_id()
    obj.write_bytes(XDP_OBJ.read_bytes()[:1000])
    msg = served.next()
    assert msg["STATUS"].startswith("degraded: invalid manifest: "), msg
    assert str(obj) in msg["STATUS"]
    assert served.prog_id() == third_id and served.run() == (XDP_PASS, 3)
    obj.write_bytes(XDP_OBJ.read_bytes())  # the build finished: same object as before
    assert served.next() == {"STATUS": "ready: 1 collection applied, 0 changed"}
    assert served.prog_id() == third_id

    # SIGHUP: RELOADING=1 with CLOCK_MONOTONIC, then READY=1; nothing to change
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    served.signal(signal.SIGHUP)
    msg = served.next()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert list(msg) == ["RELOADING", "MONOTONIC_USEC", "STATUS"]
    assert msg["RELOADING"] == "1" and msg["STATUS"] == "reloading configuration"
    assert before <= int(msg["MONOTONIC_USEC"]) <= after
    assert served.next() == {"READY": "1", "STATUS": "ready: 1 collection applied, 0 changed"}
    assert served.prog_id() == third_id

    # stop: STOPPING=1, exit 0, the program stays attached and pinned and keeps counting
    served.signal(signal.SIGTERM)
    assert served.next() == {"STOPPING": "1", "STATUS": "stopping: programs stay attached"}
    assert served.proc.wait(10) == 0
    assert served.notify.quiet(0.1) == []
    assert served.prog_id() == third_id
    with _link(served) as link:
        assert (link.id, link.program_id) == (link_id, third_id)
    packets = served.counter(0)
    with UdpReceiver(veth.b, 9000) as rx:
        sock = veth.a.socket()
        try:
            for _ in range(5):
                sock.sendto(b"x", (veth.b.addr, 9000))
        finally:
            sock.close()
        assert rx.drain() == 5
    assert served.counter(0) == packets + 5
    status = read_status(served.state_dir)
    assert status is not None and status.phase == "stopped" and not status.alive
    assert status.collections == (NAME,)


def test_watch_latency_constant_edit(served: Served) -> None:
    """``bpforch watch``: edit the verdict constant, see the pinned program return it."""
    served.setup(verdict=XDP_PASS)
    served.start(verb="watch")
    assert served.next()["STATUS"].startswith("starting")
    assert served.next()["READY"] == "1"
    assert served.run()[0] == XDP_PASS
    pid = served.proc.pid
    served.write(verdict=XDP_DROP)
    took = wait_for(lambda: served.run()[0] == XDP_DROP, timeout=10)
    served.write(verdict=XDP_PASS, atomic=False)  # written in place this time
    took2 = wait_for(lambda: served.run()[0] == XDP_PASS, timeout=10)
    assert served.proc.pid == pid and served.proc.poll() is None  # no restart
    print(f"save -> new verdict live: {took * 1000:.0f} ms, {took2 * 1000:.0f} ms")
    assert served.stop() == 0


def test_kill9_under_traffic_then_adopt(served: Served, veth: VethPair) -> None:
    """kill -9 while packets flow through the XDP program: none is lost, and the restarted
    daemon adopts the program without reloading (same program and link ids)."""
    served.attach = veth.b
    served.setup()
    served.start()
    served.next()
    assert served.next()["READY"] == "1"
    prog_id = served.prog_id()
    with _link(served) as link:
        link_id = link.id
    with UdpReceiver(veth.b, 9100) as rx:
        stream = UdpStream(veth.a, veth.b, 9100).start()
        try:
            stream.wait_for(200)
            served.proc.kill()
            assert served.proc.wait(10) == -signal.SIGKILL
            seen = stream.sent
            stream.wait_for(seen + 200)  # traffic goes on with no daemon at all
            served.start()
            assert served.next() == {"STATUS": "starting: 1 manifest path(s)"}
            assert served.next() == {
                "READY": "1",
                "STATUS": "ready: 1 collection applied, 0 changed",
            }
            stream.wait_for(stream.sent + 200)
        finally:
            sent = stream.stop()
        received = rx.drain(0.2)
    assert received == sent, f"lost {sent - received} of {sent} packets"
    assert served.counter(0) == sent
    assert served.prog_id() == prog_id
    with _link(served) as link:
        assert (link.id, link.program_id) == (link_id, prog_id)
    assert served.stop() == 0


def test_storm_ends_in_final_state_with_bounded_reconciles(served: Served) -> None:
    served.debounce_ms, served.max_delay_ms = 100, 1000
    served.setup(version=0)
    served.start()
    served.next()
    assert served.next()["READY"] == "1"
    before = read_status(served.state_dir)
    assert before is not None and before.applies == 1
    start = time.monotonic()
    for i in range(1, 501):  # 500 writes in 2 s, half in place (readers can see them torn)
        served.write(version=i, atomic=i % 2 == 0)
        time.sleep(max(0.0, start + i * 0.004 - time.monotonic()))
    duration = time.monotonic() - start
    assert duration < 2.5
    wait_for(lambda: served.run() == (XDP_PASS, 500), timeout=10)
    served.notify.quiet(0.5)  # let any last reconcile finish
    after = read_status(served.state_dir)
    assert after is not None and after.phase == "ready"
    reconciles = after.reconciles - before.reconciles
    # at most one per max_delay window while the storm lasts, plus the final one
    bound = int(duration / (served.max_delay_ms / 1000)) + 2
    assert 1 <= reconciles <= bound, (reconciles, bound)
    # exactly the final state: the record's digest is the final manifest's
    desired = load_manifests([served.manifest])
    status = Reconciler(bpffs_root=served.bpffs_root, state_dir=served.state_dir).status()
    (coll,) = [c for c in status.collections if c.name == NAME]
    assert coll.digest == desired.collections[NAME].digest and coll.condition == "Ready"
    print(f"storm: {reconciles} reconciles ({after.applies - before.applies} applies)")
    assert served.stop() == 0


def test_watchdog_pings_at_half_of_watchdog_usec(served: Served) -> None:
    served.setup()
    served.start(env={"WATCHDOG_USEC": "600000"})
    served.next()
    assert served.next()["READY"] == "1"
    stamps: list[float] = []
    while len(stamps) < 4:
        msg = served.notify.next(5, skip_watchdog=False)
        assert msg == {"WATCHDOG": "1"}, msg
        stamps.append(time.monotonic())
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert all(0.2 <= g <= 0.4 for g in gaps), gaps
    assert served.stop() == 0


def test_detach_on_exit(served: Served, veth: VethPair) -> None:
    served.attach = veth.b
    served.setup()
    served.start("--detach-on-exit")
    served.next()
    assert served.next()["READY"] == "1"
    with _link(served) as link:
        link_id = link.id
    served.signal(signal.SIGTERM)
    assert served.next() == {"STOPPING": "1", "STATUS": "stopping: detaching every collection"}
    assert served.proc.wait(10) == 0
    assert not (served.bpffs_root / NAME).exists()
    with pytest.raises(Exception):  # noqa: B017 - any lookup error: the link is gone
        Link.from_id(link_id).close()


def test_serve_with_bad_config_exits_1(served: Served) -> None:
    served.setup()
    served.config.write_text("manifests: [m]\ndebounce_ms: soon\n")
    proc = served.start()
    assert proc.wait(30) == 1
    assert f"{served.config}:2:14: $.debounce_ms" in served.log.read_text()


def test_status_file_is_json(served: Served) -> None:
    served.setup()
    served.start()
    served.next()
    served.next()
    data = json.loads((served.state_dir / "service.json").read_text())
    assert data["pid"] == served.proc.pid and data["phase"] == "ready"
    assert data["collections"] == [NAME] and data["applies"] == 1
    assert str(served.manifest.parent) in data["watched"]
    assert os.stat(served.state_dir / "service.json").st_mode & 0o777 == 0o644
    assert served.stop() == 0


def test_configmap_swap_is_applied(served: Served) -> None:
    """A Kubernetes ConfigMap mount: ``xdp.yaml -> ..data/xdp.yaml``, ``..data`` a symlink
    to a timestamped directory that the kubelet swaps atomically."""
    from tests.service.served import manifest_text

    cm = served.tmp / "m"
    first = cm / "..2026_11_25_00_00_00.000000001"
    first.mkdir(parents=True)
    (first / "xdp.yaml").write_text(manifest_text(version=7))
    os.symlink(first.name, cm / "..data")
    os.symlink("..data/xdp.yaml", cm / "xdp.yaml")
    served.setup_config()
    served.start()
    served.next()
    assert served.next() == {"READY": "1", "STATUS": "ready: 1 collection applied, 1 changed"}
    assert served.run() == (XDP_PASS, 7)
    second = cm / "..2026_11_25_00_01_00.000000002"
    second.mkdir()
    (second / "xdp.yaml").write_text(manifest_text(version=8, verdict=XDP_DROP))
    os.symlink(second.name, cm / "..data_tmp")
    os.rename(cm / "..data_tmp", cm / "..data")
    for old in first.iterdir():
        old.unlink()
    first.rmdir()
    assert served.next() == {"STATUS": "ready: 1 collection applied, 1 changed"}
    assert served.run() == (XDP_DROP, 8)
    assert served.notify.quiet(0.3) == []  # one swap, one apply
    assert served.stop() == 0


def test_interface_that_appears_later_is_attached_by_a_retry(served: Served, netns: NetNS) -> None:
    """No file changes: the apply failed because the interface was missing, and the
    daemon's retry (after 1 s) attaches once it exists."""
    from tests.netns import VethEnd

    late = VethEnd(netns, "vlate0", 0, "", "")
    served.setup(attach=late)
    served.start()
    served.next()
    msg = served.next()
    assert msg["STATUS"].startswith("degraded: apply failed: "), msg
    assert "vlate0" in msg["STATUS"] and "READY" not in msg
    netns.ip("link", "add", "vlate0", "type", "veth", "peer", "name", "vlate1")
    netns.ip("link", "set", "dev", "vlate0", "up")
    assert served.next(10) == {"READY": "1", "STATUS": "ready: 1 collection applied, 1 changed"}
    with _link(served) as link:
        assert link.program_id == served.prog_id()
    assert served.stop() == 0
