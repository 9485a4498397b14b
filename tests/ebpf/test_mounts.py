"""Finding cgroup v2, bpffs and tracefs in /proc/self/mountinfo: the parser on the tables of
real host layouts, and the lookup in private mount namespaces where the file systems are
mounted somewhere else or not at all (``unshare -m``; the machine's own mounts are never
touched)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.ebpf import MountNotFoundError, cgroup_attached, mounts
from tests.conftest import BPF_DIR, ROOT, require_tool
from tests.netns import CGROUP2_MOUNT, Cgroup

# A systemd host with the hybrid layout (this machine's kind): v1 controllers under a tmpfs
# at /sys/fs/cgroup, v2 at /sys/fs/cgroup/unified.
HYBRID = """\
23 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 23 0:39 / /sys/fs/bpf rw,relatime - bpf bpf rw
43 23 0:13 / /sys/kernel/tracing rw,relatime - tracefs tracefs rw
44 23 0:8 / /sys/kernel/debug rw,relatime - debugfs debugfs rw
"""

# A current distribution: cgroup v2 alone at /sys/fs/cgroup, with optional fields.
UNIFIED = (
    "22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw\n"
    "26 22 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 "
    "rw,nsdelegate,memory_recursiveprot\n"
    "27 22 0:24 / /sys/fs/pstore rw,nosuid,nodev,noexec,relatime shared:5 - pstore pstore rw\n"
    "28 22 0:25 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:6 master:1 - bpf bpf "
    "rw,mode=700\n"
    "45 22 0:12 / /sys/kernel/tracing rw,nosuid,nodev,noexec,relatime shared:19 - tracefs "
    "tracefs rw\n"
)

# A pod: its runtime mounted its own cgroup namespace's view, then a hostPath volume mounts
# the host's hierarchy on top of it (what packaging/kubernetes does); bpffs from the host
# under a path with a space (escaped as \\040).
POD = """\
700 650 0:90 / / rw,relatime - overlay overlay rw
710 700 0:95 / /sys ro,nosuid,nodev,noexec,relatime - sysfs sysfs ro
711 710 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw
712 711 0:23 /../../.. /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw
713 710 0:25 / /host\\040bpf rw,relatime - bpf bpf rw
"""


def test_hybrid_layout() -> None:
    assert mounts.cgroup2_root(HYBRID) == Path("/sys/fs/cgroup/unified")
    assert mounts.bpffs_root(HYBRID) == Path("/sys/fs/bpf")
    assert mounts.tracefs_root(HYBRID) == Path("/sys/kernel/tracing")


def test_pure_cgroup_v2_layout() -> None:
    assert mounts.cgroup2_root(UNIFIED) == Path("/sys/fs/cgroup")
    assert mounts.bpffs_root(UNIFIED) == Path("/sys/fs/bpf")
    assert mounts.tracefs_root(UNIFIED) == Path("/sys/kernel/tracing")


def test_the_mount_on_top_is_the_one_paths_reach() -> None:
    # 711 (the container's view of its own subtree) is covered by 712 on the same point
    assert mounts.cgroup2_root(POD) == Path("/sys/fs/cgroup")
    found = mounts.visible(mounts.parse_mountinfo(POD), "cgroup2")
    assert [m.id for m in found] == [712]
    assert mounts.bpffs_mounts(POD) == [Path("/host bpf")]


def test_the_whole_hierarchy_before_a_subtree() -> None:
    table = (
        "1 0 0:1 / / rw - ext4 /dev/root rw\n"
        "5 1 0:23 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
        "6 1 0:23 / /host/cgroup rw - cgroup2 cgroup2 rw\n"
    )
    assert mounts.cgroup2_root(table) == Path("/host/cgroup")


def test_tracefs_inside_debugfs_when_tracefs_itself_is_not_mounted() -> None:
    table = "1 0 0:1 / / rw - ext4 /dev/root rw\n2 1 0:8 / /sys/kernel/debug rw - debugfs x rw\n"
    assert mounts.tracefs_root(table) == Path("/sys/kernel/debug/tracing")


def test_missing_file_systems_are_clear_errors() -> None:
    table = "1 0 0:1 / / rw - ext4 /dev/root rw\nthis line is not mountinfo\n"
    with pytest.raises(MountNotFoundError) as cg:
        mounts.cgroup2_root(table)
    assert str(cg.value) == "cgroup v2 is not mounted (mount -t cgroup2 none /sys/fs/cgroup)"
    assert cg.value.fstype == "cgroup2"
    with pytest.raises(MountNotFoundError, match=r"^bpffs is not mounted \(mount -t bpf bpf"):
        mounts.bpffs_root(table)
    with pytest.raises(
        MountNotFoundError,
        match=r"^tracefs is not mounted \(mount -t tracefs tracefs /sys/kernel/tracing\)$",
    ):
        mounts.tracefs_root(table)
    with pytest.raises(ValueError, match="unknown file system type"):
        mounts.find_mount("ext4", table)


def test_this_machine() -> None:
    """The real table: each mount point found holds the file system it should."""
    for fstype, magic in (
        ("cgroup2", mounts.CGROUP2_SUPER_MAGIC),
        ("bpf", mounts.BPF_FS_MAGIC),
        ("tracefs", mounts.TRACEFS_MAGIC),
    ):
        found = mounts.find_mount(fstype)
        if found is not None:
            from orchestrator.ebpf import _sys as bpfsys

            assert bpfsys.fs_magic(str(found)) == magic


# ---------------------------------------------------------------------------- namespaces


def _in_mount_ns(script: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``script`` (sh -e) in a private mount namespace: what it mounts or unmounts is seen
    by it and its children only."""
    require_tool("unshare")
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-ec", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def _bpforch(*argv: str) -> str:
    return " ".join([sys.executable, "-m", "orchestrator", *argv])


