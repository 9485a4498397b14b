"""The public inspection surface (``orchestrator.ebpf.inspect``) against the real kernel, and
handles that read their id and tag once: the reconciler reads the kernel through these."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator import ebpf
from orchestrator.ebpf import _sys as bpfsys
from orchestrator.ebpf import inspect
from tests.conftest import obj
from tests.netns import VethPair

pytestmark = pytest.mark.kernel


@pytest.fixture
def coll() -> Iterator[ebpf.Collection]:
    with ebpf.Collection(ebpf.CollectionSpec.from_file(obj("xdp_counter.o"))) as c:
        yield c


def _counting(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Count the calls of one info call (the real one still runs)."""
    calls: list[int] = []
    real: Callable[..., Any] = getattr(bpfsys, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(bpfsys, name, counted)
    return calls


def test_map_id_is_read_once(coll: ebpf.Collection, monkeypatch: pytest.MonkeyPatch) -> None:
    m = coll.maps["counters"]
    want = inspect.map_id(m.fd)
    calls = _counting(monkeypatch, "map_info")
    assert m.id == want
    assert m.id == want
    assert len(calls) <= 1  # created here: read on first use, then kept
    clone = m.clone()
    with clone:
        assert clone.id == want
    reopened = ebpf.Map.from_id(want)  # from_fd reads the info once: the id comes with it
    with reopened:
        before = len(calls)
        assert reopened.id == want and len(calls) == before


def test_program_id_and_tag_are_read_once(
    coll: ebpf.Collection, monkeypatch: pytest.MonkeyPatch
) -> None:
    prog = coll.programs["xdp_count"]
    info = prog.info()  # the full info (two calls) also fills the cache
    fresh = prog.clone()
    with fresh:
        calls = _counting(monkeypatch, "prog_info")
        assert (prog.id, prog.tag) == (info.id, info.tag)
        assert calls == []
        # a clone made before anything was read from it reads once, for id, tag and
        # verified_insns together
        bare = ebpf.Program(fresh.fd.dup(), name="x", type=ebpf.ProgType.XDP)
        with bare:
            assert bare.tag == info.tag and len(bare.tag) == 16
            assert bare.id == info.id
            assert bare.verified_insns == info.verified_insns > 0
            assert len(calls) == 1
    assert inspect.program_id(prog.fd) == info.id
    assert inspect.program_map_ids(prog.fd) == info.map_ids == prog.map_ids()
    assert coll.maps["counters"].id in info.map_ids


def test_pins_by_path_and_by_directory_fd(coll: ebpf.Collection, pin_dir: Path) -> None:
    m, prog = coll.maps["counters"], coll.programs["xdp_count"]
    sub = pin_dir / "sub"
    inspect.ensure_dir(sub)
    assert inspect.is_bpffs(sub) and inspect.bpffs_mount_of(sub / "nope") is not None
    dfd = inspect.open_dir_at(None, os.fspath(sub))
    try:
        inspect.pin_at(m.fd, dfd, "m")
        prog.pin(sub / "p")
        with inspect.open_pin_at(dfd, "m") as fd:
            assert inspect.map_id(fd) == m.id
        with inspect.open_pin(sub / "p") as fd:
            assert inspect.program_id(fd) == prog.id
        os.symlink("m", sub / "link-to-m")
        with pytest.raises(ebpf.PinError, match="is a symlink"):  # never followed
            inspect.open_pin_at(dfd, "link-to-m")
        with pytest.raises(ebpf.SyscallError) as exc:
            inspect.open_pin(sub / "missing")
        assert exc.value.errno == errno.ENOENT
        assert not inspect.is_mount_root(dfd, "m")
    finally:
        os.close(dfd)
    removal = inspect.remove_tree_at(None, os.fspath(sub))
    # the pins go; the symlink is not provably a pin bpforch made: it stays, and so does sub
    assert sorted(Path(p).name for p in removal.removed) == ["m", "p"]
    assert removal.left == (os.fspath(sub / "link-to-m"),)
    assert sorted(os.listdir(sub)) == ["link-to-m"]


def test_hooks_and_link_info(coll: ebpf.Collection, veth: VethPair) -> None:
    prog = coll.programs["xdp_count"]
    b = veth.b
    assert inspect.xdp_attached(b.ifindex, b.ns.path) is None
    with ebpf.attach_xdp(prog, b.name, "generic", netns=b.ns.path) as link:
        with_link = inspect.xdp_attached(b.name, b.ns.path)
        without = inspect.xdp_attached(b.name, b.ns.path, find_link=False)
        assert with_link is not None and without is not None
        assert (with_link.prog_id, with_link.mode, with_link.link_id) == (
            prog.id,
            "generic",
            link.id,
        )
        assert (without.prog_id, without.mode, without.link_id) == (prog.id, "generic", None)
        assert inspect.xdp_mode(b.ifindex, prog.id, b.ns.path) == "generic"
        info = inspect.link_info(link.fd)
        assert (info.id, info.program_id, info.attached) == (link.id, prog.id, True)
        assert info.target == ebpf.link.XDPTarget(b.ifindex)
        assert any(i.id == link.id for i in inspect.iter_links(ebpf.LinkType.XDP))
        link.detach()
        assert not inspect.link_info(link.fd).attached


def _gone(exists: Callable[[int], bool], obj_id: int) -> bool:
    """Polled without a reference until the kernel frees the object (an RCU grace period and
    a work item after the last close)."""
    deadline = time.monotonic() + 15.0
    while exists(obj_id):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_exists_asks_without_a_reference(veth: VethPair) -> None:
    c = ebpf.Collection(ebpf.CollectionSpec.from_file(obj("xdp_counter.o")))
    prog, m = c.programs["xdp_count"], c.maps["counters"]
    link = ebpf.attach_xdp(prog, veth.b.name, "generic", netns=veth.b.ns.path)
    pid, mid, lid = prog.id, m.id, link.id
    fds = len(os.listdir("/proc/self/fd"))
    assert inspect.program_exists(pid) and inspect.map_exists(mid) and inspect.link_exists(lid)
    assert len(os.listdir("/proc/self/fd")) == fds  # nothing opened, nothing held
    # one id does not stand for another: the neighbours of a live id are not it
    assert not inspect.map_exists(0) and not inspect.program_exists(-1)
    assert not inspect.link_exists(max(inspect.link_ids()) + 1000)
    link.close()
    c.close()
    # the link keeps the program, the program the map: each goes once nothing holds it
    assert _gone(inspect.link_exists, lid)
    assert _gone(inspect.program_exists, pid)
    assert _gone(inspect.map_exists, mid)
