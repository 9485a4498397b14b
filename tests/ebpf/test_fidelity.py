"""Fidelity: every object loaded by libbpf 1.1, by cilium/ebpf 0.9.1 and by bpforch, here.

The objects: everything in ``bpf/`` (the objects in cilium/ebpf's conventions included:
``cilium_sections``, ``unresolved``, ``old_clang``), libxdp1's objects, the objects embedded
in Debian's libbpf-tools, and cilium/ebpf's own test objects (``testdata/*-el.elf`` of
Debian's golang-github-cilium-ebpf-dev, read where the package installs them, and one
big-endian one).

- libbpf loads each object with ``harness/libbpf_load.c`` (all or nothing);
- cilium/ebpf reads and loads each with ``harness/cilium_load.go`` (built here, see
  ``cilium.py``), run once over all objects: its spec, then the whole collection, or, if that
  fails, each program alone with ``LoadAndAssign``;
- bpforch does the same in process (``Collection``, else ``load_and_assign`` per program).

What must hold:

- bpforch loads the union of what the two others load (whole objects and single programs),
  except where a row of ``WHY`` says cilium 0.9.1 is wrong;
- where cilium and bpforch both read an object, their specs are equal in the normal form of
  ``cilium.py``, unless a ``WHY`` row explains the difference (libbpf's rule wins); where both
  load it whole, they are equal, full stop;
- where both load a program, its translated instructions are equal (normal form), or
  equal to bpforch's when bpforch too leaves .rodata unfrozen until the program is verified
  (what cilium 0.9.1 does);
- every failure of any of the three loaders is explained by a row of ``WHY``, and every row
  explains something (no stale excuses).

The table printed at the end is the README's fidelity table.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from orchestrator import ebpf
from orchestrator.ebpf import asm
from tests.conftest import BPF_DIR, BPFFS, PIN_PREFIX, require_kernel, require_tool
from tests.ebpf import cilium
from tests.ebpf.test_libbpf_tools import LIBXDP_DIR, load_with_libbpf

CILIUM_TESTDATA = cilium.CILIUM_SRC / "testdata"
MIN_EQUAL_PROGRAMS = 50  # programs both cilium and bpforch load, compared equal (57 here)

WRONG = "cilium 0.9.1 is wrong"
LACKS = "cilium 0.9.1 lacks"
LIBBPF = "libbpf's rule wins"
LIBBPF_REFUSES = "libbpf 1.1 refuses"
KERNEL = "this kernel refuses"
OBJECT = "the object has"


@dataclass(frozen=True)
class Why:
    """One explained disagreement or failure: ``pattern`` matches the error of one of
    ``loaders`` ("libbpf", "cilium", "bpforch"), or a spec difference ("spec"), or a note on
    translated instructions ("xlated")."""

    kind: str
    text: str
    loaders: tuple[str, ...]
    pattern: str

    def matches(self, loader: str, message: str) -> bool:
        return loader in self.loaders and re.search(self.pattern, message) is not None


WHY: tuple[Why, ...] = (
    # cilium/ebpf 0.9.1 fails where bpforch goes further
    Why(
        LACKS,
        "this kernel's BTF (ENUM64, Linux 6.0), so no CO-RE and no BTF attach targets",
        ("cilium",),
        r"unknown kind: Unknown \(19\)",
    ),
    Why(LACKS, "__kconfig externs", ("cilium",), r"reference to \.kconfig: not supported"),
    Why(
        LACKS,
        "data sections other than .data, .bss and .rodata*",
        ("cilium",),
        r'reference to "d_custom" in section SHN_UNDEF\+\d+: not supported',
    ),
    Why(
        LACKS,
        "legacy map definitions of different sizes",
        ("cilium",),
        r"missing symbol for map at offset",
    ),
    Why(LACKS, "map_extra (bloom filters)", ("cilium",), r"unrecognized field map_extra"),
    Why(
        LACKS,
        "string literals (.rodata.str1.1)",
        ("cilium",),
        r"string is not stack allocated: not supported",
    ),
    Why(
        LACKS,
        "trailing legacy map fields (iproute2's), which bpforch ignores as iproute2 does",
        ("cilium",),
        r"extra contains unhandled non-zero bytes",
    ),
    Why(
        LACKS,
        "non-zero bytes in a .maps definition, which bpforch ignores as libbpf does",
        ("cilium",),
        r"initializing BTF map definitions: not supported",
    ),
    Why(
        WRONG,
        "it creates prog arrays with BTF types, which the kernel refuses",
        ("cilium",),
        r"map (jump_table|m_progs): map create: invalid argument$",
    ),
    Why(
        WRONG,
        "it refuses a static map referenced through its section symbol",
        ("cilium",),
        r"possible erroneous static qualifier on map definition",
    ),
    Why(
        WRONG,
        "it freezes .rodata after verifying the programs, so constants prune no code (loaded "
        "that way, bpforch's xlated is the same)",
        ("xlated",),
        r"equal with \.rodata unfrozen",
    ),
    # bpforch refuses what cilium/ebpf loads
    Why(
        WRONG,
        "it loads a reference to an undefined symbol as 0; bpforch refuses that program",
        ("bpforch",),
        r"symbol MY_CONST is defined in no section of the object",
    ),
    # section names
    Why(
        LIBBPF,
        "a bare kprobe section is a kprobe program (cilium needs kprobe/NAME)",
        ("spec", "cilium"),
        r"program blk_account_io_(done|start): (\(0, 0, 'kprobe', '', 'GPL', 0\) != \(2, 0, "
        r"'kprobe', '', 'GPL', 0\)|program type is unspecified)",
    ),
    # libbpf 1.1 refuses
    Why(
        LIBBPF_REFUSES,
        "static programs",
        ("libbpf",),
        r"program '\w+' is static and not supported",
    ),
    Why(
        LIBBPF_REFUSES,
        "socket/NAME sections",
        ("libbpf",),
        r"missing BPF prog type, check ELF section name 'socket/tail'",
    ),
    Why(
        LIBBPF_REFUSES,
        "the legacy maps section",
        ("libbpf",),
        r"legacy map definitions in 'maps' section are not supported",
    ),
    # every loader fails
    Why(
        OBJECT,
        "big-endian code (this machine is little-endian)",
        ("libbpf", "cilium", "bpforch"),
        r"elf: endianness mismatch|can't load BigEndian (program|BTF) on LittleEndian|big-endian "
        r"objects are not supported",
    ),
    Why(
        OBJECT,
        "an undefined symbol",
        ("libbpf", "cilium", "bpforch"),
        r"failed to find BTF for extern '(MY_CONST|fwd)'|symbol \"fwd\": unsatisfied program "
        r"reference|symbol fwd is defined in no section",
    ),
    Why(
        OBJECT,
        "sections that name no program type",
        ("cilium", "bpforch"),
        r"program (global_fn3|static_fn): program type is unspecified|section '(static|other)' "
        r"names no known program type",
    ),
    Why(
        OBJECT,
        "a map of maps without an inner map definition",
        ("cilium", "bpforch"),
        r"ArrayOfMaps requires InnerMap|map array_of_hash_map: create: invalid argument",
    ),
    Why(
        OBJECT,
        "a map its tool sizes at run time (max_entries 0): EINVAL",
        ("libbpf", "cilium", "bpforch"),
        r"map '(stackmap|start)': failed to create: Invalid argument|map (stackmap|start): "
        r"(map create without BTF|create): invalid argument|map \w+: map create: invalid "
        r"argument \(MaxEntries may be incorrectly set to zero\)",
    ),
    Why(
        OBJECT,
        "freplace needs a target program from its application",
        ("libbpf",),
        r"prog 'replacement': attach program FD is not set",
    ),
    Why(
        OBJECT,
        "a GPL-only helper under a non-GPL license",
        ("libbpf", "bpforch"),
        r"prog 'filter': BPF program load failed: Invalid argument|cannot call GPL-restricted "
        r"function from non-GPL compatible program",
    ),
    Why(
        KERNEL,
        "EPERM: fentry/fexit/freplace (no BPF trampolines here)",
        ("libbpf", "cilium", "bpforch"),
        r"BPF program load failed: Operation not permitted|program replacement: load program: "
        r"operation not permitted|this kernel refuses fentry/fexit/fmod_ret/lsm/freplace",
    ),
    Why(
        KERNEL,
        "an attach target not in its BTF",
        ("libbpf", "bpforch"),
        r"failed to find kernel BTF type ID of|the kernel's btf has no func named",
    ),
    Why(
        KERNEL,
        "a reachable CO-RE relocation it cannot satisfy",
        ("libbpf", "bpforch"),
        r"prog '(ipv4_bind_exit|do_sample)': BPF program load failed: Invalid argument|co-re "
        r"relocation .* cannot be satisfied",
    ),
)


# ------------------------------------------------------------------------------ outcomes


@dataclass
class Program:
    xlated: bytes | None = None  # None: not loaded
    error: str = ""
    maps: dict[int, tuple[int, ...]] = field(default_factory=dict)  # id → shape


@dataclass
class Outcome:
    """One loader's result for one object."""

    parse_error: str = ""
    error: str = ""  # why the whole object did not load ("" if it did)
    programs: dict[str, Program] = field(default_factory=dict)

    @property
    def whole(self) -> bool:
        return not self.parse_error and not self.error

    def loaded(self) -> set[str]:
        return {n for n, p in self.programs.items() if p.xlated is not None}

    def errors(self) -> list[str]:
        """Every error message: the parse, the whole load, each program."""
        out = [e for e in (self.parse_error, self.error) if e]
        out += [p.error for p in self.programs.values() if p.error]
        return out

    def cell(self, total: int) -> str:
        if self.parse_error:
            return "fails"
        if self.whole:
            return "loads"
        n = len(self.loaded())
        return f"{n} of {total}" if n else "fails"


