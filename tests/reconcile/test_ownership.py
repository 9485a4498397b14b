"""Nothing foreign touched, nothing lost: bpforch never follows a symlink in its root,
removes only what it can prove it created (the record, or an ownership marker), keeps one
state directory per root, and rebuilds a lost record from its markers without losing a
preserved map's contents. Foreign objects are checked by id: still alive, still attached."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import ebpf
from orchestrator.ebpf import Map, Program
from orchestrator.ebpf import link as links
from orchestrator.ebpf.inspect import remove_tree
from orchestrator.reconcile import (
    ApplyError,
    PlanError,
    Reconciler,
    RecordError,
    StateError,
)
from orchestrator.reconcile.owner import (
    _HEADER,
    MARK_PIN,
    OWNER_PIN,
    Marker,
    MarkerError,
    MarkKind,
    collection_verdict,
    mark_collection,
    mark_collections,
    read_marker,
    write_marker,
)
from orchestrator.reconcile.state import CollectionRecord, collection_text
from tests.conftest import BPF_DIR
from tests.failpoints import OnStep, run_killed
from tests.netns import VethPair
from tests.reconcile.conftest import Env, link_alive, map_alive, pins_under, prog_alive
from tests.reconcile.test_apply import xdp_manifest

pytestmark = pytest.mark.kernel


class ForeignXdp:
    """A foreign XDP program attached to ``veth.a`` by a BPF link that only its pin holds
    (in ``where/links``, with its map in ``where/maps``: the layout of a collection).
    Unpinning it would release the link, a detach would stop it."""

    def __init__(self, veth: VethPair, where: Path) -> None:
        self.veth, self.where = veth, where
        (where / "links").mkdir(parents=True)
        (where / "maps").mkdir()
        with ebpf.load_collection(BPF_DIR / "xdp_counter.o") as coll:
            prog = coll.programs["xdp_count"]
            self.prog_id, self.map_id = prog.id, coll.maps["counters"].id
            coll.maps["counters"].pin(where / "maps" / "counters")
            with links.attach_xdp(prog, veth.a.name, "generic", netns=veth.a.ns.path) as link:
                self.link_id = link.id
                link.pin(where / "links" / "foreign")

    def assert_untouched(self) -> None:
        assert (self.where / "links" / "foreign").exists()
        assert (self.where / "maps" / "counters").exists()
        assert link_alive(self.link_id) and prog_alive(self.prog_id) and map_alive(self.map_id)
        state = links.xdp_attached(self.veth.a.name, self.veth.a.ns.path)
        assert state is not None and state.link_id == self.link_id
        assert state.prog_id == self.prog_id

    def remove(self) -> None:
        remove_tree(self.where)


@pytest.fixture
def foreign_xdp(veth: VethPair, pin_dir: Path) -> Iterator[ForeignXdp]:
    f = ForeignXdp(veth, pin_dir / "foreign")
    try:
        yield f
    finally:
        f.remove()


def tp_manifest(env: Env, tgid: int = 0) -> None:
    env.write(
        "tp-counter",
        f"""
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {{name: tp-counter}}
        spec:
          object: @BPF@/tp_counter.o
          constants: {{target_tgid: {tgid}}}
          maps:
            calls: {{preserve: true}}
          attach:
            - program: count_getppid
              tracepoint: {{group: syscalls, name: sys_enter_getppid}}
        """,
    )


def ids(r: Reconciler) -> dict[str, object]:
    """Program, map and link ids and generations of everything applied."""
    return {
        c.name: (
            c.generation,
            sorted((p.name, p.id) for p in c.programs),
            sorted((m.name, m.id) for m in c.maps),
            sorted(a.link_id for a in c.attachments),
        )
        for c in r.status().collections
    }


# ---------------------------------------------------------------------------- symlinks


def test_a_staging_symlink_to_a_foreign_directory_is_never_followed(
    env: Env, foreign_xdp: ForeignXdp, fd_guard: None
) -> None:
    """Defect: a symlink ``<root>/_staging-x`` to a foreign directory made every apply
    unpin everything there, which released a foreign live XDP link."""
    tp_manifest(env)
    r = env.reconciler()
    r.apply(env.desired())
    evil = env.root / "_staging-1-evil"
    os.symlink(foreign_xdp.where, evil)
    shown = [f"{evil}: symlink to {foreign_xdp.where}"]
    st = r.status()
    assert st.garbage == () and [str(f) for f in st.foreign] == shown
    tp_manifest(env, tgid=1)
    result = r.apply(env.desired())
    assert result.applied and [str(f) for f in result.plan.foreign] == shown
    r.destroy()
    foreign_xdp.assert_untouched()
    assert os.readlink(evil) == str(foreign_xdp.where)  # and the symlink is left alone too
    os.unlink(evil)
    assert os.listdir(env.root) == []


def test_a_collection_directory_replaced_by_a_symlink_is_refused(
    env: Env, foreign_xdp: ForeignXdp, pin_dir: Path, fd_guard: None
) -> None:
    """Defect: a collection directory replaced by a symlink to a foreign tree made the
    release step detach the foreign XDP link. Now the collection can't be applied or
    destroyed while the symlink is there, and status says why."""
    tp_manifest(env)
    r = env.reconciler()
    r.apply(env.desired())
    before = ids(r)
    live = env.root / "tp-counter"
    os.rename(live, pin_dir / "moved")  # our tree, still pinned, somewhere else
    os.symlink(foreign_xdp.where, live)
    st = r.status()
    assert [(str(f.path), f.what, f.collection) for f in st.foreign] == [
        (str(live), f"symlink to {foreign_xdp.where}", "tp-counter")
    ]
    c = st.get("tp-counter")
    assert c is not None and c.condition == "Degraded"
    assert "is a symlink to" in c.message and "never followed" in c.message
    tp_manifest(env, tgid=1)
    for attempt in (
        lambda: r.apply(env.desired()),
        lambda: r.apply(env.desired(), prune=True),
        lambda: r.destroy(["tp-counter"]),
        lambda: r.destroy(),
    ):
        with pytest.raises(PlanError) as info:
            attempt()
        assert f"{live} is not bpforch's (symlink to {foreign_xdp.where})" in str(info.value)
        assert "never follows, changes or removes it" in str(info.value)
    foreign_xdp.assert_untouched()
    os.unlink(live)
    os.rename(pin_dir / "moved", live)
    assert ids(r) == before
    r.destroy()
    foreign_xdp.assert_untouched()
    assert os.listdir(env.root) == []


def test_a_symlink_planted_between_plan_and_commit_is_never_swapped_or_followed(
    env: Env, foreign_xdp: ForeignXdp, pin_dir: Path, fd_guard: None
) -> None:
    """The race: the live directory becomes a symlink after the plan. The commit sees it
    (lstat, relative to the root's fd), refuses to swap it and rolls back."""
    tp_manifest(env)
    r = env.reconciler()
    r.apply(env.desired())
    live = env.root / "tp-counter"

    def plant(_: str) -> None:
        os.rename(live, pin_dir / "moved")
        os.symlink(foreign_xdp.where, live)

    tp_manifest(env, tgid=1)
    with pytest.raises(ApplyError) as info:
        env.reconciler(OnStep(commit=plant)).apply(env.desired())
    assert f"{live} is not a directory bpforch made" in str(info.value)
    assert "previous generation is live" in str(info.value)
    assert not any(n.startswith("_staging-") for n in os.listdir(env.root))
    foreign_xdp.assert_untouched()
    os.unlink(live)
    os.rename(pin_dir / "moved", live)
    r.apply(env.desired())
    st = r.status().get("tp-counter")
    assert st is not None and st.condition == "Ready" and st.generation == 2
    r.destroy()
    foreign_xdp.assert_untouched()


def test_symlinks_inside_an_owned_tree_are_reported_and_left(
    env: Env, foreign_xdp: ForeignXdp, fd_guard: None
) -> None:
    """A symlink planted among our pins is foreign: status lists it, destroy removes
    everything else and leaves it (with its directory and marker, so the rest stays
    provably ours); once it is gone, the next run removes the leftover."""
    tp_manifest(env)
    r = env.reconciler()
    r.apply(env.desired())
    evil = env.root / "tp-counter" / "links" / "evil"
    os.symlink(foreign_xdp.where / "links", evil)
    st = r.status()
    assert [str(f) for f in st.foreign] == [f"{evil}: symlink to {foreign_xdp.where / 'links'}"]
    c = st.get("tp-counter")
    assert c is not None and c.condition == "Ready"  # our own pins are all there
    result = r.destroy()
    assert len(result.warnings) == 1 and "evil (not bpforch's" in result.warnings[0]
    foreign_xdp.assert_untouched()
    (leftover,) = [p for p in env.root.iterdir() if p.name.startswith("_staging-")]
    assert sorted(pins_under(leftover)) == [MARK_PIN]  # the marker stays with the symlink
    assert (env.root / OWNER_PIN).exists()  # so does the root's owner marker
    st = r.status()
    assert st.collections == () and st.garbage == (leftover,)
    assert [f.what for f in st.foreign] == [f"symlink to {foreign_xdp.where / 'links'}"]
    os.unlink(leftover / "tp-counter" / "links" / "evil")
    r.destroy()
    assert os.listdir(env.root) == []
    foreign_xdp.assert_untouched()


def test_a_mount_point_under_the_root_is_foreign(
    env: Env, foreign_xdp: ForeignXdp, fd_guard: None
) -> None:
    """A bind mount of a foreign bpffs directory is never descended into, even where a
    collection of ours should be."""
    tp_manifest(env)
    r = env.reconciler()
    r.apply(env.desired())
    mnt = env.root / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "--bind", str(foreign_xdp.where), str(mnt)], check=True)
    try:
        st = r.status()
        assert [(str(f.path), f.what) for f in st.foreign] == [(str(mnt), "a mount point")]
        r.apply(env.desired(), prune=True)
        r.destroy()
        foreign_xdp.assert_untouched()
        assert (mnt / "links" / "foreign").exists()
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    mnt.rmdir()
    assert os.listdir(env.root) == []


