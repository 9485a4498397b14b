"""The pure plan: hand-made desired and actual states, no kernel."""

from __future__ import annotations

from pathlib import Path

from orchestrator.manifest.model import (
    Attachment,
    DesiredCollection,
    DesiredState,
    MapFrom,
    MapOptions,
    OnIncompatible,
    Source,
    TracepointTarget,
    XdpTarget,
)
from orchestrator.reconcile import (
    ActualCollection,
    ActualState,
    AttachmentRecord,
    CollectionFacts,
    CollectionRecord,
    Drift,
    Facts,
    Foreign,
    Kind,
    MapRecord,
    MapShape,
    Op,
    Ownership,
    ProgramRecord,
    TargetFacts,
    plan,
    plan_destroy,
)

ARRAY = MapShape(type=2, key_size=4, value_size=8, max_entries=4, flags=0)
XDP = XdpTarget(interface="veth0")
TP = TracepointTarget(group="syscalls", name="sys_enter_getppid")


def coll(
    name: str,
    digest: str = "d1",
    *,
    maps: dict[str, MapOptions] | None = None,
    attach: tuple[Attachment, ...] = (),
) -> DesiredCollection:
    return DesiredCollection(
        name=name,
        object_file=Path(f"/obj/{name}.o"),
        source=Source(Path(f"/m/{name}.yaml"), 3, 1),
        maps=maps or {},
        attach=attach,
        digest=digest,
    )


def desired(*colls: DesiredCollection) -> DesiredState:
    return DesiredState({c.name: c for c in colls})


def record(
    name: str,
    digest: str = "d1",
    *,
    generation: int = 1,
    maps: dict[str, MapRecord] | None = None,
    progs: tuple[str, ...] = ("prog",),
    atts: tuple[AttachmentRecord, ...] = (),
    deps: tuple[str, ...] = (),
) -> CollectionRecord:
    return CollectionRecord(
        name=name,
        generation=generation,
        digest=digest,
        object_file=f"/obj/{name}.o",
        object_sha256="x",
        manifest=f"/m/{name}.yaml:3:1",
        applied_at="2026-01-01T00:00:00Z",
        maps=maps or {"counters": MapRecord("counters", 10, ARRAY, "")},
        programs={p: ProgramRecord(p, 100 + i, "ab", f"progs/{p}") for i, p in enumerate(progs)},
        attachments={a.key: a for a in atts},
        depends_on=deps,
    )


def actual(
    *recs: CollectionRecord,
    drift: dict[str, tuple[Drift, ...]] | None = None,
    facts: Facts | None = None,
    ownership: Ownership | None = None,
) -> ActualState:
    drift = drift or {}
    return ActualState(
        {r.name: ActualCollection(r, drift.get(r.name, ())) for r in recs},
        ownership=ownership or Ownership(),
        facts=facts or Facts(),
    )


def facts_for(*names: str, shape: MapShape = ARRAY) -> Facts:
    return Facts(
        collections={
            n: CollectionFacts(programs=("prog",), maps={"counters": shape}) for n in names
        }
    )


def ops(p: object) -> list[tuple[str, str, str, Op]]:
    from orchestrator.reconcile import Plan

    assert isinstance(p, Plan)
    return [(c.kind, c.collection, c.name, c.op) for c in p.changes]


def test_create_everything_for_a_new_collection() -> None:
    att = Attachment("prog", XDP)
    p = plan(desired(coll("a", attach=(att,))), actual(facts=facts_for("a")))
    assert ops(p) == [
        (Kind.COLLECTION, "a", "a", Op.CREATE),
        (Kind.MAP, "a", "counters", Op.CREATE),
        (Kind.PROGRAM, "a", "prog", Op.CREATE),
        (Kind.ATTACHMENT, "a", att.key(), Op.CREATE),
    ]
    assert p.counts() == (3, 0, 0)
    assert p.has_changes and not p.problems
    assert "Plan: 3 to add, 0 to change, 0 to destroy." in str(p)


def test_equal_digest_and_no_drift_is_a_noop() -> None:
    p = plan(desired(coll("a")), actual(record("a", generation=4)))
    assert ops(p) == [(Kind.COLLECTION, "a", "a", Op.NOOP)]
    assert not p.has_changes
    assert p.counts() == (0, 0, 0)
    assert "generation 4" in p.changes[0].reason