def _map_shape(map_id: int) -> tuple[int, ...]:
    with ebpf.Map.from_id(map_id) as m:
        i = m.info()
        return (int(i.type), i.key_size, i.value_size, i.max_entries, int(i.flags))


def _program(prog: ebpf.Program) -> Program:
    info = prog.info()
    return Program(info.xlated, "", {i: _map_shape(i) for i in info.map_ids})


def load_bpforch(path: Path, pin_root: Path) -> tuple[Outcome, ebpf.CollectionSpec | None]:
    """Load ``path`` whole; if that fails, each program on its own (``load_and_assign``)."""
    try:
        spec = ebpf.CollectionSpec.from_file(path)
    except ebpf.Error as err:
        return Outcome(parse_error=str(err)), None
    pin_root.mkdir(exist_ok=True)
    opts = ebpf.CollectionOptions(pin_path=pin_root)
    try:
        with ebpf.Collection(spec, opts) as coll:
            return Outcome(programs={n: _program(p) for n, p in coll.programs.items()}), spec
    except ebpf.Error as err:
        outcome = Outcome(error=str(err))
    for name in spec.programs:
        one = type("One", (), {"__annotations__": {"prog": ebpf.Program}, "prog": ebpf.bind(name)})
        try:
            objs = spec.load_and_assign(one(), opts)
        except ebpf.Error as err:
            outcome.programs[name] = Program(error=str(err))
            continue
        try:
            outcome.programs[name] = _program(objs.prog)
        finally:
            ebpf.close_all(objs)
    return outcome, spec


