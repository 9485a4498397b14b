"""Declared map entries (``spec.maps.<name>.entries``): every key and value is checked
against the object's BTF through the map codec, with the file, line and column of the
entry, and the rules of which maps take entries."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.ebpf._sys import possible_cpus
from orchestrator.ebpf.values import NetworkOrder
from orchestrator.manifest import EntriesMode, ManifestError, load_manifests
from tests.conftest import BPF_DIR

from .conftest import Write

XDP_FILTER = Path("/usr/lib/x86_64-linux-gnu/bpf/xdpfilt_alw_udp.o")

H = """\
apiVersion: bpforch.dev/v1
kind: Collection
metadata: {name: net}
spec:
  object: ../objs/net.o
  maps:
"""


def problems(write: Write, tree: Path, text: str) -> list[tuple[int, int, str, str, str]]:
    write("m/a.yaml", text)
    with pytest.raises(ManifestError) as info:
        load_manifests([tree / "m"])
    return [
        (p.source.line, p.source.column, p.field, p.message, p.hint) for p in info.value.problems
    ]


def test_entries_are_read_with_their_mode_and_tags(write: Write, tree: Path) -> None:
    write(
        "m/a.yaml",
        H
        + "    blocked:\n"
        + "      entries:\n"
        + "        - {key: 53, value: 1}\n"
        + "        - {key: !be16 9999, value: 2}\n"
        + "      entries_mode: merge\n"
        + "    counters: {entries: [{key: 3, value: 30}]}\n",
    )
    coll = load_manifests([tree / "m"]).collections["net"]
    blocked = coll.maps["blocked"]
    assert blocked.entries is not None
    assert [(e.key, e.value) for e in blocked.entries] == [(53, 1), (NetworkOrder(16, 9999), 2)]
    assert blocked.entries_mode is EntriesMode.MERGE
    assert [str(e.source) for e in blocked.entries] == [
        f"{tree}/m/a.yaml:9:11",
        f"{tree}/m/a.yaml:10:11",
    ]
    assert coll.maps["counters"].entries_mode is EntriesMode.EXACT  # the default


def test_entries_are_not_part_of_the_digest(write: Write, tree: Path) -> None:
    """Entries are written by the apply, not loaded: changing them reloads nothing."""
    write("m/a.yaml", H + "    blocked: {pin: true}\n")
    before = load_manifests([tree / "m"]).collections["net"].digest
    write("m/a.yaml", H + "    blocked: {pin: true, entries: [{key: 1, value: 1}]}\n")
    after = load_manifests([tree / "m"]).collections["net"]
    assert after.digest == before
    assert after.document()["spec"]["maps"]["blocked"]["entries"] == [  # type: ignore[index]
        {"key": 1, "value": 1}
    ]


def test_every_bad_key_and_value_is_named_with_its_position(write: Write, tree: Path) -> None:
    got = problems(
        write,
        tree,
        H
        + "    blocked:\n"
        + "      entries:\n"
        + "        - {key: 70000, value: 1}\n"  # line 9: a __u16 key
        + "        - {key: 53, value: -1}\n"  # line 10: a __u8 value
        + "        - {key: 53, value: 1}\n"  # line 11
        + "        - {key: 53, value: 2}\n"  # line 12: twice
        + "        - {key: {port: 1}, value: 1}\n"  # line 13
        + "    counters:\n"
        + "      entries: [{key: 4, value: 1}, {key: 0, value: yes}]\n",  # line 15
    )
    assert got == [
        (
            9,
            17,
            "spec.maps.blocked.entries[0].key",
            "map blocked: key: 70000 does not fit __u16 (2 bytes, unsigned)",
            "give a key of the map's key type",
        ),
        (
            10,
            28,
            "spec.maps.blocked.entries[1].value",
            "map blocked: value: -1 does not fit __u8 (1 byte, unsigned)",
            "give a value of the map's value type",
        ),
        (
            12,
            17,
            "spec.maps.blocked.entries[3].key",
            "map blocked: key 53 is declared twice (also entries[2])",
            "declare each key once",
        ),
        (
            13,
            17,
            "spec.maps.blocked.entries[4].key",
            got[3][3],
            "give a key of the map's key type",
        ),
        (
            15,
            23,
            "spec.maps.counters.entries[0].key",
            "map counters: key: index 4 is out of range (the map has 4 entries)",
            "give an index below 4",
        ),
        (
            15,
            53,
            "spec.maps.counters.entries[1].value",
            got[5][3],
            "give a value of the map's value type",
        ),
    ]
    assert got[3][3].startswith("map blocked: key: ") and "integer" in got[3][3]
    assert got[5][3].startswith("map counters: value: ")


def test_more_entries_than_the_map_holds(write: Write, tree: Path) -> None:
    text = H + "    counters:\n      max_entries: 2\n      entries:\n"
    text += "".join(f"        - {{key: {i}, value: 1}}\n" for i in range(2))
    write("m/a.yaml", text)
    load_manifests([tree / "m"])  # as many as it holds
    text = H + "    blocked:\n      max_entries: 2\n      entries:\n"
    text += "".join(f"        - {{key: {i}, value: 1}}\n" for i in range(3))
    got = problems(write, tree, text)
    assert got == [
        (
            9,
            7,
            "spec.maps.blocked.entries",
            "map blocked: 3 entries do not fit the map (max_entries 2)",
            "declare fewer, or raise max_entries",
        )
    ]


def test_maps_that_take_no_entries(write: Write, tree: Path) -> None:
    got = problems(
        write,
        tree,
        H
        + "    events: {entries: [{key: 1, value: 1}]}\n"
        + "    .rodata: {entries: [{key: 0, value: 1}]}\n",
    )
    assert got == [
        (
            7,
            14,
            "spec.maps.events.entries",
            "a ringbuf map does not take declared entries (hash, lru_hash, array, lpm_trie, "
            "their per-CPU kinds, prog arrays and maps of maps do)",
            "remove entries",
        ),
        (
            8,
            15,
            'spec.maps[".rodata"].entries',
            ".rodata is a data section (set its variables with spec.constants)",
            "remove entries",
        ),
    ]


def test_entries_are_refused_on_a_substituted_map(write: Write, tree: Path) -> None:
    got = problems(
        write,
        tree,
        H
        + "    blocked:\n"
        + "      from: {pinned: /sys/fs/bpf/somewhere}\n"
        + "      entries: [{key: 1, value: 1}]\n"
        + "      entries_mode: merge\n",
    )
    assert got == [
        (
            9,
            7,
            "spec.maps.blocked.entries",
            "'entries' does not apply to a substituted map",
            "the map's owner declares its entries in its own manifest; remove 'entries' here",
        ),
        (
            10,
            7,
            "spec.maps.blocked.entries_mode",
            "'entries_mode' does not apply to a substituted map",
            "the map's owner declares its entries in its own manifest; remove 'entries_mode' here",
        ),
    ]


def test_entries_mode_needs_entries_and_a_known_mode(write: Write, tree: Path) -> None:
    got = problems(write, tree, H + "    blocked: {entries_mode: merge}\n")
    assert got == [
        (
            7,
            15,
            "spec.maps.blocked.entries_mode",
            "entries_mode without entries",
            "declare the entries, or remove entries_mode",
        )
    ]
    got = problems(write, tree, H + "    blocked: {entries: [], entries_mode: all}\n")
    assert [(g[0], g[1], g[2]) for g in got] == [(7, 42, "spec.maps.blocked.entries_mode")]
    assert "'all'" in got[0][3]


def test_tags_only_in_entries_and_bad_tags(write: Write, tree: Path) -> None:
    got = problems(write, tree, H + "    blocked: {entries: [{key: !be16 70000, value: 1}]}\n")
    assert got == [
        (
            7,
            31,
            "spec.maps.blocked.entries[0].key",
            "70000 does not fit !be16 (unsigned)",
            "e.g. key: !be16 9999",
        )
    ]
    got = problems(write, tree, H + "    blocked: {entries: [{key: 1, value: !be32 x}]}\n")
    assert [g[:4] for g in got] == [
        (7, 41, "spec.maps.blocked.entries[0].value", "!be32 takes an integer, got 'x'")
    ]
    got = problems(write, tree, H + "    blocked: {max_entries: !be16 5}\n")
    assert [g[:3] for g in got] == [(7, 28, "spec.maps.blocked.max_entries")]


def test_per_cpu_values_and_network_order_keys(write: Write, tree: Path) -> None:
    ncpus = possible_cpus()
    text = f"""\
