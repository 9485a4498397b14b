"""Escapes: a manifest can never make bpforch remove or replace a pin it does not own, and a
substitution source must really be a pin on bpffs."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from orchestrator.ebpf import Map, MapSpec, MapType
from orchestrator.manifest.model import DesiredState
from orchestrator.reconcile import PlanError
from tests.reconcile.conftest import Env, pins_under

pytestmark = pytest.mark.kernel


def user_manifest(env: Env, pinned: Path) -> None:
    env.write(
        "user",
        f"""
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {{name: shared-user}}
        spec:
          object: @BPF@/shared_user.o
          maps:
            shared_stats:
              from: {{pinned: {pinned}}}
          attach:
            - program: count_gettid
              tracepoint: {{group: syscalls, name: sys_enter_gettid}}
        """,
    )


def foreign_map(path: Path) -> Map:
    spec = MapSpec("shared_stats", MapType.ARRAY, 4, 8, 4)
    m = Map.create(spec)
    m.pin(path)
    return m


def test_pinned_substitution_reads_a_foreign_pin_but_never_removes_it(
    env: Env, pin_dir: Path, fd_guard: None
) -> None:
    foreign = pin_dir / "foreign_stats"
    with foreign_map(foreign) as m:
        foreign_id = m.id
        user_manifest(env, foreign)
        r = env.reconciler()
        r.apply(env.desired())
        st = r.status().get("shared-user")
        assert st is not None and st.condition == "Ready"
        assert st.map("shared_stats").id == foreign_id
        assert st.map("shared_stats").source == f"pinned:{foreign}"
        assert "maps/shared_stats" not in pins_under(env.root / "shared-user")
        import ctypes

        before = int.from_bytes(m[1], "little")  # type: ignore[arg-type]
        ctypes.CDLL(None, use_errno=True).syscall(186)  # gettid (x86_64)
        assert int.from_bytes(m[1], "little") > before  # type: ignore[arg-type]
        r.destroy()
        assert foreign.exists()  # destroy left the foreign pin alone
        with Map.from_pin(foreign) as again:
            assert again.id == foreign_id
    assert pins_under(env.root) == []


def test_pinned_substitution_through_a_symlink_out_of_bpffs_is_refused(
    env: Env, pin_dir: Path, tmp_path: Path, fd_guard: None
) -> None:
    target = tmp_path / "not-a-pin"
    target.write_text("x")
    link = pin_dir / "sneaky"
    os.symlink(target, link)
    user_manifest(env, link)
    r = env.reconciler()
    desired = env.desired()  # the manifest only sees /sys/fs/bpf/...: lexically fine
    p = r.plan(desired)
    assert len(p.problems) == 1
    text = str(p.problems[0])
    assert f"pinned map {link} (resolves to {target}) is not on a bpf file system" in text
    assert "user.yaml:" in text
    with pytest.raises(PlanError) as info:
        r.apply(desired)
    assert "nothing was changed" in str(info.value)
    assert pins_under(env.root) == []
    assert target.read_text() == "x"


def test_a_missing_pinned_source_is_refused(env: Env, pin_dir: Path) -> None:
    user_manifest(env, pin_dir / "nothing-here")
    p = env.reconciler().plan(env.desired())
    assert "does not exist" in str(p.problems[0])


def test_collection_names_cannot_leave_the_root(env: Env, pin_dir: Path, fd_guard: None) -> None:
    """The manifest refuses such names; a desired state built by hand is refused by the plan
    before anything is created."""
    user_manifest(env, pin_dir / "x")
    desired = env.desired()
    (only,) = desired.collections.values()
    victim = pin_dir / "victim"
    victim.mkdir()
    for bad in ("../victim", "_staging-1", "..", "UPPER"):
        evil = dataclasses.replace(only, name=bad, maps={})
        state = DesiredState({bad: evil})
        with pytest.raises(PlanError) as info:
            env.reconciler().apply(state)
        assert "not a DNS label" in str(info.value)
    assert list(victim.iterdir()) == []
    assert pins_under(env.root) == []


def test_destroy_refuses_what_it_does_not_own(env: Env, pin_dir: Path) -> None:
    (env.root / "someone-else" / "stuff").mkdir(parents=True)
    with pytest.raises(PlanError) as info:
        env.reconciler().destroy(["someone-else"])
    assert "not applied by bpforch" in str(info.value)
    env.reconciler().destroy()  # everything owned: nothing, and the foreign dir stays
    assert (env.root / "someone-else" / "stuff").is_dir()
    (env.root / "someone-else" / "stuff").rmdir()
    (env.root / "someone-else").rmdir()


def test_a_replaced_substitution_source_is_drift_and_rebound(
    env: Env, pin_dir: Path, fd_guard: None
) -> None:
    foreign = pin_dir / "foreign_stats"
    with foreign_map(foreign) as first:
        user_manifest(env, foreign)
        r = env.reconciler()
        r.apply(env.desired())
        st = r.status().get("shared-user")
        assert st is not None and st.map("shared_stats").id == first.id
        os.unlink(foreign)
        with foreign_map(foreign) as second:
            st = r.status().get("shared-user")
            assert st is not None and st.condition == "Drifted"
            assert f"now holds map id {second.id}" in st.message
            r.apply(env.desired())
            st = r.status().get("shared-user")
            assert st is not None and st.condition == "Ready"
            assert st.map("shared_stats").id == second.id
            os.unlink(foreign)
            st = r.status().get("shared-user")
            assert st is not None and "substitution source" in st.message
            assert "is gone" in st.message
        r.destroy()
