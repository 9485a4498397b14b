"""Fixtures for the CO-RE, extern and comparison tests: a vmlinux.h for the running kernel
(generated into a temporary directory, never committed), objects built against it, the
libbpf C harness, and the eBPF objects embedded in Debian's libbpf-tools."""

from __future__ import annotations

import hashlib
import os
import struct
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


def extract_objects(binary: bytes) -> list[bytes]:
    """The eBPF ELF objects embedded in a binary."""
    found = []
    pos = 0
    while (pos := binary.find(b"\x7fELF", pos + 1)) > 0:
        hdr = binary[pos : pos + 64]
        if len(hdr) < 64 or hdr[4] != 2 or hdr[5] != 1:
            continue
        if struct.unpack_from("<H", hdr, 18)[0] != 247:
            continue
        (shoff,) = struct.unpack_from("<Q", hdr, 40)
        shentsize, shnum = struct.unpack_from("<HH", hdr, 58)
        found.append(binary[pos : pos + shoff + shnum * shentsize])
    return found


@pytest.fixture(scope="session")
def tool_objects(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Distinct objects from libbpf-tools, extracted once per session."""
    listing = subprocess.run(["dpkg", "-L", "libbpf-tools"], capture_output=True, text=True)
    if listing.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("libbpf-tools is not installed (.ci/setup installs it)")
        pytest.skip("libbpf-tools is not installed")
    out = tmp_path_factory.mktemp("libbpf-tools")
    seen: set[str] = set()
    paths: list[Path] = []
    for f in sorted(listing.stdout.split()):
        p = Path(f)
        if "/sbin/" not in f or not p.is_file() or p.is_symlink():
            continue
        for i, data in enumerate(extract_objects(p.read_bytes())):
            digest = hashlib.sha256(data).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            path = out / f"{p.name}{f'.{i}' if i else ''}.bpf.o"
            path.write_bytes(data)
            paths.append(path)
    assert paths, "libbpf-tools binaries embed no eBPF objects?"
    return paths
