"""Shared fixtures. Kernel tests are marked ``kernel``: they skip when the kernel can't be
reached (not root, no bpf(), no bpffs) — except under ``CI=true``, where they fail instead."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BPF_DIR = ROOT / "bpf"
BPFFS = Path("/sys/fs/bpf")

# namespaces, veth pairs, cgroups and UDP traffic for kernel tests (fixtures: netns, veth,
# netns_factory, cgroup)
pytest_plugins = ["tests.netns"]


def _kernel_problem() -> str | None:
    if os.geteuid() != 0:
        return "not root"
    if not (BPFFS.is_dir() and os.path.ismount(BPFFS)):
        return f"bpffs is not mounted at {BPFFS} (mount -t bpf bpf {BPFFS})"
    try:
        from orchestrator.ebpf import sys as bpfsys

        attr = bpfsys.MapCreateAttr(map_type=2, key_size=4, value_size=4, max_entries=1)
        bpfsys.map_create(attr).close()
    except Exception as err:  # any failure means: no usable bpf()
        return f"bpf() unusable: {err}"
    return None


_PROBLEM: str | bool | None = False


def kernel_problem() -> str | None:
    global _PROBLEM
    if _PROBLEM is False:
        _PROBLEM = _kernel_problem()
    return _PROBLEM if isinstance(_PROBLEM, str) else None


def require_kernel() -> None:
    """Skip (or under CI, fail) a test that needs the kernel when it can't be reached."""
    problem = kernel_problem()
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"kernel test cannot reach the kernel under CI: {problem}")
    pytest.skip(f"needs the kernel: {problem}")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("kernel") is not None:
        require_kernel()


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed (.ci/run installs it)")
        pytest.skip(f"{name} is not installed")
    return path


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


@pytest.fixture
def fd_guard() -> Iterator[None]:
    """Fail the test if it leaves file descriptors open."""
    import gc

    gc.collect()
    before = open_fds()
    yield
    gc.collect()
    leaked = open_fds() - before
    # the listing itself opened one fd that is closed again; anything else is a leak
    leaked = {fd for fd in leaked if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not leaked, f"leaked fds: {sorted(leaked)} -> " + ", ".join(
        os.readlink(f"/proc/self/fd/{fd}") for fd in sorted(leaked)
    )


@pytest.fixture
def pin_dir() -> Iterator[Path]:
    """A fresh directory on bpffs, removed with everything in it afterwards."""
    require_kernel()
    path = BPFFS / f"bpforch-test-{uuid.uuid4().hex[:12]}"
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def objects() -> Path:
    """The directory of compiled test objects (bpf/*.o)."""
    return BPF_DIR


def obj(name: str) -> Path:
    path = BPF_DIR / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run make -C bpf")
    return path


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)  # type: ignore[call-overload, no-any-return]


BPF_CFLAGS = [
    "-O2",
    "-g",
    "-target",
    "bpf",
    "-D__TARGET_ARCH_x86",
    "-I/usr/include/x86_64-linux-gnu",
]


@pytest.fixture(scope="session")
def compile_bpf(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``compile_bpf(source, *extra_flags) -> Path``: build a small eBPF object from C text
    (cached by content for the session)."""
    import hashlib

    out_dir = tmp_path_factory.mktemp("bpfobj")

    def build(source: str, *flags: str) -> Path:
        clang = require_tool("clang")
        digest = hashlib.sha256((source + "\0".join(flags)).encode()).hexdigest()[:16]
        out = out_dir / f"{digest}.o"
        if not out.exists():
            src = out_dir / f"{digest}.c"
            src.write_text(source)
            cmd = [clang, *BPF_CFLAGS, *flags, "-c", str(src), "-o", str(out)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise AssertionError(f"clang failed:\n{proc.stderr}")
        return out

    return build
