"""The JSON Schema (2020-12) of a manifest, and schema errors turned into human problems.

The schema is defined here (so an installed package has it); ``bpforch schema manifest``
prints it and ``schemas/manifest.schema.json`` is generated from it (a test keeps the two
equal). Every object has ``additionalProperties: false``: a typo is an error.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from orchestrator.ebpf.errors import quote
from orchestrator.ebpf.suggestions import did_you_mean
from orchestrator.manifest.document import Document, PathKey, render_path
from orchestrator.manifest.errors import ManifestProblem
from orchestrator.manifest.fastcheck import Unsure, compile_schema
from orchestrator.manifest.kernel_hooks import CGROUP_HOOKS
from orchestrator.manifest.model import (
    API_GROUP,
    API_VERSION,
    DEPRECATED_API_VERSIONS,
    KIND_COLLECTION,
    Direction,
    EntriesMode,
    MetricType,
    XdpMode,
)

if TYPE_CHECKING:
    import jsonschema
    from jsonschema.exceptions import ValidationError

SCHEMA_ID = "urn:bpforch:schema:manifest:v1"

DNS_LABEL = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
C_NAME = "^[A-Za-z_][A-Za-z0-9_]*$"
MAP_NAME = "^[A-Za-z_.][A-Za-z0-9_.]*$"
IFNAME = "^(?!\\.\\.?$)[^/:\\s]{1,15}$"
TRACE_NAME = "^[A-Za-z0-9_.-]+$"
LABEL_KEY = "^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
SHA256 = "^[0-9a-fA-F]{64}$"
METRIC_NAME = "^[a-zA-Z_:][a-zA-Z0-9_:]*$"
LABEL_NAME = "^[a-zA-Z_][a-zA-Z0-9_]*$"
FIELD_PATH = "^[A-Za-z0-9_]+(\\.[A-Za-z0-9_]+)*$"

# What each pattern means, for messages.
_PATTERNS: dict[str, tuple[str, str]] = {
    DNS_LABEL: (
        "not a DNS label",
        "lower-case letters, digits and '-', starting and ending with a letter or digit",
    ),
    C_NAME: ("not a C identifier", "letters, digits and '_', not starting with a digit"),
    MAP_NAME: ("not a map name", "letters, digits, '_' and '.'"),
    IFNAME: ("not an interface name", "1 to 15 characters, no '/', ':' or spaces"),
    TRACE_NAME: ("not a tracepoint name", "letters, digits, '_', '.' and '-'"),
    LABEL_KEY: ("not a label key", "like app.kubernetes.io/name or team"),
    SHA256: ("not a sha256 digest", "64 hex digits, e.g. from sha256sum"),
    METRIC_NAME: ("not a Prometheus metric name", "letters, digits, '_' and ':'"),
    LABEL_NAME: ("not a Prometheus label name", "letters, digits and '_'"),
    FIELD_PATH: ("not a field path", "member names joined by '.', like stats.packets"),
}


def _obj(properties: dict[str, Any], required: list[str] | None = None, **extra: Any) -> Any:
    out: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        out["required"] = required
    out["additionalProperties"] = False
    out.update(extra)
    return out


# Names are bounded, so that one never fills a plan or a log line: tracepoint names are
# tracefs directory names (NAME_MAX); C and map names are ELF symbols.
_NAME_MAX = {C_NAME: 1024, MAP_NAME: 1024, TRACE_NAME: 255}


def _str(pattern: str | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "string", "minLength": 1}
    if pattern is not None:
        out["pattern"] = pattern
        if pattern in _NAME_MAX:
            out["maxLength"] = _NAME_MAX[pattern]
    out.update(extra)
    return out


_PATH = _str(description="absolute, or relative to the manifest's directory")
_NETNS = _str(
    description="network namespace: a name (/var/run/netns/NAME) or a path; "
    "default: bpforch's own namespace"
)

TARGETS: dict[str, dict[str, Any]] = {
    "xdp": _obj(
        {
            "interface": _str(IFNAME),
            "mode": {
                "enum": [m.value for m in XdpMode],
                "description": "auto (default): native if the driver has it, else generic",
            },
            "netns": _NETNS,
            "take_over": {
                "type": "boolean",
                "description": "replace an XDP program another tool attached to the interface "
                "(by netlink) instead of refusing; restored if the apply fails (default false)",
            },
        },
        ["interface"],
    ),
    "tc": _obj(
        {
            "interface": _str(IFNAME),
            "direction": {"enum": [d.value for d in Direction]},
            "netns": _NETNS,
            "before": _str(C_NAME, description="a program of this collection at the same hook"),
            "after": _str(C_NAME, description="a program of this collection at the same hook"),
        },
        ["interface", "direction"],
    ),
    "cgroup": _obj(
        {
            "path": _str(
                description="cgroup v2 directory; relative: under the cgroup v2 mount "
                "(found in /proc/self/mountinfo)"
            ),
            "attach": {"enum": sorted(CGROUP_HOOKS)},
        },
        ["path", "attach"],
    ),
    "tracepoint": _obj({"group": _str(TRACE_NAME), "name": _str(TRACE_NAME)}, ["group", "name"]),
    "raw_tracepoint": _obj({"name": _str(TRACE_NAME)}, ["name"]),
    "uprobe": _obj(
        {
            "path": _PATH,
            "symbol": _str(maxLength=4096),
            "offset": {"type": "integer", "minimum": 0},
            "retprobe": {"type": "boolean"},
            "pid": {"type": "integer", "minimum": 1},
        },
        ["path"],
    ),
    "netns": _obj({"path": _NETNS}),
}

_CONSTANT: dict[str, Any] = {
    "description": "a value for a `const volatile` global, checked against its BTF type",
    "anyOf": [
        {"type": ["integer", "string", "boolean"]},
        {"type": "array", "items": {"$ref": "#/$defs/constant"}},
        {"type": "object", "additionalProperties": {"$ref": "#/$defs/constant"}},
    ],
}

_FROM = _obj(
    {
        "collection": _str(DNS_LABEL, maxLength=63),
        "map": _str(MAP_NAME, description="default: the same map name"),
        "pinned": _str(description="absolute path of a pinned map under /sys/fs/bpf"),
    },
    oneOf=[{"required": ["collection"]}, {"required": ["pinned"]}],
    dependentRequired={"map": ["collection"]},
)

#: At most this many entries per map in a manifest.
MAX_ENTRIES = 500_000

_MAP = _obj(
    {
        "pin": {
            "type": "boolean",
            "description": "pin at <root>/<collection>/maps/<name> (default: not pinned, the "
            "programs hold it; preserved, substituted, prog array and timer maps are always "
            "pinned)",
        },
        "preserve": {
            "type": "boolean",
            "description": "hand the live map (same id, its contents) to the next generation "
            "(implies pin; not for prog arrays or maps of maps)",
        },
        "max_entries": {
            "type": "integer",
            "minimum": 1,
            "maximum": 0xFFFFFFFF,
            "description": "override the object's max_entries",
        },
        "on_incompatible": {
            "enum": ["fail", "recreate"],
            "description": "a preserved map whose new spec differs: fail (default) or start empty",
        },
        "from": _FROM,
        "entries": {
            "type": "array",
            "maxItems": MAX_ENTRIES,
            "description": "the map's contents, kept by every apply (not for a substituted "
            "map: its owner declares them)",
            "items": _obj(
                {
                    "key": {
                        "description": "a literal typed by the map's BTF key type (integer, "
                        "enumerator name, string, address or CIDR, {member: value}, list; "
                        "!be16/!be32/!be64 N: a number in network byte order; !hex: raw bytes)",
                        "x-kubernetes-preserve-unknown-fields": True,
                    },
                    "value": {
                        "description": "a literal typed by the map's BTF value type (per-CPU "
                        "maps: one value, or a list of one per CPU; prog arrays and maps of "
                        "maps: a program or map name)",
                        "x-kubernetes-preserve-unknown-fields": True,
                    },
                },
                ["key", "value"],
            ),
        },
        "entries_mode": {
            "enum": [m.value for m in EntriesMode],
            "description": "exact (default): the entries not declared are deleted; merge: "
            "declared entries are added or updated, the others are left alone",
        },
    }
)

_METRIC = _obj(
    {
        "name": _str(
            METRIC_NAME,
            maxLength=200,
            description="the metric's name (a counter is exposed as <name>_total); "
            "every series has the label collection",
        ),
        "type": {"enum": [t.value for t in MetricType]},
        "help": {"type": "string", "maxLength": 1024},
        "map": _str(MAP_NAME, description="the map whose values it reads"),
        "key": {
            "type": ["integer", "string"],
            "description": "one series: the value at this key (an enumerator's name or a "
            "string for a char-array key)",
        },
        "label": _str(
            LABEL_NAME,
            maxLength=200,
            description="one series per entry, its key (or its name in names) in this label",
        ),
        "names": {
            "description": "with label: the name of key 0, 1, 2 …; keys without a name are "
            "left out",
            "type": "array",
            "items": {"type": "string", "minLength": 1, "maxLength": 200},
            "minItems": 1,
            "maxItems": 4096,
        },
        "field": _str(
            FIELD_PATH,
            maxLength=1024,
            description="a member of a struct value (dotted for a nested one, an index for "
            "an array); default: the whole value, a number",
        ),
    },
    ["name", "type", "map"],
    oneOf=[{"required": ["key"]}, {"required": ["label"]}],
    dependentRequired={"names": ["label"]},
)

_ATTACH = _obj(
    {"program": _str(C_NAME), **{name: {"$ref": f"#/$defs/{name}"} for name in TARGETS}},
    ["program"],
    oneOf=[{"required": [name]} for name in TARGETS],
)

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": SCHEMA_ID,
    "title": "bpforch Collection manifest",
    "type": "object",
    "properties": {
        "apiVersion": {
            "enum": [API_VERSION, *DEPRECATED_API_VERSIONS],
            "description": f"{API_VERSION} ({', '.join(DEPRECATED_API_VERSIONS)}: deprecated, "
            "read with a warning)",
        },
        "kind": {"const": KIND_COLLECTION},
        "metadata": _obj(
            {
                "name": _str(DNS_LABEL, maxLength=63),
                "labels": {
                    "type": "object",
                    "propertyNames": {"pattern": LABEL_KEY, "maxLength": 253},
                    "additionalProperties": {"type": "string", "maxLength": 63},
                },
            },
            ["name"],
        ),
        "spec": _obj(
            {
                "object": _str(
                    description="the eBPF ELF object; relative to the manifest's directory"
                ),
                "sha256": _str(SHA256, description="refuse the object unless it has this digest"),
                "programs": {
                    "description": "load only these programs (default: all that autoload)",
                    "type": "array",
                    "items": _str(C_NAME),
                    "minItems": 1,
                    "uniqueItems": True,
                },
                "constants": {
                    "description": "initial values of `const volatile` globals",
                    "type": "object",
                    "propertyNames": {"pattern": C_NAME},
                    "additionalProperties": {"$ref": "#/$defs/constant"},
                },
                "maps": {
                    "description": "per-map options, by the map's name in the object",
                    "type": "object",
                    "propertyNames": {"pattern": MAP_NAME},
                    "additionalProperties": {"$ref": "#/$defs/map"},
                },
                "attach": {
                    "description": "attachments: a program and exactly one target each",
                    "type": "array",
                    "items": {"$ref": "#/$defs/attachment"},
                },
                "metrics": {
                    "description": "Prometheus metrics read from map values at each scrape "
                    "(per-CPU values summed); changing them reloads nothing",
                    "type": "array",
                    "items": {"$ref": "#/$defs/metric"},
                    "maxItems": 1000,
                },
            },
            ["object"],
        ),
    },
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "$defs": {
        "constant": _CONSTANT,
        "map": _MAP,
        "attachment": _ATTACH,
        "metric": _METRIC,
        **TARGETS,
    },
}

# True exactly when the schema accepts a value (see orchestrator.manifest.fastcheck): a valid
# manifest is checked without importing jsonschema, which only reports the errors.
_valid = compile_schema(SCHEMA)


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    import jsonschema

    return jsonschema.Draft202012Validator(SCHEMA)


def schema() -> dict[str, object]:
    """The manifest's JSON Schema (a fresh copy)."""
    return copy.deepcopy(SCHEMA)


