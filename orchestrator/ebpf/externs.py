"""Extern symbols: ``.kconfig`` values, ``.ksyms`` kernel variables and kfuncs.

An object may declare, without defining them:

- ``extern int LINUX_KERNEL_VERSION __kconfig;`` and ``CONFIG_*`` options (bool, tristate
  ``enum libbpf_tristate``, integers, ``char[]`` strings). They live in a read-only,
  frozen ``.kconfig`` array map whose layout is fixed at parse time (libbpf's order:
  alignment descending, then size ascending, then name) and whose contents are filled at
  load time from ``/proc/config.gz`` or ``/boot/config-$(uname -r)``;
- ``extern const struct rq runqueues __ksym;`` (typed: an ``ld_imm64`` of the kernel BTF id,
  ``BPF_PSEUDO_BTF_ID``, Linux 5.11) and ``extern const void sym __ksym;`` (untyped: its
  address from ``/proc/kallsyms``);
- kfuncs, ``extern void bpf_rcu_read_lock(void) __ksym;`` (a call with
  ``BPF_PSEUDO_KFUNC_CALL`` and the function's kernel BTF id, Linux 5.13+).

A ``__weak`` extern that cannot be resolved becomes 0 (kfunc: a call to id 0 that the
verifier accepts as long as it is unreachable); a strong one is an error.
"""

from __future__ import annotations

import enum
import os
import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from orchestrator.ebpf import btf as _btf
from orchestrator.ebpf.errors import FileError, KconfigError, ParseError
from orchestrator.ebpf.files import open_file, read_file, reason

KCONFIG_MAX = 16 << 20  # a kernel config, also once decompressed (they are about 300 KiB)

__all__ = [
    "ExternKind",
    "ExternSpec",
    "KconfigError",
    "kallsyms",
    "kconfig_values",
    "kernel_version_code",
    "read_kconfig",
]


class ExternKind(enum.Enum):
    KCONFIG = "kconfig"
    KSYM = "ksym"
    KFUNC = "kfunc"


@dataclass(frozen=True, slots=True)
class ExternSpec:
    """An extern the object uses. ``type``: the declared type (the Func for a kfunc; Void
    for an untyped ksym). ``offset``/``size``: its place in the ``.kconfig`` map."""

    name: str
    kind: ExternKind
    type: _btf.Type
    weak: bool
    offset: int = 0
    size: int = 0

    @property
    def typed(self) -> bool:
        return not isinstance(_btf.skip_qualifiers(self.type), _btf.Void)


# ------------------------------------------------------------------------------ parse time


def collect(spec: _btf.Spec | None, undefined: Iterable[tuple[str, bool]]) -> dict[str, ExternSpec]:
    """Describe the object's externs and sanitise its BTF for the kernel.

    ``undefined``: (name, weak) of every undefined symbol. Externs are the ones described
    in the ``.kconfig``/``.ksyms`` BTF datasecs (``__kconfig``/``__ksym``); any other
    undefined symbol is left out (the programs that use it cannot be loaded). The BTF is
    changed as libbpf changes it, since the kernel refuses extern linkage: variables become
    allocated globals laid out in their datasec, extern functions become global, and
    ``.ksyms`` entries turn into 4-byte placeholders.
    """
    want = dict(undefined)
    if not want or spec is None:
        return {}
    out: dict[str, ExternSpec] = {}
    kconfig: list[tuple[_btf.Var, int, int]] = []  # var, align, size
    kconfig_sec: _btf.Datasec | None = None
    ksyms_sec: _btf.Datasec | None = None
    for tid in spec.ids_of_kind(_btf.Kind.DATASEC):  # decodes only the datasecs
        t = spec.type_by_id(tid)
        if isinstance(t, _btf.Datasec) and t.name in (".kconfig", ".ksyms"):
            for vsi in t.vars:
                v = vsi.type
                if v.name not in want:
                    continue
                weak = want[v.name]
                if t.name == ".kconfig":
                    kconfig_sec = t
                    if not isinstance(v, _btf.Var):
                        raise ParseError(f"extern {v.name}: a kconfig extern must be a variable")
                    if not v.name.startswith(("CONFIG_", "LINUX_")):
                        raise ParseError(
                            f"extern {v.name}: unrecognized kconfig extern "
                            "(only CONFIG_* and LINUX_* are known)"
                        )
                    size = _btf.sizeof(v.type)
                    _kcfg_kind(v.name, v.type)
                    kconfig.append((v, _btf.alignof(v.type), size))
                else:
                    ksyms_sec = t
                    if isinstance(v, _btf.Func):
                        out[v.name] = ExternSpec(v.name, ExternKind.KFUNC, v, weak)
                    elif isinstance(v, _btf.Var):
                        out[v.name] = ExternSpec(v.name, ExternKind.KSYM, v.type, weak)
    kconfig.sort(key=lambda e: (-e[1], e[2], e[0].name))
    off = 0
    for v, align, size in kconfig:
        off = (off + align - 1) // align * align
        out[v.name] = ExternSpec(v.name, ExternKind.KCONFIG, v.type, want[v.name], off, size)
        off += size
    if kconfig_sec is not None:
        for vsi in kconfig_sec.vars:
            v = vsi.type
            if isinstance(v, _btf.Var) and v.name in out:
                v.linkage = _btf.VarLinkage.GLOBAL_ALLOCATED
                vsi.offset = out[v.name].offset
                vsi.size = out[v.name].size
        kconfig_sec.vars.sort(key=lambda x: x.offset)
        kconfig_sec.size = off
        spec.changed()  # changed in place: marshal encodes the decoded types again
    if ksyms_sec is not None:
        _sanitize_ksyms(spec, ksyms_sec)
    return out