@pytest.mark.kernel
def test_a_cgroup2_hierarchy_mounted_elsewhere_is_found(
    cgroup: Cgroup, pin_dir: Path, tmp_path: Path
) -> None:
    """cgroup v2 at a path no one would guess: a relative cgroup path resolves under it,
    and the program is attached to that very cgroup (the same hierarchy, seen from here
    at its usual place)."""
    assert CGROUP2_MOUNT is not None
    other = tmp_path / "elsewhere"
    other.mkdir()
    manifest = tmp_path / "cg.yaml"
    manifest.write_text(
        "apiVersion: bpforch.dev/v1\nkind: Collection\nmetadata: {name: cg}\n"
        f"spec:\n  object: {BPF_DIR / 'cgroup_egress.o'}\n"
        f"  attach:\n    - {{program: cg_egress, cgroup: {{path: {cgroup.path.name}, "
        "attach: egress}}\n"
    )
    where = f"--bpffs-root {pin_dir / 'root'} --state-dir {tmp_path / 'state'}"
    proc = _in_mount_ns(
        f"umount {CGROUP2_MOUNT}\nmount -t cgroup2 none {other}\n"
        f"{_bpforch('validate', '-o', 'json', str(manifest))}\n"
        f"{_bpforch('apply', '-o', 'json', str(manifest), where)}\n"
    )
    assert proc.returncode == 0, proc.stderr
    validated, applied = proc.stdout.split("\n}\n", 1)
    assert json.loads(validated + "}")["valid"] is True
    keys = [c["name"] for c in json.loads(applied)["plan"]["changes"] if c["kind"] == "attachment"]
    assert keys == [f"cg_egress@cgroup:{other / cgroup.path.name}:egress"]
    try:
        attached = cgroup_attached(cgroup.path, "egress").programs
        assert len(attached) == 1 and attached[0].link_id is not None
    finally:
        code = subprocess.run(
            [*_bpforch("destroy", "--all", where).split()], capture_output=True, text=True
        )
        assert code.returncode == 0, code.stderr
    assert cgroup_attached(cgroup.path, "egress").programs == ()


@pytest.mark.kernel
def test_without_cgroup2_a_relative_cgroup_path_is_a_problem(tmp_path: Path) -> None:
    assert CGROUP2_MOUNT is not None
    manifest = tmp_path / "cg.yaml"
    manifest.write_text(
        "apiVersion: bpforch.dev/v1\nkind: Collection\nmetadata: {name: cg}\n"
        f"spec:\n  object: {BPF_DIR / 'cgroup_egress.o'}\n"
        "  attach:\n    - {program: cg_egress, cgroup: {path: app, attach: egress}}\n"
    )
    proc = _in_mount_ns(f"umount {CGROUP2_MOUNT}\n{_bpforch('validate', str(manifest))}\n")
    assert proc.returncode == 1
    assert (
        f"{manifest}:7:43: spec.attach[0].cgroup.path: relative cgroup path 'app': cgroup v2 "
        "is not mounted (mount -t cgroup2 none /sys/fs/cgroup) (or give an absolute path)"
    ) in proc.stderr


@pytest.mark.kernel
def test_without_tracefs_the_plan_says_how_to_mount_it(pin_dir: Path, tmp_path: Path) -> None:
    tracefs = mounts.find_mount("tracefs")
    debugfs = [
        m.point for m in mounts.visible(mounts.parse_mountinfo(mounts.read_mountinfo()), "debugfs")
    ]
    unmount = "".join(f"umount -l {p}\n" for p in [tracefs, *debugfs] if p is not None)
    where = f"--bpffs-root {pin_dir / 'root'} --state-dir {tmp_path / 'state'}"
    proc = _in_mount_ns(
        unmount + f"{_bpforch('plan', str(ROOT / 'manifests' / 'tp-counter.yaml'), where)}\n"
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "tracefs is not mounted (mount -t tracefs tracefs /sys/kernel/tracing)" in proc.stdout, (
        proc.stdout
    )


@pytest.mark.kernel
def test_without_bpffs_apply_says_how_to_mount_it(tmp_path: Path) -> None:
    bpffs = mounts.bpffs_mounts()
    assert bpffs
    manifest = ROOT / "manifests" / "tp-counter.yaml"
    proc = _in_mount_ns(
        "".join(f"umount -l {p}\n" for p in bpffs)
        + f"{_bpforch('apply', str(manifest), '--state-dir', str(tmp_path / 'state'))}\n"
    )
    assert proc.returncode == 1
    assert (
        f"pin directory {bpffs[0]}/bpforch: not on bpffs (bpffs is not mounted: "
        "mount -t bpf bpf /sys/fs/bpf)"
    ) in proc.stderr, proc.stderr
    assert os.path.ismount(bpffs[0])  # only the private namespace lost it
