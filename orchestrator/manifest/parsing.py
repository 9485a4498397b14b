"""Parsing YAML text into :class:`~orchestrator.manifest.document.Document` values.

PyYAML's composer gives a node tree with marks; we build plain values (dict, list, str, int,
float, bool, None) from it ourselves so that every path inside a document maps back to a
line and column, and so that duplicate keys and merge keys (``<<``) are errors instead of
being silently resolved.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import yaml

from orchestrator.manifest.document import Document, PathKey, render_path
from orchestrator.manifest.errors import ManifestProblem
from orchestrator.manifest.literals import TAGS, tagged
from orchestrator.manifest.model import Source

# libyaml's parser (with the same marks) when PyYAML was built with it: 5-10x faster.
_Loader: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = getattr(
    yaml, "CSafeLoader", yaml.SafeLoader
)


class _MarkedLoader(_Loader):  # type: ignore[misc,valid-type]
    """The loader, with the implicit tags of short scalars remembered: the composer asks
    the (pure-Python) resolver once per scalar, and manifests repeat their keys and values
    (``apiVersion``, ``spec``, ``true``). A safe loader has no path resolvers, so a
    scalar's tag depends only on its kind, text and implicit flags."""

    _tags: dict[tuple[object, ...], str] = {}

    def resolve(self, kind: type[yaml.Node], value: str | None, implicit: object) -> str:
        key = (kind, value, implicit)
        tag = self._tags.get(key)
        if tag is None:
            tag = super().resolve(kind, value, implicit)
            if value is None or len(value) <= _RESOLVE_CACHED_LEN:
                if len(self._tags) >= _RESOLVE_CACHE_MAX:
                    self._tags.clear()
                self._tags[key] = tag
        return tag


_RESOLVE_CACHED_LEN = 64
_RESOLVE_CACHE_MAX = 4096
_PLAIN_TAGS = frozenset(("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"))
_STR_TAG = "tag:yaml.org,2002:str"

# A document may use anchors and aliases, but their expansion is bounded (billion laughs).
_MAX_NODES = 100_000
# Map entries (spec.maps.*.entries) have a budget of their own: a map of 100,000 declared
# entries is some 300,000 nodes. Aliases inside entries are bounded by it too.
MAX_ENTRY_NODES = 2_000_000
# No eBPF type is wider (BTF ints are at most 16 bytes); wider ones could not be printed.
MAX_INT_BITS = 128
_INT_TAG = "tag:yaml.org,2002:int"