def load_unfrozen(path: Path, name: str, pin_root: Path) -> Program:
    """bpforch's load of one program as cilium/ebpf 0.9.1 loads it: with its frozen data
    sections (.rodata) written but not frozen when the verifier sees the program (cilium
    freezes them after loading the programs)."""
    spec = ebpf.CollectionSpec.from_file(path)
    unfrozen: dict[str, ebpf.Map] = {}
    one = type("One", (), {"__annotations__": {"prog": ebpf.Program}, "prog": ebpf.bind(name)})
    pin_root.mkdir(exist_ok=True)
    try:
        for mname in sorted(spec.programs[name].maps):
            ms = spec.maps[mname]
            if ms.freeze:
                m = unfrozen[mname] = ebpf.Map.create(ms)
                m.populate((int(e.key).to_bytes(4, "little"), e.value) for e in ms.contents)
        opts = ebpf.CollectionOptions(map_replacements=unfrozen, pin_path=pin_root)
        objs = spec.load_and_assign(one(), opts)
        try:
            return _program(objs.prog)
        finally:
            ebpf.close_all(objs)
    except ebpf.Error as err:
        return Program(error=str(err))
    finally:
        for m in unfrozen.values():
            m.close()


def cilium_outcome(result: dict[str, Any]) -> Outcome:
    if result.get("spec_error"):
        return Outcome(parse_error=result["spec_error"])
    load = result["load"]
    out = Outcome(error="" if load["ok"] else load["error"])
    for name, p in (result.get("programs") or {}).items():
        if p["ok"]:
            maps = {int(k): tuple(v) for k, v in (p.get("maps") or {}).items()}
            out.programs[name] = Program(bytes.fromhex(p["xlated"]), "", maps)
        else:
            out.programs[name] = Program(error=p["error"])
    return out