def test_changed_digest_replaces_programs_and_updates_xdp_in_place() -> None:
    xdp = Attachment("prog", XDP)
    tp = Attachment("prog", TP)
    rec = record(
        "a",
        generation=2,
        atts=(
            AttachmentRecord(xdp.key(), "prog", "xdp", 7, "links/x"),
            AttachmentRecord(tp.key(), "prog", "tracepoint", 8, "links/t"),
        ),
    )
    d = coll("a", "d2", maps={"counters": MapOptions("counters", preserve=True)}, attach=(xdp, tp))
    p = plan(desired(d), actual(rec, facts=facts_for("a")))
    got = {(c.kind, c.name): c for c in p.changes}
    assert got[(Kind.COLLECTION, "a")].op is Op.UPDATE
    assert "generation 2 -> 3" in got[(Kind.COLLECTION, "a")].reason
    assert got[(Kind.PROGRAM, "prog")].op is Op.REPLACE
    assert got[(Kind.MAP, "counters")].op is Op.NOOP
    assert "preserved" in got[(Kind.MAP, "counters")].reason
    assert got[(Kind.ATTACHMENT, xdp.key())].op is Op.UPDATE
    assert "BPF_LINK_UPDATE" in got[(Kind.ATTACHMENT, xdp.key())].reason
    assert got[(Kind.ATTACHMENT, tp.key())].op is Op.REPLACE
    assert "make-before-break" in got[(Kind.ATTACHMENT, tp.key())].reason
    # program -/+ (1 add 1 destroy), xdp ~, tracepoint -/+
    assert p.counts() == (2, 1, 2)


def test_non_preserved_map_is_recreated() -> None:
    p = plan(desired(coll("a", "d2")), actual(record("a"), facts=facts_for("a")))
    c = p.change("a", Kind.MAP, "counters")
    assert c is not None and c.op is Op.REPLACE and "not preserved" in c.reason


def test_incompatible_preserved_map_is_a_problem_unless_recreate() -> None:
    bigger = MapShape(2, 4, 8, 64, 0)
    keep = {
        "counters": MapOptions("counters", preserve=True, source=Source(Path("/m/a.yaml"), 9, 5))
    }
    p = plan(
        desired(coll("a", "d2", maps=keep)), actual(record("a"), facts=facts_for("a", shape=bigger))
    )
    assert len(p.problems) == 1
    text = str(p.problems[0])
    assert "collection a (/m/a.yaml:9:5)" in text
    assert "max entries 4 -> 64" in text and "on_incompatible: recreate" in text

    recreate = {
        "counters": MapOptions("counters", preserve=True, on_incompatible=OnIncompatible.RECREATE)
    }
    p = plan(
        desired(coll("a", "d2", maps=recreate)),
        actual(record("a"), facts=facts_for("a", shape=bigger)),
    )
    assert not p.problems
    c = p.change("a", Kind.MAP, "counters")
    assert c is not None and c.op is Op.REPLACE and "contents are lost" in c.reason


def test_dependencies_come_first_and_follow_recreated_maps() -> None:
    sub = {"counters": MapOptions("counters", source_from=MapFrom(collection="owner"))}
    user = coll("user", maps=sub)
    owner = coll("owner", "d2")
    rec_user = record(
        "user",
        maps={"counters": MapRecord("counters", 10, ARRAY, "", source="collection/owner/counters")},
        deps=("owner",),
    )
    p = plan(
        desired(user, owner), actual(record("owner"), rec_user, facts=facts_for("owner", "user"))
    )
    colls = [c.collection for c in p.changes if c.kind is Kind.COLLECTION]
    assert colls == ["owner", "user"]
    # the owner's map is recreated, so the user (same digest) must reload too
    assert p.collection_op("user") is Op.UPDATE
    assert (
        "follows owner/counters"
        in p.changes[[c.collection for c in p.changes].index("user")].reason
    )

    # a preserved owner map is the same object: the user stays untouched
    keep = {"counters": MapOptions("counters", preserve=True)}
    owner = coll("owner", "d2", maps=keep)
    p = plan(
        desired(user, owner), actual(record("owner"), rec_user, facts=facts_for("owner", "user"))
    )
    assert p.collection_op("user") is Op.NOOP


