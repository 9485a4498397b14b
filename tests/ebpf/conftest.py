"""Fixtures for the CO-RE, extern and libbpf-comparison tests: a vmlinux.h for the running
kernel (generated into a temporary directory, never committed), objects built against it,
and the libbpf C harness."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator import ebpf
from tests.conftest import require_tool

CORE_SRC = Path(__file__).parent / "core"
HARNESS_SRC = Path(__file__).parent / "harness" / "libbpf_load.c"
VMLINUX = Path("/sys/kernel/btf/vmlinux")


@pytest.fixture(scope="session")
def vmlinux_h(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding vmlinux.h for the running kernel (bpftool btf dump ... format c)."""
    bpftool = require_tool("bpftool")
    out = tmp_path_factory.mktemp("vmlinux")
    header = subprocess.run(
        [bpftool, "btf", "dump", "file", str(VMLINUX), "format", "c"],
        check=True,
        capture_output=True,
    ).stdout
    (out / "vmlinux.h").write_bytes(header)
    return out


@pytest.fixture(scope="session")
def build(vmlinux_h: Path, compile_bpf: Callable[..., Path]) -> Callable[..., ebpf.CollectionSpec]:
    """``build("core_task.c", *flags)``: a spec of ``tests/ebpf/core/NAME`` built against
    vmlinux.h."""

    def _build(name: str, *flags: str) -> ebpf.CollectionSpec:
        path = compile_bpf((CORE_SRC / name).read_text(), f"-I{vmlinux_h}", *flags)
        return ebpf.CollectionSpec.from_file(path)

    return _build


@pytest.fixture(scope="session")
def build_text(
    vmlinux_h: Path, compile_bpf: Callable[..., Path]
) -> Callable[[str], ebpf.CollectionSpec]:
    """``build_text(c_source)``: a spec built from C text that may include vmlinux.h."""

    def _build(source: str) -> ebpf.CollectionSpec:
        return ebpf.CollectionSpec.from_file(compile_bpf(source, f"-I{vmlinux_h}"))

    return _build


@pytest.fixture(scope="session")
def libbpf_harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``harness/libbpf_load.c`` built with gcc against Debian's libbpf-dev."""
    gcc = require_tool("gcc")
    out = tmp_path_factory.mktemp("harness") / "libbpf_load"
    subprocess.run([gcc, "-O2", "-o", str(out), str(HARNESS_SRC), "-lbpf"], check=True)
    return out