# ------------------------------------------------------------------------------ rows


@dataclass
class Row:
    group: str
    path: Path
    libbpf: Outcome
    cilium: Outcome
    bpforch: Outcome
    programs: list[str]  # every program either reader found
    spec_diffs: list[str] = field(default_factory=list)
    xlated: dict[str, bool] = field(default_factory=dict)  # both loaded: equal?
    why: list[Why] = field(default_factory=list)
    unexplained: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    def explain(self, loader: str, message: str) -> bool:
        for w in WHY:
            if w.matches(loader, message):
                if w not in self.why:
                    self.why.append(w)
                return True
        self.unexplained.append(f"{loader}: {message}")
        return False


def spec_diffs(ours: cilium.NormSpec, theirs: cilium.NormSpec) -> list[str]:
    """``what: cilium's != bpforch's`` for every difference of the normal forms."""
    out = []
    for what, a, b in (
        ("map", theirs.maps, ours.maps),
        ("program", theirs.programs, ours.programs),
        ("variable", theirs.variables, ours.variables),
    ):
        for name in sorted(set(a) | set(b)):
            if a.get(name) != b.get(name):
                out.append(f"{what} {name}: {a.get(name)} != {b.get(name)}")
    for name in sorted(set(theirs.code) & set(ours.code)):
        if theirs.code[name] != ours.code[name]:
            out.append(f"program {name}: instructions differ")
    return out


def compare(row: Row, spec: ebpf.CollectionSpec | None, cilium_spec: Any, pins: Path) -> None:
    lib, cil, own = row.libbpf, row.cilium, row.bpforch
    # every failure is explained
    for loader, outcome in (("libbpf", lib), ("cilium", cil), ("bpforch", own)):
        for message in outcome.errors():
            # the harness's LoadAndAssign target has one field, P
            row.explain(loader, message.removeprefix("field P: "))
    # bpforch loads the union
    wanted = set(lib.programs) if lib.whole else set()
    wanted |= cil.loaded()
    for name in sorted(wanted - own.loaded()):
        err = own.programs[name].error if name in own.programs else own.parse_error
        if not any(w.kind == WRONG and w.matches("bpforch", err) for w in WHY):
            row.unexplained.append(f"program {name}: loaded by another loader, not by bpforch")
    if (
        (lib.whole or cil.whole)
        and not own.whole
        and not any(w.kind == WRONG and w.matches("bpforch", own.error) for w in WHY)
    ):
        row.unexplained.append("loaded whole by another loader, not by bpforch")
    # specs
    if spec is not None and cilium_spec is not None:
        row.spec_diffs = spec_diffs(cilium.ours_spec(spec), cilium.cilium_spec(cilium_spec))
        for d in row.spec_diffs:
            if cil.whole and own.whole:
                row.unexplained.append(f"specs differ where both load the object: {d}")
            else:
                row.explain("spec", d)
    # translated instructions
    for name in sorted(cil.loaded() & own.loaded()):
        a, b = cil.programs[name], own.programs[name]
        assert a.xlated is not None and b.xlated is not None
        na = cilium.xlated(a.xlated, a.maps.__getitem__)
        row.xlated[name] = na == cilium.xlated(b.xlated, b.maps.__getitem__)
        if row.xlated[name]:
            continue
        unfrozen = load_unfrozen(row.path, name, pins / "unfrozen")
        assert unfrozen.xlated is not None, unfrozen.error
        if na == cilium.xlated(unfrozen.xlated, unfrozen.maps.__getitem__):
            row.explain("xlated", f"program {name}: equal with .rodata unfrozen")
        else:
            row.unexplained.append(f"program {name}: translated instructions differ")


# ------------------------------------------------------------------------------ the run


