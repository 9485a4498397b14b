"""Keys and values of whole maps as literals: :class:`MapCodec` (one map's BTF types, kind and
formats; encodes and decodes keys and values, per-CPU values and prog array or map-of-maps
references by name) and :class:`LiteralMap` (a live map read and written that way). The
value encoding itself lives in :mod:`orchestrator.ebpf.values`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from orchestrator.ebpf import _sys
from orchestrator.ebpf import btf as _btf
from orchestrator.ebpf._sys import MapType, UpdateFlags
from orchestrator.ebpf.errors import LiteralError, SpecError, quote
from orchestrator.ebpf.suggestions import hint
from orchestrator.ebpf.values import (
    _FD_VALUES,
    _HOST,
    _KEYLESS,
    FORMATS,
    FieldPath,
    Hex,
    References,
    _Fail,
    _is_text,
    _kind,
    _resolve,
    _strip,
    decode,
    encode,
)

if TYPE_CHECKING:
    from orchestrator.ebpf.maps import Map

__all__ = ["LiteralMap", "MapCodec"]


@dataclass(frozen=True)
class MapCodec:
    """Keys and values of one map as literals: its BTF types, its kind (per-CPU, prog
    array, map of maps, LPM trie) and the formats asked for. ``ncpus`` is the number of
    possible CPUs (per-CPU values); ``refs`` resolves names in prog arrays and maps of maps.

    Build one with :meth:`of` from a :class:`~orchestrator.ebpf.MapSpec` or a live
    :class:`~orchestrator.ebpf.Map`.
    """

    name: str
    type: MapType | int
    key_size: int
    value_size: int
    key_type: _btf.Type | None = None
    value_type: _btf.Type | None = None
    ncpus: int = 1
    refs: References | None = None
    key_format: str | None = None
    value_format: str | None = None

    @classmethod
    def of(
        cls,
        m: object,
        *,
        refs: References | None = None,
        key_format: str | None = None,
        value_format: str | None = None,
        ncpus: int | None = None,
    ) -> MapCodec:
        """The codec of a MapSpec or a Map (a live map's types come from the BTF the kernel
        holds for it)."""
        from orchestrator.ebpf.maps import Map
        from orchestrator.ebpf.spec import MapSpec

        mtype: MapType | int
        if isinstance(m, MapSpec):
            key_t, value_t, mtype = m.key, m.value, m.type
            key_size, value_size = m.key_size, m.value_size
            if isinstance(m.btf_value_type, _btf.Datasec):
                value_t = m.btf_value_type
        elif isinstance(m, Map):
            key_t, value_t = m.btf_types()
            mtype, key_size, value_size = m.type, m.key_size, m.value_size
        else:
            raise TypeError(f"MapCodec.of: a MapSpec or a Map, not {type(m).__name__}")
        for f in (key_format, value_format):
            if f is not None and f not in FORMATS:
                raise SpecError(
                    f"map {m.name}: unknown format {quote(f)} (one of {', '.join(FORMATS)})"
                )
        if ncpus is None:
            per_cpu = isinstance(mtype, MapType) and mtype.per_cpu
            ncpus = _sys.possible_cpus() if per_cpu else 1
        return cls(
            m.name,
            mtype,
            key_size,
            value_size,
            key_t,
            value_t,
            ncpus,
            refs,
            key_format,
            value_format,
        )

    @property
    def per_cpu(self) -> bool:
        return isinstance(self.type, MapType) and self.type.per_cpu

    @property
    def keyless(self) -> bool:
        return self.type in _KEYLESS or self.key_size == 0

    @property
    def value_stride(self) -> int:
        """Bytes per CPU in a per-CPU value buffer (the kernel rounds each to 8)."""
        return (self.value_size + 7) & ~7

    @property
    def value_buffer_size(self) -> int:
        return self.value_stride * self.ncpus if self.per_cpu else self.value_size

    @property
    def _lpm(self) -> bool:
        return self.type == MapType.LPM_TRIE

    def encode_key(self, key: object) -> bytes:
        if self.keyless:
            raise LiteralError("key", (), f"a {_sys.map_type_label(self.type)} map has no keys")
        fast: _IntReader | None = self._fast_key  # type: ignore[attr-defined]
        if fast is not None and type(key) is int and fast[0] == self.key_size:
            out = _fast_int(fast, key)
            if out is not None:
                return out
        return encode(
            self.key_type,
            key,
            size=self.key_size,
            what="key",
            fmt=self.key_format,
            cidr=self._lpm,
        )

    def __post_init__(self) -> None:
        # plain integers (the common keys and values) skip the general decoder
        fast_key = None if self.key_format or self._lpm else _int_reader(self.key_type)
        fast_value = None
        if self.value_format is None and self.type not in _REF_VALUES:
            fast_value = _int_reader(self.value_type)
        object.__setattr__(self, "_fast_key", fast_key)
        object.__setattr__(self, "_fast_value", fast_value)

    def decode_key(self, data: bytes) -> object:
        fast: _IntReader | None = self._fast_key  # type: ignore[attr-defined]
        if fast is not None and len(data) == fast[0]:
            return int.from_bytes(data, fast[1], signed=fast[2])
        return decode(self.key_type, data, what="key", fmt=self.key_format, cidr=self._lpm)

    def encode_value(self, value: object) -> bytes:
        """The value buffer for an update: per-CPU maps get one slot per possible CPU."""
        if not self.per_cpu:
            return self._encode_one(value, ())
        out = bytearray()
        for path, v in self._per_cpu_values(value):
            one = self._encode_one(v, path)
            out += one + bytes(self.value_stride - len(one))
        return bytes(out)

    def _per_cpu_values(self, value: object) -> list[tuple[FieldPath, object]]:
        """(path, value) for each CPU: one value for all, or a list of one per CPU (a list of
        lists when the value type is itself an array)."""
        if not isinstance(value, list | tuple):
            return [((), value)] * self.ncpus
        if self.value_type is not None:
            u = _strip(_btf.skip_qualifiers(self.value_type))
            one_array = isinstance(u, _btf.Array) and not _is_text(u.type)
            if one_array and not all(isinstance(v, list | tuple | Hex) for v in value):
                return [((), value)] * self.ncpus  # one array value for every CPU
        if len(value) != self.ncpus:
            raise LiteralError(
                "value",
                (),
                f"a per-CPU value takes one value, or one for each of the {self.ncpus} "
                f"possible CPUs; got a list of {len(value)}",
            )
        return [((i,), v) for i, v in enumerate(value)]

    def _encode_one(self, value: object, path: FieldPath) -> bytes:
        t = self.type
        if t in (MapType.PROG_ARRAY, MapType.ARRAY_OF_MAPS, MapType.HASH_OF_MAPS):
            return self._encode_ref(value, path)
        if isinstance(t, MapType) and t in _FD_VALUES:
            raise LiteralError(
                "value",
                path,
                f"the values of a {_sys.map_type_label(t)} map are {_FD_VALUES[t]}: "
                "bpforch does not write them",
            )
        fast: _IntReader | None = self._fast_value  # type: ignore[attr-defined]
        if fast is not None and type(value) is int and fast[0] == self.value_size:
            out = _fast_int(fast, value)
            if out is not None:
                return out
        try:
            return encode(
                self.value_type, value, size=self.value_size, what="value", fmt=self.value_format
            )
        except LiteralError as err:
            raise LiteralError("value", (*path, *err.path), err.reason) from None

    def _encode_ref(self, value: object, path: FieldPath) -> bytes:
        programs = self.type == MapType.PROG_ARRAY
        noun = "program" if programs else "map"
        if not isinstance(value, str):
            raise LiteralError(
                "value",
                path,
                f"expected the name of a {noun} for a {_sys.map_type_label(self.type)} map, got "
                f"{_kind(value)}",
            )
        refs = self.refs if self.refs is not None else References()
        table = refs.programs if programs else refs.maps
        try:
            fd = table[value]
        except KeyError:
            names = sorted(table)
            raise LiteralError(
                "value", path, f"no {noun} named {quote(value)}{hint(value, names)}"
            ) from None
        return int(fd).to_bytes(self.value_size, _HOST)

    def decode_value(self, data: bytes) -> object:
        """A value read from the map: per-CPU maps give a list with one per possible CPU."""
        if not self.per_cpu:
            return self._decode_one(data)
        stride = self.value_stride
        return [
            self._decode_one(data[i * stride : i * stride + self.value_size])
            for i in range(self.ncpus)
        ]

    def _decode_one(self, data: bytes) -> object:
        fast: _IntReader | None = self._fast_value  # type: ignore[attr-defined]
        if fast is not None and len(data) == fast[0]:
            return int.from_bytes(data, fast[1], signed=fast[2])
        t = self.type
        if t in _REF_VALUES:
            ident = int.from_bytes(data[:4], _HOST)
            refs = self.refs if self.refs is not None else References()
            table = refs.program_ids if t == MapType.PROG_ARRAY else refs.map_ids
            return table.get(ident, ident)
        return decode(self.value_type, data, what="value", fmt=self.value_format)


_REF_VALUES = frozenset({MapType.PROG_ARRAY, MapType.ARRAY_OF_MAPS, MapType.HASH_OF_MAPS})
_IntReader = tuple[int, Literal["little", "big"], bool]  # (size, byte order, signed)


def _int_reader(t: _btf.Type | None) -> _IntReader | None:
    """How to read ``t`` when it is a whole, plain integer (no bool, no char, no bitfield);
    None otherwise."""
    if t is None:
        return None
    try:
        u, be = _resolve(t, ())
    except _Fail:
        return None
    if not isinstance(u, _btf.Int) or u.bool or u.offset or u.bits != u.size * 8:
        return None
    if u.size == 1 and _is_text(u):
        return None
    return u.size, "big" if be else _HOST, u.signed and not be


def _fast_int(fast: _IntReader, v: int) -> bytes | None:
    """``v`` stored as a plain integer field; None if it does not fit (the general encoder
    says why)."""
    size, order, signed = fast
    try:
        return v.to_bytes(size, order, signed=signed)
    except OverflowError:
        return None


class LiteralMap:
    """A live map read and written as literals: a :class:`MapCodec` over the map's raw
    element calls. It does not own the map (close that yourself)."""

    def __init__(self, m: Map, codec: MapCodec | None = None) -> None:
        self.map = m
        self.codec = codec if codec is not None else MapCodec.of(m)

    def lookup(self, key: object) -> object:
        """The value at ``key``; KeyNotFoundError if there is none."""
        raw_key = None if self.codec.keyless else self.codec.encode_key(key)
        return self.codec.decode_value(self.map.lookup_bytes(raw_key))

    def update(self, key: object, value: object, flags: UpdateFlags | int = 0) -> None:
        raw_key = None if self.codec.keyless else self.codec.encode_key(key)
        self.map.update_bytes(raw_key, self.codec.encode_value(value), flags)

    def delete(self, key: object) -> None:
        self.map.delete_bytes(self.codec.encode_key(key))

    def items(self) -> Iterator[tuple[object, object]]:
        """(key, value) of every element (in batches where the kernel can)."""
        for raw_key, raw in self.map.items_bytes():
            yield self.codec.decode_key(raw_key), self.codec.decode_value(raw)
