"""The real-world check: every eBPF object in Debian's libbpf-tools, loaded by libbpf and by
bpforch on this kernel.

The tools embed their objects (skeletons) in ``.rodata``: an ELF header with e_machine 247
(EM_BPF) whose length is ``e_shoff + e_shnum * e_shentsize``. Each distinct object is loaded
with libbpf (a small C harness, ``harness/libbpf_load.c``, built with ``-lbpf``) and with
bpforch. Objects libbpf loads must load with bpforch with the same translated instructions
(map ids and kernel addresses aside); objects libbpf rejects must be rejected for the same
reason (the same errno, or a missing attach target where libbpf reports ESRCH).
"""

from __future__ import annotations

import errno
import os
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator import ebpf
from orchestrator.ebpf.errors import AttachTargetError, SyscallError
from tests.ebpf.conftest import extract_objects

pytestmark = pytest.mark.kernel


def normalize(xlated: bytes) -> bytes:
    """Zero what differs between two loads of the same program: map ids in map loads and
    kernel addresses in other 64-bit immediates."""
    out = bytearray(xlated)
    i = 0
    while i < len(out) // 8:
        pos = i * 8
        if out[pos] == 0x18:  # ld_imm64
            src = out[pos + 1] >> 4
            if src in (1, 2, 5, 6):  # map fd/value (shown as map id)
                out[pos + 4 : pos + 8] = bytes(4)
            else:
                lo, hi = (
                    struct.unpack_from("<I", out, pos + 4)[0],
                    struct.unpack_from("<I", out, pos + 12)[0],
                )
                if lo | hi << 32 >= 0xFFFF800000000000:
                    out[pos + 4 : pos + 8] = bytes(4)
                    out[pos + 12 : pos + 16] = bytes(4)
            i += 2
        else:
            i += 1
    return bytes(out)


@dataclass
class Outcome:
    ok: bool
    detail: str  # "ok", or why not
    errno: int = 0
    xlated: dict[str, bytes] | None = None
    log: str = ""  # libbpf's messages (warnings and errors)


