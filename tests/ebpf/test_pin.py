from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import ebpf
from orchestrator.ebpf import pin

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
