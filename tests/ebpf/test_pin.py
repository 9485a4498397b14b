from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import ebpf
from orchestrator.ebpf import _bpffs as pin

pytestmark = pytest.mark.kernel


def _map() -> ebpf.Map:
    spec = ebpf.MapSpec("pinme", ebpf.MapType.ARRAY, 4, 4, 1)
    return ebpf.Map.create(spec)


def test_bpffs_checks(pin_dir: Path, tmp_path: Path) -> None:
    assert pin.is_bpffs(pin_dir)
    assert not pin.is_bpffs(tmp_path)
    assert pin.bpffs_mount_of(pin_dir / "not" / "yet") == pin_dir
    assert pin.bpffs_mount_of(tmp_path / "x") is None
    # a symlink from a normal directory into bpffs resolves to bpffs, and vice versa
    link = tmp_path / "into-bpffs"
    link.symlink_to(pin_dir)
    assert pin.bpffs_mount_of(link / "m") == pin_dir
    with pytest.raises(ebpf.PinError, match="not on bpffs"):
        pin.ensure_dir(tmp_path / "nope")


def test_kind_and_remove_tree(pin_dir: Path, tmp_path: Path) -> None:
    sub = pin.ensure_dir(pin_dir / "a" / "b")
    with _map() as m:
        m.pin(sub / "m")
    assert pin.kind_of(sub / "m") is pin.PinKind.MAP
    removed = pin.remove_tree(pin_dir / "a")
    assert removed == [str(sub / "m")]
    assert not (pin_dir / "a").exists()
    (tmp_path / "f").write_text("keep me")
    with pytest.raises(ebpf.PinError, match="refusing"):
        pin.remove_tree(tmp_path)
    assert (tmp_path / "f").read_text() == "keep me"
    with pytest.raises(ebpf.PinError):
        pin.kind_of(pin_dir / "missing")


def test_handle_pins_and_unpins(pin_dir: Path, tmp_path: Path) -> None:
    """Maps, programs and links share one pin implementation (ebpf.handle.Handle)."""
    with _map() as m:
        m.pin(pin_dir / "m")
        assert m.pinned_path == str(pin_dir / "m")
        with pytest.raises(ebpf.PinError, match=r"^map pinme: pin .*exists.*unpin it"):
            m.pin(pin_dir / "m")
        with pytest.raises(ebpf.PinError, match=r"^map pinme: pin .*is the path on bpffs"):
            m.pin(tmp_path / "m")
        with pytest.raises(ebpf.PinError, match=r"^map pinme: pin .*does the directory exist"):
            m.pin(pin_dir / "no" / "m")
        (pin_dir / "d").mkdir()
        (pin_dir / "d" / "x").mkdir()
        with pytest.raises(ebpf.PinError, match=r"^map pinme: unpin .*: is a directory"):
            m.unpin(pin_dir / "d")
        m.unpin()
        assert m.pinned_path is None and not (pin_dir / "m").exists()
        m.unpin()  # nothing pinned: a no-op
        m.unpin(pin_dir / "gone")  # a missing pin is not an error
    assert m.closed


