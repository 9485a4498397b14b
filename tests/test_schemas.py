"""``bpforch schema``: the schemas come from the code (an installed package has them), the
files in ``schemas/`` and ``packaging/kubernetes/10-crd.yaml`` are generated from it and must
not drift, and the CRD accepts every manifest bpforch accepts, under Kubernetes' rules for
structural schemas."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
import yaml

from orchestrator import schemas
from orchestrator.manifest import crd
from orchestrator.manifest import schema as manifest_schema
from orchestrator.service.config import schema as config_schema
from tests.conftest import ROOT
from tests.test_cli import run_cli

from .manifest.test_load import FULL

REGENERATE = (
    "regenerate: bpforch schema --write schemas (and schema crd > packaging/kubernetes/10-crd.yaml)"
)


def test_the_files_in_the_repository_are_generated_from_the_code() -> None:
    for name, file in schemas.FILES.items():
        assert (ROOT / "schemas" / file).read_text() == schemas.render(name), REGENERATE
    crd_file = ROOT / "packaging" / "kubernetes" / "10-crd.yaml"
    assert crd_file.read_text() == schemas.render("crd"), REGENERATE


@pytest.mark.parametrize("name", schemas.NAMES)
def test_bpforch_schema_prints_it(name: str) -> None:
    code, out, err = run_cli("schema", name)
    assert code == 0 and err == ""
    if name == "crd":
        assert yaml.safe_load(out) == crd()
    else:
        data = json.loads(out)
        jsonschema.Draft202012Validator.check_schema(data)
        assert data["$id"] == f"urn:bpforch:schema:{name}:v1"


def test_bpforch_schema_write(tmp_path: Path) -> None:
    code, out, _ = run_cli("schema", "--write", str(tmp_path / "s"))
    assert code == 0
    written = [Path(line) for line in out.splitlines()]
    assert written == [tmp_path / "s" / schemas.FILES[n] for n in schemas.NAMES]
    before = [p.stat().st_mtime_ns for p in written]
    assert run_cli("schema", "--write", str(tmp_path / "s"))[0] == 0
    assert [p.stat().st_mtime_ns for p in written] == before  # unchanged files are left alone


def test_bpforch_schema_usage_errors(tmp_path: Path) -> None:
    assert run_cli("schema") == (
        1,
        "",
        "error: name a schema (manifest, config, crd), or pass --write DIR\n",
    )
    code, _, err = run_cli("schema", "crd", "--write", str(tmp_path))
    assert code == 1 and err.startswith("error: name a schema")
    (tmp_path / "file").write_text("")
    code, _, err = run_cli("schema", "--write", str(tmp_path / "file"))
    assert (code, err) == (1, f"error: schema --write {tmp_path / 'file'}: File exists\n")
    with pytest.raises(SystemExit) as exit_:
        run_cli("schema", "policy")
    assert exit_.value.code == 2


def test_the_config_schema_accepts_the_shipped_configuration() -> None:
    validator = jsonschema.Draft202012Validator(config_schema())
    doc = yaml.safe_load((ROOT / "packaging" / "config.yaml").read_text())
    assert list(validator.iter_errors(doc)) == []


# ---------------------------------------------------------------------------- the CRD


def _walk(node: object, path: str = "") -> Iterator[tuple[str, dict[str, object]]]:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def _openapi() -> dict[str, object]:
    (version,) = crd()["spec"]["versions"]  # type: ignore[index]
    schema: dict[str, object] = version["schema"]["openAPIV3Schema"]
    return schema


def _documents() -> Iterator[tuple[str, object]]:
    """Every Collection document in the repository, and the full test manifest."""
    files = [
        *sorted((ROOT / "manifests").glob("*.yaml")),
        *sorted((ROOT / "packaging" / "kubernetes").glob("*.yaml")),
    ]
    for file in files:
        for i, doc in enumerate(yaml.safe_load_all(file.read_text())):
            if isinstance(doc, dict) and doc.get("kind") == "Collection":
                yield f"{file.relative_to(ROOT)}#{i}", doc
            if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
                for key, text in doc.get("data", {}).items():
                    for j, inner in enumerate(yaml.safe_load_all(text)):
                        if isinstance(inner, dict) and inner.get("kind") == "Collection":
                            yield f"{file.relative_to(ROOT)}:{key}#{j}", inner
    yield "tests/manifest/test_load.py:FULL", yaml.safe_load(FULL)


def test_every_collection_document_is_a_valid_custom_resource() -> None:
    """kubernetes-validate skips custom resources: bpforch's documents are checked against
    the CRD's own openAPIV3Schema (OpenAPI 3.0 schemas are JSON Schema draft 4 for every
    keyword the CRD uses), and against bpforch's own schema."""
    validator = jsonschema.Draft4Validator(_openapi())
    ours = jsonschema.Draft202012Validator(manifest_schema())
    seen = 0
    for where, doc in _documents():
        seen += 1
        assert doc["apiVersion"] == "bpforch.dev/v1", where  # type: ignore[index]
        assert list(validator.iter_errors(doc)) == [], where
        assert list(ours.iter_errors(doc)) == [], where
    assert seen >= 7


def test_the_crd_rejects_what_bpforch_rejects_by_type() -> None:
    validator = jsonschema.Draft4Validator(_openapi())
    doc = yaml.safe_load(FULL)
    doc["spec"]["attach"][0]["xdp"]["mode"] = "turbo"
    doc["spec"]["maps"]["counters"]["max_entries"] = 0
    doc["spec"]["attach"][1] = {"program": "tc_ingress"}  # no target
    found = sorted(".".join(map(str, e.absolute_path)) for e in validator.iter_errors(doc))
    assert found == ["spec.attach.0.xdp.mode", "spec.attach.1", "spec.maps.counters.max_entries"]


# what Kubernetes refuses in a structural schema (apiextensions' validation of a CRD)
_JUNCTOR_BANNED = {"type", "additionalProperties", "description", "default", "nullable"}
_JUNCTOR_BANNED_EXT = "x-kubernetes-"


def test_the_crd_is_a_structural_schema() -> None:
    root = _openapi()
    assert root["type"] == "object"
    assert root["properties"]["metadata"] == {"type": "object"}  # type: ignore[index]
    for path, node in _walk(root):
        if path.endswith((".properties", ".enum", ".required")) or "[" in path.rsplit(".", 1)[-1]:
            continue  # a map of names, or a list of values/names: not a schema node
        if ".oneOf[" in path or ".anyOf[" in path:
            assert not _JUNCTOR_BANNED & set(node), path
            assert not any(k.startswith(_JUNCTOR_BANNED_EXT) for k in node), path
            continue
        if "x-kubernetes-int-or-string" in node or "x-kubernetes-preserve-unknown-fields" in node:
            continue  # the two kinds of node that may have no type (any value)
        if path.endswith(".additionalProperties") and not node:
            continue
        assert node.get("type") in ("object", "array", "string", "integer", "boolean"), path
        if node.get("type") == "array":
            assert "items" in node, path
        assert node.get("additionalProperties") is not False, path
