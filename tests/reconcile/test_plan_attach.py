"""The pure plan for changed attachment fields: every field is in the diff, and a change the
kernel cannot make to a live link (an XDP mode, a tcx position) is a re-attach."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from orchestrator.manifest.model import (
    Attachment,
    DesiredCollection,
    Direction,
    TcTarget,
    XdpMode,
    XdpTarget,
)
from orchestrator.reconcile import (
    AttachmentRecord,
    CollectionFacts,
    Drift,
    Facts,
    Kind,
    Op,
)
from orchestrator.reconcile import plan as make_plan
from orchestrator.reconcile.actions import FieldDiff
from orchestrator.reconcile.plan import Change, Plan, field_changes, load_key, target_fields
from orchestrator.reconcile.state import CollectionRecord
from tests.reconcile.test_plan import ARRAY, actual, coll, desired, record

XDP_GENERIC = XdpTarget(interface="veth0", mode=XdpMode.GENERIC)
TC = TcTarget(interface="veth0", direction=Direction.INGRESS)


def kept(
    d_attach: tuple[Attachment, ...], atts: tuple[AttachmentRecord, ...]
) -> tuple[DesiredCollection, CollectionRecord]:
    """(desired, record) of a collection whose object, constants and maps are unchanged
    (its programs and maps are kept) and whose manifest changed."""
    d = coll("a", "d2", attach=d_attach)
    rec = record("a", "d1", progs=("p", "q"), atts=atts)
    rec = dataclasses.replace(rec, load_key=load_key(d, "x"))
    return d, rec


def facts() -> Facts:
    return Facts(
        collections={
            "a": CollectionFacts(programs=("p", "q"), object_sha256="x", maps={"counters": ARRAY})
        }
    )


def rec_of(a: Attachment, link_id: int, *, mode: str = "", target: bool = True) -> AttachmentRecord:
    kind = "xdp" if isinstance(a.target, XdpTarget) else "tc"
    return AttachmentRecord(
        a.key(),
        a.program,
        kind,
        link_id,
        f"links/{a.program}",
        target=target_fields(a.target) if target else None,
        mode=mode,
    )


def change(p: Plan, name: str) -> Change:
    found = p.change("a", Kind.ATTACHMENT, name)
    assert found is not None, str(p)
    return found


def test_target_fields_and_field_changes() -> None:
    t = TcTarget(
        interface="eth0", direction=Direction.EGRESS, netns=Path("/run/netns/x"), before="q"
    )
    assert target_fields(t) == {
        "interface": "eth0",
        "direction": "egress",
        "netns": "/run/netns/x",
        "before": "q",
        "after": None,
    }
    ra = rec_of(Attachment("p", dataclasses.replace(t, before=None, after="q")), 1)
    assert field_changes(ra, t) == ["tc before (none) -> q", "tc after q -> (none)"]
    x = Attachment("p", XDP_GENERIC)
    assert field_changes(rec_of(x, 1), dataclasses.replace(XDP_GENERIC, take_over=True)) == [
        "xdp take_over false -> true"
    ]
    # a record written before fields were kept: nothing is known to differ
    assert field_changes(rec_of(x, 1, target=False), XDP_GENERIC) == []


def test_an_xdp_mode_change_is_a_re_attach_with_its_gap() -> None:
    old = Attachment("p", XDP_GENERIC)
    new = Attachment("p", dataclasses.replace(XDP_GENERIC, mode=XdpMode.NATIVE))
    d, rec = kept((new,), (rec_of(old, 7, mode="generic"),))
    p = make_plan(desired(d), actual(rec, facts=facts()))
    c = change(p, new.key())
    assert c.op is Op.REPLACE
    assert c.reason.startswith("xdp mode generic -> native: re-attach: link 7 is detached")
    assert "the interface runs no XDP program for a moment" in c.reason
    assert {x.op for x in p.changes_for("a", Kind.PROGRAM)} == {Op.NOOP}  # programs are kept
    assert p.kept == frozenset({"a"})

    # the same change when the programs are reloaded: still a re-attach, not an update
    rec2 = dataclasses.replace(rec, load_key="other")
    c = change(make_plan(desired(d), actual(rec2, facts=facts())), new.key())
    assert c.op is Op.REPLACE and "re-attach" in c.reason


def test_auto_and_a_mode_the_kernel_already_runs_are_recorded_only() -> None:
    old = Attachment("p", XdpTarget(interface="veth0", mode=XdpMode.AUTO))
    native = Attachment("p", XdpTarget(interface="veth0", mode=XdpMode.NATIVE))
    # auto made a native link: asking for native changes nothing in the kernel
    d, rec = kept((native,), (rec_of(old, 7, mode="native"),))
    c = change(make_plan(desired(d), actual(rec, facts=facts())), native.key())
    assert c.op is Op.UPDATE
    assert c.reason == "recorded: link 7 stays as it is"
    assert c.diffs == (FieldDiff("mode", "auto", "native"),)
    assert str(c).endswith("recorded: link 7 stays as it is; mode: auto → native")
    # and back to auto: whatever mode the link runs in is fine
    d, rec = kept((old,), (rec_of(native, 7, mode="native"),))
    c = change(make_plan(desired(d), actual(rec, facts=facts())), old.key())
    assert c.op is Op.UPDATE and c.reason.startswith("recorded")
    assert c.diffs == (FieldDiff("mode", "native", "auto"),)


def test_mode_drift_re_attaches_and_keeps_the_programs() -> None:
    a = Attachment("p", XDP_GENERIC)
    d, rec = kept((a,), (rec_of(a, 7, mode="generic"),))
    d = dataclasses.replace(d, digest="d1")  # nothing changed in the manifest
    drift = (Drift("attachment", a.key(), "the program runs in native mode", "mode"),)
    p = make_plan(desired(d), actual(rec, drift={"a": drift}, facts=facts()))
    c = change(p, a.key())
    assert c.op is Op.REPLACE and c.reason.startswith("repair drift: the program runs in native")
    assert p.kept == frozenset({"a"})


def test_a_new_tcx_position_attaches_a_fresh_instance_and_dropping_it_keeps_the_link() -> None:
    one = Attachment("p", TC)
    two_before = Attachment("q", dataclasses.replace(TC, before="p"))
    two_plain = Attachment("q", TC)
    one_before = Attachment("p", dataclasses.replace(TC, before="q"))
    d, rec = kept((two_plain, one_before), (rec_of(one, 1), rec_of(two_before, 2)))
    p = make_plan(desired(d), actual(rec, facts=facts()))
    p_change = change(p, one_before.key())
    assert p_change.op is Op.REPLACE
    assert p_change.reason.startswith("tc position appended -> before q: make-before-break: p")
    q_change = change(p, two_plain.key())
    assert q_change.op is Op.UPDATE
    assert q_change.reason == "recorded: link 2 stays as it is"
    assert q_change.diffs == (FieldDiff("before", "p", None),)
    progs = {c.name: c for c in p.changes_for("a", Kind.PROGRAM)}
    assert progs["p"].op is Op.REPLACE and progs["p"].reason.startswith("new instance (replaces id")
    assert progs["q"].op is Op.NOOP
    assert p.counts() == (2, 1, 2)  # a program and a link replaced, one link recorded


def test_links_placed_next_to_a_re_attached_anchor_are_placed_again() -> None:
    one = Attachment("p", TC)
    two = Attachment("q", dataclasses.replace(TC, after="p"))
    d, rec = kept((one, two), (rec_of(one, 1), rec_of(two, 2)))
    d = dataclasses.replace(d, digest="d1")
    drift = (Drift("attachment", one.key(), "link 1 was detached from its hook", "detached"),)
    p = make_plan(desired(d), actual(rec, drift={"a": drift}, facts=facts()))
    assert change(p, one.key()).op is Op.REPLACE
    q = change(p, two.key())
    assert q.op is Op.REPLACE
    assert q.reason.startswith("p is attached anew, so this link is placed after it again")
    progs = {c.name: c.op for c in p.changes_for("a", Kind.PROGRAM)}
    assert progs == {"p": Op.NOOP, "q": Op.REPLACE}  # p's link is new anyway: q needs one


def test_records_without_fields_change_nothing_until_they_have_them() -> None:
    old = Attachment("p", XDP_GENERIC)
    new = Attachment("p", dataclasses.replace(XDP_GENERIC, mode=XdpMode.NATIVE))
    d, rec = kept((new,), (rec_of(old, 7, target=False),))
    c = change(make_plan(desired(d), actual(rec, facts=facts())), new.key())
    # nothing recorded to compare with: the apply records the kernel's mode, and the next
    # plan re-attaches if it is not the declared one
    assert c.op is Op.NOOP


def test_attachment_records_keep_fields_and_mode_in_json() -> None:
    a = Attachment("p", dataclasses.replace(XDP_GENERIC, netns=Path("/run/netns/n")))
    ra = rec_of(a, 7, mode="generic")
    back = AttachmentRecord.from_json(ra.key, ra.to_json())
    assert back == ra and back.target is not None and back.target["netns"] == "/run/netns/n"
    old = {"program": "p", "kind": "xdp", "link_id": 7, "pin": "links/p"}
    legacy = AttachmentRecord.from_json("k", old)
    assert legacy.target is None and legacy.mode == ""
    assert legacy.to_json() == old  # written back as it was read
    with pytest.raises(ValueError, match=r"^attachments\.k\.target: expected a mapping of fields$"):
        AttachmentRecord.from_json("k", {**old, "target": ["interface", "veth0"]})
    with pytest.raises(ValueError, match=r"^attachments\.k\.target: expected a mapping"):
        AttachmentRecord.from_json("k", {**old, "target": {"interface": {"nested": 1}}})
