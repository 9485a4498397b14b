"""orchestrator._gc: the collector paused around load_manifests and observe, and restored."""

from __future__ import annotations

import gc
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator._gc import freeze_bursts, gc_paused
from orchestrator.manifest import ManifestError, load_manifests


@pytest.fixture
def gc_state() -> Iterator[None]:
    was = gc.isenabled()
    try:
        yield
    finally:
        if was:
            gc.enable()
        else:
            gc.disable()


def test_paused_inside_and_enabled_after(gc_state: None) -> None:
    gc.enable()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_nested_pauses_enable_once_the_outer_ends(gc_state: None) -> None:
    gc.enable()
    with gc_paused():
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_caller_that_disabled_the_collector_keeps_it_disabled(gc_state: None) -> None:
    gc.disable()
    with gc_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_enabled_again_after_an_exception(gc_state: None) -> None:
    gc.enable()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_overlapping_pauses_in_threads_enable_when_the_last_ends(gc_state: None) -> None:
    gc.enable()
    entered, release = threading.Event(), threading.Event()

    def other() -> None:
        with gc_paused():
            entered.set()
            release.wait(10)

    t = threading.Thread(target=other)
    with gc_paused():
        t.start()
        assert entered.wait(10)
    assert not gc.isenabled()  # the other thread's pause is still running
    release.set()
    t.join(10)
    assert gc.isenabled()


def test_load_manifests_restores_the_collector_on_success_and_on_error(
    tmp_path: Path, gc_state: None
) -> None:
    gc.enable()
    (tmp_path / "bad.yaml").write_text("apiVersion: bpforch.dev/v1\nkind: Collection\n")
    with pytest.raises(ManifestError):
        load_manifests([tmp_path])
    assert gc.isenabled()
    (tmp_path / "bad.yaml").unlink()
    load_manifests([tmp_path], check_objects=False)
    assert gc.isenabled()


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    try:
        yield
    finally:
        freeze_bursts(False)
        gc.unfreeze()


def test_a_pause_freezes_its_burst_only_once_freezing_is_asked_for(
    gc_state: None, unfrozen: None
) -> None:
    gc.enable()
    with gc_paused():
        kept = [[i] for i in range(1000)]
    assert gc.get_freeze_count() == 0
    freeze_bursts()
    with gc_paused():
        with gc_paused():
            kept += [[i] for i in range(1000)]
        assert gc.get_freeze_count() == 0  # not before the last pause ends
    assert gc.get_freeze_count() >= 2000
    assert gc.isenabled()


def test_only_a_bounded_verb_of_a_one_shot_command_freezes(
    tmp_path: Path, gc_state: None, unfrozen: None
) -> None:
    from orchestrator import cli

    gc.enable()
    out = io.StringIO()
    assert cli.main(["validate", str(tmp_path)], out, out) == 0
    assert gc.get_freeze_count() == 0  # in process (a test, the daemon's helpers): never
    assert cli.main(["completion", "bash"], out, out, one_shot=True) == 0
    with gc_paused():  # not a bounded verb: later pauses in the process freeze nothing
        kept = [[i] for i in range(100)]
    assert gc.get_freeze_count() == 0 and len(kept) == 100
    assert cli.main(["validate", str(tmp_path)], out, out, one_shot=True) == 0
    assert gc.get_freeze_count() > 0
    assert gc.isenabled()
