"""Map keys and values written as YAML: parsing a literal (``bpforch map set … KEY VALUE``)
and printing one back (``bpforch map dump``) in the form a manifest takes.

The values are those of :mod:`orchestrator.ebpf.values`, plus two tags:

- ``!be16 9999`` / ``!be32 …`` / ``!be64 …``: a number in network byte order
  (:class:`~orchestrator.ebpf.values.NetworkOrder`);
- ``!hex 270f0000``: raw bytes (:class:`~orchestrator.ebpf.values.Hex`).

Printing is the inverse: ``yaml.safe_load`` of what :func:`render` prints (with these tags)
gives the literal back, so a dumped entry can be pasted into a manifest or a command line.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from orchestrator.ebpf.values import Hex, NetworkOrder

if TYPE_CHECKING:
    import yaml

__all__ = ["TAGS", "LiteralSyntaxError", "parse_literal", "render", "tagged"]


@functools.cache
def _loader() -> type[yaml.SafeLoader] | type[yaml.CSafeLoader]:
    """libyaml's safe loader when PyYAML was built with it. PyYAML is imported on first
    use: printing most values (a plan's diffs) never needs it."""
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


_PLAIN_TAGS = frozenset(("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"))
_SCALAR_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("null", "bool", "int", "float", "str"))
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MAX_NODES = 100_000
_MAX_INT_BITS = 128
_MAX_TEXT = 1 << 20

#: The YAML tags a key or value may carry.
TAGS = ("!be16", "!be32", "!be64", "!hex")


class LiteralSyntaxError(ValueError):
    """A literal that is not valid YAML, or uses something keys and values cannot hold."""


def tagged(tag: str, text: str) -> object:
    """The value of a scalar ``text`` tagged ``tag`` (one of :data:`TAGS`); ValueError
    says what is wrong with it."""
    if tag == "!hex":
        return Hex.parse(text)
    if tag in ("!be16", "!be32", "!be64"):
        try:
            value = int(text.replace("_", ""), 0)
        except ValueError:
            raise ValueError(f"{tag} takes an integer, got {text!r}") from None
        return NetworkOrder(int(tag[3:]), value)
    raise ValueError(f"unknown tag {tag} (keys and values take {', '.join(TAGS)})")


def parse_literal(text: str) -> object:
    """One key or value written as YAML (``53``, ``"10.0.0.0/8"``, ``{port: 80}``,
    ``!be16 9999``). Raises LiteralSyntaxError."""
    if len(text) > _MAX_TEXT:
        raise LiteralSyntaxError(f"literal of {len(text)} characters is too long")
    import yaml

    loader = _loader()(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise LiteralSyntaxError("empty literal (write a value, or '' for an empty string)")
        return _Builder(loader).build(node)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f" at column {mark.column + 1}" if mark is not None and mark.line == 0 else ""
        raise LiteralSyntaxError(f"invalid YAML{where}: {err.problem or err}") from None
    except yaml.YAMLError as err:
        raise LiteralSyntaxError(f"invalid YAML: {err}") from None
    finally:
        loader.dispose()


class _Builder:
    def __init__(self, loader: yaml.SafeLoader | yaml.CSafeLoader) -> None:
        self.loader = loader
        self.count = 0

    def build(self, node: yaml.Node) -> object:
        import yaml

        self.count += 1
        if self.count > _MAX_NODES:
            raise LiteralSyntaxError(f"literal expands to more than {_MAX_NODES} nodes")
        if isinstance(node, yaml.ScalarNode):
            if node.tag in TAGS:
                try:
                    return tagged(node.tag, str(node.value))
                except ValueError as err:
                    raise LiteralSyntaxError(str(err)) from None
            if node.tag.startswith("!"):
                raise LiteralSyntaxError(
                    f"unknown tag {node.tag} (keys and values take {', '.join(TAGS)})"
                )
            if node.tag == "tag:yaml.org,2002:int" and len(node.value) > 60:
                raise LiteralSyntaxError(
                    f"integer of {len(node.value)} digits is too large (at most "
                    f"{_MAX_INT_BITS} bits)"
                )
            if node.tag == _TIMESTAMP:
                return str(node.value)  # a date-like string stays a string
            if node.tag not in _SCALAR_TAGS:
                raise LiteralSyntaxError(
                    f"unknown tag {node.tag} (keys and values take {', '.join(TAGS)})"
                )
            try:
                value = self.loader.construct_object(node, deep=True)
            except yaml.constructor.ConstructorError as err:
                raise LiteralSyntaxError(f"invalid value: {err.problem}") from None
            if isinstance(value, int) and value.bit_length() > _MAX_INT_BITS:
                raise LiteralSyntaxError(
                    f"integer of {value.bit_length()} bits is too large (at most "
                    f"{_MAX_INT_BITS} bits)"
                )
            return value
        if node.tag not in _PLAIN_TAGS:
            raise LiteralSyntaxError(
                f"unknown tag {node.tag} (keys and values take {', '.join(TAGS)})"
            )
        if isinstance(node, yaml.SequenceNode):
            return [self.build(child) for child in node.value]
        if isinstance(node, yaml.MappingNode):
            out: dict[str, object] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "":
                    raise LiteralSyntaxError("member names must be non-empty strings")
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise LiteralSyntaxError("merge keys (<<) are not supported")
                key = str(key_node.value)  # verbatim: `on:` names a member, not a bool
                if key in out:
                    raise LiteralSyntaxError(f"duplicate member {key!r}")
                out[key] = self.build(value_node)
            return out
        raise LiteralSyntaxError(f"unsupported YAML node {type(node).__name__}")


# ---------------------------------------------------------------------------- printing

_PLAIN = re.compile(r"[A-Za-z0-9_./+-][A-Za-z0-9_./:+-]*")


@functools.lru_cache(maxsize=4096)
def _plain_ok(text: str) -> bool:
    """Whether ``text`` can be printed unquoted inside a flow collection."""
    if not _PLAIN.fullmatch(text) or text.endswith(":"):
        return False
    import yaml

    try:
        return bool(yaml.load(f"[{text}]", Loader=_loader()) == [text])
    except yaml.YAMLError:
        return False


def _string(text: str) -> str:
    if text and _plain_ok(text):
        return text
    return '"' + "".join(_escape(c) for c in text) + '"'


def _escape(c: str) -> str:
    """One character in a YAML double-quoted scalar: printable ones as they are."""
    if c in '"\\':
        return "\\" + c
    n = ord(c)
    if 0x20 <= n <= 0x7E or 0xA0 <= n <= 0xD7FF or 0xE000 <= n <= 0xFFFD or n >= 0x10000:
        return c
    return f"\\u{n:04x}"


def render(value: object) -> str:
    """``value`` as one line of flow YAML that :func:`parse_literal` reads back."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        # YAML 1.1 reads a float only with a dot in it: 1e+20 would be a string
        mantissa, e, exponent = repr(value).partition("e")
        if "." not in mantissa:
            mantissa += ".0"
        return mantissa + e + exponent
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, NetworkOrder):
        return f"!{value.tag} {value.value}"
    if isinstance(value, Hex):
        return f"!hex {value.data.hex()}" if value.data else '!hex ""'
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_string(str(k))}: {render(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(render(v) for v in value) + "]"
    return _string(str(value))