def test_remove_tree_never_follows_a_symlink_or_enters_a_mount(pin_dir: Path) -> None:
    """Everything else is removed; symlinks and bind mounts (same bpffs, same st_dev) are
    left with the directories holding them, and a ``last`` entry (a marker) stays with
    them. Nothing behind them is touched."""
    import os
    import subprocess

    foreign = pin.ensure_dir(pin_dir / "foreign")
    with _map() as m:
        m.pin(foreign / "victim")
        tree = pin.ensure_dir(pin_dir / "tree" / "sub")
        m.pin(tree / "mine")
        m.pin(pin_dir / "tree" / "_mark")
    os.symlink(foreign, tree / "evil")
    with pytest.raises(ebpf.PinError) as info:
        pin.remove_tree(pin_dir / "tree")
    assert f"left {tree / 'evil'} (symlinks and mount points are never followed" in str(info.value)
    assert sorted(os.listdir(pin_dir / "tree")) == ["sub"]  # no ``last`` given: unpinned
    assert os.listdir(tree) == ["evil"] and os.listdir(foreign) == ["victim"]

    m2 = _map()
    with m2:
        m2.pin(pin_dir / "tree" / "_mark")
    root_fd = os.open(pin_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        result = pin.remove_tree_at(root_fd, "tree", shown="T", last="_mark")
        assert result == pin.TreeRemoval((), ("T/sub/evil",))
        assert sorted(os.listdir(pin_dir / "tree")) == ["_mark", "sub"]  # the marker stays
        os.unlink(tree / "evil")
        (pin_dir / "tree" / "mnt").mkdir()
        subprocess.run(["mount", "--bind", str(foreign), str(pin_dir / "tree" / "mnt")], check=True)
        try:
            assert pin.is_mount_root(root_fd, "tree/mnt") and not pin.is_mount_root(root_fd, "tree")
            result = pin.remove_tree_at(root_fd, "tree", shown="T", last="_mark")
            assert result == pin.TreeRemoval((), ("T/mnt",))
            assert (pin_dir / "tree" / "mnt" / "victim").exists()
        finally:
            subprocess.run(["umount", str(pin_dir / "tree" / "mnt")], check=True)
        result = pin.remove_tree_at(root_fd, "tree", shown="T", last="_mark")
        assert result == pin.TreeRemoval(("T/_mark",), ())
        assert not (pin_dir / "tree").exists() and os.listdir(foreign) == ["victim"]
        # the tree itself a symlink: left, never followed
        os.symlink(foreign, pin_dir / "link")
        assert pin.remove_tree_at(root_fd, "link") == pin.TreeRemoval((), ("link",))
        with pytest.raises(ebpf.PinError, match="left"):
            pin.remove_tree(pin_dir / "link")
        assert os.listdir(foreign) == ["victim"]
    finally:
        os.close(root_fd)


def test_pins_are_opened_relative_to_a_directory_fd_never_through_a_symlink(
    pin_dir: Path,
) -> None:
    import errno
    import os

    with _map() as m:
        m.pin(pin_dir / "real")
        os.symlink(pin_dir / "real", pin_dir / "alias")
        os.symlink(pin_dir, pin_dir / "dirlink")
        fd = os.open(pin_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with ebpf.Map.from_fd(pin.open_pin_at(fd, "real")) as got:
                assert got.id == m.id
            with pytest.raises(ebpf.PinError, match="is a symlink"):
                pin.open_pin_at(fd, "alias")
            with pytest.raises(ebpf.PinError, match="single path component"):
                pin.open_pin_at(fd, "../x")
            with pytest.raises(OSError) as info:
                pin.open_dir_at(fd, "dirlink")
            assert info.value.errno == errno.ELOOP
            with _map() as other:
                pin.pin_at(other.fd, fd, "second")
                with pytest.raises(ebpf.PinError, match="exists"):
                    pin.pin_at(other.fd, fd, "alias")  # never replaces, nor follows
        finally:
            os.close(fd)
    assert sorted(os.listdir(pin_dir)) == ["alias", "dirlink", "real", "second"]


def test_remove_tree_leaves_a_directory_nested_absurdly_deep(pin_dir: Path) -> None:
    """No pin tree is 64 directories deep: deeper ones are left, never recursed into (no
    RecursionError, no fd per level)."""
    import os

    deepest = pin_dir / "t"
    for _ in range(70):
        deepest = deepest / "d"
    deepest.mkdir(parents=True)
    with _map() as m:
        m.pin(pin_dir / "t" / "p")
    with pytest.raises(ebpf.PinError) as info:
        pin.remove_tree(pin_dir / "t")
    assert f"left {pin_dir / 't'}/{'d/' * 64}d " in str(info.value)
    assert not (pin_dir / "t" / "p").exists() and deepest.is_dir()
    while deepest != pin_dir:
        os.rmdir(deepest)
        deepest = deepest.parent


def test_a_pin_relative_to_a_directory_fd_names_the_directory_in_its_error(
    pin_dir: Path,
) -> None:
    """A pin made relative to a directory fd lands there, is not remembered as ``pinned``
    (its path names nothing without the fd), and a failure names it under the directory's
    path when the caller gives one (else as given)."""
    import os

    (pin_dir / "sub").mkdir()
    fd = os.open(pin_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with _map() as m:
            m.pin("sub/m", dir_fd=fd)
            assert m.pinned is None
            with ebpf.Map.from_pin(pin_dir / "sub" / "m") as got:
                assert got.id == m.id
            with pytest.raises(ebpf.PinError) as shown:
                m.pin("sub/m", dir_fd=fd, shown_dir=str(pin_dir))
            assert f"pin {pin_dir}/sub/m: " in str(shown.value)
            with pytest.raises(ebpf.PinError) as bare:
                m.pin("nowhere/m", dir_fd=fd)
            assert "pin nowhere/m: " in str(bare.value)
    finally:
        os.close(fd)
    assert sorted(os.listdir(pin_dir)) == ["sub"]
