"""``bpforch destroy --dry-run`` and destroy's summary: what would go, named, including the
preserved maps whose contents go with it, on a veth pair the test creates."""

from __future__ import annotations

import re

import pytest

from tests.commands.conftest import Cli
from tests.conftest import BPF_DIR
from tests.netns import UdpReceiver, VethPair, send_udp
from tests.reconcile.conftest import gone, link_alive, map_alive

pytestmark = pytest.mark.kernel


def apply_two(cli: Cli, veth: VethPair) -> None:
    cli.write(
        "xdp-counter",
        f"""\
        apiVersion: bpforch/v1
        kind: Collection
        metadata: {{name: xdp-counter}}
        spec:
          object: {BPF_DIR}/xdp_counter.o
          maps:
            counters: {{preserve: true}}
          attach:
            - program: xdp_count
              xdp: {{interface: {veth.b.name}, netns: {veth.b.ns.path}, mode: generic}}
        """,
    )
    cli.write(
        "tc-filter",
        f"""\
        apiVersion: bpforch/v1
        kind: Collection
        metadata: {{name: tc-filter}}
        spec:
          object: {BPF_DIR}/tc_filter.o
          maps:
            blocked_ports: {{preserve: true}}
          attach:
            - program: tc_ingress
              tc: {{interface: {veth.b.name}, netns: {veth.b.ns.path}, direction: ingress}}
        """,
    )
    cli.ok("apply", str(cli.manifests))
    cli.ok("map", "set", "tc-filter/blocked_ports", "53", "1")
    cli.ok("map", "set", "tc-filter/blocked_ports", "54", "1")


def test_dry_run_names_what_goes_and_changes_nothing(cli: Cli, veth: VethPair) -> None:
    apply_two(cli, veth)
    status = cli.json("status")
    coll = {c["name"]: c for c in status["collections"]}  # type: ignore[index]
    counters = next(m for m in coll["xdp-counter"]["maps"] if m["name"] == "counters")
    link = coll["xdp-counter"]["attachments"][0]["link_id"]
    out = cli.ok("destroy", "--dry-run", "xdp-counter")
    assert f"      - map counters: map id {counters['id']}, preserved: its contents are " in out
    assert out.endswith(
        "Plan: 0 to add, 0 to change, 4 to destroy.\n"
        f"Preserved map xdp-counter/counters (id {counters['id']}, 4 entries): its contents "
        "would be deleted with it.\n"
        "Dry run: 1 collection, 4 objects would be destroyed; nothing was changed.\n"
    )
    assert "tc-filter" not in out
    # nothing changed: the link still counts traffic, the map is there
    assert link_alive(link) and map_alive(counters["id"])
    with UdpReceiver(veth.b, 4000) as rx:
        send_udp(veth.a, veth.b, 4000, count=3)
        assert rx.drain() == 3
    assert cli.json("map", "get", "xdp-counter/counters", "0")["value"] == 3  # type: ignore[index]
    data = cli.json("destroy", "--dry-run", "--all")
    assert isinstance(data, dict)
    assert data["dry_run"] is True
    assert data["preserved_maps"] == [
        {"collection": "tc-filter", "map": "blocked_ports", "id": data["preserved_maps"][0]["id"],
         "entries": 2},
        {"collection": "xdp-counter", "map": "counters", "id": counters["id"], "entries": 4},
    ]  # fmt: skip
    assert data["plan"]["counts"] == {"add": 0, "change": 0, "destroy": 8}
    assert {c["name"] for c in cli.json("status")["collections"]} == {  # type: ignore[index]
        "tc-filter",
        "xdp-counter",
    }


def test_destroy_summary(cli: Cli, veth: VethPair) -> None:
    apply_two(cli, veth)
    ports = next(
        m
        for c in cli.json("status")["collections"]  # type: ignore[index]
        for m in c["maps"]
        if m["name"] == "blocked_ports"
    )
    out = cli.ok("destroy", "tc-filter")
    assert (
        f"Preserved map tc-filter/blocked_ports (id {ports['id']}, 2 entries): its contents "
        "deleted with it.\n" in out
    )
    assert re.search(r"\nDestroy complete! 1 collection, 4 objects destroyed in \d+ ms\.\n$", out)
    assert gone(map_alive, ports["id"])  # freed once the programs holding it are (deferred)
    out = cli.ok("destroy", "--all")
    assert re.search(r"\nDestroy complete! 1 collection, 4 objects destroyed in \d+ ms\.\n$", out)
    assert cli.ok("destroy", "--all", "--dry-run").endswith("Dry run: nothing was changed.\n")


def test_dry_run_errors(cli: Cli, veth: VethPair) -> None:
    apply_two(cli, veth)
    err = cli.fails("destroy", "--dry-run", "nosuch")
    assert "nosuch: not applied by bpforch (applied: tc-filter, xdp-counter)" in err
    err = cli.fails("destroy", "--dry-run")
    assert err == "error: name the collections to destroy, or pass --all or --selector (not both)\n"