def test_prune_deletes_dependents_first_and_only_with_prune() -> None:
    a = record("a")
    b = record("b", deps=("a",))
    p = plan(desired(), actual(a, b))
    assert p.changes == () and not p.has_changes
    p = plan(desired(), actual(a, b), prune=True)
    colls = [c.collection for c in p.changes if c.kind is Kind.COLLECTION]
    assert colls == ["b", "a"]
    assert all(c.op is Op.DELETE for c in p.changes)
    assert p.counts() == (0, 0, 4)  # two programs, two maps


def test_drift_is_repaired_by_reattaching() -> None:
    xdp = Attachment("prog", XDP)
    rec = record("a", atts=(AttachmentRecord(xdp.key(), "prog", "xdp", 7, "links/x"),))
    drift = {"a": (Drift("attachment", xdp.key(), "link 7 was detached", "detached"),)}
    p = plan(desired(coll("a", attach=(xdp,))), actual(rec, drift=drift, facts=facts_for("a")))
    assert p.collection_op("a") is Op.UPDATE
    assert "repair drift" in p.changes[0].reason
    c = p.change("a", Kind.ATTACHMENT, xdp.key())
    assert c is not None and c.op is Op.REPLACE and "re-attach" in c.reason

    # a live link that runs another program is switched in place
    drift = {"a": (Drift("attachment", xdp.key(), "runs 9", "program"),)}
    p = plan(desired(coll("a", attach=(xdp,))), actual(rec, drift=drift, facts=facts_for("a")))
    c = p.change("a", Kind.ATTACHMENT, xdp.key())
    assert c is not None and c.op is Op.UPDATE


def test_foreign_xdp_owner_and_missing_targets_are_problems() -> None:
    xdp = Attachment("prog", XDP, source=Source(Path("/m/a.yaml"), 12, 7))
    facts = Facts(
        collections={"a": CollectionFacts(programs=("prog",), maps={"counters": ARRAY})},
        targets={XDP.key(): TargetFacts(xdp_prog_id=4242, xdp_prog_name="other_fw")},
    )
    p = plan(desired(coll("a", attach=(xdp,))), actual(facts=facts))
    assert len(p.problems) == 1
    text = str(p.problems[0])
    assert "/m/a.yaml:12:7" in text and "other_fw" in text and "4242" in text
    assert "never detaches" in text

    # our own program on that interface is not foreign
    rec = record("a", progs=("prog",))
    own = Facts(facts.collections, {XDP.key(): TargetFacts(xdp_prog_id=100)})
    p = plan(desired(coll("a", "d2", attach=(xdp,))), actual(rec, facts=own))
    assert not p.problems
    # nor is a program that a link in a staging leftover of ours runs (a killed apply)
    left = Ownership(b"t" * 16, leftover_programs=frozenset({4242}))
    p = plan(desired(coll("a", attach=(xdp,))), actual(facts=facts, ownership=left))
    assert not p.problems

    missing = Facts(
        facts.collections, {XDP.key(): TargetFacts(problem="interface veth0 does not exist")}
    )
    p = plan(desired(coll("a", attach=(xdp,))), actual(facts=missing))
    assert "interface veth0 does not exist" in str(p.problems[0])


def test_pinned_source_and_unsupported_programs_are_problems() -> None:
    src = MapOptions("counters", source_from=MapFrom(pinned=Path("/tmp/evil")))
    facts = Facts(
        collections={
            "a": CollectionFacts(
                programs=("prog",),
                maps={"counters": ARRAY},
                problems=("program f: fentry programs are not supported",),
            )
        },
        pinned={Path("/tmp/evil"): "pinned map /tmp/evil is not on a bpf file system"},
    )
    p = plan(desired(coll("a", maps={"counters": src})), actual(facts=facts))
    texts = [str(x) for x in p.problems]
    assert any("not on a bpf file system" in t for t in texts)
    assert any("fentry" in t for t in texts)


def test_removed_attachment_and_program_are_deleted() -> None:
    xdp = Attachment("prog", XDP)
    rec = record(
        "a", progs=("prog", "old"), atts=(AttachmentRecord(xdp.key(), "prog", "xdp", 7, "links/x"),)
    )
    p = plan(desired(coll("a", "d2")), actual(rec, facts=facts_for("a")))
    assert p.change("a", Kind.ATTACHMENT, xdp.key()).op is Op.DELETE  # type: ignore[union-attr]
    assert p.change("a", Kind.PROGRAM, "old").op is Op.DELETE  # type: ignore[union-attr]


