"""Live maps: creation from a :class:`MapSpec`, and a dict-like API over the map syscalls.

Keys and values are marshalled from their BTF types when the map has them (ints, bytes,
dicts/dataclasses/ctypes structures for structs; see :mod:`orchestrator.ebpf.btf.layout`);
otherwise ``bytes`` of exactly the right size, or an ``int`` for keys and values of 1, 2, 4
or 8 bytes. Per-CPU maps take and give lists with one value per possible CPU.
"""

from __future__ import annotations

import ctypes
import errno
import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator.ebpf import _sys
from orchestrator.ebpf._sys import FD, Cmd, MapFlags, MapType, UpdateFlags
from orchestrator.ebpf._sys.enums import PER_CPU_MAP_TYPES
from orchestrator.ebpf.errors import (
    Error,
    KeyNotFoundError,
    NotSupportedError,
    SpecError,
    SyscallError,
)
from orchestrator.ebpf.handle import Handle
from orchestrator.ebpf.lru import LRU

if TYPE_CHECKING:
    from orchestrator.ebpf import btf as _btf
    from orchestrator.ebpf.btf.types import _Lazy
    from orchestrator.ebpf.spec import MapSpec

# The BTF code is imported where a map's types are used (a map opened and read as raw bytes,
# as the reconciler reads its markers, needs none of it): a type or a type id held by a map
# came from that code, so it is already imported whenever one is there.

_MISSING = object()

# Map types whose elements are fds or ids rather than data, and that have no BTF key/value.
_NO_BTF_TYPES = frozenset(
    {
        MapType.PROG_ARRAY,
        MapType.PERF_EVENT_ARRAY,
        MapType.CGROUP_ARRAY,
        MapType.ARRAY_OF_MAPS,
        MapType.HASH_OF_MAPS,
        MapType.RINGBUF,
        MapType.USER_RINGBUF,
        MapType.STACK_TRACE,
        MapType.DEVMAP,
        MapType.DEVMAP_HASH,
        MapType.CPUMAP,
        MapType.XSKMAP,
        MapType.SOCKMAP,
        MapType.SOCKHASH,
        MapType.REUSEPORT_SOCKARRAY,
        MapType.QUEUE,
        MapType.STACK,
        MapType.BLOOM_FILTER,
        MapType.STRUCT_OPS,
    }
)

# Map types without keys (push/pop/peek) and array-like map types (fixed indexes).
_KEYLESS = frozenset(
    {MapType.QUEUE, MapType.STACK, MapType.BLOOM_FILTER, MapType.RINGBUF, MapType.USER_RINGBUF}
)
_ARRAYS = frozenset(
    {
        MapType.ARRAY,
        MapType.PERCPU_ARRAY,
        MapType.PROG_ARRAY,
        MapType.PERF_EVENT_ARRAY,
        MapType.CGROUP_ARRAY,
        MapType.ARRAY_OF_MAPS,
    }
)

_PLAIN_ARRAYS = frozenset({MapType.ARRAY, MapType.PERCPU_ARRAY})  # no deletion


# Map types whose values are written as the fd of a program or map (read back: its id).
_FD_VALUED = frozenset({MapType.PROG_ARRAY, MapType.ARRAY_OF_MAPS, MapType.HASH_OF_MAPS})


@dataclass(frozen=True, slots=True)
class MapInfo:
    """What the kernel reports about a map (BPF_OBJ_GET_INFO_BY_FD)."""

    id: int
    name: str
    type: MapType | int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    btf_id: int
    map_extra: int


def kernel_name(name: str) -> str:
    """An object name the kernel accepts: [A-Za-z0-9_.], at most 15 characters."""
    # each character maps to one, so only the first 15 matter: the cache key stays small
    return _kernel_name(name[: _sys.BPF_OBJ_NAME_LEN - 1])


@functools.lru_cache(maxsize=1024)
def _kernel_name(name: str) -> str:
    # isascii: str.isalnum() is true of letters the kernel refuses (é, ß, digits of any script)
    return "".join(c if (c.isascii() and c.isalnum()) or c in "_." else "_" for c in name)


def create_attr(
    spec: MapSpec, flags: int, inner_fd: int = 0, btf_ids: tuple[int, int] = (0, 0)
) -> _sys.MapCreateAttr:
    """The BPF_MAP_CREATE attributes of ``spec`` with map flags ``flags`` (a perf event
    array of 0 entries gets one per possible CPU) and its BTF key and value type ids
    ``btf_ids`` where its type takes BTF; the BTF fd is left unset (see
    :meth:`Map._create_attr`)."""
    max_entries = spec.max_entries
    if spec.type == MapType.PERF_EVENT_ARRAY and max_entries == 0:
        max_entries = _sys.possible_cpus()
    attr = _sys.MapCreateAttr(
        map_type=spec.type,
        key_size=spec.key_size,
        value_size=spec.value_size,
        max_entries=max_entries,
        map_flags=flags,
        inner_map_fd=inner_fd,
        numa_node=spec.numa_node,
        map_name=kernel_name(spec.name).encode(),
        map_extra=spec.map_extra,
    )
    if spec.type not in _NO_BTF_TYPES and any(btf_ids):
        attr.btf_key_type_id, attr.btf_value_type_id = btf_ids
    return attr


