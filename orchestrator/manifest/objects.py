"""Parsed object files for the manifest layer and the reconciler.

They come from the loader's own cache (:mod:`orchestrator.ebpf.speccache`), so an object is
parsed once per process whoever asks for it: re-validating many manifests that share an
object, or an unchanged one in the watch loop, costs a ``stat``. A changed file is read and
hashed again, and parsed again only if its bytes changed (see that module for how rewrites
within one clock tick are caught). Parsing is pure (no kernel).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from orchestrator.ebpf import CollectionSpec, speccache
from orchestrator.ebpf import Error as EbpfError


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """A parsed object file: its spec (shared: never mutate it) and its sha256."""

    path: Path
    sha256: str
    spec: CollectionSpec


class ObjectError(Exception):
    """An object file could not be read or parsed. The message is the loader's; ``cause``
    is the :class:`OSError` when the file could not be read (missing, not a regular file,
    over the size limit), None when it was read and did not parse."""

    def __init__(self, message: str, cause: OSError | None = None) -> None:
        super().__init__(message)
        self.cause = cause


def object_info(path: Path) -> ObjectInfo:
    """The parsed object at ``path`` (absolute), from the cache when the file is unchanged.

    Raises :class:`ObjectError` (missing file, not an eBPF object …) with the loader's
    message.
    """
    try:
        spec, sha256 = speccache.default.shared(path)
    except EbpfError as err:
        cause = err.__cause__
        raise ObjectError(str(err), cause if isinstance(cause, OSError) else None) from err
    return ObjectInfo(path, sha256, spec)


def object_spec(path: Path) -> CollectionSpec:
    """The parsed :class:`~orchestrator.ebpf.CollectionSpec` of an object file (cached).

    The same instance is returned while the file is unchanged, so callers must not mutate
    it: ``spec.copy()`` before ``rewrite_constants``/``rewrite_maps`` (loading itself never
    mutates a spec). Raises :class:`ObjectError`.
    """
    return object_info(path).spec


def clear_cache() -> None:
    speccache.default.clear()


def cache_stats() -> dict[str, int]:
    """Counters: objects ``parsed``, files ``hashed`` (read), lookups that were ``hits``."""
    st = speccache.default.stats()
    return {"parsed": st.parsed, "hashed": st.parsed + st.verified, "hits": st.hits}