def _objects(tool_objects: list[Path]) -> list[tuple[str, Path]]:
    libxdp = sorted(LIBXDP_DIR.glob("*.o"))
    testdata = sorted(CILIUM_TESTDATA.glob("*-el.elf"))
    if testdata:  # and one big-endian object: everyone refuses it, saying why
        testdata.append(CILIUM_TESTDATA / "loader-eb.elf")
    missing = [
        what
        for what, found in (("libxdp1", libxdp), ("golang-github-cilium-ebpf-dev", testdata))
        if not found
    ]
    if missing:
        msg = f"not installed: {', '.join(missing)} (.ci/setup installs them)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return (
        [("bpf", p) for p in sorted(BPF_DIR.glob("*.o"))]
        + [("libxdp", p) for p in libxdp]
        + [("libbpf-tools", p) for p in tool_objects]
        + [("cilium testdata", p) for p in testdata]
    )


@pytest.fixture(scope="module")
def module_pins() -> Iterator[Path]:
    """A directory on bpffs for the whole module (maps pinned by name land under it)."""
    require_kernel()
    path = BPFFS / f"{PIN_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def rows(tool_objects: list[Path], libbpf_harness: Path, module_pins: Path) -> list[Row]:
    go = require_tool("go")
    objects = _objects(tool_objects)
    harness = cilium.build_harness(go)
    (module_pins / "cilium").mkdir()
    results = cilium.run_harness(harness, [p for _, p in objects], module_pins / "cilium")
    out = []
    for n, (group, path) in enumerate(objects):
        lib = load_with_libbpf(libbpf_harness, path, module_pins / f"libbpf-{n}")
        lib_outcome = Outcome(error="" if lib.ok else f"{lib.detail}\n{lib.log}")
        if lib.ok and lib.xlated is not None:
            lib_outcome.programs = {name: Program(x) for name, x in lib.xlated.items()}
        own, spec = load_bpforch(path, module_pins / f"bpforch-{n}")
        result = results[path]
        cil = cilium_outcome(result)
        names = set(own.programs) | set(cil.programs)
        if spec is not None:
            names |= set(spec.programs)
        if result.get("spec"):
            names |= set(result["spec"]["programs"])
        row = Row(group, path, lib_outcome, cil, own, sorted(names))
        compare(row, spec, result.get("spec"), module_pins / f"bpforch-{n}")
        out.append(row)
    return out