class Map(Handle):
    """A map in the kernel, owned through one fd. Close it (or use ``with``)."""

    def __init__(
        self,
        fd: FD,
        *,
        name: str,
        type: MapType | int,
        key_size: int,
        value_size: int,
        max_entries: int,
        flags: int = 0,
        key_type: _btf.Type | _Lazy | None = None,
        value_type: _btf.Type | _Lazy | None = None,
    ) -> None:
        self._fd = fd
        self.name = name
        self.type: MapType | int
        if isinstance(type, MapType):
            self.type = type
        else:
            try:
                self.type = MapType(type)
            except ValueError:
                self.type = type  # a type this code does not know: kept as the number
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self.flags = flags
        # each may be held as a type id (a _Lazy from the spec), decoded on first read
        self._key_type: _btf.Type | _Lazy | None = key_type
        self._value_type: _btf.Type | _Lazy | None = value_type
        # (btf id, key type id, value type id) to resolve key/value types lazily from the
        # kernel's copy of the map's BTF, for maps opened by pin, id or fd.
        self._kernel_btf: tuple[int, int, int] | None = None
        self._pinned: str | None = None
        self._datasec: _btf.Datasec | None = None  # a data section's value type (btf_types)
        self._id: int | None = None  # read from the kernel on first use, then kept
        # self._per_cpu, without two property calls (one per map a collection creates)
        self._ncpus = _sys.possible_cpus() if int(self.type) in PER_CPU_MAP_TYPES else 1

    # ------------------------------------------------------------------ construction

    @classmethod
    def create(
        cls,
        spec: MapSpec,
        *,
        inner_map: Map | None = None,
        btf_fd: FD | None = None,
        btf_ids: tuple[int, int] = (0, 0),
        extra_flags: int = 0,
    ) -> Map:
        """BPF_MAP_CREATE from a spec. Contents are not written (see :meth:`populate`)."""
        inner_fd = inner_map.fd.raw if inner_map is not None else 0
        flags = spec.flags | extra_flags
        attr = create_attr(spec, flags, inner_fd, btf_ids)
        has_ids = bool(attr.btf_key_type_id or attr.btf_value_type_id)
        return cls._create_attr(spec, attr, btf_fd, has_ids, attr.max_entries, flags)

    @classmethod
    def _create_attr(
        cls,
        spec: MapSpec,
        attr: _sys.MapCreateAttr,
        btf_fd: FD | None,
        has_ids: bool,
        max_entries: int,
        flags: int,
    ) -> Map:
        """BPF_MAP_CREATE of ``attr``, made by :func:`create_attr` from ``spec`` with map
        flags ``flags`` (its max entries ``max_entries``): with ``btf_fd`` if it has BTF type
        ids (``has_ids``; retried without BTF if the kernel refuses it), without BTF if
        ``btf_fd`` is None. (The caller says what ``attr`` holds: reading it back costs.)"""
        return cls(
            create_fd(spec, attr, btf_fd, has_ids),
            name=spec.name,
            type=spec.type,
            key_size=spec.key_size,
            value_size=spec.value_size,
            max_entries=max_entries,
            flags=flags,
            key_type=spec.held_type("key"),
            value_type=spec.held_type("value"),
        )

    def _prototype(self) -> dict[str, object]:
        """This new map's attributes but its fd and BTF types (as ``__init__`` set them):
        what :meth:`_from_prototype` copies into the next map made the same way."""
        attrs = dict(vars(self))
        for name in ("_fd", "_key_type", "_value_type"):
            del attrs[name]
        return attrs

    @classmethod
    def _from_prototype(
        cls,
        spec: MapSpec,
        attr: _sys.MapCreateAttr,
        btf_fd: FD | None,
        has_ids: bool,
        prototype: dict[str, object],
    ) -> Map:
        """:meth:`_create_attr` with the map's attributes copied from the :meth:`_prototype`
        of a map it made from the same spec, max entries and flags."""
        fd = create_fd(spec, attr, btf_fd, has_ids)
        m = cls.__new__(cls)
        m.__dict__.update(prototype)
        m._fd = fd
        m._key_type = spec.held_type("key")
        m._value_type = spec.held_type("value")
        return m

    # the key and value types, held as type ids until first read (properties: see below)
    key_type: _btf.Type | None
    value_type: _btf.Type | None

    _kind = "map"
    _by_id = Cmd.MAP_GET_FD_BY_ID

    @classmethod
    def _adopt(cls, fd: FD, name: str | None) -> Map:
        return cls._from_info(fd, name, _sys.map_info(fd))

    @classmethod
    def _from_info(cls, fd: FD, name: str | None, info: _sys.MapInfo) -> Map:
        """A map owning ``fd``, as the kernel's ``info`` of it describes it."""
        m = cls(
            fd,
            name=name or info.name.decode("utf-8", "replace"),
            type=info.type,
            key_size=info.key_size,
            value_size=info.value_size,
            max_entries=info.max_entries,
            flags=info.map_flags,
        )
        m._id = int(info.id)
        if info.btf_id and (info.btf_key_type_id or info.btf_value_type_id):
            m._kernel_btf = (info.btf_id, info.btf_key_type_id, info.btf_value_type_id)
        return m

    def _pin_prototype(self) -> dict[str, object]:
        """This map's attributes but those :meth:`_from_pin_prototype` reads from the
        kernel's info or sets per load (its fd, id, kernel BTF ids, pin)."""
        attrs = dict(vars(self))
        for name in ("_fd", "_id", "_kernel_btf", "_pinned"):
            del attrs[name]
        return attrs

    @classmethod
    def _from_pin_prototype(
        cls, fd: FD, info: _sys.MapInfo, path: str, prototype: dict[str, object]
    ) -> Map:
        """The map pinned at ``path`` (``fd``, the kernel's ``info`` of it), with the
        attributes of :meth:`_pin_prototype` of a map opened from a pin whose info had the
        same type, sizes, max entries and flags."""
        m = cls.__new__(cls)
        m.__dict__.update(prototype)
        m._fd = fd
        m._id = int(info.id)
        m._kernel_btf = None
        if info.btf_id and (info.btf_key_type_id or info.btf_value_type_id):
            m._kernel_btf = (info.btf_id, info.btf_key_type_id, info.btf_value_type_id)
        m._pinned = path
        return m

    def clone(self) -> Map:
        """A second owner of the same kernel map (a dup'ed fd)."""
        m = Map(
            self.fd.dup(),
            name=self.name,
            type=self.type,
            key_size=self.key_size,
            value_size=self.value_size,
            max_entries=self.max_entries,
            flags=self.flags,
            key_type=self._key_type,
            value_type=self._value_type,
        )
        m._id = self._id
        return m

    # ------------------------------------------------------------------ basics

    def _what(self) -> str:
        return f"map {self.name}"

    def __repr__(self) -> str:
        t = self.type.name.lower() if isinstance(self.type, MapType) else self.type
        return f"Map({self.name!r}, {t}, fd={self._fd.raw if not self.closed else 'closed'})"

    def info(self) -> MapInfo:
        """What the kernel reports about the map now (one BPF_OBJ_GET_INFO_BY_FD)."""
        i = _sys.map_info(self.fd)
        self._id = int(i.id)
        try:
            t: MapType | int = MapType(i.type)
        except ValueError:
            t = i.type
        return MapInfo(
            id=i.id,
            name=i.name.decode("utf-8", "replace"),
            type=t,
            key_size=i.key_size,
            value_size=i.value_size,
            max_entries=i.max_entries,
            flags=i.map_flags,
            btf_id=i.btf_id,
            map_extra=i.map_extra,
        )

    @property
    def id(self) -> int:
        """The map's kernel id: read once (lazily), then kept; it never changes."""
        if self._id is None:
            self._id = int(_sys.map_info(self.fd).id)
        return self._id

    def check_compatible_with(self, spec: MapSpec) -> None:
        """Raise :class:`MapIncompatibleError` unless this map can stand in for ``spec``."""
        ignore = int(MapFlags.MMAPABLE) if spec.is_data_section else 0
        if spec.type in (MapType.DEVMAP, MapType.DEVMAP_HASH):
            # the kernel adds BPF_F_RDONLY_PROG to every devmap: a lookup gives programs a
            # pointer into the device entry (kernel/bpf/devmap.c, dev_map_init_map)
            ignore |= int(MapFlags.RDONLY_PROG)
        max_entries = self.max_entries
        if (
            spec.type == MapType.PERF_EVENT_ARRAY
            and spec.max_entries == 0
            and max_entries == _sys.possible_cpus()
        ):
            max_entries = 0  # 0 in a spec: one slot per possible CPU, as created
        spec.check_compatible(
            type=self.type,
            key_size=self.key_size,
            value_size=self.value_size,
            max_entries=max_entries,
            flags=self.flags,
            what=f"existing map {self.name}",
            ignore_flags=ignore,
        )

    # ------------------------------------------------------------------ pinning

    @property
    def pinned_path(self) -> str | None:
        """The same as :attr:`pinned`."""
        return self._pinned

    def freeze(self) -> None:
        """Make the map read-only for user space (BPF_MAP_FREEZE)."""
        try:
            _sys.map_freeze(self._fd)
        except SyscallError as err:
            raise type(err)(f"map {self.name}: {err}", err.errno) from err

    # ------------------------------------------------------------------ marshalling

    @property
    def _per_cpu(self) -> bool:
        return isinstance(self.type, MapType) and self.type.per_cpu

    def _resolve_kernel_btf(self) -> None:
        """Fetch key/value types from the BTF the map was created with (once)."""
        ids, self._kernel_btf = self._kernel_btf, None
        if ids is None or self.key_type is not None or self.value_type is not None:
            return
        btf_id, key_id, value_id = ids
        spec = kernel_btf_spec(btf_id)
        if spec is None:
            return
        try:
            if key_id:
                self.key_type = spec.type_by_id(key_id)
            if value_id:
                value = spec.type_by_id(value_id)
                # data sections are typed by a DATASEC; their values stay raw bytes
                self.value_type = None if isinstance(value, _datasec()) else value
        except Error:
            self.key_type = self.value_type = None

    def btf_types(self) -> tuple[_btf.Type | None, _btf.Type | None]:
        """(key type, value type) from BTF: the spec's, or for a map opened by pin, id or
        fd the BTF the kernel holds for it (read once). A data section's value type is its
        DATASEC. None where the map has no BTF type."""
        if self._kernel_btf is not None:
            ids = self._kernel_btf
            self._resolve_kernel_btf()
            if self.value_type is None and ids[2]:
                spec = kernel_btf_spec(ids[0])
                try:
                    value = spec.type_by_id(ids[2]) if spec is not None else None
                except Error:
                    value = None
                if isinstance(value, _datasec()):
                    self._datasec = value
        return self.key_type, self.value_type if self._datasec is None else self._datasec

    def encode_key(self, key: object) -> bytes:
        if self._kernel_btf is not None:
            self._resolve_kernel_btf()
        return self._encode(key, self.key_type, self.key_size, "key")

    def encode_value(self, value: object) -> bytes:
        if self._kernel_btf is not None:
            self._resolve_kernel_btf()
        if self.type in _FD_VALUED and isinstance(getattr(value, "fd", None), FD):
            value = value.fd.raw  # type: ignore[attr-defined]  # a Program or a Map
        if not self._per_cpu:
            return self._encode(value, self.value_type, self.value_size, "value")
        stride = _round8(self.value_size)
        # A single value is written to every CPU.
        values = list(value) if isinstance(value, (list, tuple)) else [value] * self._ncpus
        if len(values) != self._ncpus:
            raise SpecError(
                f"map {self.name}: per-cpu value needs {self._ncpus} entries, got {len(values)}"
            )
        out = bytearray()
        for v in values:
            one = self._encode(v, self.value_type, self.value_size, "value")
            out += one + bytes(stride - len(one))
        return bytes(out)

    def key_names(self) -> dict[int, str] | None:
        """The enumerator names of the key's values when the key is an enum (by its BTF),
        else None."""
        if self._kernel_btf is not None:
            self._resolve_kernel_btf()
        if self.key_type is None:
            return None
        from orchestrator.ebpf import btf as _btf

        return _btf.enumerators(self.key_type)

    def decode_key(self, data: bytes) -> object:
        if self._kernel_btf is not None:
            self._resolve_kernel_btf()
        return self._decode(data, self.key_type)

    def decode_value(self, data: bytes) -> object:
        if self._kernel_btf is not None:
            self._resolve_kernel_btf()
        if not self._per_cpu:
            return self._decode(data, self.value_type)
        stride = _round8(self.value_size)
        return [
            self._decode(data[i * stride : i * stride + self.value_size], self.value_type)
            for i in range(self._ncpus)
        ]

    @property
    def _value_buffer_size(self) -> int:
        if self._per_cpu:
            return _round8(self.value_size) * self._ncpus
        return self.value_size

    def _encode(self, obj: object, t: _btf.Type | None, size: int, what: str) -> bytes:
        if t is not None and not isinstance(obj, (bytes, bytearray)):
            from orchestrator.ebpf.btf import layout as _layout

            try:
                data = _layout.encode(t, obj)
            except Error as err:
                raise SpecError(f"map {self.name}: {what}: {err}") from err
        elif isinstance(obj, (bytes, bytearray)):
            data = bytes(obj)
        elif isinstance(obj, bool) or not isinstance(obj, int):
            if isinstance(obj, ctypes.Structure | ctypes.Array | ctypes._SimpleCData):
                data = bytes(obj)
            else:
                raise SpecError(
                    f"map {self.name}: {what} must be bytes or int, got {type(obj).__name__}"
                )
        else:
            if size not in (1, 2, 4, 8):
                raise SpecError(f"map {self.name}: {what} of {size} bytes cannot be an int")
            try:
                data = obj.to_bytes(size, "little", signed=obj < 0)
            except OverflowError as err:
                raise SpecError(f"map {self.name}: {what} {obj} does not fit {size} bytes") from err
        if len(data) != size:
            raise SpecError(f"map {self.name}: {what} is {len(data)} bytes, map wants {size}")
        return data

    def _decode(self, data: bytes, t: _btf.Type | None) -> object:
        if t is not None:
            from orchestrator.ebpf.btf import layout as _layout

            return _layout.decode(t, data)
        return data

    # ------------------------------------------------------------------ raw elements

    def lookup_bytes(self, key: bytes | None) -> bytes:
        """The raw value at the raw ``key`` (None for maps without keys: peek). Per-CPU
        maps give one 8-byte-aligned slot per possible CPU. KeyNotFoundError if absent."""
        try:
            return _sys.map_lookup_elem(self.fd, key, self._value_buffer_size)
        except KeyNotFoundError as err:
            raise self._err(err, "", "key not found") from None
        except SyscallError as err:
            raise self._err(err, "lookup") from err

    def update_bytes(
        self, key: bytes | None, value: bytes, flags: UpdateFlags | int = UpdateFlags.ANY
    ) -> None:
        """Write a raw value (a full per-CPU buffer for per-CPU maps) at a raw key."""
        try:
            _sys.map_update_elem(self.fd, key, value, int(flags))
        except SyscallError as err:
            if err.errno == errno.E2BIG:
                raise self._err(err, "update", self._full_reason()) from err
            raise self._err(err, "update") from err

    def delete_bytes(self, key: bytes) -> None:
        try:
            _sys.map_delete_elem(self.fd, key)
        except KeyNotFoundError as err:
            raise self._err(err, "", "key not found") from None
        except SyscallError as err:
            if err.errno == errno.EINVAL and self.type in _PLAIN_ARRAYS:
                raise NotSupportedError(
                    f"map {self.name}: array elements cannot be deleted (write a zero value)"
                ) from err
            raise self._err(err, "delete") from err

    def items_bytes(self, chunk: int = 256) -> Iterator[tuple[bytes, bytes]]:
        """Every (raw key, raw value): ``chunk`` at a time through BPF_MAP_LOOKUP_BATCH
        (Linux 5.6) where the kernel has it for this map type, else key by key (keys
        deleted meanwhile are skipped)."""
        vsize = self._value_buffer_size
        token_size = max(self.key_size, 4)
        in_batch: ctypes.Array[ctypes.c_char] | None = None
        keys = ctypes.create_string_buffer(self.key_size * chunk or 1)
        vals = ctypes.create_string_buffer(vsize * chunk or 1)
        while True:
            out_batch = ctypes.create_string_buffer(token_size)
            try:
                n, done = _sys.map_batch(
                    Cmd.MAP_LOOKUP_BATCH,
                    self.fd,
                    in_batch=in_batch,
                    out_batch=out_batch,
                    keys=keys,
                    values=vals,
                    count=chunk,
                )
            except SyscallError as err:
                if in_batch is None and err.errno in (
                    errno.EINVAL,
                    errno.EOPNOTSUPP,
                    errno.ENOSPC,  # a hash bucket larger than the chunk
                    _sys.ENOTSUPP,
                ):
                    yield from self._items_one_by_one()
                    return
                raise self._batch_error(err, "batch lookup") from err
            kraw, vraw = keys.raw, vals.raw
            for i in range(n):
                yield (
                    kraw[i * self.key_size : (i + 1) * self.key_size],
                    vraw[i * vsize : (i + 1) * vsize],
                )
            if done:
                return
            in_batch = out_batch

    def _items_one_by_one(self) -> Iterator[tuple[bytes, bytes]]:
        for k in self._raw_keys():
            try:
                raw = _sys.map_lookup_elem(self.fd, k, self._value_buffer_size)
            except KeyNotFoundError:
                continue
            except SyscallError as err:
                raise self._err(err, "lookup") from err
            yield k, raw

    # ------------------------------------------------------------------ element API

    def _err(self, err: SyscallError, what: str, detail: str | None = None) -> SyscallError:
        """``err`` said of this map: ``what`` names the step ("" leaves it out), ``detail``
        (if given) what went wrong instead of the kernel's error."""
        return err.replace(subject=f"map {self.name}", action=what, detail=detail)

    def lookup(self, key: object, default: object = _MISSING) -> object:
        """The value at ``key``; KeyNotFoundError (a KeyError) or ``default`` if absent."""
        k = self.encode_key(key) if self.key_size else None
        try:
            raw = _sys.map_lookup_elem(self.fd, k, self._value_buffer_size)
        except KeyNotFoundError as err:
            if default is not _MISSING:
                return default
            raise self._err(err, "", f"key {key!r} not found") from None
        except SyscallError as err:
            raise self._err(err, "lookup") from err
        return self.decode_value(raw)

    get = lookup

    def __getitem__(self, key: object) -> object:
        return self.lookup(key)

    def update(
        self, key: object, value: object, flags: UpdateFlags | int = UpdateFlags.ANY
    ) -> None:
        """Set ``key`` to ``value``; ``flags`` NOEXIST/EXIST make it create-only/replace-only."""
        k = self.encode_key(key) if self.key_size else None
        v = self.encode_value(value)
        try:
            _sys.map_update_elem(self.fd, k, v, int(flags))
        except SyscallError as err:
            if err.errno == errno.E2BIG:
                raise self._err(err, f"update {key!r}", self._full_reason()) from err
            raise self._err(err, f"update {key!r}") from err

    def _full_reason(self) -> str:
        if self.type in _KEYLESS:
            return f"full ({self.max_entries} entries; push with UpdateFlags.EXIST to overwrite)"
        if self.type in _ARRAYS:
            return f"index out of range (the array has {self.max_entries} entries)"
        return f"full ({self.max_entries} entries)"

    def __setitem__(self, key: object, value: object) -> None:
        self.update(key, value)

    def delete(self, key: object) -> None:
        try:
            _sys.map_delete_elem(self.fd, self.encode_key(key))
        except KeyNotFoundError as err:
            raise self._err(err, "", f"key {key!r} not found") from None
        except SyscallError as err:
            if err.errno == errno.EINVAL and self.type in _PLAIN_ARRAYS:
                raise NotSupportedError(
                    f"map {self.name}: array elements cannot be deleted (write a zero value)"
                ) from err
            raise self._err(err, f"delete {key!r}") from err

    def __delitem__(self, key: object) -> None:
        self.delete(key)

    def __contains__(self, key: object) -> bool:
        """``key in m``; for a bloom filter ``value in m`` (true may be a false positive)."""
        if self.type == MapType.BLOOM_FILTER:
            return bool(self.peek(key))
        return self.lookup(key, None) is not None

    def peek(self, value: object = _MISSING) -> object:
        """The head of a queue/stack without removing it (KeyNotFoundError when empty); for
        a bloom filter, ``peek(value)`` is whether it may contain ``value``."""
        if self.type == MapType.BLOOM_FILTER:
            if value is _MISSING:
                raise SpecError(f"map {self.name}: a bloom filter peek needs a value")
            v = self.encode_value(value)
            try:
                _sys.map_lookup_elem(self.fd, None, self._value_buffer_size, value_in=v)
            except KeyNotFoundError:
                return False
            except SyscallError as err:
                raise self._err(err, "peek") from err
            return True
        try:
            raw = _sys.map_lookup_elem(self.fd, None, self._value_buffer_size)
        except KeyNotFoundError as err:
            raise self._err(err, "", "empty") from None
        except SyscallError as err:
            raise self._err(err, "peek") from err
        return self.decode_value(raw)

    def push(self, value: object, flags: UpdateFlags | int = UpdateFlags.ANY) -> None:
        """Push onto a queue/stack, or add to a bloom filter."""
        if self.key_size:
            self.update(0, value, flags)
            return
        v = self.encode_value(value)
        try:
            _sys.map_update_elem(self.fd, None, v, int(flags))
        except SyscallError as err:
            if err.errno == errno.E2BIG:
                raise self._err(err, "push", self._full_reason()) from err
            raise self._err(err, "push") from err

    def pop(self) -> object:
        """Pop from a queue/stack (BPF_MAP_LOOKUP_AND_DELETE_ELEM)."""
        try:
            raw = _sys.map_lookup_and_delete_elem(self.fd, None, self._value_buffer_size)
        except KeyNotFoundError as err:
            raise self._err(err, "", "empty") from None
        except SyscallError as err:
            raise self._err(err, "pop") from err
        return self.decode_value(raw)

    def _raw_keys(self) -> Iterator[bytes]:
        """Every key once, tolerating concurrent deletes.

        When the previous key was deleted, GET_NEXT_KEY on a hash map restarts from the
        first key: skip keys already seen, and stop after ``max_entries`` restarts.
        """
        if self.type in _KEYLESS or not self.key_size:
            raise NotSupportedError(
                f"map {self.name}: {_sys.map_type_label(self.type)} maps have no keys to iterate"
                " (use pop/peek)"
            )
        seen: set[bytes] = set()
        prev: bytes | None = None
        budget = max(self.max_entries, 1) * 2 + 16
        while budget > 0:
            budget -= 1
            try:
                nxt = _sys.map_get_next_key(self.fd, prev, self.key_size)
            except SyscallError as err:
                if err.errno in (errno.EOPNOTSUPP, _sys.ENOTSUPP):
                    raise NotSupportedError(
                        f"map {self.name}: {_sys.map_type_label(self.type)} maps cannot be iterated"
                        " (look up known keys instead)"
                    ) from err
                raise self._err(err, "iterate") from err
            if nxt is None:
                return
            prev = nxt
            if nxt in seen:
                continue
            seen.add(nxt)
            yield nxt

    def keys(self) -> Iterator[object]:
        for k in self._raw_keys():
            yield self.decode_key(k)

    __iter__ = keys

    def items(self) -> Iterator[tuple[object, object]]:
        """(key, value) pairs; keys deleted while iterating are skipped."""
        for k in self._raw_keys():
            try:
                raw = _sys.map_lookup_elem(self.fd, k, self._value_buffer_size)
            except KeyNotFoundError:
                continue
            except SyscallError as err:
                raise self._err(err, "lookup") from err
            yield self.decode_key(k), self.decode_value(raw)

    def values(self) -> Iterator[object]:
        for _, v in self.items():
            yield v

    def count_entries(self) -> int:
        """The number of keys, counted by walking them: one BPF_MAP_GET_NEXT_KEY per entry
        (an array counts all its indexes). NotSupportedError for maps without keys (ring
        buffers, queues, stacks, bloom filters) or that cannot be iterated.

        A map has no ``len()`` on purpose: a length makes an empty map false, and ``m or
        other`` would then silently pick ``other``. A map is always true; compare it with
        ``is None``."""
        return sum(1 for _ in self._raw_keys())

    def clear(self) -> None:
        for k in list(self._raw_keys()):
            try:
                _sys.map_delete_elem(self.fd, k)
            except KeyNotFoundError:
                pass
            except SyscallError as err:
                raise self._err(err, "delete") from err

    # ------------------------------------------------------------------ batches

    def batch_lookup(
        self, *, delete: bool = False, chunk: int = 256
    ) -> list[tuple[object, object]]:
        """All elements through BPF_MAP_LOOKUP_BATCH (and delete them with ``delete``)."""
        cmd = Cmd.MAP_LOOKUP_AND_DELETE_BATCH if delete else Cmd.MAP_LOOKUP_BATCH
        vsize = self._value_buffer_size
        out: list[tuple[object, object]] = []
        token_size = max(self.key_size, 4)
        in_batch: ctypes.Array[ctypes.c_char] | None = None
        while True:
            keys = ctypes.create_string_buffer(self.key_size * chunk)
            vals = ctypes.create_string_buffer(vsize * chunk)
            out_batch = ctypes.create_string_buffer(token_size)
            try:
                n, done = _sys.map_batch(
                    cmd,
                    self.fd,
                    in_batch=in_batch,
                    out_batch=out_batch,
                    keys=keys,
                    values=vals,
                    count=chunk,
                )
            except SyscallError as err:
                raise self._batch_error(err, "batch lookup") from err
            kraw, vraw = keys.raw, vals.raw
            for i in range(n):
                k = kraw[i * self.key_size : (i + 1) * self.key_size]
                v = vraw[i * vsize : (i + 1) * vsize]
                out.append((self.decode_key(k), self.decode_value(v)))
            if done:
                return out
            in_batch = out_batch

    def batch_update(
        self, items: Iterable[tuple[object, object]], flags: UpdateFlags | int = UpdateFlags.ANY
    ) -> int:
        pairs = list(items)
        kdata = b"".join(self.encode_key(k) for k, _ in pairs)
        vdata = b"".join(self.encode_value(v) for _, v in pairs)
        return self.batch_update_bytes(kdata, vdata, len(pairs), flags)

    def batch_delete(self, keys: Iterable[object]) -> int:
        ks = list(keys)
        return self.batch_delete_bytes(b"".join(self.encode_key(k) for k in ks), len(ks))

    def batch_update_bytes(
        self, keys: bytes, values: bytes, count: int, flags: UpdateFlags | int = UpdateFlags.ANY
    ) -> int:
        """BPF_MAP_UPDATE_BATCH of ``count`` raw keys and values, laid end to end (a full
        per-CPU buffer per value for per-CPU maps). NotSupportedError where the kernel has
        no batch update for the map's type."""
        if count == 0:
            return 0
        ksize, vsize = count * self.key_size, count * self._value_buffer_size
        if len(keys) != ksize or len(values) != vsize:
            raise ValueError(
                f"map {self.name}: batch update of {count} pairs: got {len(keys)} key bytes and "
                f"{len(values)} value bytes, want {ksize} ({count}x{self.key_size}) and {vsize} "
                f"({count}x{self._value_buffer_size})"
            )
        kbuf = ctypes.create_string_buffer(keys, len(keys))
        vbuf = ctypes.create_string_buffer(values, len(values))
        try:
            n, _ = _sys.map_batch(
                Cmd.MAP_UPDATE_BATCH,
                self.fd,
                in_batch=None,
                out_batch=None,
                keys=kbuf,
                values=vbuf,
                count=count,
                elem_flags=int(flags),
            )
        except SyscallError as err:
            raise self._batch_error(err, "batch update") from err
        return n

    def batch_delete_bytes(self, keys: bytes, count: int) -> int:
        """BPF_MAP_DELETE_BATCH of ``count`` raw keys laid end to end. NotSupportedError
        where the kernel has no batch delete for the map's type."""
        if count == 0:
            return 0
        if len(keys) != count * self.key_size:
            raise ValueError(
                f"map {self.name}: batch delete of {count} keys: got {len(keys)} bytes, want "
                f"{count * self.key_size} ({count}x{self.key_size})"
            )
        kbuf = ctypes.create_string_buffer(keys, len(keys))
        try:
            n, _ = _sys.map_batch(
                Cmd.MAP_DELETE_BATCH,
                self.fd,
                in_batch=None,
                out_batch=None,
                keys=kbuf,
                values=None,
                count=count,
            )
        except SyscallError as err:
            raise self._batch_error(err, "batch delete") from err
        return n

    def _batch_error(self, err: SyscallError, what: str) -> Error:
        if err.errno in (errno.EINVAL, errno.EOPNOTSUPP, _sys.ENOTSUPP):
            t = self.type.name.lower() if isinstance(self.type, MapType) else self.type
            return NotSupportedError(f"map {self.name}: {what}: not supported for {t} maps")
        return self._err(err, what)

    # ------------------------------------------------------------------ contents

    def _populate_planned(self, writes: tuple[bytes, ...]) -> None:
        """:meth:`populate` with raw entries as a load plan holds them: BPF_MAP_UPDATE_ELEM
        attributes whose key and value buffers the plan keeps alive (this map's fd set
        here)."""
        fd = self._fd.raw
        for attr in writes:
            try:
                _sys.map_update_attr(fd, attr)
            except SyscallError as err:
                raise self._err(err, "write initial contents") from err

    def populate(self, entries: Iterable[tuple[object, object]]) -> None:
        """Write initial contents (raw or typed) with plain updates."""
        for key, value in entries:
            if isinstance(key, bytes) and isinstance(value, (bytes, bytearray)):
                try:
                    _sys.map_update_elem(self.fd, key, bytes(value), 0)
                except SyscallError as err:
                    raise self._err(err, "write initial contents") from err
            else:
                self.update(key, value)


