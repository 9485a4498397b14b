"""Parsed object files by path, so that reading an unchanged object again costs a copy.

:meth:`CollectionSpec.from_file` goes through :data:`default`. An entry remembers the
file's identity as ``stat`` saw it *before* the file was read (device, inode, size,
``mtime_ns``, ``ctime_ns``): a rewrite, a rename over it or a different symlink target changes
that identity, and the file is read again. Reading it again hashes it first and parses only
if the bytes differ.

Timestamps only move with the kernel's clock tick, so a file rewritten with the same size in
the same tick as a previous write can keep its identity. Like git's "racily clean" index
entries, an entry whose file changed less than :data:`RACY_NS` before its identity was taken
is verified (read and hashed) on every hit, until a hit happens late enough to trust it.

Every hit returns :meth:`CollectionSpec.copy` of the cached spec, which shares only what
nothing mutates (instructions, BTF records, the BTF spec): changing or loading the spec you
get never changes the cache. Parse errors are not cached. Parsing needs no kernel.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from orchestrator.ebpf.errors import ParseError
from orchestrator.ebpf.spec import CollectionSpec

MAX_ENTRIES = 512
RACY_NS = 2_000_000_000

_stat = os.stat  # tests replace it to fake a file's identity

_Identity = tuple[int, int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters since the cache was made (or cleared)."""

    hits: int  # served from the cache without reading the file
    verified: int  # racy entries read and hashed, found unchanged
    parsed: int  # files parsed
    entries: int


@dataclass(slots=True)
class _Entry:
    identity: _Identity
    trusted_from_ns: int  # identity taken at this time; racy while the file is newer
    sha256: str  # of the file's bytes (hex)
    spec: CollectionSpec


class SpecCache:
    """A bounded (LRU) cache of parsed specs by absolute path. Thread-safe."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = self._verified = self._parsed = 0

    def get(self, path: str | os.PathLike[str]) -> CollectionSpec:
        """A spec of the object at ``path`` that the caller owns (parsed or copied)."""
        given = os.fspath(path)
        return _owned(self._lookup(given).spec, given)

    def shared(self, path: str | os.PathLike[str]) -> tuple[CollectionSpec, str]:
        """The cached spec itself (never mutate it: ``copy()`` first) and the sha256 of the
        file's bytes. The same instance comes back while the file is unchanged."""
        entry = self._lookup(os.fspath(path))
        return entry.spec, entry.sha256

    def _lookup(self, given: str) -> _Entry:
        key = given if given.startswith("/") else os.path.abspath(given)
        now = time.time_ns()  # before stat: the identity is at least this old
        try:
            st = _stat(key)
        except OSError as err:
            raise ParseError(f"{given}: {_reason(err)}") from err
        identity: _Identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        changed_ns = max(st.st_mtime_ns, st.st_ctime_ns)
        with self._lock:
            entry = self._entries.get(key)
            if (
                entry is not None
                and entry.identity == identity
                and changed_ns + RACY_NS < entry.trusted_from_ns
            ):
                self._entries.move_to_end(key)
                self._hits += 1
                return entry
        try:
            with open(key, "rb") as f:
                data = f.read()
        except OSError as err:
            raise ParseError(f"{given}: {_reason(err)}") from err
        digest = hashlib.sha256(data).hexdigest()
        if entry is not None and entry.sha256 == digest:
            spec = entry.spec
            with self._lock:
                self._verified += 1
        else:
            from orchestrator.ebpf.elf import load_bytes

            spec = load_bytes(data, name=os.path.basename(given), path=given)
            with self._lock:
                self._parsed += 1
        fresh = _Entry(identity, now, digest, spec)
        with self._lock:
            self._entries[key] = fresh
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return fresh

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._hits = self._verified = self._parsed = 0

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._verified, self._parsed, len(self._entries))


def _owned(spec: CollectionSpec, given: str) -> CollectionSpec:
    out = spec.copy()
    out.path = given
    out.name = os.path.basename(given)
    return out


def _reason(err: OSError) -> str:
    return err.strerror.lower() if err.strerror else str(err)


default = SpecCache()


__all__ = ["MAX_ENTRIES", "RACY_NS", "CacheStats", "SpecCache", "default"]