def test_the_root_is_made_in_its_parent_or_with_its_parents(
    env: Env, pin_dir: Path, fd_guard: None
) -> None:
    """A missing root is made (0700) in its parent on bpffs, or with the parents it lacks;
    an existing one is taken as it is (its mode left alone); each apply lands in it."""
    tp_manifest(env)
    nested = pin_dir / "a" / "b" / "root"
    for root in (env.root, nested):
        assert not root.exists()
        r = Reconciler(bpffs_root=root, state_dir=env.state_dir / root.name)
        r.apply(env.desired())
        assert (root.stat().st_mode & 0o777) == 0o700
        assert (root / "tp-counter" / "progs").is_dir()
        r.destroy()
        assert os.listdir(root) == []
    env.root.chmod(0o750)
    r = Reconciler(bpffs_root=env.root, state_dir=env.state_dir / "again")
    r.apply(env.desired())
    assert (env.root.stat().st_mode & 0o777) == 0o750
    assert (env.root / "tp-counter" / "progs").is_dir()
    r.destroy()
    shutil.rmtree(pin_dir / "a")


def _symlink_root_refusal(root: Path, target: Path) -> str:
    """What an apply or status says of a bpffs root that is a symlink to ``target``."""
    return (
        f"bpffs root {root} is a symlink (to {target}); bpforch never follows symlinks "
        "in the tree it owns (give the real directory as --bpffs-root)"
    )


def test_a_root_that_is_a_symlink_is_refused(env: Env, pin_dir: Path, fd_guard: None) -> None:
    real = pin_dir / "real-root"
    real.mkdir()
    env.root.symlink_to(real)
    tp_manifest(env)
    for attempt in (
        lambda: env.reconciler().apply(env.desired()),
        lambda: env.reconciler().status(),
    ):
        with pytest.raises(StateError) as info:
            attempt()
        assert str(info.value) == _symlink_root_refusal(env.root, real)
    assert os.listdir(real) == []
    env.root.unlink()


def test_a_root_that_is_a_dangling_symlink_is_refused_as_one(
    env: Env, pin_dir: Path, fd_guard: None
) -> None:
    """A root that is a symlink to nothing (yet) is refused as a symlink, like one to a
    directory (not with the "file exists" of making it), and its target is never made."""
    missing = pin_dir / "not-yet"
    env.root.symlink_to(missing)
    tp_manifest(env)
    with pytest.raises(StateError) as info:
        env.reconciler().apply(env.desired())
    assert str(info.value) == _symlink_root_refusal(env.root, missing)
    assert not missing.exists() and env.root.is_symlink()
    env.root.unlink()


# ---------------------------------------------------------------------------- ownership


