"""The cilium/ebpf comparator: build the Go harness (``harness/cilium_load.go``) against
Debian's cilium/ebpf 0.9.1, run it, and bring its specs and bpforch's into one normal form.

The normal form (what "equal" means between the two loaders):

- **maps**: type, key size, value size, max entries, flags, pinning, the inner map's shape,
  and the names a prog array or map of maps is statically filled with (by key). Map names
  are the object's; cilium calls the inner map template ``<outer>_inner`` and bpforch
  ``<outer>.inner``: only its shape is compared. A perf event array's max entries count as
  at most the possible CPUs: cilium clamps them when it reads the object, libbpf and
  bpforch create what the object says (entries past the last CPU are never used); its key
  and value sizes, when the object leaves them 0, count as 4 (what the kernel takes: bpforch
  fills them in when it reads the object, cilium when it creates the map);
- **programs**: type, attach type, section, attach target, license, kernel version (the
  ``version`` section), and the instructions. An xdp
  program's attach type ``BPF_XDP`` counts as none: libbpf (and bpforch) set it for
  ``SEC("xdp")``, cilium 0.9.1 leaves it 0, and the kernel loads and attaches both alike. cilium
  counts an ld_imm64 as one instruction where bpforch keeps the kernel's two slots, so both
  are decoded into instructions (ld_imm64 with its 64-bit constant). A reference is
  compared by what it names, not by its encoding (cilium tags the instruction with a name and
  sets the source register; bpforch keeps the compiler's bytes and a reference table): a map
  (``map NAME``), a place in a data-section map (``map_value NAME+OFFSET``), an extern
  (``extern NAME``). bpf-to-bpf calls and function pointers are compared by the function they
  reach: each program is split into its functions, and the functions are numbered in the order
  a breadth-first walk from the entry point first reaches them. So the layouts compare equal
  where cilium appends subprograms breadth first and libbpf (and bpforch) depth first;
- **variables**: section, offset and size of the variables BTF describes (cilium 0.9.1 has
  no variables: the harness reads them from the BTF datasecs of its data-section maps;
  bpforch also lists, without a type, the symbols of data sections no datasec describes);
- **translated instructions** (when both load a program): the kernel's xlated dump, split into
  functions the same way (a pseudo call's target is its ``off``, a function pointer's its
  ``imm``; the kernel's subprogram index in a call's ``imm`` is dropped), with map ids replaced
  by the map's type, key size, value size and max entries (flags are compared in the specs:
  libbpf and bpforch also make data-section maps mmapable, cilium 0.9.1 does not) and kernel
  addresses by a marker.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import ebpf
from orchestrator.ebpf import _sys as bpfsys
from orchestrator.ebpf.asm import RefKind

HARNESS_SRC = Path(__file__).parent / "harness" / "cilium_load.go"
GOPATH_SHARED = Path("/usr/share/gocode")
CILIUM_SRC = GOPATH_SHARED / "src" / "github.com" / "cilium" / "ebpf"

LD_IMM64 = 0x18
CALL = 0x85
PSEUDO_CALL = 1
PSEUDO_FUNC = 4
KERNEL_ADDRESS = 0xFFFF_8000_0000_0000
MAP_SRCS = {1: "map", 2: "map_value", 5: "map", 6: "map_value"}

Norm = tuple[Any, ...]


# ------------------------------------------------------------------------------ the harness


def cache_dir() -> Path:
    """Where the Go build cache and the built harness live between runs."""
    base = os.environ.get("XDG_CACHE_HOME") or (
        str(Path(os.environ["HOME"]) / ".cache") if os.environ.get("HOME") else "/var/tmp"
    )
    return Path(base) / "bpforch-tests" / "cilium"


def build_harness(go: str, out_dir: Path | None = None) -> Path:
    """The harness binary, built once per source and toolchain (GOPATH mode, no network)."""
    out_dir = out_dir or cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    version = subprocess.run(
        [go, "version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    cilium = (CILIUM_SRC / "go.mod").read_bytes() + (CILIUM_SRC / "elf_reader.go").read_bytes()
    key = hashlib.sha256(HARNESS_SRC.read_bytes() + version.encode() + cilium).hexdigest()[:16]
    binary = out_dir / f"cilium_load-{key}"
    if binary.exists():
        return binary
    gopath = out_dir / "gopath"
    gopath.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(out_dir),
        "GO111MODULE": "off",
        "GOPATH": f"{gopath}:{GOPATH_SHARED}",
        "GOCACHE": str(out_dir / "gocache"),
        "CGO_ENABLED": "0",
        "GOTOOLCHAIN": "local",
    }
    tmp = out_dir / f".cilium_load-{key}.{os.getpid()}"
    subprocess.run(
        [go, "build", "-o", str(tmp), str(HARNESS_SRC)],
        env=env,
        cwd=out_dir,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    os.replace(tmp, binary)
    for old in out_dir.glob("cilium_load-*"):  # builds of older sources
        if old != binary:
            old.unlink(missing_ok=True)
    return binary


def go_tool() -> str | None:
    return shutil.which("go")


def run_harness(
    binary: Path, objects: Iterable[Path], pin_root: Path
) -> dict[Path, dict[str, Any]]:
    """Run the harness once over ``objects``; its result per object."""
    paths = list(objects)
    proc = subprocess.run(
        [str(binary), str(pin_root), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"cilium harness failed ({proc.returncode}): {proc.stderr.strip()}")
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert len(results) == len(paths), proc.stderr
    return {p: r for p, r in zip(paths, results, strict=True)}


# ------------------------------------------------------------------------------ instructions


@dataclass
class _Function:
    entries: list[tuple[str, Any]] = field(default_factory=list)  # ("insn", Norm) / ("call", key)


def _canonical(functions: Mapping[Any, _Function], entry: Any) -> list[list[Norm]]:
    """Functions in breadth-first order from ``entry``; calls name the callee's ordinal."""
    order: list[Any] = [entry]
    ids: dict[Any, int] = {entry: 0}
    out: list[list[Norm]] = []
    i = 0
    while i < len(order):
        fn = functions.get(order[i])
        body: list[Norm] = []
        for kind, value in fn.entries if fn is not None else ():
            if kind == "insn":
                body.append(value)
                continue
            op, dst, target = value
            if target not in ids:
                ids[target] = len(order)
                order.append(target)
            body.append((op, dst, kind, ids[target]))
        out.append(body)
        i += 1
    return out


