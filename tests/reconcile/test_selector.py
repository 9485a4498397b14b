"""Label selectors: parsing, matching, and what a selected plan (or destroy) leaves alone and
refuses (pure: hand-made states, no kernel)."""

from __future__ import annotations

import dataclasses

import pytest

from orchestrator.manifest.model import DesiredCollection, MapFrom, MapOptions
from orchestrator.reconcile import Kind, MapRecord, Op, plan, plan_destroy
from orchestrator.reconcile.selector import Selector, SelectorError
from tests.reconcile.test_plan import ARRAY, actual, coll, desired, facts_for, record


def labelled(c: DesiredCollection, **labels: str) -> DesiredCollection:
    return dataclasses.replace(c, labels=labels)


@pytest.mark.parametrize(
    ("texts", "labels", "expected"),
    [
        (["team=net"], {"team": "net"}, True),
        (["team==net"], {"team": "net"}, True),
        (["team=net"], {"team": "obs"}, False),
        (["team!=net"], {"team": "obs"}, True),
        (["team!=net"], {}, True),  # kubectl: a missing label is not equal
        (["team!=net"], {"team": "net"}, False),
        (["team"], {"team": ""}, True),
        (["team"], {}, False),
        (["!team"], {}, True),
        (["!team"], {"team": "x"}, False),
        (["team=net,tier=gold"], {"team": "net"}, False),
        (["team=net", "tier=gold"], {"team": "net", "tier": "gold"}, True),
        (["example.com/team=net"], {"example.com/team": "net"}, True),
        (["team="], {"team": ""}, True),
    ],
)
def test_matches(texts: list[str], labels: dict[str, str], expected: bool) -> None:
    assert Selector.parse(texts).matches(labels) is expected


def test_unknown_labels_never_match() -> None:
    assert not Selector.parse(["!team"]).matches(None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a=b=c", "selector 'a=b=c': 'b=c' is not a label value"),
        ("a,,b", "selector 'a,,b': an empty requirement"),
        ("", "selector '': an empty requirement"),
        ("=x", "selector '=x': '=x' has no label key (write key=value)"),
        ("!a=b", "selector '!a=b': '!a=b': '!' only goes before a bare key (write key!=value)"),
        ("a b", "selector 'a b': 'a b' is not a requirement (write key=value"),
        ("-a=x", "selector '-a=x': '-a' is not a label key"),
        ("a=x" + "y" * 63, "is not a label value"),
        ("a in (x)", "is not a requirement"),  # set-based selectors are not taken
    ],
)
def test_malformed_selectors_are_named(text: str, message: str) -> None:
    with pytest.raises(SelectorError) as exc:
        Selector.parse([text])
    assert message in str(exc.value)


def test_only_the_selected_collections_are_planned() -> None:
    net = labelled(coll("net", "d2"), team="net")
    obs = labelled(coll("obs", "d2"), team="obs")
    act = actual(record("net"), record("obs"), facts=facts_for("net", "obs"))
    p = plan(desired(net, obs), act, selector=Selector.parse(["team=net"]))
    assert p.collections(Op.UPDATE) == ["net"]
    assert p.change("obs", Kind.COLLECTION, "obs") is None  # left as it is
    assert not p.problems


def test_prune_only_takes_selected_records() -> None:
    keep = labelled(coll("keep"), team="net")
    gone_net = dataclasses.replace(record("gone-net"), labels={"team": "net"})
    gone_obs = dataclasses.replace(record("gone-obs"), labels={"team": "obs"})
    old = record("old")  # recorded before labels were kept: never selected
    act = actual(record("keep"), gone_net, gone_obs, old, facts=facts_for("keep"))
    p = plan(desired(keep), act, prune=True, selector=Selector.parse(["team=net"]))
    assert p.collections(Op.DELETE) == ["gone-net"]
    p = plan(desired(keep), act, prune=True, selector=Selector.parse(["team!=net"]))
    assert p.collections(Op.DELETE) == ["gone-obs"]


