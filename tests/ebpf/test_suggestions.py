from __future__ import annotations

from orchestrator.ebpf.suggestions import closest, did_you_mean, hint

NAMES = ["counters", "events", "config"]


def test_closest() -> None:
    assert closest("countres", NAMES) == "counters"
    assert closest("zzzz", NAMES) is None
    assert closest("x", []) is None
    long = "c" * 300  # matches nothing, however close: difflib's cost grows with its length
    assert closest(long, [long[:-1]]) is None


def test_did_you_mean_suggests_quoted_or_lists_the_choices() -> None:
    assert did_you_mean("countres", NAMES) == "did you mean 'counters'?"
    assert did_you_mean("countres", NAMES, quote="") == "did you mean counters?"
    assert did_you_mean("zzzz", NAMES) == "it has: counters, events, config"
    assert did_you_mean("zzzz", NAMES, listing="allowed") == "allowed: counters, events, config"
    assert did_you_mean("zzzz", NAMES, listing=None) == ""
    assert did_you_mean("zzzz", []) == ""


def test_did_you_mean_shortens_long_listings() -> None:
    many = [f"map{i}" for i in range(10)]
    assert did_you_mean("zzzz", many) == "it has: " + ", ".join(many[:8]) + ", …"
    assert did_you_mean("zzzz", many, limit=None) == "it has: " + ", ".join(many)
    assert did_you_mean("zzzz", many[:8]) == "it has: " + ", ".join(many[:8])


def test_hint_ends_a_loader_message() -> None:
    assert hint("countres", NAMES) == " (did you mean counters?)"
    assert hint("zzzz", NAMES) == " (it has: counters, events, config)"
    assert hint("zzzz", []) == ""
