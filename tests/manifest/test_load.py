"""Good manifests: YAML -> the expected frozen dataclasses, files and directories."""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml

from orchestrator.manifest import (
    Attachment,
    CgroupTarget,
    DesiredCollection,
    Direction,
    MapFrom,
    MapOptions,
    NetnsTarget,
    OnIncompatible,
    RawTracepointTarget,
    Source,
    TcTarget,
    TracepointTarget,
    UprobeTarget,
    XdpMode,
    XdpTarget,
    load_manifests,
)
from tests.netns import CGROUP2_ROOT

from .conftest import Write

FULL = """
# yaml-language-server: $schema=../../schemas/manifest.schema.json
apiVersion: bpforch.dev/v1
kind: Collection
metadata:
  name: net
  labels: {team: net, app.kubernetes.io/name: demo}
spec:
  object: ../objs/net.o
  programs: [xdp_count, tc_ingress, tc_second, cg_egress, cg_connect4, tp_getppid,
             raw_sched, ret_probe, lookup, btf_sched]
  constants: {verdict: 1, version: 0x10, greeting: "hx"}
  maps:
    counters: {preserve: true, max_entries: 8, on_incompatible: recreate}
    blocked: {pin: true}
    events: {max_entries: 16384}
  attach:
    - {program: xdp_count, xdp: {interface: veth0, mode: generic, netns: demo}}
    - program: tc_ingress
      tc: {interface: veth0, direction: ingress, netns: ./ns/x}
    - {program: tc_second, tc: {interface: veth0, direction: ingress, netns: ./ns/x,
       before: tc_ingress}}
    - {program: cg_egress, cgroup: {path: app/web, attach: egress}}
    - {program: cg_connect4, cgroup: {path: /sys/fs/cgroup/x/../y, attach: connect4}}
    - {program: tp_getppid, tracepoint: {group: syscalls, name: sys_enter_getppid}}
    - {program: raw_sched, raw_tracepoint: {name: sched_switch}}
    - {program: ret_probe, uprobe: {path: bin/app, symbol: main, offset: 4, retprobe: true,
       pid: 7}}
    - {program: lookup, netns: {path: /proc/1/ns/net}}
    - {program: lookup, netns: {}}
    - {program: btf_sched, raw_tracepoint: {name: sched_switch}}
"""


def test_full_manifest_round_trips(write: Write, tree: Path) -> None:
    path = write("m/net.yaml", FULL)
    state = load_manifests([path])
    assert state.files == (path,)
    c = state.collections["net"]
    m = tree / "m"
    assert c == DesiredCollection(
        name="net",
        object_file=tree / "objs" / "net.o",
        source=Source(path, 5, 9),
        labels={"team": "net", "app.kubernetes.io/name": "demo"},
        programs=(
            "xdp_count",
            "tc_ingress",
            "tc_second",
            "cg_egress",
            "cg_connect4",
            "tp_getppid",
            "raw_sched",
            "ret_probe",
            "lookup",
            "btf_sched",
        ),
        constants={"verdict": 1, "version": 16, "greeting": "hx"},
        maps={
            "counters": MapOptions(
                "counters",
                pin=True,
                preserve=True,
                max_entries=8,
                on_incompatible=OnIncompatible.RECREATE,
            ),
            "blocked": MapOptions("blocked", pin=True),
            "events": MapOptions("events", max_entries=16384),
        },
        attach=(
            Attachment(
                "xdp_count", XdpTarget("veth0", XdpMode.GENERIC, Path("/var/run/netns/demo"))
            ),
            Attachment("tc_ingress", TcTarget("veth0", Direction.INGRESS, m / "ns" / "x")),
            Attachment(
                "tc_second",
                TcTarget("veth0", Direction.INGRESS, m / "ns" / "x", before="tc_ingress"),
            ),
            Attachment("cg_egress", CgroupTarget(CGROUP2_ROOT / "app" / "web", "egress")),
            Attachment("cg_connect4", CgroupTarget(Path("/sys/fs/cgroup/y"), "connect4")),
            Attachment("tp_getppid", TracepointTarget("syscalls", "sys_enter_getppid")),
            Attachment("raw_sched", RawTracepointTarget("sched_switch")),
            Attachment("ret_probe", UprobeTarget(m / "bin" / "app", "main", 4, True, 7)),
            Attachment("lookup", NetnsTarget(Path("/proc/1/ns/net"))),
            Attachment("lookup", NetnsTarget(None)),
            Attachment("btf_sched", RawTracepointTarget("sched_switch")),
        ),
        digest=c.digest,
    )
    assert len(c.digest) == 64
    # where things were declared is kept for plan/apply messages
    assert c.maps["blocked"].source == Source(path, 14, 5)
    assert c.attach[1].source == Source(path, 18, 7)


