"""The checked desired state persisted across commands: what a load of unchanged manifests
and objects gave, the next command reads back instead of building and checking it again
(``bpforch plan`` then ``bpforch apply`` of the same files, or ``plan`` run twice).

One entry per set of manifest files a load reads, kept in the
:class:`~orchestrator.ebpf.diskcache.DiskCache` the command keeps parsed objects in, so with
its rules (a 0700 directory of the user's own, only files it wrote, a versioned header with
the payload's sha256, bounded in size, ``--no-cache`` turns it off). The entry's key is a
sha256 over :data:`FORMAT`, the identity of the code that builds and checks a collection
(:func:`orchestrator.manifest.saved.identity`: this package and PyYAML;
:func:`orchestrator.ebpf.diskcache.code_identity`: the loader whose specs the collections
are checked against) and the path and sha256 of every manifest file's bytes, in order. The
entry holds:

- the sha256 of every object file the collections name, as they were checked against:
  each file is hashed again (through the command's object store, which knows it without
  reading while the file is unchanged; never parsed, so a hit imports no ELF or BTF code)
  and any difference, or an object that can't be read, is a miss;
- the mount points the build consulted (bpffs mounts for ``from: {pinned}``, the cgroup v2
  mount for a cgroup attachment): read again, and any difference is a miss;
- the collections as built (every field, digest included).

Only a load that found no problem and no warning is kept, and only when every value of it
is one this codec carries (a ``!hex`` map entry is not: that load is built every time). A
hit gives the collections as the full load would, field for field; what depends on the
kernel (pins, links, ids) is never kept here: observe reads it every time. The payload is
JSON (no pickle), checked as it is decoded: an entry that does not decode is ignored with
one warning and replaced.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, cast

from orchestrator.manifest import model

if TYPE_CHECKING:
    from orchestrator.ebpf.diskcache import DiskCache
    from orchestrator.manifest.cache import ObjectStore

__all__ = ["FORMAT", "KIND", "CheckedState", "mount_facts"]

KIND = "checked"  # the entries' kind in the disk cache
FORMAT = 1  # of the payload

# every type the codec carries: the model's values, by name
_CLASSES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        model.Source,
        model.MapFrom,
        model.MapEntry,
        model.MapOptions,
        model.XdpTarget,
        model.TcTarget,
        model.CgroupTarget,
        model.TracepointTarget,
        model.RawTracepointTarget,
        model.UprobeTarget,
        model.NetnsTarget,
        model.Attachment,
        model.MetricSpec,
        model.DesiredCollection,
    )
}
_ENUMS: dict[str, type[enum.Enum]] = {
    cls.__name__: cls
    for cls in (
        model.OnIncompatible,
        model.EntriesMode,
        model.XdpMode,
        model.Direction,
        model.MetricType,
    )
}


# each model class's fields, in the order its __init__ takes them
_FIELDS: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls)) for cls in _CLASSES.values()
}


class _Unencodable(Exception):
    """A value the codec does not carry."""


def _encode(value: object) -> object:
    """``value`` as JSON values: scalars as they are, everything else a one-key object
    naming its type (``c`` a model class, its fields in order; ``e`` an enum; ``p`` a
    path; ``t`` a tuple; ``l`` a list; ``x`` a read-only mapping; ``d`` a dict)."""
    t = type(value)
    if t is str or t is int or t is bool or value is None:
        return value
    if t is float:
        if value != value or value in (float("inf"), float("-inf")):
            raise _Unencodable("a float JSON does not carry")
        return value
    names = _FIELDS.get(t)
    if names is not None:
        return {"c": [t.__name__, *(_encode(getattr(value, n)) for n in names)]}
    if isinstance(value, enum.Enum) and _ENUMS.get(t.__name__) is t:
        return {"e": [t.__name__, _encode(value.value)]}
    if isinstance(value, Path):
        return {"p": str(value)}
    if t is tuple:
        return {"t": [_encode(v) for v in cast(tuple[object, ...], value)]}
    if t is list:
        return {"l": [_encode(v) for v in cast(list[object], value)]}
    if t is MappingProxyType or t is dict:
        items = cast(Mapping[object, object], value).items()
        if not all(type(k) is str for k, _ in items):
            raise _Unencodable("a mapping with keys other than strings")
        return {"x" if t is MappingProxyType else "d": {k: _encode(v) for k, v in items}}
    raise _Unencodable(f"a {t.__name__}")


# what JSON gives back as it is
_SCALARS = frozenset((str, int, bool, float, type(None)))
# each enum member by its class's name and its value
_MEMBERS: dict[tuple[str, object], enum.Enum] = {
    (cls.__name__, m.value): m for cls in _ENUMS.values() for m in cls
}


class _Decoder:
    """Decodes what :func:`_encode` wrote, checking every tag and shape as it goes. Equal
    paths are decoded into one :class:`~pathlib.Path` (immutable: sharing it is safe, and
    a file's path recurs in every value declared in it)."""

    def __init__(self) -> None:
        self.paths: dict[str, Path] = {}
        self.tags: dict[str, Callable[[object], object]] = {
            "c": self.model_value,
            "e": self.enum_value,
            "p": self.path,
            "t": lambda body: tuple(self.items(body)),
            "l": self.items,
            "x": lambda body: MappingProxyType(self.mapping(body)),
            "d": self.mapping,
        }

    def value(self, raw: object) -> object:
        if type(raw) in _SCALARS:
            return raw
        if not isinstance(raw, dict) or len(raw) != 1:
            raise ValueError(f"not a value: {type(raw).__name__}")
        ((tag, body),) = raw.items()
        decode = self.tags.get(tag)
        if decode is None:
            raise ValueError(f"unknown tag {tag!r}")
        return decode(body)

    def items(self, body: object) -> list[object]:
        if not isinstance(body, list):
            raise ValueError(f"expected a list, got {type(body).__name__}")
        return [v if type(v) in _SCALARS else self.value(v) for v in body]

    def model_value(self, body: object) -> object:
        if not isinstance(body, list) or not body or type(body[0]) is not str:
            raise ValueError("not a model value")
        cls = _CLASSES.get(body[0])
        if cls is None or len(body) != len(_FIELDS[cls]) + 1:
            raise ValueError(f"not a model value: {body[0]!r}")
        return cls(*[v if type(v) in _SCALARS else self.value(v) for v in body[1:]])

    def enum_value(self, body: object) -> enum.Enum:
        if not isinstance(body, list) or len(body) != 2 or type(body[1]) not in _SCALARS:
            raise ValueError("not an enum value")
        member = _MEMBERS.get((body[0], body[1]))
        if member is None:
            raise ValueError(f"not an enum value: {body[0]!r}")
        return member

    def path(self, body: object) -> Path:
        if type(body) is not str:
            raise ValueError("a path is not a string")
        got = self.paths.get(body)
        if got is None:
            got = self.paths[body] = Path(body)
        return got

    def mapping(self, body: object) -> dict[str, object]:
        if not isinstance(body, dict):
            raise ValueError("a mapping is not an object")
        return {k: v if type(v) in _SCALARS else self.value(v) for k, v in body.items()}


def _list(value: object) -> list[object]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list, got {type(value).__name__}")
    return value


def _mounts_used(collections: Sequence[model.DesiredCollection]) -> list[str]:
    """The mount lookups building ``collections`` may have made: ``bpffs`` for a map
    substituted from a pin, ``cgroup2`` for a cgroup attachment (a relative path is
    resolved under the mount)."""
    used = set()
    for c in collections:
        if any(m.source_from is not None and m.source_from.pinned for m in c.maps.values()):
            used.add("bpffs")
        if any(isinstance(a.target, model.CgroupTarget) for a in c.attach):
            used.add("cgroup2")
    return sorted(used)


_LOOKUPS = frozenset(("bpffs", "cgroup2"))


def mount_facts(which: Sequence[str]) -> dict[str, str]:
    """What the mount lookups ``which`` (see :func:`_mounts_used`) answer now, as the
    builder asks them."""
    from orchestrator.ebpf.errors import MountNotFoundError
    from orchestrator.ebpf.mounts import bpffs_mounts, cgroup2_root

    out: dict[str, str] = {}
    for name in which:
        if name == "bpffs":
            out[name] = "\0".join(map(str, bpffs_mounts()))
        elif name == "cgroup2":
            try:
                out[name] = str(cgroup2_root())
            except MountNotFoundError as err:
                out[name] = f"missing: {err}"
        else:
            raise ValueError(f"unknown mount lookup {name!r}")
    return out


class CheckedState:
    """The persisted checked state of one load (see the module): ``files`` are the path and
    sha256 of the bytes of every manifest file the load reads, in order."""

    def __init__(self, disk: DiskCache, files: Sequence[tuple[Path, bytes]]) -> None:
        from orchestrator.ebpf.diskcache import code_identity
        from orchestrator.manifest.saved import identity

        self.disk = disk
        self.files = [path for path, _ in files]
        h = hashlib.sha256(f"{FORMAT}\0{identity()}\0{code_identity()}".encode())
        for path, digest in files:
            h.update(f"\0{path}\0".encode() + digest)
        self.key = h.hexdigest()

    def get(self, objects: ObjectStore) -> list[model.DesiredCollection] | None:
        """The collections saved for these files, if every object file still has the
        sha256 and every mount lookup the answer they were checked with; else None (build
        and check them)."""
        payload = self.disk.get(KIND, self.key)
        if payload is None:
            return None
        try:
            raw = json.loads(payload)
            if type(raw) is not dict or raw.get("format") != FORMAT:
                raise ValueError(f"format {raw.get('format') if type(raw) is dict else raw!r}")
            entry = cast(dict[str, object], raw)
            mounts = entry["mounts"]
            wanted = entry["objects"]
            if type(mounts) is not dict or type(wanted) is not dict:
                raise ValueError("mounts or objects are not an object")
            facts = cast(dict[str, object], mounts)
            if not facts.keys() <= _LOOKUPS:
                raise ValueError(f"unknown mount lookups {sorted(facts.keys() - _LOOKUPS)}")
            decoder = _Decoder()
            decoder.paths.update((str(f), f) for f in self.files)  # the sources' files
            collections = [decoder.value(c) for c in _list(entry["collections"])]
            if not all(type(c) is model.DesiredCollection for c in collections):
                raise ValueError("not a collection")
        except (ValueError, TypeError, KeyError, RecursionError) as err:
            self.disk.reject(KIND, self.key, f"checked manifests do not decode ({err})")
            return None
        if mount_facts(sorted(facts)) != facts:
            return None
        from orchestrator.manifest.objects import ObjectError

        for path, sha256 in cast(dict[str, object], wanted).items():
            try:
                if objects.object_sha256(Path(path)) != sha256:
                    return None
            except ObjectError:
                return None
        return cast(list[model.DesiredCollection], collections)

    def save(
        self, collections: Sequence[model.DesiredCollection], objects: Mapping[Path, str]
    ) -> None:
        """Keep ``collections``, checked against ``objects`` (path -> sha256), unless a value
        is one the codec does not carry."""
        try:
            encoded = [_encode(c) for c in collections]
        except _Unencodable:
            return
        entry = {
            "format": FORMAT,
            "mounts": mount_facts(_mounts_used(collections)),
            "objects": {str(p): s for p, s in sorted(objects.items())},
            "collections": encoded,
        }
        payload = json.dumps(entry, separators=(",", ":"))  # ASCII: a lone surrogate is escaped
        self.disk.put(KIND, self.key, payload.encode())
