"""The JSON Schema file, its use by editors and the CRD rendition."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
import yaml

from orchestrator.manifest import crd, load_manifests, schema

from .test_load import FULL

ROOT = Path(__file__).resolve().parents[2]


def walk(node: object) -> Iterator[dict[str, object]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def test_schema_is_a_valid_2020_12_schema() -> None:
    """Checked here, not at import: every CLI run would pay ~40 ms for it."""
    jsonschema.Draft202012Validator.check_schema(schema())


def test_every_object_rejects_unknown_fields() -> None:
    objects = [n for n in walk(schema()) if n.get("type") == "object" and "properties" in n]
    assert len(objects) >= 12
    for node in objects:
        assert node.get("additionalProperties") is False, node


def test_schema_alone_accepts_a_full_manifest_and_rejects_a_typo() -> None:
    validator = jsonschema.Draft202012Validator(schema())
    doc = yaml.safe_load(FULL)
    assert list(validator.iter_errors(doc)) == []
    doc["spec"]["maps"]["counters"]["max_entires"] = 1
    assert [e.validator for e in validator.iter_errors(doc)] == ["additionalProperties"]


def test_schema_is_a_copy() -> None:
    s = schema()
    s["properties"] = {}
    assert schema()["properties"] != {}


def test_crd_is_structural() -> None:
    c = crd()
    assert c["kind"] == "CustomResourceDefinition"
    assert c["metadata"] == {"name": "collections.bpforch.dev"}
    (version,) = c["spec"]["versions"]  # type: ignore[index]
    root = version["schema"]["openAPIV3Schema"]
    banned = {"$ref", "$defs", "$schema", "$id", "const", "dependentRequired", "propertyNames"}
    for node in walk(root):
        assert not banned & set(node), node
        assert node.get("additionalProperties") is not False
        if "oneOf" in node:  # structural: only `required` inside
            assert all(set(branch) == {"required"} for branch in node["oneOf"])  # type: ignore[union-attr]
        if "properties" in node:
            assert node.get("type") == "object", node
        if "pattern" in node:  # Go's RE2: no lookaround, no backreferences
            assert "(?" not in str(node["pattern"]) and "\\1" not in str(node["pattern"])
    spec = root["properties"]["spec"]
    attach = spec["properties"]["attach"]["items"]
    assert set(attach["properties"]) == {
        "program",
        "xdp",
        "tc",
        "cgroup",
        "tracepoint",
        "raw_tracepoint",
        "uprobe",
        "netns",
    }
    assert attach["properties"]["tc"]["properties"]["direction"] == {
        "type": "string",
        "enum": ["ingress", "egress"],
    }
    constants = spec["properties"]["constants"]["additionalProperties"]
    assert constants.get("x-kubernetes-preserve-unknown-fields") is True


@pytest.mark.parametrize("group", ["bpforch.dev", "example.com"])
def test_crd_group(group: str) -> None:
    c = crd(group)
    assert c["spec"]["group"] == group  # type: ignore[index]
    assert c["metadata"]["name"] == f"collections.{group}"  # type: ignore[index]


def test_the_readme_example_is_valid(tmp_path: Path) -> None:
    text = (ROOT / "schemas" / "README.md").read_text()
    example = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert example.startswith("# yaml-language-server: $schema=../schemas/manifest.schema.json")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "x.yaml").write_text(example)
    state = load_manifests([tmp_path / "m"], check_objects=False)
    assert state.collections["xdp-counter"].object_file == tmp_path / "bpf" / "xdp_counter.o"
