"""Reading the record back: the fast path for the form bpforch writes accepts exactly what
the field-by-field decoding accepts, with equal records (orchestrator.reconcile.state)."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Iterator

import pytest

from orchestrator.reconcile.state import (
    AttachmentRecord,
    CollectionRecord,
    MapRecord,
    MapShape,
    ProgramRecord,
    RecordFieldError,
    StateRecord,
    _written_collection,
)


def _rich() -> CollectionRecord:
    return CollectionRecord(
        name="web",
        generation=7,
        digest="d" * 64,
        object_file="/opt/bpf/web.o",
        object_sha256="s" * 64,
        manifest="/etc/bpforch/web.yaml:3:1",
        applied_at="2026-01-01T00:00:00Z",
        git_revision="abc123",
        maps={
            "counters": MapRecord(
                "counters",
                11,
                MapShape(2, 4, 8, 64, 0, True),
                "maps/counters",
                preserve=True,
                ino=99,
            ),
            ".rodata": MapRecord(".rodata", 12, MapShape(2, 4, 4, 1, 128)),
            "shared": MapRecord("shared", 13, MapShape(1, 4, 4, 8, 0), source="collection/db/m"),
            "ext": MapRecord("ext", 14, MapShape(1, 4, 4, 8, 0), source="pinned:/sys/fs/bpf/x"),
        },
        programs={"prog": ProgramRecord("prog", 21, "0011223344556677", "progs/prog", 6, 5, 90)},
        attachments={
            "prog@xdp:eth0": AttachmentRecord(
                "prog@xdp:eth0",
                "prog",
                "xdp",
                31,
                "links/prog-xdp",
                {"interface": "eth0", "mode": None, "take_over": False, "prio": 3},
                "native",
            ),
            "prog@tracepoint:a/b": AttachmentRecord(
                "prog@tracepoint:a/b", "prog", "tracepoint", 32, "links/prog-tp", ino=47
            ),
        },
        depends_on=("db",),
        load_key="k" * 64,
        entries={"counters": "e" * 64},
        labels={"team": "net"},
    )


BAD_VALUES: list[object] = [
    None, -1, 1 << 64, (1 << 64) - 1, 0, True, False, 1.5, "", "x", "x\0y", "..", ".",
    "a/../b", "/abs", "a//b", "a/", "...", "maps/ok", "pinned:/p", "pinned:rel",
    "collection/db/m", "collection/Bad/m", "collection/db/", "DB", "db", [], ["db"], ["Bad"],
    {}, {"a": 1}, {"": "x"}, {"a\0": "x"}, {"a": "x\0"}, {"a": [1]}, {"a": None},
]  # fmt: skip


def _leaves(node: object, path: tuple[object, ...] = ()) -> Iterator[tuple[object, ...]]:
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, (*path, i))


def _set(doc: object, path: tuple[object, ...], value: object) -> object:
    if not path:
        return value
    out = copy.deepcopy(doc)
    node = out
    for k in path[:-1]:
        node = node[k]  # type: ignore[index]
    node[path[-1]] = value  # type: ignore[index]
    return out


def _drop(doc: object, path: tuple[object, ...]) -> object:
    out = copy.deepcopy(doc)
    node = out
    for k in path[:-1]:
        node = node[k]  # type: ignore[index]
    del node[path[-1]]  # type: ignore[attr-defined]
    return out


def _slow(d: object) -> CollectionRecord | str:
    try:
        return CollectionRecord.from_json("web", d, "collections.web")
    except RecordFieldError as err:
        return str(err)


def _variants() -> Iterator[object]:
    doc = json.loads(json.dumps(_rich().to_json()))
    yield doc
    for path in _leaves(doc):
        for value in BAD_VALUES:
            yield _set(doc, path, value)
        if path and isinstance(path[-1], str):
            yield _drop(doc, path)
            yield _set(doc, (*path[:-1], path[-1] + "\0"), 1)  # an unknown key: ignored
    yield _set(doc, ("maps", ""), doc["maps"]["counters"])
    yield _set(doc, ("programs", "a\0b"), doc["programs"]["prog"])


def test_the_fast_path_accepts_exactly_what_the_long_way_accepts_with_equal_records() -> None:
    accepted = refused = 0
    for d in _variants():
        slow = _slow(d)
        fast = _written_collection("web", d)
        if isinstance(slow, str):
            assert fast is None, (d, slow)
            refused += 1
        else:
            assert fast is None or fast == slow, d
            accepted += fast is not None
    assert accepted > 50 and refused > 500  # both sides exercised


def test_a_written_record_takes_the_fast_path_and_round_trips() -> None:
    rec = _rich()
    doc = json.loads(json.dumps(rec.to_json()))
    assert _written_collection("web", doc) == rec
    assert StateRecord.from_json({"collections": {"web": doc}}).collections["web"] == rec


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("maps", "counters", "pin"), "../x", "collections.web.maps.counters.pin: "),
        (("programs", "prog", "id"), -1, "collections.web.programs.prog.id: expected an integer"),
        (("depends_on",), ["Bad"], "collections.web.depends_on[0]: the string"),
        (("maps", "shared", "source"), "collection/x", "collections.web.maps.shared.source: "),
    ],
)
def test_a_record_refused_names_the_field_as_before(
    path: tuple[str, ...], value: object, message: str
) -> None:
    doc = _set(json.loads(json.dumps(_rich().to_json())), path, value)
    with pytest.raises(RecordFieldError) as err:
        StateRecord.from_json({"collections": {"web": doc}})
    assert str(err.value).startswith(message)


def test_a_key_the_fast_path_does_not_know_takes_the_long_way() -> None:
    """A field added to the record and not to the fast path is never dropped: the
    collection is decoded the long way."""
    doc = _rich().to_json()
    att = doc["attachments"]["prog@xdp:eth0"]  # type: ignore[index]
    counters = doc["maps"]["counters"]  # type: ignore[index]
    objects = [doc, counters, counters["shape"], doc["programs"]["prog"], att]  # type: ignore[index]
    for obj in objects:
        assert isinstance(obj, dict)
        obj["added_later"] = 1
        assert _written_collection("web", doc) is None, obj
        del obj["added_later"]
    assert _written_collection("web", doc) == _rich()


def test_the_rich_record_sets_every_field() -> None:
    """Each field of each record class differs from its default somewhere in the record the
    tests above mutate, so the fast path is compared on every field there is."""
    rec = _rich()
    instances: dict[type, list[object]] = {
        CollectionRecord: [rec],
        MapRecord: list(rec.maps.values()),
        MapShape: [m.shape for m in rec.maps.values()],
        ProgramRecord: list(rec.programs.values()),
        AttachmentRecord: list(rec.attachments.values()),
    }
    for cls, objs in instances.items():
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.default is not dataclasses.MISSING:
                default: object = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                continue  # required: set in every instance
            assert any(getattr(o, f.name) != default for o in objs), (cls.__name__, f.name)


def test_equal_map_shapes_are_decoded_once_per_record_and_unequal_ones_kept_apart() -> None:
    """The fast path shares one MapShape among the maps of a record whose shapes are equal
    (immutable, so sharing is safe), and a shape that differs in any field, or in the type
    of one (a bool where an int is written), is its own or refused."""
    doc = json.loads(json.dumps(_rich().to_json()))
    other = copy.deepcopy(doc)
    other["maps"]["counters"]["shape"]["max_entries"] += 1
    record = StateRecord.from_json({"collections": {"web": doc, "api": copy.deepcopy(doc),
                                                    "db": other}})  # fmt: skip
    web, api, db = (record.collections[n].maps["counters"].shape for n in ("web", "api", "db"))
    assert web is api
    assert web == _rich().maps["counters"].shape
    assert db is not web and db.max_entries == web.max_entries + 1
    flagged = copy.deepcopy(doc)
    flagged["maps"]["counters"]["shape"]["flags"] = True  # equal to 1 in a tuple key
    assert _written_collection("web", flagged) is None