def test_look_alike_directories_are_never_removed(env: Env, veth: VethPair, fd_guard: None) -> None:
    """Defect: destroy --all and --prune deleted any unrecorded directory whose entries look
    like {maps, progs, links}, detaching a foreign live link. Now only a directory whose
    ownership marker carries the root's token is ours: a look-alike without one, or with a
    marker of another owner, is foreign."""
    tp_manifest(env)
    r = env.reconciler()
    r.apply(env.desired())
    plain = ForeignXdp(veth, env.root / "lookalike")
    forged = env.root / "forged"
    (forged / "maps").mkdir(parents=True)
    fd = os.open(forged, os.O_RDONLY | os.O_DIRECTORY)
    try:
        write_marker(fd, MARK_PIN, Marker(MarkKind.COLLECTION, b"x" * 16, {"name": "forged"}))
    finally:
        os.close(fd)
    try:
        want = {
            "lookalike": "no ownership marker: not made by bpforch (it only looks like a "
            "collection)",
            "forged": "ownership marker of another owner",
        }
        st = r.status()
        assert {f.collection: f.what for f in st.foreign} == want
        assert r.plan(env.desired(), prune=True).foreign == st.foreign
        r.apply(env.desired(), prune=True)
        with pytest.raises(PlanError) as info:
            r.destroy(["lookalike"])
        assert "not applied by bpforch" in str(info.value)
        r.destroy()
        plain.assert_untouched()
        assert (forged / MARK_PIN).exists() and (forged / "maps").is_dir()
        # a manifest can't take the look-alike's name to have it replaced either
        env.write("x", "apiVersion: bpforch.dev/v1\nkind: Collection\nmetadata: {name: lookalike}\n"
                  f"spec: {{object: {BPF_DIR}/tp_counter.o}}\n")  # fmt: skip
        with pytest.raises(PlanError) as info:
            r.apply(env.desired())
        assert f"{env.root}/lookalike is not bpforch's" in str(info.value)
        plain.assert_untouched()
    finally:
        plain.remove()
        remove_tree(forged)
    assert os.listdir(env.root) == []


def test_markers_are_frozen_maps_that_prove_each_tree(env: Env, fd_guard: None) -> None:
    """The root's owner marker names the state directory; each collection's marker holds
    its record; markers are frozen; everything goes with destroy."""
    tp_manifest(env)
    r = env.reconciler()
    r.apply(env.desired())
    (link,) = os.listdir(env.root / "tp-counter" / "links")
    assert sorted(pins_under(env.root)) == [
        OWNER_PIN,
        f"tp-counter/{MARK_PIN}",
        f"tp-counter/links/{link}",
        "tp-counter/maps/calls",
        "tp-counter/progs/count_getppid",
    ]
    root_fd = os.open(env.root, os.O_RDONLY | os.O_DIRECTORY)
    coll_fd = os.open(env.root / "tp-counter", os.O_RDONLY | os.O_DIRECTORY)
    try:
        owner = read_marker(root_fd, OWNER_PIN)
        mark = read_marker(coll_fd, MARK_PIN, collection="tp-counter")
        assert owner is not None and owner.kind is MarkKind.OWNER
        assert owner.payload["state_dir"] == os.path.realpath(env.state_dir)
        assert owner.payload["ino"] == os.stat(env.state_dir).st_ino
        assert mark is not None and mark.kind is MarkKind.COLLECTION
        assert mark.token == owner.token and mark.payload["name"] == "tp-counter"
        record = mark.payload["record"]
        assert isinstance(record, dict) and record["generation"] == 1
        # the very entry the state record holds for it
        written = json.loads((env.state_dir / "state.json").read_text())
        assert record == written["collections"]["tp-counter"]
        # frozen: nobody rewrites it through bpf()
        with Map.from_pin(env.root / OWNER_PIN) as m, pytest.raises(ebpf.Error):
            m.update(0, bytes(m.value_size))
        # a pin of another kind where a marker should be is no marker
        with ebpf.Map.create(ebpf.MapSpec("x", ebpf.MapType.HASH, 4, 4, 1)) as other:
            other.pin(env.root / "tp-counter" / "maps" / "other")
        sub = os.open(env.root / "tp-counter" / "maps", os.O_RDONLY | os.O_DIRECTORY)
        try:
            with pytest.raises(MarkerError, match="another shape"):
                read_marker(sub, "other")
            assert read_marker(sub, "nothing") is None
        finally:
            os.close(sub)
        os.unlink(env.root / "tp-counter" / "maps" / "other")
    finally:
        os.close(root_fd)
        os.close(coll_fd)
    r.destroy()
    assert os.listdir(env.root) == []