def _decode(raw: bytes) -> list[tuple[int, int, int, int, int, int]]:
    """(slot, op, dst, src, off, imm) with ld_imm64 as one instruction (64-bit imm)."""
    out = []
    n = len(raw) // 8
    i = 0
    while i < n:
        op, regs, off, imm = struct.unpack_from("<BBhi", raw, i * 8)
        if op == LD_IMM64 and i + 1 < n:
            hi = struct.unpack_from("<i", raw, i * 8 + 12)[0]
            out.append((i, op, regs & 0xF, regs >> 4, off, (imm & 0xFFFFFFFF) | (hi << 32)))
            i += 2
            continue
        out.append((i, op, regs & 0xF, regs >> 4, off, imm))
        i += 1
    return out


def _split(
    decoded: list[tuple[int, int, int, int, int, int]],
    classify: Callable[[tuple[int, int, int, int, int, int]], tuple[str, Any]],
) -> dict[Any, _Function]:
    """Split a flat instruction stream into functions at the targets of its calls."""
    entries = [(d[0], classify(d)) for d in decoded]
    starts = {0} | {e[1][1][2] for e in entries if e[1][0] in ("call", "func")}
    functions: dict[Any, _Function] = {}
    current: _Function | None = None
    for slot, entry in entries:
        if slot in starts or current is None:
            current = functions.setdefault(slot, _Function())
        current.entries.append(entry)
    return functions


def _lo32(imm: int) -> int:
    lo = imm & 0xFFFFFFFF
    return lo - (1 << 32) if lo & 0x80000000 else lo


def ours_program(prog: ebpf.ProgramSpec) -> list[list[Norm]]:
    refs = prog.instructions.references

    def classify(d: tuple[int, int, int, int, int, int]) -> tuple[str, Any]:
        slot, op, dst, src, off, imm = d
        ref = refs.get(slot)
        if ref is not None:
            if ref.kind is RefKind.MAP:
                return "insn", (op, dst, "map", ref.name)
            if ref.kind is RefKind.MAP_VALUE:
                return "insn", (op, dst, "map_value", ref.name, ref.offset)
            return "insn", (op, dst, src, off, "extern", ref.name)
        if op == CALL and src == PSEUDO_CALL:
            return "call", (op, dst, slot + imm + 1)
        if op == LD_IMM64 and src == PSEUDO_FUNC:
            return "func", (op, dst, slot + _lo32(imm) + 1)
        return "insn", (op, dst, src, off, imm)

    return _canonical(_split(_decode(prog.instructions.raw), classify), 0)


def cilium_program(insns: list[dict[str, Any]]) -> list[list[Norm]]:
    functions: dict[Any, _Function] = {}
    current: _Function | None = None
    entry: str | None = None
    for ins in insns:
        sym = ins.get("sym", "")
        if sym or current is None:
            current = functions.setdefault(sym, _Function())
            entry = sym if entry is None else entry
        op, dst, src, off, imm = ins["op"], ins["dst"], ins["src"], ins["off"], ins["imm"]
        ref = ins.get("ref", "")
        if not ref:
            current.entries.append(("insn", (op, dst, src, off, imm)))
        elif op == CALL and src == PSEUDO_CALL and imm == -1 and _has_symbol(insns, ref):
            current.entries.append(("call", (op, dst, ref)))
        elif op == LD_IMM64 and src == PSEUDO_FUNC:
            current.entries.append(("func", (op, dst, ref)))
        elif op == LD_IMM64 and src == 1:
            current.entries.append(("insn", (op, dst, "map", ref)))
        elif op == LD_IMM64 and src == 2:
            current.entries.append(("insn", (op, dst, "map_value", ref, (imm >> 32) & 0xFFFFFFFF)))
        else:
            current.entries.append(("insn", (op, dst, src, off, "extern", ref)))
    return _canonical(functions, entry)


