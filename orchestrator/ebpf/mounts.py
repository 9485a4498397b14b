"""Where the kernel's file systems for BPF are mounted: cgroup v2, bpffs and tracefs.

Read from ``/proc/self/mountinfo`` (proc(5)), never assumed: hosts differ. A systemd host
with the hybrid layout has cgroup v2 at ``/sys/fs/cgroup/unified``, a current distribution
mounts it alone at ``/sys/fs/cgroup``, and a container sees what its runtime mounted.

A mount counts only if it is *visible*: not covered by another mount on the same mount point
(the mount on top is what a path reaches), and, when the real table is read, the file
system found at its mount point has the expected magic (``statfs(2)``), which also skips a
mount hidden below a later mount on one of its parent directories. Among visible mounts the
first in the table wins (the one the system made at boot); for cgroup v2 a mount of the
whole hierarchy (root ``/``) comes before a mount of a subtree.

Successful lookups are cached per process and checked again (one ``statfs``) on every use,
so a file system mounted after the process started is found, and one that moved away is
looked up again.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from orchestrator.ebpf import _statfs
from orchestrator.ebpf.errors import MountNotFoundError

MOUNTINFO = Path("/proc/self/mountinfo")
MOUNTINFO_MAX = 64 << 20  # bytes: a node with thousands of container mounts stays far below

CGROUP2_SUPER_MAGIC = 0x63677270
BPF_FS_MAGIC = _statfs.BPF_FS_MAGIC
TRACEFS_MAGIC = 0x74726163
DEBUGFS_MAGIC = 0x64626720

_MAGIC = {"cgroup2": CGROUP2_SUPER_MAGIC, "bpf": BPF_FS_MAGIC, "tracefs": TRACEFS_MAGIC}

# What to tell someone whose machine lacks the file system (the usual mount point).
_HINTS = {
    "cgroup2": ("cgroup v2", "mount -t cgroup2 none /sys/fs/cgroup"),
    "bpf": ("bpffs", "mount -t bpf bpf /sys/fs/bpf"),
    "tracefs": ("tracefs", "mount -t tracefs tracefs /sys/kernel/tracing"),
}


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of mountinfo: ``root`` is the directory of the file system that is mounted
    (``/`` for all of it), ``point`` where it is mounted."""

    id: int
    parent: int
    root: str
    point: Path
    fstype: str
    source: str


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as ``\\ooo`` (octal)."""
    if "\\" not in field:
        return field
    out = []
    i = 0
    while i < len(field):
        c = field[i]
        octal = field[i + 1 : i + 4]
        if c == "\\" and len(octal) == 3 and all(ch in "01234567" for ch in octal):
            out.append(chr(int(octal, 8)))
            i += 4
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> tuple[Mount, ...]:
    """Every mount of a mountinfo text, in its order; malformed lines are skipped."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            dash = fields.index("-", 6)
            mounts.append(
                Mount(
                    id=int(fields[0]),
                    parent=int(fields[1]),
                    root=_unescape(fields[3]),
                    point=Path(_unescape(fields[4])),
                    fstype=fields[dash + 1],
                    source=_unescape(fields[dash + 2]) if len(fields) > dash + 2 else "",
                )
            )
        except (ValueError, IndexError):
            continue
    return tuple(mounts)


def visible(mounts: tuple[Mount, ...], fstype: str) -> list[Mount]:
    """Mounts of ``fstype`` not covered by a mount on the same point, preferred first."""
    covered = {(m.parent, m.point) for m in mounts}
    found = [m for m in mounts if m.fstype == fstype and (m.id, m.point) not in covered]
    if fstype == "cgroup2":  # the whole hierarchy before a subtree (a container's view)
        found.sort(key=lambda m: m.root != "/")
    return found


def _has_magic(path: Path, magic: int) -> bool:
    try:
        return _statfs.fs_magic(os.fspath(path)) == magic
    except OSError:
        return False


