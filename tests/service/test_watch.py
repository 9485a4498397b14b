"""Debouncing (pure) and the inotify watcher on real directories: editors' renames, git's
atomic renames, a Kubernetes ConfigMap ``..data`` swap, object rebuilds, and noise."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.service.watch import Debouncer, FileWatcher, WatchSet, referenced_objects
from tests.service.helpers import replace_file, wait_until


def test_debouncer_quiet_period() -> None:
    d = Debouncer(0.1, 1.0)
    assert d.deadline() is None and not d.due(100.0) and d.take(100.0) == 0
    d.touch(10.0)
    d.touch(10.05)
    assert d.deadline() == pytest.approx(10.15)
    assert not d.due(10.1) and d.take(10.1) == 0
    assert d.taken is None  # nothing taken yet
    assert d.take(10.16) == 2
    assert not d.pending and d.deadline() is None
    assert d.taken == pytest.approx((10.0, 10.05, 10.15))  # the burst and when it was due


def test_debouncer_max_delay_bounds_a_storm() -> None:
    d = Debouncer(0.1, 0.5)
    t = 0.0
    fired = []
    while t < 2.0:  # an event every 10 ms for 2 s never goes quiet
        d.touch(t)
        if d.take(t):
            fired.append(round(t, 2))
        t += 0.01
    assert fired == [0.5, 1.01, 1.52]
    assert d.taken is not None and d.taken[2] == pytest.approx(d.taken[0] + 0.5)  # max_delay
    assert d.pending


def test_debouncer_rejects_bad_windows() -> None:
    with pytest.raises(ValueError):
        Debouncer(1.0, 0.5)
    with pytest.raises(ValueError):
        Debouncer(-1, 1)


def test_relevance(tmp_path: Path) -> None:
    mdir = tmp_path / "m"
    mdir.mkdir()
    single = tmp_path / "single.yaml"
    obj = tmp_path / "bpf" / "x.o"
    ws = WatchSet.build([mdir, single], [obj])
    assert ws.manifest_dirs == {mdir} and ws.files == {single, obj}
    assert ws.relevant(str(mdir / "a.yaml")) and ws.relevant(str(mdir / "sub" / "b.yml"))
    assert ws.relevant(str(single)) and ws.relevant(str(obj))
    assert ws.relevant(str(mdir / "..data")) and ws.relevant(str(tmp_path / "..data"))
    assert ws.relevant(str(mdir / "sub"), is_directory=True)
    for noise in (".a.yaml.swp", "a.yaml~", "4913", "notes.txt", ".git", "index.lock"):
        assert not ws.relevant(str(mdir / noise)), noise
    assert not ws.relevant(str(tmp_path / "other.yaml"))
    assert not ws.relevant(str(tmp_path / "bpf" / "y.o"))
    assert not ws.relevant("")


def test_directories_to_watch(tmp_path: Path) -> None:
    mdir = tmp_path / "m"
    (mdir / "objs").mkdir(parents=True)
    (mdir / ".git" / "objects").mkdir(parents=True)  # hidden: not read, not watched
    (mdir / "..2026_01_01").mkdir()
    (tmp_path / "bpf").mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", mdir / "linked")  # followed, as the loader does
    os.symlink(mdir, mdir / "objs" / "loop")  # a loop is watched once
    ws = WatchSet.build([mdir], [tmp_path / "bpf" / "x.o", mdir / "objs" / "y.o"])
    assert ws.directories() == {
        mdir: False,
        mdir / "linked": False,
        mdir / "objs": False,
        tmp_path / "bpf": False,
    }
    # a missing directory is skipped
    assert WatchSet.build([tmp_path / "nope.yaml"], [tmp_path / "gone" / "z.o"]).directories() == {
        tmp_path: False
    }


def test_referenced_objects_is_lenient(tmp_path: Path) -> None:
    (tmp_path / "m" / "..data").mkdir(parents=True)
    (tmp_path / "m" / "a.yaml").write_text("spec: {object: ../bpf/a.o}\n---\nspec: {object: b.o}\n")
    (tmp_path / "m" / "broken.yaml").write_text("spec: [\n")
    (tmp_path / "m" / "..data" / "hidden.yaml").write_text("spec: {object: hidden.o}\n")
    (tmp_path / "m" / "list.yaml").write_text("- 1\n")
    assert referenced_objects([tmp_path / "m", tmp_path / "absent.yaml"]) == {
        tmp_path / "bpf" / "a.o",
        tmp_path / "m" / "b.o",
    }


class Recorder:
    def __init__(self) -> None:
        self.paths: list[str] = []
        self.cond = threading.Condition()

    def __call__(self, path: str) -> None:
        with self.cond:
            self.paths.append(path)
            self.cond.notify_all()

    def wait(self, n: int = 1, timeout: float = 5.0) -> list[str]:
        wait_until(lambda: len(self.paths) >= n, timeout, f"{n} change(s), got {self.paths}")
        return self.paths

    def settle(self, seconds: float = 0.3) -> list[str]:
        time.sleep(seconds)
        with self.cond:
            out, self.paths = self.paths, []
        return out


@pytest.fixture
def watcher() -> Iterator[tuple[FileWatcher, Recorder]]:
    rec = Recorder()
    w = FileWatcher(rec)
    w.start()
    try:
        yield w, rec
    finally:
        w.stop()


def test_editor_and_git_writes_are_seen_noise_is_not(
    tmp_path: Path, watcher: tuple[FileWatcher, Recorder]
) -> None:
    w, rec = watcher
    mdir = tmp_path / "m"
    mdir.mkdir()
    a = mdir / "a.yaml"
    a.write_text("1")
    assert w.update(WatchSet.build([mdir])) == 1
    assert w.directories == ((mdir, False),)
    # vim: backup by rename, write anew, delete the backup
    os.rename(a, mdir / "a.yaml~")
    a.write_text("2")
    os.unlink(mdir / "a.yaml~")
    wait_until(lambda: str(a) in rec.paths, 5, "the vim save")
    rec.settle(0.7)  # (watchdog holds an unpaired rename for 0.5 s)
    # git: write a lock file, rename it into place
    replace_file(a, "3")
    wait_until(lambda: str(a) in rec.paths, 5, "the git write")
    # a new subdirectory (git checkout of another branch) is a change, then watched too
    (mdir / "sub").mkdir()
    wait_until(lambda: str(mdir / "sub") in rec.paths, 5, "the new directory")
    assert w.update(WatchSet.build([mdir])) == 1
    (mdir / "sub" / "b.yaml").write_text("x")
    wait_until(lambda: str(mdir / "sub" / "b.yaml") in rec.paths, 5, "the new file")
    rec.settle(0.7)
    # noise: swap files, other suffixes, reading
    (mdir / ".a.yaml.swp").write_text("x")
    (mdir / "README.md").write_text("x")
    a.read_text()
    os.utime(a)
    assert rec.settle() == []


def test_configmap_data_swap(tmp_path: Path, watcher: tuple[FileWatcher, Recorder]) -> None:
    """The kubelet's atomic update: a new timestamped dir, a ``..data_tmp`` symlink renamed
    over ``..data``; the visible files are symlinks through ``..data``."""
    w, rec = watcher
    mdir = tmp_path / "cm"
    (mdir / "..2026_01_01_00_00_00.1").mkdir(parents=True)
    (mdir / "..2026_01_01_00_00_00.1" / "x.yaml").write_text("v1")
    os.symlink("..2026_01_01_00_00_00.1", mdir / "..data")
    os.symlink("..data/x.yaml", mdir / "x.yaml")
    w.update(WatchSet.build([mdir / "x.yaml"]))  # a manifest named as a file in the mount
    assert w.directories == ((mdir, False),)
    new = mdir / "..2026_01_01_00_01_00.2"
    new.mkdir()
    (new / "x.yaml").write_text("v2")
    os.symlink(new.name, mdir / "..data_tmp")
    os.rename(mdir / "..data_tmp", mdir / "..data")
    wait_until(lambda: str(mdir / "..data") in rec.paths, 5, "the ..data swap")
    assert (mdir / "x.yaml").read_text() == "v2"


def test_object_rebuild_is_seen_and_update_retargets(
    tmp_path: Path, watcher: tuple[FileWatcher, Recorder]
) -> None:
    w, rec = watcher
    (tmp_path / "m").mkdir()
    bpf = tmp_path / "bpf"
    bpf.mkdir()
    obj = bpf / "x.o"
    obj.write_bytes(b"\x7fELF")
    w.update(WatchSet.build([tmp_path / "m"], [obj]))
    with obj.open("r+b") as f:  # make rewrites in place
        f.write(b"\x7fELF\x02")
    assert str(obj) in rec.wait()
    rec.settle()
    (bpf / "y.o").write_bytes(b"")  # not referenced
    assert rec.settle() == []
    w.update(WatchSet.build([tmp_path / "m"]))  # object no longer referenced: unwatched
    assert w.directories == ((tmp_path / "m", False),)
    obj.write_bytes(b"\x7fELF\x03")
    assert rec.settle() == []


def _other_threads_switches() -> int:
    total = 0
    for task in Path("/proc/self/task").iterdir():
        if int(task.name) == threading.get_native_id():
            continue
        for line in (task / "status").read_text().splitlines():
            if "ctxt_switches" in line:
                total += int(line.split()[1])
    return total


def test_reading_watched_files_does_not_wake_the_watcher(
    tmp_path: Path, watcher: tuple[FileWatcher, Recorder]
) -> None:
    """Loading manifests and objects opens them (also other tools do): the inotify mask
    leaves out opens and read-only closes, so the watcher's threads stay asleep."""
    w, rec = watcher
    obj = tmp_path / "x.o"
    obj.write_bytes(b"\x7fELF")
    w.update(WatchSet.build([tmp_path / "m.yaml"], [obj]))
    time.sleep(0.2)
    before = _other_threads_switches()
    for _ in range(200):
        obj.read_bytes()
    time.sleep(0.2)
    assert _other_threads_switches() - before < 10
    assert rec.settle(0.1) == []
    obj.write_bytes(b"\x7fELF\x02")  # while a write still wakes it
    assert rec.wait() == [str(obj)] * len(rec.paths)