# ------------------------------------------------------------------------ CRD


# Kubernetes checks patterns with Go's RE2, which has no lookahead.
_RE2_PATTERNS = {IFNAME: "^[^/:\\s]{1,15}$"}


def _resolve(node: Any, defs: Mapping[str, Any]) -> Any:
    """Inline ``$ref``s and drop what a structural openAPIV3Schema does not allow."""
    if isinstance(node, list):
        return [_resolve(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return _resolve(defs[node["$ref"].rsplit("/", 1)[1]], defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("$schema", "$id", "$defs", "title", "dependentRequired", "propertyNames"):
            continue
        if key == "const":
            out["enum"] = [value]
            out["type"] = "string"
        elif key == "enum":
            out["type"] = "string"
            out["enum"] = value
        elif key == "additionalProperties" and value is False:
            continue  # structural schemas prune unknown fields by default
        elif key == "pattern":
            out[key] = _RE2_PATTERNS.get(value, value)
        elif key == "anyOf":  # constants: any JSON value
            out["x-kubernetes-preserve-unknown-fields"] = True
        elif key == "oneOf":
            out["oneOf"] = value  # only `required` inside: allowed in structural schemas
        elif key == "type" and isinstance(value, list):
            out["x-kubernetes-int-or-string"] = True
        else:
            out[key] = _resolve(value, defs)
    return out


def crd(group: str = API_GROUP) -> dict[str, object]:
    """The schema as a Kubernetes CustomResourceDefinition (``collections.<group>``), for
    the documents bpforch reads (``apiVersion: bpforch.dev/v1``, ``kind: Collection``)."""
    spec = _resolve(SCHEMA["properties"]["spec"], SCHEMA["$defs"])
    metadata = {"type": "object"}  # Kubernetes owns metadata's schema
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"collections.{group}"},
        "spec": {
            "group": group,
            "scope": "Cluster",
            "names": {
                "plural": "collections",
                "singular": "collection",
                "kind": KIND_COLLECTION,
                "shortNames": ["bpfc"],
            },
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": metadata,
                                "spec": spec,
                            },
                            "required": ["spec"],
                        }
                    },
                }
            ],
        },
    }