def _pos(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _in_entries(path: PathKey) -> bool:
    """Whether ``path`` is inside a key or value of a map's ``entries`` (where the tags of
    :data:`~orchestrator.manifest.literals.TAGS` are read)."""
    return len(path) >= 6 and path[:2] == ("spec", "maps") and path[3] == "entries"


class _TooLarge(Exception):
    pass


class _Builder:
    def __init__(
        self,
        loader: yaml.constructor.SafeConstructor,
        doc: Document,
        problems: list[ManifestProblem],
    ) -> None:
        self.loader = loader
        self.doc = doc
        self.problems = problems
        self.count = 0
        self.entry_count = 0
        self.active: set[int] = set()

    def problem(self, node: yaml.Node, path: PathKey, message: str, hint: str = "") -> None:
        self.problems.append(
            ManifestProblem(Source(self.doc.file, *_pos(node)), render_path(path), message, hint)
        )

    def build(self, node: yaml.Node, path: PathKey) -> object:
        if len(path) >= 5 and path[3] == "entries" and path[:2] == ("spec", "maps"):
            self.entry_count += 1
            if self.entry_count > MAX_ENTRY_NODES:
                raise _TooLarge(f"map entries expand to more than {MAX_ENTRY_NODES} nodes")
        else:
            self.count += 1
            if self.count > _MAX_NODES:
                raise _TooLarge(f"document expands to more than {_MAX_NODES} nodes")
        if path not in self.doc.values:
            mark = node.start_mark
            self.doc.values[path] = (mark.line + 1, mark.column + 1)
        if id(node) in self.active:
            self.problem(node, path, "recursive alias", "YAML aliases must not contain themselves")
            raise _Skip
        if isinstance(node, yaml.ScalarNode):
            if node.tag == _STR_TAG:  # what the constructor returns for it
                return str(node.value)
            if node.tag in TAGS and _in_entries(path):
                try:
                    return tagged(node.tag, str(node.value))
                except ValueError as err:
                    self.problem(node, path, str(err), "e.g. key: !be16 9999")
                    raise _Skip from err
            try:
                value = self.loader.construct_object(node, deep=True)
            except yaml.constructor.ConstructorError as err:
                self.problem(node, path, f"invalid value: {err.problem}", "remove the tag?")
                raise _Skip from err
            except ValueError as err:  # int(): over 4,300 decimal digits (CVE-2020-10735)
                if node.tag != _INT_TAG:  # pragma: no cover - only int() raises it
                    raise
                self.problem(
                    node,
                    path,
                    f"integer of {len(node.value)} digits is too large",
                    f"integers are at most {MAX_INT_BITS} bits wide",
                )
                raise _Skip from err
            if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
                self.problem(
                    node,
                    path,
                    f"integer of {value.bit_length()} bits is too large",
                    f"integers are at most {MAX_INT_BITS} bits wide",
                )
                raise _Skip
            return value
        if node.tag not in _PLAIN_TAGS:
            hint = "remove the tag"
            if node.tag in TAGS:
                hint = f"{node.tag} tags a number in a map's entries"
            self.problem(node, path, f"unsupported YAML tag {node.tag}", hint)
            raise _Skip
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.build(child, (*path, i)) for i, child in enumerate(node.value)]
            if isinstance(node, yaml.MappingNode):
                return self.mapping(node, path)
        finally:
            self.active.discard(id(node))
        raise AssertionError(f"unknown YAML node {node!r}")  # pragma: no cover

    def mapping(self, node: yaml.MappingNode, path: PathKey) -> dict[str, object]:
        out: dict[str, object] = {}
        first: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                self.problem(
                    key_node, path, "merge keys (<<) are not supported", "write the fields out"
                )
                continue
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "":
                self.problem(key_node, path, "mapping keys must be non-empty strings")
                continue
            # Keys are taken verbatim: `on:` or `1:` name a field, not a bool or an int.
            key = str(key_node.value)
            if key in first:
                line = first[key].start_mark.line + 1
                self.problem(
                    key_node,
                    (*path, key),
                    f"duplicate key '{key}' (first at line {line})",
                    "each key may appear once per mapping",
                )
                continue
            first[key] = key_node
            child = (*path, key)
            mark = key_node.start_mark
            self.doc.keys[child] = (mark.line + 1, mark.column + 1)
            out[key] = self.build(value_node, child)
        return out


class _Skip(Exception):
    """The document cannot be built (the problem is recorded)."""


def parse_documents(file: Path, text: str, problems: list[ManifestProblem]) -> Iterator[Document]:
    """The non-empty documents of a (multi-document) YAML text. Syntax errors, duplicate keys
    and the like are appended to ``problems``; a syntax error ends the file."""
    loader = _MarkedLoader(text)
    index = 0
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:  # pragma: no cover - check_node said there is one
                break
            this = index
            index += 1
            if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
                continue  # an empty document (e.g. a trailing ---)
            doc = Document(file, this, None, _pos(node))
            builder = _Builder(loader, doc, problems)
            try:
                doc.value = builder.build(node, ())
            except _Skip:
                continue
            except _TooLarge as err:
                problems.append(
                    ManifestProblem(Source(file, *_pos(node)), "", str(err), "too many aliases?")
                )
                continue
            yield doc
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        src = Source(file, mark.line + 1, mark.column + 1) if mark else Source(file)
        message = err.problem or str(err)
        hint = err.context or ""
        cm = err.context_mark
        if hint and cm is not None and mark is not None and cm.line != mark.line:
            hint += f" started at line {cm.line + 1}, column {cm.column + 1}"
        problems.append(ManifestProblem(src, "", f"invalid YAML: {message}", hint))
    except yaml.YAMLError as err:
        problems.append(ManifestProblem(Source(file), "", f"invalid YAML: {err}"))
    finally:
        loader.dispose()
