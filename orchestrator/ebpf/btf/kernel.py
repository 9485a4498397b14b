"""The running kernel's BTF (``/sys/kernel/btf/vmlinux`` and module BTF), indexed for lookups.

CO-RE relocation, ``.ksyms`` externs, kfuncs and attach targets (``tp_btf/``, ``iter/``,
``struct_ops``) all look kernel types up by name. The vmlinux blob has ~130k types; parsing
it here only indexes where each record starts (:meth:`btf.Spec.parse`), and the name index
decodes names, never whole types. The result is cached per process, keyed by the file's
path, size and mtime, so a second load in the same process costs nothing.

Behind that, optionally (:func:`use_disk`; the command line and the daemon turn it on), a
persisted index shared by processes (:mod:`orchestrator.ebpf.diskcache`): the record
index, the name positions and the CO-RE flavor index of the blob, keyed cheaply by the
blob's identity (kernel release, boot id, and the file's device, inode, size and times),
never by hashing its megabytes. The first CO-RE load of a new process then costs reading
the blob, not indexing it.

A different file (another kernel's BTF, or a hand-made blob in tests) can stand in for the
running kernel: :func:`load` takes a path, and ``CollectionOptions.kernel_btf`` passes one
through.

Needs ``CONFIG_DEBUG_INFO_BTF`` (Linux 5.4+) for ``/sys/kernel/btf/vmlinux``; module BTF
(``CONFIG_DEBUG_INFO_BTF_MODULES``, 5.11+) sits next to it and is split on vmlinux.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import struct
import sys
import threading
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator.ebpf import btf as _btf
from orchestrator.ebpf import diskcache
from orchestrator.ebpf.errors import BTFError, FileError, NotSupportedError, quote
from orchestrator.ebpf.files import BTF_MAX, read_file, reason
from orchestrator.ebpf.lru import LRU

if TYPE_CHECKING:
    from orchestrator.ebpf.diskcache import DiskCache

__all__ = ["INDEX_KIND", "VMLINUX", "KernelBTF", "essential_name", "load", "use_disk"]

VMLINUX = "/sys/kernel/btf/vmlinux"


def essential_name(name: str) -> str:
    """``name`` without a CO-RE flavor suffix: ``task_struct___old`` → ``task_struct``.

    The suffix starts at the last ``___`` that is preceded and followed by something other
    than ``_`` (libbpf's rule, documented with ``bpf_core_essential_name_len``).
    """
    n = len(name)
    for i in range(n - 5, -1, -1):
        if (
            name[i] != "_"
            and name[i + 1] == "_"
            and name[i + 2] == "_"
            and name[i + 3] == "_"
            and name[i + 4] != "_"
        ):
            return name[: i + 1]
    return name


@dataclass(eq=False)
class KernelBTF:
    """vmlinux BTF plus (lazily) module BTF, with name lookups.

    ``modules`` maps a module name to its split spec; it is read on first use.
    """

    vmlinux: _btf.Spec
    path: str = VMLINUX
    module_dir: str | None = None
    _modules: dict[str, _btf.Spec] | None = None

    @property
    def modules(self) -> dict[str, _btf.Spec]:
        mods = self._modules
        if mods is None:
            mods = {}
            if self.module_dir is not None:
                try:
                    names = sorted(os.listdir(self.module_dir))
                except OSError:
                    names = []
                for n in names:
                    if n == "vmlinux":
                        continue
                    p = os.path.join(self.module_dir, n)
                    try:
                        data = read_file(p, limit=BTF_MAX, what="btf")
                        mods[n] = _btf.Spec.parse(data, base=self.vmlinux)
                    except (OSError, BTFError):
                        continue  # a module being unloaded, or BTF we cannot read
            self._modules = mods
        return mods

    def specs(self) -> Iterator[tuple[str, _btf.Spec]]:
        """``("vmlinux", spec)`` first, then each module's."""
        yield "vmlinux", self.vmlinux
        yield from self.modules.items()

    def find(self, name: str, kind: _btf.Kind) -> tuple[str, _btf.Spec, int] | None:
        """The first type named ``name`` of ``kind``: (module or "vmlinux", spec, id)."""
        for mod, spec in self.specs():
            for tid in spec.ids_by_name(name):
                if tid >= spec.first_id and spec.kind_of(tid) == kind:
                    return mod, spec, tid
        return None


# Parsed kernel BTF by (path, size, mtime): normally one entry, the running kernel's. Each
# is costed at 8 times its file size (its types are decoded lazily, as lookups need
# them); other BTF files (tests, CollectionOptions.kernel_btf) make room by age.
MAX_BYTES = 512 << 20
_CACHE: LRU[tuple[str, int, int, int, int, int], KernelBTF] = LRU(MAX_BYTES)
_LOCK = threading.Lock()

INDEX_KIND = "kbtf"  # entries of the persisted cache
_INDEX_VERSION = 2
_INDEX_HEAD = struct.Struct("<IIIII")  # version, records, distinct names, hashes, json length
BOOT_ID = "/proc/sys/kernel/random/boot_id"


def use_disk(disk: DiskCache | None) -> DiskCache | None:
    """Persist the index of kernel BTF in ``disk`` from now on (None: not at all); gives
    the previous setting back (the setting is
    :func:`orchestrator.ebpf.diskcache.use_for_kernel_btf`'s, which the command line calls
    without importing this module)."""
    return diskcache.use_for_kernel_btf(disk)


def _identity(p: str, st: os.stat_result) -> str:
    """What names a BTF blob without reading it: the kernel and boot (sysfs files keep
    their times across boots) and the file's identity."""
    try:
        boot = read_file(BOOT_ID, limit=64, what="a boot id").decode().strip()
    except (OSError, UnicodeDecodeError):
        boot = ""
    fields = (p, os.uname().release, boot, st.st_dev, st.st_ino, st.st_size)
    times = (st.st_mtime_ns, st.st_ctime_ns, sys.byteorder)
    return "\0".join(str(f) for f in (*fields, *times))


def _index_key(p: str, st: os.stat_result, data: bytes) -> str:
    """The persisted index's key for the blob ``data`` read from ``p``: its identity, and
    for a file other than sysfs's vmlinux (which changes only with the boot) its sha256 as
    well: anyone may rewrite such a file, and a same-size rewrite within one timestamp tick
    keeps its stat."""
    key = _identity(p, st)
    if p != VMLINUX:
        key += "\0" + hashlib.sha256(data).hexdigest()
    return key


def _encode_index(spec: _btf.Spec) -> bytes:
    from orchestrator.ebpf.btf import core

    idx = spec.record_index()
    flavored = json.dumps(core.flavored_index(spec), separators=(",", ":")).encode()
    arrays = (idx.offsets, idx.name_offsets, idx.names, idx.first, idx.last, idx.hashes, idx.hashed)
    head = _INDEX_HEAD.pack(
        _INDEX_VERSION, len(idx.offsets), len(idx.names), len(idx.hashes), len(flavored)
    )
    return head + b"".join(a.tobytes() for a in arrays) + flavored


def _decode_index(data: bytes, payload: bytes) -> _btf.Spec:
    """The spec of ``data`` with the index in ``payload``; ValueError or BTFError if the
    payload is damaged or does not fit."""
    from orchestrator.ebpf.btf import core

    version, n, m, k, jlen = _INDEX_HEAD.unpack_from(payload)
    if version != _INDEX_VERSION:
        raise ValueError(f"version {version}, not {_INDEX_VERSION}")
    if len(payload) != _INDEX_HEAD.size + 4 * (2 * n + 3 * m + 2 * k) + jlen:
        raise ValueError("truncated")
    parts: list[array[int]] = []
    pos = _INDEX_HEAD.size
    for count in (n, n, m, m, m, k, k):
        a: array[int] = array("I")
        a.frombytes(payload[pos : pos + 4 * count])
        parts.append(a)
        pos += 4 * count
    flavored = json.loads(payload[pos:])
    if not isinstance(flavored, dict) or not all(
        isinstance(k, str) and isinstance(v, list) and all(type(i) is int for i in v)
        for k, v in flavored.items()
    ):
        raise ValueError("bad flavor index")
    spec = _btf.Spec.parse_indexed(data, _btf.RecordIndex(*parts))
    core.seed_flavored_index(spec, flavored)
    return spec


def _parse(p: str, st: os.stat_result, data: bytes) -> _btf.Spec:
    disk = diskcache.for_kernel_btf()
    if disk is None:
        return _btf.Spec.parse(data)
    key = _index_key(p, st, data)
    payload = disk.get(INDEX_KIND, key)
    if payload is not None:
        try:
            return _decode_index(data, payload)
        except (ValueError, struct.error, BTFError) as err:
            disk.reject(INDEX_KIND, key, f"does not decode ({err})")
    spec = _btf.Spec.parse(data)
    disk.put(INDEX_KIND, key, _encode_index(spec))
    return spec


def load(path: str | os.PathLike[str] | None = None) -> KernelBTF:
    """The kernel BTF at ``path`` (default: the running kernel's), cached per process.

    With the default path, module BTF from ``/sys/kernel/btf/*`` is available too; an
    explicit path stands alone.
    """
    p = os.fspath(path) if path is not None else VMLINUX
    try:
        if "\0" in p:
            raise FileError(errno.EINVAL, "the path contains a NUL byte", p)
        st = os.stat(p)
    except OSError as err:
        if path is None:
            raise NotSupportedError(
                f"kernel btf: {p}: {reason(err)} "
                "(the kernel needs CONFIG_DEBUG_INFO_BTF, or pass a btf file)"
            ) from err
        raise BTFError(f"kernel btf: {quote(p)}: {reason(err)}") from err
    key = (p, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with _LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        try:
            data = read_file(p, limit=BTF_MAX, what="btf")
        except OSError as err:
            raise BTFError(f"kernel btf: {p}: {reason(err)}") from err
        try:
            spec = _parse(p, st, data)
        except BTFError as err:
            raise BTFError(f"kernel btf: {p}: {err}") from err
        kb = KernelBTF(spec, p, os.path.dirname(p) if path is None else None)
        _CACHE.put(key, kb, 8 * len(data))
        return kb
