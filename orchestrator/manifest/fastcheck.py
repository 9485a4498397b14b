"""A quick yes to "is this value valid against the manifest's JSON Schema?", without jsonschema.

Importing jsonschema and building its validator costs more than validating a directory of
manifests, so :func:`orchestrator.manifest.schema.check` asks :func:`compile_schema`'s
predicate first and only runs jsonschema (for its errors, which the problems are made of)
when the answer is not a plain yes. The predicate understands exactly the keywords the
manifest's schema uses, with jsonschema's (draft 2020-12) meaning; for a value it cannot
judge exactly (a float where an integer is required: 1.0 is one) it raises
:class:`Unsure`, and the caller asks jsonschema. A schema with any other keyword does not
compile (:class:`Unsupported`), so a new keyword can never be skipped silently.

Being wrong towards "invalid" costs only time (jsonschema then finds no error); a "valid"
is only ever answered when jsonschema would find none (``tests/manifest/test_fastcheck.py``
compares the two over mutated manifests).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

Predicate = Callable[[object], bool]


class Unsupported(Exception):
    """The schema uses a keyword (or a form of one) the predicate does not implement."""


class Unsure(Exception):
    """The predicate cannot tell for this value: ask jsonschema."""


# Keywords that never change whether a value is valid.
_ANNOTATIONS = frozenset({"$schema", "$id", "$comment", "title", "description", "default"})


def _is_type(value: object, name: str) -> bool:
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, list)
    if name == "string":
        return isinstance(value, str)
    if name == "boolean":
        return isinstance(value, bool)
    if name == "null":
        return value is None
    if isinstance(value, bool):
        return False
    if name == "integer":
        if isinstance(value, float):
            raise Unsure  # jsonschema counts 1.0 as an integer
        return isinstance(value, int)
    if name == "number":
        return isinstance(value, (int, float))
    raise Unsupported(f"type {name!r}")


def _strings(values: object, keyword: str) -> frozenset[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise Unsupported(f"{keyword} of anything but strings")
    return frozenset(values)


def _number(value: object, keyword: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Unsupported(f"{keyword} {value!r}")
    return value


class _Compiler:
    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root
        self.refs: dict[str, Predicate] = {}

    def ref(self, ref: str) -> Predicate:
        if not ref.startswith("#/$defs/") or "/" in ref[len("#/$defs/") :]:
            raise Unsupported(f"$ref {ref!r}")
        name = ref[len("#/$defs/") :]
        defs = self.root.get("$defs", {})
        if name not in defs:
            raise Unsupported(f"$ref {ref!r} to nothing")
        if ref not in self.refs:
            compiled: list[Predicate] = []
            self.refs[ref] = lambda v: compiled[0](v)  # recursion: resolved at call time
            compiled.append(self.compile(defs[name]))
            self.refs[ref] = compiled[0]
        return self.refs[ref]

    def compile(self, node: object) -> Predicate:
        if node is True:
            return lambda v: True
        if node is False:
            return lambda v: False
        if not isinstance(node, Mapping):
            raise Unsupported(f"schema {node!r}")
        checks: list[Predicate] = []
        for keyword, arg in node.items():
            # x-...: vendor annotations (Kubernetes' structural-schema hints), no validation
            if keyword in _ANNOTATIONS or keyword == "$defs" or keyword.startswith("x-"):
                continue
            checks.append(self.keyword(node, keyword, arg))
        if len(checks) == 1:
            return checks[0]
        # cheap checks first (a type, an enum) and plain loops rather than all() over a
        # generator: the predicate runs once per node of every manifest
        every = tuple(checks)

        def conjunction(v: object) -> bool:
            for check in every:  # noqa: SIM110 (a loop: no generator per call)
                if not check(v):
                    return False
            return True

        return conjunction

    def keyword(self, node: Mapping[str, Any], keyword: str, arg: Any) -> Predicate:
        if keyword == "type":
            names = [arg] if isinstance(arg, str) else arg
            if not isinstance(names, list) or not names:
                raise Unsupported(f"type {arg!r}")
            for name in names:
                _is_type(None, name)  # an unknown type name fails here, not at run time
            if len(names) == 1:
                exact = _EXACT_TYPES.get(names[0])
                if exact is not None:  # no bool/int/float subtleties: type() first
                    return lambda v: type(v) is exact or isinstance(v, exact)
                only = names[0]
                return lambda v: _is_type(v, only)
            return lambda v: any(_is_type(v, n) for n in names)
        if keyword == "enum" or keyword == "const":
            allowed = _strings(arg if keyword == "enum" else [arg], keyword)
            return lambda v: isinstance(v, str) and v in allowed
        if keyword == "pattern":
            search = re.compile(arg).search
            return lambda v: not isinstance(v, str) or search(v) is not None
        if keyword == "minLength":
            low = int(_number(arg, keyword))
            return lambda v: not isinstance(v, str) or len(v) >= low
        if keyword == "maxLength":
            high = int(_number(arg, keyword))
            return lambda v: not isinstance(v, str) or len(v) <= high
        if keyword == "minimum":
            floor = _number(arg, keyword)
            return lambda v: not _is_type(v, "number") or v >= floor  # type: ignore[operator]
        if keyword == "maximum":
            ceiling = _number(arg, keyword)
            return lambda v: not _is_type(v, "number") or v <= ceiling  # type: ignore[operator]
        if keyword == "minItems":
            low = int(_number(arg, keyword))
            return lambda v: not isinstance(v, list) or len(v) >= low
        if keyword == "maxItems":
            high = int(_number(arg, keyword))
            return lambda v: not isinstance(v, list) or len(v) <= high
        if keyword == "uniqueItems":
            if arg is not True:
                raise Unsupported(f"uniqueItems {arg!r}")
            return _unique
        if keyword == "required":
            needed = _strings(arg, keyword)
            return lambda v: not isinstance(v, dict) or v.keys() >= needed
        if keyword == "dependentRequired":
            if not isinstance(arg, Mapping):
                raise Unsupported("dependentRequired")
            deps = {k: _strings(d, keyword) for k, d in arg.items()}
            return lambda v: (
                not isinstance(v, dict)
                or all(k not in v or all(d in v for d in ds) for k, ds in deps.items())
            )
        if keyword == "properties":
            if not isinstance(arg, Mapping):
                raise Unsupported("properties")
            props = tuple((k, self.compile(s)) for k, s in arg.items())

            def properties(v: object) -> bool:
                if not isinstance(v, dict):
                    return True
                for k, p in props:  # noqa: SIM110
                    if k in v and not p(v[k]):
                        return False
                return True

            return properties
        if keyword == "additionalProperties":
            if "patternProperties" in node:
                raise Unsupported("additionalProperties with patternProperties")
            known = frozenset(node.get("properties", {}))
            extra = self.compile(arg)
            if arg is False:  # the usual form: no other keys
                return lambda v: not isinstance(v, dict) or known.issuperset(v)

            def additional(v: object) -> bool:
                if not isinstance(v, dict):
                    return True
                for k, x in v.items():  # noqa: SIM110
                    if k not in known and not extra(x):
                        return False
                return True

            return additional
        if keyword == "propertyNames":
            names = self.compile(arg)
            return lambda v: not isinstance(v, dict) or all(names(k) for k in v)
        if keyword == "items":
            item = self.compile(arg)

            def items(v: object) -> bool:
                if not isinstance(v, list):
                    return True
                for x in v:  # noqa: SIM110
                    if not item(x):
                        return False
                return True

            return items
        if keyword == "anyOf" or keyword == "oneOf":
            if not isinstance(arg, list) or not arg:
                raise Unsupported(keyword)
            branches = [self.compile(s) for s in arg]
            if keyword == "anyOf":
                return lambda v: any(b(v) for b in branches)
            return lambda v: sum(1 for b in branches if b(v)) == 1
        if keyword == "$ref":
            return self.ref(arg)
        raise Unsupported(f"keyword {keyword!r}")


# Types that are one Python type each (not "integer"/"number": bool is an int, and 1.0
# may be one), tested with type() first: the values YAML builds are never subclasses.
_EXACT_TYPES: dict[str, type] = {"object": dict, "array": list, "string": str}


def _unique(value: object) -> bool:
    if not isinstance(value, list):
        return True
    if not all(isinstance(x, str) for x in value):
        raise Unsure  # jsonschema's equality (1 == 1.0, True != 1): leave it to jsonschema
    return len(set(value)) == len(value)


def compile_schema(schema: Mapping[str, Any]) -> Predicate:
    """A predicate that is True exactly when ``schema`` accepts the value (see the module);
    it may raise :class:`Unsure`. Raises :class:`Unsupported` for a schema it cannot judge."""
    return _Compiler(schema).compile(schema)
