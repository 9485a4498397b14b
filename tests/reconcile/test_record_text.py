"""The record's JSON text is written field by field (orchestrator.reconcile.state
.collection_text): byte for byte what ``json.dumps`` of the record's dicts writes, for any
record, with fields of their declared types or not."""

from __future__ import annotations

import dataclasses
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.reconcile.state import (
    AttachmentRecord,
    CollectionRecord,
    MapRecord,
    MapShape,
    ProgramRecord,
    StateRecord,
    collection_text,
)
from orchestrator.reconcile.store import record_bytes
from tests.reconcile.test_record_fast_path import _rich


def _dumps(rec: CollectionRecord) -> str:
    return json.dumps(rec.to_json(), separators=(",", ":"), sort_keys=True)


text = st.text(max_size=12)  # any code point: escapes, quotes, surrogates, non-ASCII
ints = st.integers(min_value=-(1 << 70), max_value=1 << 70)
scalars = st.none() | st.booleans() | ints | text

shapes = st.builds(MapShape, ints, ints, ints, ints, ints, st.booleans())
maps = st.builds(MapRecord, text, ints, shapes, text, st.booleans(), text, ints)
programs = st.builds(ProgramRecord, text, ints, text, text, ints, ints, ints)
attachments = st.builds(
    AttachmentRecord,
    text,
    text,
    text,
    ints,
    text,
    st.none() | st.dictionaries(text, scalars, max_size=4),
    text,
)
records = st.builds(
    CollectionRecord,
    name=text,
    generation=ints,
    digest=text,
    object_file=text,
    object_sha256=text,
    manifest=text,
    applied_at=text,
    git_revision=st.none() | text,
    maps=st.dictionaries(text, maps, max_size=3),
    programs=st.dictionaries(text, programs, max_size=3),
    attachments=st.dictionaries(text, attachments, max_size=3),
    depends_on=st.lists(text, max_size=3).map(tuple),
    load_key=text,
    entries=st.dictionaries(text, text, max_size=3),
    labels=st.none() | st.dictionaries(text, text, max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(records)
def test_text_is_json_dumps_of_the_record(rec: CollectionRecord) -> None:
    assert collection_text(rec) == _dumps(rec)


def test_rich_record() -> None:
    rec = _rich()
    assert collection_text(rec) == _dumps(rec)
    # the state file's text is the record's JSON, whichever way each entry was encoded
    whole = StateRecord({"web": rec, "db": dataclasses.replace(rec, name="db")})
    expected = json.dumps(whole.to_json(), separators=(",", ":"), sort_keys=True).encode()
    assert record_bytes(whole) == expected
    assert record_bytes(whole, {"web": collection_text(rec)}) == expected


def test_fields_of_other_types_are_written_as_json_dumps_writes_them() -> None:
    """A value that is not of its declared type (a bool for an int, a float, a key that is
    not a string) is written by json.dumps, as before: never as Python's str() of it."""
    rec = _rich()
    m = rec.maps["counters"]
    p = rec.programs["prog"]
    a = rec.attachments["prog@xdp:eth0"]
    odd = [
        dataclasses.replace(rec, generation=True),
        dataclasses.replace(rec, git_revision=1.5),  # type: ignore[arg-type]
        dataclasses.replace(rec, depends_on=(1,)),  # type: ignore[arg-type]
        dataclasses.replace(rec, labels={"a": 1.5}),  # type: ignore[dict-item]
        dataclasses.replace(rec, labels={1: "a", 2: "b"}),  # type: ignore[dict-item]
        dataclasses.replace(rec, entries={"a": None}),  # type: ignore[dict-item]
        dataclasses.replace(rec, maps={"m": dataclasses.replace(m, id=False)}),
        dataclasses.replace(rec, maps={"m": dataclasses.replace(m, preserve=1)}),
        dataclasses.replace(
            rec, maps={"m": dataclasses.replace(m, shape=dataclasses.replace(m.shape, flags=2.0))}
        ),
        dataclasses.replace(rec, programs={"p": dataclasses.replace(p, pin=None)}),  # type: ignore[arg-type]
        dataclasses.replace(rec, programs={"p": dataclasses.replace(p, type=True)}),
        dataclasses.replace(rec, attachments={"a": dataclasses.replace(a, link_id=None)}),  # type: ignore[arg-type]
        dataclasses.replace(
            rec,
            attachments={"a": dataclasses.replace(a, target={"x": [1], "y": {"z": 2}})},  # type: ignore[dict-item]
        ),
        # a mode that is not a string (it raised TypeError: its type was not checked)
        dataclasses.replace(rec, attachments={"a": dataclasses.replace(a, mode=1)}),  # type: ignore[arg-type]
        dataclasses.replace(rec, attachments={"a": dataclasses.replace(a, mode=0)}),  # type: ignore[arg-type]
    ]
    for r in odd:
        assert collection_text(r) == _dumps(r)