def test_a_replaced_directory_is_watched_again(
    tmp_path: Path, watcher: tuple[FileWatcher, Recorder]
) -> None:
    w, rec = watcher
    mdir = tmp_path / "m"
    (mdir / "sub").mkdir(parents=True)
    assert w.update(WatchSet.build([mdir])) == 2
    (mdir / "sub").rmdir()
    (mdir / "sub").mkdir()  # same name, new inode: the old watch went with the old one
    wait_until(lambda: str(mdir / "sub") in rec.paths, 5, "the new directory")
    assert w.update(WatchSet.build([mdir])) == 1
    (mdir / "sub" / "x.yaml").write_text("1")
    wait_until(lambda: str(mdir / "sub" / "x.yaml") in rec.paths, 5, "a file in it")


def test_lost_events_count_as_a_change(watcher: tuple[FileWatcher, Recorder]) -> None:
    """watchdog only logs an inotify queue overflow; the watcher turns it into a change
    (the kernel's queue cannot be overflowed here without changing a global sysctl, so
    the test sends watchdog's own message)."""
    import logging

    from orchestrator.service.watch import OVERFLOW

    w, rec = watcher
    logging.getLogger("watchdog.observers.inotify_c").warning(
        "Inotify queue overflowed; filesystem events were lost"
    )
    assert rec.paths == [OVERFLOW]
    w.stop()  # stopped: no longer listening
    logging.getLogger("watchdog.observers.inotify_c").warning("Inotify queue overflowed")
    assert rec.paths == [OVERFLOW]