apiVersion: bpforch.dev/v1
kind: Collection
metadata: {{name: xf}}
spec:
  object: {XDP_FILTER}
  maps:
    filter_ports:
      entries:
        - {{key: !be16 9999, value: 10}}
        - {{key: !be16 53, value: {[10] * ncpus}}}
        - {{key: !be16 54, value: {[10] * (ncpus + 1)}}}
"""
    got = problems(write, tree, text)
    assert got == [
        (
            11,
            34,
            "spec.maps.filter_ports.entries[2].value",
            f"map filter_ports: value: a per-CPU value takes one value, or one for each of the "
            f"{ncpus} possible CPUs; got a list of {ncpus + 1}",
            "give a value of the map's value type",
        )
    ]


def test_prog_arrays_and_maps_of_maps_take_names(write: Write, tree: Path) -> None:
    text = f"""\
apiVersion: bpforch.dev/v1
kind: Collection
metadata: {{name: tail}}
spec:
  object: {BPF_DIR}/tailcall.o
  maps:
    jump_table:
      entries:
        - {{key: 0, value: tail_pass}}
        - {{key: 1, value: tail_pas}}
        - {{key: 2, value: 7}}
---
apiVersion: bpforch.dev/v1
kind: Collection
metadata: {{name: mim}}
spec:
  object: {BPF_DIR}/map_in_map.o
  maps:
    outer_hash:
      entries:
        - {{key: 1, value: inner_a}}
        - {{key: 2, value: inner_c}}