def table(rows: list[Row]) -> str:
    lines = [
        "| object | libbpf 1.1 | cilium/ebpf 0.9.1 | bpforch | specs and xlated / why |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        total = len(r.programs)
        if r.why:
            why = "; ".join(dict.fromkeys(f"{w.kind}: {w.text}" for w in r.why))
        else:
            why = "equal" if r.cilium.whole and r.bpforch.whole else ""
        name = r.name.removesuffix(".bpf.o")
        prefix = {
            "bpf": "bpf/",
            "libxdp": "libxdp/",
            "libbpf-tools": "",
            "cilium testdata": "cilium/",
        }
        lines.append(
            f"| {prefix[r.group]}{name} | {r.libbpf.cell(total)} | "
            f"{r.cilium.cell(total)} | {r.bpforch.cell(total)} | {why} |"
        )
    return "\n".join(lines)


@pytest.mark.kernel
def test_fidelity(rows: list[Row], capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print()
        print(table(rows))
        counts = {
            who: sum(getattr(r, who).whole for r in rows) for who in ("libbpf", "cilium", "bpforch")
        }
        progs = {
            who: sum(len(getattr(r, who).loaded()) for r in rows)
            for who in ("libbpf", "cilium", "bpforch")
        }
        equal = sum(ok for r in rows for ok in r.xlated.values())
        unfrozen = sum(not ok for r in rows for ok in r.xlated.values())
        print(
            f"{len(rows)} objects: libbpf loads {counts['libbpf']}, cilium/ebpf "
            f"{counts['cilium']}, bpforch {counts['bpforch']} whole; programs loaded: libbpf "
            f"{progs['libbpf']}, cilium/ebpf {progs['cilium']}, bpforch {progs['bpforch']}; "
            f"of those both cilium and bpforch load, {equal} have equal translated instructions "
            f"and {unfrozen} the same once bpforch too verifies before freezing .rodata"
        )
    problems = [f"{r.name}: {u}" for r in rows for u in r.unexplained]
    assert not problems, "\n".join(problems)
    used = {w for r in rows for w in r.why}
    stale = [w.text for w in WHY if w not in used]
    assert not stale, f"WHY rows that explain nothing: {stale}"
    assert equal >= MIN_EQUAL_PROGRAMS


# ------------------------------------------------------------------------------ normal form


def _insn(op: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return asm.encode(asm.Instruction(op, dst, src, off, imm))


CALL, EXIT, MOV, LD = asm.CALL, asm.EXIT, 0xB7, asm.LD_IMM64


def _ours(raw: bytes, refs: dict[int, ebpf.Reference] | None = None) -> ebpf.ProgramSpec:
    return ebpf.ProgramSpec("p", ebpf.ProgType.XDP, None, "xdp", ebpf.Instructions(raw, refs or {}))


def _cilium(*insns: tuple[int, int, int, int, int, str, str]) -> list[dict[str, Any]]:
    keys = ("op", "dst", "src", "off", "imm", "ref", "sym")
    return [dict(zip(keys, i, strict=True)) for i in insns]


def test_normal_form_matches_layouts_and_references() -> None:
    """entry calls a then b; a calls c. bpforch lays out depth first (entry a c b), cilium
    breadth first (entry a b c) and counts the map's ld_imm64 as one instruction."""
    ours = _ours(
        _insn(LD, 1, 0, 0, 0)  # r1 = map ll (encode gives both slots)
        + _insn(CALL, 0, 1, 0, 2)  # slot 2 → 5 (a)
        + _insn(CALL, 0, 1, 0, 4)  # slot 3 → 8 (b)
        + _insn(EXIT)
        + _insn(CALL, 0, 1, 0, 1)  # a: slot 5 → 7 (c)
        + _insn(EXIT)
        + _insn(MOV, 0, 0, 0, 7)  # c
        + _insn(MOV, 0, 0, 0, 8)  # b
        + _insn(EXIT),
        {0: ebpf.Reference(ebpf.RefKind.MAP, "m")},
    )
    theirs = _cilium(
        (LD, 1, 1, 0, 0, "m", "p"),
        (CALL, 0, 1, 0, -1, "a", ""),
        (CALL, 0, 1, 0, -1, "b", ""),
        (EXIT, 0, 0, 0, 0, "", ""),
        (CALL, 0, 1, 0, -1, "c", "a"),
        (EXIT, 0, 0, 0, 0, "", ""),
        (MOV, 0, 0, 0, 8, "", "b"),
        (EXIT, 0, 0, 0, 0, "", ""),
        (MOV, 0, 0, 0, 7, "", "c"),
    )
    assert cilium.ours_program(ours) == cilium.cilium_program(theirs)
    assert len(cilium.ours_program(ours)) == 4  # four functions
    # a different constant, or a different map, is a difference
    changed = list(theirs)
    changed[8] = dict(changed[8], imm=6)
    assert cilium.ours_program(ours) != cilium.cilium_program(changed)
    other_map = [dict(theirs[0], ref="n"), *theirs[1:]]
    assert cilium.ours_program(ours) != cilium.cilium_program(other_map)


def test_normal_form_of_translated_instructions() -> None:
    """Map ids become the map's shape, kernel addresses a marker, calls the callee's rank."""

    def ld(src: int, value: int) -> bytes:
        return _insn(LD, 1, src, 0, value)  # both slots

    shapes = {7: (2, 4, 8, 1, 0), 9: (2, 4, 8, 1, 0x400), 11: (1, 4, 8, 1, 0)}
    a = ld(1, 7) + ld(0, 0xFFFF_8880_1234_5678) + _insn(EXIT)
    b = ld(1, 9) + ld(0, 0xFFFF_8880_8765_4320) + _insn(EXIT)  # other id, flags aside
    c = ld(1, 11) + ld(0, 0xFFFF_8880_1234_5678) + _insn(EXIT)  # a hash map
    d = ld(1, 7) + ld(0, 0x1234) + _insn(EXIT)  # a plain constant
    norm = [cilium.xlated(x, shapes.__getitem__) for x in (a, b, c, d)]
    assert norm[0] == norm[1]
    assert norm[0] != norm[2] and norm[0] != norm[3]
    # the kernel's subprogram index in a call's imm is not compared, its target is
    call = _insn(CALL, 0, 1, 1, 1) + _insn(EXIT) + _insn(EXIT)
    assert cilium.xlated(call, shapes.__getitem__) == cilium.xlated(
        _insn(CALL, 0, 1, 1, 5) + _insn(EXIT) + _insn(EXIT), shapes.__getitem__
    )