def test_updates_while_events_fire_never_deadlock(tmp_path: Path) -> None:
    """watchdog's dispatcher holds the observer's lock while it hands an event to the
    watcher; an update that called the observer under the watcher's own lock deadlocked
    with it. Directories are replaced and re-watched while a writer keeps events coming;
    a deadlock fails within seconds (the watcher is stopped under a deadline too, since a
    deadlocked observer cannot be stopped)."""
    import contextlib
    import shutil

    from tests.deadline import promptly

    mdir = tmp_path / "m"
    subs = [mdir / f"s{i}" for i in range(4)]
    for s in subs:
        s.mkdir(parents=True)
    rec = Recorder()
    w = FileWatcher(rec)
    w.start()
    stop = threading.Event()

    def write() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            for d in (mdir, *subs):
                with contextlib.suppress(OSError):  # replaced at that moment
                    (d / "w.yaml").write_text(str(n))
            time.sleep(0)

    def replace_and_update() -> None:
        for i in range(150):
            s = subs[i % len(subs)]
            shutil.rmtree(s, ignore_errors=True)
            s.mkdir(exist_ok=True)
            (s / "new.yaml").write_text(str(i))
            w.update(WatchSet.build([mdir]))

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        promptly(lambda: w.update(WatchSet.build([mdir])), 10)
        promptly(replace_and_update, 30)
        stop.set()
        writer.join(5)
        # the last replacement's deletion event may come after its update (the inode number
        # can be reused): the daemon updates again after the change it reports, so does this
        rec.settle(0.3)
        promptly(lambda: w.update(WatchSet.build([mdir])), 10)
        # every directory is watched (again) and still delivers its changes
        assert promptly(lambda: w.directories, 5) == tuple((d, False) for d in [mdir, *subs])
        for s in subs:
            (s / "after.yaml").write_text("x")
            wait_until(lambda s=s: str(s / "after.yaml") in rec.paths, 5, f"a change in {s}")
    finally:
        stop.set()
        promptly(w.stop, 10)
