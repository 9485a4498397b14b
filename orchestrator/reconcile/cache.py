"""What observe may remember between runs of one process (the daemon's reconciles), and the
keys that say it still holds.

Nothing here stands in for reading the kernel back: every link that can be detached or
switched to another program while its pin stays is still opened and its info read on each
observe, and every recorded pin is still compared with the directory entry's inode. What
is remembered is only what a cheap and exact key proves unchanged:

- **the record**: parsed once per content; the file is read every time and its bytes
  compared (equal bytes parse to the equal record);
- **a collection directory's listing** (the names, types and inodes of its entries and of
  its ``maps``/``progs``/``links`` subdirectories): reused when each directory's stamp
  (device, inode, mtime and ctime: a statx of the directory, which also says whether it is
  a mount point now, and an fstatat of each subdirectory) is what it was when the listing
  was read. The kernel sets those times whenever an entry is added, removed or renamed;
  bpffs takes them from the coarse clock, so a listing is remembered only when its
  directories were last changed a second or more before it was read (any later change
  then gets other times; see :func:`~orchestrator.ebpf.inspect.settled`);
- **what a link's info said**, for the kinds of links whose program and hook can't change
  (:data:`FIXED_LINKS`): kept with the listing, for the pin's inode. While the listing
  holds, that pin is the same inode, so the same link. Every other link (xdp, tcx, cgroup,
  netns: switched in place or detached while pinned) is read on each observe.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from orchestrator.ebpf.inspect import DirStamp
from orchestrator.reconcile.state import Foreign, StateRecord

# Links whose program and hook are fixed for the link's life: perf_event (tracepoint,
# uprobe) and raw_tp links support neither BPF_LINK_UPDATE nor BPF_LINK_DETACH (they go with
# their last fd and pin). What their info said stays true while their pin is the same inode.
FIXED_LINKS = frozenset({"tracepoint", "raw_tracepoint", "uprobe"})
MAX_TREES = 65536  # a bound, far above any real root (one entry per collection)


SubStamp = tuple[int, int, int, int]  # st_dev, st_ino, st_mtime_ns, st_ctime_ns


def sub_stamp(st: os.stat_result) -> SubStamp:
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns


@dataclass(frozen=True, slots=True)
class Listing:
    """A collection directory read without following a symlink: its stamp, one per
    subdirectory listed, the entries of each subdirectory, whether it has its ownership
    marker, and what in it is foreign."""

    stamp: DirStamp
    subs: tuple[tuple[str, SubStamp], ...]
    entries: dict[str, dict[str, os.DirEntry[str]]]
    marked: bool
    foreign: tuple[Foreign, ...]
    # link pin name -> (pin inode, link id, program id) of a link of a kind the kernel can
    # neither switch to another program nor detach (FIXED_LINKS), as read through that pin
    links: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    def still(self, top: DirStamp, cfd: int) -> bool:
        """Whether the directory (stamped ``top`` now, ``cfd`` open) and each of its
        subdirectories have the stamps they had when this listing was read."""
        if top != self.stamp:
            return False
        for sub, was in self.subs:
            try:
                st = os.stat(sub, dir_fd=cfd, follow_symlinks=False)
            except OSError:
                return False
            if sub_stamp(st) != was:
                return False
        return True


class ObserveCache:
    """The record and the collection listings one observe read, for the next observe of
    the same root and state directory (a :class:`~orchestrator.reconcile.Reconciler` keeps
    one). ``hits`` counts the listings reused."""

    def __init__(self) -> None:
        # the bytes last read and their record, set together (one reference: a reader in
        # another thread never pairs one's bytes with the other's record)
        self._record: tuple[bytes, StateRecord] | None = None
        self.trees: dict[str, Listing] = {}
        self.root: tuple[int, int] | None = None  # (st_dev, st_ino) of the root they are under
        self.hits = 0

    def for_root(self, root_fd: int) -> None:
        """Forget the listings if the root is another directory than last time (the same
        path, made again)."""
        st = os.fstat(root_fd)
        key = (st.st_dev, st.st_ino)
        if self.root != key:
            self.trees.clear()
            self.root = key

    def remember(self, name: str, listing: Listing) -> None:
        if len(self.trees) >= MAX_TREES and name not in self.trees:
            self.trees.clear()
        self.trees[name] = listing

    def parsed(self, raw: bytes) -> StateRecord | None:
        """The record parsed from exactly these bytes before, if any."""
        known = self._record
        if known is not None and known[0] == raw:
            return known[1]
        return None

    def keep_record(self, raw: bytes, record: StateRecord) -> None:
        self._record = (raw, record)

    def clear(self) -> None:
        self._record = None
        self.trees.clear()


class IdentityMemo:
    """Results computed from objects that are never changed once made (parsed BTF types,
    the object store's parsed specs), keyed by the objects' identity. The memo holds the
    objects, so an id can't be reused for another object while its result is remembered;
    bounded (cleared when full)."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._memo: dict[tuple[int, ...], tuple[tuple[object, ...], object]] = {}

    def get(self, objs: tuple[object, ...], extra: tuple[object, ...] = ()) -> object | None:
        hit = self._memo.get((*map(id, objs), hash(extra)))
        if hit is None or len(hit[0]) != len(objs) + 1 or hit[0][-1] != extra:
            return None
        if any(a is not b for a, b in zip(hit[0], objs, strict=False)):
            return None
        return hit[1]

    def put(self, objs: tuple[object, ...], extra: tuple[object, ...], value: object) -> None:
        if len(self._memo) >= self.size:
            self._memo.clear()
        self._memo[(*map(id, objs), hash(extra))] = ((*objs, extra), value)


__all__ = ["FIXED_LINKS", "IdentityMemo", "Listing", "ObserveCache", "SubStamp", "sub_stamp"]
