"""Map contents declared in manifests (``entries``), through the CLI as a user runs it: the
plan prints each entry change, the apply writes them inside the transaction, a foreign
entry in an ``exact`` map is drift that the next apply repairs, and real UDP traffic on a
veth pair between two namespaces the test creates shows that what was declared is what
the programs read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.ebpf._sys import possible_cpus
from tests.commands.conftest import Cli
from tests.conftest import BPF_DIR
from tests.netns import UdpReceiver, VethPair, send_udp

pytestmark = pytest.mark.kernel

XDP_FILTER = Path("/usr/lib/x86_64-linux-gnu/bpf/xdpfilt_alw_udp.o")
DST_UDP = 0b1010  # xdp-filter's filter_ports bits for a UDP destination port


def arrives(veth: VethPair, port: int, count: int = 5) -> int:
    with UdpReceiver(veth.b, port) as rx:
        send_udp(veth.a, veth.b, port, count=count)
        return rx.drain()


def tc_filter(cli: Cli, veth: VethPair, entries: str, mode: str = "") -> None:
    """tc_filter on veth b's ingress, its blocked_ports declared as ``entries`` (YAML)."""
    cli.write(
        "tc-filter",
        f"""\
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {{name: tc-filter}}
        spec:
          object: {BPF_DIR}/tc_filter.o
          maps:
            blocked_ports:
              pin: true
              entries: {entries}
              {mode}
          attach:
            - program: tc_ingress
              tc: {{interface: {veth.b.name}, netns: {veth.b.ns.path}, direction: ingress}}
        """,
    )


def plan(cli: Cli) -> tuple[int, str, str]:
    proc = cli("plan", str(cli.manifests))
    return proc.returncode, proc.stdout, proc.stderr


def entry_lines(out: str) -> list[str]:
    return [line.strip() for line in out.splitlines() if " entry " in line]


def dump(cli: Cli, address: str) -> dict[object, object]:
    data = cli.json("map", "dump", address)
    return {e["key"]: e["value"] for e in data["entries"]}  # type: ignore[index]


def test_declared_entries_are_planned_applied_and_read_by_the_program(
    cli: Cli, veth: VethPair
) -> None:
    tc_filter(cli, veth, "[{key: 53, value: 1}, {key: 9999, value: 1}]")
    code, out, _ = plan(cli)
    assert code == 2
    assert entry_lines(out) == ["+ entry blocked_ports 53", "+ entry blocked_ports 9999"]
    cli.ok("apply", str(cli.manifests))
    assert dump(cli, "tc-filter/blocked_ports") == {53: 1, 9999: 1}
    assert arrives(veth, 9999) == 0
    assert arrives(veth, 9998) == 5
    assert plan(cli)[:2] == (0, "No changes. The kernel matches the manifests.\n")
    status = cli.json("status")
    (coll,) = status["collections"]  # type: ignore[index]
    programs = {p["name"]: p["id"] for p in coll["programs"]}

    # a set diff: one added, one changed, one no longer declared
    tc_filter(cli, veth, "[{key: 9999, value: 2}, {key: 7777, value: 1}]")
    code, out, _ = plan(cli)
    assert code == 2
    assert entry_lines(out) == [
        "+ entry blocked_ports 7777",
        "~ entry blocked_ports 9999: 1 → 2",
        "- entry blocked_ports 53 (not declared)",
    ]
    assert "    collection tc-filter: unchanged (generation 1)  (" in out  # nothing reloads
    assert out.endswith("Plan: 1 to add, 1 to change, 1 to destroy.\n")
    data = json.loads(cli("plan", str(cli.manifests), "--output", "json").stdout)
    entries = [c for c in data["changes"] if c["kind"] == "entry"]  # type: ignore[index]
    assert [(c["op"], c["name"], c["reason"]) for c in entries] == [
        ("create", "blocked_ports", "7777"),
        ("update", "blocked_ports", "9999: 1 → 2"),
        ("delete", "blocked_ports", "53 (not declared)"),
    ]
    writes = [a for a in data["actions"] if a["action"] == "write_entries"]  # type: ignore[index]
    assert writes == [
        {
            "action": "write_entries",
            "collection": "tc-filter",
            "map": "blocked_ports",
            "mode": "exact",
            "add": 1,
            "update": 1,
            "delete": 1,
        }
    ]
    out = cli.ok("apply", str(cli.manifests))
    assert "Apply complete! 1 added, 1 changed, 1 destroyed" in out
    assert dump(cli, "tc-filter/blocked_ports") == {9999: 2, 7777: 1}
    # only the contents changed: the same programs, the same generation
    (after,) = cli.json("status")["collections"]  # type: ignore[index]
    assert {p["name"]: p["id"] for p in after["programs"]} == programs
    assert after["generation"] == coll["generation"]
    assert arrives(veth, 53) == 5
    assert arrives(veth, 7777) == 0
    assert plan(cli)[0] == 0


