"""Metrics: manifests' ``spec.metrics`` (validated against the object's BTF, read from live
maps with per-CPU values summed) and ``bpforch metrics`` (the exposition printed once,
parsed back with prometheus_client's own parser)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator import cli, ebpf
from orchestrator.manifest import ManifestError, load_manifests

HEADER = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "GPL";
"""

STATS = (
    HEADER
    + """
enum reason { R_PASS, R_DROP, R_ABORT };
struct pair { __u32 a; __u32 b; };
struct pkt_stats {
    __u64 packets;
    __u64 bytes;
    struct { __u64 v4; __u64 v6; } proto;
    __u64 hist[4];
    char tag[4];
};

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __type(key, __u32);
    __type(value, struct pkt_stats);
    __uint(max_entries, 2);
} by_cpu SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __type(key, enum reason);
    __type(value, __u64);
    __uint(max_entries, 8);
} by_reason SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __type(key, char[8]);
    __type(value, __u64);
    __uint(max_entries, 8);
} by_name SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __type(key, struct pair);
    __type(value, __u64);
    __uint(max_entries, 8);
} by_pair SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __type(key, __u32);
    __type(value, __u64);
    __uint(max_entries, 3);
} counters SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 4096);
} events SEC(".maps");

SEC("xdp")
int xdp_stats(struct xdp_md *ctx)
{
    __u32 zero = 0;
    enum reason r = R_PASS;
    char name[8] = "eth0";
    struct pair p = {1, 2};
    struct pkt_stats *s = bpf_map_lookup_elem(&by_cpu, &zero);
    if (s)
        s->packets++;
    bpf_map_lookup_elem(&by_reason, &r);
    bpf_map_lookup_elem(&by_name, name);
    bpf_map_lookup_elem(&by_pair, &p);
    bpf_map_lookup_elem(&counters, &zero);
    bpf_ringbuf_output(&events, &zero, sizeof(zero), 0);
    return XDP_PASS;
}
"""
)


@pytest.fixture(scope="module")
def stats_obj(compile_bpf: Callable[..., Path]) -> Path:
    return compile_bpf(STATS)


def manifest(obj: Path, metrics: str, name: str = "stats") -> str:
    return (
        f"apiVersion: bpforch.dev/v1\nkind: Collection\nmetadata: {{name: {name}}}\n"
        f"spec:\n  object: {obj}\n  metrics:\n{metrics}"
    )


GOOD = """\
    - {name: cpu_packets, type: counter, map: by_cpu, key: 0, field: packets}
    - {name: cpu_v6, type: counter, map: by_cpu, key: 0, field: proto.v6}
    - {name: cpu_hist, type: gauge, map: by_cpu, key: 0, field: hist.3, help: the last bucket}
    - {name: reasons, type: counter, map: by_reason, label: reason}
    - {name: named, type: counter, map: by_name, label: ifname}
    - {name: slots, type: gauge, map: counters, label: slot, names: [first, second]}
    - {name: one_reason, type: counter, map: by_reason, key: R_DROP}
"""