def test_foreign_entries_block_their_collection_and_are_never_deleted() -> None:
    """What bpforch cannot prove it created is foreign: a collection whose directory is
    foreign can't be applied, pruned or destroyed, and nothing foreign is ever a change."""
    lookalike = Foreign(Path("/r/zombie"), "no ownership marker", "zombie")
    link = Foreign(Path("/r/a"), "symlink to /elsewhere", "a")
    inside = Foreign(Path("/r/b/links/x"), "symlink to /elsewhere")
    own = Ownership(b"t" * 16, (lookalike, link, inside), adopted=("b",))
    p = plan(desired(coll("a"), coll("b")), actual(record("b"), ownership=own,
             facts=facts_for("a", "b")))  # fmt: skip
    assert [str(x) for x in p.problems] == [
        "collection a (/m/a.yaml:3:1): /r/a is not bpforch's (symlink to /elsewhere); bpforch "
        "never follows, changes or removes it (remove or rename it if it is yours, or give "
        "the collection another name)"
    ]
    assert p.change("b", Kind.COLLECTION, "b") is not None  # a foreign symlink inside: no block
    assert p.foreign == (lookalike, link, inside) and p.adopted == ("b",)
    assert p.to_json()["foreign"][1] == {  # type: ignore[index]
        "path": "/r/a", "what": "symlink to /elsewhere", "collection": "a"
    }  # fmt: skip
    assert p.to_json()["adopted"] == ["b"]
    # prune never deletes a look-alike; a recorded collection whose directory became foreign
    # is a problem, not a delete
    p = plan(desired(), actual(record("a"), ownership=own), prune=True)
    assert p.change("zombie", Kind.COLLECTION, "zombie") is None
    assert p.change("a", Kind.COLLECTION, "a") is None
    assert "/r/a is not bpforch's" in str(p.problems[0])
    d = plan_destroy(actual(record("a"), ownership=own), None)
    assert not d.has_changes and "/r/a is not bpforch's" in str(d.problems[0])
    d = plan_destroy(actual(ownership=own), ["zombie"])
    assert not d.has_changes
    assert str(d.problems[0]) == (
        "collection zombie: not applied by bpforch: /r/zombie is not bpforch's (no ownership "
        "marker); bpforch never follows, changes or removes it (remove or rename it if it is "
        "yours, or give the collection another name)"
    )

    a, b = record("a"), record("b", deps=("a",))
    d = plan_destroy(actual(a, b), None)
    assert [c.collection for c in d.changes if c.kind is Kind.COLLECTION] == ["b", "a"]
    d = plan_destroy(actual(a, b), ["nope"])
    assert "not applied by bpforch" in str(d.problems[0])


def test_plan_is_pure_and_json_round_trips() -> None:
    import json

    p = plan(desired(coll("a")), actual(facts=facts_for("a")))
    doc = json.loads(json.dumps(p.to_json()))
    assert doc["counts"] == {"add": 2, "change": 0, "destroy": 0}
    assert doc["changes"][0]["source"] == "/m/a.yaml:3:1"


def test_record_json_round_trip() -> None:
    from orchestrator.reconcile import StateRecord

    xdp = Attachment("prog", XDP)
    rec = record("a", atts=(AttachmentRecord(xdp.key(), "prog", "xdp", 7, "links/x"),))
    state = StateRecord({"a": rec})
    assert StateRecord.from_json(state.to_json()) == state


def test_collection_names_must_be_dns_labels() -> None:
    for bad in ("../evil", "_staging-1", "Up", "a/b", "x" * 64, ""):
        p = plan(desired(coll(bad)), actual())
        assert p.changes == ()
        assert "not a DNS label" in str(p.problems[0]), bad


def test_destroy_refuses_to_strand_a_dependent() -> None:
    a, b = record("a"), record("b", deps=("a",))
    d = plan_destroy(actual(a, b), ["a"])
    assert "collection b uses its maps" in str(d.problems[0])
    d = plan_destroy(actual(a, b), ["b", "a"])
    assert not d.problems
    assert [c.collection for c in d.changes if c.kind is Kind.COLLECTION] == ["b", "a"]


