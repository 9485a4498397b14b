from __future__ import annotations

from orchestrator.ebpf.errors import QUOTE_MAX
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
    assert did_you_mean("countres", NAMES, quoted=False) == "did you mean counters?"
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


def test_did_you_mean_quotes_and_clips_what_it_shows() -> None:
    """A name comes from an object or a manifest: quoted as messages quote values (a quote
    or a control character in it reads unambiguously), and a long one cut with its length
    said, in a suggestion and in a listing alike."""
    assert did_you_mean("its", ["it's"]) == """did you mean "it's"?"""
    assert did_you_mean("a\tb", ["a\tbc"]) == "did you mean 'a\\tbc'?"
    long = "m" * 250
    shown = did_you_mean(long[:-1], [long])
    assert shown == f"did you mean '{'m' * QUOTE_MAX}…' (250 characters)?"
    assert did_you_mean(long[:-1], [long], quoted=False) == (
        f"did you mean {'m' * QUOTE_MAX}… (250 characters)?"
    )
    listed = did_you_mean("zzzz", ["x" * 1000, "y"])
    assert listed == f"it has: {'x' * QUOTE_MAX}… (1000 characters), y"
    assert hint("zzzz", ["x" * 1000]) == f" (it has: {'x' * QUOTE_MAX}… (1000 characters))"


def test_did_you_mean_caps_the_cost_of_a_long_name() -> None:
    """difflib's cost grows with the lengths: a name of 256 characters or more is matched
    with nothing, however close, and a huge choice costs no more than a listing."""
    word = "c" * 256
    assert did_you_mean(word, [word + "x"], listing=None) == ""
    assert did_you_mean("c" * 255, ["c" * 256], listing=None) != ""
    huge = "c" * 5_000_000
    assert did_you_mean("counters", [huge, "counter"], listing=None) == ("did you mean 'counter'?")