"""
    got = problems(write, tree, text)
    assert [g[:3] for g in got] == [
        (10, 27, "spec.maps.jump_table.entries[1].value"),
        (11, 27, "spec.maps.jump_table.entries[2].value"),
        (22, 27, "spec.maps.outer_hash.entries[1].value"),
    ]
    assert "no program named 'tail_pas'" in got[0][3] and "tail_pass" in got[0][3]
    assert "expected the name of a program for a prog_array map, got" in got[1][3]
    assert "no map named 'inner_c'" in got[2][3]


def test_large_sets_have_a_node_budget_of_their_own(write: Write, tree: Path) -> None:
    """35,000 entries are some 105,000 YAML nodes: more than a document may have outside
    entries, within the budget of entries (checked without the schema walking each one)."""
    text = H + "    blocked:\n      max_entries: 65536\n      entries:\n"
    text += "".join(f"        - {{key: {k}, value: {k % 256}}}\n" for k in range(35_000))
    write("m/a.yaml", text)
    coll = load_manifests([tree / "m"]).collections["net"]
    entries = coll.maps["blocked"].entries
    assert entries is not None and len(entries) == 35_000
    assert (entries[-1].key, entries[-1].value) == (34_999, 34_999 % 256)
    # a malformed item among them is still the schema's to report, at its place
    got = problems(write, tree, text + "        - {key: 1, value: 1, extra: 2}\n")
    assert [g[:3] for g in got] == [(35_010, 30, "spec.maps.blocked.entries[35000].extra")]
    assert "unknown field 'extra'" in got[0][3]


def test_aliases_inside_entries_are_bounded(
    write: Write, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.manifest import parsing

    monkeypatch.setattr(parsing, "MAX_ENTRY_NODES", 1000)
    bomb = H + "    blocked:\n      entries:\n        - {key: 1, value: &a [1,1,1,1,1,1,1,1,1,1]}\n"
    for i, (prev, name) in enumerate(zip("abcd", "bcde", strict=True)):
        bomb += f"        - {{key: {i + 2}, value: &{name} [{', '.join([f'*{prev}'] * 10)}]}}\n"
    got = problems(write, tree, bomb)
    assert got == [(1, 1, "", "map entries expand to more than 1000 nodes", "too many aliases?")]
