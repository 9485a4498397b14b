"""A persisted cache shared by processes: what one ``bpforch`` process parsed or indexed, the
next one reads back instead of doing the work again (parsed object files, see
:mod:`orchestrator.ebpf.specfile`; the kernel BTF index, see
:mod:`orchestrator.ebpf.btf.kernel`).

The directory (default :data:`DEFAULT_DIR`, ``/var/cache/bpforch``) is created mode 0700 if
it is missing, and used only while it is a real directory (not a symlink) owned by the
effective user with no group or other permission bits. Nothing in it is trusted that this
code did not write: an entry is read only if it is a regular file (opened ``O_NOFOLLOW |
O_NONBLOCK`` relative to the directory's fd, so a FIFO, a device or a symlink is never
followed or blocked on), owned by the effective user, with no group or other permission
bits, of at most :data:`ENTRY_MAX` bytes, and if its header (magic, format version, payload
length, sha256 of the payload) and the key stored in it match. Payloads are bpforch's own
format (no pickle): whatever reads them validates every field.

An entry that fails any check is ignored with one warning (logger
``orchestrator.ebpf.diskcache``) and the work is done again; writing the fresh result
replaces it. An unusable directory (missing and not creatable, not writable, a read-only
file system, untrusted) turns the cache off with one warning that names it and what to do
(only the default directory of a one-shot command run by an unprivileged user is turned
off quietly, see ``quiet_denied``). Nothing here ever raises to the caller.

Keys: each entry is named by a hash of its kind, its key (e.g. the sha256 of an object
file) and :func:`code_identity` (bpforch's version, the format version and the loader's
code: the distribution's RECORD of an installed wheel, else the size and mtime of the
loader's source files), so a different or upgraded bpforch never reads an entry another one
wrote.

Writes are atomic: a temporary file (``O_EXCL``, mode 0600) in the same directory, renamed
over the entry. The total size of the entries is bounded (:attr:`DiskCache.max_bytes`,
default :data:`MAX_BYTES`): after a write the least recently used entries (by mtime; a hit
refreshes an entry's mtime at most once a minute) are removed until the rest fits. Only
files this module names and recognises (owner, mode, magic) are ever removed.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import re
import stat
import struct
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.ebpf.files import read_file, reason

if TYPE_CHECKING:
    import logging

__all__ = [
    "DEFAULT_DIR",
    "ENTRY_MAX",
    "FORMAT",
    "LOGGER",
    "MAX_BYTES",
    "DiskCache",
    "code_identity",
    "tree_identity",
]

DEFAULT_DIR = Path("/var/cache/bpforch")
MAX_BYTES = 256 << 20  # every entry together
ENTRY_MAX = 64 << 20  # one entry (a kernel BTF index is a few MiB, a spec a few KiB)
FORMAT = 1  # the header; the payload formats carry their own version
TOUCH_NS = 60_000_000_000  # a hit refreshes an entry's mtime when older than this
STALE_TMP_NS = 3600_000_000_000  # a temporary file left by a crash is removed after this

MAGIC = b"bpforch\x01"
# magic, format, reserved, payload length, sha256 of the payload
_HEADER = struct.Struct("<8sHHQ32s")
_KEY_LEN = struct.Struct("<H")
_NAME = re.compile(r"^([a-z]+)-([0-9a-f]{64})$")
_TMP = re.compile(r"^\.tmp-([a-z]+)-([0-9a-f]{64})-[0-9]+-[0-9a-f]{8}$")

LOGGER = __name__  # the logger warnings go to


def _log() -> logging.Logger:
    """The logger (``logging`` is imported with the first message: most runs have none)."""
    import logging

    return logging.getLogger(LOGGER)


_OFF = "the cache is off: give --cache-dir or cache_dir a writable directory, or --no-cache"
# the errors of a directory this user may not create, open or write into
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


# What decides the contents of an entry is the loader's code, so an identity of that code is
# part of every key: an upgraded, reinstalled or edited bpforch never reads entries that other
# code wrote. Two ways to identify it, whichever applies:
# - an installed wheel: the package sits next to its distribution's RECORD, in which the
#   installer (pip) wrote the sha256 of every installed file; the RECORD's bytes identify
#   them all for the price of reading one file (a rebuilt wheel of the same version has
#   other hashes in it). A file edited by hand inside site-packages is not seen: pip would
#   not see it either (empty the cache, or --no-cache, after doing that);
# - anything else (a source checkout, an editable install): the path, size and mtime of
#   every module under orchestrator/ebpf/, so an in-place edit is seen.
# It is computed once per process, when the cache is first used.

RECORD_MAX = 1 << 20  # a distribution's RECORD (bpforch's is about 20 KiB)
DIST_NAME = "bpforch"


@functools.cache
def code_identity() -> str:
    """bpforch's version, the cache format and the identity of the loader's code (its
    distribution's RECORD when installed from a wheel, else the size and mtime of every
    loader module): an entry written by other code is never read."""
    from orchestrator import __version__

    return _identity(os.path.dirname(os.path.abspath(__file__)), __version__)


def _identity(root: str, version: str) -> str:
    """:func:`code_identity` of the loader at ``root`` (``.../orchestrator/ebpf``)."""
    record = _installed_record(root, version)
    code = (
        "record\0" + hashlib.sha256(record).hexdigest()
        if record is not None
        else "tree\0" + tree_identity(root)
    )
    return hashlib.sha256(f"{version}\0{FORMAT}\0{code}".encode()).hexdigest()


def _installed_record(root: str, version: str) -> bytes | None:
    """The bytes of the RECORD of the ``bpforch`` ``version`` distribution that installed
    the loader at ``root`` (``.../orchestrator/ebpf``; its RECORD lists this module with its
    hash), or None: not installed that way (a source checkout; an editable install, whose
    RECORD lists no module) or unreadable. Read as a regular file, no symlink followed, at
    most :data:`RECORD_MAX` bytes."""
    package = os.path.dirname(root)
    site = os.path.dirname(package)
    dist = f"{DIST_NAME}-{version}.dist-info"
    try:
        data = read_file(os.path.join(site, dist, "RECORD"), limit=RECORD_MAX, follow=False)
    except OSError:
        return None
    me = f"{os.path.basename(package)}/{os.path.basename(root)}/diskcache.py"
    if b"\n" + me.encode() + b",sha256=" not in b"\n" + data:
        return None
    return data


def tree_identity(root: str) -> str:
    """The path, size and mtime of every ``.py`` file under ``root`` (``__pycache__`` and
    symlinked directories left out), hashed."""
    # one scandir per directory (cheaper than os.walk plus a path join and stat per name:
    # this runs once in every process that uses the cache)
    parts: list[str] = []
    todo = [root]
    while todo:
        try:
            with os.scandir(todo.pop()) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue  # as os.walk: a directory that went away is skipped
        for e in entries:
            if e.name.endswith(".py"):
                try:
                    st = e.stat()
                except OSError:
                    parts.append(f"{e.path}\0missing\0")
                    continue
                parts.append(f"{e.path}\0{st.st_size}\0{st.st_mtime_ns}\0")
            elif e.name != "__pycache__" and e.is_dir(follow_symlinks=False):
                todo.append(e.path)
    return hashlib.sha256("".join(parts).encode()).hexdigest()


# The cache the kernel's BTF index is persisted in (None: none), as
# :func:`orchestrator.ebpf.btf.kernel.use_disk` sets it: kept here, so that a command sets it
# without importing the BTF code it may never run.
_KERNEL_BTF: DiskCache | None = None
_KERNEL_BTF_LOCK = threading.Lock()


def use_for_kernel_btf(disk: DiskCache | None) -> DiskCache | None:
    """Persist the index of kernel BTF in ``disk`` from now on (None: not at all); gives
    the previous setting back."""
    global _KERNEL_BTF
    with _KERNEL_BTF_LOCK:
        old, _KERNEL_BTF = _KERNEL_BTF, disk
    return old


def for_kernel_btf() -> DiskCache | None:
    """Where the index of kernel BTF is persisted (see :func:`use_for_kernel_btf`)."""
    return _KERNEL_BTF


class DiskCache:
    """Entries by (kind, key) in one directory (see the module). Thread-safe.

    ``quiet_denied``: a directory this user may not create, open or write into (EACCES,
    EPERM, EROFS) turns the cache off with a debug message instead of a warning: for the
    default directory of a command run by an unprivileged user, where that is no fault."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = MAX_BYTES,
        quiet_denied: bool = False,
    ) -> None:
        self.path = Path(os.path.abspath(os.fspath(path)))
        self.max_bytes = max_bytes
        self.quiet_denied = quiet_denied
        self._warned: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._off = False

    def __repr__(self) -> str:
        return f"DiskCache({str(self.path)!r}, max_bytes={self.max_bytes})"

    # ------------------------------------------------------------------ public

    def get(self, kind: str, key: str) -> bytes | None:
        """The payload stored for ``(kind, key)``, or None (missing, or untrusted: then
        with one warning)."""
        name = self._name(kind, key)
        dfd = self._open_dir(create=False)
        if dfd is None:
            return None
        try:
            return self._read(dfd, name, key)
        finally:
            os.close(dfd)

    def put(self, kind: str, key: str, payload: bytes) -> bool:
        """Store ``payload`` for ``(kind, key)``; then keep the total within
        :attr:`max_bytes`. False (with one warning) if it could not be written."""
        name = self._name(kind, key)
        body = _KEY_LEN.pack(len(key.encode())) + key.encode() + payload
        header = _HEADER.pack(MAGIC, FORMAT, 0, len(body), hashlib.sha256(body).digest())
        if len(header) + len(body) > min(ENTRY_MAX, self.max_bytes):
            return False  # larger than the cache may hold: not kept, as the LRUs do
        dfd = self._open_dir(create=True)
        if dfd is None:
            return False
        try:
            tmp = f".tmp-{name}-{os.getpid()}-{os.urandom(4).hex()}"
            try:
                fd = os.open(tmp, _WRITE_FLAGS, 0o600, dir_fd=dfd)
            except OSError as err:
                if err.errno in _DENIED:  # no write will ever succeed here
                    self._disable(f"cannot write into it: {reason(err)} ({_OFF})", err)
                else:
                    self._warn("", f"cannot write an entry: {reason(err)}")
                return False
            try:
                try:
                    view = memoryview(header + body)
                    while view:
                        view = view[os.write(fd, view) :]
                finally:
                    os.close(fd)
                os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except OSError as err:
                _unlink(dfd, tmp)
                self._warn("", f"cannot write an entry: {reason(err)}")
                return False
            self._evict(dfd, keep=name)
            return True
        finally:
            os.close(dfd)

    def reject(self, kind: str, key: str, why: str) -> None:
        """Report an entry whose payload its reader refused (it is replaced on the next
        :meth:`put`): one warning."""
        self._warn(self._name(kind, key), f"{why}, ignored")

    def usage(self) -> tuple[int, int]:
        """(entries, bytes) this cache holds now."""
        dfd = self._open_dir(create=False)
        if dfd is None:
            return 0, 0
        try:
            entries, _ = self._entries(dfd)
            return len(entries), sum(size for _, size, _ in entries)
        finally:
            os.close(dfd)

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _name(kind: str, key: str) -> str:
        digest = hashlib.sha256(f"{kind}\0{key}\0{code_identity()}".encode()).hexdigest()
        return f"{kind}-{digest}"

    def _warn(self, entry: str, why: str) -> None:
        where = str(self.path / entry) if entry else str(self.path)
        with self._lock:
            if (where, why) in self._warned:
                return
            self._warned.add((where, why))
        _log().warning("cache %s: %s", where, why)

    def _open_dir(self, *, create: bool) -> int | None:
        if self._off:
            return None
        p = str(self.path)
        try:
            dfd = os.open(p, _DIR_FLAGS)
        except FileNotFoundError:
            if not create:
                return None
            try:
                os.mkdir(p, 0o700)
                dfd = os.open(p, _DIR_FLAGS)
            except OSError as err:
                self._disable(f"cannot create it: {reason(err)} ({_OFF})", err)
                return None
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.ENOTDIR):
                try:
                    link = stat.S_ISLNK(os.lstat(p).st_mode)
                except OSError:
                    link = False
                why = "a symlink" if link or err.errno == errno.ELOOP else "not a directory"
                self._disable(f"{why}, not used ({_OFF})", err)
            else:
                self._disable(f"{reason(err)} ({_OFF})", err)
            return None
        st = os.fstat(dfd)
        problem = ""
        if st.st_uid != os.geteuid():
            problem = f"owned by uid {st.st_uid}, not {os.geteuid()}"
        elif st.st_mode & 0o077:
            problem = f"mode {stat.S_IMODE(st.st_mode):04o}"
        if problem:
            os.close(dfd)
            self._disable(
                f"{problem}, not trusted (the cache is off: chmod 700 and chown it, or give "
                "--cache-dir or cache_dir a directory of its own)"
            )
            return None
        return dfd

    def _disable(self, why: str, err: OSError | None = None) -> None:
        self._off = True
        if self.quiet_denied and err is not None and err.errno in _DENIED:
            # the default directory of a command run by an unprivileged user: not a fault
            _log().debug("cache %s: %s", self.path, why)
            return
        self._warn("", why)

    def _read(self, dfd: int, name: str, key: str) -> bytes | None:
        try:
            # stat first: a FIFO, a device or a socket is refused without being opened
            mode = os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode
            if not stat.S_ISREG(mode):
                why = "a symlink, not followed" if stat.S_ISLNK(mode) else "not a regular file"
                self._warn(name, f"{why}, ignored")
                return None
            fd = os.open(name, _READ_FLAGS, dir_fd=dfd)
        except FileNotFoundError:
            return None
        except OSError as err:
            why = "a symlink" if err.errno == errno.ELOOP else reason(err)
            self._warn(name, f"{why}, ignored")
            return None
        try:
            st = os.fstat(fd)
            problem = _untrusted(st)
            if problem:
                self._warn(name, f"{problem}, ignored")
                return None
            data = _read_all(fd, st.st_size)
            if st.st_mtime_ns + TOUCH_NS < time.time_ns():
                with contextlib.suppress(OSError):
                    os.utime(fd)  # recently used: evicted last
        except OSError as err:
            self._warn(name, f"{reason(err)}, ignored")
            return None
        finally:
            os.close(fd)
        payload, problem = _check(data, key)
        if payload is None:
            self._warn(name, f"{problem}, ignored")
        return payload

    @staticmethod
    def _entries(dfd: int) -> tuple[list[tuple[str, int, int]], list[str]]:
        """(name, size, mtime_ns) of every entry here, and the temporary files a crash
        left (older than :data:`STALE_TMP_NS`)."""
        out: list[tuple[str, int, int]] = []
        stale: list[str] = []
        now = time.time_ns()
        with os.scandir(dfd) as it:
            for e in it:
                try:
                    st = e.stat()
                except OSError:
                    continue
                if _NAME.match(e.name):
                    out.append((e.name, st.st_size, st.st_mtime_ns))
                elif _TMP.match(e.name) and st.st_mtime_ns + STALE_TMP_NS < now:
                    stale.append(e.name)
        return out, stale

    def _evict(self, dfd: int, keep: str) -> None:
        try:
            entries, stale = self._entries(dfd)
        except OSError:
            return
        for name in stale:
            if _ours(dfd, name):
                _unlink(dfd, name)
        total = sum(size for _, size, _ in entries)
        for name, size, _ in sorted(entries, key=lambda e: e[2]):
            if total <= self.max_bytes:
                break
            if name != keep and _ours(dfd, name):
                _unlink(dfd, name)
                total -= size


