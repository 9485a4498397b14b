"""Watching manifests and object files, and turning bursts of changes into one reconcile.

The watch uses watchdog's inotify observer: a thread blocked in ``read()`` on the inotify
fd, so an idle daemon costs no CPU (no polling). Directories are watched rather than files,
because the usual ways files change replace them:

- editors write a new file and rename it over the old one (and delete a backup);
- git writes files afresh and renames its index into place;
- Kubernetes mounts a ConfigMap as symlinks ``name -> ..data/name`` and swaps the
  ``..data`` symlink atomically to a new timestamped directory (``..2024_01_01_...``);
- ``make`` rewrites object files in place, often in several writes.

:class:`Debouncer` is pure (it is given the time) and holds two timestamps, whatever the
number of events, so memory stays bounded under an event storm.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.inotify import InotifyObserver

from orchestrator.ebpf.files import read_text
from orchestrator.manifest.loader import MANIFEST_MAX

_log = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".yaml", ".yml")
OVERFLOW = "<inotify queue overflow>"  # the path reported when events were lost
_INOTIFY_LOGGER = "watchdog.observers.inotify_c"
# libyaml when PyYAML has it: faster, and it bounds nesting instead of recursing
_Loader: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = getattr(
    yaml, "CSafeLoader", yaml.SafeLoader
)

# events that can change what a file holds; opens, reads and attribute changes cannot
_CONTENT_EVENTS = (
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    FileClosedEvent,  # close after write
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
)


class Debouncer:
    """Coalesces change notifications: :meth:`due` becomes true ``quiet`` seconds after the
    last change, or ``max_delay`` seconds after the first change of a burst that never goes
    quiet, whichever comes first. Not thread-safe by itself (the daemon holds a lock)."""

    def __init__(self, quiet: float, max_delay: float) -> None:
        if quiet < 0 or max_delay < quiet:
            raise ValueError(f"debounce: need 0 <= quiet ({quiet}) <= max_delay ({max_delay})")
        self.quiet = quiet
        self.max_delay = max_delay
        self._first: float | None = None
        self._last: float | None = None
        self.events = 0  # changes seen in the pending burst
        # the last burst taken: (its first change, its last change, when it was due), for
        # the daemon's latency figures
        self.taken: tuple[float, float, float] | None = None

    def touch(self, now: float) -> None:
        if self._first is None:
            self._first = now
        self._last = now
        self.events += 1

    @property
    def pending(self) -> bool:
        return self._first is not None

    def deadline(self) -> float | None:
        if self._first is None or self._last is None:
            return None
        return min(self._last + self.quiet, self._first + self.max_delay)

    def due(self, now: float) -> bool:
        deadline = self.deadline()
        return deadline is not None and now >= deadline

    def take(self, now: float) -> int:
        """If due, reset and return the number of changes coalesced; else 0."""
        deadline = self.deadline()
        if deadline is None or now < deadline:
            return 0
        assert self._first is not None and self._last is not None
        self.taken = (self._first, self._last, deadline)
        n = self.events
        self._first = self._last = None
        self.events = 0
        return n


def _norm(path: Path | str) -> Path:
    return Path(os.path.abspath(path))


@dataclass(frozen=True, slots=True)
class WatchSet:
    """What to watch and which events matter. ``manifest_dirs`` are watched recursively
    (manifest directories are read recursively); ``files`` are exact files whose parent
    directory is watched (manifest files given by name, and object files)."""

    manifest_dirs: frozenset[Path] = frozenset()
    files: frozenset[Path] = frozenset()

    @classmethod
    def build(cls, manifests: Iterable[Path], objects: Iterable[Path] = ()) -> WatchSet:
        dirs: set[Path] = set()
        files: set[Path] = set()
        for m in manifests:
            p = _norm(m)
            if p.is_dir():
                dirs.add(p)
            else:
                files.add(p)
        files.update(_norm(o) for o in objects)
        return cls(frozenset(dirs), frozenset(files))

    def directories(self) -> dict[Path, bool]:
        """Directory -> recursive, for the observer. Each manifest directory and every
        subdirectory the manifest loader reads (not hidden names, so not ``.git`` nor a
        ConfigMap's ``..data``: their changes show at the top) gets its own watch, and the
        parent of every file. Missing directories are skipped (a later reconcile attempt,
        after something changed, computes the set again)."""
        out: dict[Path, bool] = {}
        for d in sorted(self.manifest_dirs):
            for sub in _tree(d):
                out[sub] = False
        for f in self.files:
            if f.parent.is_dir():
                out.setdefault(f.parent, False)
        return out

    def relevant(self, path: str, is_directory: bool = False) -> bool:
        """Whether a change of ``path`` may change the desired state."""
        if not path:
            return False
        p = _norm(path)
        if p in self.files:
            return True
        if p.name.startswith(".."):  # a ConfigMap's ..data swap or its timestamped dirs
            return True
        if p.name.startswith(".") or p.name.endswith("~"):
            return False  # editor swap/backup files and git lock files
        for d in self.manifest_dirs:
            if p.is_relative_to(d):
                return is_directory or p.suffix in MANIFEST_SUFFIXES
        return False

    def event_relevant(self, event: FileSystemEvent) -> bool:
        if not isinstance(event, _CONTENT_EVENTS):
            return False
        paths = [_decode(event.src_path), _decode(getattr(event, "dest_path", "") or "")]
        return any(self.relevant(p, event.is_directory) for p in paths)


MAX_DIRECTORIES = 4096  # per manifest directory: bounds the inotify watches we take


def _tree(top: Path) -> list[Path]:
    """``top`` and its non-hidden subdirectories, symlinks followed once (like the
    manifest loader reads them)."""
    out: list[Path] = []
    seen: set[tuple[int, int]] = set()
    stack = [top]
    while stack and len(out) < MAX_DIRECTORIES:
        d = stack.pop()
        try:
            st = d.stat()
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = sorted(os.scandir(d), key=lambda e: e.name, reverse=True)
        except OSError:
            continue
        out.append(d)
        for e in entries:
            try:
                if not e.name.startswith(".") and e.is_dir():
                    stack.append(Path(e.path))
            except OSError:
                continue
    return out


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _decode(value: str | bytes) -> str:
    return os.fsdecode(value)


def referenced_objects(manifests: Iterable[Path]) -> frozenset[Path]:
    """Object files named by ``spec.object`` in the manifests, found by a lenient scan that
    never fails. Used to keep watching objects while the manifests do not validate (for
    example a manifest that names an object ``make`` has not built yet)."""
    files: list[Path] = []
    for m in manifests:
        p = _norm(m)
        if p.is_dir():
            for root, dirs, names in os.walk(p, followlinks=True):
                dirs[:] = [d for d in dirs if not d.startswith(".")]  # as the loader does
                files.extend(
                    Path(root) / n
                    for n in names
                    if n.endswith(MANIFEST_SUFFIXES) and not n.startswith(".")
                )
        else:
            files.append(p)
    out: set[Path] = set()
    for f in files:
        try:
            text = read_text(f, limit=MANIFEST_MAX, what="a manifest")  # never blocks
            docs = list(yaml.load_all(text, Loader=_Loader))
        except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
            continue
        for doc in docs:
            spec = doc.get("spec") if isinstance(doc, dict) else None
            obj = spec.get("object") if isinstance(spec, dict) else None
            if isinstance(obj, str) and obj:
                out.add(_norm(f.parent / obj))
    return frozenset(out)


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: FileWatcher) -> None:
        self._watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._watcher._event(event)


@dataclass
class FileWatcher:
    """Runs the inotify observer and calls ``on_change(path)`` (from the observer's
    thread) for every relevant change. :meth:`update` re-targets it.

    It also remembers which relevant files were written to and not closed yet
    (IN_MODIFY without IN_CLOSE_WRITE): :meth:`writing` lists them, so that the daemon
    never reads a file that a writer is still in the middle of (an editor saving in place,
    ``make`` writing an object, a slow copy)."""

    on_change: Callable[[str], None]
    _writing: dict[str, float] = field(default_factory=dict, init=False)
    _observer: InotifyObserver = field(default_factory=InotifyObserver, init=False)
    _watches: dict[tuple[Path, bool], object] = field(default_factory=dict, init=False)
    _inodes: dict[tuple[Path, bool], tuple[int, int]] = field(default_factory=dict, init=False)
    _gone: set[Path] = field(default_factory=set, init=False)  # watched dirs deleted/moved
    _adding: set[Path] = field(default_factory=set, init=False)  # being scheduled by update
    _set: WatchSet = field(default_factory=WatchSet, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _update_lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _started: bool = field(default=False, init=False)

    def start(self) -> None:
        logging.getLogger(_INOTIFY_LOGGER).addFilter(self._overflow)
        self._observer.daemon = True
        self._observer.start()
        self._started = True

    def stop(self) -> None:
        logging.getLogger(_INOTIFY_LOGGER).removeFilter(self._overflow)
        if self._started:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._started = False

    def _overflow(self, record: logging.LogRecord) -> bool:
        """The kernel's inotify queue overflowed and events were lost (watchdog only logs
        it): treat it as a change of everything, so the next reconcile reads all again."""
        if str(record.msg).startswith("Inotify queue overflowed"):
            self.on_change(OVERFLOW)
        return True

    @property
    def watch_set(self) -> WatchSet:
        return self._set

    @property
    def directories(self) -> tuple[tuple[Path, bool], ...]:
        with self._lock:
            return tuple(sorted(self._watches, key=str))

    def update(self, watch_set: WatchSet) -> int:
        """Watch exactly the directories ``watch_set`` needs (adds and removes watches);
        returns how many directories were added.

        Lock order: watchdog's dispatcher thread holds the observer's lock while it calls
        :meth:`_event`, which takes ``_lock``; so ``_lock`` is never held while calling into
        the observer (``schedule``/``unschedule`` take the observer's lock). The changes are
        worked out under ``_lock``, made outside it, and recorded under it again; updates
        are serialised by ``_update_lock``, which :meth:`_event` never takes."""
        wanted = set(watch_set.directories().items())
        added = 0
        with self._update_lock:
            with self._lock:
                # events from now on are judged against the new set, so a change in a
                # directory being added is not lost while its watch is set up
                self._set = watch_set
                drop: list[object] = []
                for key in list(self._watches):
                    # a directory replaced by another one of the same name (rm -r and
                    # mkdir, a checkout) lost its watch with the old one: watch it again
                    # (seen by its deletion event, or by a new inode number when that
                    # event was missed)
                    stale = key[0] in self._gone or _inode(key[0]) != self._inodes.get(key)
                    if key not in wanted or stale:
                        self._inodes.pop(key, None)
                        drop.append(self._watches.pop(key))
                # taken now: a deletion seen from here on is kept for the next update
                self._gone.clear()
                add = sorted(wanted - set(self._watches), key=str)
                # a deletion while a watch is being set up is remembered too
                self._adding = {d for d, _ in add}
            for watch in drop:
                with contextlib.suppress(KeyError):  # already gone with its inode
                    self._observer.unschedule(watch)  # type: ignore[arg-type]
            for key in add:
                directory, recursive = key
                try:
                    inode = _inode(directory)
                    # the filter also narrows the inotify mask: reads of a watched
                    # directory's files (IN_OPEN, IN_CLOSE_NOWRITE) never wake us
                    watch = self._observer.schedule(
                        _Handler(self),
                        str(directory),
                        recursive=recursive,
                        event_filter=list(_CONTENT_EVENTS),
                    )
                except OSError as err:
                    _log.warning(
                        "cannot watch %s: %s", directory, err, extra={"fields": {"dir": directory}}
                    )
                    continue
                with self._lock:
                    self._watches[key] = watch
                    if inode is not None:
                        self._inodes[key] = inode
                added += 1
            with self._lock:
                self._adding = set()
            dirs = self.directories
        _log.debug(
            "watching %d directories",
            len(dirs),
            extra={"fields": {"dirs": ",".join(str(d) for d, _ in dirs)}},
        )
        return added

    def writing(self, max_age: float, now: float | None = None) -> tuple[str, ...]:
        """Relevant files written to and not closed yet, for at most ``max_age`` seconds
        (a writer that keeps a file open longer is not waited for)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            for path, since in list(self._writing.items()):
                if now - since >= max_age:
                    del self._writing[path]
            return tuple(sorted(self._writing))

    def _event(self, event: FileSystemEvent) -> None:
        with self._lock:
            relevant = self._set.event_relevant(event)
            if event.is_directory and isinstance(event, DirDeletedEvent | DirMovedEvent):
                # its watch (and those below it) went with it; the same name may come back
                gone = Path(_decode(event.src_path))
                watched = [d for d, _ in self._watches] + list(self._adding)
                self._gone.update(d for d in watched if d.is_relative_to(gone))
            if relevant and not event.is_directory:
                src = _decode(event.src_path)
                if isinstance(event, FileModifiedEvent):
                    self._writing.setdefault(src, time.monotonic())
                elif isinstance(event, FileClosedEvent | FileDeletedEvent):
                    self._writing.pop(src, None)
                elif isinstance(event, FileMovedEvent):
                    self._writing.pop(src, None)
                    self._writing.pop(_decode(event.dest_path), None)
        if relevant:
            self.on_change(_decode(getattr(event, "dest_path", "") or event.src_path))
