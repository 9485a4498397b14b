"""Externs, kconfig values, struct_ops tables and target lookup, without a kernel."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest

from orchestrator.ebpf.btf import (
    Array,
    Datasec,
    Enum,
    EnumValue,
    Func,
    FuncLinkage,
    FuncParam,
    FuncProto,
    Int,
    Member,
    Pointer,
    Spec,
    Struct,
    Var,
    VarLinkage,
    VarSecinfo,
    Void,
)
from orchestrator.ebpf.btf import kernel as kernel_btf
from orchestrator.ebpf.btf.core import Target, resolve
from orchestrator.ebpf.btf.ext import CORERelo, COREReloKind
from orchestrator.ebpf.errors import BTFError, ParseError
from orchestrator.ebpf.externs import (
    ExternKind,
    ExternSpec,
    KconfigError,
    collect,
    kconfig_values,
    kernel_version_code,
    read_kconfig,
)
from orchestrator.ebpf.link.struct_ops import StructOpsSpec, build_value
from orchestrator.ebpf.link.struct_ops import collect as collect_struct_ops

BOOL = Int("_Bool", 1, bool=True)
CHAR = Int("char", 1, signed=True, char=True)
INT = Int("int", 4, signed=True)
U64 = Int("unsigned long long", 8)
U32 = Int("unsigned int", 4)
TRISTATE = Enum("libbpf_tristate", 4, False, [EnumValue("TRI_NO", 0), EnumValue("TRI_YES", 1)])


def kconfig_object(*vars_: tuple[str, object]) -> tuple[Spec, Datasec]:
    spec = Spec()
    sec = Datasec(".kconfig", 0, [])
    for name, t in vars_:
        assert isinstance(t, Int | Enum | Array | Struct)
        sec.vars.append(VarSecinfo(Var(name, t, VarLinkage.GLOBAL_EXTERN), 0, 0))
    spec.add(sec)
    return spec, sec


def test_kernel_version_code() -> None:
    assert kernel_version_code("6.18.44-fc-v669") == (6 << 16) + (18 << 8) + 44
    assert kernel_version_code("5.4.300") == (5 << 16) + (4 << 8) + 255  # saturates
    assert kernel_version_code("6.1") == (6 << 16) + (1 << 8)
    with pytest.raises(KconfigError):
        kernel_version_code("weird")


def test_read_kconfig(tmp_path: Path) -> None:
    text = 'CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C="str"\nCONFIG_D=0x10\n'
    plain = tmp_path / "config"
    plain.write_text(text)
    packed = tmp_path / "config.gz"
    packed.write_bytes(gzip.compress(text.encode()))
    want = {"CONFIG_A": "y", "CONFIG_C": '"str"', "CONFIG_D": "0x10"}
    assert read_kconfig(str(plain)) == want
    assert read_kconfig(str(packed)) == want
    with pytest.raises(KconfigError, match="not found"):
        read_kconfig(str(tmp_path / "missing"))


def test_collect_lays_out_kconfig_like_libbpf() -> None:
    spec, sec = kconfig_object(
        ("CONFIG_BOOL", BOOL),
        ("LINUX_KERNEL_VERSION", U32),
        ("CONFIG_STR", Array(CHAR, U32, 5)),
        ("CONFIG_TRI", TRISTATE),
        ("CONFIG_BIG", U64),
    )
    externs = collect(spec, [(v.type.name, False) for v in sec.vars])
    # alignment descending, then size ascending, then name
    order = sorted(externs.values(), key=lambda e: e.offset)
    assert [e.name for e in order] == [
        "CONFIG_BIG",
        "CONFIG_TRI",
        "LINUX_KERNEL_VERSION",
        "CONFIG_BOOL",
        "CONFIG_STR",
    ]
    assert [e.offset for e in order] == [0, 8, 12, 16, 17]
    assert sec.size == 22
    # the BTF is now acceptable to the kernel: allocated, laid out, sorted
    assert all(isinstance(v.type, Var) for v in sec.vars)
    assert all(
        v.type.linkage == VarLinkage.GLOBAL_ALLOCATED for v in sec.vars if isinstance(v.type, Var)
    )
    assert [v.offset for v in sec.vars] == [0, 8, 12, 16, 17]


def test_collect_errors() -> None:
    spec, _ = kconfig_object(("WHATEVER", INT))
    with pytest.raises(ParseError, match="unrecognized kconfig extern"):
        collect(spec, [("WHATEVER", False)])
    spec, _ = kconfig_object(("CONFIG_S", Struct("s", 4, [Member("x", INT, 0)])))
    with pytest.raises(ParseError, match="not supported"):
        collect(spec, [("CONFIG_S", False)])
    # an undefined symbol that no datasec describes is not an extern: the programs that
    # use it record an unresolved reference (see test_elf), the parse goes on
    spec, _ = kconfig_object(("CONFIG_A", INT))
    assert sorted(collect(spec, [("CONFIG_A", False), ("other", False)])) == ["CONFIG_A"]
    assert collect(None, [("CONFIG_A", False)]) == {}
    assert collect(None, []) == {}


def test_ksyms_sanitised_for_the_kernel() -> None:
    spec = Spec()
    proto = FuncProto(Void(), [FuncParam("", Pointer(INT))])
    kfunc = Func("bpf_some_kfunc", proto, FuncLinkage.EXTERN)
    var = Var("some_var", Struct("thing", 8, [Member("x", U64, 0)]), VarLinkage.GLOBAL_EXTERN)
    untyped = Var("some_sym", Void(), VarLinkage.GLOBAL_EXTERN)
    sec = Datasec(
        ".ksyms", 0, [VarSecinfo(kfunc, 0, 0), VarSecinfo(var, 0, 0), VarSecinfo(untyped, 0, 0)]
    )
    spec.add(sec)
    externs = collect(spec, [("bpf_some_kfunc", False), ("some_var", True), ("some_sym", False)])
    assert externs["bpf_some_kfunc"].kind is ExternKind.KFUNC
    assert externs["some_var"].kind is ExternKind.KSYM and externs["some_var"].typed
    assert externs["some_var"].weak
    assert not externs["some_sym"].typed
    # the kernel refuses extern linkage and functions in a datasec
    assert kfunc.linkage == FuncLinkage.GLOBAL
    assert proto.params[0].name  # unnamed params get a name
    assert all(isinstance(v.type, Var) for v in sec.vars)
    assert [(v.offset, v.size) for v in sec.vars] == [(0, 4), (4, 4), (8, 4)]
    assert sec.size == 12
    blob, _ = spec.marshal()
    Spec.parse(blob)  # still valid BTF


def kcfg(name: str, t: object, offset: int = 0, weak: bool = False) -> ExternSpec:
    assert isinstance(t, Int | Enum | Array)
    from orchestrator.ebpf.btf import sizeof

    return ExternSpec(name, ExternKind.KCONFIG, t, weak, offset, sizeof(t))


def test_kconfig_values() -> None:
    ext = {
        "CONFIG_B": kcfg("CONFIG_B", BOOL, 0),
        "CONFIG_T": kcfg("CONFIG_T", TRISTATE, 4),
        "CONFIG_C": kcfg("CONFIG_C", CHAR, 8),
        "CONFIG_I": kcfg("CONFIG_I", INT, 12),
        "CONFIG_S": kcfg("CONFIG_S", Array(CHAR, U32, 4), 16),
        "CONFIG_W": kcfg("CONFIG_W", INT, 20, weak=True),
        "LINUX_KERNEL_VERSION": kcfg("LINUX_KERNEL_VERSION", U32, 24),
    }
    config = {
        "CONFIG_B": "y",
        "CONFIG_T": "m",
        "CONFIG_C": "n",
        "CONFIG_I": "-0x10",
        "CONFIG_S": '"hello"',
    }
    data = kconfig_values(ext, 28, config, {"LINUX_KERNEL_VERSION": 0x060000})
    assert data[0] == 1
    assert struct.unpack_from("<I", data, 4)[0] == 2  # TRI_MODULE
    assert data[8:9] == b"n"
    assert struct.unpack_from("<i", data, 12)[0] == -16
    assert data[16:20] == b"hel\0"  # truncated, nul-terminated
    assert struct.unpack_from("<i", data, 20)[0] == 0  # weak and missing
    assert struct.unpack_from("<I", data, 24)[0] == 0x060000


@pytest.mark.parametrize(
    ("ext", "value", "match"),
    [
        (kcfg("CONFIG_X", BOOL), "m", "for a bool"),
        (kcfg("CONFIG_X", INT), "y", "value y for a int"),
        (kcfg("CONFIG_X", INT), '"str"', "string value"),
        (kcfg("CONFIG_X", BOOL), "1", "number 1 for a bool"),
        (kcfg("CONFIG_X", Int("u8", 1)), "300", "does not fit"),
        (kcfg("CONFIG_X", INT), "12abc", "cannot parse"),
        (kcfg("CONFIG_X", INT), None, "not set"),
    ],
)
def test_kconfig_value_errors(ext: ExternSpec, value: str | None, match: str) -> None:
    config = {} if value is None else {"CONFIG_X": value}
    with pytest.raises(KconfigError, match=match):
        kconfig_values({"CONFIG_X": ext}, 8, config, {})


def test_unknown_linux_extern() -> None:
    ext = kcfg("LINUX_NO_SUCH", INT)
    with pytest.raises(KconfigError, match="unknown LINUX_"):
        kconfig_values({"LINUX_NO_SUCH": ext}, 4, None, {})


# ------------------------------------------------------------------------------ struct_ops


def ops_btf() -> tuple[Spec, Struct, Datasec]:
    spec = Spec()
    proto = FuncProto(INT, [FuncParam("x", INT)])
    ops = Struct(
        "my_ops",
        24,
        [
            Member("fn", Pointer(proto), 0),
            Member("flags", U32, 64),
            Member("name", Array(CHAR, U32, 8), 96),
        ],
    )
    sec = Datasec(
        ".struct_ops", 24, [VarSecinfo(Var("my", ops, VarLinkage.GLOBAL_ALLOCATED), 0, 24)]
    )
    spec.add(sec)
    return spec, ops, sec


def test_struct_ops_collect_and_value() -> None:
    spec, _ops, _ = ops_btf()
    data = bytes(8) + struct.pack("<I", 7) + b"abc\0\0\0\0\0" + bytes(4)
    [(name, table)] = collect_struct_ops(spec, [(".struct_ops", data, [(0, "my_fn")])])
    assert name == "my" and table.funcs == {"fn": "my_fn"} and not table.link
    # the kernel's struct: members reordered, value type wraps it at offset 8
    kstruct = Struct(
        "my_ops",
        24,
        [
            Member("name", Array(CHAR, U32, 8), 0),
            Member("fn", Pointer(FuncProto(INT, [])), 64),
            Member("flags", U32, 128),
        ],
    )
    vtype = Struct(
        "bpf_struct_ops_my_ops", 32, [Member("refcnt", U64, 0), Member("data", kstruct, 64)]
    )
    from orchestrator.ebpf.link.struct_ops import KernelStructOps

    kernel = KernelStructOps(1, kstruct, 2, vtype, 8)
    value = build_value("my", table, kernel, {"my_fn": 42})
    assert value[8:16] == b"abc\0\0\0\0\0"
    assert struct.unpack_from("<Q", value, 16)[0] == 42
    assert struct.unpack_from("<I", value, 24)[0] == 7
    assert kernel.member_index("flags") == 2

    from orchestrator.ebpf.errors import AttachTargetError

    smaller = Struct("my_ops", 8, [Member("fn", Pointer(FuncProto(INT, [])), 0)])
    with pytest.raises(AttachTargetError, match="no such member"):
        build_value("my", table, KernelStructOps(1, smaller, 2, vtype, 8), {"my_fn": 42})
    with pytest.raises(AttachTargetError, match="no member"):
        kernel.member_index("missing")


def test_struct_ops_collect_errors() -> None:
    spec, _, _ = ops_btf()
    with pytest.raises(ParseError, match="not a function pointer"):
        collect_struct_ops(spec, [(".struct_ops", bytes(24), [(8, "my_fn")])])
    with pytest.raises(ParseError, match="truncated"):
        collect_struct_ops(spec, [(".struct_ops", bytes(10), [])])
    with pytest.raises(ParseError, match="needs BTF"):
        collect_struct_ops(None, [(".struct_ops", bytes(24), [])])
    with pytest.raises(ParseError, match="no BTF datasec"):
        collect_struct_ops(spec, [(".struct_ops.link", bytes(24), [])])
    # a plain struct_ops table reused through a StructOpsSpec keeps its data
    assert StructOpsSpec(Struct("x", 0), b"").funcs == {}


# ------------------------------------------------------------------------------ targets


def test_module_btf_is_searched_only_without_vmlinux_candidates() -> None:
    base = Spec()
    base.add(Struct("in_vmlinux", 4, [Member("a", INT, 0)]))
    module = Spec(base=base)
    module.add(Struct("in_module", 8, [Member("a", INT, 32)]))
    local = Spec()
    lt = Struct("in_module", 4, [Member("a", INT, 0)])
    local.add(lt)
    res = resolve(
        CORERelo(0, lt, "0:0", COREReloKind.FIELD_BYTE_OFFSET), local, Target(base, (module,))
    )
    assert res.new == 4 and not res.poison
    lv = Struct("in_vmlinux", 4, [Member("a", INT, 0)])
    local.add(lv)
    res = resolve(
        CORERelo(0, lv, "0:0", COREReloKind.FIELD_BYTE_OFFSET), local, Target(base, (module,))
    )
    assert res.new == 0


def test_kernel_btf_load_errors(tmp_path: Path) -> None:
    with pytest.raises(BTFError, match="no such file"):
        kernel_btf.load(tmp_path / "nope")
    bad = tmp_path / "bad"
    bad.write_bytes(b"\0" * 64)
    with pytest.raises(BTFError, match="bad magic"):
        kernel_btf.load(bad)
    good = tmp_path / "good"
    s = Spec()
    s.add(Struct("only", 4, [Member("a", INT, 0)]))
    good.write_bytes(s.marshal()[0])
    kb = kernel_btf.load(good)
    assert kb.modules == {}  # an explicit file stands alone
    found = kb.find("only", Struct("", 0).kind)
    assert found is not None and found[0] == "vmlinux"
    assert kb.find("only", INT.kind) is None