def _has_symbol(insns: list[dict[str, Any]], name: str) -> bool:
    return any(i.get("sym") == name for i in insns)


def xlated(raw: bytes, shape_of: Callable[[int], tuple[int, ...]]) -> list[list[Norm]]:
    """Translated instructions in normal form (see the module docstring)."""
    ordinals: dict[int, int] = {}

    def classify(d: tuple[int, int, int, int, int, int]) -> tuple[str, Any]:
        slot, op, dst, src, off, imm = d
        if op == CALL and src == PSEUDO_CALL:
            return "call", (op, dst, slot + off + 1)
        if op == LD_IMM64 and src == PSEUDO_FUNC:
            return "func", (op, dst, slot + _lo32(imm) + 1)
        if op == LD_IMM64:
            kind = MAP_SRCS.get(src)
            if kind is not None:
                map_id = imm & 0xFFFFFFFF
                ordinals.setdefault(map_id, len(ordinals))
                mtype, key, value, entries = shape_of(map_id)[:4]
                if mtype == int(ebpf.MapType.PERF_EVENT_ARRAY):  # see "maps" above
                    entries = min(entries, bpfsys.possible_cpus())
                return "insn", (op, dst, kind, (mtype, key, value, entries), imm >> 32)
            value = imm & 0xFFFF_FFFF_FFFF_FFFF
            return "insn", (op, dst, src, off, "addr" if value >= KERNEL_ADDRESS else imm)
        return "insn", (op, dst, src, off, imm)

    return _canonical(_split(_decode(raw), classify), 0)


# ------------------------------------------------------------------------------ specs


def _program_norm(
    ptype: int, attach: int, section: str, attach_to: str, license_: str, version: int
) -> Norm:
    if ptype == int(ebpf.ProgType.XDP) and attach == int(ebpf.AttachType.XDP):
        attach = 0
    return (ptype, attach, section, attach_to, license_, version)


def _map_norm(
    mtype: int,
    key_size: int,
    value_size: int,
    max_entries: int,
    flags: int,
    pinning: int,
    inner: Norm | None,
    values: Iterable[tuple[int, str]],
) -> Norm:
    if mtype == int(ebpf.MapType.PERF_EVENT_ARRAY):
        cpus = bpfsys.possible_cpus()
        max_entries = min(max_entries or cpus, cpus)
        key_size, value_size = key_size or 4, value_size or 4
    return (
        mtype,
        key_size,
        value_size,
        max_entries,
        flags,
        pinning,
        inner,
        tuple(sorted(values)),
    )


def ours_map(m: ebpf.MapSpec) -> Norm:
    inner = None
    if m.inner_map is not None:
        inner = ours_map(m.inner_map)
    values = [
        (int(e.key) if isinstance(e.key, int) else -1, e.value)
        for e in m.contents
        if isinstance(e.value, str)
    ]
    return _map_norm(
        int(m.type),
        m.key_size,
        m.value_size,
        m.max_entries,
        int(m.flags),
        int(m.pinning),
        inner,
        values,  # type: ignore[arg-type]
    )


def cilium_map(m: Mapping[str, Any]) -> Norm:
    inner = cilium_map(m["inner"]) if m.get("inner") else None
    return _map_norm(
        m["type"],
        m["key_size"],
        m["value_size"],
        m["max_entries"],
        m["flags"],
        m["pinning"],
        inner,
        [(int(k), v) for k, v in m.get("values") or []],
    )


@dataclass
class NormSpec:
    maps: dict[str, Norm]
    programs: dict[str, Norm]  # (type, attach type, section, attach_to, license, version)
    code: dict[str, list[list[Norm]]]
    variables: dict[str, Norm]


def ours_spec(spec: ebpf.CollectionSpec) -> NormSpec:
    return NormSpec(
        maps={n: ours_map(m) for n, m in spec.maps.items()},
        programs={
            n: _program_norm(
                int(p.type),
                int(p.attach_type) if p.attach_type is not None else 0,
                p.section,
                p.attach_to,
                p.license,
                p.kernel_version,
            )
            for n, p in spec.programs.items()
        },
        code={n: ours_program(p) for n, p in spec.programs.items()},
        variables={
            n: (v.section, v.offset, v.size)
            for n, v in spec.variables.items()
            if v.section in spec.maps and v.type is not None
        },
    )


def cilium_spec(data: Mapping[str, Any]) -> NormSpec:
    return NormSpec(
        maps={n: cilium_map(m) for n, m in data["maps"].items()},
        programs={
            n: _program_norm(
                p["type"],
                p["attach_type"],
                p["section"],
                p["attach_to"],
                p["license"],
                p["kernel_version"],
            )
            for n, p in data["programs"].items()
        },
        code={n: cilium_program(p["instructions"]) for n, p in data["programs"].items()},
        variables={n: (v["section"], v["offset"], v["size"]) for n, v in data["variables"].items()},
    )