def _sanitize_ksyms(spec: _btf.Spec, sec: _btf.Datasec) -> None:
    int_t = next(
        (
            t
            for t in map(spec.type_by_id, spec.ids_of_kind(_btf.Kind.INT))
            if isinstance(t, _btf.Int) and t.size == 4 and t.bits == 32 and not t.offset
        ),
        None,
    )
    if int_t is None:
        int_t = _btf.Int("int", 4, signed=True)
    dummy: _btf.Var | None = None
    for i, vsi in enumerate(sec.vars):
        t = vsi.type
        if isinstance(t, _btf.Func):
            t.linkage = _btf.FuncLinkage.GLOBAL
            for p in t.type.params:
                if not p.name and not isinstance(p.type, _btf.Void):
                    p.name = "dummy_ksym"
            if dummy is None:
                dummy = _btf.Var("dummy_ksym", int_t, _btf.VarLinkage.GLOBAL_ALLOCATED)
                spec.add(dummy)
            vsi.type = dummy
        elif isinstance(t, _btf.Var):
            t.linkage = _btf.VarLinkage.GLOBAL_ALLOCATED
            t.type = int_t
        vsi.offset = i * 4
        vsi.size = 4
    spec.add(int_t)
    sec.size = 4 * len(sec.vars)
    spec.changed()  # changed in place: marshal encodes the decoded types again


def _kcfg_kind(name: str, t: _btf.Type) -> str:
    u = _btf.skip_qualifiers(t)
    if isinstance(u, _btf.Int):
        if u.bool:
            return "bool"
        if u.char or (u.size == 1 and u.name == "char"):
            return "char"
        return "int"
    if isinstance(u, _btf.Enum) and u.name == "libbpf_tristate":
        return "tristate"
    if isinstance(u, _btf.Array):
        elem = _btf.skip_qualifiers(u.type)
        if isinstance(elem, _btf.Int) and elem.size == 1:
            return "string"
    raise ParseError(f"extern {name}: kconfig type {_btf.describe(t)} is not supported")


# ------------------------------------------------------------------------------ load time


def kernel_version_code(release: str | None = None) -> int:
    """``KERNEL_VERSION(a, b, c)`` of ``uname -r`` (the patch level saturates at 255)."""
    rel = release if release is not None else os.uname().release
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", rel)
    if m is None:
        raise KconfigError(f"kernel release {rel!r} has no version number")
    major, minor, patch = int(m[1]), int(m[2]), int(m[3] or 0)
    return (major << 16) + (minor << 8) + min(patch, 255)


def read_kconfig(path: str | None = None) -> dict[str, str]:
    """``CONFIG_*`` → raw value, from ``path`` or the running kernel's config."""
    paths = [path] if path else ["/proc/config.gz", f"/boot/config-{os.uname().release}"]
    for p in paths:
        try:
            data = read_file(p, limit=KCONFIG_MAX, what="a kernel config")
        except FileError as err:  # there, but refused: say why
            raise KconfigError(f"kernel config {p}: {reason(err)}") from err
        except OSError:
            continue
        if data[:2] == b"\x1f\x8b":
            data = _gunzip(p, data)
        out: dict[str, str] = {}
        for line in data.decode("utf-8", "replace").splitlines():
            if line.startswith("CONFIG_") and "=" in line:
                k, v = line.split("=", 1)
                out[k] = v
        return out
    raise KconfigError(
        "kernel config not found in " + " or ".join(paths) + " (enable CONFIG_IKCONFIG_PROC)"
    )


