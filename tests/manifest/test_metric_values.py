"""Reading a metric's number out of a decoded map value (orchestrator.manifest.metrics)."""

from __future__ import annotations

import pytest

from orchestrator.manifest.metrics import MetricValueError, number


def test_a_member_that_is_not_there_names_the_closest_or_the_members() -> None:
    with pytest.raises(MetricValueError, match=r"^field pkts: no such member \(did you mean"):
        number({"packets": 1, "bytes": 2}, ["pkts"])
    assert number({"a": {"b": [5, 7]}}, ["a", "b", "1"]) == 7


def test_a_struct_without_members_says_so_without_empty_parentheses() -> None:
    with pytest.raises(MetricValueError) as exc:
        number({}, ["x"])
    assert str(exc.value) == "field x: no such member"