SHARED = """
apiVersion: bpforch.dev/v1
kind: Collection
metadata: {name: user}
spec:
  object: ../objs/user.o
  maps:
    shared_stats: {from: {collection: owner}}
---
apiVersion: bpforch.dev/v1
kind: Collection
metadata: {name: owner}
spec:
  object: ../objs/owner.o
  sha256: %s
  maps:
    shared_stats: {preserve: true}
"""


def shared(tree: Path) -> str:
    return SHARED % hashlib.sha256((tree / "objs" / "owner.o").read_bytes()).hexdigest()


def test_defaults_and_substitution(write: Write, tree: Path) -> None:
    write("m/shared.yaml", shared(tree))
    state = load_manifests([write("m/pinned.yaml", _pinned())])
    assert state.collections["pinned"].maps["shared_stats"].source_from == MapFrom(
        pinned=Path("/sys/fs/bpf/other/shared_stats")
    )
    state = load_manifests([write("m/pinned.yaml", _pinned()).parent])
    user, owner = state.collections["user"], state.collections["owner"]
    assert user.programs is None and user.constants == {} and user.attach == ()
    assert user.maps["shared_stats"] == MapOptions(
        "shared_stats", source_from=MapFrom(collection="owner", map="shared_stats")
    )
    assert user.depends_on() == {"owner"}
    assert owner.maps["shared_stats"].pin  # preserve implies pin
    assert owner.depends_on() == frozenset()


def _pinned() -> str:
    return """
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {name: pinned}
        spec:
          object: ../objs/user.o
          maps:
            shared_stats: {from: {pinned: /sys/fs/bpf/other/./shared_stats}}
        """


def test_a_program_without_autoload_is_attachable_when_listed(write: Write) -> None:
    path = write(
        "m/a.yaml",
        """
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {name: manual}
        spec:
          object: ../objs/net.o
          programs: [xdp_manual]
          attach:
            - {program: xdp_manual, xdp: {interface: veth0}}
        """,
    )
    (a,) = load_manifests([path]).collections["manual"].attach
    assert a == Attachment("xdp_manual", XdpTarget("veth0"))
    assert a.key() == "xdp_manual@xdp::veth0" and a.kind == "xdp"
    assert a.document() == {"program": "xdp_manual", "xdp": {"interface": "veth0", "mode": "auto"}}


def test_xdp_take_over(write: Write) -> None:
    text = """
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {name: net}
        spec:
          object: ../objs/net.o
          attach:
            - {program: xdp_count, xdp: {interface: veth0, take_over: TAKE}}
        """
    taken = load_manifests([write("m/a.yaml", text.replace("TAKE", "true"))]).collections["net"]
    (a,) = taken.attach
    assert a == Attachment("xdp_count", XdpTarget("veth0", take_over=True))
    assert a.key() == "xdp_count@xdp::veth0"  # the same attachment as without take_over
    assert a.document()["xdp"] == {"interface": "veth0", "mode": "auto", "take_over": True}
    plain = load_manifests([write("m/a.yaml", text.replace("TAKE", "false"))]).collections["net"]
    assert plain.attach == (Attachment("xdp_count", XdpTarget("veth0")),)
    # take_over: false is the default and left out of the normalized form (same digest)
    assert "take_over" not in plain.attach[0].document()["xdp"]  # type: ignore[operator]
    assert plain.digest != taken.digest


def test_the_normalized_document_is_a_manifest_of_the_same_collection(
    write: Write, tree: Path
) -> None:
    write("m/shared.yaml", shared(tree))
    first = load_manifests([write("m/net.yaml", FULL).parent])
    docs = [c.document() for c in first.collections.values()]
    again = write("n/all.yaml", yaml.safe_dump_all(docs, sort_keys=False))
    second = load_manifests([again])
    assert second.collections == first.collections
    for name, c in first.collections.items():
        assert second.collections[name].digest == c.digest


def test_the_shipped_examples_are_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    state = load_manifests([root / "manifests"])
    assert {
        "xdp-counter",
        "tc-filter",
        "tp-counter",
        "cgroup-egress",
        "shared-owner",
        "shared-user",
    } <= set(state.collections)
    assert all(c.object_file.parent == root / "bpf" for c in state.collections.values())
    assert state.collections["shared-user"].depends_on() == {"shared-owner"}
    for f in state.files:
        assert f.read_text().startswith(
            "# yaml-language-server: $schema=../schemas/manifest.schema.json\n"
        )