def test_same_load_key_keeps_programs_and_maps() -> None:
    import dataclasses

    from orchestrator.reconcile.plan import load_key

    xdp = Attachment("prog", XDP)
    tp = Attachment("prog", TP)
    d = coll("a", "d2", attach=(xdp, tp))
    rec = dataclasses.replace(
        record("a", atts=(AttachmentRecord(xdp.key(), "prog", "xdp", 7, "links/x"),)),
        load_key=load_key(d, "sha"),
    )
    facts = Facts(
        collections={
            "a": CollectionFacts(programs=("prog",), maps={"counters": ARRAY}, object_sha256="sha")
        }
    )
    p = plan(desired(d), actual(rec, facts=facts))
    assert p.collection_op("a") is Op.UPDATE and "kept" in p.changes[0].reason
    got = {(c.kind, c.name): c.op for c in p.changes[1:]}
    assert got == {
        (Kind.MAP, "counters"): Op.NOOP,
        (Kind.PROGRAM, "prog"): Op.NOOP,
        (Kind.ATTACHMENT, xdp.key()): Op.NOOP,
        (Kind.ATTACHMENT, tp.key()): Op.CREATE,
    }
    # other constants: another load key, the programs are reloaded
    d2 = dataclasses.replace(d, constants={"version": 2})
    p = plan(desired(d2), actual(rec, facts=facts))
    assert p.change("a", Kind.PROGRAM, "prog").op is Op.REPLACE  # type: ignore[union-attr]
    # a drifted program pin: reloaded too
    drift = {"a": (Drift("program", "prog", "pin progs/prog is missing"),)}
    p = plan(desired(d), actual(rec, facts=facts, drift=drift))
    assert p.change("a", Kind.PROGRAM, "prog").op is Op.REPLACE  # type: ignore[union-attr]


def test_without_a_digest_a_collection_is_always_reapplied() -> None:
    p = plan(desired(coll("a", digest="")), actual(record("a", digest="")))
    assert p.collection_op("a") is Op.UPDATE and "no digest" in p.changes[0].reason


def test_xdp_hook_held_by_another_own_collection() -> None:
    xdp = Attachment("prog", XDP)
    other = record("other", atts=(AttachmentRecord(xdp.key(), "prog", "xdp", 7, "links/x"),))
    facts = Facts(
        collections={"a": CollectionFacts(programs=("prog",), maps={"counters": ARRAY})},
        targets={XDP.key(): TargetFacts(xdp_prog_id=100, xdp_prog_name="prog")},
    )
    p = plan(desired(coll("a", attach=(xdp,))), actual(other, facts=facts), prune=True)
    assert len(p.problems) == 1
    assert "of collection other" in str(p.problems[0])


PROG_ARRAY = MapShape(type=3, key_size=4, value_size=4, max_entries=4, flags=0)


def test_pins_follow_the_rules() -> None:
    """pin_reason: pin: true, preserve, a prog array, another collection's from; a
    substituted map is never pinned by its user."""
    from orchestrator.reconcile.plan import pin_reason

    d = desired(
        coll(
            "a",
            maps={
                "p": MapOptions("p", pin=True),
                "k": MapOptions("k", pin=True, preserve=True),
                "f": MapOptions("f", source_from=MapFrom(pinned=Path("/sys/fs/bpf/x"))),
            },
        ),
        coll("b", maps={"s": MapOptions("s", source_from=MapFrom(collection="a", map="u"))}),
    )
    timers = MapShape(type=2, key_size=4, value_size=16, max_entries=1, flags=0, timers=True)
    assert pin_reason(d, "a", "p", ARRAY) == "pin: true"
    assert pin_reason(d, "a", "k", ARRAY) == "preserve: true"
    assert pin_reason(d, "a", "f", ARRAY) is None
    assert pin_reason(d, "a", "plain", ARRAY) is None
    assert "prog array" in str(pin_reason(d, "a", "jump", PROG_ARRAY))
    assert "timers" in str(pin_reason(d, "a", "t", timers))
    assert pin_reason(d, "a", "u", ARRAY) == "collection b uses it (from)"
    assert pin_reason(d, "b", "s", ARRAY) is None
    assert MapShape.from_json(timers.to_json()) == timers
    assert "timers" not in ARRAY.to_json()  # records of maps without timers are unchanged


