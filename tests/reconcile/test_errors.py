"""Error paths of the reconciler: each gives a clear message, and changes nothing."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.ebpf.mounts import bpffs_mounts
from orchestrator.manifest.model import DesiredState, TcTarget, XdpMode
from orchestrator.reconcile import ApplyError, Reconciler, StateError
from tests.netns import VethPair
from tests.reconcile.conftest import Env, pins_under
from tests.reconcile.test_apply import tc_manifest, xdp_manifest

pytestmark = pytest.mark.kernel


def one(env: Env) -> DesiredState:
    return env.desired()


def with_collection(state: DesiredState, **changes: object) -> DesiredState:
    (c,) = state.collections.values()
    return DesiredState({c.name: dataclasses.replace(c, **changes)})  # type: ignore[arg-type]


def test_unreadable_record(env: Env) -> None:
    env.state_dir.mkdir(parents=True)
    (env.state_dir / "state.json").write_text("{not json")
    with pytest.raises(StateError) as info:
        env.reconciler().status()
    assert "state.json: unreadable" in str(info.value) and "move it away" in str(info.value)


def test_state_dir_that_cannot_exist(env: Env, tmp_path: Path, veth: VethPair) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    xdp_manifest(env, veth)
    r = Reconciler(bpffs_root=env.root, state_dir=blocker / "state")
    with pytest.raises(StateError) as info:
        r.apply(env.desired())
    assert "lock" in str(info.value)
    assert pins_under(env.root) == []


def test_root_outside_bpffs(env: Env, tmp_path: Path, veth: VethPair, fd_guard: None) -> None:
    xdp_manifest(env, veth)
    r = Reconciler(bpffs_root=tmp_path / "not-bpffs", state_dir=env.state_dir)
    with pytest.raises(ApplyError) as info:
        r.apply(env.desired())
    # bpffs is mounted (elsewhere): the hint names where, read from mountinfo; the hint for
    # a host without bpffs (mount -t bpf …) is tests/ebpf/test_mounts.py's
    mounts = ", ".join(map(str, bpffs_mounts()))
    assert str(info.value).endswith(
        f"{tmp_path / 'not-bpffs'}: not on bpffs (bpffs is mounted at {mounts}: choose a "
        "directory there)"
    )
    assert not (tmp_path / "not-bpffs").exists()


def test_an_existing_root_outside_bpffs(
    env: Env, tmp_path: Path, veth: VethPair, fd_guard: None
) -> None:
    # the root exists (a directory on tmpfs): opened and found not on bpffs, it is refused
    # with the same reason as a root that would have to be made there, and nothing is made
    xdp_manifest(env, veth)
    root = tmp_path / "not-bpffs"
    root.mkdir()
    r = Reconciler(bpffs_root=root, state_dir=env.state_dir)
    with pytest.raises(ApplyError) as info:
        r.apply(env.desired())
    mounts = ", ".join(map(str, bpffs_mounts()))
    assert str(info.value).endswith(
        f"{root}: not on bpffs (bpffs is mounted at {mounts}: choose a directory there)"
    )
    assert list(root.iterdir()) == []


def test_object_digest_mismatch(env: Env, veth: VethPair, fd_guard: None) -> None:
    xdp_manifest(env, veth)
    desired = with_collection(one(env), sha256="0" * 64)
    with pytest.raises(ApplyError) as info:
        env.reconciler().apply(desired)
    text = str(info.value)
    assert "collection xdp-counter (" in text and "the manifest wants 0000" in text
    assert pins_under(env.root) == []


def test_attached_program_not_loaded(env: Env, veth: VethPair, fd_guard: None) -> None:
    xdp_manifest(env, veth)
    desired = with_collection(one(env), programs=())
    with pytest.raises(ApplyError) as info:
        env.reconciler().apply(desired)
    text = str(info.value)
    assert "program xdp_count is not loaded" in text and "xdp-counter.yaml:" in text
    assert pins_under(env.root) == []


def test_unsupported_xdp_mode(env: Env, veth: VethPair, fd_guard: None) -> None:
    xdp_manifest(env, veth)
    (c,) = one(env).collections.values()
    (a,) = c.attach
    offload = dataclasses.replace(a, target=dataclasses.replace(a.target, mode=XdpMode.OFFLOAD))
    with pytest.raises(ApplyError) as info:
        env.reconciler().apply(with_collection(one(env), attach=(offload,)))
    assert "xdp mode offload is not supported" in str(info.value)
    assert str(info.value).startswith("collection xdp-counter (")
    assert pins_under(env.root) == []


def test_tcx_anchor_must_be_attached_first(env: Env, veth: VethPair, fd_guard: None) -> None:
    tc_manifest(env, veth)
    (c,) = one(env).collections.values()
    (a,) = c.attach
    assert isinstance(a.target, TcTarget)
    anchored = dataclasses.replace(a, target=dataclasses.replace(a.target, before="nope"))
    with pytest.raises(ApplyError) as info:
        env.reconciler().apply(with_collection(one(env), attach=(anchored,)))
    assert "nope is not attached at tc:" in str(info.value)
    assert str(info.value).startswith("collection tc-filter (")
    assert pins_under(env.root) == []


def test_fentry_programs_are_refused_at_plan_time(
    env: Env, compile_bpf: Callable[..., Path]
) -> None:
    obj = compile_bpf(
        "#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n"
        'SEC("fentry/vfs_read") int on_read(void *ctx) { return 0; }\n'
        'char LICENSE[] SEC("license") = "GPL";\n'
    )
    env.write(
        "fentry",
        f"""
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {{name: tracing}}
        spec:
          object: {obj}
        """,
    )
    p = env.reconciler().plan(env.desired())
    assert len(p.problems) == 1
    text = str(p.problems[0])
    assert "program on_read (section fentry/vfs_read)" in text and "not supported" in text
    assert "fentry.yaml:" in text