def shared(
    owner_labels: dict[str, str], user_labels: dict[str, str]
) -> tuple[DesiredCollection, DesiredCollection]:
    owner = labelled(
        coll("owner", "d2", maps={"counters": MapOptions("counters", pin=True)}), **owner_labels
    )
    user = labelled(
        coll(
            "user",
            "d2",
            maps={"counters": MapOptions("counters", source_from=MapFrom(collection="owner"))},
        ),
        **user_labels,
    )
    return owner, user


def test_a_selected_user_of_an_unselected_collection_that_is_not_applied_is_refused() -> None:
    owner, user = shared({"team": "a"}, {"team": "b"})
    p = plan(desired(owner, user), actual(facts=facts_for("owner", "user")),
             selector=Selector.parse(["team=b"]))  # fmt: skip
    (prob,) = p.problems
    assert prob.collection == "user"
    assert prob.message == (
        "map counters: substitutes a map of collection owner, which the selector team=b "
        "leaves out and which is not applied (select owner too, or apply it first)"
    )
    # once the owner is applied, the user alone is fine: it takes the live map
    rec = record("owner", maps={"counters": MapRecord("counters", 10, ARRAY, "maps/counters")})
    p = plan(desired(owner, user), actual(rec, facts=facts_for("owner", "user")),
             selector=Selector.parse(["team=b"]))  # fmt: skip
    assert not p.problems
    assert p.collections(Op.CREATE) == ["user"]


def test_a_recreated_map_under_an_unselected_user_is_refused() -> None:
    owner, user = shared({"team": "a"}, {"team": "b"})
    owner_rec = record("owner", maps={"counters": MapRecord("counters", 10, ARRAY, "maps/c")})
    user_rec = record(
        "user",
        "d2",
        maps={"counters": MapRecord("counters", 10, ARRAY, source="collection/owner/counters")},
        deps=("owner",),
    )
    act = actual(owner_rec, user_rec, facts=facts_for("owner", "user"))
    p = plan(desired(owner, user), act, selector=Selector.parse(["team=a"]))
    (prob,) = p.problems
    assert prob.collection == "owner"
    assert prob.message == (
        "map counters is recreated, but collection user uses it (map counters) and the "
        "selector team=a leaves user out: it would keep the old map (select user too)"
    )
    # selecting both: the user is reloaded with the new map
    p = plan(desired(owner, user), act, selector=Selector.parse(["team"]))
    assert not p.problems
    assert p.collections(Op.UPDATE) == ["owner", "user"]


def test_pruning_a_collection_an_unselected_one_uses_is_refused() -> None:
    owner_rec = dataclasses.replace(
        record("owner", maps={"counters": MapRecord("counters", 10, ARRAY, "maps/c")}),
        labels={"team": "a"},
    )
    user_rec = dataclasses.replace(
        record(
            "user",
            maps={"counters": MapRecord("counters", 10, ARRAY, source="collection/owner/counters")},
            deps=("owner",),
        ),
        labels={"team": "b"},
    )
    p = plan(desired(), actual(owner_rec, user_rec), prune=True,
             selector=Selector.parse(["team=a"]))  # fmt: skip
    (prob,) = p.problems
    assert (prob.collection, prob.message) == (
        "owner",
        "pruned, but collection user uses its map counters (map counters) and the selector "
        "team=a leaves user out (select user too, or destroy it first)",
    )


def test_destroy_by_selector() -> None:
    a = dataclasses.replace(record("a"), labels={"team": "net"})
    b = dataclasses.replace(record("b"), labels={"team": "obs"})
    p = plan_destroy(actual(a, b), None, Selector.parse(["team=net"]))
    assert p.collections(Op.DELETE) == ["a"]
    assert not p.problems
    # a dependent left out by the selector: refused, naming both
    user = dataclasses.replace(record("user", deps=("a",)), labels={"team": "obs"})
    p = plan_destroy(actual(a, b, user), None, Selector.parse(["team=net"]))
    (prob,) = p.problems
    assert (prob.collection, prob.message) == (
        "a",
        "collection user uses its maps (destroy user too, or first)",
    )


def test_an_empty_selector_is_refused() -> None:
    with pytest.raises(SelectorError, match="selector: empty"):
        Selector.parse([])
