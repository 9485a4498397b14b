"""File-system side of the reconciler: the state record, atomic directory swaps on bpffs,
and the git revision of the manifests' checkout (the lock: :mod:`.owner`).

The record is written atomically: write a temporary file, fsync it, rename it over
``state.json``, fsync the directory. A reader sees the old or the new record, never a mix.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import stat
from collections.abc import Mapping
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.ebpf.errors import quote
from orchestrator.ebpf.files import FileError, read_file, reason
from orchestrator.reconcile.errors import RecordError, StateError
from orchestrator.reconcile.state import RECORD_VERSION, StateRecord, collection_text

if TYPE_CHECKING:
    from orchestrator.reconcile.cache import ObserveCache

RECORD_FILE = "state.json"
RECORD_MAX = 16 << 20  # bytes: a record of 1,000 collections is about 1 MiB

# linux/fs.h
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_AT_FDCWD = -100

_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = _libc.renameat2
_renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_renameat2.restype = ctypes.c_int


def rename(
    src: str | Path,
    dst: str | Path,
    *,
    exchange: bool = False,
    src_dir: int | None = None,
    dst_dir: int | None = None,
) -> None:
    """``renameat2``: with ``exchange``, swap two existing paths atomically
    (RENAME_EXCHANGE, which bpffs supports through simple_rename since Linux 5.x);
    otherwise move ``src`` to ``dst`` only if ``dst`` does not exist (RENAME_NOREPLACE).
    ``src_dir``/``dst_dir``: directory fds the names are relative to. A symlink in the last
    component is moved itself, never followed."""
    flags = RENAME_EXCHANGE if exchange else RENAME_NOREPLACE
    sfd = _AT_FDCWD if src_dir is None else src_dir
    dfd = _AT_FDCWD if dst_dir is None else dst_dir
    if _renameat2(sfd, os.fsencode(src), dfd, os.fsencode(dst), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), os.fspath(src), None, os.fspath(dst))


def read_record(state_dir: Path, cache: ObserveCache | None = None) -> StateRecord:
    """The record in ``state_dir`` (empty if there is none yet). With ``cache``, bytes equal
    to the last ones read are not parsed again."""
    path = state_dir / RECORD_FILE
    try:
        # a regular file of bpforch's own (a symlink there is not followed), size-capped
        raw = read_file(path, limit=RECORD_MAX, what="a state record", follow=False)
    except FileNotFoundError:
        return StateRecord()
    except OSError as err:
        raise StateError(f"state record {path}: {reason(err)}") from err
    if cache is not None:
        known = cache.parsed(raw)
        if known is not None:
            return known
    try:
        data = json.loads(raw.decode("utf-8"))
        if isinstance(data, dict) and data.get("version") != RECORD_VERSION:
            raise ValueError(f"unknown record version {quote(data.get('version'))}")
        # RecordFieldError names the field of any other shape
        record = StateRecord.from_json(data)
    except (ValueError, RecursionError) as err:  # JSON, UTF-8, RecordFieldError; deep nesting
        why = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise RecordError(
            os.fspath(path),
            why,
            "move it away and re-apply: the record is rebuilt from the ownership markers "
            "pinned with each collection",
        ) from err
    if cache is not None:
        cache.keep_record(raw, record)
    return record


def record_bytes(record: StateRecord, texts: Mapping[str, str] | None = None) -> bytes:
    """The record as the state file holds it: ``json.dumps(record.to_json())``, compact
    with its keys sorted. ``texts``: collections' entries already encoded by
    :func:`~orchestrator.reconcile.state.collection_text` from this very record (the
    transaction made them for the ownership markers), used as they are."""
    made = texts if texts is not None else {}
    entries = ",".join(
        f"{encode_basestring_ascii(name)}:{made[name] if name in made else collection_text(rec)}"
        for name, rec in sorted(record.collections.items())
    )
    # the keys in sorted order, as sort_keys puts them: "collections" < "version"
    return f'{{"collections":{{{entries}}},"version":{RECORD_VERSION}}}'.encode()


def write_record(
    state_dir: Path, record: StateRecord, texts: Mapping[str, str] | None = None
) -> None:
    """Replace the record atomically (tmp, fsync, rename, fsync dir). ``texts``: see
    :func:`record_bytes`."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state_dir / RECORD_FILE
    tmp = state_dir / f".{RECORD_FILE}.{os.getpid()}.tmp"
    data = record_bytes(record, texts)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        fsync_dir(state_dir)
        for stale in state_dir.glob(f".{RECORD_FILE}.*.tmp"):  # left by a killed writer
            with contextlib.suppress(OSError):
                stale.unlink()
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StateError(f"state record {path}: write: {err.strerror}") from err


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.EROFS):
            raise
    finally:
        os.close(fd)


_GIT_SMALL = 64 << 10  # .git, HEAD, a ref, commondir: one line each
_GIT_PACKED_REFS = 64 << 20


