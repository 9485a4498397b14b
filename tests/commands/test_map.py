"""``bpforch map``: libxdp's xdp-filter and bpforch's tc filter on a veth pair between two
namespaces the test creates, their maps read and written through the CLI, typed by BTF, with
real UDP traffic showing that what was written is what the programs read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator import ebpf
from orchestrator.ebpf._sys import ProgType, possible_cpus
from orchestrator.ebpf.programs import LoadRequest
from tests.commands.conftest import Cli
from tests.conftest import BPF_DIR
from tests.netns import UdpReceiver, VethPair, send_udp

pytestmark = pytest.mark.kernel

XDP_FILTER = Path("/usr/lib/x86_64-linux-gnu/bpf/xdpfilt_alw_udp.o")
# xdp-filter's filter_ports value: bits it tests for a UDP destination port (dst | udp)
DST_UDP = 0b1010


def apply_filters(cli: Cli, veth: VethPair) -> None:
    cli.write(
        "xdp-filter",
        f"""\
        apiVersion: bpforch/v1
        kind: Collection
        metadata: {{name: xdp-filter}}
        spec:
          object: {XDP_FILTER}
          maps:
            xdp_stats_map: {{pin: true}}
          attach:
            - program: xdpfilt_alw_udp
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
          attach:
            - program: tc_ingress
              tc: {{interface: {veth.b.name}, netns: {veth.b.ns.path}, direction: ingress}}
        """,
    )
    cli.ok("apply", str(cli.manifests))


def arrives(veth: VethPair, port: int, count: int = 5) -> int:
    with UdpReceiver(veth.b, port) as rx:
        send_udp(veth.a, veth.b, port, count=count)
        return rx.drain()


def test_a_port_in_network_byte_order_blocks_real_traffic(cli: Cli, veth: VethPair) -> None:
    apply_filters(cli, veth)
    assert arrives(veth, 9999) == 5
    # filter_ports is not pinned: reached through the program that holds it
    out = cli.ok("map", "set", "xdp-filter/filter_ports", "!be16 9999", str(DST_UDP))
    per_cpu = ", ".join([str(DST_UDP)] * possible_cpus())
    assert out == f"xdp-filter/filter_ports: !be16 9999 = [{per_cpu}]\n"  # one value, every CPU
    assert arrives(veth, 9999) == 0
    assert arrives(veth, 9998) == 5
    # the key as the BTF type says (a __u32), and as the program reads it (be16)
    got = cli.json("map", "get", "xdp-filter/filter_ports", str(0x0F27))
    assert (got["map"], got["key"]) == ("xdp-filter/filter_ports", 0x0F27)  # type: ignore[index]
    values = got["value"]  # type: ignore[index]
    ncpus = len(values)
    # xdp-filter counts hits above its flag bits (1 << 6 each): 5 packets were dropped
    assert [v & 0x3F for v in values] == [DST_UDP] * ncpus
    assert sum(v >> 6 for v in values) == 5
    assert got["sum"] == sum(values)  # type: ignore[index]
    got = cli.json("map", "get", "xdp-filter/filter_ports", "9999", "--key-format", "be16")
    assert got["key"] == 9999 and got["value"] == values  # type: ignore[index]
    # per-CPU statistics, summed: 5 dropped (XDP_DROP is index 1), 10 passed (index 2)
    stats = cli.json("map", "get", "xdp-filter/xdp_stats_map", "1")
    assert stats["sum"]["packets"] == 5  # type: ignore[index]
    assert stats["sum"]["rx_packets"] == 5  # type: ignore[index]
    assert stats["sum"]["bytes"] == 5 * (14 + 20 + 8 + len(b"bpforch"))  # type: ignore[index]
    passed = cli.ok("map", "get", "xdp-filter/xdp_stats_map", "2")
    assert passed.endswith("# sum {packets: 10, rx_packets: 10, bytes: 490, rx_bytes: 490}\n")
    # an array's element cannot be deleted; writing 0 opens the port again
    err = cli.fails("map", "delete", "xdp-filter/filter_ports", "!be16 9999")
    assert err == (
        "error: map xdp-filter/filter_ports: array elements cannot be deleted (write a zero "
        "value)\n"
    )
    cli.ok("map", "set", "xdp-filter/filter_ports", "9999", "0", "--key-format", "be16")
    assert arrives(veth, 9999) == 5


def test_hash_map_entries_set_dump_and_delete(cli: Cli, veth: VethPair) -> None:
    apply_filters(cli, veth)
    assert cli.ok("map", "dump", "tc-filter/blocked_ports") == "# 0 entries\n"
    cli.ok("map", "set", "tc-filter/blocked_ports", "12345", "1")
    cli.ok("map", "set", "tc-filter/blocked_ports", "53", "1", "--create")
    assert arrives(veth, 12345) == 0
    assert arrives(veth, 12346) == 5
    dump = cli.ok("map", "dump", "tc-filter/blocked_ports").splitlines()
    assert sorted(dump[:-1]) == ["- {key: 12345, value: 1}", "- {key: 53, value: 1}"]
    assert dump[-1] == "# 2 entries"
    data = cli.json("map", "dump", "tc-filter/blocked_ports")
    assert data["count"] == 2  # type: ignore[index]
    assert sorted(e["key"] for e in data["entries"]) == [53, 12345]  # type: ignore[index]
    # counters of the tc filter: [0] passed, [1] dropped
    stats = cli.json("map", "dump", "tc-filter/stats")
    assert stats["entries"] == [{"key": 0, "value": 5}, {"key": 1, "value": 5}]  # type: ignore[index]
    err = cli.fails("map", "set", "tc-filter/blocked_ports", "53", "2", "--create")
    assert "error: map tc-filter/blocked_ports: update: file exists" in err
    out = cli.ok("map", "delete", "tc-filter/blocked_ports", "12345")
    assert out == "tc-filter/blocked_ports: deleted 12345\n"
    assert arrives(veth, 12345) == 5
    err = cli.fails("map", "get", "tc-filter/blocked_ports", "12345")
    assert err == "error: map tc-filter/blocked_ports: key not found\n"
    err = cli.fails("map", "delete", "tc-filter/blocked_ports", "12345")
    assert err == "error: map tc-filter/blocked_ports: key not found\n"


def test_map_ls_lists_every_owned_map(cli: Cli, veth: VethPair) -> None:
    apply_filters(cli, veth)
    cli.ok("map", "set", "tc-filter/blocked_ports", "53", "1")
    rows = {r["map"]: r for r in cli.json("map", "ls")["maps"]}  # type: ignore[index]
    assert set(rows) == {
        "tc-filter/blocked_ports",
        "tc-filter/stats",
        "xdp-filter/filter_ports",
        "xdp-filter/xdp_stats_map",
    }
    assert (
        rows["tc-filter/blocked_ports"]["type"],
        rows["tc-filter/blocked_ports"]["entries"],
    ) == (
        "hash",
        1,
    )
    assert rows["tc-filter/blocked_ports"]["max_entries"] == 1024
    assert rows["xdp-filter/filter_ports"]["entries"] == 65536
    pin = cli.root / "xdp-filter" / "maps" / "xdp_stats_map"
    assert rows["xdp-filter/xdp_stats_map"]["pin"] == str(pin)
    text = cli.ok("map", "ls").splitlines()
    assert text[0].split() == ["MAP", "TYPE", "ENTRIES", "MAX", "ENTRIES", "ID", "PIN"]
    line = next(ln for ln in text if ln.startswith("tc-filter/blocked_ports"))
    assert line.split()[:4] == ["tc-filter/blocked_ports", "hash", "1", "1024"]
    assert line.endswith("(held by its programs)")


def test_pinned_paths_and_the_ownership_rules(cli: Cli, veth: VethPair) -> None:
    apply_filters(cli, veth)
    pin = cli.root / "xdp-filter" / "maps" / "xdp_stats_map"
    got = cli.json("map", "get", str(pin), "0")
    assert got["map"] == str(pin) and "packets" in got["value"][0]  # type: ignore[index]
    # a symlink planted in the owned root is never followed
    evil = cli.root / "xdp-filter" / "maps" / "evil"
    os.symlink(pin, evil)
    err = cli.fails("map", "get", str(evil), "0")
    assert err == f"error: map {evil}: pin evil: is a symlink (never followed)\n"
    # a pin outside the root is someone else's: opened as given
    outside = cli.root.parent / "foreign_stats"
    with ebpf.Map.from_pin(pin) as m:
        m.pin(outside)
    got = cli.json("map", "get", str(outside), "0")
    assert got["value"] == cli.json("map", "get", str(pin), "0")["value"]  # type: ignore[index]


BAD_INPUT = [
    (
        ("get", "nosuch/m", "0"),
        "error: map nosuch/m: collection 'nosuch' is not applied (applied: tc-filter, "
        "xdp-filter)\n",
    ),
    (
        ("get", "tc-filter/blocked", "0"),
        "error: map tc-filter/blocked: collection tc-filter has no map 'blocked' (did you "
        "mean blocked_ports?)\n",
    ),
    (
        ("get", "tc-filter", "0"),
        "error: map 'tc-filter': expected COLLECTION/MAP, or the absolute path of a pinned "
        "map (see bpforch map ls)\n",
    ),
    (
        ("get", "tc-filter/blocked_ports", "70000"),
        "error: map tc-filter/blocked_ports: key: 70000 does not fit __u16 (2 bytes, unsigned)\n",
    ),
    (
        ("get", "tc-filter/blocked_ports", "{port: 53"),
        "error: key '{port: 53': invalid YAML",
    ),
    (
        ("set", "tc-filter/blocked_ports", "53", "!be16 99999"),
        "error: value '!be16 99999': 99999 does not fit !be16 (unsigned)\n",
    ),
    (
        ("set", "tc-filter/blocked_ports", "53", "[1, 2]"),
        "error: map tc-filter/blocked_ports: value: expected an integer for __u8, got a list\n",
    ),
    (
        ("set", "xdp-filter/xdp_stats_map", "0", "{packet: 1}"),
        "error: map xdp-filter/xdp_stats_map: value.packet: struct xdp_stats_record has no "
        "member 'packet' (did you mean packets?)\n",
    ),
    (
        ("get", "xdp-filter/filter_ports", "65536", "--key-format", "be16"),
        "error: map xdp-filter/filter_ports: key: 65536 does not fit !be16 (unsigned)\n",
    ),
    (
        ("dump", "/sys/fs/bpf/bpforch-no-such-pin"),
        "error: map /sys/fs/bpf/bpforch-no-such-pin: no such file or directory (ENOENT)\n",
    ),
]


def test_bad_input_gets_clear_errors(cli: Cli, veth: VethPair) -> None:
    apply_filters(cli, veth)
    for args, message in BAD_INPUT:
        err = cli.fails("map", *args)
        assert err.startswith(message), (args, err)


def test_prog_array_slots_by_program_name(cli: Cli, veth: VethPair) -> None:
    """tailcall's xdp_entry jumps to slot (first byte of the frame) & 3: the destination
    MAC's first byte on this veth pair. Filling that slot by name decides the verdict."""
    cli.write(
        "tailcall",
        f"""\
        apiVersion: bpforch/v1
        kind: Collection
        metadata: {{name: tailcall}}
        spec:
          object: {BPF_DIR}/tailcall.o
          programs: [xdp_entry]
          attach:
            - program: xdp_entry
              xdp: {{interface: {veth.b.name}, netns: {veth.b.ns.path}, mode: generic}}
        """,
    )
    cli.ok("apply", str(cli.manifests))
    assert cli.ok("map", "dump", "tailcall/jump_table").splitlines() == [
        "- {key: 0, value: tail_pass}",
        "- {key: 2, value: tail_drop}",
        "# 2 entries",
    ]
    slot = int(veth.b.mac[:2], 16) & 3
    cli.ok("map", "set", "tailcall/jump_table", str(slot), "tail_pass")
    assert arrives(veth, 4000) == 5
    out = cli.ok("map", "set", "tailcall/jump_table", str(slot), "tail_drop")
    assert out == f"tailcall/jump_table: {slot} = tail_drop\n"
    assert arrives(veth, 4000) == 0
    cli.ok("map", "delete", "tailcall/jump_table", str(slot))
    assert arrives(veth, 4000) == 0  # an empty slot: xdp_entry falls through to XDP_ABORTED
    hits = {e["key"]: e["value"] for e in cli.json("map", "dump", "tailcall/hits")["entries"]}  # type: ignore[index]
    assert (hits[0], hits[2], hits[3]) == (5, 5, 5)  # tail_pass, tail_drop, fell through
    err = cli.fails("map", "set", "tailcall/jump_table", "1", "tail_pas")
    assert err == (
        "error: map tailcall/jump_table: value: no program named 'tail_pas' (did you mean "
        "tail_pass?)\n"
    )


def test_a_substituted_map_is_its_sources(cli: Cli) -> None:
    """shared-user takes shared-owner's map (from:): its address reaches the source."""
    cli.ok("apply", str(BPF_DIR.parent / "manifests" / "shared-stats.yaml"))
    cli.ok("map", "set", "shared-user/shared_stats", "3", "41")  # slot 3: no program's
    owner = cli.json("map", "get", "shared-owner/shared_stats", "3")
    assert owner["value"] == 41  # type: ignore[index]


def test_a_foreign_pin_of_another_kind_is_named_not_read(cli: Cli, pin_dir: Path) -> None:
    """A pin outside the root is opened as given; a program's pin is refused as one (the
    kernel would answer a map's info request with the program's)."""
    mov_r0_2_exit = bytes.fromhex("b7000000020000009500000000000000")
    req = LoadRequest(name="p", type=ProgType.XDP, instructions=mov_r0_2_exit, license="GPL")
    with ebpf.Program.load(req) as prog:
        prog.pin(pin_dir / "prog")
        err = cli.fails("map", "dump", str(pin_dir / "prog"))
    assert err == f"error: map pin {pin_dir / 'prog'}: not a map but a program\n"
