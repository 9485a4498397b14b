"""A map's declared ``entries``: which maps take them, the codec that types them through the
object's BTF (:class:`~orchestrator.ebpf.map_codec.MapCodec`, as ``bpforch map`` uses), and
the declared contents as raw keys and comparable values.

Values are compared as raw bytes, except in prog arrays and maps of maps, whose values are
names (a program or map of the collection): the kernel gives back ids, which the reconciler
names through the record.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from orchestrator.ebpf import MapType
from orchestrator.ebpf.errors import LiteralError
from orchestrator.ebpf.map_codec import MapCodec
from orchestrator.ebpf.spec import MapSpec
from orchestrator.ebpf.values import References
from orchestrator.manifest.literals import render
from orchestrator.manifest.model import MapEntry

#: Map types whose contents a manifest may declare.
ENTRY_TYPES = frozenset(
    {
        MapType.HASH,
        MapType.LRU_HASH,
        MapType.PERCPU_HASH,
        MapType.LRU_PERCPU_HASH,
        MapType.ARRAY,
        MapType.PERCPU_ARRAY,
        MapType.LPM_TRIE,
        MapType.PROG_ARRAY,
        MapType.ARRAY_OF_MAPS,
        MapType.HASH_OF_MAPS,
    }
)
#: Arrays always hold every index: an entry "deleted" from one is set to zero.
ARRAYS = frozenset({MapType.ARRAY, MapType.PERCPU_ARRAY})
#: Values that name a program or a map.
REFERENCES = frozenset({MapType.PROG_ARRAY, MapType.ARRAY_OF_MAPS, MapType.HASH_OF_MAPS})

Contents = dict[bytes, bytes | str]


@dataclass(frozen=True, slots=True)
class EntryProblem:
    """Why declared entries don't fit a map: ``index`` of the entry (None: the whole list),
    ``field`` (key, value or None) and the message and hint."""

    index: int | None
    field: str | None
    message: str
    hint: str = ""


def type_label(t: MapType | int) -> str:
    return t.name.lower() if isinstance(t, MapType) else f"type {t}"


def codec(
    m: MapSpec, *, programs: Iterable[str] = (), maps: Iterable[str] = (), ncpus: int | None = None
) -> MapCodec:
    """The codec of ``m`` for declared entries: names of ``programs`` and ``maps`` resolve
    (to fd 0: only checked)."""
    refs = References(programs=dict.fromkeys(programs, 0), maps=dict.fromkeys(maps, 0))
    return MapCodec.of(m, refs=refs, ncpus=ncpus)


def map_problem(m: MapSpec) -> str | None:
    """Why ``m`` cannot take declared entries (None: it can)."""
    if m.is_data_section:
        return f"{m.name} is a data section (set its variables with spec.constants)"
    if m.type not in ENTRY_TYPES:
        return (
            f"a {type_label(m.type)} map does not take declared entries (hash, lru_hash, array, "
            "lpm_trie, their per-CPU kinds, prog arrays and maps of maps do)"
        )
    return None


@dataclass(frozen=True, slots=True)
class Encoded:
    """Declared entries, encoded: ``compared`` (raw key -> raw value, or the name a prog
    array or map of maps holds), ``raw`` (raw key -> raw value as written: the fd for a
    name), ``index`` (raw key -> the entry that declares it) and the problems."""

    compared: Contents
    raw: dict[bytes, bytes]
    index: dict[bytes, int]
    problems: list[EntryProblem]


def encode_entries(c: MapCodec, entries: Sequence[MapEntry], max_entries: int) -> Encoded:
    """Every declared entry encoded through ``c``, and the problems of each entry: a key or
    value that does not fit, a key declared twice, an array index out of range, more
    entries than the map holds."""
    fast = _plain_ints(c, entries, max_entries)
    if fast is not None:
        return fast
    out: Contents = {}
    raws: dict[bytes, bytes] = {}
    first: dict[bytes, int] = {}
    problems: list[EntryProblem] = []
    refs = c.type in REFERENCES
    for i, e in enumerate(entries):
        try:
            key = c.encode_key(e.key)
        except LiteralError as err:
            problems.append(EntryProblem(i, "key", str(err), "give a key of the map's key type"))
            continue
        try:
            raw = c.encode_value(e.value)
        except LiteralError as err:
            problems.append(
                EntryProblem(i, "value", str(err), "give a value of the map's value type")
            )
            continue
        if c.type in ARRAYS or c.type in (MapType.PROG_ARRAY, MapType.ARRAY_OF_MAPS):
            index = int.from_bytes(key, "little")
            if index >= max_entries:
                problems.append(
                    EntryProblem(
                        i,
                        "key",
                        f"key: index {index} is out of range (the map has {max_entries} entries)",
                        f"give an index below {max_entries}",
                    )
                )
                continue
        if key in first:
            problems.append(
                EntryProblem(
                    i,
                    "key",
                    f"key {render(e.key)} is declared twice (also entries[{first[key]}])",
                    "declare each key once",
                )
            )
            continue
        first[key] = i
        out[key] = str(e.value) if refs else raw
        raws[key] = raw
    if len(out) > max_entries:
        problems.append(
            EntryProblem(
                None,
                None,
                f"{len(out)} entries do not fit the map (max_entries {max_entries})",
                "declare fewer, or raise max_entries",
            )
        )
    return Encoded(out, raws, first, problems)


def _plain_ints(c: MapCodec, entries: Sequence[MapEntry], max_entries: int) -> Encoded | None:
    """The common case, quickly: integer keys and values of whole, plain integer types (no
    per-CPU values, no names, no formats), each key once and in range. None when any entry
    is something else (the general encoder handles it, and says what is wrong)."""
    kf = getattr(c, "_fast_key", None)
    vf = getattr(c, "_fast_value", None)
    if kf is None or vf is None or c.per_cpu or c.type in REFERENCES:
        return None
    (ksize, korder, ksigned), (vsize, vorder, vsigned) = kf, vf
    if ksize != c.key_size or vsize != c.value_size:
        return None
    arrays = c.type in ARRAYS
    out: dict[bytes, bytes] = {}
    first: dict[bytes, int] = {}
    try:
        for i, e in enumerate(entries):
            k, v = e.key, e.value
            if type(k) is not int or type(v) is not int or (arrays and k >= max_entries):
                return None
            key = k.to_bytes(ksize, korder, signed=ksigned)
            if key in first:
                return None
            first[key] = i
            out[key] = v.to_bytes(vsize, vorder, signed=vsigned)
    except OverflowError:
        return None
    if len(out) > max_entries:
        return None
    return Encoded(dict(out), out, first, [])


__all__ = [
    "ARRAYS",
    "ENTRY_TYPES",
    "REFERENCES",
    "Contents",
    "Encoded",
    "EntryProblem",
    "codec",
    "encode_entries",
    "map_problem",
    "type_label",
]