# what a file looked like when it was read: (st_dev, st_ino, st_size, st_mtime_ns,
# st_ctime_ns), or None if it could not be stat'ed
_Stamp = tuple[int, int, int, int, int] | None


def _stamp(path: str) -> _Stamp:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class _GitReads:
    """The files one :func:`git_revision` looked at: each ``.git`` entry's kind and each
    file's stamp taken before it was read (so a change while reading shows next time).
    ``settled`` is False once a look failed for a reason that none of them records (no
    file descriptor left, no memory, no permission on a directory on the way): what was
    found then is not remembered."""

    def __init__(self) -> None:
        self.modes: list[tuple[str, int]] = []
        self.stamps: list[tuple[str, _Stamp]] = []
        self.settled = True

    def mode(self, path: Path) -> int:
        try:
            mode = _mode(path)
        except OSError:
            self.settled = False
            raise
        self.modes.append((os.fspath(path), mode))
        return mode

    def is_file(self, path: Path) -> bool:
        return stat.S_ISREG(self.mode(path))

    def text(self, path: Path, limit: int = _GIT_SMALL) -> str:
        self.stamps.append((os.fspath(path), _stamp(os.fspath(path))))
        try:
            # regular files only, non-blocking and capped: the checkout is not bpforch's
            data = read_file(path, limit=limit, what="a git file")
        except FileError:  # refused as it is (not a regular file, too large): stamped
            raise
        except OSError as err:
            if err.errno not in (errno.ENOENT, errno.ENOTDIR):  # else stamped as missing
                self.settled = False
            raise
        return data.decode("utf-8", "replace")

    def unchanged(self) -> bool:
        try:
            return all(_mode(p) == m for p, m in self.modes) and all(
                _stamp(p) == s for p, s in self.stamps
            )
        except OSError:  # read again (which gives None if that fails the same way)
            return False


_GIT_MEMO_MAX = 256
# the directory searched -> (its revision, what was read to find it); a process applies
# manifests from a few directories, again and again
_git_memo: dict[str, tuple[str | None, _GitReads]] = {}


def git_revision(path: Path) -> str | None:
    """The commit checked out in the git work tree containing ``path`` (read from .git
    without running git), or None.

    Remembered per process by directory, and read again as soon as anything it was read
    from looks different: the kind of each ``.git`` entry looked at (a ``.git`` made or
    removed below the checkout's), and the identity of each file read (device, inode,
    size, mtime and ctime: git writes HEAD, refs and packed-refs to a new file renamed over
    the old one, so a checkout or a commit always gives another inode)."""
    here = path if path.is_dir() else path.parent
    key = os.fspath(here)
    seen = _git_memo.get(key)
    if seen is not None and seen[1].unchanged():
        return seen[0]
    reads = _GitReads()
    rev = _read_git_revision(here, reads)
    if not reads.settled:  # a failure of the moment: read again next time
        _git_memo.pop(key, None)
        return rev
    if len(_git_memo) >= _GIT_MEMO_MAX:
        _git_memo.clear()
    _git_memo[key] = (rev, reads)
    return rev


def _read_git_revision(here: Path, reads: _GitReads) -> str | None:
    for d in (here, *here.parents):
        git = d / ".git"
        try:
            # one stat for each directory up the tree (most have no .git), followed as
            # Path.is_file and is_dir would
            mode = reads.mode(git)
            if stat.S_ISREG(mode):  # a worktree: "gitdir: <path>"
                text = reads.text(git).strip()
                if not text.startswith("gitdir:"):
                    return None
                git = (d / text.removeprefix("gitdir:").strip()).resolve()
            elif not stat.S_ISDIR(mode):
                continue
            head = reads.text(git / "HEAD").strip()
            if not head.startswith("ref:"):
                return head or None
            ref = head.removeprefix("ref:").strip()
            for base in (git, _common_dir(git, reads)):
                f = base / ref
                if reads.is_file(f):
                    return reads.text(f).strip() or None
                packed = base / "packed-refs"
                if reads.is_file(packed):
                    for line in reads.text(packed, _GIT_PACKED_REFS).splitlines():
                        sha, _, name = line.partition(" ")
                        if name == ref:
                            return sha
            return None
        except (OSError, ValueError):  # ValueError: a NUL byte in a path read from .git
            return None
    return None


def _mode(path: str | Path) -> int:
    """The st_mode of ``path`` (symlinks followed); 0 where Path.is_file and is_dir would
    say False without an error (missing, not a directory on the way, a symlink loop, a NUL
    byte)."""
    try:
        return os.stat(path).st_mode
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP):
            return 0
        raise
    except ValueError:
        return 0


def _common_dir(git: Path, reads: _GitReads) -> Path:
    try:
        text = reads.text(git / "commondir").strip()
    except OSError:
        return git
    return (git / text).resolve()