def load_with_libbpf(harness: Path, path: Path, pin_root: Path | None = None) -> Outcome:
    """Load with libbpf; maps pinned by name go under ``pin_root`` (never /sys/fs/bpf)."""
    args = [str(harness), "load", str(path)]
    if pin_root is not None:
        pin_root.mkdir(exist_ok=True)
        args.append(str(pin_root))
    proc = subprocess.Popen(
        args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    progs: dict[str, int] = {}
    err: tuple[str, int] | None = None
    log: list[str] = []
    for line in proc.stdout:
        if line.startswith("PROG "):
            _, name, prog_id = line.split()
            progs[name] = int(prog_id)
        elif line.startswith("ERR "):
            _, stage, code = line.split()
            err = (stage, int(code))
        elif line.startswith("LOG "):
            log.append(line[4:].strip())
        elif line.startswith("DONE"):
            break
    try:
        if err is not None:
            why = next((ln for ln in reversed(log) if "failed" in ln or "rror" in ln), "")
            code = errno.errorcode.get(err[1], str(err[1]))
            return Outcome(False, f"{code}: {why}", err[1], log="\n".join(log))
        xlated = {}
        for name, prog_id in progs.items():
            with ebpf.Program.from_id(prog_id) as prog:
                xlated[name] = prog.info().xlated
        return Outcome(True, "ok", 0, xlated)
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
        proc.stdout.close()


def load_with_bpforch(path: Path, pin_root: Path | None = None) -> Outcome:
    try:
        spec = ebpf.CollectionSpec.from_file(path)
        if pin_root is not None:
            pin_root.mkdir(exist_ok=True)
        with ebpf.Collection(spec, ebpf.CollectionOptions(pin_path=pin_root)) as coll:
            return Outcome(True, "ok", 0, {n: p.info().xlated for n, p in coll.programs.items()})
    except ebpf.Error as err:
        code = err.errno if isinstance(err, SyscallError) else 0
        if isinstance(err, AttachTargetError):
            code = errno.ESRCH
        return Outcome(False, f"{type(err).__name__}: {err}", code)


def test_libbpf_tools_load_like_libbpf(
    tool_objects: list[Path],
    libbpf_harness: Path,
    pin_dir: Path,
    capsys: pytest.CaptureFixture[str],
    fd_guard: None,
) -> None:
    compare(tool_objects, libbpf_harness, pin_dir, capsys)


LIBXDP_DIR = Path("/usr/lib/x86_64-linux-gnu/bpf")


def test_libxdp_objects_load_like_libbpf(
    libbpf_harness: Path,
    pin_dir: Path,
    capsys: pytest.CaptureFixture[str],
    fd_guard: None,
) -> None:
    """libxdp1's objects (the dispatcher, xdp-filter, xdpdump, AF_XDP): same check."""
    objects = sorted(LIBXDP_DIR.glob("*.o"))
    if not objects:
        if os.environ.get("CI") == "true":
            pytest.fail(f"no objects in {LIBXDP_DIR} (.ci/setup installs libxdp1)")
        pytest.skip(f"no objects in {LIBXDP_DIR}")
    compare(objects, libbpf_harness, pin_dir, capsys)


def compare(
    objects: list[Path], harness: Path, pin_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Load every object with both loaders; print the table; fail on any disagreement."""
    rows: list[tuple[str, str, str, str]] = []
    problems: list[str] = []
    for n, path in enumerate(objects):
        lib = load_with_libbpf(harness, path, pin_dir / f"libbpf-{n}")
        ours = load_with_bpforch(path, pin_dir / f"bpforch-{n}")
        same = ""
        if lib.ok and ours.ok:
            assert lib.xlated is not None and ours.xlated is not None
            if set(lib.xlated) != set(ours.xlated):
                problems.append(
                    f"{path.name}: programs {sorted(lib.xlated)} != {sorted(ours.xlated)}"
                )
            differ = sorted(
                n
                for n in lib.xlated
                if normalize(lib.xlated[n]) != normalize(ours.xlated.get(n, b""))
            )
            same = "identical" if not differ else "differs: " + ", ".join(differ)
            if differ:
                problems.append(f"{path.name}: xlated differs for {differ}")
        elif lib.ok:
            problems.append(f"{path.name}: libbpf loads it, bpforch fails: {ours.detail}")
        elif ours.ok:
            problems.append(f"{path.name}: libbpf fails ({lib.detail}), bpforch loads it")
        else:
            if not ours.detail or lib.errno != ours.errno:
                problems.append(
                    f"{path.name}: both fail, for different reasons: libbpf {lib.detail} / "
                    f"bpforch {ours.detail}"
                )
        rows.append(
            (path.name, "ok" if lib.ok else lib.detail[:60], "ok" if ours.ok else ours.detail, same)
        )
    with capsys.disabled():
        print()
        print(f"{'object':<22} {'libbpf':<10} {'bpforch':<10} xlated / why")
        for name, lib_r, ours_r, same in rows:
            why = same if lib_r == "ok" else ours_r[:110]
            lib_s = "ok" if lib_r == "ok" else "fails"
            ours_s = "ok" if ours_r == "ok" else "fails"
            print(f"{name:<22} {lib_s:<10} {ours_s:<10} {why}")
        n_lib = sum(r[1] == "ok" for r in rows)
        n_ours = sum(r[2] == "ok" for r in rows)
        n_same = sum(r[3] == "identical" for r in rows)
        print(
            f"{len(rows)} objects: libbpf loads {n_lib}, bpforch loads {n_ours}, "
            f"{n_same} with identical xlated instructions"
        )
    assert not problems, "\n".join(problems)


def test_extract_objects_finds_embedded_elf(compile_bpf: Callable[..., Path]) -> None:
    obj = compile_bpf('char LICENSE[] __attribute__((section("license"))) = "GPL";\n')
    data = obj.read_bytes()
    blob = b"\x7fELF-not-bpf" + b"junk" * 10 + data + b"trailer"
    found = extract_objects(blob)
    assert found == [data]
