"""bpffs helpers: where pins may live, what a pin holds, and removing pin trees."""

from __future__ import annotations

import enum
import os
from pathlib import Path

from orchestrator.ebpf import sys as _sys
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


def ensure_dir(path: str | os.PathLike[str], mode: int = 0o700) -> Path:
    """Create ``path`` (and parents) on bpffs; refuse if it would not be on bpffs."""
    p = Path(os.fspath(path))
    if bpffs_mount_of(p) is None:
        raise PinError(f"pin directory {p}: not on bpffs (mount -t bpf bpf /sys/fs/bpf)")
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


def remove_tree(path: str | os.PathLike[str]) -> list[str]:
    """Unpin everything under ``path`` and remove the directories; returns what it removed.

    Refuses to work outside bpffs, so a bad path can never delete ordinary files.
    """
    root = Path(os.fspath(path))
    if not root.exists():
        return []
    if not is_bpffs(root):
        raise PinError(f"remove {root}: not on bpffs; refusing to delete anything there")
    removed: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            target = os.path.join(dirpath, name)
            os.unlink(target)
            removed.append(target)
        for name in dirnames:
            os.rmdir(os.path.join(dirpath, name))
    os.rmdir(root)
    return removed