def test_new_maps_say_whether_they_are_pinned_or_not_kept() -> None:
    facts = Facts(
        collections={
            "a": CollectionFacts(
                programs=("prog",),
                maps={"counters": ARRAY, "jump": PROG_ARRAY, "spare": ARRAY},
                held=frozenset({"counters", "jump"}),
            )
        }
    )
    p = plan(desired(coll("a")), actual(facts=facts))
    reasons = {c.name: (c.op, c.reason) for c in p.changes_for("a", Kind.MAP)}
    assert reasons["counters"] == (Op.CREATE, "new map, not pinned (its programs hold it)")
    assert (
        reasons["jump"][0] is Op.CREATE and "pinned (a prog array is always" in reasons["jump"][1]
    )
    assert reasons["spare"][0] is Op.NOOP and reasons["spare"][1].startswith("not kept")
    assert p.counts() == (3, 0, 0)  # counters, jump, the program


def test_a_new_from_pins_the_source_in_place() -> None:
    """The owner's manifest is unchanged, but a new user substitutes its map: the owner's
    live map is pinned in place (facts are gathered for it), nothing is reloaded; dropping
    the user unpins it again."""
    from orchestrator.reconcile.facts import needs_work
    from orchestrator.reconcile.plan import PinRules, load_key

    owner = coll("a")
    user = coll("b", maps={"counters": MapOptions("counters", source_from=MapFrom("a"))})
    rec = record("a")
    rec = CollectionRecord(**{**_fields(rec), "load_key": load_key(owner, "sha")})
    state = actual(rec)
    assert not needs_work(owner, state, PinRules(desired(owner)))
    assert needs_work(owner, state, PinRules(desired(owner, user)))
    facts = Facts(
        collections={
            "a": CollectionFacts(
                programs=("prog",),
                maps={"counters": ARRAY},
                object_sha256="sha",
                held=frozenset({"counters"}),
            ),
            "b": CollectionFacts(programs=("prog",), maps={"counters": ARRAY}),
        }
    )
    p = plan(desired(owner, user), actual(rec, facts=facts))
    assert p.collection_op("a") is Op.UPDATE and "kept" in p.changes[0].reason
    line = p.change("a", Kind.MAP, "counters")
    assert line is not None and line.op is Op.UPDATE
    assert str(line) == (
        "~ map a/counters: pin: live map (id 10) is pinned at maps/counters in place "
        "(collection b uses it (from)); nothing is reloaded"
    )
    assert p.change("a", Kind.PROGRAM, "prog").op is Op.NOOP  # type: ignore[union-attr]

    pinned = CollectionRecord(
        **{
            **_fields(rec),
            "maps": {"counters": MapRecord("counters", 10, ARRAY, "maps/counters")},
        }
    )
    p = plan(desired(owner), actual(pinned, facts=facts))
    line = p.change("a", Kind.MAP, "counters")
    assert line is not None and line.op is Op.UPDATE and line.reason.startswith("unpin:")
    # nothing holds it: unpinning frees it
    facts_unheld = Facts(
        collections={
            "a": CollectionFacts(
                programs=("prog",), maps={"counters": ARRAY}, object_sha256="sha", held=frozenset()
            )
        }
    )
    p = plan(desired(owner), actual(pinned, facts=facts_unheld))
    line = p.change("a", Kind.MAP, "counters")
    assert line is not None and line.op is Op.DELETE and "freed" in line.reason


def test_records_from_before_pins_had_a_meaning_are_kept() -> None:
    """A record written when every map was pinned (and pin was part of the load key):
    its collections are kept, and their maps unpinned in place, not reloaded."""
    from orchestrator.reconcile.plan import load_key

    d = coll("a", maps={"counters": MapOptions("counters")})
    old = CollectionRecord(
        **{
            **_fields(record("a", maps={"counters": MapRecord("counters", 10, ARRAY, "maps/c")})),
            "load_key": load_key(d, "sha", legacy=True),
        }
    )
    assert load_key(d, "sha", legacy=True) != load_key(d, "sha")
    facts = Facts(
        collections={
            "a": CollectionFacts(
                programs=("prog",),
                maps={"counters": ARRAY},
                object_sha256="sha",
                held=frozenset({"counters"}),
            )
        }
    )
    p = plan(desired(d), actual(old, facts=facts))
    assert "programs and maps are kept" in p.changes[0].reason
    line = p.change("a", Kind.MAP, "counters")
    assert line is not None and line.op is Op.UPDATE and line.reason.startswith("unpin:")


