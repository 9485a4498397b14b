"""Field-level diffs in the pure plan: what a collection, a map and an attachment change,
old → new, with hand-made states (no kernel)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from orchestrator.manifest.model import (
    Attachment,
    CgroupTarget,
    Direction,
    MapOptions,
    NetnsTarget,
    TcTarget,
    UprobeTarget,
)
from orchestrator.reconcile import CollectionFacts, Facts, Kind, MapRecord, Op, plan
from orchestrator.reconcile.actions import Change, FieldDiff
from orchestrator.reconcile.rules import attachment_title, target_fields, target_kind
from tests.reconcile.test_plan import ARRAY, TP, XDP, actual, coll, desired, record


def facts(**kw: object) -> Facts:
    base: dict[str, object] = {"programs": ("prog",), "maps": {"counters": ARRAY}}
    base.update(kw)
    return Facts(collections={"a": CollectionFacts(**base)})  # type: ignore[arg-type]


def head(p: object) -> Change:
    from orchestrator.reconcile import Plan

    assert isinstance(p, Plan)
    c = p.change("a", Kind.COLLECTION, "a")
    assert c is not None
    return c


def test_constants_object_and_labels_are_diffed() -> None:
    d = dataclasses.replace(coll("a", "d2"), labels={"team": "edge", "tier": "gold"})
    rec = dataclasses.replace(record("a"), labels={"team": "net"}, object_sha256="aa" * 32)
    f = facts(
        object_sha256="bb" * 32,
        constants={"version": 2, "verdict": 2, "name": "x"},
        live_constants={"version": 1, "verdict": 2, "name": "x"},
    )
    c = head(plan(desired(d), actual(rec, facts=f)))
    assert c.op is Op.UPDATE
    assert c.diffs == (
        FieldDiff("object", "sha256:" + "aa" * 32, "sha256:" + "bb" * 32),
        FieldDiff("constant version", 1, 2),
        FieldDiff("label team", "net", "edge"),
        FieldDiff("label tier", None, "gold"),
    )
    assert c.reason == (
        "generation 1 -> 2: changed: object, constant version, label team, label tier"
    )
    assert [str(x) for x in c.diffs] == [
        "object: sha256:aaaaaaaaaaaa… → sha256:bbbbbbbbbbbb…",
        "constant version: 1 → 2",
        "label team: net → edge",
        "label tier: (none) → gold",
    ]


def test_unknown_old_values_are_not_guessed() -> None:
    # records from before labels were kept, constants that could not be read back
    d = dataclasses.replace(coll("a", "d2"), labels={"team": "edge"})
    c = head(plan(desired(d), actual(record("a"), facts=facts(constants={"version": 2}))))
    assert c.diffs == ()
    assert c.reason == "generation 1 -> 2: manifest changed"


def test_object_file_and_struct_constants() -> None:
    d = dataclasses.replace(coll("a", "d2"), object_file=Path("/obj/b.o"))
    f = facts(constants={"p": {"x": 1, "y": -4}}, live_constants={"p": {"x": 3, "y": -4}})
    c = head(plan(desired(d), actual(record("a"), facts=f)))
    assert [str(x) for x in c.diffs] == [
        "object file: /obj/a.o → /obj/b.o",
        'constant p: {"x": 3, "y": -4} → {"x": 1, "y": -4}',
    ]


def test_max_entries_and_a_preserved_map() -> None:
    big = dataclasses.replace(ARRAY, max_entries=16)
    d = coll("a", "d2", maps={"counters": MapOptions("counters", max_entries=16)})
    p = plan(desired(d), actual(record("a"), facts=facts(maps={"counters": big})))
    m = p.change("a", Kind.MAP, "counters")
    assert m is not None and m.op is Op.REPLACE
    assert m.diffs == (FieldDiff("max_entries", 4, 16),)
    assert head(p).reason == "generation 1 -> 2: changed: map counters"

    rec = record("a", maps={"counters": MapRecord("counters", 17, ARRAY, "maps/counters", True)})
    d = coll("a", "d2", maps={"counters": MapOptions("counters", preserve=True)})
    p = plan(desired(d), actual(rec, facts=facts()))
    m = p.change("a", Kind.MAP, "counters")
    assert m is not None and m.op is Op.NOOP and m.printed
    assert str(m) == "= map a/counters: preserved, id 17"
    assert p.counts() == (1, 0, 1)  # the program; the preserved map is no change
    assert "= map a/counters: preserved, id 17" in str(p)


def test_attachment_titles() -> None:
    def title(a: Attachment) -> str:
        return attachment_title(a.program, target_kind(a.target), target_fields(a.target))

    netns = Path("/var/run/netns/blue")
    assert title(Attachment("p", XDP)) == "p → xdp veth0"
    assert title(Attachment("p", dataclasses.replace(XDP, netns=netns))) == (
        "p → xdp veth0 (netns blue)"
    )
    tc = TcTarget("eth1", Direction.EGRESS, netns=Path("/proc/1/ns/net"))
    assert title(Attachment("p", tc)) == "p → tc eth1 egress (netns /proc/1/ns/net)"
    cg = CgroupTarget(Path("/sys/fs/cgroup/x"), "egress")
    assert title(Attachment("p", cg)) == "p → cgroup /sys/fs/cgroup/x egress"
    assert title(Attachment("p", TP)) == "p → tracepoint syscalls/sys_enter_getppid"
    up = UprobeTarget(Path("/bin/sh"), symbol="main", retprobe=True, pid=9)
    assert title(Attachment("p", up)) == "p → uretprobe /bin/sh:main+0 (pid 9)"
    assert title(Attachment("p", NetnsTarget())) == "p → netns (own)"
    assert attachment_title("p", "xdp", None) == ""  # records without fields: the key


def test_a_new_attachment_line_is_short() -> None:
    p = plan(desired(coll("a", attach=(Attachment("prog", XDP),))), actual(facts=facts()))
    (line,) = p.changes_for("a", Kind.ATTACHMENT)
    assert str(line) == "+ attachment a/prog → xdp veth0: new link"
    assert line.to_json()["title"] == "prog → xdp veth0"
    assert line.to_json()["name"] == "prog@xdp::veth0"