def test_declared_metrics_validate(stats_obj: Path, tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(manifest(stats_obj, GOOD))
    state = load_manifests([tmp_path / "m.yaml"])
    specs = state.collections["stats"].metrics
    assert [m.name for m in specs] == [
        "cpu_packets",
        "cpu_v6",
        "cpu_hist",
        "reasons",
        "named",
        "slots",
        "one_reason",
    ]
    assert specs[1].value_path == ("proto", "v6")
    assert specs[5].names == ("first", "second")


def test_declared_metrics_are_not_part_of_the_digest(stats_obj: Path, tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(manifest(stats_obj, GOOD))
    before = load_manifests([tmp_path / "m.yaml"]).collections["stats"]
    (tmp_path / "m.yaml").write_text(manifest(stats_obj, GOOD.splitlines(True)[0]))
    after = load_manifests([tmp_path / "m.yaml"]).collections["stats"]
    assert before.digest == after.digest and before.metrics != after.metrics


BAD = [
    (
        "    - {name: x, type: counter, map: nosuch, key: 0}\n",
        "7:37: spec.metrics[0].map: object has no map 'nosuch'",
    ),
    (
        "    - {name: x, type: counter, map: events, key: 0}\n",
        "7:37: spec.metrics[0].map: map events is a ringbuf map, whose values cannot be read "
        "by key (read a hash, array or LRU map (per-CPU ones too))",
    ),
    (
        "    - {name: x, type: counter, map: by_cpu, key: 0}\n",
        "7:37: spec.metrics[0].map: map by_cpu: the value is a struct, not a number "
        "(add field: MEMBER)",
    ),
    (
        "    - {name: x, type: counter, map: by_cpu, key: 0, field: packet}\n",
        "7:60: spec.metrics[0].field: map by_cpu: field packet: no such member (did you mean "
        "'packets'?) (name a number inside the value)",
    ),
    (
        "    - {name: x, type: counter, map: by_cpu, key: 0, field: zzz}\n",
        "7:60: spec.metrics[0].field: map by_cpu: field zzz: no such member (it has: "
        "bytes, hist, packets, proto, tag) (name a number inside the value)",
    ),
    (
        "    - {name: x, type: counter, map: by_cpu, key: 0, field: packets.low}\n",
        "7:60: spec.metrics[0].field: map by_cpu: field packets.low: an integer has no members",
    ),
    (
        "    - {name: x, type: counter, map: by_cpu, key: 0, field: hist.4}\n",
        "7:60: spec.metrics[0].field: map by_cpu: field hist.4: an array of 4 needs an index "
        "below 4",
    ),
    (
        "    - {name: x, type: counter, map: by_cpu, key: 0, field: tag}\n",
        "7:60: spec.metrics[0].field: map by_cpu: field tag is bytes, not a number",
    ),
    (
        "    - {name: x, type: counter, map: by_reason, key: R_MAYBE}\n",
        "7:53: spec.metrics[0].key: enum reason has no enumerator R_MAYBE",
    ),
    (
        "    - {name: x, type: counter, map: counters, key: 1.5}\n",
        "7:52: spec.metrics[0].key: expected an integer or a string, got 1.5",
    ),
    (
        "    - {name: x, type: counter, map: by_pair, label: pair}\n",
        "7:53: spec.metrics[0].label: map by_pair: the key is a struct, which cannot be a "
        "label value (read one key with key: instead)",
    ),
    (
        "    - {name: x, type: counter, map: by_name, label: n, names: [a]}\n",
        "7:63: spec.metrics[0].names: map by_name: names index keys by number, and this key "
        "is bytes",
    ),
    (
        "    - {name: x, type: counter, map: counters}\n",
        "7:7: spec.metrics[0]: expected exactly one of key, label",
    ),
    (
        "    - {name: x, type: counter, map: counters, key: 0, label: slot}\n",
        "7:55: spec.metrics[0]: only one of key, label may be given",
    ),
    (
        "    - {name: x, type: counter, map: counters, key: 0, names: [a]}\n",
        "7:55: spec.metrics[0].names: 'names' needs 'label' (add label, or remove names)",
    ),
    (
        "    - {name: x, type: counter, map: counters, label: collection}\n",
        "7:54: spec.metrics[0].label: label 'collection' is bpforch's (it names the "
        "collection) (choose another label name)",
    ),
    (
        "    - {name: bpforch_x, type: counter, map: counters, key: 0}\n",
        "7:14: spec.metrics[0].name: metric name 'bpforch_x' is reserved",
    ),
    (
        "    - {name: 2x, type: counter, map: counters, key: 0}\n",
        "7:14: spec.metrics[0].name: '2x' is not a Prometheus metric name (letters, digits, "
        "'_' and ':')",
    ),
    (
        "    - {name: x, type: counter, map: counters, key: 0}\n"
        "    - {name: x, type: gauge, map: counters, key: 1}\n",
        "8:14: spec.metrics[1].name: metric 'x' is declared twice (also spec.metrics[0])",
    ),
    (
        "    - {name: x, type: histogram, map: counters, key: 0}\n",
        "7:23: spec.metrics[0].type: expected one of counter, gauge, got 'histogram'",
    ),
]


@pytest.mark.parametrize(("metrics", "expected"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_declarations_are_located_problems(
    stats_obj: Path, tmp_path: Path, metrics: str, expected: str
) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(manifest(stats_obj, metrics))
    with pytest.raises(ManifestError) as err:
        load_manifests([path])
    found = [str(p) for p in err.value.problems]
    assert any(p.startswith(f"{path}:{expected}") for p in found), found


def test_one_name_means_one_thing_across_collections(stats_obj: Path, tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        manifest(stats_obj, "    - {name: x, type: counter, map: counters, key: 0}\n", "a")
    )
    (tmp_path / "b.yaml").write_text(
        manifest(stats_obj, "    - {name: x, type: counter, map: counters, key: 1}\n", "b")
    )
    assert len(load_manifests([tmp_path]).collections) == 2  # same type and labels: fine
    (tmp_path / "b.yaml").write_text(
        manifest(stats_obj, "    - {name: x, type: gauge, map: counters, key: 1}\n", "b")
    )
    with pytest.raises(ManifestError) as err:
        load_manifests([tmp_path])
    assert [str(p) for p in err.value.problems] == [
        f"{tmp_path / 'b.yaml'}:7:14: spec.metrics[0].name: metric 'x' is a counter without "
        f"label at {tmp_path / 'a.yaml'}:7:7 (the same name needs the same type and label in "
        "every collection)"
    ]


# ---------------------------------------------------------------------------- bpforch metrics


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition (parsed by prometheus_client: the format is valid)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


PINNED = (
    "  maps:\n    by_cpu: {pin: true}\n    by_reason: {pin: true}\n    by_name: {pin: true}\n"
    "    counters: {pin: true}\n  metrics:\n"
)


@pytest.mark.kernel
def test_bpforch_metrics_reads_declared_metrics_from_live_maps(
    stats_obj: Path, pin_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "stats.yaml").write_text(
        manifest(stats_obj, GOOD).replace("  metrics:\n", PINNED)
    )
    where = ["--bpffs-root", str(pin_dir / "root"), "--state-dir", str(tmp_path / "state")]
    code, out, err = run_cli("apply", str(tmp_path / "m"), *where)
    assert code == 0, out + err
    maps = pin_dir / "root" / "stats" / "maps"
    n = _possible_cpus()
    with ebpf.Map.from_pin(maps / "by_cpu") as m:
        m[0] = [
            {"packets": 10 + i, "bytes": 0, "proto": {"v4": 0, "v6": i}, "hist": [0, 0, 0, 7]}
            for i in range(n)
        ]
    try:
        code, text, err = run_cli("metrics", str(tmp_path / "m"), *where)
        assert code == 0, err
        got = samples(text)
        coll = (("collection", "stats"),)
        assert got[("cpu_packets_total", coll)] == sum(10 + i for i in range(n))  # summed
        assert got[("cpu_v6_total", coll)] == sum(range(n))
        assert got[("cpu_hist", coll)] == 7 * n
        assert got[("one_reason_total", coll)] == 0  # no such key yet
        assert got[("slots", (*coll, ("slot", "first")))] == 0
        assert ("slots", (*coll, ("slot", "third"))) not in got  # no name: no series
        assert got[("bpforch_collections", (("condition", "Ready"),))] == 1
        assert got[("bpforch_map_capacity", (*coll, ("map", "by_reason")))] == 8
        assert got[("bpforch_observe_success", ())] == 1
        assert got[("bpforch_daemon_running", ())] == 0
        # values written now show up at the next scrape, under their keys' names
        with ebpf.Map.from_pin(maps / "by_reason") as m:
            m["R_DROP"] = 5
            m["R_ABORT"] = 2
        with ebpf.Map.from_pin(maps / "by_name") as m:
            m["eth0"] = 3
        with ebpf.Map.from_pin(maps / "counters") as m:
            m[1] = 9
        got = samples(run_cli("metrics", str(tmp_path / "m"), *where)[1])
        assert got[("reasons_total", (*coll, ("reason", "R_DROP")))] == 5
        assert got[("reasons_total", (*coll, ("reason", "R_ABORT")))] == 2
        assert got[("one_reason_total", coll)] == 5
        assert got[("named_total", (*coll, ("ifname", "eth0")))] == 3
        assert got[("slots", (*coll, ("slot", "second")))] == 9
        assert got[("bpforch_map_entries", (*coll, ("map", "by_reason")))] == 2
    finally:
        assert run_cli("destroy", "--all", *where)[0] == 0


def _possible_cpus() -> int:
    from orchestrator.ebpf import _sys as bpfsys

    return bpfsys.possible_cpus()
