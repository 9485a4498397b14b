"""Parsed object files, cached by identity so that re-validating many manifests that share
an object (or an unchanged one, in the watch loop) does not parse it again.

The cache key is (path, size, mtime_ns, inode, device) read from the open file, so a
rebuilt object or an atomic rename onto the path is noticed. Parsing is pure (no kernel).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from orchestrator.ebpf import CollectionSpec
from orchestrator.ebpf import Error as EbpfError
from orchestrator.ebpf.elf import load_bytes

_MAX_ENTRIES = 512


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """A parsed object file: its spec (shared, never mutate it) and its sha256."""

    path: Path
    sha256: str
    spec: CollectionSpec


class ObjectError(Exception):
    """An object file could not be read or parsed. The message is the loader's."""


_Key = tuple[str, int, int, int, int]
_cache: OrderedDict[_Key, ObjectInfo | ObjectError] = OrderedDict()
_lock = threading.Lock()
_stats = {"parsed": 0, "hits": 0}


def object_info(path: Path) -> ObjectInfo:
    """The parsed object at ``path``, from the cache when the file is unchanged.

    Raises :class:`ObjectError` (a missing file, not an eBPF object …); failures are cached
    too, until the file changes.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            st = os.fstat(f.fileno())
            key: _Key = (name, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
            with _lock:
                hit = _cache.get(key)
                if hit is not None:
                    _cache.move_to_end(key)
                    _stats["hits"] += 1
            if hit is None:
                data = f.read()
    except OSError as err:
        raise ObjectError(f"{name}: {(err.strerror or str(err)).lower()}") from err
    if hit is None:
        hit = _parse(path, data)
        with _lock:
            _stats["parsed"] += 1
            _cache[key] = hit
            while len(_cache) > _MAX_ENTRIES:
                _cache.popitem(last=False)
    if isinstance(hit, ObjectError):
        raise hit
    return hit


def _parse(path: Path, data: bytes) -> ObjectInfo | ObjectError:
    digest = hashlib.sha256(data).hexdigest()
    try:
        spec = load_bytes(data, name=path.name, path=os.fspath(path))
    except EbpfError as err:
        out = ObjectError(str(err))
        out.__cause__ = err
        return out
    return ObjectInfo(path, digest, spec)


def object_spec(path: Path) -> CollectionSpec:
    """The parsed :class:`~orchestrator.ebpf.CollectionSpec` of an object file (cached).

    The same instance is returned while the file is unchanged: callers must not mutate it;
    ``spec.copy()`` before ``rewrite_constants``/``rewrite_maps`` or loading with changes.
    Raises :class:`ObjectError`.
    """
    return object_info(path).spec


def clear_cache() -> None:
    with _lock:
        _cache.clear()


def cache_stats() -> dict[str, int]:
    """How many objects were parsed and how many lookups hit the cache (for tests)."""
    with _lock:
        return dict(_stats)
