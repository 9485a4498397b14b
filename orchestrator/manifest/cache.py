"""The object store: parsed manifest files and parsed object files, kept across calls and
bounded by bytes.

One :class:`ObjectStore` is shared by whoever reads the same files: the command line makes
one per run, the daemon one for its lifetime, each test its own, and each hands it to both
:func:`~orchestrator.manifest.load_manifests` and the
:class:`~orchestrator.reconcile.Reconciler`. So an object the manifests were validated
against is not parsed again for the apply, and re-validating an unchanged manifest in the
watch loop costs a hash of its bytes. It holds:

- :attr:`ObjectStore.manifests`: per manifest path, the sha256 of its bytes and what
  parsing, the schema and building found (one version per file: a rewritten file replaces
  its entry), least recently used first out past :data:`MANIFESTS_MAX_BYTES` (an estimate
  of what the parsed documents hold) or :data:`MANIFESTS_MAX_FILES`;
- :attr:`ObjectStore.specs`: parsed object files by path, a
  :class:`~orchestrator.ebpf.speccache.SpecCache` (see that module for how a changed file is
  noticed, within one clock tick too, and for its own bounds);
- :attr:`ObjectStore.manifests_disk`: where parsed manifests are persisted for the next
  process (see :mod:`orchestrator.manifest.saved`), when the command line passes its disk
  cache; None (the default, and the daemon's) keeps them in memory only.

:meth:`ObjectStore.snapshot` gives one apply its view: each object file is looked up once,
so every step of the apply sees the same parse even if the file changes meanwhile.

:data:`default` is the store of callers that pass none (library users of
``load_manifests``, ``Reconciler``, :func:`object_info`); its spec cache is the loader's own
(:data:`orchestrator.ebpf.speccache.default`, what ``CollectionSpec.from_file`` reads through).
Parsing is pure (no kernel).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.ebpf import Error as EbpfError
from orchestrator.ebpf import speccache
from orchestrator.ebpf.lru import LRU
from orchestrator.manifest.objects import ObjectError, ObjectInfo

if TYPE_CHECKING:
    from orchestrator.ebpf import CollectionSpec
    from orchestrator.ebpf.diskcache import DiskCache
    from orchestrator.manifest.loader import ParsedFile

MANIFESTS_MAX_BYTES = 64 << 20
MANIFESTS_MAX_FILES = 4096


class ObjectStore:
    """Parsed manifests and object files, bounded (see the module). Thread-safe."""

    def __init__(
        self,
        specs: speccache.SpecCache | None = None,
        *,
        manifests_max_bytes: int = MANIFESTS_MAX_BYTES,
        manifests_max_files: int = MANIFESTS_MAX_FILES,
        manifests_disk: DiskCache | None = None,
    ) -> None:
        self.specs = speccache.SpecCache() if specs is None else specs
        self.manifests_disk = manifests_disk
        # path -> (sha256 of the file's bytes, what the loader made of them)
        self.manifests: LRU[str, tuple[bytes, ParsedFile]] = LRU(
            manifests_max_bytes, manifests_max_files
        )

    def __repr__(self) -> str:
        m = self.manifests.usage()
        s = self.specs.usage()
        return (
            f"ObjectStore(manifests={m.entries} ({m.bytes} of {m.max_bytes} bytes), "
            f"objects={s.entries} ({s.bytes} of {s.max_bytes} bytes))"
        )

    def object_info(self, path: Path) -> ObjectInfo:
        """The parsed object at ``path`` (absolute), from the store while the file is
        unchanged. The spec is shared: never mutate it (``spec.copy()`` first).

        Raises :class:`ObjectError` (missing file, not an eBPF object …) with the loader's
        message.
        """
        try:
            spec, sha256 = self.specs.shared(path)
        except EbpfError as err:
            cause = err.__cause__
            raise ObjectError(str(err), cause if isinstance(cause, OSError) else None) from err
        return ObjectInfo(path, sha256, spec)

    def object_sha256(self, path: Path) -> str:
        """The sha256 of the object file at ``path`` (absolute), as :meth:`object_info`
        would give it, without parsing it (see :meth:`SpecCache.sha256
        <orchestrator.ebpf.speccache.SpecCache.sha256>`). Raises :class:`ObjectError` when
        the file can't be read."""
        try:
            return self.specs.sha256(path)
        except EbpfError as err:
            cause = err.__cause__
            raise ObjectError(str(err), cause if isinstance(cause, OSError) else None) from err

    def snapshot(self) -> ObjectSnapshot:
        """A view for one apply: each object file is looked up once."""
        return ObjectSnapshot(self)

    def clear(self) -> None:
        """Forget every parsed manifest and object (for benchmarks and tests)."""
        self.manifests.clear()
        self.specs.clear()


class ObjectSnapshot:
    """Parsed objects for one apply, read through an :class:`ObjectStore` once per path
    (the store checks the file again on every lookup); errors are remembered too."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._infos: dict[Path, ObjectInfo | ObjectError] = {}

    def get(self, path: Path) -> ObjectInfo:
        """Raises :class:`ObjectError` as :meth:`ObjectStore.object_info` did."""
        hit = self._infos.get(path)
        if hit is None:
            try:
                hit = self.store.object_info(path)
            except ObjectError as err:
                hit = err
            self._infos[path] = hit
        if isinstance(hit, ObjectError):
            raise hit
        return hit


default = ObjectStore(speccache.default)


def object_info(path: Path, store: ObjectStore | None = None) -> ObjectInfo:
    """:meth:`ObjectStore.object_info` of ``store`` (:data:`default` if None)."""
    return (default if store is None else store).object_info(path)


def object_spec(path: Path, store: ObjectStore | None = None) -> CollectionSpec:
    """The parsed :class:`~orchestrator.ebpf.CollectionSpec` of an object file, from
    ``store`` (:data:`default` if None). The same instance is returned while the file is
    unchanged, so callers must not mutate it: ``spec.copy()`` before
    ``rewrite_constants``/``rewrite_maps`` (loading itself never mutates a spec). Raises
    :class:`ObjectError`."""
    return object_info(path, store).spec


__all__ = [
    "MANIFESTS_MAX_BYTES",
    "MANIFESTS_MAX_FILES",
    "ObjectSnapshot",
    "ObjectStore",
    "default",
    "object_info",
    "object_spec",
]
