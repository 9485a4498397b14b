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

Every hit returns a spec equal to :meth:`CollectionSpec.copy` of the cached spec, which
shares only what nothing mutates (instructions, BTF records, the BTF spec), copied on write:
it reads the cached spec's maps, programs, variables and externs until its first access to
any of them (a read too) copies all four, and loading it only reads them. Changing or
loading the spec you get never changes the cache, and the cached spec itself is never
changed. Parse errors are not cached. Parsing needs no kernel.

The cache is bounded by bytes (:data:`MAX_BYTES`, least recently used first out), each
entry costed by :func:`footprint`, an estimate of the memory a parsed spec holds; and by
:data:`MAX_ENTRIES`. Files are read through :mod:`orchestrator.ebpf.files`: regular files
of at most :data:`~orchestrator.ebpf.files.OBJECT_MAX` bytes.

Behind it, optionally, a persisted cache shared by processes (``disk``, a
:class:`~orchestrator.ebpf.diskcache.DiskCache`; the command line and the daemon use
``/var/cache/bpforch``): a file this process has not parsed yet is hashed, and its parsed
form is read back from there by that sha256 (see :mod:`orchestrator.ebpf.specfile`) instead
of being parsed; what is parsed here is written there. A damaged entry is ignored with a
warning and replaced.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator.ebpf.errors import ParseError, quote
from orchestrator.ebpf.files import OBJECT_MAX, read_file, reason
from orchestrator.ebpf.lru import LRU, Usage

if TYPE_CHECKING:  # the parser is imported when a file is parsed or read back, not before
    from orchestrator.ebpf.diskcache import DiskCache
    from orchestrator.ebpf.spec import CollectionSpec

MAX_ENTRIES = 512
MAX_BYTES = 256 << 20
RACY_NS = 2_000_000_000
SPEC_KIND = "spec"  # entries of the persisted cache

_stat = os.stat  # tests replace it to fake a file's identity