def _untrusted(st: os.stat_result) -> str:
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_uid != os.geteuid():
        return f"owned by uid {st.st_uid}, not {os.geteuid()}"
    if st.st_mode & 0o077:
        return f"mode {stat.S_IMODE(st.st_mode):04o}"
    if st.st_size > ENTRY_MAX:
        return f"{st.st_size} bytes, over the {ENTRY_MAX} byte limit"
    return ""


def _read_all(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while total <= size:
        chunk = os.read(fd, size + 1 - total)  # one byte more: a file that grew is refused
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _check(data: bytes, key: str) -> tuple[bytes | None, str]:
    """The payload of an entry, or None and why not."""
    if len(data) < _HEADER.size:
        return None, "truncated"
    magic, fmt, _, length, digest = _HEADER.unpack_from(data)
    if magic != MAGIC:
        return None, "not a bpforch cache entry"
    if fmt != FORMAT:
        return None, f"format {fmt}, not {FORMAT}"
    body = memoryview(data)[_HEADER.size :]  # no copy of megabytes until the end
    if len(body) != length:
        return None, f"{len(body)} bytes of payload, the header says {length}"
    if hashlib.sha256(body).digest() != digest:
        return None, "its sha256 does not match"
    want = key.encode()
    if len(body) < _KEY_LEN.size:
        return None, "truncated (no key)"
    (n,) = _KEY_LEN.unpack_from(body)
    if body[_KEY_LEN.size : _KEY_LEN.size + n] != want:
        return None, "stored under another key"
    return body[_KEY_LEN.size + n :].tobytes(), ""


def _ours(dfd: int, name: str) -> bool:
    """Whether ``name`` is a regular file of ours (owner, mode, magic): only those go."""
    try:
        if _untrusted(os.stat(name, dir_fd=dfd, follow_symlinks=False)):
            return False
        fd = os.open(name, _READ_FLAGS, dir_fd=dfd)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if _untrusted(st):
            return False
        head = os.read(fd, len(MAGIC))
        return head == MAGIC or (head == b"" and name.startswith(".tmp-"))
    except OSError:
        return False
    finally:
        os.close(fd)


def _unlink(dfd: int, name: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=dfd)
