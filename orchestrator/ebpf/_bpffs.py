"""bpffs helpers: where pins may live, what a pin holds, and removing pin trees."""

from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import os
import stat
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from orchestrator.ebpf import _sys
from orchestrator.ebpf.errors import PinError, SyscallError


class PinKind(enum.Enum):
    PROGRAM = "program"
    MAP = "map"
    LINK = "link"
    UNKNOWN = "unknown"


def is_bpffs(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` (which must exist) is on a bpf filesystem."""
    try:
        return _sys.fs_magic(os.fspath(path)) == _sys.BPF_FS_MAGIC
    except OSError:
        return False


def bpffs_mount_of(path: str | os.PathLike[str]) -> Path | None:
    """The nearest existing ancestor of ``path`` (after resolving symlinks) if it is on
    bpffs, else None. Used to check that a pin path stays on bpffs."""
    p = Path(os.path.realpath(os.fspath(path)))
    while not p.exists():
        if p.parent == p:
            return None
        p = p.parent
    return p if is_bpffs(p) else None


def _bpffs_hint() -> str:
    from orchestrator.ebpf.mounts import bpffs_mounts

    found = bpffs_mounts()
    if not found:
        return "bpffs is not mounted: mount -t bpf bpf /sys/fs/bpf"
    return "bpffs is mounted at " + ", ".join(map(str, found)) + ": choose a directory there"


def ensure_dir(path: str | os.PathLike[str], mode: int = 0o700) -> Path:
    """Create ``path`` (and parents) on bpffs; refuse if it would not be on bpffs."""
    p = Path(os.fspath(path))
    if bpffs_mount_of(p) is None:
        raise PinError(f"pin directory {p}: not on bpffs ({_bpffs_hint()})")
    try:
        p.mkdir(parents=True, exist_ok=True, mode=mode)
    except OSError as err:
        raise PinError(f"pin directory {p}: {err.strerror}") from err
    return p


def kind_of(path: str | os.PathLike[str]) -> PinKind:
    """What a pin holds, read from the fdinfo of the pinned object."""
    try:
        fd = _sys.obj_get(os.fspath(path))
    except SyscallError as err:
        raise PinError(f"pin {os.fspath(path)}: {err}") from err
    with fd:
        try:
            with open(f"/proc/self/fdinfo/{fd.raw}") as f:
                text = f.read()
        except OSError:
            return PinKind.UNKNOWN
    if "link_type:" in text:
        return PinKind.LINK
    if "prog_type:" in text:
        return PinKind.PROGRAM
    if "map_type:" in text:
        return PinKind.MAP
    return PinKind.UNKNOWN


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# linux/fcntl.h, linux/stat.h
_AT_FDCWD = -100
_AT_SYMLINK_NOFOLLOW = 0x100
_STATX_ATTR_MOUNT_ROOT = 0x2000
_STATX = struct.Struct("<IIQ40xQ")  # stx_mask, stx_blksize, stx_attributes, ..., _mask
_libc = ctypes.CDLL(None, use_errno=True)
_statx = _libc.statx
_statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
_statx.restype = ctypes.c_int


def is_mount_root(dir_fd: int, name: str) -> bool:
    """Whether ``name`` in ``dir_fd`` is the root of a mount, a bind mount of the same bpffs
    included (which has the same st_dev): statx's STATX_ATTR_MOUNT_ROOT (Linux 5.8)."""
    buf = ctypes.create_string_buffer(256)  # struct statx
    if _statx(dir_fd, os.fsencode(name), _AT_SYMLINK_NOFOLLOW, 0, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), name)
    _, _, attributes, supported = _STATX.unpack_from(buf)
    return bool(attributes & supported & _STATX_ATTR_MOUNT_ROOT)


_AT_EMPTY_PATH = 0x1000
_local = threading.local()  # one statx buffer per thread
_STATX_BASIC_STATS = 0x7FF
# stx_mask, stx_attributes, stx_mode, stx_ino, stx_attributes_mask, stx_ctime (sec, nsec),
# stx_mtime (sec, nsec), stx_dev_major, stx_dev_minor
_STATX_STAMP = struct.Struct("<I4xQ12xH2xQ16xQ32xqI4xqI4x8xII")


class DirStamp(NamedTuple):
    """What identifies a directory's listing without reading it: its device and inode, and
    the times the kernel sets when an entry is added, removed or renamed in it (and whether
    it is a directory, and the root of a mount). Equal stamps mean an equal listing only if
    no change can share the stamp's times: see :func:`settled`."""

    dev: int
    ino: int
    mtime_ns: int
    ctime_ns: int
    is_dir: bool
    mount_root: bool


def settled(mtime_ns: int, ctime_ns: int, now_ns: int, margin_ns: int = 1_000_000_000) -> bool:
    """Whether a directory with these times was last changed at least ``margin_ns`` before
    ``now_ns`` (CLOCK_REALTIME, taken before its times were read): any later change then
    gets other times (bpffs stamps with the coarse clock, so two changes within one tick
    share them)."""
    return mtime_ns < now_ns - margin_ns and ctime_ns < now_ns - margin_ns


def dir_stamp(dir_fd: int, name: str = "") -> DirStamp:
    """statx of ``name`` in ``dir_fd`` (never following a symlink; ``""``: ``dir_fd``
    itself) as a :class:`DirStamp`. Raises OSError."""
    buf = getattr(_local, "statx", None)
    if buf is None:
        buf = _local.statx = ctypes.create_string_buffer(256)  # struct statx
    if name == "":
        ret = _statx(dir_fd, b"", _AT_EMPTY_PATH | _AT_SYMLINK_NOFOLLOW, _STATX_BASIC_STATS, buf)
    else:
        ret = _statx(dir_fd, os.fsencode(name), _AT_SYMLINK_NOFOLLOW, _STATX_BASIC_STATS, buf)
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), name)
    _, attrs, mode, ino, supported, cs, cn, ms, mn, major, minor = _STATX_STAMP.unpack_from(buf)
    return DirStamp(
        os.makedev(major, minor),
        ino,
        ms * 1_000_000_000 + mn,
        cs * 1_000_000_000 + cn,
        stat.S_ISDIR(mode),
        bool(attrs & supported & _STATX_ATTR_MOUNT_ROOT),
    )


def _component(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise PinError(f"{name!r}: not a single path component")
    return name


def open_dir_at(dir_fd: int | None, name: str) -> int:
    """An fd (O_RDONLY|O_DIRECTORY|O_NOFOLLOW) of the directory ``name`` in ``dir_fd``
    (``name`` is a path when ``dir_fd`` is None: only its last component is checked).
    Raises OSError; ELOOP when ``name`` is a symlink, which is never followed."""
    if dir_fd is not None:
        _component(name)
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except NotADirectoryError:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            raise OSError(errno.ELOOP, "is a symlink (never followed)", name) from None
        raise


def open_pin_at(dir_fd: int, name: str) -> _sys.FD:
    """BPF_OBJ_GET of the pin ``name`` in directory ``dir_fd``. A symlink is refused
    (PinError), never followed. A missing pin raises FileNotFoundError (from the stat, or
    NotFoundError, which is one, from BPF_OBJ_GET)."""
    st = os.stat(_component(name), dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        raise PinError(f"pin {name}: is a symlink (never followed)")
    if not stat.S_ISREG(st.st_mode):
        raise PinError(f"pin {name}: not a pinned object")
    return _sys.obj_get(name, dir_fd=dir_fd)


def pin_at(fd: _sys.FD, dir_fd: int, name: str) -> None:
    """Pin the object behind ``fd`` as ``name`` in directory ``dir_fd`` (BPF_OBJ_PIN with
    BPF_F_PATH_FD). Fails with EEXIST if anything, a symlink included, has that name."""
    try:
        _sys.obj_pin(fd, _component(name), dir_fd=dir_fd)
    except SyscallError as err:
        raise PinError(f"pin {name}: {err}") from err


_MAX_DEPTH = 64  # directories deeper than this are left (no pin tree is nearly as deep)


@dataclass(frozen=True, slots=True)
class TreeRemoval:
    """What :func:`remove_tree_at` did. ``removed``: the pins it unpinned; ``left``: what it
    never follows or removes (symlinks, mount points, anything that is neither a directory
    nor a pin); the directories holding them stay too."""

    removed: tuple[str, ...] = ()
    left: tuple[str, ...] = ()


def remove_tree_at(
    dir_fd: int | None, name: str, *, shown: str | None = None, last: str | None = None
) -> TreeRemoval:
    """Unpin everything in the directory ``name`` (in ``dir_fd``; a path when None) and
    remove its directories, never following a symlink: each directory is opened with
    O_NOFOLLOW relative to its parent's fd and pins are unlinked relative to it. Symlinks and
    mount points are left where they are (see :class:`TreeRemoval`). ``last``: a top-level
    entry (an ownership marker) that is removed only when everything else went, so a tree
    that can't be removed completely stays provably owned. ``shown``: the path used in the
    report (default ``name``). Refuses to work outside bpffs."""
    shown = shown if shown is not None else name
    try:
        fd = open_dir_at(dir_fd, name)
    except FileNotFoundError:
        return TreeRemoval()
    except OSError as err:
        if err.errno == errno.ELOOP:
            return TreeRemoval(left=(shown,))
        raise
    if is_mount_root(_AT_FDCWD if dir_fd is None else dir_fd, name):
        os.close(fd)
        return TreeRemoval(left=(shown,))
    removed: list[str] = []
    left: list[str] = []
    try:
        if _sys.fs_magic(f"/proc/self/fd/{fd}") != _sys.BPF_FS_MAGIC:
            raise PinError(f"remove {shown}: not on bpffs; refusing to delete anything there")
        _clear(fd, shown, removed, left, last, _MAX_DEPTH)
    finally:
        os.close(fd)
    if not left:
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(name, dir_fd=dir_fd)
    return TreeRemoval(tuple(removed), tuple(left))


def _clear(
    fd: int, shown: str, removed: list[str], left: list[str], last: str | None, depth: int
) -> None:
    held = len(left)
    with os.scandir(fd) as it:
        entries = sorted(it, key=lambda e: e.name == last)  # ``last`` at the end
    for e in entries:
        path = f"{shown}/{e.name}"
        st = e.stat(follow_symlinks=False)
        if e.name == last and len(left) > held:
            continue  # something stays: so does the marker
        if stat.S_ISDIR(st.st_mode) and depth > 0 and not is_mount_root(fd, e.name):
            sub = open_dir_at(fd, e.name)
            before = len(left)
            try:
                _clear(sub, path, removed, left, None, depth - 1)
            finally:
                os.close(sub)
            if len(left) == before:
                os.rmdir(e.name, dir_fd=fd)
        elif stat.S_ISREG(st.st_mode):
            os.unlink(e.name, dir_fd=fd)
            removed.append(path)
        else:  # a symlink, a mount point, a special file, a directory nested absurdly deep
            left.append(path)


def remove_tree(path: str | os.PathLike[str]) -> list[str]:
    """Unpin everything under ``path`` and remove the directories; returns what it unpinned.

    Refuses to work outside bpffs, so a bad path can never delete ordinary files. Symlinks
    (``path`` itself included) are never followed or removed: when one is found, everything
    else is removed and PinError names what was left."""
    p = os.fspath(path)
    if not os.path.lexists(p):
        return []
    result = remove_tree_at(None, p)
    if result.left:
        raise PinError(
            f"remove {p}: left {', '.join(result.left)} (symlinks and mount points are never "
            "followed or removed; remove them by hand if they are yours)"
        )
    return list(result.removed)