_Identity = tuple[int, int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters since the cache was made (or cleared)."""

    hits: int  # served from the cache without reading the file
    verified: int  # racy entries read and hashed, found unchanged
    parsed: int  # files parsed
    entries: int
    loaded: int = 0  # files read back from the persisted cache instead of being parsed


@dataclass(slots=True)
class _Entry:
    identity: _Identity
    # Whether a stat that gives ``identity`` is a hit: the file had last changed more than
    # RACY_NS before the identity was taken (else the entry is racy: verified on every
    # lookup, and replaced by a fresh entry that may be trusted).
    trusted: bool
    sha256: str  # of the file's bytes (hex)
    spec: CollectionSpec
    name: str  # the file's name (the path's last component), what a served spec is named


def footprint(spec: CollectionSpec, size: int) -> int:
    """An estimate, in bytes, of the memory a spec parsed from ``size`` bytes of object
    holds, erring high: the parsed tables and BTF (about 16 bytes per byte of file:
    decoded strings and types, offsets, section bodies) plus what linking can multiply
    (every program's instructions, with the subprograms it calls, and its references and
    func/line/CO-RE records) and initial map contents. A test checks it against what
    tracemalloc measures."""
    n = 64 * 1024 + 16 * size
    for p in spec.programs.values():
        ins = p.instructions
        n += len(ins.raw) + 160 * len(ins.references)
        n += 120 * (len(p.func_infos) + len(p.held_line_infos()) + len(p.core_relos))
    for m in spec.maps.values():
        for e in m.contents:
            key = len(e.key) if isinstance(e.key, bytes) else 0
            n += 200 + key + len(e.value)
    return n


class SpecCache:
    """A cache of parsed specs by absolute path, bounded by :func:`footprint` bytes and
    entries (least recently used first out). Thread-safe."""

    def __init__(
        self,
        max_entries: int = MAX_ENTRIES,
        max_bytes: int = MAX_BYTES,
        *,
        disk: DiskCache | None = None,
    ) -> None:
        self._entries: LRU[str, _Entry] = LRU(max_bytes, max_entries)
        self._lock = threading.Lock()
        # lookups that found an entry but not a hit (the LRU counts the lookups that found one)
        self._missed = self._verified = self._parsed = self._loaded = 0
        self.disk = disk  # the persisted cache behind this one (None: none)

    @property
    def max_entries(self) -> int | None:
        return self._entries.max_entries

    @property
    def max_bytes(self) -> int:
        return self._entries.max_bytes

    def get(self, path: str | os.PathLike[str]) -> CollectionSpec:
        """A spec of the object at ``path`` that the caller owns (parsed or copied)."""
        given = os.fspath(path)
        key, now, identity, entry, hit = self._find(given)
        if not hit or entry is None:
            entry = self._refresh(key, now, identity, entry, given)
        # a copy of the maps, programs, variables and externs when the caller first
        # touches them; an absolute path is the key itself, and the entry has its name
        name = entry.name if key is given else os.path.basename(given)
        return entry.spec._serve(name, given)

    def shared(self, path: str | os.PathLike[str]) -> tuple[CollectionSpec, str]:
        """The cached spec itself (never mutate it: ``copy()`` first) and the sha256 of the
        file's bytes. The same instance comes back while the file is unchanged."""
        entry = self._lookup(os.fspath(path))
        return entry.spec, entry.sha256

    def sha256(self, path: str | os.PathLike[str]) -> str:
        """The sha256 of the file's bytes, as :meth:`shared` would give it, without parsing
        the file (or importing the parser): from the entry while the file is unchanged, else
        by reading and hashing it. Raises :class:`ParseError` when it can't be read, as a
        lookup would; a file that does not parse still has a sha256."""
        given = os.fspath(path)
        key, _, _, entry, trusted = self._find(given)
        if trusted and entry is not None:
            return entry.sha256
        return hashlib.sha256(_read(key, given)).hexdigest()

    def _find(self, given: str) -> tuple[str, int, _Identity, _Entry | None, bool]:
        """The absolute path, the time and the file's identity taken now, the entry of the
        path (if any), and whether it may be trusted without reading the file (a hit)."""
        if "\0" in given:
            raise ParseError(f"{quote(given)}: the path contains a NUL byte")
        key = given if given.startswith("/") else os.path.abspath(given)
        now = time.time_ns()  # before stat: the identity is at least this old
        try:
            st = _stat(key)
        except OSError as err:
            raise ParseError(f"{given}: {reason(err)}") from err
        identity: _Identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        # the LRU counts the lookups that find their key; those that are not hits are
        # counted here (see stats)
        entry = self._entries.get(key)
        if entry is not None and entry.identity == identity and entry.trusted:
            return key, now, identity, entry, True
        if entry is not None:
            with self._lock:
                self._missed += 1
        return key, now, identity, entry, False

    def _lookup(self, given: str) -> _Entry:
        key, now, identity, entry, hit = self._find(given)
        if hit and entry is not None:
            return entry
        return self._refresh(key, now, identity, entry, given)

    def _refresh(
        self, key: str, now: int, identity: _Identity, entry: _Entry | None, given: str
    ) -> _Entry:
        """Read the file (its identity taken at ``now``) and make its entry: ``entry``'s
        spec again if the bytes are the same, else read back from disk or parsed."""
        data = _read(key, given)
        digest = hashlib.sha256(data).hexdigest()
        if entry is not None and entry.sha256 == digest:
            spec = entry.spec
            with self._lock:
                self._verified += 1
        else:
            spec = self._load(data, digest, given)
        trusted = max(identity[3], identity[4]) + RACY_NS < now
        fresh = _Entry(identity, trusted, digest, spec, os.path.basename(key))
        self._entries.put(key, fresh, footprint(spec, len(data)))
        return fresh

    def _load(self, data: bytes, digest: str, given: str) -> CollectionSpec:
        """Read back from the persisted cache, or parse (and persist)."""
        disk, name = self.disk, os.path.basename(given)
        if disk is not None:
            payload = disk.get(SPEC_KIND, digest)
            if payload is not None:
                from orchestrator.ebpf import specfile

                try:
                    spec = specfile.decode(payload, name=name, path=given)
                except specfile.SpecFileError as err:
                    disk.reject(SPEC_KIND, digest, f"does not decode ({err})")
                else:
                    with self._lock:
                        self._loaded += 1
                    return spec
        from orchestrator.ebpf.elf import load_bytes

        spec = load_bytes(data, name=name, path=given)
        with self._lock:
            self._parsed += 1
        if disk is not None:
            from orchestrator.ebpf import specfile

            encoded = specfile.encode(spec)
            if encoded is not None:
                disk.put(SPEC_KIND, digest, encoded)
        return spec

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._missed = self._verified = self._parsed = self._loaded = 0

    def stats(self) -> CacheStats:
        with self._lock:
            usage = self._entries.usage()
            return CacheStats(
                max(0, usage.hits - self._missed),  # never below 0 if clear() races a lookup
                self._verified,
                self._parsed,
                usage.entries,
                self._loaded,
            )

    def usage(self) -> Usage:
        """Entries and estimated bytes held, against the limits."""
        return self._entries.usage()


def _read(key: str, given: str) -> bytes:
    try:
        return read_file(key, limit=OBJECT_MAX, what="an object")
    except OSError as err:
        raise ParseError(f"{given}: {reason(err)}") from err


default = SpecCache()


__all__ = [
    "MAX_BYTES",
    "MAX_ENTRIES",
    "RACY_NS",
    "SPEC_KIND",
    "CacheStats",
    "SpecCache",
    "default",
    "footprint",
]