def read_mountinfo(path: Path = MOUNTINFO) -> str:
    """The mount table of this process (its mount namespace)."""
    with path.open("rb") as f:
        return f.read(MOUNTINFO_MAX).decode("utf-8", "surrogateescape")


_lock = threading.Lock()
_cache: dict[str, Path] = {}


def _lookup(fstype: str, mountinfo: str | None) -> Path | None:
    if mountinfo is not None:  # a given table (tests, another namespace's): no statfs
        found = visible(parse_mountinfo(mountinfo), fstype)
        return found[0].point if found else None
    magic = _MAGIC[fstype]
    with _lock:
        cached = _cache.get(fstype)
    if cached is not None and _has_magic(cached, magic):
        return cached
    try:
        text = read_mountinfo()
    except OSError:
        return None
    for m in visible(parse_mountinfo(text), fstype):
        if _has_magic(m.point, magic):
            with _lock:
                _cache[fstype] = m.point
            return m.point
    return None


def clear_cache() -> None:
    """Forget the cached mount points (the next lookup reads mountinfo again)."""
    with _lock:
        _cache.clear()


def _missing(fstype: str) -> MountNotFoundError:
    what, hint = _HINTS[fstype]
    return MountNotFoundError(f"{what} is not mounted ({hint})", fstype)


def find_mount(fstype: str, mountinfo: str | None = None) -> Path | None:
    """The preferred visible mount point of ``fstype`` (``cgroup2``, ``bpf``, ``tracefs``),
    or None. ``mountinfo``: parse this text instead of this process's table."""
    if fstype not in _MAGIC:
        raise ValueError(f"find_mount: unknown file system type {fstype!r}")
    return _lookup(fstype, mountinfo)


def cgroup2_root(mountinfo: str | None = None) -> Path:
    """The mount point of the cgroup v2 hierarchy; :class:`MountNotFoundError` if none."""
    found = _lookup("cgroup2", mountinfo)
    if found is None:
        raise _missing("cgroup2")
    return found


def bpffs_root(mountinfo: str | None = None) -> Path:
    """The mount point of bpffs (the first one mounted); :class:`MountNotFoundError` if
    none."""
    found = _lookup("bpf", mountinfo)
    if found is None:
        raise _missing("bpf")
    return found


def bpffs_mounts(mountinfo: str | None = None) -> list[Path]:
    """Every visible bpffs mount point, preferred first (empty if none)."""
    text = mountinfo if mountinfo is not None else _safe_read()
    found = visible(parse_mountinfo(text), "bpf")
    if mountinfo is None:
        found = [m for m in found if _has_magic(m.point, BPF_FS_MAGIC)]
    return [m.point for m in found]


def _safe_read() -> str:
    try:
        return read_mountinfo()
    except OSError:
        return ""


def tracefs_root(mountinfo: str | None = None) -> Path:
    """Where tracefs is (its ``events/`` directory is below): a tracefs mount, else the
    ``tracing`` directory of a debugfs mount, which the kernel mounts tracefs on when it is
    first reached. :class:`MountNotFoundError` if neither."""
    found = _lookup("tracefs", mountinfo)
    if found is not None:
        return found
    text = mountinfo if mountinfo is not None else _safe_read()
    for m in visible(parse_mountinfo(text), "debugfs"):
        tracing = m.point / "tracing"
        if mountinfo is not None or _has_magic(tracing, TRACEFS_MAGIC):
            return tracing
    raise _missing("tracefs")


def default_bpffs_root(name: str = "bpforch") -> Path:
    """``<bpffs mount>/<name>``; under ``/sys/fs/bpf`` (where the error will say to mount
    bpffs) when bpffs is not mounted."""
    found = _lookup("bpf", None)
    return (found if found is not None else Path("/sys/fs/bpf")) / name


__all__ = [
    "Mount",
    "bpffs_mounts",
    "bpffs_root",
    "cgroup2_root",
    "clear_cache",
    "default_bpffs_root",
    "find_mount",
    "parse_mountinfo",
    "read_mountinfo",
    "tracefs_root",
    "visible",
]
