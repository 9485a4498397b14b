"""Manifests and their objects as one Kubernetes ConfigMap (``bpforch configmap``).

A DaemonSet mounts the ConfigMap as ``bpforch serve``'s manifest directory: the kubelet
projects every key as a file of one flat directory, so each manifest's ``spec.object`` is
rewritten to the object's file name (the object itself goes into ``binaryData``). Only the
text of that one value changes: comments, layout and every other field stay as written, and
so does the digest of what is applied (an object's digest is its bytes; its path is the
projected one on every node).

Refused, with the file and what to do: two manifests or two different objects with the same
file name, a name that cannot be a ConfigMap key, and a ConfigMap over the 1 MiB the API
server accepts (deliver the objects in an image instead).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from orchestrator.manifest import DesiredState, load_manifests

CONFIGMAP_MAX = 1 << 20  # bytes of data and binaryData together (the API server's limit)
KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


class ConfigMapError(Exception):
    """The manifests cannot become a ConfigMap (the message says why and what to do)."""


@dataclass(frozen=True, slots=True)
class _Rewrite:
    start: int  # character offsets of the spec.object value in the manifest's text
    end: int
    name: str  # the object's file name


def _object_values(text: str, file: Path) -> list[tuple[int, int]]:
    """Offsets of every document's ``spec.object`` value, in order."""
    spans = []
    try:
        for doc in yaml.compose_all(text, Loader=yaml.SafeLoader):
            if not isinstance(doc, yaml.MappingNode):
                continue
            spec = next((v for k, v in doc.value if getattr(k, "value", None) == "spec"), None)
            if not isinstance(spec, yaml.MappingNode):
                continue
            for k, v in spec.value:
                if getattr(k, "value", None) == "object" and isinstance(v, yaml.ScalarNode):
                    spans.append((v.start_mark.index, v.end_mark.index))
    except yaml.YAMLError as err:  # load_manifests read it: not reached
        raise ConfigMapError(f"{file}: {err}") from err
    return spans


def build(
    name: str,
    paths: list[Path],
    *,
    namespace: str | None = None,
    desired: DesiredState | None = None,
) -> dict[str, object]:
    """The ConfigMap (a JSON-ready dict) holding the manifests found in ``paths`` (checked
    as ``bpforch validate`` does) and every object they reference."""
    if desired is None:
        desired = load_manifests(paths)
    by_file: dict[Path, list[Path]] = {}
    for coll in sorted(
        desired.collections.values(), key=lambda c: (str(c.source.file), c.source.line)
    ):
        by_file.setdefault(coll.source.file, []).append(coll.object_file)
    data: dict[str, str] = {}
    binary: dict[str, bytes] = {}
    origin: dict[str, Path] = {}
    for file in desired.files:
        key = file.name
        _check_key(key, file)
        if key in data:
            raise ConfigMapError(
                f"{file}: another manifest is named {key} too ({origin[key]}); a ConfigMap is "
                "one flat directory (rename one)"
            )
        text = file.read_text(encoding="utf-8")
        objects = by_file.get(file, [])
        spans = _object_values(text, file)
        if len(spans) != len(objects):
            raise ConfigMapError(
                f"{file}: expected {len(objects)} object fields, found {len(spans)}"
            )
        rewrites = []
        for (start, end), obj in zip(spans, objects, strict=True):
            okey = obj.name
            _check_key(okey, obj)
            content = obj.read_bytes()
            if okey in binary and binary[okey] != content:
                raise ConfigMapError(
                    f"{obj}: another object is named {okey} too ({origin[okey]}), with other "
                    "bytes; a ConfigMap is one flat directory (rename one)"
                )
            if okey in data:
                raise ConfigMapError(f"{obj}: a manifest is named {okey} too (rename one)")
            binary[okey] = content
            origin[okey] = obj
            rewrites.append(_Rewrite(start, end, okey))
        for r in reversed(rewrites):
            text = text[: r.start] + r.name + text[r.end :]
        data[key] = text
        origin[key] = file
    size = sum(len(t.encode()) for t in data.values()) + sum(len(b) for b in binary.values())
    if size > CONFIGMAP_MAX:
        raise ConfigMapError(
            f"configmap {name}: {size} bytes is over the {CONFIGMAP_MAX} a ConfigMap holds "
            "(deliver the objects in an image and keep only the manifests here)"
        )
    metadata: dict[str, object] = {
        "name": name,
        "labels": {"app.kubernetes.io/name": "bpforch", "app.kubernetes.io/component": "manifests"},
    }
    if namespace is not None:
        metadata["namespace"] = namespace
    out: dict[str, object] = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata}
    out["data"] = dict(sorted(data.items()))
    if binary:
        out["binaryData"] = {k: base64.b64encode(v).decode() for k, v in sorted(binary.items())}
    return out


def _check_key(key: str, path: Path) -> None:
    if not KEY.match(key) or len(key) > 253 or key in (".", ".."):
        raise ConfigMapError(
            f"{path}: {key!r} cannot be a ConfigMap key (letters, digits, '-', '_' and '.'; "
            "rename the file)"
        )


class _Literal(str):
    """A string dumped as a YAML block literal (manifests stay readable)."""


def _literal(dumper: yaml.SafeDumper, value: _Literal) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Literal, _literal)


def render(configmap: dict[str, object], header: str = "") -> str:
    """The ConfigMap as YAML, manifests as block literals."""
    data = configmap.get("data")
    if isinstance(data, dict):
        configmap = {
            **configmap,
            "data": {k: _Literal(v) if _literal_ok(v) else v for k, v in data.items()},
        }
    return header + yaml.dump(configmap, Dumper=_Dumper, sort_keys=False, width=100)


def _literal_ok(text: str) -> bool:
    # a block literal cannot keep trailing spaces on a line or leading blank lines exactly
    return all(
        not line.endswith((" ", "\t")) for line in text.splitlines()
    ) and not text.startswith("\n")