def _typed(name: str) -> property:
    """The BTF type held in the attribute ``name``, as
    :func:`orchestrator.ebpf.btf.types.lazy_type` keeps one (a type id decoded on first
    read), without importing the BTF code for a map that holds none."""

    def get(m: Map) -> _btf.Type | None:
        held: _btf.Type | _Lazy | None = getattr(m, name)
        if held is None:
            return None
        from orchestrator.ebpf.btf.types import _Lazy

        if isinstance(held, _Lazy):  # not decoded yet: decode it now
            held = held.get()
            setattr(m, name, held)
        return held

    return property(get, lambda m, value: setattr(m, name, value))


setattr(Map, "key_type", _typed("_key_type"))  # noqa: B010
setattr(Map, "value_type", _typed("_value_type"))  # noqa: B010


def _datasec() -> type[_btf.Datasec]:
    from orchestrator.ebpf import btf as _btf

    return _btf.Datasec


# BTF objects read back from the kernel by id, bounded by bytes (8x the blob: the parsed
# index and lazily decoded types). A miss is remembered too (as None, at a small cost).
_KERNEL_BTF_MAX_BYTES = 64 << 20
_kernel_btf: LRU[int, tuple[_btf.Spec | None]] = LRU(_KERNEL_BTF_MAX_BYTES, 1024)


