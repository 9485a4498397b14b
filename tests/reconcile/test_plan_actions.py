"""The plan as typed actions (pure, no kernel): which action each change is, in the order
the transaction runs them, with everything it needs decided; the printed lines are the
actions' own lines."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TypeVar

from orchestrator.manifest.model import (
    Attachment,
    Direction,
    MapFrom,
    MapOptions,
    TcTarget,
    XdpMode,
)
from orchestrator.reconcile import (
    AttachmentRecord,
    CollectionFacts,
    Drift,
    Facts,
    Kind,
    MapRecord,
    Op,
    Ownership,
    TargetFacts,
    plan,
    plan_destroy,
)
from orchestrator.reconcile.actions import (
    Action,
    Attach,
    Commit,
    Delete,
    Detach,
    FromLive,
    FromPin,
    FromStaged,
    Keep,
    MakeBeforeBreak,
    MapFate,
    Mark,
    NotApplied,
    OpenStaging,
    Reattach,
    Release,
    ReleaseRoot,
    RemoveLeftover,
    RemoveStaging,
    Seal,
    Stage,
    SwitchLink,
    WriteRecord,
)
from orchestrator.reconcile.plan import Plan, link_pin_name, load_key
from tests.reconcile.test_plan import ARRAY, TP, XDP, actual, coll, desired, facts_for, record

OWNED = Ownership(b"t" * 16)


def kinds(p: Plan) -> list[str]:
    return [a.action for a in p.actions]


T = TypeVar("T", bound=Action)


def only(p: Plan, cls: type[T]) -> T:
    (found,) = [a for a in p.actions if isinstance(a, cls)]
    return found


def test_a_new_collection_is_staged_attached_and_committed() -> None:
    att = Attachment("prog", XDP)
    p = plan(desired(coll("a", attach=(att,))), actual(facts=facts_for("a")))
    assert kinds(p) == [
        "claim_root",  # nothing under the root is ours yet
        "open_staging",
        "stage",
        "attach",
        "seal",
        "commit",
        "write_record",
        "release",
        "remove_staging",
    ]
    stage = only(p, Stage)
    assert stage.collection == "a" and stage.replacements == ()
    assert stage.pinned == frozenset() and stage.load_maps is None
    attach = only(p, Attach)
    assert attach.key == att.key() and attach.link_kind == "xdp" and not attach.take_over
    assert attach.pin == f"links/{link_pin_name(att)}"
    # the lines are the actions' own: the collection, its map and program (the stage), the
    # attachment (the attach)
    assert [len(a.lines) for a in p.actions] == [0, 0, 3, 1, 0, 0, 0, 0, 0]
    assert p.changes == stage.lines + attach.lines
    actions = p.to_json()["actions"]
    assert isinstance(actions, list) and [a["action"] for a in actions] == kinds(p)


def test_nothing_to_do_runs_nothing() -> None:
    p = plan(desired(coll("a")), actual(record("a"), ownership=OWNED))
    assert kinds(p) == ["unchanged"] and not p.runs
    (only_line,) = p.changes
    assert only_line.op is Op.NOOP and p.actions[0].lines == (only_line,)


def test_bookkeeping_alone_runs_a_transaction() -> None:
    """A root with collections but no owner marker is claimed; a collection made before
    markers existed is marked after the commit; leftovers are removed first."""
    left = Path("/r/_staging-1-abc")
    own = Ownership(b"", unmarked=("a",))
    p = plan(desired(coll("a")), dataclasses.replace(actual(record("a"), ownership=own),
                                                     staging=(left,)))  # fmt: skip
    assert kinds(p) == [
        "remove_leftover",
        "claim_root",
        "unchanged",
        "seal",
        "write_record",
        "mark",
    ]
    assert p.runs and not p.has_changes and p.garbage == (left,)
    assert only(p, RemoveLeftover).path == left and only(p, Mark).collection == "a"


def test_an_upgrade_switches_in_place_or_makes_before_breaking() -> None:
    xdp, tp = Attachment("prog", XDP), Attachment("prog", TP)
    rxdp = AttachmentRecord(xdp.key(), "prog", "xdp", 7, "links/x")
    rtp = AttachmentRecord(tp.key(), "prog", "tracepoint", 8, "links/t")
    keep = {"counters": MapOptions("counters", preserve=True)}
    p = plan(
        desired(coll("a", "d2", maps=keep, attach=(xdp, tp))),
        actual(record("a", atts=(rxdp, rtp)), facts=facts_for("a"), ownership=OWNED),
    )
    assert kinds(p) == [
        "open_staging",
        "stage",
        "switch_link",
        "make_before_break",
        "seal",
        "commit",
        "write_record",
        "release",
        "detach",  # the tracepoint's old link, once the new one runs
        "remove_staging",
    ]
    stage = only(p, Stage)
    # the preserved map is handed over from its live pin, and pinned in the new tree
    (rep,) = stage.replacements
    assert rep.map == "counters" and isinstance(rep.source, FromLive)
    assert rep.source.map.id == 10 and rep.record == ""
    assert stage.pinned == frozenset({"counters"})
    assert only(p, SwitchLink).link == rxdp
    assert only(p, MakeBeforeBreak).replaces == rtp
    detach = only(p, Detach)
    assert detach.link == rtp and detach.lines == ()  # the make-before-break line says it


def test_a_renamed_program_on_an_xdp_hook_switches_the_recorded_link() -> None:
    old, new = Attachment("old", XDP), Attachment("new", XDP)
    rold = AttachmentRecord(old.key(), "old", "xdp", 7, "links/o")
    facts = Facts({"a": CollectionFacts(programs=("new",), maps={"counters": ARRAY})})
    p = plan(
        desired(coll("a", "d2", attach=(new,))),
        actual(record("a", progs=("old",), atts=(rold,)), facts=facts, ownership=OWNED),
    )
    switch = only(p, SwitchLink)
    assert switch.key == new.key() and switch.link == rold
    assert not [a for a in p.actions if isinstance(a, Detach)]  # the link is carried over


def test_a_take_over_where_our_previous_link_drifted_attaches_anew() -> None:
    """The plan says "take over" (our previous link on that hook is gone): the action is a
    new link that may take the hook over, never a switch of the drifted link."""
    old = Attachment("old", XDP)
    new = Attachment("new", dataclasses.replace(XDP, take_over=True))
    rold = AttachmentRecord(old.key(), "old", "xdp", 7, "links/o")
    facts = Facts(
        {"a": CollectionFacts(programs=("new",), maps={"counters": ARRAY})},
        targets={XDP.key(): TargetFacts(xdp_prog_id=4242, xdp_prog_name="fw", xdp_mode="native")},
    )
    drift = {"a": (Drift("attachment", old.key(), "link 7 pin is missing", "missing"),)}
    p = plan(
        desired(coll("a", "d2", attach=(new,))),
        actual(record("a", progs=("old",), atts=(rold,)), drift=drift, facts=facts,
               ownership=OWNED),
    )  # fmt: skip
    assert not p.problems
    line = p.change("a", Kind.ATTACHMENT, new.key())
    assert line is not None and line.reason.startswith("take over XDP program 4242")
    attach = only(p, Attach)
    assert attach.take_over and attach.lines == (line,)
    assert not [a for a in p.actions if isinstance(a, SwitchLink)]
    (detach,) = [a for a in p.actions if isinstance(a, Detach)]
    assert detach.link == rold and detach.lines[0].op is Op.DELETE


def test_an_xdp_mode_change_is_reattached_after_every_other_switch() -> None:
    mode = Attachment("p", dataclasses.replace(XDP, mode=XdpMode.NATIVE))
    tc = Attachment("q", TcTarget(interface="veth0", direction=Direction.INGRESS))
    d = coll("a", "d2", attach=(mode, tc))
    rec = record(
        "a",
        progs=("p", "q"),
        atts=(AttachmentRecord(mode.key(), "p", "xdp", 7, "links/p", mode="generic"),),
    )
    rec = dataclasses.replace(rec, load_key=load_key(d, "x"))
    facts = Facts(
        {"a": CollectionFacts(programs=("p", "q"), object_sha256="x", maps={"counters": ARRAY})}
    )
    p = plan(desired(d), actual(rec, facts=facts, ownership=OWNED))
    assert kinds(p)[:5] == ["open_staging", "keep", "attach", "reattach", "seal"]
    assert only(p, Reattach).link.link_id == 7
    # the printed order follows: the re-attach line comes after the new attachment's
    assert [c.name for c in p.changes_for("a", Kind.ATTACHMENT)] == [tc.key(), mode.key()]


def test_a_kept_collection_says_what_becomes_of_each_map() -> None:
    """Pinned maps get a second pin in the new tree, substitutions are carried, a map the
    manifest stops pinning is held by its programs (or freed when none holds it)."""
    d = coll(
        "a",
        "d2",
        maps={
            "pinned": MapOptions("pinned", pin=True),
            "shared": MapOptions("shared", source_from=MapFrom(collection="b", map="m")),
        },
    )
    b = coll("b")
    maps = {
        "pinned": MapRecord("pinned", 1, ARRAY, "maps/pinned"),
        "loose": MapRecord("loose", 2, ARRAY, "maps/loose"),
        "gone": MapRecord("gone", 3, ARRAY, "maps/gone"),
        "shared": MapRecord("shared", 4, ARRAY, "", source="collection/b/m"),
    }
    rec = dataclasses.replace(record("a", maps=maps, deps=("b",)), load_key=load_key(d, "x"))
    rb = record("b", maps={"m": MapRecord("m", 4, ARRAY, "maps/m")})
    facts = Facts(
        {"a": CollectionFacts(programs=("prog",), object_sha256="x", held=frozenset({"loose"}))}
    )
    p = plan(desired(d, b), actual(rec, rb, facts=facts, ownership=OWNED))
    keep = only(p, Keep)
    assert {k.map.name: k.fate for k in keep.maps} == {
        "pinned": MapFate.PIN,
        "loose": MapFate.HELD,
        "gone": MapFate.DROP,
        "shared": MapFate.CARRY,
    }
    assert keep.fresh == () and keep.fresh_replacements == ()
    gone = p.change("a", Kind.MAP, "gone")
    assert gone is not None and gone.op is Op.DELETE and gone in keep.lines


def test_substitutions_are_resolved_where_the_map_is_at_that_point() -> None:
    """A map from a collection staged earlier in the same apply is its staged map; from an
    unchanged one, its live map (a substitution of a substitution followed to its source);
    from a pinned path, that path; from a collection that is not applied, a failure."""
    owner = coll("owner", "d2")
    user = coll("user", "d2", maps={"m": MapOptions("m", source_from=MapFrom(collection="owner"))})
    p = plan(
        desired(owner, user),
        actual(facts=Facts({"owner": CollectionFacts(maps={"m": ARRAY}),
                            "user": CollectionFacts(maps={"m": ARRAY})})),
    )  # fmt: skip
    stages = [a for a in p.actions if isinstance(a, Stage)]
    assert [s.collection for s in stages] == ["owner", "user"]
    assert stages[0].pinned == frozenset({"m"})  # user takes it: pinned by its owner
    (rep,) = stages[1].replacements
    assert rep.source == FromStaged("owner", "m") and rep.record == "collection/owner/m"

    relay = coll("relay", maps={"m": MapOptions("m", source_from=MapFrom(collection="owner"))})
    via = coll("via", "d2", maps={"m": MapOptions("m", source_from=MapFrom(collection="relay"))})
    pin = coll("pin", "d2", maps={"m": MapOptions("m", source_from=MapFrom(pinned=Path("/p/m")))})
    rec_owner = record("owner", maps={"m": MapRecord("m", 9, ARRAY, "maps/m")})
    rec_relay = record(
        "relay", maps={"m": MapRecord("m", 9, ARRAY, "", source="collection/owner/m")}
    )
    p = plan(
        desired(coll("owner"), relay, via, pin, coll("lone", "d2", maps={
            "m": MapOptions("m", source_from=MapFrom(collection="nobody"))})),
        actual(rec_owner, rec_relay, facts=facts_for("via", "pin", "lone"), ownership=OWNED),
    )  # fmt: skip
    sources = {s.collection: s.replacements[0].source for s in p.actions if isinstance(s, Stage)}
    assert isinstance(sources["via"], FromLive) and sources["via"].collection == "owner"
    assert sources["via"].map.id == 9
    assert sources["pin"] == FromPin(Path("/p/m"))
    assert sources["lone"] == NotApplied("nobody", "m")
    assert p.problems  # "nobody" is not declared: the plan says so before anything runs


def test_destroy_deletes_detaches_and_gives_the_root_up() -> None:
    xdp = Attachment("prog", XDP)
    ra = AttachmentRecord(xdp.key(), "prog", "xdp", 7, "links/x")
    p = plan_destroy(actual(record("a", atts=(ra,)), ownership=OWNED), None)
    assert kinds(p) == [
        "open_staging",
        "seal",
        "delete",
        "write_record",
        "release",
        "detach",
        "remove_staging",
        "release_root",
    ]
    delete = only(p, Delete)
    assert [c.kind for c in delete.lines] == [
        Kind.COLLECTION,
        Kind.ATTACHMENT,
        Kind.PROGRAM,
        Kind.MAP,
    ]
    assert p.changes == delete.lines and only(p, Detach).link == ra
    # destroying one of two collections keeps the root
    p = plan_destroy(actual(record("a"), record("b"), ownership=OWNED), ["a"])
    assert not [a for a in p.actions if isinstance(a, ReleaseRoot)]


def test_every_line_is_printed_by_exactly_one_action() -> None:
    """Over a plan with every kind of action: the printed lines are exactly the actions'
    lines, each once; the actions of each phase come in the transaction's order."""
    xdp, tp = Attachment("prog", XDP), Attachment("prog", TP)
    gone = AttachmentRecord("old@xdp:veth9", "prog", "xdp", 9, "links/o")
    rec = record(
        "a",
        atts=(AttachmentRecord(xdp.key(), "prog", "xdp", 7, "links/x"), gone),
    )
    p = plan(
        desired(coll("a", "d2", attach=(xdp, tp)), coll("n")),
        actual(rec, record("z"), facts=facts_for("a", "n"), ownership=OWNED),
        prune=True,
    )
    lines = [line for a in p.actions for line in a.lines]
    assert sorted(map(str, lines)) == sorted(map(str, p.changes))
    assert len(lines) == len(p.changes)
    order = [
        OpenStaging,
        Stage,
        SwitchLink,
        Attach,
        Seal,
        Commit,
        Delete,
        WriteRecord,
        Release,
        Detach,
        RemoveStaging,
    ]
    assert [type(a) for a in p.actions] == [
        OpenStaging,
        Stage,  # a
        Stage,  # n
        SwitchLink,  # a's xdp
        Attach,  # a's tracepoint
        Seal,
        Commit,  # a
        Commit,  # n
        Delete,  # z (--prune)
        WriteRecord,
        Release,
        Detach,  # a's old@veth9, no longer declared (its line)
        RemoveStaging,
    ]
    phases = [order.index(type(a)) for a in p.actions]
    assert phases == sorted(phases)
    assert only(p, Detach).link == gone and only(p, Detach).lines[0].op is Op.DELETE