def test_a_foreign_entry_is_drift_that_apply_repairs(cli: Cli, veth: VethPair) -> None:
    tc_filter(cli, veth, "[{key: 9999, value: 1}]")
    cli.ok("apply", str(cli.manifests))
    cli.ok("map", "set", "tc-filter/blocked_ports", "4444", "1")
    cli.ok("map", "set", "tc-filter/blocked_ports", "9999", "3")
    assert arrives(veth, 4444) == 0
    code, out, err = plan(cli)
    assert code == 2
    assert entry_lines(out) == [
        "~ entry blocked_ports 9999: 3 → 1",
        "- entry blocked_ports 4444 (not declared)",
    ]
    # right after an apply that wrote these very entries: the programs may write the map
    assert err == (
        "warning: collection tc-filter: map blocked_ports: its entries changed since the "
        "last apply wrote these same entries (1 not declared, 1 changed): if its programs "
        "write the map themselves, exact mode shows what they write as drift on every plan "
        "(set entries_mode: merge)\n"
    )
    cli.ok("apply", str(cli.manifests))
    assert dump(cli, "tc-filter/blocked_ports") == {9999: 1}
    assert arrives(veth, 4444) == 5
    assert plan(cli) == (0, "No changes. The kernel matches the manifests.\n", "")


def test_merge_adds_and_updates_and_leaves_the_rest(cli: Cli, veth: VethPair) -> None:
    tc_filter(cli, veth, "[{key: 9999, value: 1}]", "entries_mode: merge")
    cli.ok("apply", str(cli.manifests))
    cli.ok("map", "set", "tc-filter/blocked_ports", "4444", "1")
    assert plan(cli)[0] == 0  # not declared, and merge leaves it
    cli.ok("map", "set", "tc-filter/blocked_ports", "9999", "5")
    code, out, err = plan(cli)
    assert (code, entry_lines(out), err) == (2, ["~ entry blocked_ports 9999: 5 → 1"], "")
    tc_filter(cli, veth, "[{key: 9999, value: 1}, {key: 53, value: 1}]", "entries_mode: merge")
    cli.ok("apply", str(cli.manifests))
    assert dump(cli, "tc-filter/blocked_ports") == {9999: 1, 53: 1, 4444: 1}
    assert arrives(veth, 4444) == 0
    # exact again: the entry nobody declared goes
    tc_filter(cli, veth, "[{key: 9999, value: 1}, {key: 53, value: 1}]")
    assert entry_lines(plan(cli)[1]) == ["- entry blocked_ports 4444 (not declared)"]
    cli.ok("apply", str(cli.manifests))
    assert dump(cli, "tc-filter/blocked_ports") == {9999: 1, 53: 1}


