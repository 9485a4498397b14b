"""CO-RE: Compile Once, Run Everywhere relocations against the kernel's BTF.

clang records, in ``.BTF.ext``, every instruction whose immediate or offset depends on a
kernel type's layout (``__builtin_preserve_access_index``, ``bpf_core_field_exists`` ...):
the local (object) type, an access string (``"0:2:1"``: an array index into the root, then
member/element indices) and what is wanted (a field's byte offset, its size, whether a type
exists ...). At load time each relocation is resolved against the target BTF and the
instruction patched.

The rules are libbpf's (``tools/lib/bpf/relo_core.c`` semantics, documented in the kernel's
``Documentation/bpf/libbpf/program_types`` and the "BPF CO-RE reference guide"):

- candidates are target types of a compatible kind (struct/union, enum/enum64 ...) whose
  *essential* name (without a ``___flavor`` suffix) equals the local type's; vmlinux is
  searched first, module BTF only when vmlinux has none;
- a field access matches when every named member is found by name in the target (looking
  through anonymous struct/union members) with a compatible type, and every array index is
  within bounds (flexible arrays excepted);
- all matching candidates must agree on the result, otherwise the relocation is ambiguous;
- a relocation no candidate satisfies yields 0 for the ``*_exists``/``type_*`` kinds and
  *poisons* the instruction otherwise: it becomes a call to the invalid helper
  ``0xbad2310`` (both slots of an ``ld_imm64``), which the verifier only rejects if it is
  reachable, so code guarded by ``bpf_core_field_exists`` still loads.

Everything here is pure (no kernel): the target is any BTF :class:`~orchestrator.ebpf.btf.Spec`.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from orchestrator.ebpf import btf as _btf
from orchestrator.ebpf.btf.ext import CORERelo, COREReloKind
from orchestrator.ebpf.btf.kernel import essential_name
from orchestrator.ebpf.errors import BTFError, COREError

__all__ = [
    "POISON_HELPER",
    "COREError",
    "COREResult",
    "Target",
    "apply_relocations",
    "describe_relo",
    "flavored_index",
    "poisoned_in_log",
    "poisoned_instruction",
    "resolve",
    "seed_flavored_index",
    "types_compat",
]

POISON_HELPER = 0xBAD2310  # libbpf's invalid helper id for poisoned instructions
_MAX_SPEC_LEN = 64  # BPF_CORE_SPEC_MAX_LEN
_MAX_DEPTH = 32

_FIELD_KINDS = frozenset(
    {
        COREReloKind.FIELD_BYTE_OFFSET,
        COREReloKind.FIELD_BYTE_SIZE,
        COREReloKind.FIELD_EXISTS,
        COREReloKind.FIELD_SIGNED,
        COREReloKind.FIELD_LSHIFT_U64,
        COREReloKind.FIELD_RSHIFT_U64,
    }
)
_TYPE_KINDS = frozenset(
    {
        COREReloKind.TYPE_ID_LOCAL,
        COREReloKind.TYPE_ID_TARGET,
        COREReloKind.TYPE_EXISTS,
        COREReloKind.TYPE_SIZE,
        COREReloKind.TYPE_MATCHES,
    }
)
_ENUM_KINDS = frozenset({COREReloKind.ENUMVAL_EXISTS, COREReloKind.ENUMVAL_VALUE})

_U64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Target:
    """The BTF to relocate against: a main spec (vmlinux) and further specs (modules)
    searched only when the main one has no candidate."""

    main: _btf.Spec
    extra: tuple[_btf.Spec, ...] = ()

    def candidates(self, local: _btf.Type) -> list[tuple[_btf.Spec, int]]:
        ess = essential_name(local.name)
        kind = _compat_kind(local.kind)
        out = self._cands_in(self.main, ess, kind)
        if out:
            return out
        for spec in self.extra:
            out.extend(self._cands_in(spec, ess, kind))
        return out

    def _cands_in(self, spec: _btf.Spec, ess: str, kind: int) -> list[tuple[_btf.Spec, int]]:
        flavored = _flavored_index(spec)
        ids = [i for i in spec.ids_by_name(ess) if i >= spec.first_id]
        ids.extend(flavored.get(ess, ()))
        ids.sort()
        return [(spec, i) for i in ids if _compat_kind(spec.kind_of(i)) == kind]


# Flavored names (``foo___bar``) of a target spec, by essential name. Target specs are
# usually the process-wide cached kernel BTF, so the index is kept per spec (a few).
_FLAVORED: dict[int, tuple[_btf.Spec, dict[str, list[int]]]] = {}
_FLAVORED_MAX = 8


def _flavored_index(spec: _btf.Spec) -> dict[str, list[int]]:
    hit = _FLAVORED.get(id(spec))
    if hit is not None and hit[0] is spec:
        return hit[1]
    flavored: dict[str, list[int]] = {}
    for n in spec.names_containing("___"):
        if "___" in n:
            e = essential_name(n)
            if e != n:
                flavored.setdefault(e, []).extend(
                    i for i in spec.ids_by_name(n) if i >= spec.first_id
                )
    if len(_FLAVORED) >= _FLAVORED_MAX:
        _FLAVORED.pop(next(iter(_FLAVORED)))
    _FLAVORED[id(spec)] = (spec, flavored)
    return flavored


def flavored_index(spec: _btf.Spec) -> dict[str, list[int]]:
    """The ids of ``spec``'s flavored types (``foo___bar``) by essential name, as CO-RE
    candidate searches use it (the persisted kernel BTF index keeps it)."""
    return _flavored_index(spec)


def seed_flavored_index(spec: _btf.Spec, index: dict[str, list[int]]) -> None:
    """Use ``index`` (from :func:`flavored_index` of the same blob) for ``spec``."""
    if len(_FLAVORED) >= _FLAVORED_MAX:
        _FLAVORED.pop(next(iter(_FLAVORED)))
    _FLAVORED[id(spec)] = (spec, index)


def _compat_kind(k: _btf.Kind) -> int:
    return int(_btf.Kind.ENUM) if k == _btf.Kind.ENUM64 else int(k)


# ------------------------------------------------------------------------------ specs


@dataclass(slots=True)
class _Acc:
    type: _btf.Type  # the composite holding the member, or the array element type
    idx: int
    name: str | None  # member (or enumerator) name; None for array accesses


@dataclass(slots=True)
class _Spec:
    btf: _btf.Spec
    root: _btf.Type  # the relocation's type, unskipped
    kind: COREReloKind
    raw: list[int] = field(default_factory=list)
    acc: list[_Acc] = field(default_factory=list)
    bit_offset: int = 0


def _skip(t: _btf.Type) -> _btf.Type:
    return _btf.skip_qualifiers(t)


def _size(t: _btf.Type) -> int:
    try:
        return _btf.sizeof(t)
    except BTFError as err:
        raise COREError(f"{_btf.describe(t)} has no size") from err


def _is_composite(t: _btf.Type) -> bool:
    return isinstance(t, _btf.Struct | _btf.Union)


def _is_flex(prev: _Acc | None, arr: _btf.Array) -> bool:
    if prev is None or prev.name is None or arr.nelems > 0:
        return False
    t = prev.type
    return isinstance(t, _btf.Struct | _btf.Union) and prev.idx == len(t.members) - 1


def _parse_spec(local: _btf.Spec, relo: CORERelo) -> _Spec:
    """The local side of a relocation: accessors and bit offset (``bpf_core_parse_spec``)."""
    spec = _Spec(local, relo.type, relo.kind)
    if not relo.access:
        raise COREError("empty access string")
    try:
        spec.raw = [int(p) for p in relo.access.split(":")]
    except ValueError:
        raise COREError(f"bad access string {relo.access!r}") from None
    if any(i < 0 for i in spec.raw) or len(spec.raw) > _MAX_SPEC_LEN:
        raise COREError(f"bad access string {relo.access!r}")
    if relo.kind in _TYPE_KINDS:
        if relo.access != "0":
            raise COREError(f"type relocation with access string {relo.access!r}")
        return spec
    t = _skip(relo.type)
    idx = spec.raw[0]
    if relo.kind in _ENUM_KINDS:
        if not isinstance(t, _btf.Enum) or len(spec.raw) > 1 or idx >= len(t.values):
            raise COREError(f"enum relocation on {_btf.describe(t)} with access {relo.access!r}")
        spec.acc.append(_Acc(t, idx, t.values[idx].name))
        return spec
    if relo.kind not in _FIELD_KINDS:
        raise COREError(f"unknown relocation kind {relo.kind}")
    spec.acc.append(_Acc(t, idx, None))
    spec.bit_offset = idx * _size(t) * 8
    cur: _btf.Type = t
    for idx in spec.raw[1:]:
        cur = _skip(cur)
        if isinstance(cur, _btf.Struct | _btf.Union):
            if idx >= len(cur.members):
                raise COREError(f"member {idx} of {_btf.describe(cur)} does not exist")
            m = cur.members[idx]
            spec.bit_offset += m.offset_bits
            if m.name:
                spec.acc.append(_Acc(cur, idx, m.name))
            cur = m.type
        elif isinstance(cur, _btf.Array):
            elem = _skip(cur.type)
            if not _is_flex(spec.acc[-1], cur) and idx >= cur.nelems:
                raise COREError(f"index {idx} is beyond {_btf.describe(cur)}")
            spec.acc.append(_Acc(elem, idx, None))
            spec.bit_offset += idx * _size(elem) * 8
            cur = elem
        else:
            raise COREError(f"cannot access {_btf.describe(cur)} with index {idx}")
    return spec


# ------------------------------------------------------------------------------ compatibility


def _names_match(local: str, targ: str) -> bool:
    if not targ:
        return not local
    return essential_name(local) == essential_name(targ)


def _fields_compat(local: _btf.Type, targ: _btf.Type) -> bool:
    """``bpf_core_fields_are_compat``: can a field of type ``local`` be read as ``targ``."""
    for _ in range(_MAX_DEPTH):
        lt, tt = _skip(local), _skip(targ)
        if _is_composite(lt) and _is_composite(tt):
            return True
        if _compat_kind(lt.kind) != _compat_kind(tt.kind):
            return False
        if isinstance(lt, _btf.Pointer | _btf.Float):
            return True
        if isinstance(lt, _btf.Fwd | _btf.Enum):
            ln, tn = essential_name(lt.name), essential_name(tt.name)
            return not ln or not tn or ln == tn
        if isinstance(lt, _btf.Int):
            assert isinstance(tt, _btf.Int)
            return lt.offset == 0 and tt.offset == 0
        if isinstance(lt, _btf.Array):
            assert isinstance(tt, _btf.Array)
            local, targ = lt.type, tt.type
            continue
        return False
    raise COREError("type chain too deep")


def types_compat(local: _btf.Type, targ: _btf.Type, depth: int = _MAX_DEPTH) -> bool:
    """``bpf_core_types_are_compat``: the relaxed check behind type_exists/size/id."""
    if _compat_kind(local.kind) != _compat_kind(targ.kind):
        return False
    while True:
        depth -= 1
        if depth < 0:
            raise COREError("type chain too deep")
        lt, tt = _skip(local), _skip(targ)
        if _compat_kind(lt.kind) != _compat_kind(tt.kind):
            return False
        if isinstance(lt, _btf.Void | _btf.Struct | _btf.Union | _btf.Enum | _btf.Fwd):
            return True
        if isinstance(lt, _btf.Int):
            assert isinstance(tt, _btf.Int)
            return lt.offset == 0 and tt.offset == 0
        if isinstance(lt, _btf.Pointer):
            assert isinstance(tt, _btf.Pointer)
            local, targ = lt.target, tt.target
            continue
        if isinstance(lt, _btf.Array):
            assert isinstance(tt, _btf.Array)
            local, targ = lt.type, tt.type
            continue
        if isinstance(lt, _btf.FuncProto):
            assert isinstance(tt, _btf.FuncProto)
            if len(lt.params) != len(tt.params):
                return False
            for lp, tp in zip(lt.params, tt.params, strict=True):
                if not types_compat(_skip(lp.type), _skip(tp.type), depth):
                    return False
            local, targ = lt.return_type, tt.return_type
            continue
        return False


def _types_match(local: _btf.Type, targ: _btf.Type, behind_ptr: bool, level: int) -> bool:
    """``bpf_core_types_match``: the stricter check behind ``bpf_core_type_matches``."""
    if level <= 0:
        raise COREError("type chain too deep")
    for _ in range(_MAX_DEPTH):
        lt, tt = _skip(local), _skip(targ)
        if not _names_match(lt.name, tt.name):
            return False
        lk, tk = lt.kind, tt.kind
        if isinstance(lt, _btf.Void):
            return tk == lk
        if isinstance(lt, _btf.Fwd):
            if behind_ptr:
                if isinstance(tt, _btf.Fwd):
                    return lt.union == tt.union
                return (isinstance(tt, _btf.Struct) and not lt.union) or (
                    isinstance(tt, _btf.Union) and lt.union
                )
            return isinstance(tt, _btf.Fwd) and lt.union == tt.union
        if isinstance(lt, _btf.Enum):
            if not isinstance(tt, _btf.Enum) or lt.size != tt.size:
                return False
            if len(lt.values) > len(tt.values):
                return False
            return all(any(_names_match(lv.name, tv.name) for tv in tt.values) for lv in lt.values)
        if isinstance(lt, _btf.Struct | _btf.Union):
            if behind_ptr:
                if lk == tk:
                    return True
                return isinstance(tt, _btf.Fwd) and isinstance(lt, _btf.Union) == tt.union
            if lk != tk:
                return False
            assert isinstance(tt, _btf.Struct | _btf.Union)
            if len(lt.members) > len(tt.members):
                return False
            for lm in lt.members:
                if not any(
                    lm.name == tm.name and _types_match(lm.type, tm.type, behind_ptr, level - 1)
                    for tm in tt.members
                ):
                    return False
            return True
        if isinstance(lt, _btf.Int):
            if not isinstance(tt, _btf.Int):
                return False
            return lt.size == tt.size and lt.signed == tt.signed
        if isinstance(lt, _btf.Pointer):
            if not isinstance(tt, _btf.Pointer):
                return False
            behind_ptr = True
            local, targ = lt.target, tt.target
            continue
        if isinstance(lt, _btf.Array):
            if not isinstance(tt, _btf.Array) or lt.nelems != tt.nelems:
                return False
            local, targ = lt.type, tt.type
            continue
        if isinstance(lt, _btf.FuncProto):
            if not isinstance(tt, _btf.FuncProto) or len(lt.params) != len(tt.params):
                return False
            for lp, tp in zip(lt.params, tt.params, strict=True):
                if not _types_match(lp.type, tp.type, behind_ptr, level - 1):
                    return False
            local, targ = lt.return_type, tt.return_type
            continue
        return False
    raise COREError("type chain too deep")


def _match_member(local_acc: _Acc, targ: _btf.Type, spec: _Spec) -> tuple[bool, _btf.Type | None]:
    """Find the local named member in ``targ`` (descending into anonymous members)."""
    lt = local_acc.type
    assert isinstance(lt, _btf.Struct | _btf.Union)
    lm = lt.members[local_acc.idx]
    tt = _skip(targ)
    if not isinstance(tt, _btf.Struct | _btf.Union):
        return False, None
    for i, m in enumerate(tt.members):
        if len(spec.raw) >= _MAX_SPEC_LEN:
            raise COREError("struct/union/array nesting too deep")
        spec.bit_offset += m.offset_bits
        spec.raw.append(i)
        if not m.name:
            found, nxt = _match_member(local_acc, m.type, spec)
            if found:
                return True, nxt
        elif m.name == lm.name:
            spec.acc.append(_Acc(tt, i, m.name))
            if _fields_compat(lm.type, m.type):
                return True, m.type
            spec.acc.pop()
            return False, None
        spec.bit_offset -= m.offset_bits
        spec.raw.pop()
    return False, None


def _spec_match(local: _Spec, tspec: _btf.Spec, tid: int) -> _Spec | None:
    """``bpf_core_spec_match``: the target side for candidate ``tid``, or None."""
    targ_root = tspec.type_by_id(tid)
    out = _Spec(tspec, targ_root, local.kind)
    if local.kind in _TYPE_KINDS:
        if local.kind == COREReloKind.TYPE_MATCHES:
            ok = _types_match(local.root, targ_root, False, _MAX_DEPTH)
        else:
            ok = types_compat(local.root, targ_root)
        return out if ok else None
    if local.kind in _ENUM_KINDS:
        tt = _skip(targ_root)
        if not isinstance(tt, _btf.Enum):
            return None
        lname = local.acc[0].name or ""
        ess = essential_name(lname)
        for i, v in enumerate(tt.values):
            if essential_name(v.name) == ess:
                out.acc.append(_Acc(tt, i, v.name))
                out.raw.append(i)
                return out
        return None
    cur: _btf.Type = targ_root
    for n, la in enumerate(local.acc):
        if n > 0:
            cur = _skip(cur)
        if la.name is not None:
            found, nxt = _match_member(la, cur, out)
            if not found or nxt is None:
                return None
            cur = nxt
            continue
        if n > 0:
            if not isinstance(cur, _btf.Array):
                return None
            if not _is_flex(out.acc[-1] if out.acc else None, cur) and la.idx >= cur.nelems:
                return None
            cur = _skip(cur.type)
        if len(out.raw) >= _MAX_SPEC_LEN:
            raise COREError("struct/union/array nesting too deep")
        elem = _skip(cur)
        out.acc.append(_Acc(elem, la.idx, None))
        out.raw.append(la.idx)
        out.bit_offset += la.idx * _size(elem) * 8
    return out


# ------------------------------------------------------------------------------ results


class _Poison(Exception):
    """The relocation cannot be satisfied: poison the instruction."""


@dataclass(frozen=True, slots=True)
class COREResult:
    """How one relocation resolved. ``poison``: the instruction is made invalid.

    ``orig``/``new``: the value the compiler put in the instruction and the target's.
    ``orig_size``/``new_size``: memory access sizes for field offsets (0 if not relevant).
    """

    relo: CORERelo
    poison: bool
    orig: int
    new: int
    validate: bool = True
    orig_size: int = 0
    new_size: int = 0
    fail_memsz_adjust: bool = False
    target: str = ""  # the target's accessor path, for messages


def _field_value(
    spec: _Spec | None, kind: COREReloKind, validate: list[bool] | None
) -> tuple[int, int, _btf.Type | None]:
    """(value, memory size, field type) for a field relocation (``bpf_core_calc_field_relo``)."""
    if kind == COREReloKind.FIELD_EXISTS:
        return (1 if spec is not None else 0), 0, None
    if spec is None:
        raise _Poison
    acc = spec.acc[-1]
    if acc.name is None:
        if kind == COREReloKind.FIELD_BYTE_OFFSET:
            return spec.bit_offset // 8, _size(acc.type), acc.type
        if kind == COREReloKind.FIELD_BYTE_SIZE:
            return _size(acc.type), 0, None
        raise COREError(f"{kind.name.lower()} cannot be applied to an array access")
    t = acc.type
    assert isinstance(t, _btf.Struct | _btf.Union)
    m = t.members[acc.idx]
    mt = _skip(m.type)
    bit_off = spec.bit_offset
    bit_sz = m.bitfield_size
    bitfield = bit_sz > 0
    if bitfield:
        byte_sz = _size(mt)
        byte_off = bit_off // 8 // byte_sz * byte_sz
        while bit_off + bit_sz - byte_off * 8 > byte_sz * 8:
            if byte_sz >= 8:
                raise COREError(f"bitfield {m.name} cannot be read with a 64-bit load")
            byte_sz *= 2
            byte_off = bit_off // 8 // byte_sz * byte_sz
    else:
        byte_sz = _size(mt)
        byte_off = bit_off // 8
        bit_sz = byte_sz * 8
    if validate is not None:
        validate[0] = not bitfield
    if kind == COREReloKind.FIELD_BYTE_OFFSET:
        if bitfield:
            return byte_off, 0, None
        return byte_off, byte_sz, mt
    if kind == COREReloKind.FIELD_BYTE_SIZE:
        return byte_sz, 0, None
    if kind == COREReloKind.FIELD_SIGNED:
        if validate is not None:
            validate[0] = True
        signed = (isinstance(mt, _btf.Enum) and mt.signed) or (
            isinstance(mt, _btf.Int) and mt.signed
        )
        return int(signed), 0, None
    if kind == COREReloKind.FIELD_LSHIFT_U64:
        return 64 - (bit_off + bit_sz - byte_off * 8), 0, None
    if kind == COREReloKind.FIELD_RSHIFT_U64:
        if validate is not None:
            validate[0] = True
        return 64 - bit_sz, 0, None
    raise COREError(f"unknown field relocation {kind}")


def _type_value(spec: _Spec | None, kind: COREReloKind) -> int:
    if spec is None:
        return 0
    if kind == COREReloKind.TYPE_ID_TARGET:
        return spec.btf.type_id(spec.root)
    if kind in (COREReloKind.TYPE_EXISTS, COREReloKind.TYPE_MATCHES):
        return 1
    if kind == COREReloKind.TYPE_SIZE:
        return _size(spec.root)
    raise COREError(f"unknown type relocation {kind}")


def _enum_value(spec: _Spec | None, kind: COREReloKind) -> int:
    if kind == COREReloKind.ENUMVAL_EXISTS:
        return 1 if spec is not None else 0
    if spec is None:
        raise _Poison
    t = spec.acc[0].type
    assert isinstance(t, _btf.Enum)
    return t.values[spec.acc[0].idx].value & _U64


def _calc(local: _Spec, targ: _Spec | None, relo: CORERelo) -> COREResult:
    kind = relo.kind
    try:
        if kind in _FIELD_KINDS:
            v = [True]
            orig, osz, otype = _field_value(local, kind, v)
            new, nsz, ntype = _field_value(targ, kind, None)
            fail = False
            if osz != nsz and otype is not None and ntype is not None:
                ok = (isinstance(otype, _btf.Pointer) and isinstance(ntype, _btf.Pointer)) or (
                    isinstance(otype, _btf.Int)
                    and isinstance(ntype, _btf.Int)
                    and not otype.signed
                    and not ntype.signed
                )
                fail = not ok
            return COREResult(
                relo, False, orig, new, v[0], osz, nsz, fail, _path(targ) if targ else ""
            )
        if kind in _TYPE_KINDS:
            validate = kind != COREReloKind.TYPE_ID_TARGET
            orig = _type_value(local, kind)
            new = _type_value(targ, kind)
            return COREResult(relo, False, orig, new, validate, target=_path(targ) if targ else "")
        orig = _enum_value(local, kind)
        new = _enum_value(targ, kind)
        return COREResult(relo, False, orig, new, True, target=_path(targ) if targ else "")
    except _Poison:
        return COREResult(relo, True, 0, 0, False)


def _path(spec: _Spec) -> str:
    parts = [_btf.describe(spec.root)]
    for a in spec.acc[1:] if spec.kind in _FIELD_KINDS else spec.acc:
        parts.append(f".{a.name}" if a.name is not None else f"[{a.idx}]")
    return "".join(parts)


def describe_relo(relo: CORERelo) -> str:
    """``field_byte_offset of struct task_struct.pid (0:18)`` for messages."""
    what = relo.kind.name.lower()
    try:
        raw = [int(p) for p in relo.access.split(":")]
        path = _btf.describe(relo.type)
        cur = _skip(relo.type)
        if relo.kind in _ENUM_KINDS and isinstance(cur, _btf.Enum) and raw[0] < len(cur.values):
            path += f"::{cur.values[raw[0]].name}"
        elif relo.kind in _FIELD_KINDS:
            if raw[0]:
                path += f"[{raw[0]}]"
            for idx in raw[1:]:
                cur = _skip(cur)
                if isinstance(cur, _btf.Struct | _btf.Union) and idx < len(cur.members):
                    m = cur.members[idx]
                    if m.name:
                        path += f".{m.name}"
                    cur = m.type
                elif isinstance(cur, _btf.Array):
                    path += f"[{idx}]"
                    cur = cur.type
    except (ValueError, IndexError, BTFError):
        path = _btf.describe(relo.type)
    return f"{what} of {path} (access {relo.access})"


def resolve(
    relo: CORERelo,
    local: _btf.Spec,
    target: Target,
    cache: dict[int, list[tuple[_btf.Spec, int]]] | None = None,
) -> COREResult:
    """Resolve one relocation (``bpf_core_resolve_relo``). ``cache`` keeps the candidate
    list per local type across the relocations of one object, narrowed to the candidates
    that matched, as libbpf does."""
    lspec = _parse_spec(local, relo)
    if relo.kind == COREReloKind.TYPE_ID_LOCAL:
        tid = local.type_id(relo.type)
        return COREResult(relo, False, tid, tid, False)
    if not relo.type.name:
        raise COREError("relocations against anonymous types are not supported")
    key = id(relo.type)
    cands = cache.get(key) if cache is not None else None
    if cands is None:
        cands = target.candidates(relo.type)
        if cache is not None:
            cache[key] = cands
    best: COREResult | None = None
    best_spec: _Spec | None = None
    kept: list[tuple[_btf.Spec, int]] = []
    for tspec, tid in cands:
        ts = _spec_match(lspec, tspec, tid)
        if ts is None:
            continue
        res = _calc(lspec, ts, relo)
        if best is None:
            best, best_spec = res, ts
        elif best_spec is not None and ts.bit_offset != best_spec.bit_offset:
            raise COREError(
                f"field offset ambiguity: {best_spec.bit_offset // 8} != {ts.bit_offset // 8} "
                f"({best.target} vs {res.target})"
            )
        elif res.poison != best.poison or res.new != best.new:
            raise COREError(
                f"ambiguous candidates: {best.target} gives {best.new}, {res.target} gives "
                f"{res.new}"
            )
        kept.append((tspec, tid))
    if kept and cache is not None:
        cache[key] = kept
    if best is None:
        best = _calc(lspec, None, relo)
    return best


# ------------------------------------------------------------------------------ patching

_INSN = struct.Struct("<BBhi")
_SIZE_BYTES = {0x00: 4, 0x08: 2, 0x10: 1, 0x18: 8}
_BYTES_SIZE = {v: k for k, v in _SIZE_BYTES.items()}


def poisoned_instruction() -> bytes:
    """``call 0xbad2310``: what an unsatisfiable relocation turns its instruction into."""
    return _INSN.pack(0x85, 0, 0, POISON_HELPER)


def _patch(raw: bytearray, res: COREResult) -> None:
    idx = res.relo.insn
    pos = idx * 8
    if pos + 8 > len(raw):
        raise COREError(f"instruction {idx} is out of range")
    code, regs, off, imm = _INSN.unpack_from(raw, pos)
    cls = code & 0x07
    if res.poison:
        if code == 0x18 and pos + 16 <= len(raw):
            raw[pos + 8 : pos + 16] = poisoned_instruction()
        raw[pos : pos + 8] = poisoned_instruction()
        return
    orig, new = res.orig & _U64, res.new & _U64
    if cls in (0x04, 0x07):  # ALU, ALU64
        if code & 0x08:
            raise COREError(f"instruction {idx}: alu instruction with a register source")
        if res.validate and imm & _U64 != orig:
            raise COREError(f"instruction {idx}: immediate {imm} is not the expected {orig}")
        struct.pack_into("<I", raw, pos + 4, new & 0xFFFFFFFF)
        return
    if cls in (0x01, 0x02, 0x03):  # LDX, ST, STX
        if res.validate and off & _U64 != orig:
            raise COREError(f"instruction {idx}: offset {off} is not the expected {orig}")
        if new > 0x7FFF:
            raise COREError(f"instruction {idx}: offset {new} is too big")
        if res.fail_memsz_adjust:
            # libbpf poisons instead of guessing (only signed ints/odd types get here)
            raw[pos : pos + 8] = poisoned_instruction()
            return
        struct.pack_into("<h", raw, pos + 2, new)
        if res.new_size != res.orig_size:
            size = _SIZE_BYTES[code & 0x18]
            if size != res.orig_size:
                raise COREError(
                    f"instruction {idx}: memory size {size} is not the expected {res.orig_size}"
                )
            bpf_size = _BYTES_SIZE.get(res.new_size)
            if bpf_size is None:
                raise COREError(f"instruction {idx}: invalid new memory size {res.new_size}")
            raw[pos] = (code & 0xE7) | bpf_size
        return
    if code == 0x18:  # ld_imm64
        if pos + 16 > len(raw):
            raise COREError(f"instruction {idx}: truncated ld_imm64")
        code2, regs2, off2, imm2 = _INSN.unpack_from(raw, pos + 8)
        if regs >> 4 or off or code2 or regs2 or off2:
            raise COREError(f"instruction {idx}: ld_imm64 has an unexpected form")
        value = (imm & 0xFFFFFFFF) | ((imm2 & 0xFFFFFFFF) << 32)
        if res.validate and value != orig:
            raise COREError(f"instruction {idx}: value {value} is not the expected {orig}")
        struct.pack_into("<I", raw, pos + 4, new & 0xFFFFFFFF)
        struct.pack_into("<I", raw, pos + 12, new >> 32)
        return
    raise COREError(f"instruction {idx}: opcode {code:#04x} cannot be relocated")


def apply_relocations(
    raw: bytearray,
    relos: Sequence[CORERelo],
    local: _btf.Spec,
    target: Target,
    cache: dict[int, list[tuple[_btf.Spec, int]]] | None = None,
) -> list[COREResult]:
    """Resolve and apply ``relos`` to the instructions in ``raw`` (patched in place).

    Returns every result; the poisoned ones tell which instruction indices are now invalid
    calls. Raises :class:`COREError` naming the relocation on malformed or ambiguous ones.
    """
    if cache is None:
        cache = {}
    results: list[COREResult] = []
    for n, relo in enumerate(relos):
        try:
            res = resolve(relo, local, target, cache)
            _patch(raw, res)
        except COREError as err:
            raise COREError(
                f"co-re relocation #{n} at instruction {relo.insn}: {describe_relo(relo)}: {err}"
            ) from err
        results.append(res)
    return results


_POISON_CALL = re.compile(r"^(\d+): \(85\) call unknown#195896080\b", re.M)


def poisoned_in_log(log: str) -> int | None:
    """The instruction index of the last poisoned call the verifier reached, if any."""
    hits = _POISON_CALL.findall(log)
    return int(hits[-1]) if hits else None