@pytest.mark.kernel
def test_a_collection_marker_holds_its_payload_as_json_dumps_encodes_it(
    pin_dir: Path, fd_guard: None
) -> None:
    """mark_collection puts the record's text (given, or encoded there) into the payload
    as ``json.dumps(payload, sort_keys=True)`` would encode the whole payload."""
    record = CollectionRecord(
        name="web-1",
        generation=2,
        digest="d",
        object_file="/o.o",
        object_sha256="s",
        manifest="/m.yaml:1:1",
        applied_at="2026-01-01T00:00:00Z",
        entries={"m": "e"},
        labels={"tier": "edge", "app": "x\u00e9"},
    )
    payload = {"name": "web-1", "txid": "9-ab", "record": record.to_json()}
    wanted = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    fd = os.open(pin_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for sub, text in (("a", None), ("b", collection_text(record))):
            os.mkdir(pin_dir / sub)
            sub_fd = os.open(pin_dir / sub, os.O_RDONLY | os.O_DIRECTORY)
            try:
                mark_collection(sub_fd, b"t" * 16, record, "9-ab", text)
                marker = read_marker(sub_fd, MARK_PIN)
            finally:
                os.close(sub_fd)
            assert marker is not None and marker.kind is MarkKind.COLLECTION
            assert marker.payload == payload
            with Map.from_pin(pin_dir / sub / MARK_PIN) as m:
                raw = m.lookup_bytes((0).to_bytes(4, "little"))
            assert raw[_HEADER.size : _HEADER.size + len(wanted)] == wanted
            assert (
                collection_verdict(fd, sub, b"t" * 16) == "ownership marker of another collection"
            )
    finally:
        os.close(fd)


def test_one_apply_pins_one_shared_marker_read_by_each_collection(env: Env, fd_guard: None) -> None:
    """The collections staged by one apply share one marker map (keyed by their names);
    each collection's marker reads its own record, the same as the state record's entry;
    a collection applied later gets a marker of its own and the others keep theirs; a
    lost record is rebuilt from shared markers."""
    for name in ("a", "b", "c"):
        _plain(env, name)
    r = env.reconciler()
    r.apply(env.desired())
    marks = {n: _pinned_map_id(env.root / n / MARK_PIN) for n in ("a", "b", "c")}
    assert len(set(marks.values())) == 1, marks
    written = json.loads((env.state_dir / "state.json").read_text())["collections"]
    for name in ("a", "b", "c"):
        assert _marker_record(env, name) == written[name]
    # the shared map is keyed by the collection: another collection's name reads nothing
    fd = os.open(env.root / "a", os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(MarkerError, match="holds none for zz"):
            read_marker(fd, MARK_PIN, collection="zz")
        with pytest.raises(MarkerError, match="another shape"):
            read_marker(fd, MARK_PIN)  # a shared marker is read for a collection
    finally:
        os.close(fd)
    _plain(env, "b", version=7)  # b alone is staged again: a marker of its own
    r.apply(env.desired())
    after = {n: _pinned_map_id(env.root / n / MARK_PIN) for n in ("a", "b", "c")}
    assert after["a"] == after["c"] == marks["a"] and after["b"] != marks["b"]
    assert _marker_record(env, "b")["generation"] == 2
    assert _marker_record(env, "a")["generation"] == 1
    before = ids(r)
    shutil.rmtree(env.state_dir)
    fresh = env.reconciler()
    assert not fresh.plan(env.desired()).has_changes
    assert ids(fresh) == before
    fresh.destroy()
    assert os.listdir(env.root) == []
    assert not map_alive(marks["a"])


def _plain(env: Env, name: str, version: int = 1) -> None:
    env.write(
        name,
        f"""
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {{name: {name}}}
        spec:
          object: @BPF@/xdp_counter.o
          constants: {{version: {version}}}
        """,
    )


def _pinned_map_id(pin: Path) -> int:
    with Map.from_pin(pin) as m:
        return m.id


def _marker_record(env: Env, name: str) -> object:
    root_fd = os.open(env.root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        verdict = collection_verdict(root_fd, name, read_marker(root_fd, OWNER_PIN).token)  # type: ignore[union-attr]
    finally:
        os.close(root_fd)
    assert isinstance(verdict, CollectionRecord), verdict
    return verdict.to_json()


@pytest.mark.kernel
def test_shared_markers_take_one_map_per_power_of_two_size(pin_dir: Path, fd_guard: None) -> None:
    """Markers of one transaction whose values fall in different power-of-two sizes go
    into different maps, each sized for its largest value (no entry takes more than twice
    its size); each collection reads its own payload back. A directory is given by its fd
    or by its path (as the transaction gives its staged trees)."""
    names = ("small", "small2", "big")
    texts = {"small": '{"x":1}', "small2": '{"x":22}', "big": '{"x":"' + "y" * 3000 + '"}'}
    fds = []
    try:
        for name in names:
            os.mkdir(pin_dir / name)
            fds.append(os.open(pin_dir / name, os.O_RDONLY | os.O_DIRECTORY))
        where: list[int | str] = [fds[0], fds[1], os.fspath(pin_dir / "big")]
        mark_collections(
            b"t" * 16, "1-ab", [(w, n, texts[n]) for w, n in zip(where, names, strict=True)]
        )
        for fd, name in zip(fds, names, strict=True):
            marker = read_marker(fd, MARK_PIN, collection=name)
            assert marker is not None and marker.kind is MarkKind.COLLECTION
            assert marker.token == b"t" * 16
            assert marker.payload == {
                "name": name,
                "record": json.loads(texts[name]),
                "txid": "1-ab",
            }
    finally:
        for fd in fds:
            os.close(fd)
    small, small2, big = (_pinned_map_id(pin_dir / n / MARK_PIN) for n in names)
    assert small == small2 != big
    with Map.from_pin(pin_dir / "small" / MARK_PIN) as m:
        assert m.type == ebpf.MapType.HASH and m.max_entries == 2
        assert m.value_size < 2 * (_HEADER.size + 64)
    with Map.from_pin(pin_dir / "big" / MARK_PIN) as m:
        assert m.max_entries == 1 and 3000 < m.value_size < 3200
        with pytest.raises(ebpf.Error):  # frozen
            m.update_bytes(b"big".ljust(64, b"\0"), bytes(m.value_size))


@pytest.mark.kernel
def test_shared_markers_pin_by_a_path_relative_to_a_directory_fd(
    pin_dir: Path, fd_guard: None
) -> None:
    """With ``dir_fd`` (as the transaction pins its staged trees' markers: relative to its
    staging directory), a directory given by its path is looked up from that fd, not from
    the working directory; each collection reads its own payload back."""
    (pin_dir / "staging" / "a").mkdir(parents=True)
    (pin_dir / "staging" / "b").mkdir()
    sfd = os.open(pin_dir / "staging", os.O_RDONLY | os.O_DIRECTORY)
    try:
        mark_collections(
            b"t" * 16, "2-cd", [("a", "a", '{"x":1}'), ("b", "b", '{"x":2}')], dir_fd=sfd
        )
    finally:
        os.close(sfd)
    for name, x in (("a", 1), ("b", 2)):
        fd = os.open(pin_dir / "staging" / name, os.O_RDONLY | os.O_DIRECTORY)
        try:
            marker = read_marker(fd, MARK_PIN, collection=name)
        finally:
            os.close(fd)
        assert marker is not None and marker.token == b"t" * 16
        assert marker.payload == {"name": name, "record": {"x": x}, "txid": "2-cd"}
    assert _pinned_map_id(pin_dir / "staging" / "a" / MARK_PIN) == _pinned_map_id(
        pin_dir / "staging" / "b" / MARK_PIN
    )
    assert not os.path.exists(os.path.join(os.getcwd(), "a", MARK_PIN))
    with Map.from_pin(pin_dir / "staging" / "a" / MARK_PIN) as m:
        # preallocated: a map of BPF_F_NO_PREALLOC is 4x slower to write (see the code)
        assert m.max_entries == 2 and not m.flags & ebpf.MapFlags.NO_PREALLOC


@pytest.mark.kernel
def test_a_shared_marker_that_cannot_be_pinned_names_its_whole_path(
    pin_dir: Path, fd_guard: None
) -> None:
    """A marker pinned relative to a directory fd that fails (its tree is missing) names the
    pin under the directory's path the caller gives, with what to check."""
    (pin_dir / "staging").mkdir()
    sfd = os.open(pin_dir / "staging", os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(ebpf.PinError) as info:
            mark_collections(
                b"t" * 16,
                "2-cd",
                [("gone", "gone", '{"x":1}')],
                dir_fd=sfd,
                shown_dir=str(pin_dir / "staging"),
            )
    finally:
        os.close(sfd)
    assert f"pin {pin_dir}/staging/gone/{MARK_PIN}: " in str(info.value), str(info.value)
    assert "(does the directory exist?)" in str(info.value)
    assert os.listdir(pin_dir / "staging") == []


def test_an_invalid_owner_marker_is_refused(env: Env, fd_guard: None) -> None:
    env.root.mkdir()
    with ebpf.Map.create(ebpf.MapSpec("x", ebpf.MapType.ARRAY, 4, 64, 1)) as m:
        m.pin(env.root / OWNER_PIN)
    tp_manifest(env)
    with pytest.raises(StateError) as info:
        env.reconciler().apply(env.desired())
    assert str(info.value) == (
        f"bpffs root {env.root}: {env.root / OWNER_PIN} is not bpforch's ownership marker (not "
        "an ownership marker (no bpforch magic)); bpforch never removes what it did not create "
        f"(use another --bpffs-root, or remove {env.root / OWNER_PIN} if nothing else uses "
        f"{env.root})"
    )
    assert sorted(pins_under(env.root)) == [OWNER_PIN]
    os.unlink(env.root / OWNER_PIN)


# ---------------------------------------------------------------- one root, one state dir


def test_a_second_state_dir_on_one_root_is_refused(
    env: Env, tmp_path: Path, foreign_xdp: ForeignXdp, fd_guard: None
) -> None:
    """Defect: two instances with different --state-dir on one root removed each other's
    staging and listed each other's collections as orphans. Now the root's owner marker
    names its state directory and any other one is refused, for every verb."""
    tp_manifest(env)
    a = env.reconciler()
    a.apply(env.desired())
    before = ids(a)
    other = tmp_path / "other-state"
    b = Reconciler(bpffs_root=env.root, state_dir=other)
    want = (
        f"bpffs root {env.root} belongs to state dir {os.path.realpath(env.state_dir)}, not "
        f"{os.path.realpath(other)}: one root has one state dir (run with --state-dir "
    )
    for attempt in (
        lambda: b.apply(env.desired()),
        lambda: b.apply(env.desired(), prune=True),
        lambda: b.plan(env.desired()),
        b.status,
        b.destroy,
    ):
        with pytest.raises(StateError) as info:
            attempt()
        assert str(info.value).startswith(want), str(info.value)
        assert "or use another --bpffs-root" in str(info.value)
    assert ids(a) == before
    assert not (other / "state.json").exists()
    # the same directory through another path is the same state dir
    alias = tmp_path / "alias"
    alias.symlink_to(env.state_dir)
    assert ids(Reconciler(bpffs_root=env.root, state_dir=alias)) == before
    a.destroy()  # gives the root up: now the other state dir may take it
    b.apply(env.desired())
    assert [c.name for c in b.status().collections] == ["tp-counter"]
    b.destroy()
    foreign_xdp.assert_untouched()


def test_a_lost_state_dir_is_named_in_the_refusal(env: Env, tmp_path: Path) -> None:
    tp_manifest(env)
    gone = tmp_path / "gone"
    Reconciler(bpffs_root=env.root, state_dir=gone).apply(env.desired())
    shutil.rmtree(gone)
    with pytest.raises(StateError) as info:
        env.reconciler().status()
    assert f"; {gone} does not exist any more, and with --state-dir {gone} its record is " in str(
        info.value
    )
    assert f"bpforch destroy --all --state-dir {gone}" in str(info.value)
    # following the advice works: the record is rebuilt from the markers
    Reconciler(bpffs_root=env.root, state_dir=gone).destroy()
    assert os.listdir(env.root) == []


def test_concurrent_instances_with_two_state_dirs(
    env: Env, veth: VethPair, tmp_path: Path, fd_guard: None
) -> None:
    """Two instances race for a fresh root: the lock on the root serializes them, the first
    claims it, the second is refused and removes nothing (not even the first one's staging
    directory while the first one is still applying)."""
    tp_manifest(env)
    desired_a = env.desired()
    env.remove("tp-counter")
    xdp_manifest(env, veth)
    desired_b = env.desired()
    in_commit = threading.Event()
    go_on = threading.Event()

    def pause(_: str) -> None:
        in_commit.set()
        assert go_on.wait(10)

    errors: list[BaseException] = []

    def run_a() -> None:
        try:
            env.reconciler(OnStep(commit=pause)).apply(desired_a)
        except BaseException as err:
            errors.append(err)

    t = threading.Thread(target=run_a)
    t.start()
    assert in_commit.wait(10)
    staging = [p for p in env.root.iterdir() if p.name.startswith("_staging-")]
    assert len(staging) == 1
    b = Reconciler(bpffs_root=env.root, state_dir=tmp_path / "b-state")
    outcome: list[BaseException | None] = []

    def run_b() -> None:
        try:
            b.apply(desired_b)
            outcome.append(None)
        except BaseException as err:
            outcome.append(err)

    tb = threading.Thread(target=run_b)
    tb.start()
    time.sleep(0.3)
    assert outcome == [] and staging[0].is_dir()  # b waits for the root's lock
    go_on.set()
    t.join(20)
    tb.join(20)
    assert errors == []
    (err,) = outcome
    assert isinstance(err, StateError) and "one root has one state dir" in str(err)
    st = env.reconciler().status()
    assert [(c.name, c.condition) for c in st.collections] == [("tp-counter", "Ready")]
    assert links.xdp_attached(veth.b.name, veth.b.ns.path) is None
    assert not any(p.name.startswith("_staging-") for p in env.root.iterdir())


def test_concurrent_instances_with_one_state_dir_take_turns(
    env: Env, veth: VethPair, fd_guard: None
) -> None:
    tp_manifest(env)
    xdp_manifest(env, veth)
    desired = env.desired()
    results: list[object] = []
    start = threading.Barrier(4)

    def run() -> None:
        start.wait()
        try:
            results.append(env.reconciler().apply(desired).applied)
        except BaseException as err:
            results.append(err)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results, key=str) == [False, False, False, True]  # one applies, 3 no-ops
    st = env.reconciler().status()
    assert [(c.name, c.condition, c.generation) for c in st.collections] == [
        ("tp-counter", "Ready", 1),
        ("xdp-counter", "Ready", 1),
    ]
    assert not any(p.name.startswith("_staging-") for p in env.root.iterdir())


# ---------------------------------------------------------------- the lost record


def nobody() -> int:
    """A tgid no process has (pids stay below pid_max): a tp_counter that counts only it
    never changes its map, whatever else runs on the machine."""
    with open("/proc/sys/kernel/pid_max") as f:
        return int(f.read())


def fill(env: Env) -> dict[bytes, bytes]:
    """Write entries into the preserved map, return its contents (the collection made by
    ``tp_manifest(env, nobody())``, so that nothing changes them afterwards)."""
    with Map.from_pin(env.root / "tp-counter" / "maps" / "calls") as m:
        m.update(0, (41).to_bytes(m.value_size, "little"))
        return {bytes(k): bytes(v) for k, v in m.items()}  # type: ignore[arg-type]


def contents(env: Env) -> dict[bytes, bytes]:
    with Map.from_pin(env.root / "tp-counter" / "maps" / "calls") as m:
        return {bytes(k): bytes(v) for k, v in m.items()}  # type: ignore[arg-type]


def test_following_the_hint_for_an_unreadable_record_loses_nothing(
    env: Env, veth: VethPair, fd_guard: None
) -> None:
    """Defect: the hint for an unreadable state.json said "remove it and re-apply; the
    kernel objects are adopted", and doing exactly that recreated preserved maps empty.
    Now the record is rebuilt from the collections' ownership markers: the same programs,
    links and maps (ids and contents), nothing reloaded."""
    tp_manifest(env, nobody())
    xdp_manifest(env, veth)
    r = env.reconciler()
    r.apply(env.desired())
    data = fill(env)
    before = ids(r)
    (env.state_dir / "state.json").write_text("{not json")
    with pytest.raises(RecordError) as info:
        r.apply(env.desired())
    text = str(info.value)
    assert text.startswith(f"state record {env.state_dir / 'state.json'}: unreadable (")
    assert text.endswith(
        "(move it away and re-apply: the record is rebuilt from the ownership markers "
        "(tp-counter, xdp-counter keep their programs, links and maps, preserved maps with "
        "their contents))"
    )
    # the hint, literally
    os.rename(env.state_dir / "state.json", env.state_dir / "state.json.bad")
    st = r.status()
    assert st.adopted == ("tp-counter", "xdp-counter")
    assert [c.condition for c in st.collections] == ["Ready", "Ready"]
    result = r.apply(env.desired())
    assert not result.plan.has_changes and result.plan.adopted == ("tp-counter", "xdp-counter")
    assert ids(r) == before and contents(env) == data
    assert r.status().adopted == ()  # recorded again
    assert (env.state_dir / "state.json").exists()
    # and an upgrade after that still hands the preserved map over
    calls = r.status().get("tp-counter").map("calls").id  # type: ignore[union-attr]
    tp_manifest(env, tgid=7)
    r.apply(env.desired())
    st = r.status().get("tp-counter")
    assert st is not None and st.generation == 2 and st.map("calls").id == calls
    assert contents(env) == data
    r.destroy()


def test_a_removed_state_dir_is_rebuilt_from_the_markers(env: Env, fd_guard: None) -> None:
    """/run cleared (a reboot of the service's RuntimeDirectory): same path, new inode. The
    root still belongs to it, and the record comes back from the markers."""
    tp_manifest(env, nobody())
    r = env.reconciler()
    r.apply(env.desired())
    data = fill(env)
    before = ids(r)
    shutil.rmtree(env.state_dir)
    assert ids(r) == before and r.status().adopted == ("tp-counter",)
    r.apply(env.desired())
    assert ids(r) == before and contents(env) == data
    # and straight from an adopted record to an upgrade: the preserved map is handed over
    calls = r.status().get("tp-counter").map("calls").id  # type: ignore[union-attr]
    shutil.rmtree(env.state_dir)
    tp_manifest(env, tgid=3)
    result = r.apply(env.desired())
    assert result.plan.adopted == ("tp-counter",)
    st = r.status().get("tp-counter")
    assert st is not None and st.generation == 2 and st.map("calls").id == calls
    assert contents(env) == data
    r.destroy()
    assert os.listdir(env.root) == []


def test_a_dry_run_creates_nothing(env: Env) -> None:
    tp_manifest(env)
    result = env.reconciler().apply(env.desired(), dry_run=True)
    assert result.plan.has_changes and not result.applied
    assert not env.root.exists() and not env.state_dir.exists()


def test_the_hint_names_what_would_not_be_adopted(env: Env, fd_guard: None) -> None:
    tp_manifest(env)
    r = env.reconciler()
    r.apply(env.desired())
    (env.root / "zombie" / "maps").mkdir(parents=True)
    (env.state_dir / "state.json").write_text("{not json")
    with pytest.raises(RecordError) as info:
        r.status()
    assert str(info.value).endswith(
        "(tp-counter keeps its programs, links and maps, preserved maps with their contents)"
        f"; zombie under {env.root} has no valid marker: reported as foreign and left alone, "
        "and applying a collection of that name is refused)"
    )
    (env.state_dir / "state.json").unlink()
    r.destroy()
    assert (env.root / "zombie" / "maps").is_dir()
    shutil.rmtree(env.root / "zombie")


def test_collections_made_before_markers_are_marked_by_the_next_apply(
    env: Env, fd_guard: None
) -> None:
    """Trees of the first wave have no markers: the record proves them ours, and the next
    apply (even a no-op) pins the markers, after which a lost record is rebuilt."""
    tp_manifest(env, nobody())
    r = env.reconciler()
    r.apply(env.desired())
    data = fill(env)
    before = ids(r)
    os.unlink(env.root / OWNER_PIN)
    os.unlink(env.root / "tp-counter" / MARK_PIN)
    actual = r.observe()
    assert actual.ownership.token == b"" and actual.ownership.unmarked == ("tp-counter",)
    assert r.status().get("tp-counter") is not None  # still ours: the record says so
    result = r.apply(env.desired())
    assert not result.plan.has_changes and result.warnings == ()
    assert (env.root / OWNER_PIN).exists() and (env.root / "tp-counter" / MARK_PIN).exists()
    assert r.observe().ownership.unmarked == ()
    (env.state_dir / "state.json").unlink()
    r.apply(env.desired())
    assert ids(r) == before and contents(env) == data
    r.destroy()
    assert os.listdir(env.root) == []


def test_destroy_gives_the_root_up(env: Env, tmp_path: Path, fd_guard: None) -> None:
    tp_manifest(env)
    r = env.reconciler()
    r.apply(env.desired())
    assert (env.root / OWNER_PIN).exists()
    r.destroy()
    assert os.listdir(env.root) == []
    # a failed first apply gives it up too, here to another state directory

    def fail(_: str) -> None:
        raise RuntimeError("injected failure at pin")

    other = Reconciler(
        bpffs_root=env.root, state_dir=tmp_path / "other", failpoints=OnStep(pin=fail)
    )
    with pytest.raises(ApplyError) as info:
        other.apply(env.desired())
    assert "injected failure at pin" in str(info.value)
    assert os.listdir(env.root) == []


@pytest.mark.parametrize("step", ["attach:2", "commit", "commit:2", "record"])
def test_a_kill_after_a_new_xdp_link_converges(
    step: str, env: Env, veth: VethPair, fd_guard: None
) -> None:
    """Found by the model-based test: an apply killed after it attached a new XDP link and
    before the record left bpforch's own program on the interface, and every later plan took
    it for someone else's. Its staging leftover's marker (or its collection's marker, once
    swapped into place) proves it ours: the next apply releases it and converges."""
    xdp_manifest(env, veth, name="a-xdp")  # staged and attached before tp-counter
    tp_manifest(env)
    proc = run_killed(step, "apply", str(env.manifests), *env.cli_args())
    assert proc.returncode == -9, (proc.returncode, proc.stderr)
    held = links.xdp_attached(veth.b.name, veth.b.ns.path)
    assert held is not None  # the killed apply's program runs there
    r = env.reconciler()
    assert r.plan(env.desired()).problems == ()
    r.apply(env.desired())
    st = r.status()
    assert [(c.name, c.condition) for c in st.collections] == [
        ("a-xdp", "Ready"),
        ("tp-counter", "Ready"),
    ]
    assert not r.plan(env.desired()).has_changes
    held = links.xdp_attached(veth.b.name, veth.b.ns.path)
    xdp = st.get("a-xdp")
    assert held is not None and xdp is not None
    assert held.prog_id == xdp.program("xdp_count").id
    assert not any(p.name.startswith("_staging-") for p in env.root.iterdir())


def test_malformed_markers_make_a_directory_foreign(env: Env, fd_guard: None) -> None:
    """A marker that can't be read (bad magic, deep JSON, another collection's name, an
    unreadable record, a directory where the pin should be) never crashes observe: the
    directory is foreign."""
    import struct

    from orchestrator.reconcile.owner import FORMAT, MAGIC

    tp_manifest(env)
    r = env.reconciler()
    r.apply(env.desired())
    root_fd = os.open(env.root, os.O_RDONLY | os.O_DIRECTORY)
    token = read_marker(root_fd, OWNER_PIN).token  # type: ignore[union-attr]
    os.close(root_fd)

    def plant(name: str, value: bytes | None = None, payload: object = None) -> None:
        d = env.root / name
        d.mkdir()
        if value is None and payload is None:
            (d / MARK_PIN).mkdir()
            return
        if value is None:
            data = json.dumps(payload).encode()
            value = struct.pack("<8sHHI16s", MAGIC, FORMAT, 3, len(data), token) + data
        value += bytes(-len(value) % 8)
        with Map.create(ebpf.MapSpec("m", ebpf.MapType.ARRAY, 4, len(value), 1)) as m:
            m.update(0, value)
            m.pin(d / MARK_PIN)

    deep = "[" * 100_000 + "]" * 100_000
    plant("magic", value=b"x" * 64)
    plant("deep", value=struct.pack("<8sHHI16s", MAGIC, FORMAT, 3, len(deep), token) +
          deep.encode())  # fmt: skip
    plant("renamed", payload={"name": "elsewhere", "record": {}})
    plant("broken", payload={"name": "broken", "record": {"generation": "x"}})
    plant("dirmark")
    st = r.status()
    what = {f.collection: f.what for f in st.foreign}
    assert what["magic"] == "ownership marker _mark: not an ownership marker (no bpforch magic)"
    assert what["deep"] == "ownership marker _mark: malformed marker payload (RecursionError)"
    assert what["renamed"] == "ownership marker of another collection"
    assert what["broken"].startswith("ownership marker _mark: unreadable record (")
    assert what["dirmark"] == "ownership marker _mark: pin _mark: not a pinned object"
    assert [c.name for c in st.collections] == ["tp-counter"]
    r.destroy()
    for name in what:
        remove_tree(env.root / name)
    assert os.listdir(env.root) == []


def test_a_new_collection_s_place_taken_since_the_plan_is_never_replaced(
    env: Env, tmp_path: Path, fd_guard: None
) -> None:
    """A new collection is moved into place only if nothing has its name: a symlink put
    there after the plan (at the commit step) is refused and left, the apply rolls back;
    so is a directory made there then by someone else (it used to be swapped with the
    staged tree and removed with the old generation, a map pinned in it unpinned)."""
    _plain(env, "a")
    target = tmp_path / "elsewhere"
    target.mkdir()

    def plant_symlink(subject: str) -> None:
        if subject == "a":
            os.symlink(target, env.root / "a")

    with pytest.raises(ApplyError) as info:
        env.reconciler(OnStep(commit=plant_symlink)).apply(env.desired())
    assert f"{env.root / 'a'} is not a directory bpforch made" in str(info.value)
    assert "nothing was changed" in str(info.value)
    assert os.readlink(env.root / "a") == str(target) and os.listdir(target) == []
    assert sorted(os.listdir(env.root)) == ["a"]  # no staging tree, no owner marker left
    os.unlink(env.root / "a")

    foreign = Map.create(ebpf.MapSpec("theirs", ebpf.MapType.ARRAY, 4, 4, 1))

    def plant_dir(subject: str) -> None:
        if subject == "a":
            os.mkdir(env.root / "a")
            foreign.pin(env.root / "a" / "theirs")

    try:
        with pytest.raises(ApplyError) as info:
            env.reconciler(OnStep(commit=plant_dir)).apply(env.desired())
        assert f"{env.root / 'a'} was made since the plan" in str(info.value)
        assert "nothing was changed" in str(info.value)
        assert os.listdir(env.root / "a") == ["theirs"]
        with Map.from_pin(env.root / "a" / "theirs") as m:
            assert m.id == foreign.id
        assert sorted(os.listdir(env.root)) == ["a"]
    finally:
        foreign.close()
    remove_tree(env.root / "a")

    def plant_empty(subject: str) -> None:
        if subject == "a":
            os.mkdir(env.root / "a")

    with pytest.raises(ApplyError, match="was made since the plan"):
        env.reconciler(OnStep(commit=plant_empty)).apply(env.desired())
    assert os.listdir(env.root / "a") == []
    os.rmdir(env.root / "a")
    r = env.reconciler()
    r.apply(env.desired())
    assert sorted(os.listdir(env.root / "a")) == [MARK_PIN, "maps", "progs"]
    assert not env.reconciler().plan(env.desired()).has_changes
    env.reconciler().destroy()
    assert os.listdir(env.root) == []


def test_a_live_collection_replaced_since_the_plan_is_never_swapped_out(
    env: Env, pin_dir: Path, fd_guard: None
) -> None:
    """An update swaps the staged tree only with the directory the plan proved ours: a
    directory of someone else's put in the live tree's place after the plan (at the commit
    step) is refused and left, its map still pinned; the live tree moved away is untouched,
    and nothing staged is left (it used to be swapped out and removed with the old
    generation, unpinning their map). Nor is a directory made where the plan saw none."""
    _plain(env, "a")
    env.reconciler().apply(env.desired())
    live = env.root / "a"
    before = {p: os.stat(live / p).st_ino for p in pins_under(live)}
    assert any(p.startswith("progs/") for p in before), before
    moved = pin_dir / "moved"
    foreign = Map.create(ebpf.MapSpec("theirs", ebpf.MapType.ARRAY, 4, 4, 1))
    foreign.update(0, 7)

    def replace_live(subject: str) -> None:
        if subject == "a":
            os.rename(live, moved)
            os.mkdir(live)
            foreign.pin(live / "theirs")

    _plain(env, "a", version=2)
    try:
        with pytest.raises(ApplyError) as info:
            env.reconciler(OnStep(commit=replace_live)).apply(env.desired())
        assert f"{live} was replaced since the plan" in str(info.value)
        assert "never replaces what the plan did not prove its own" in str(info.value)
        assert "nothing was changed" in str(info.value)
        assert os.listdir(live) == ["theirs"]
        with Map.from_pin(live / "theirs") as m:
            assert m.id == foreign.id and m.lookup(0) == (7).to_bytes(4, "little")
    finally:
        foreign.close()
    assert {p: os.stat(moved / p).st_ino for p in pins_under(moved)} == before  # as it was
    for p in before:
        if p.startswith("progs/"):
            with Program.from_pin(moved / p) as prog:
                assert prog_alive(prog.id)
    assert sorted(os.listdir(env.root)) == sorted(["a", OWNER_PIN])  # no staging tree left
    remove_tree(live)

    # the record lists "a", the plan sees no directory: one made since is not swapped out
    def plant_dir(subject: str) -> None:
        if subject == "a":
            os.mkdir(live)

    with pytest.raises(ApplyError) as info:
        env.reconciler(OnStep(commit=plant_dir)).apply(env.desired())
    assert f"{live} was made since the plan" in str(info.value)
    assert "nothing was changed" in str(info.value)
    assert os.listdir(live) == []
    assert sorted(os.listdir(env.root)) == sorted(["a", OWNER_PIN])
    os.rmdir(live)
    env.reconciler().apply(env.desired())
    assert not env.reconciler().plan(env.desired()).has_changes
    env.reconciler().destroy()
    assert os.listdir(env.root) == []
    assert {p: os.stat(moved / p).st_ino for p in pins_under(moved)} == before
    remove_tree(moved)


def test_a_destroyed_collection_s_tree_replaced_since_the_plan_is_never_removed(
    env: Env, pin_dir: Path, fd_guard: None
) -> None:
    """A destroy moves out of the root only the directory the plan proved ours: a directory
    of someone else's put in its place after the plan is refused and left (it used to be
    moved into the staging directory and removed with it, unpinning their map); the tree
    moved away is untouched. A directory made where the plan saw none is refused too."""
    _plain(env, "a")
    env.reconciler().apply(env.desired())
    live = env.root / "a"
    before = {p: os.stat(live / p).st_ino for p in pins_under(live)}
    moved = pin_dir / "moved"
    foreign = Map.create(ebpf.MapSpec("theirs", ebpf.MapType.ARRAY, 4, 4, 1))

    def replace_live(subject: str) -> None:
        if subject == "a":
            os.rename(live, moved)
            os.mkdir(live)
            foreign.pin(live / "theirs")

    try:
        with pytest.raises(ApplyError) as info:
            env.reconciler(OnStep(commit=replace_live)).destroy()
        assert f"{live} was replaced since the plan" in str(info.value)
        assert "nothing was changed" in str(info.value)
        assert os.listdir(live) == ["theirs"]
        with Map.from_pin(live / "theirs") as m:
            assert m.id == foreign.id
    finally:
        foreign.close()
    assert {p: os.stat(moved / p).st_ino for p in pins_under(moved)} == before
    assert sorted(os.listdir(env.root)) == sorted(["a", OWNER_PIN])  # no staging tree left
    remove_tree(live)

    def plant_dir(subject: str) -> None:
        if subject == "a":
            os.mkdir(live)

    with pytest.raises(ApplyError, match="was made since the plan"):
        env.reconciler(OnStep(commit=plant_dir)).destroy()
    assert os.listdir(live) == []
    os.rmdir(live)
    env.reconciler().destroy()
    assert os.listdir(env.root) == []
    assert {p: os.stat(moved / p).st_ino for p in pins_under(moved)} == before
    remove_tree(moved)


def test_a_shared_marker_in_a_directory_with_a_name_not_utf8_is_foreign(
    env: Env, fd_guard: None
) -> None:
    """A directory whose name is not UTF-8 (it can't be a collection's) holding a map of a
    shared marker's shape is foreign: observe reads no key for it and never crashes (the
    key's encoding raised UnicodeEncodeError out of observe)."""
    tp_manifest(env)
    r = env.reconciler()
    r.apply(env.desired())
    name = os.fsdecode(b"odd\xff")
    os.mkdir(env.root / name)
    with Map.create(ebpf.MapSpec("m", ebpf.MapType.HASH, 64, 64, 1)) as m:
        m.pin(env.root / name / MARK_PIN)
    try:
        st = r.status()
        what = {os.fsencode(f.path.name): f.what for f in st.foreign}
        assert what[b"odd\xff"].startswith("ownership marker _mark: "), what
        assert [c.name for c in st.collections] == ["tp-counter"]
    finally:
        remove_tree(env.root / name)
    r.destroy()
    assert os.listdir(env.root) == []


def test_a_shared_marker_pinned_where_it_holds_no_entry_is_foreign(
    env: Env, fd_guard: None
) -> None:
    """A look-alike directory holding a pin of a real shared marker map (one that has
    entries for other collections only) is foreign: the marker proves nothing for it."""
    tp_manifest(env)
    r = env.reconciler()
    r.apply(env.desired())
    os.mkdir(env.root / "look-alike")
    with Map.from_pin(env.root / "tp-counter" / MARK_PIN) as m:
        assert m.type == ebpf.MapType.HASH  # the apply's shared marker
        m.pin(env.root / "look-alike" / MARK_PIN)
    try:
        st = r.status()
        what = {f.path.name: f.what for f in st.foreign}
        assert what["look-alike"] == (
            "ownership marker _mark: a shared marker that holds none for look-alike"
        ), what
        assert [c.name for c in st.collections] == ["tp-counter"]
    finally:
        remove_tree(env.root / "look-alike")
    r.destroy()
    assert os.listdir(env.root) == []


def test_a_name_too_long_for_a_marker_key_is_refused_before_anything_is_pinned(
    env: Env, fd_guard: None
) -> None:
    """Collection names are DNS labels (at most 63 bytes, the manifest schema checks it),
    so every name fits the 64-byte key of a shared marker; one that does not is refused
    with its name, before a map is made."""
    env.root.mkdir(parents=True)
    with pytest.raises(MarkerError, match=r"collection name 'x{64}' does not fit a marker key"):
        mark_collections(b"\0" * 16, "tx", [(str(env.root), "x" * 64, "{}")])
    with pytest.raises(MarkerError, match="collection name '' does not fit a marker key"):
        mark_collections(b"\0" * 16, "tx", [(str(env.root), "", "{}")])
    assert os.listdir(env.root) == []
    env.root.rmdir()