def test_pin_rules_answer_once_per_collection_and_record() -> None:
    """The facts and the plan ask PinRules.changes of each unchanged collection: the answer
    is made once for that collection and record, and made again for another record (or
    another collection) of that name."""
    from orchestrator.reconcile.plan import PinRules

    owner = coll("a")
    user = coll("b", maps={"counters": MapOptions("counters", source_from=MapFrom("a"))})
    rules = PinRules(desired(owner, user))
    rec = record("a")  # counters not pinned
    first = rules.changes(owner, rec)
    assert first == {"counters": "collection b uses it (from)"}
    assert rules.changes(owner, rec) is first  # remembered
    pinned = record("a", maps={"counters": MapRecord("counters", 10, ARRAY, "maps/counters")})
    assert rules.changes(owner, pinned) == {}  # another record: asked anew
    assert rules.changes(owner, record("a")) == first  # an equal record: asked anew, same
    other = coll("a", "d2")  # another collection object of that name
    assert rules.changes(other, pinned) == {}
    assert PinRules(desired(owner)).changes(owner, rec) == {}  # no user: nothing to pin


def _fields(rec: CollectionRecord) -> dict[str, object]:
    import dataclasses

    return {f.name: getattr(rec, f.name) for f in dataclasses.fields(rec)}


def test_partial_load_lists_only_the_maps_it_creates(compile_bpf) -> None:  # type: ignore[no-untyped-def]
    """With programs: [..], the plan lists the maps the bound programs (and the maps the
    manifest names) need, not every map in the object; a map the previous generation had
    and the new one does not create is destroyed, saying why."""
    from dataclasses import replace

    from orchestrator.ebpf import CollectionSpec
    from orchestrator.reconcile.facts import map_shapes

    src = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, __u32); __type(value, __u64);
         __uint(max_entries, 1); } used SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, __u32); __type(value, __u64);
         __uint(max_entries, 1); } other SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_HASH); __type(key, __u32); __type(value, __u64);
         __uint(max_entries, 8); } named SEC(".maps");
SEC("xdp") int bound(struct xdp_md *c)
{ __u32 k = 0; return bpf_map_lookup_elem(&used, &k) ? 2 : 1; }
SEC("xdp") int unbound(struct xdp_md *c)
{ __u32 k = 0; return bpf_map_lookup_elem(&other, &k) ? 2 : 1; }
char LICENSE[] SEC("license") = "GPL";
"""
    spec = CollectionSpec.from_file(compile_bpf(src))
    every = coll("a")
    assert sorted(map_shapes(every, spec)) == ["named", "other", "used"]
    bound = replace(coll("a", maps={"named": MapOptions("named", pin=True)}), programs=("bound",))
    shapes = map_shapes(bound, spec)
    assert sorted(shapes) == ["named", "used"]
    assert shapes["used"] == MapShape(type=2, key_size=4, value_size=8, max_entries=1, flags=0)
    assert sorted(map_shapes(replace(bound, maps={}), spec)) == ["used"]

    facts = Facts(
        collections={
            "a": CollectionFacts(
                programs=("bound",), object_sha256="s", maps=shapes, unused_maps=("other",)
            )
        }
    )
    p = plan(desired(bound), actual(facts=facts))
    assert [c.name for c in p.changes if c.kind is Kind.MAP] == ["named", "used"]
    old = record(
        "a",
        maps={n: MapRecord(n, 10 + i, ARRAY, f"maps/{n}") for i, n in enumerate(shapes)}
        | {"other": MapRecord("other", 20, ARRAY, "maps/other")},
    )
    p = plan(desired(replace(bound, digest="d2")), actual(old, facts=facts))
    c = p.change("a", Kind.MAP, "other")
    assert c is not None and c.op is Op.DELETE
    assert c.reason == "no program in spec.programs uses it"