def test_a_port_in_network_byte_order_for_xdp_filter(cli: Cli, veth: VethPair) -> None:
    """xdp-filter's filter_ports key is a BTF __u32 holding a port in network byte order:
    ``!be16`` says so; its values are per-CPU (one value is written to every CPU)."""
    cli.write(
        "xdp-filter",
        f"""\
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {{name: xdp-filter}}
        spec:
          object: {XDP_FILTER}
          maps:
            filter_ports:
              entries:
                - {{key: !be16 9999, value: {DST_UDP}}}
              entries_mode: merge
          attach:
            - program: xdpfilt_alw_udp
              xdp: {{interface: {veth.b.name}, netns: {veth.b.ns.path}, mode: generic}}
        """,
    )
    code, out, _ = plan(cli)
    assert (code, entry_lines(out)) == (2, ["+ entry filter_ports !be16 9999"])
    cli.ok("apply", str(cli.manifests))
    assert arrives(veth, 9999) == 0
    assert arrives(veth, 9998) == 5
    got = cli.json("map", "get", "xdp-filter/filter_ports", "!be16 9999")
    # xdp-filter counts hits above its flag bits (1 << 6 each)
    assert [v & 0x3F for v in got["value"]] == [DST_UDP] * possible_cpus()  # type: ignore[index]
    # the program counts its hits in the value's upper bits: the value no longer is the
    # declared one, and declared entries win even in merge mode, so the plan shows it
    code, out, _ = plan(cli)
    assert code == 2
    (line,) = entry_lines(out)
    assert line.startswith("~ entry filter_ports !be16 9999: ") and line.endswith(f"→ {DST_UDP}")


def test_prog_arrays_take_program_names(cli: Cli, veth: VethPair) -> None:
    """The object fills jump_table[0] and [2]; exact mode keeps only what is declared."""
    cli.write(
        "tail",
        f"""\
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {{name: tail}}
        spec:
          object: {BPF_DIR}/tailcall.o
          maps:
            jump_table:
              entries:
                - {{key: 0, value: tail_drop}}
                - {{key: 1, value: tail_pass}}
          attach:
            - program: xdp_entry
              xdp: {{interface: {veth.b.name}, netns: {veth.b.ns.path}, mode: generic}}
        """,
    )
    code, out, _ = plan(cli)
    assert code == 2
    assert entry_lines(out) == [
        "+ entry jump_table 1",
        "~ entry jump_table 0: tail_pass → tail_drop",
        "- entry jump_table 2 (not declared)",
    ]
    cli.ok("apply", str(cli.manifests))
    assert dump(cli, "tail/jump_table") == {0: "tail_drop", 1: "tail_pass"}
    assert plan(cli)[0] == 0
    cli.write(
        "tail",
        (cli.manifests / "tail.yaml")
        .read_text()
        .replace("{key: 1, value: tail_pass}", "{key: 3, value: tail_pass}"),
    )
    assert entry_lines(plan(cli)[1]) == [
        "+ entry jump_table 3",
        "- entry jump_table 1 (not declared)",
    ]
    cli.ok("apply", str(cli.manifests))
    assert dump(cli, "tail/jump_table") == {0: "tail_drop", 3: "tail_pass"}


def test_a_plan_without_entries_reads_no_map(cli: Cli, veth: VethPair) -> None:
    """Only maps that declare entries are read: a map whose pin is unreadable to the plan
    would fail it if it were read."""
    tc_filter(cli, veth, "[{key: 1, value: 1}]")
    cli.ok("apply", str(cli.manifests))
    # the same collection without entries: nothing to read, nothing to write
    text = (cli.manifests / "tc-filter.yaml").read_text()
    cli.write("tc-filter", text.replace("entries: [{key: 1, value: 1}]", ""))
    code, out, _ = plan(cli)
    assert code == 0, out
    data = json.loads(cli("plan", str(cli.manifests), "--output", "json").stdout)
    assert [a["action"] for a in data["actions"]] == ["unchanged"]  # type: ignore[index]
    # the entry stays: bpforch only keeps contents a manifest declares
    assert dump(cli, "tc-filter/blocked_ports") == {1: 1}
    assert json.loads(json.dumps(data))["has_changes"] is False  # type: ignore[index]


def test_a_large_set_prints_twenty_lines_and_counts_the_rest(cli: Cli, veth: VethPair) -> None:
    tc_filter(cli, veth, "[" + ", ".join(f"{{key: {k}, value: 1}}" for k in range(1, 31)) + "]")
    code, out, _ = plan(cli)
    assert code == 2
    assert entry_lines(out) == [f"+ entry blocked_ports {k}" for k in range(1, 21)] + [
        "… 10 more entry changes in map blocked_ports (--output json lists each)"
    ]
    assert out.endswith("Plan: 34 to add, 0 to change, 0 to destroy.\n")
    data = json.loads(cli("plan", str(cli.manifests), "--output", "json").stdout)
    assert len([c for c in data["changes"] if c["kind"] == "entry"]) == 30
