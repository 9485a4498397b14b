"""Parsed object files, cached so that re-validating many manifests that share an object
(or an unchanged one, in the watch loop) does not parse it again.

An entry is keyed by path and remembers (size, mtime_ns, ctime_ns, inode, device) of the
file it was parsed from, read from the open file. A file whose identity changed is read
again and hashed; it is parsed again only if its sha256 changed. Timestamps are as coarse as
the kernel's clock tick, so a file rewritten within the same tick with the same size would
look unchanged: like git's "racy clean" entries, a file modified less than
:data:`RACY_NS` before it was cached is always re-hashed. Parsing is pure (no kernel).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from orchestrator.ebpf import CollectionSpec
from orchestrator.ebpf import Error as EbpfError
from orchestrator.ebpf.elf import load_bytes

MAX_ENTRIES = 512
RACY_NS = 2_000_000_000


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """A parsed object file: its spec (shared: never mutate it) and its sha256."""

    path: Path
    sha256: str
    spec: CollectionSpec


class ObjectError(Exception):
    """An object file could not be read or parsed. The message is the loader's."""


_Stat = tuple[int, int, int, int, int]


@dataclass(slots=True)
class _Entry:
    stat: _Stat
    cached_ns: int
    sha256: str
    result: ObjectInfo | ObjectError

    def fresh(self, stat: _Stat) -> bool:
        return stat == self.stat and stat[1] + RACY_NS < self.cached_ns


_cache: OrderedDict[str, _Entry] = OrderedDict()
_lock = threading.Lock()
_stats = {"parsed": 0, "hashed": 0, "hits": 0}


def object_info(path: Path) -> ObjectInfo:
    """The parsed object at ``path`` (absolute), from the cache when the file is unchanged.

    Raises :class:`ObjectError` (missing file, not an eBPF object …). Parse failures are
    cached too, until the file changes.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            st = os.fstat(f.fileno())
            stat: _Stat = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
            with _lock:
                entry = _cache.get(name)
                if entry is not None and entry.fresh(stat):
                    _cache.move_to_end(name)
                    _stats["hits"] += 1
                    return _result(entry)
            now = time.time_ns()
            data = f.read()
    except OSError as err:
        raise ObjectError(f"{name}: {(err.strerror or str(err)).lower()}") from err
    digest = hashlib.sha256(data).hexdigest()
    with _lock:
        _stats["hashed"] += 1
        entry = _cache.get(name)
    if entry is not None and entry.sha256 == digest:
        result = entry.result  # same bytes: keep the parsed spec
    else:
        result = _parse(path, digest, data)
        with _lock:
            _stats["parsed"] += 1
    with _lock:
        _cache[name] = entry = _Entry(stat, now, digest, result)
        _cache.move_to_end(name)
        while len(_cache) > MAX_ENTRIES:
            _cache.popitem(last=False)
    return _result(entry)


def _result(entry: _Entry) -> ObjectInfo:
    if isinstance(entry.result, ObjectError):
        # a fresh exception each time: re-raising one instance would grow its traceback
        raise ObjectError(str(entry.result)) from entry.result.__cause__
    return entry.result


def _parse(path: Path, digest: str, data: bytes) -> ObjectInfo | ObjectError:
    try:
        spec = load_bytes(data, name=path.name, path=os.fspath(path))
    except EbpfError as err:
        out = ObjectError(str(err))
        out.__cause__ = err
        return out
    return ObjectInfo(path, digest, spec)


def object_spec(path: Path) -> CollectionSpec:
    """The parsed :class:`~orchestrator.ebpf.CollectionSpec` of an object file (cached).

    The same instance is returned while the file is unchanged, so callers must not mutate
    it: ``spec.copy()`` before ``rewrite_constants``/``rewrite_maps`` (loading itself never
    mutates a spec). Raises :class:`ObjectError`.
    """
    return object_info(path).spec


def clear_cache() -> None:
    with _lock:
        _cache.clear()


def cache_stats() -> dict[str, int]:
    """Counters: objects ``parsed``, files ``hashed``, lookups that were cache ``hits``."""
    with _lock:
        return dict(_stats)
