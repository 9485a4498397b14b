"""The metrics endpoint of a real daemon (``bpforch watch``/``serve`` subprocess), scraped
over HTTP on 127.0.0.1 while UDP traffic flows across a veth pair through its XDP program;
its probes; a link detached by hand showing as drift; an invalid change as degraded."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.ebpf import Link
from tests.netns import UdpStream, VethPair
from tests.service.helpers import NotifySocket, replace_file
from tests.service.served import NAME, XDP_OBJ, Served

pytestmark = pytest.mark.kernel

METRICS = """\
  metrics:
    - {name: test_xdp_packets, type: counter, map: counters, key: 0, help: packets}
    - {name: test_xdp_version, type: gauge, map: counters, key: 2}
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(base: str) -> Samples:
    code, text = _get(f"{base}/metrics")
    assert code == 200, text
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _until(check: object, base: str, timeout: float = 30.0) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        got = scrape(base)
        if callable(check) and check(got):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; last scrape: {got}")
        time.sleep(0.05)


@pytest.fixture
def served(tmp_path: Path, pin_dir: Path, veth: VethPair) -> Iterator[Served]:
    notify = NotifySocket(tmp_path)
    s = Served(tmp_path, pin_dir / "root", notify, attach=veth.b)
    try:
        yield s
    finally:
        s.cleanup()
        notify.close()


def _write(served: Served, extra: str = METRICS) -> None:
    from tests.service.served import manifest_text

    replace_file(served.manifest, manifest_text(attach=served.attach) + extra)


@pytest.mark.parametrize("verb", ["watch", "serve"])
def test_scrape_while_traffic_flows(served: Served, veth: VethPair, verb: str) -> None:
    served.setup()
    _write(served)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    if verb == "serve":
        served.config.write_text(
            served.config.read_text() + f"metrics_address: 127.0.0.1:{port}\nprogram_stats: true\n"
        )
        served.start()
    else:
        served.start("--metrics-address", f"127.0.0.1:{port}", "--program-stats", verb="watch")
    assert served.next()["STATUS"].startswith("starting")
    assert served.next()["STATUS"] == "ready: 1 collection applied, 1 changed"
    assert _get(f"{base}/healthz") == (200, "ok\n")
    code, body = _get(f"{base}/readyz")
    assert (code, body) == (200, "ready: 1 collection applied, 1 changed\n")
    coll = (("collection", NAME),)
    prog = (*coll, ("program", "xdp_count"))
    first = scrape(base)
    assert first[("bpforch_program_stats_enabled", ())] == 1
    assert first[("bpforch_reconciles_total", (("result", "applied"),))] == 1
    assert first[("bpforch_reconciles_total", (("result", "failed"),))] == 0
    assert first[("bpforch_degraded", ())] == 0
    assert abs(first[("bpforch_last_success_timestamp_seconds", ())] - time.time()) < 60
    assert first[("bpforch_reconcile_duration_seconds_count", ())] == 1
    assert first[("bpforch_collections", (("condition", "Ready"),))] == 1
    assert first[("bpforch_collection_condition", (*coll, ("condition", "Ready")))] == 1
    assert first[("bpforch_collection_drift", coll)] == 0
    assert first[("bpforch_map_capacity", (*coll, ("map", "counters")))] == 4
    assert first[("test_xdp_version", coll)] == 0  # no packet yet
    assert first[("bpforch_daemon_phase", (("phase", "ready"),))] == 1
    with UdpStream(veth.a, veth.b, 9999) as stream:
        # while it flows, every scrape sees more packets and more runs of the program
        seen = [first]
        for _ in range(3):
            seen.append(
                _until(
                    lambda got, last=seen[-1]: (
                        got[("test_xdp_packets_total", coll)]
                        > last[("test_xdp_packets_total", coll)]
                    ),
                    base,
                )
            )
        assert stream.sent > 0
    runs = [s[("bpforch_program_run_count_total", prog)] for s in seen]
    assert runs == sorted(runs) and runs[-1] > runs[0]  # the kernel counted while it flowed
    # once the traffic stopped, one scrape: every packet counted is one run of the program
    # (within one scrape the map is read after the programs, so compare a quiet one)
    time.sleep(0.2)
    last = scrape(base)
    packets = last[("test_xdp_packets_total", coll)]
    assert (
        last[("bpforch_program_run_count_total", prog)]
        >= packets
        > seen[-2][("test_xdp_packets_total", coll)]
    )
    assert last[("bpforch_program_run_time_ns_total", prog)] > 0
    assert last[("test_xdp_version", coll)] == 1  # the version constant of the program
    assert served.stop() == 0


def test_drift_and_degraded_show_and_readiness_follows(served: Served) -> None:
    served.setup()
    _write(served)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    served.start("--metrics-address", f"127.0.0.1:{port}", verb="watch")
    assert served.next()["STATUS"].startswith("starting")
    assert served.next()["STATUS"].startswith("ready")
    coll = (("collection", NAME),)
    assert scrape(base)[("bpforch_program_stats_enabled", ())] == 0  # not asked for
    # someone detaches the link by hand: drift, and the collection is Degraded
    links = served.bpffs_root / NAME / "links"
    (pin,) = list(links.iterdir())
    with Link.from_pin(pin) as link:
        link.detach()
    got = scrape(base)
    assert got[("bpforch_collection_drift", coll)] == 1
    assert got[("bpforch_collection_condition", (*coll, ("condition", "Degraded")))] == 1
    assert got[("bpforch_collections", (("condition", "Degraded"),))] == 1
    # an invalid change: degraded, not ready, counted
    replace_file(served.manifest, "apiVersion: bpforch.dev/v1\nkind: Collection\n")
    msg = served.next()
    assert msg["STATUS"].startswith("degraded: invalid manifest")
    code, body = _get(f"{base}/readyz")
    assert code == 503 and body.startswith("degraded: invalid manifest: "), body
    got = scrape(base)
    assert got[("bpforch_degraded", ())] == 1
    assert got[("bpforch_reconciles_total", (("result", "invalid"),))] == 1
    assert got[("bpforch_daemon_phase", (("phase", "degraded"),))] == 1
    assert _get(f"{base}/nosuch")[0] == 404
    assert served.stop() == 0
    with pytest.raises(urllib.error.URLError):  # the endpoint went with the daemon
        urllib.request.urlopen(f"{base}/healthz", timeout=2)


def test_an_endpoint_that_cannot_listen_stops_the_start(served: Served) -> None:
    served.setup()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = served.start("--metrics-address", f"127.0.0.1:{port}", verb="watch")
        assert proc.wait(30) == 1
    assert (
        f"error: metrics endpoint 127.0.0.1:{port}: address already in use (choose another "
        "metrics_address)"
    ) in served.log.read_text()
    assert not (served.bpffs_root / NAME).exists()  # nothing was applied
    assert XDP_OBJ.exists()