def _gunzip(path: str, data: bytes) -> bytes:
    """``data`` decompressed, refusing more than :data:`KCONFIG_MAX` bytes (a gzip bomb)."""
    z = zlib.decompressobj(wbits=31)
    try:
        out = z.decompress(data, KCONFIG_MAX + 1)
    except zlib.error as err:
        raise KconfigError(f"kernel config {path}: bad gzip data: {err}") from err
    if len(out) > KCONFIG_MAX:
        raise KconfigError(
            f"kernel config {path}: more than {KCONFIG_MAX >> 20} MiB once decompressed"
        )
    return out


def kallsyms(path: str = "/proc/kallsyms") -> dict[str, int]:
    """Kernel symbol → address (0 when ``kptr_restrict`` hides them)."""
    out: dict[str, int] = {}
    with open_file(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                out.setdefault(parts[2].decode("utf-8", "replace"), int(parts[0], 16))
    return out


def kconfig_values(
    externs: Mapping[str, ExternSpec],
    size: int,
    config: Mapping[str, str] | None,
    features: Mapping[str, int],
) -> bytes:
    """The contents of the ``.kconfig`` map. ``features``: LINUX_* values."""
    buf = bytearray(size)
    for ext in externs.values():
        if ext.kind is not ExternKind.KCONFIG:
            continue
        kind = _kcfg_kind(ext.name, ext.type)
        if ext.name.startswith("LINUX_"):
            if ext.name not in features:
                raise KconfigError(f"extern {ext.name}: unknown LINUX_* extern")
            _put_int(buf, ext, kind, features[ext.name])
            continue
        raw = config.get(ext.name) if config is not None else None
        if raw is None:
            if ext.weak:
                continue
            raise KconfigError(
                f"extern {ext.name}: not set in the kernel config (declare it __weak "
                "to read 0 instead)"
            )
        _put_value(buf, ext, kind, raw)
    return bytes(buf)


def _put_value(buf: bytearray, ext: ExternSpec, kind: str, raw: str) -> None:
    if raw in ("y", "n", "m"):
        if kind == "bool":
            if raw == "m":
                raise KconfigError(f"extern {ext.name}: value m for a bool (use a tristate)")
            buf[ext.offset] = raw == "y"
        elif kind == "tristate":
            _put_int(buf, ext, "int", {"n": 0, "y": 1, "m": 2}[raw])
        elif kind == "char":
            buf[ext.offset] = ord(raw)
        else:
            raise KconfigError(f"extern {ext.name}: value {raw} for a {kind}")
        return
    if raw.startswith('"'):
        if kind != "string":
            raise KconfigError(f"extern {ext.name}: string value for a {kind}")
        text = raw[1:-1] if raw.endswith('"') and len(raw) >= 2 else raw[1:]
        data = text.encode()[: ext.size - 1]
        buf[ext.offset : ext.offset + len(data)] = data
        return
    try:
        num = int(raw, 0)
    except ValueError:
        raise KconfigError(f"extern {ext.name}: cannot parse value {raw!r}") from None
    if kind not in ("int", "char"):
        raise KconfigError(f"extern {ext.name}: number {raw} for a {kind}")
    _put_int(buf, ext, kind, num)


def _put_int(buf: bytearray, ext: ExternSpec, kind: str, value: int) -> None:
    if kind == "string":
        raise KconfigError(f"extern {ext.name}: number for a string")
    u = _btf.skip_qualifiers(ext.type)
    signed = isinstance(u, _btf.Int | _btf.Enum) and u.signed
    size = ext.size
    lo, hi = (-(1 << (size * 8 - 1)), 1 << (size * 8 - 1)) if signed else (0, 1 << (size * 8))
    if not lo <= value < hi:
        raise KconfigError(f"extern {ext.name}: value {value} does not fit in {size} bytes")
    buf[ext.offset : ext.offset + size] = value.to_bytes(size, "little", signed=signed)
