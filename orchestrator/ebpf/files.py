"""Reading files that someone else may have put in the way: regular files only, never
blocking, never more than a limit.

Every file bpforch reads (objects, manifests, the configuration, the state record, BTF,
uprobe targets) goes through here, because a path is not always what it claims:

- ``/dev/zero`` as an object would be read forever, growing the process without bound;
- a FIFO (or ``trace_pipe``) would block the read until someone writes, and with it the
  daemon's loop and its signal handling, or an apply that holds the lock;
- opening a device can have side effects (a tape rewinds on open).

So a path is ``stat``-ed first and refused unless it is a regular file (nothing else is
even opened), then opened ``O_RDONLY | O_NONBLOCK | O_CLOEXEC`` (plus ``O_NOFOLLOW`` on
request, for files in trees bpforch owns), ``fstat``-ed again (it may have been swapped in
between), and read to at most ``limit`` bytes: a file that grows while it is read is
refused as soon as it passes the limit. A regular file that would block anyway (tracefs'
``trace_pipe`` is a regular file that honours ``O_NONBLOCK``) is refused with EAGAIN.

Errors are :class:`~orchestrator.ebpf.errors.FileError`, an :class:`OSError` whose
``strerror`` says what is wrong in lower case (``not a regular file (a fifo)``, ``80.0 MiB,
over the 64 MiB limit for an object``); callers prefix the path and their own noun.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from typing import BinaryIO

from orchestrator.ebpf.errors import FileError

__all__ = [
    "BTF_MAX",
    "OBJECT_MAX",
    "FileError",
    "describe_size",
    "open_file",
    "read_file",
    "read_text",
    "reason",
    "stat_regular",
    "too_large",
]

MiB = 1 << 20

OBJECT_MAX = 64 * MiB  # an eBPF ELF object (the largest in libbpf-tools is under 2 MiB)
BTF_MAX = 256 * MiB  # a BTF blob (vmlinux BTF is about 6 MiB)

_CHUNK = 1 * MiB

_KINDS = (
    (stat.S_ISFIFO, "a fifo"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISLNK, "a symlink"),
)


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return f"file type {stat.S_IFMT(mode):#o}"  # pragma: no cover - every type is named


def describe_size(n: int) -> str:
    """``512 bytes``, ``12.5 KiB``, ``80.0 MiB``, ``2.0 GiB``."""
    if n < 1024:
        return f"{n} byte{'s' if n != 1 else ''}"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} TiB"


def _limit_text(limit: int) -> str:
    if limit % MiB == 0:
        return f"{limit // MiB} MiB"
    if limit % 1024 == 0:
        return f"{limit // 1024} KiB"
    return f"{limit} bytes"


def too_large(path: str, size: int, limit: int, what: str, *, grew: bool = False) -> FileError:
    """The error for a file over its limit: names the size and the limit."""
    how = "grew past" if grew else "over"
    return FileError(
        errno.EFBIG,
        f"{describe_size(size)}, {how} the {_limit_text(limit)} limit for {what}",
        path,
    )


def reason(err: OSError) -> str:
    """Why an :class:`OSError` happened, for a message: its ``strerror`` in lower case
    (``no such file or directory``), or a :class:`FileError`'s as written (it names sizes
    in KiB/MiB)."""
    text = err.strerror or str(err)
    return text if isinstance(err, FileError) else text.lower()


def _check_regular(st: os.stat_result, path: str) -> None:
    if stat.S_ISREG(st.st_mode):
        return
    if stat.S_ISDIR(st.st_mode):
        raise FileError(errno.EISDIR, "is a directory", path)
    raise FileError(errno.EINVAL, f"not a regular file ({_kind(st.st_mode)})", path)


def stat_regular(path: str | os.PathLike[str], *, follow: bool = True) -> os.stat_result:
    """``stat`` of ``path``, or :class:`FileError` unless it is a regular file (for a
    path that something else opens, e.g. the kernel for a uprobe)."""
    p = os.fspath(path)
    if "\0" in p:
        raise FileError(errno.EINVAL, "the path contains a NUL byte", p)
    st = os.stat(p, follow_symlinks=follow)
    _check_regular(st, p)
    return st


def _open(path: str | os.PathLike[str], follow: bool) -> tuple[int, os.stat_result]:
    """An fd of the regular file at ``path`` and its ``fstat``, or :class:`FileError` /
    :class:`OSError`."""
    p = os.fspath(path)
    # stat first: a FIFO, a device or a socket is refused without being opened
    stat_regular(p, follow=follow)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    if not follow:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(p, flags)
    except OSError as err:
        if err.errno == errno.ELOOP and not follow:
            raise FileError(errno.ELOOP, "a symlink, which is not followed here", p) from err
        raise
    try:
        st = os.fstat(fd)  # it may have been replaced since the stat
        _check_regular(st, p)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_file(
    path: str | os.PathLike[str], *, limit: int, what: str = "a file", follow: bool = True
) -> bytes:
    """The bytes of the regular file at ``path``, at most ``limit`` of them.

    ``what`` names the kind of file in the over-the-limit message (``an object``). With
    ``follow`` False a symlink at ``path`` itself is refused (``O_NOFOLLOW``). Raises
    :class:`FileError` (not a regular file, over the limit, would block) or another
    :class:`OSError` (missing, no permission …).
    """
    p = os.fspath(path)
    fd, st = _open(p, follow)
    try:
        if st.st_size > limit:
            raise too_large(p, st.st_size, limit, what)
        chunks: list[bytes] = []
        total = 0
        if st.st_size > 0:
            # the size fstat gave and one byte more (to see the end), read into one buffer:
            # sysfs answers a page per read, and a fresh 1 MiB buffer per read (each one
            # mmapped) costs more than the read
            head = _read_into(fd, p, st.st_size + 1)
            if len(head) <= st.st_size:
                return head
            chunks.append(head)  # it grew since fstat: on in chunks, within the limit
            total = len(head)
            if total > limit:
                raise too_large(p, total, limit, what, grew=True)
        # procfs files say size 0: read to EOF, at most limit + 1 bytes, so a file that
        # grows while it is read is caught at the limit
        while True:
            want = min(_CHUNK, limit + 1 - total)
            try:
                chunk = os.read(fd, want)
            except BlockingIOError as err:
                raise FileError(
                    errno.EAGAIN, "reading it would block (a stream, not a file)", p
                ) from err
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise too_large(p, total, limit, what, grew=True)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _read_into(fd: int, path: str, n: int) -> bytes:
    """Up to ``n`` bytes of ``fd`` (fewer at its end), read into one buffer."""
    buf = bytearray(n)
    got = 0
    with memoryview(buf) as view:
        while got < n:
            try:
                k = os.readv(fd, [view[got:]])
            except BlockingIOError as err:
                raise FileError(
                    errno.EAGAIN, "reading it would block (a stream, not a file)", path
                ) from err
            if k == 0:
                break
            got += k
    del buf[got:]
    return bytes(buf)


def read_text(
    path: str | os.PathLike[str], *, limit: int, what: str = "a file", follow: bool = True
) -> str:
    """:func:`read_file`, decoded as UTF-8 (:class:`UnicodeDecodeError` if it is not)."""
    return read_file(path, limit=limit, what=what, follow=follow).decode("utf-8")


def open_file(path: str | os.PathLike[str], *, follow: bool = True) -> BinaryIO:
    """The regular file at ``path``, open for reading in binary (for random access, such
    as an ELF reader looking up symbols of a large executable). The same refusals as
    :func:`read_file` except the size; a read that would block raises :class:`FileError`.
    """
    p = os.fspath(path)
    fd, _ = _open(p, follow)
    return _NonBlockingReader(io.FileIO(fd, "rb", closefd=True), p)


class _NonBlockingReader(io.BufferedReader):
    """A buffered reader whose reads turn "would block" (None or EAGAIN) into FileError."""

    def __init__(self, raw: io.FileIO, path: str) -> None:
        super().__init__(raw)
        self._path = path

    def read(self, size: int | None = -1, /) -> bytes:
        try:
            data = super().read(size)
        except BlockingIOError as err:
            raise self._blocked() from err
        if data is None:  # pragma: no cover - a non-blocking raw read with nothing ready
            raise self._blocked()
        return data

    def _blocked(self) -> FileError:
        return FileError(errno.EAGAIN, "reading it would block (a stream, not a file)", self._path)
