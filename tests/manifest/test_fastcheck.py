"""The quick schema check answers "valid" only when jsonschema finds no error."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import jsonschema
import pytest
import yaml

from orchestrator.manifest import schema
from orchestrator.manifest.fastcheck import Unsupported, Unsure, compile_schema
from orchestrator.manifest.schema import SCHEMA

from .test_load import FULL

ROOT = Path(__file__).resolve().parents[2]
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
VALID = compile_schema(SCHEMA)

# Replacement values: every JSON type, edge lengths and numbers, names of enum members.
VALUES: list[object] = [
    0,
    -1,
    1,
    65535,
    2**64,
    1.0,
    1.5,
    True,
    False,
    None,
    "",
    "x",
    "X Y",
    "a" * 16,
    "a" * 300,
    "eth0",
    "ingress",
    "native",
    "counter",
    "bpforch.dev/v1",
    "Collection",
    "../x.o",
    "0" * 64,
    [],
    ["a"],
    ["a", "a"],
    [1, 1.0],
    {},
    {"x": 1},
    {1: "int key"},
]
KEYS = ["bogus", "pin", "name", "interface", "direction", "program", "key", "labels", "from"]


def _documents() -> list[object]:
    docs: list[object] = [yaml.safe_load(FULL)]
    for d in ("manifests", "orchestrator/_demo/manifests"):
        for path in sorted((ROOT / d).glob("*.yaml")):
            docs.extend(yaml.safe_load_all(path.read_text()))
    return docs


def _nodes(value: object, out: list[object]) -> list[object]:
    if isinstance(value, (dict, list)):
        out.append(value)
        for child in value.values() if isinstance(value, dict) else value:
            _nodes(child, out)
    return out


def _mutate(doc: object, rng: random.Random) -> object:
    doc = copy.deepcopy(doc)
    for _ in range(rng.randint(1, 3)):
        node = rng.choice(_nodes(doc, []))
        action = rng.randrange(4)
        if isinstance(node, dict):
            if action == 0 and node:
                del node[rng.choice(list(node))]
            elif action == 1:
                node[rng.choice(KEYS)] = copy.deepcopy(rng.choice(VALUES))
            elif node:
                node[rng.choice(list(node))] = copy.deepcopy(rng.choice(VALUES))
        elif isinstance(node, list):
            if action == 0 and node:
                del node[rng.randrange(len(node))]
            elif action == 1 and node:
                node.append(copy.deepcopy(rng.choice(node)))
            elif node:
                node[rng.randrange(len(node))] = copy.deepcopy(rng.choice(VALUES))
    return doc


def test_the_manifest_schema_compiles() -> None:
    """Every keyword the schema uses is one the quick check implements (else every
    manifest would pay for jsonschema)."""
    assert callable(compile_schema(schema()))


def test_every_shipped_manifest_is_valid_without_jsonschema() -> None:
    docs = _documents()
    assert len(docs) >= 11
    for doc in docs:
        assert VALID(doc) is True
        assert VALIDATOR.is_valid(doc)


def test_it_agrees_with_jsonschema_on_mutated_manifests() -> None:
    rng = random.Random(14)
    docs = _documents()
    seen = {True: 0, False: 0, "unsure": 0}
    for _ in range(3000):
        doc = _mutate(rng.choice(docs), rng)
        try:
            quick = VALID(doc)
        except Unsure:
            seen["unsure"] += 1
            continue
        assert quick == VALIDATOR.is_valid(doc), doc
        seen[quick] += 1
    # the mutations reach both answers, and rarely need jsonschema to decide
    assert seen[True] >= 300
    assert seen[False] >= 1000
    assert seen["unsure"] < 300


@pytest.mark.parametrize(
    ("schema", "value", "expected"),
    [
        ({"type": "integer"}, 3, True),
        ({"type": "integer"}, True, False),
        ({"minimum": 1}, True, True),  # not a number: minimum ignores it
        ({"oneOf": [{"type": "string"}, {"minLength": 2}]}, "ab", False),  # both match
        ({"oneOf": [{"type": "string"}, {"minLength": 2}]}, 5, True),
        ({"$ref": "#/$defs/x", "$defs": {"x": {"enum": ["a"]}}}, "a", True),
        ({"$ref": "#/$defs/x", "$defs": {"x": {"enum": ["a"]}}}, "b", False),
        ({"dependentRequired": {"a": ["b"]}}, {"a": 1}, False),
        ({"propertyNames": {"pattern": "^a"}}, {"ab": 1, "b": 2}, False),
        ({"properties": {"a": {}}, "additionalProperties": False}, {1: 1}, False),
    ],
)
def test_keywords_mean_what_they_mean_in_jsonschema(
    schema: dict[str, object], value: object, expected: bool
) -> None:
    assert compile_schema(schema)(value) is expected
    assert jsonschema.Draft202012Validator(schema).is_valid(value) is expected


def test_a_float_where_an_integer_is_required_is_left_to_jsonschema() -> None:
    with pytest.raises(Unsure):
        compile_schema({"type": "integer"})(1.0)
    with pytest.raises(Unsure):
        compile_schema({"uniqueItems": True})([1, 1.0])


@pytest.mark.parametrize(
    "schema",
    [
        {"format": "ipv4"},
        {"patternProperties": {"^a": {}}, "additionalProperties": False},
        {"$ref": "https://example.com/x"},
        {"enum": [1, 2]},
        {"type": "decimal"},
    ],
)
def test_a_keyword_it_does_not_know_does_not_compile(schema: dict[str, object]) -> None:
    with pytest.raises(Unsupported):
        compile_schema(schema)
