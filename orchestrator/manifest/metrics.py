"""How a manifest's ``spec.metrics`` read map values: the rules shared by validation (on the
object's map specs) and by the scrape (on the live maps).

A value is decoded by its BTF type (a struct is a dict, an array a list, an enum its
enumerator's name); ``field`` walks into it, and what it reaches must be a number. A per-CPU
map's value is one such value per CPU, summed. A key names a series as its decoded form: an
integer's digits, an enumerator's name, a char array's text (up to its first NUL).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from orchestrator.ebpf import MapType
from orchestrator.ebpf.suggestions import did_you_mean

# Maps whose values can be read by key: the rest have no keys (ring buffers, queues),
# hold fds or kernel objects (prog arrays, maps of maps, sockmaps), or belong to one
# socket, task, cgroup or inode.
READABLE = frozenset(
    {
        MapType.HASH,
        MapType.ARRAY,
        MapType.PERCPU_HASH,
        MapType.PERCPU_ARRAY,
        MapType.LRU_HASH,
        MapType.LRU_PERCPU_HASH,
    }
)


class MetricValueError(ValueError):
    """A value or key that a metric cannot read (the message says what it is instead)."""


def _kind(value: object) -> str:
    if isinstance(value, dict):
        return "a struct"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a name"
    if isinstance(value, bytes | bytearray):
        return "bytes"
    if isinstance(value, int):
        return "an integer"
    return f"a {type(value).__name__}"


def number(value: object, path: Sequence[str]) -> int | float:
    """The number at ``path`` inside a decoded value."""
    cur = value
    for i, part in enumerate(path):
        where = ".".join(path[: i + 1])
        if isinstance(cur, dict):
            if part not in cur:
                members = did_you_mean(part, sorted(map(str, cur)))
                said = f" ({members})" if members else ""  # a struct of no members: nothing
                raise MetricValueError(f"field {where}: no such member{said}")
            cur = cur[part]
        elif isinstance(cur, list):
            if not part.isdigit() or int(part) >= len(cur):
                raise MetricValueError(
                    f"field {where}: an array of {len(cur)} needs an index below {len(cur)}"
                )
            cur = cur[int(part)]
        else:
            raise MetricValueError(f"field {where}: {_kind(cur)} has no members")
    if isinstance(cur, bool):
        return int(cur)
    if isinstance(cur, int | float):
        return cur
    where = ".".join(path)
    raise MetricValueError(
        (f"field {where} is {_kind(cur)}" if path else f"the value is {_kind(cur)}")
        + ", not a number"
    )


def total(values: object, path: Sequence[str], per_cpu: bool) -> int | float:
    """The number a metric reads from one entry's decoded value: summed over CPUs."""
    if per_cpu and isinstance(values, list):
        return sum(number(v, path) for v in values)
    return number(values, path)


def label_value(
    key: object, names: Sequence[str] | None, enumerators: Mapping[int, str] | None = None
) -> str | None:
    """A key as a label value (None: the key has no name in ``names``, so no series);
    ``enumerators``: the key type's names when it is an enum."""
    if names is not None:
        if isinstance(key, bool) or not isinstance(key, int):
            raise MetricValueError(f"names index keys by number, and this key is {_kind(key)}")
        return names[key] if 0 <= key < len(names) else None
    if isinstance(key, bool):
        return str(int(key))
    if isinstance(key, int) and enumerators is not None and key in enumerators:
        return enumerators[key]
    if isinstance(key, int | str):
        return str(key)
    if isinstance(key, bytes | bytearray):  # a char array: its text, up to the first NUL
        return bytes(key).split(b"\0", 1)[0].decode("utf-8", "replace")
    raise MetricValueError(f"the key is {_kind(key)}, which cannot be a label value")