def kernel_btf_spec(btf_id: int) -> _btf.Spec | None:
    """The BTF object ``btf_id`` as the kernel holds it (immutable, so cached by id)."""
    hit = _kernel_btf.get(btf_id)
    if hit is not None:
        return hit[0]
    from orchestrator.ebpf import btf as _btf

    spec: _btf.Spec | None = None
    size = 0
    try:
        with _sys.fd_by_id(Cmd.BTF_GET_FD_BY_ID, btf_id) as fd:
            _info, data, _name = _sys.btf_info(fd)
        size = len(data)
        spec = _btf.Spec.parse(data)
    except Error:
        spec = None
    _kernel_btf.put(btf_id, (spec,), 256 + 8 * size)
    return spec


def _round8(n: int) -> int:
    return (n + 7) & ~7


def create_fd(spec: MapSpec, attr: _sys.MapCreateAttr, btf_fd: FD | None, has_ids: bool) -> FD:
    """BPF_MAP_CREATE of ``attr`` (see :meth:`Map._create_attr`)."""
    use_btf = btf_fd is not None and has_ids
    if use_btf:
        assert btf_fd is not None
        attr.btf_fd = btf_fd.raw
    else:
        attr.btf_key_type_id = attr.btf_value_type_id = 0
    try:
        return _sys.map_create(attr)
    except SyscallError as err:
        if not use_btf:
            raise _create_error(spec, err) from err
    # Some kernels refuse BTF for some map types; the map works without it.
    attr.btf_fd = attr.btf_key_type_id = attr.btf_value_type_id = 0
    try:
        return _sys.map_create(attr)
    except SyscallError as err2:
        raise _create_error(spec, err2) from err2


def _create_error(spec: MapSpec, err: SyscallError) -> SyscallError:
    hint = ""
    if err.errno == errno.EINVAL:
        hint = "check the map type, sizes, flags and max_entries"
    elif err.errno == errno.EPERM:
        hint = "needs CAP_BPF"
    return err.replace(subject=f"map {spec.name}", action="create", hint=hint)