# ------------------------------------------------------------------------ errors


def _got(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return quote(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


_TYPE_NAMES = {
    "integer": "an integer",
    "string": "a string",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
    "number": "a number",
    "null": "null",
}


def _schema_path_has(err: ValidationError, word: str) -> bool:
    return word in err.relative_schema_path or word in err.absolute_schema_path


def _problems(doc: Document, err: ValidationError) -> Iterator[ManifestProblem]:
    path: PathKey = tuple(err.absolute_path)
    where = render_path(path)
    v = err.validator
    vv: Any = err.validator_value
    schema: Any = err.schema
    if v in ("required", "oneOf", "dependentRequired", "additionalProperties") and not isinstance(
        err.instance, dict
    ):
        return  # the type error about the same value says it all
    if _schema_path_has(err, "propertyNames"):
        # err.instance is the offending key; the path is its mapping's
        key = str(err.instance)
        yield from _value_problem(doc, (*path, key), err, key_name=True)
        return
    if v == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        instance = err.instance if isinstance(err.instance, dict) else {}
        for key in instance:
            if key in allowed:
                continue
            yield ManifestProblem(
                doc.key_at((*path, key)),
                render_path((*path, key)),
                f"unknown field {quote(key)}",
                did_you_mean(key, allowed, listing="allowed", limit=None),
            )
        return
    if v == "required":
        instance = err.instance if isinstance(err.instance, dict) else {}
        for name in vv:
            if name not in instance:
                yield ManifestProblem(
                    doc.key_at(path), render_path((*path, name)), "missing required field"
                )
        return
    if v == "dependentRequired":
        instance = err.instance if isinstance(err.instance, dict) else {}
        for name, needs in vv.items():
            if name in instance:
                for need in needs:
                    if need not in instance:
                        yield ManifestProblem(
                            doc.key_at((*path, name)),
                            render_path((*path, name)),
                            f"'{name}' needs '{need}'",
                            f"add {need}, or remove {name}",
                        )
        return
    if v == "oneOf" and all(
        set(branch) == {"required"} and len(branch["required"]) == 1 for branch in vv
    ):
        names = [branch["required"][0] for branch in vv]
        instance = err.instance if isinstance(err.instance, dict) else {}
        present = [n for n in names if n in instance]
        if not present:
            yield ManifestProblem(
                doc.key_at(path), where, "expected exactly one of " + ", ".join(names), ""
            )
        else:
            yield ManifestProblem(
                doc.key_at((*path, present[1])),
                where,
                "only one of " + ", ".join(present) + " may be given",
                "split it into separate entries" if path[:2] == ("spec", "attach") else "",
            )
        return
    if v == "uniqueItems":
        seen: set[str] = set()
        items = err.instance if isinstance(err.instance, list) else []
        for i, item in enumerate(items):
            text = json.dumps(item, sort_keys=True, default=str)
            if text in seen:
                yield ManifestProblem(
                    doc.at((*path, i)), render_path((*path, i)), f"duplicate {_got(item)}"
                )
            seen.add(text)
        return
    yield from _value_problem(doc, path, err)


def _value_problem(
    doc: Document, path: PathKey, err: ValidationError, *, key_name: bool = False
) -> Iterator[ManifestProblem]:
    v = err.validator
    vv: Any = err.validator_value
    value = err.instance
    src = doc.key_at(path) if key_name else doc.at(path)
    where = render_path(path)
    what = "name " if key_name else ""
    hint = ""
    if v == "type":
        types = vv if isinstance(vv, list) else [vv]
        expected = " or ".join(_TYPE_NAMES.get(str(t), str(t)) for t in types)
        message = f"expected {expected}, got {_got(value)}"
    elif v == "const":
        message = f"expected '{vv}', got {_got(value)}"
    elif v == "enum":
        choices = [str(c) for c in vv]
        message = f"expected one of {', '.join(choices)}, got {_got(value)}"
        if isinstance(value, str):
            hint = did_you_mean(value, choices, listing=None)
    elif v == "pattern":
        meaning, hint = _PATTERNS.get(vv, (f"does not match {vv}", ""))
        message = f"{what}{_got(value)} is {meaning}"
    elif v == "maxLength":
        message = f"{what}{_got(value)} is longer than {vv} characters"
    elif v == "minLength":
        message = f"{what}must not be empty"
    elif v == "minimum":
        message = f"expected at least {vv}, got {_got(value)}"
    elif v == "maximum":
        message = f"expected at most {vv}, got {_got(value)}"
    elif v == "minItems":
        message = f"expected at least {vv} item(s), got none"
    elif v == "anyOf" and path[:2] == ("spec", "constants"):
        message = f"expected an integer, string, boolean, list or mapping, got {_got(value)}"
    else:  # jsonschema's own words, which quote the value in full: show it shortened
        message = f"{what}{_got(value)}: fails the schema's {v!r} check"
    yield ManifestProblem(src, where, message, hint)


def _without_entries(value: object) -> object:
    """``value`` with every well-formed map ``entries`` list emptied (each item a mapping of
    exactly ``key`` and ``value``, which the schema allows any value): the schema check of
    a map of 100,000 entries would take seconds and find nothing. Lists with a malformed
    item are left for the schema to report."""
    if not isinstance(value, dict):
        return value
    spec = value.get("spec")
    maps = spec.get("maps") if isinstance(spec, dict) else None
    if not isinstance(maps, dict):
        return value
    shallow: dict[str, object] = {}
    for name, opts in maps.items():
        entries = opts.get("entries") if isinstance(opts, dict) else None
        if (
            isinstance(entries, list)
            and len(entries) <= MAX_ENTRIES
            and all(type(e) is dict and e.keys() == _ENTRY_FIELDS for e in entries)
        ):
            opts = {**opts, "entries": []}
        shallow[name] = opts
    return {**value, "spec": {**spec, "maps": shallow}}  # type: ignore[dict-item]


_ENTRY_FIELDS = {"key", "value"}


def check(doc: Document) -> list[ManifestProblem]:
    """Validate a document against the schema; every error as a located problem."""
    try:
        if _valid(doc.value):
            return []
    except Unsure:
        pass
    problems: list[ManifestProblem] = []
    for err in _validator().iter_errors(_without_entries(doc.value)):
        problems.extend(_problems(doc, err))
    # one problem per place and message (anyOf/oneOf can report the same thing twice)
    unique: dict[tuple[object, ...], ManifestProblem] = {}
    for p in problems:
        unique.setdefault((p.source, p.field, p.message), p)
    return list(unique.values())
