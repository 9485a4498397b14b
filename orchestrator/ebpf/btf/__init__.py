"""BTF: the BPF Type Format, as a graph of Python objects.

A :class:`Spec` holds one BTF blob (an object's ``.BTF`` section, or the kernel's
``/sys/kernel/btf/vmlinux``). Parsing is lazy: :meth:`Spec.parse` makes one cheap pass that
records where every type record starts, and a type (with everything it refers to) becomes an
object only when it is asked for. The kernel's BTF has ~150k types, most of which a loader
never looks at.

Types refer to each other by object reference, not by id, so the graph can be cyclic
(``struct list_head`` points to itself). Type objects compare by identity. Ids only exist
inside a :class:`Spec` (:meth:`Spec.type_id`) and are kept stable by :meth:`Spec.marshal`.

The format is described in ``/usr/include/linux/btf.h`` and the kernel's
``Documentation/bpf/btf.rst``.
"""

from __future__ import annotations

import builtins
import enum
import operator
import struct
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar, overload

from orchestrator.ebpf.errors import BTFError

__all__ = [
    "Array",
    "Const",
    "Datasec",
    "DeclTag",
    "Enum",
    "EnumValue",
    "Float",
    "Func",
    "FuncLinkage",
    "FuncParam",
    "FuncProto",
    "Fwd",
    "Int",
    "Kind",
    "Member",
    "Pointer",
    "Restrict",
    "Spec",
    "Struct",
    "Type",
    "TypeTag",
    "Typedef",
    "Union",
    "Var",
    "VarLinkage",
    "VarSecinfo",
    "Void",
    "Volatile",
    "alignof",
    "describe",
    "sizeof",
    "skip_qualifiers",
]

BTF_MAGIC = 0xEB9F
BTF_VERSION = 1
_HEADER = struct.Struct("<HBBIIIII")  # struct btf_header, little-endian
_HEADER_BE = struct.Struct(">HBBIIIII")
BTF_MAX_TYPE = 0x000FFFFF
BTF_MAX_VLEN = 0xFFFF
POINTER_SIZE = 8  # BPF is a 64-bit target

# Chains of typedefs/qualifiers/arrays are short in real BTF; a longer one is a loop in
# corrupt input. The kernel rejects such loops too (btf_check_all_types()).
_MAX_CHAIN = 64


class Kind(enum.IntEnum):
    """``BTF_KIND_*`` from ``linux/btf.h``."""

    UNKN = 0
    INT = 1
    PTR = 2
    ARRAY = 3
    STRUCT = 4
    UNION = 5
    ENUM = 6
    FWD = 7
    TYPEDEF = 8
    VOLATILE = 9
    CONST = 10
    RESTRICT = 11
    FUNC = 12
    FUNC_PROTO = 13
    VAR = 14
    DATASEC = 15
    FLOAT = 16
    DECL_TAG = 17
    TYPE_TAG = 18
    ENUM64 = 19


class FuncLinkage(enum.IntEnum):
    """``enum btf_func_linkage``: stored in the vlen of a FUNC."""

    STATIC = 0
    GLOBAL = 1
    EXTERN = 2


class VarLinkage(enum.IntEnum):
    """``BTF_VAR_*``: the linkage of a VAR."""

    STATIC = 0
    GLOBAL_ALLOCATED = 1
    GLOBAL_EXTERN = 2


# --------------------------------------------------------------------------------------
# Types
# --------------------------------------------------------------------------------------


class Type:
    """Base class of every BTF type. Compares by identity; ``name`` is "" when anonymous."""

    __slots__ = ()
    _kind: ClassVar[Kind]
    name: str

    @property
    def kind(self) -> Kind:
        return self._kind

    def _refs(self) -> list[Type]:
        """The types this one refers to, in record order."""
        return []

    def _set_refs(self, refs: Sequence[Type]) -> None:
        """Replace the referred types, in the order :meth:`_refs` gives them."""

    def _clone(self) -> Type:
        """A shallow copy that owns fresh member/param/value records."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({describe(self)!r})"


def _short(t: Type) -> str:
    return f"<{describe(t)}>"


@dataclass(eq=False, repr=False, slots=True)
class Void(Type):
    """The type with id 0: ``void``, or "no type"."""

    _kind: ClassVar[Kind] = Kind.UNKN
    name: str = ""

    def _clone(self) -> Void:
        return Void(self.name)

    def __repr__(self) -> str:
        return "Void()"


@dataclass(eq=False, repr=False, slots=True)
class Int(Type):
    """An integer. ``bits``/``offset`` describe old-style (kind_flag 0) bitfields."""

    _kind: ClassVar[Kind] = Kind.INT
    name: str
    size: int
    signed: builtins.bool = False
    char: builtins.bool = False
    bool: builtins.bool = False
    bits: int = 0  # 0 means size * 8
    offset: int = 0

    def __post_init__(self) -> None:
        if self.bits == 0:
            self.bits = self.size * 8

    def _clone(self) -> Int:
        return Int(self.name, self.size, self.signed, self.char, self.bool, self.bits, self.offset)

    def __repr__(self) -> str:
        extra = "".join(f", {n}=True" for n in ("signed", "char", "bool") if getattr(self, n))
        if self.bits != self.size * 8 or self.offset:
            extra += f", bits={self.bits}, offset={self.offset}"
        return f"Int({self.name!r}, size={self.size}{extra})"


class _Lazy:
    """A pointer target not decoded yet: type ``tid`` of ``spec``.

    Decoding a type decodes everything it refers to, except through pointers: those
    targets are decoded on first access. Without this, looking ``task_struct`` up in the
    kernel's BTF would decode a large part of the kernel's type graph.
    """

    __slots__ = ("spec", "tid")

    def __init__(self, spec: Spec, tid: int) -> None:
        self.spec = spec
        self.tid = tid


@dataclass(eq=False, repr=False, slots=True)
class Pointer(Type):
    _kind: ClassVar[Kind] = Kind.PTR
    target: Type
    name: str = ""

    def __getattribute__(self, attr: str) -> object:
        value = object.__getattribute__(self, attr)
        if type(value) is _Lazy:  # a target not decoded yet: decode it now
            value = value.spec.type_by_id(value.tid)
            object.__setattr__(self, attr, value)
        return value

    def _refs(self) -> list[Type]:
        return [self.target]

    def _set_refs(self, refs: Sequence[Type]) -> None:
        (self.target,) = refs

    def _clone(self) -> Pointer:
        p = Pointer(_PENDING, self.name)
        # a lazy target stays lazy; Spec.copy rebinds it to the copy
        object.__setattr__(p, "target", object.__getattribute__(self, "target"))
        return p

    def __repr__(self) -> str:
        return f"Pointer(target={_short(self.target)})"


@dataclass(eq=False, repr=False, slots=True)
class Array(Type):
    _kind: ClassVar[Kind] = Kind.ARRAY
    type: Type
    index_type: Type
    nelems: int
    name: str = ""

    def _refs(self) -> list[Type]:
        return [self.type, self.index_type]

    def _set_refs(self, refs: Sequence[Type]) -> None:
        self.type, self.index_type = refs

    def _clone(self) -> Array:
        return Array(self.type, self.index_type, self.nelems, self.name)

    def __repr__(self) -> str:
        return f"Array(type={_short(self.type)}, nelems={self.nelems})"


@dataclass(eq=False, repr=False, slots=True)
class Member:
    """A struct/union member. ``bitfield_size`` is 0 unless it is a (kind_flag) bitfield."""

    name: str
    type: Type
    offset_bits: int
    bitfield_size: int = 0

    def __repr__(self) -> str:
        bf = f", bitfield_size={self.bitfield_size}" if self.bitfield_size else ""
        return f"Member({self.name!r}, {_short(self.type)}, offset_bits={self.offset_bits}{bf})"


def _composite_repr(t: Struct | Union) -> str:
    members = ", ".join(repr(m) for m in t.members)
    return f"{type(t).__name__}({t.name!r}, size={t.size}, members=[{members}])"


@dataclass(eq=False, repr=False, slots=True)
class Struct(Type):
    _kind: ClassVar[Kind] = Kind.STRUCT
    name: str
    size: int
    members: list[Member] = field(default_factory=list)

    def _refs(self) -> list[Type]:
        return [m.type for m in self.members]

    def _set_refs(self, refs: Sequence[Type]) -> None:
        for m, r in zip(self.members, refs, strict=True):
            m.type = r

    def _clone(self) -> Struct:
        return Struct(
            self.name,
            self.size,
            [Member(m.name, m.type, m.offset_bits, m.bitfield_size) for m in self.members],
        )

    def __repr__(self) -> str:
        return _composite_repr(self)


@dataclass(eq=False, repr=False, slots=True)
class Union(Type):
    _kind: ClassVar[Kind] = Kind.UNION
    name: str
    size: int
    members: list[Member] = field(default_factory=list)

    def _refs(self) -> list[Type]:
        return [m.type for m in self.members]

    def _set_refs(self, refs: Sequence[Type]) -> None:
        for m, r in zip(self.members, refs, strict=True):
            m.type = r

    def _clone(self) -> Union:
        return Union(
            self.name,
            self.size,
            [Member(m.name, m.type, m.offset_bits, m.bitfield_size) for m in self.members],
        )

    def __repr__(self) -> str:
        return _composite_repr(self)


@dataclass(slots=True)
class EnumValue:
    name: str
    value: int


@dataclass(eq=False, repr=False, slots=True)
class Enum(Type):
    """ENUM or ENUM64 (``is64`` remembers which); ``signed`` is the kind_flag."""

    name: str
    size: int
    signed: bool = False
    values: list[EnumValue] = field(default_factory=list)
    is64: bool = False

    @property
    def kind(self) -> Kind:
        return Kind.ENUM64 if self.is64 else Kind.ENUM

    def _clone(self) -> Enum:
        return Enum(
            self.name,
            self.size,
            self.signed,
            [EnumValue(v.name, v.value) for v in self.values],
            self.is64,
        )

    def __repr__(self) -> str:
        vals = ", ".join(f"{v.name}={v.value}" for v in self.values[:8])
        if len(self.values) > 8:
            vals += ", ..."
        return f"Enum({self.name!r}, size={self.size}, signed={self.signed}, values=[{vals}])"


@dataclass(eq=False, repr=False, slots=True)
class Fwd(Type):
    """A forward declaration (``struct foo;``); ``union`` is the kind_flag."""

    _kind: ClassVar[Kind] = Kind.FWD
    name: str
    union: bool = False

    def _clone(self) -> Fwd:
        return Fwd(self.name, self.union)

    def __repr__(self) -> str:
        return f"Fwd({self.name!r}, union={self.union})"


@dataclass(eq=False, repr=False, slots=True)
class Typedef(Type):
    _kind: ClassVar[Kind] = Kind.TYPEDEF
    name: str
    type: Type

    def _refs(self) -> list[Type]:
        return [self.type]

    def _set_refs(self, refs: Sequence[Type]) -> None:
        (self.type,) = refs

    def _clone(self) -> Typedef:
        return Typedef(self.name, self.type)

    def __repr__(self) -> str:
        return f"Typedef({self.name!r}, {_short(self.type)})"


@dataclass(eq=False, repr=False, slots=True)
class _Qualifier(Type):
    type: Type
    name: str = ""

    def _refs(self) -> list[Type]:
        return [self.type]

    def _set_refs(self, refs: Sequence[Type]) -> None:
        (self.type,) = refs

    def _clone(self) -> _Qualifier:
        return type(self)(self.type, self.name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({_short(self.type)})"


class Volatile(_Qualifier):
    __slots__ = ()
    _kind: ClassVar[Kind] = Kind.VOLATILE


class Const(_Qualifier):
    __slots__ = ()
    _kind: ClassVar[Kind] = Kind.CONST


class Restrict(_Qualifier):
    __slots__ = ()
    _kind: ClassVar[Kind] = Kind.RESTRICT


@dataclass(eq=False, repr=False, slots=True)
class TypeTag(Type):
    """``__attribute__((btf_type_tag(name)))``; ``attr`` is the kind_flag (Linux 6.14)."""

    _kind: ClassVar[Kind] = Kind.TYPE_TAG
    name: str
    type: Type
    attr: bool = False

    def _refs(self) -> list[Type]:
        return [self.type]

    def _set_refs(self, refs: Sequence[Type]) -> None:
        (self.type,) = refs

    def _clone(self) -> TypeTag:
        return TypeTag(self.name, self.type, self.attr)

    def __repr__(self) -> str:
        return f"TypeTag({self.name!r}, {_short(self.type)})"


@dataclass(slots=True, repr=False)
class FuncParam:
    """A parameter; the last one is ``FuncParam("", Void())`` for a variadic function."""

    name: str
    type: Type

    def __repr__(self) -> str:
        return f"FuncParam({self.name!r}, {_short(self.type)})"


@dataclass(eq=False, repr=False, slots=True)
class FuncProto(Type):
    _kind: ClassVar[Kind] = Kind.FUNC_PROTO
    return_type: Type
    params: list[FuncParam] = field(default_factory=list)
    name: str = ""

    def _refs(self) -> list[Type]:
        return [self.return_type, *(p.type for p in self.params)]

    def _set_refs(self, refs: Sequence[Type]) -> None:
        self.return_type = refs[0]
        for p, r in zip(self.params, refs[1:], strict=True):
            p.type = r

    def _clone(self) -> FuncProto:
        return FuncProto(
            self.return_type, [FuncParam(p.name, p.type) for p in self.params], self.name
        )

    def __repr__(self) -> str:
        return f"FuncProto({describe(self)!r})"


@dataclass(eq=False, repr=False, slots=True)
class Func(Type):
    _kind: ClassVar[Kind] = Kind.FUNC
    name: str
    type: FuncProto
    linkage: FuncLinkage = FuncLinkage.STATIC

    def _refs(self) -> list[Type]:
        return [self.type]

    def _set_refs(self, refs: Sequence[Type]) -> None:
        (proto,) = refs
        if not isinstance(proto, FuncProto):
            raise BTFError(f"func {self.name}: type is {describe(proto)}, not a func proto")
        self.type = proto

    def _clone(self) -> Func:
        return Func(self.name, self.type, self.linkage)

    def __repr__(self) -> str:
        return f"Func({self.name!r}, {_short(self.type)}, {self.linkage.name.lower()})"


@dataclass(eq=False, repr=False, slots=True)
class Var(Type):
    _kind: ClassVar[Kind] = Kind.VAR
    name: str
    type: Type
    linkage: VarLinkage = VarLinkage.STATIC

    def _refs(self) -> list[Type]:
        return [self.type]

    def _set_refs(self, refs: Sequence[Type]) -> None:
        (self.type,) = refs

    def _clone(self) -> Var:
        return Var(self.name, self.type, self.linkage)

    def __repr__(self) -> str:
        return f"Var({self.name!r}, {_short(self.type)}, {self.linkage.name.lower()})"


@dataclass(slots=True, repr=False)
class VarSecinfo:
    """A variable in a :class:`Datasec`. The ELF loader fixes ``offset``/``size`` up."""

    type: Type
    offset: int
    size: int

    def __repr__(self) -> str:
        return f"VarSecinfo({_short(self.type)}, offset={self.offset}, size={self.size})"


@dataclass(eq=False, repr=False, slots=True)
class Datasec(Type):
    """A data section (``.data``, ``.rodata``, ``.bss``, ``.maps``, ``.ksyms`` ...).

    clang leaves ``size`` and the secinfo offsets 0 in objects; the ELF loader fills them in
    from the section headers and symbols (libbpf does the same before loading BTF).
    """

    _kind: ClassVar[Kind] = Kind.DATASEC
    name: str
    size: int
    vars: list[VarSecinfo] = field(default_factory=list)

    def _refs(self) -> list[Type]:
        return [v.type for v in self.vars]

    def _set_refs(self, refs: Sequence[Type]) -> None:
        for v, r in zip(self.vars, refs, strict=True):
            v.type = r

    def _clone(self) -> Datasec:
        return Datasec(
            self.name, self.size, [VarSecinfo(v.type, v.offset, v.size) for v in self.vars]
        )

    def __repr__(self) -> str:
        return f"Datasec({self.name!r}, size={self.size}, vars={self.vars!r})"


@dataclass(eq=False, repr=False, slots=True)
class Float(Type):
    _kind: ClassVar[Kind] = Kind.FLOAT
    name: str
    size: int

    def _clone(self) -> Float:
        return Float(self.name, self.size)

    def __repr__(self) -> str:
        return f"Float({self.name!r}, size={self.size})"


@dataclass(eq=False, repr=False, slots=True)
class DeclTag(Type):
    """``btf_decl_tag(name)`` on ``type``; ``component_idx`` -1 tags the type itself,
    otherwise a member or parameter. ``attr`` is the kind_flag (Linux 6.14)."""

    _kind: ClassVar[Kind] = Kind.DECL_TAG
    name: str
    type: Type
    component_idx: int = -1
    attr: bool = False

    def _refs(self) -> list[Type]:
        return [self.type]

    def _set_refs(self, refs: Sequence[Type]) -> None:
        (self.type,) = refs

    def _clone(self) -> DeclTag:
        return DeclTag(self.name, self.type, self.component_idx, self.attr)

    def __repr__(self) -> str:
        return f"DeclTag({self.name!r}, {_short(self.type)}, {self.component_idx})"


_QUALIFIERS = (Typedef, Volatile, Const, Restrict, TypeTag)

# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def skip_qualifiers(t: Type) -> Type:
    """Follow typedef/const/volatile/restrict/type_tag to the underlying type."""
    for _ in range(_MAX_CHAIN):
        if not isinstance(t, _QUALIFIERS):
            return t
        t = t.type
    raise BTFError(f"{describe(t)}: qualifier chain too long (a loop?)")


def sizeof(t: Type) -> int:
    """The size in bytes of a value of type ``t``; BTFError for void, functions, fwds."""
    mult = 1
    orig = t
    for _ in range(_MAX_CHAIN):
        if isinstance(t, Int | Enum | Struct | Union | Datasec | Float):
            return mult * t.size
        if isinstance(t, Pointer):
            return mult * POINTER_SIZE
        if isinstance(t, Array):
            mult *= t.nelems
            t = t.type
        elif isinstance(t, Typedef | Volatile | Const | Restrict | TypeTag | Var):
            t = t.type
        else:
            raise BTFError(f"{describe(orig)} has no size")
    raise BTFError(f"{describe(orig)}: type chain too long (a loop?)")


def alignof(t: Type) -> int:
    """The alignment of ``t`` as the BPF target lays it out (natural, packed detected)."""
    return _alignof(t, 0, {})


def _alignof(t: Type, depth: int, memo: dict[Type, int]) -> int:
    if depth > _MAX_CHAIN:
        raise BTFError(f"{describe(t)}: type chain too long (a loop?)")
    t = skip_qualifiers(t)
    if isinstance(t, Int | Enum | Float):
        size = t.size
        if size <= 0 or size & (size - 1):
            raise BTFError(f"{describe(t)}: size {size} is not a power of two")
        return size
    if isinstance(t, Pointer):
        return POINTER_SIZE
    if isinstance(t, Array | Var):
        return _alignof(t.type, depth + 1, memo)
    if isinstance(t, Struct | Union):
        known = memo.get(t)
        if known is not None:
            return known
        aligns = [_alignof(m.type, depth + 1, memo) for m in t.members]
        align = max(aligns, default=1)
        # BTF does not record __attribute__((packed)); infer it from the layout.
        if t.size % align or any(
            m.offset_bits % (a * 8)
            for m, a in zip(t.members, aligns, strict=True)
            if not _is_bitfield(m)
        ):
            align = 1
        memo[t] = align
        return align
    raise BTFError(f"{describe(t)} has no alignment")


def _is_bitfield(m: Member) -> bool:
    if m.bitfield_size:
        return True
    u = skip_qualifiers(m.type)
    return isinstance(u, Int) and (u.offset != 0 or u.bits != u.size * 8)


def describe(t: Type) -> str:
    """A C-like name for messages: ``unsigned int``, ``char[16]``, ``struct foo``, ``u32``."""
    return _describe(t, [64])


def _describe(t: Type, budget: list[int]) -> str:
    # The budget bounds the work on pathological (corrupt, or deeply nested) graphs.
    budget[0] -= 1
    if budget[0] < 0:
        return "..."
    d = budget
    if isinstance(t, Void):
        return "void"
    if isinstance(t, Int | Float | Typedef):
        return t.name or (f"int{t.size * 8}" if isinstance(t, Int) else "(anon)")
    if isinstance(t, Struct):
        return f"struct {t.name}" if t.name else "struct {...}"
    if isinstance(t, Union):
        return f"union {t.name}" if t.name else "union {...}"
    if isinstance(t, Enum):
        return f"enum {t.name}" if t.name else "enum {...}"
    if isinstance(t, Fwd):
        return f"{'union' if t.union else 'struct'} {t.name}"
    if isinstance(t, Pointer):
        target = t.target
        if isinstance(target, FuncProto):
            return _describe_proto(target, d, "(*)")
        return f"{_describe(target, d)} *"
    if isinstance(t, Array):
        dims = ""
        elem: Type = t
        while isinstance(elem, Array) and len(dims) < 200:  # C order: int[2][3]
            dims += f"[{elem.nelems}]"
            elem = elem.type
        return f"{_describe(elem, d)}{dims}"
    if isinstance(t, Volatile | Const | Restrict):
        return f"{type(t).__name__.lower()} {_describe(t.type, d)}"
    if isinstance(t, TypeTag):
        return _describe(t.type, d)
    if isinstance(t, FuncProto):
        return _describe_proto(t, d, "")
    if isinstance(t, Func):
        return f"func {t.name}"
    if isinstance(t, Var):
        return f"var {t.name}"
    if isinstance(t, Datasec):
        return f"section {t.name}"
    if isinstance(t, DeclTag):
        return f"decl tag {t.name}"
    return type(t).__name__.lower()


def _describe_proto(p: FuncProto, budget: list[int], mid: str) -> str:
    ret = _describe(p.return_type, budget)
    params = ", ".join(
        "..." if isinstance(q.type, Void) and not q.name else _describe(q.type, budget)
        for q in p.params
    )
    return f"{ret} {mid}({params})" if mid else f"{ret} ({params})"


# --------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------

# Words (u32) after the 12-byte btf_type header: fixed, and per vlen entry, by kind.
_FIXED_WORDS = (0, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0)
_VLEN_WORDS = (0, 0, 0, 0, 3, 3, 2, 0, 0, 0, 0, 0, 0, 2, 0, 3, 0, 0, 0, 3)
_NKINDS = len(_FIXED_WORDS)

_INT_SIGNED = 1 << 0
_INT_CHAR = 1 << 1
_INT_BOOL = 1 << 2

_MARSHAL_CACHE_SIZE = 8  # distinct extra-string sets remembered per spec

_PENDING = Void()  # placeholder for references while a closure of types is decoded
_PENDING_PROTO = FuncProto(_PENDING)
_FUNC_LINKAGES = tuple(FuncLinkage)
_VAR_LINKAGES = tuple(VarLinkage)


def _s32(v: int) -> int:
    return v - (1 << 32) if v & 0x80000000 else v


T = TypeVar("T", bound=Type)


class Spec:
    """One BTF blob: types by id and by name, parsed lazily.

    A *split* spec (module BTF) sits on top of a ``base`` spec (vmlinux): its type ids and
    string offsets continue after the base's, and its types may refer to base types.
    Methods that take ids accept base ids too; :meth:`marshal` emits only the spec's own
    types.
    """

    __slots__ = (
        "_base",
        "_cache",
        "_first",
        "_ids",
        "_marshalled",
        "_names",
        "_noffs",
        "_noffs_pos",
        "_offs",
        "_scan",
        "_str_cache",
        "_str_start",
        "_strtab",
        "_void",
        "_words",
    )

    def __init__(self, *, base: Spec | None = None) -> None:
        """An empty spec (add types with :meth:`add`), optionally split on ``base``."""
        self._base = base
        self._first = base._next_id() if base is not None else 1
        self._str_start = base._str_end() if base is not None else 0
        self._strtab = b"" if base is not None else b"\0"
        self._words: array[int] = array("I")
        self._offs: array[int] = array("I")
        self._cache: list[Type | None] = []
        self._ids: dict[Type, int] = {}
        self._names: dict[str, list[int]] | None = None
        self._noffs: tuple[int, ...] | None = None  # name offset of every own record
        # name offset -> (first, last) record index with it
        self._noffs_pos: tuple[dict[int, int], dict[int, int]] | None = None
        self._scan: dict[str, list[int]] = {}  # name lookups answered without the index
        self._str_cache: dict[int, str] = {}
        self._void = Void()
        self._marshalled: dict[frozenset[str], tuple[bytes, dict[str, int]]] = {}

    # ---- construction

    @classmethod
    def parse(cls, data: bytes, *, base: Spec | None = None) -> Spec:
        """Parse a BTF blob (either byte order). Corrupt input raises :class:`BTFError`;
        damage inside a type record may only be found when that type is decoded."""
        view = memoryview(data)
        if len(view) < _HEADER.size:
            raise BTFError(f"btf: {len(view)} bytes is too short for a header")
        magic = int.from_bytes(view[:2], "little")
        if magic == BTF_MAGIC:
            hdr, swap = _HEADER, sys.byteorder == "big"
        elif magic == 0x9FEB:
            hdr, swap = _HEADER_BE, sys.byteorder == "little"
        else:
            raise BTFError(f"btf: bad magic {magic:#06x} (not btf?)")
        _, version, _flags, hdr_len, type_off, type_len, str_off, str_len = hdr.unpack_from(view)
        if version != BTF_VERSION:
            raise BTFError(f"btf: unsupported version {version}")
        if hdr_len < _HEADER.size or hdr_len > len(view):
            raise BTFError(f"btf: bad header length {hdr_len}")
        body = view[hdr_len:]
        if type_off + type_len > len(body) or str_off + str_len > len(body):
            raise BTFError(
                f"btf: sections (types {type_off}+{type_len}, strings {str_off}+{str_len}) "
                f"exceed {len(body)} bytes"
            )
        if type_len % 4:
            raise BTFError(f"btf: type section length {type_len} is not a multiple of 4")
        strtab = bytes(body[str_off : str_off + str_len])
        if base is None and (not strtab or strtab[0] != 0):
            raise BTFError("btf: string section does not start with an empty string")
        if strtab and strtab[-1] != 0:
            raise BTFError("btf: string section is not nul-terminated")
        if str_len > 0x7FFFFFFF:
            raise BTFError("btf: string section too large")

        spec = cls(base=base)
        spec._strtab = strtab
        words: array[int] = array("I")
        words.frombytes(body[type_off : type_off + type_len])
        if swap:
            words.byteswap()
        spec._words = words
        spec._offs = _index_records(words, spec._first)
        spec._cache = [None] * len(spec._offs)
        if len(strtab) <= _PREFILL_STRINGS:
            spec._str_cache = _split_strings(strtab, spec._str_start)
        return spec

    def copy(self) -> Spec:
        """A deep copy: mutating its types never affects this spec. The base is shared."""
        new = Spec.__new__(Spec)
        new._base = self._base
        new._first = self._first
        new._str_start = self._str_start
        new._strtab = self._strtab  # immutable bytes
        new._words = self._words  # never mutated after parse
        new._offs = self._offs
        new._str_cache = self._str_cache  # offset -> str of the shared, immutable table
        new._void = Void()
        new._marshalled = {}
        new._names = None if self._names is None else {k: list(v) for k, v in self._names.items()}
        new._noffs = self._noffs
        new._noffs_pos = self._noffs_pos
        new._scan = {k: list(v) for k, v in self._scan.items()}
        mapping: dict[Type, Type] = {self._void: new._void}
        cache: list[Type | None] = [None] * len(self._cache)
        for i, t in enumerate(self._cache):
            if t is not None:
                c = t._clone()
                mapping[t] = c
                cache[i] = c
        for c in mapping.values():
            if isinstance(c, Pointer):
                raw = object.__getattribute__(c, "target")
                if type(raw) is _Lazy:
                    object.__setattr__(c, "target", _Lazy(new, raw.tid))
                    continue
            refs = c._refs()
            if refs:
                c._set_refs([mapping.get(r, r) for r in refs])
        new._cache = cache
        new._ids = {c: i + self._first for i, c in enumerate(cache) if c is not None}
        return new

    def add(self, t: Type) -> int:
        """Append ``t`` and every type it refers to that is not in the spec yet; give t's id.

        Void is never added (it is id 0). Adding a type that is already present is a no-op.
        """
        existing = self._lookup_id(t)
        if existing is not None:
            return existing
        self._marshalled.clear()
        stack = [t]
        while stack:
            cur = stack.pop()
            if self._lookup_id(cur) is not None:
                continue
            tid = self._next_id()
            if tid > BTF_MAX_TYPE:
                raise BTFError(f"btf: more than {BTF_MAX_TYPE} types")
            self._cache.append(cur)
            self._ids[cur] = tid
            if self._names is not None and cur.name:
                self._names.setdefault(cur.name, []).append(tid)
            if cur.name in self._scan:
                self._scan[cur.name].append(tid)
            stack.extend(r for r in reversed(cur._refs()) if self._lookup_id(r) is None)
        return self._ids[t]

    # ---- queries

    @property
    def base(self) -> Spec | None:
        return self._base

    @property
    def first_id(self) -> int:
        """The id of this spec's first own type: 1, or the base's count + 1 when split."""
        return self._first

    def __len__(self) -> int:
        """The number of types (base types included), not counting Void."""
        return self._next_id() - 1

    @property
    def types(self) -> Iterator[Type]:
        """All types in id order (base first when split), without Void at id 0."""
        return self._iter_types()

    def _iter_types(self) -> Iterator[Type]:
        if self._base is not None:
            yield from self._base.types
        first, cache = self._first, self._cache
        chunk = 4096  # decode in batches: much cheaper per type than one by one
        for lo in range(0, len(cache), chunk):
            todo = [first + i for i in range(lo, min(lo + chunk, len(cache))) if cache[i] is None]
            if todo:
                self._decode(todo)
            for i in range(lo, min(lo + chunk, len(cache))):
                t = cache[i]
                assert t is not None
                yield t

    def type_by_id(self, type_id: int) -> Type:
        """The type with this id; id 0 is :class:`Void`."""
        if type_id == 0:
            return self._void
        if type_id < self._first:
            if self._base is None:
                raise BTFError(f"btf: no type with id {type_id}")
            return self._base.type_by_id(type_id)
        idx = type_id - self._first
        if idx >= len(self._cache):
            raise BTFError(f"btf: no type with id {type_id}")
        t = self._cache[idx]
        if t is None:
            self._decode([type_id])
            t = self._cache[idx]
            assert t is not None
        return t

    def type_id(self, t: Type) -> int:
        """The id of ``t`` in this spec (or its base); BTFError if it is not there."""
        tid = self._lookup_id(t)
        if tid is None:
            raise BTFError(f"btf: {describe(t)} is not in this spec")
        return tid

    def _lookup_id(self, t: Type) -> int | None:
        if isinstance(t, Void):
            return 0
        tid = self._ids.get(t)
        if tid is None and self._base is not None:
            return self._base._lookup_id(t)
        return tid

    def ids_by_name(self, name: str) -> list[int]:
        """The ids of every type with this name (base ids first), without decoding them."""
        found = self._base.ids_by_name(name) if self._base is not None else []
        found.extend(self._own_ids(name))
        return found

    def names(self) -> Iterator[str]:
        """Every distinct type name of this spec's own types (not the base's)."""
        return iter(self._name_index())

    def names_containing(self, part: str) -> list[str]:
        """Distinct names of own types that contain ``part`` (cheap without the full index:
        a search of the string table)."""
        if self._names is not None:
            return [n for n in self._names if part in n]
        raw = part.encode("utf-8", "surrogateescape")
        if not raw:
            return list(self._name_index())
        found: dict[str, set[int]] = {}
        spec: Spec | None = self
        while spec is not None:
            tab, start = spec._strtab, spec._str_start
            pos = tab.find(raw)
            while pos >= 0:
                lo = tab.rfind(b"\0", 0, pos) + 1
                hi = tab.find(b"\0", pos)
                hi = len(tab) if hi < 0 else hi
                name = tab[lo:hi].decode("utf-8", "surrogateescape")
                found.setdefault(name, set()).add(start + lo)
                pos = tab.find(raw, hi)
            spec = spec._base
        used = self._name_offsets()[1]
        out = [
            n
            for n, offs in sorted(found.items())
            if any(o in used for o in offs) and self._own_ids(n)
        ]
        out.extend(
            t.name
            for t in self._cache[len(self._offs) :]
            if t is not None and part in t.name and t.name not in out
        )
        return out

    def kind_of(self, type_id: int) -> Kind:
        """The kind of a type without decoding it (cheap, for candidate searches)."""
        if type_id == 0:
            return Kind.UNKN
        if type_id < self._first:
            if self._base is None:
                raise BTFError(f"btf: no type with id {type_id}")
            return self._base.kind_of(type_id)
        idx = type_id - self._first
        if idx >= len(self._cache):
            raise BTFError(f"btf: no type with id {type_id}")
        t = self._cache[idx]
        if t is not None or idx >= len(self._offs):
            assert t is not None
            return t.kind
        return Kind((self._words[self._offs[idx] + 1] >> 24) & 0x1F)

    def types_by_name(self, name: str) -> list[Type]:
        """Every type with this name (base types first), in id order."""
        found = self._base.types_by_name(name) if self._base is not None else []
        for tid in self._own_ids(name):
            found.append(self.type_by_id(tid))
        return found

    @overload
    def type_by_name(self, name: str) -> Type: ...

    @overload
    def type_by_name(self, name: str, cls: type[T]) -> T: ...

    def type_by_name(self, name: str, cls: type[Type] | None = None) -> Type:
        """The one type with this name (and of class ``cls`` if given).

        BTFError when there is none, or more than one.
        """
        found = self.types_by_name(name)
        if cls is not None:
            found = [t for t in found if isinstance(t, cls)]
        what = f"{cls.__name__.lower()} {name}" if cls is not None else f"type {name}"
        if not found:
            raise BTFError(f"btf: no {what}")
        if len(found) > 1:
            raise BTFError(f"btf: {len(found)} types match {what}")
        return found[0]

    def string(self, offset: int) -> str:
        """The string at ``offset`` in the string table (for .BTF.ext records)."""
        cached = self._str_cache.get(offset)
        if cached is not None:
            return cached
        if offset < self._str_start:
            if self._base is None:
                raise BTFError(f"btf: string offset {offset} out of range")
            return self._base.string(offset)
        rel = offset - self._str_start
        tab = self._strtab
        if rel >= len(tab):
            raise BTFError(f"btf: string offset {offset} out of range")
        end = tab.find(b"\0", rel)
        if end < 0:
            raise BTFError(f"btf: string at {offset} is not nul-terminated")
        text = tab[rel:end].decode("utf-8", "surrogateescape")
        self._str_cache[offset] = text
        return text

    # ---- marshalling

    def marshal(self, extra_strings: Iterable[str] = ()) -> tuple[bytes, dict[str, int]]:
        """Serialize to little-endian BTF for BPF_BTF_LOAD, keeping every id.

        The string table is deduplicated and also holds ``extra_strings`` (line_info file
        names and source lines). Returns the blob and the string → offset map. A split spec
        emits only its own types; its string offsets continue after the base's.

        The result is cached per set of extra strings: a spec is treated as immutable once
        parsed (the ELF reader's DATASEC fix-ups happen before anything marshals it).
        :meth:`add` drops the cache; code that changes a type in place must call
        :meth:`changed` (or work on a :meth:`copy`). The returned dict is shared with the
        cache: do not modify it.
        """
        key = frozenset(extra_strings)
        cached = self._marshalled.get(key)
        if cached is None:
            cached = self._marshal(key)
            if len(self._marshalled) >= _MARSHAL_CACHE_SIZE:
                self._marshalled.clear()
            self._marshalled[key] = cached
        return cached

    def changed(self) -> None:
        """Forget cached :meth:`marshal` results: call after changing a type in place."""
        self._marshalled.clear()

    def _marshal(self, extra_strings: Iterable[str]) -> tuple[bytes, dict[str, int]]:
        strings: dict[str, int] = {"": 0}
        chunks: list[bytes] = [] if self._base is not None else [b"\0"]
        size = self._str_start + (0 if self._base is not None else 1)

        def intern(s: str) -> int:
            nonlocal size
            off = strings.get(s)
            if off is None:
                raw = s.encode("utf-8", "surrogateescape")
                if b"\0" in raw:
                    raise BTFError(f"btf: string {s!r} contains a nul byte")
                off = size
                strings[s] = off
                chunks.append(raw + b"\0")
                size += len(raw) + 1
            return off

        ids, slow_type_id = self._ids, self.type_id

        def type_id(t: Type) -> int:
            tid = ids.get(t)  # own types: one dict lookup; Void, base types: the full path
            return tid if tid is not None else slow_type_id(t)

        words: list[int] = []
        for tid in range(self._first, self._next_id()):
            t = self.type_by_id(tid)
            try:
                _encode_type(t, words, intern, type_id)
            except _Range as err:
                raise BTFError(f"btf: type {tid} ({describe(t)}): {err}") from None
        for s in sorted(extra_strings):
            intern(s)
        try:
            tarr = array("I", words)
        except OverflowError as err:
            raise BTFError("btf: a value does not fit in 32 bits") from err
        if sys.byteorder == "big":
            tarr.byteswap()
        type_bytes = tarr.tobytes()
        str_bytes = b"".join(chunks)
        header = _HEADER.pack(
            BTF_MAGIC,
            BTF_VERSION,
            0,
            _HEADER.size,
            0,
            len(type_bytes),
            len(type_bytes),
            len(str_bytes),
        )
        return header + type_bytes + str_bytes, strings

    # ---- internals

    def _next_id(self) -> int:
        return self._first + len(self._cache)

    def _str_end(self) -> int:
        return self._str_start + len(self._strtab)

    def _own_ids(self, name: str) -> list[int]:
        """Ids of own types named ``name``: from the index if built, else by searching the
        string table for the name and the records for its offset (no index needed)."""
        if self._names is not None:
            return self._names.get(name, [])
        hit = self._scan.get(name)
        if hit is None:
            hit = self._scan_name(name)
            self._scan[name] = hit
        return hit

    def _name_offsets(self) -> tuple[tuple[int, ...], dict[int, int], dict[int, int]]:
        """The name offset of every own record (in id order), and for each offset the first
        and the last record index that has it (built with C-speed bulk operations)."""
        noffs, pos = self._noffs, self._noffs_pos
        if noffs is None or pos is None:
            n = len(self._offs)
            if n == 0:
                noffs = ()
            elif n == 1:
                noffs = (self._words[self._offs[0]],)
            else:
                noffs = operator.itemgetter(*self._offs)(self._words)
            last = dict(zip(noffs, range(n), strict=True))
            first_ = dict(zip(reversed(noffs), range(n - 1, -1, -1), strict=True))
            pos = (first_, last)
            self._noffs, self._noffs_pos = noffs, pos
        return noffs, pos[0], pos[1]

    def _scan_name(self, name: str) -> list[int]:
        first, cache = self._first, self._cache
        out: list[int] = []
        raw = name.encode("utf-8", "surrogateescape")
        if raw and b"\0" not in raw:
            targets: set[int] = set()
            needle = b"\0" + raw + b"\0"
            spec: Spec | None = self
            while spec is not None:  # a split spec's names may point into its base's table
                tab, start = spec._strtab, spec._str_start
                if tab.startswith(raw + b"\0"):
                    targets.add(start)
                pos = tab.find(needle)
                while pos >= 0:
                    targets.add(start + pos + 1)
                    pos = tab.find(needle, pos + 1)
                spec = spec._base
            if targets:
                noffs, lo, hi = self._name_offsets()
                for target in targets:
                    i = lo.get(target)
                    if i is None:
                        continue  # a member name, not a type name
                    end = hi[target]
                    while True:
                        t = cache[i]
                        if t is None or t.name == name:
                            out.append(first + i)
                        if i == end:
                            break
                        i = noffs.index(target, i + 1, end + 1)
        for i in range(len(self._offs), len(cache)):  # added after parsing
            t = cache[i]
            if t is not None and t.name == name:
                out.append(first + i)
        out.sort()
        return out

    def _name_index(self) -> dict[str, list[int]]:
        idx = self._names
        if idx is None:
            idx = {}
            words, string, first = self._words, self.string, self._first
            cache = self._cache
            # Group record ids by name offset first (cheap ints), then decode each distinct
            # name once: vmlinux has ~130k records but far fewer distinct names.
            by_off: dict[int, list[int]] = {}
            get = by_off.get
            for i, off in enumerate(self._offs):
                if cache[i] is not None:  # decoded (and maybe renamed)
                    by_off.setdefault(-1 - i, []).append(first + i)
                    continue
                name_off = words[off]
                if name_off:
                    ids = get(name_off)
                    if ids is None:
                        by_off[name_off] = [first + i]
                    else:
                        ids.append(first + i)
            tab, start = self._strtab, self._str_start
            text = tab.decode("ascii") if tab.isascii() else None
            find = text.find if text is not None else None
            for name_off, ids in by_off.items():
                if name_off < 0:
                    t = cache[ids[0] - first]
                    assert t is not None
                    if t.name:
                        idx.setdefault(t.name, []).extend(ids)
                    continue
                rel = name_off - start
                if text is not None and find is not None and 0 <= rel < len(text):
                    end = find("\0", rel)
                    name = text[rel:end] if end >= 0 else string(name_off)
                else:
                    name = string(name_off)
                have = idx.get(name)
                if have is None:
                    idx[name] = ids
                else:
                    have.extend(ids)
                    have.sort()
            for i in range(len(self._offs), len(cache)):
                t = cache[i]
                if t is not None and t.name:
                    idx.setdefault(t.name, []).append(first + i)
            self._names = idx
        return idx

    def _decode(self, type_ids: list[int]) -> None:
        """Decode own ``type_ids`` and every own type they reach, without recursion."""
        first, cache, nown = self._first, self._cache, len(self._offs)
        pending: list[tuple[Type, tuple[int, ...]]] = []
        stack = type_ids[::-1]
        try:
            while stack:
                tid = stack.pop()
                if cache[tid - first] is not None:
                    continue
                t, refs = self._inflate(tid)
                cache[tid - first] = t
                self._ids[t] = tid
                pending.append((t, refs))
                for r in refs:
                    if r >= first:
                        if r - first >= nown:
                            raise BTFError(f"btf: type {tid} refers to missing type {r}")
                        if cache[r - first] is None:
                            stack.append(r)
                    elif r and self._base is None:
                        raise BTFError(f"btf: type {tid} refers to missing type {r}")
            for t, refs in pending:
                if refs:
                    t._set_refs([self._resolve(r) for r in refs])
        except BaseException:
            for t, _ in pending:
                cache[self._ids.pop(t) - first] = None
            raise

    def _resolve(self, tid: int) -> Type:
        if tid == 0:
            return self._void
        if tid < self._first:
            assert self._base is not None
            return self._base.type_by_id(tid)
        t = self._cache[tid - self._first]
        assert t is not None
        return t

    def _inflate(self, tid: int) -> tuple[Type, tuple[int, ...]]:
        """Build the object for one record, with placeholder references, and its ref ids."""
        # Hot path (vmlinux): kinds are tested by frequency, strings come from a cache.
        w = self._words
        o = self._offs[tid - self._first]
        name_off, info, st = w[o], w[o + 1], w[o + 2]
        kind = (info >> 24) & 0x1F
        vlen = info & 0xFFFF
        kflag = bool(info >> 31)
        strs, string = self._str_cache, self.string
        name = (strs.get(name_off) or string(name_off)) if name_off else ""
        p = _PENDING
        b = o + 3
        if kind == 12:  # FUNC
            if vlen >= len(_FUNC_LINKAGES):
                raise BTFError(f"btf: type {tid}: func {name}: bad linkage {vlen}")
            return Func(name, _PENDING_PROTO, _FUNC_LINKAGES[vlen]), (st,)
        if kind == 13:  # FUNC_PROTO
            params = []
            refs = [st]
            for _ in range(vlen):
                pn = w[b]
                params.append(FuncParam((strs.get(pn) or string(pn)) if pn else "", p))
                refs.append(w[b + 1])
                b += 2
            return FuncProto(p, params, name), tuple(refs)
        if kind == 2:  # PTR: the target is decoded when first used
            if st == 0:
                return Pointer(self._void, name), ()
            if st >= self._first + len(self._offs) or (st < self._first and self._base is None):
                raise BTFError(f"btf: type {tid} refers to missing type {st}")
            ptr = Pointer(_PENDING, name)
            object.__setattr__(ptr, "target", _Lazy(self, st))
            return ptr, ()
        if kind == 4 or kind == 5:  # STRUCT, UNION
            members = []
            refs = []
            for _ in range(vlen):
                mn, off = w[b], w[b + 2]
                mname = (strs.get(mn) or string(mn)) if mn else ""
                if kflag:
                    members.append(Member(mname, p, off & 0xFFFFFF, off >> 24))
                else:
                    members.append(Member(mname, p, off, 0))
                refs.append(w[b + 1])
                b += 3
            t = (Struct if kind == 4 else Union)(name, st, members)
            return t, tuple(refs)
        if kind == 10:  # CONST
            return Const(p, name), (st,)
        if kind == 3:  # ARRAY
            return Array(p, p, w[b + 2], name), (w[b], w[b + 1])
        if kind == 8:  # TYPEDEF
            return Typedef(name, p), (st,)
        if kind == 6:  # ENUM
            values = []
            for _ in range(vlen):
                v = w[b + 1]
                values.append(EnumValue(string(w[b]), _s32(v) if kflag else v))
                b += 2
            return Enum(name, st, kflag, values, False), ()
        if kind == 1:  # INT
            enc = w[b]
            flags = (enc >> 24) & 0x0F
            bits = enc & 0xFF
            if bits == 0 or bits > st * 8:
                raise BTFError(f"btf: type {tid}: int {name} has {bits} bits in {st} bytes")
            return Int(
                name,
                st,
                bool(flags & _INT_SIGNED),
                bool(flags & _INT_CHAR),
                bool(flags & _INT_BOOL),
                bits,
                (enc >> 16) & 0xFF,
            ), ()
        if kind == 19:  # ENUM64
            values = []
            for _ in range(vlen):
                v = w[b + 1] | (w[b + 2] << 32)
                if kflag and v >> 63:
                    v -= 1 << 64
                values.append(EnumValue(string(w[b]), v))
                b += 3
            return Enum(name, st, kflag, values, True), ()
        if kind == 14:  # VAR
            if w[b] >= len(_VAR_LINKAGES):
                raise BTFError(f"btf: type {tid}: var {name}: bad linkage {w[b]}")
            return Var(name, p, _VAR_LINKAGES[w[b]]), (st,)
        if kind == 15:  # DATASEC
            secinfos = []
            refs = []
            for _ in range(vlen):
                secinfos.append(VarSecinfo(p, w[b + 1], w[b + 2]))
                refs.append(w[b])
                b += 3
            return Datasec(name, st, secinfos), tuple(refs)
        if kind == 7:  # FWD
            return Fwd(name, kflag), ()
        if kind == 9:  # VOLATILE
            return Volatile(p, name), (st,)
        if kind == 11:  # RESTRICT
            return Restrict(p, name), (st,)
        if kind == 16:  # FLOAT
            return Float(name, st), ()
        if kind == 17:  # DECL_TAG
            return DeclTag(name, p, _s32(w[b]), kflag), (st,)
        if kind == 18:  # TYPE_TAG
            return TypeTag(name, p, kflag), (st,)
        raise BTFError(f"btf: type {tid}: unknown kind {kind}")  # _index_records prevents


def _index_records(words: array[int], first: int) -> array[int]:
    """One pass over the type section: the word offset of every record."""
    offs: array[int] = array("I")
    n = len(words)
    fixed, per = _FIXED_WORDS, _VLEN_WORDS
    o = 0
    append = offs.append
    while o < n:
        if o + 3 > n:
            raise BTFError(f"btf: type {first + len(offs)}: truncated record")
        info = words[o + 1]
        kind = (info >> 24) & 0x1F
        if kind == 0 or kind >= _NKINDS:
            raise BTFError(f"btf: type {first + len(offs)}: unknown kind {kind}")
        append(o)
        o += 3 + fixed[kind] + per[kind] * (info & 0xFFFF)
    if o != n:
        raise BTFError(f"btf: type {first + len(offs) - 1}: truncated record")
    if first + len(offs) - 1 > BTF_MAX_TYPE:
        raise BTFError(f"btf: more than {BTF_MAX_TYPE} types")
    return offs


# String tables up to this size (an object's, not the kernel's) are decoded in one pass at
# parse time: nearly every string of an object's BTF is needed, and one split is much
# cheaper than a lookup per string.
_PREFILL_STRINGS = 64 * 1024


def _split_strings(strtab: bytes, start: int) -> dict[int, str]:
    """Offset (from ``start``) → string for every string that follows a nul. Offsets into
    the middle of a string are left to :meth:`Spec.string`."""
    out: dict[int, str] = {}
    off = start
    for raw in strtab.split(b"\0")[:-1]:  # the table ends with a nul (checked by parse)
        out[off] = raw.decode("utf-8", "surrogateescape")
        off += len(raw) + 1
    return out


class _Range(Exception):
    """A field is out of range; turned into a BTFError with context by ``marshal``."""


def _u(value: int, bits: int, what: str) -> int:
    if not 0 <= value < 1 << bits:
        raise _Range(f"{what} {value} out of range")
    return value


def _encode_type(
    t: Type,
    out: list[int],
    intern: Callable[[str], int],
    type_id: Callable[[Type], int],
) -> None:
    """Append the record of ``t`` (as u32 words) to ``out``; raises _Range."""
    # Hot on the first load of every object: no helper closures, the common kinds first,
    # range checks inline where a value can be out of range.
    name = intern(t.name)
    kind = int(t.kind) << 24

    if isinstance(t, Pointer):
        out += (name, kind, type_id(t.target))
    elif isinstance(t, Int):
        enc = (
            (_INT_SIGNED if t.signed else 0)
            | (_INT_CHAR if t.char else 0)
            | (_INT_BOOL if t.bool else 0)
        )
        out += (
            name,
            kind,
            _u(t.size, 32, "size"),
            (enc << 24) | (_u(t.offset, 8, "bit offset") << 16) | _u(t.bits, 8, "bits"),
        )
    elif isinstance(t, Struct | Union):
        members = t.members
        kflag = any(m.bitfield_size for m in members)
        out += (
            name,
            (kflag << 31) | kind | _u(len(members), 16, "vlen"),
            _u(t.size, 32, "size"),
        )
        for m in members:
            if kflag:
                off = (_u(m.bitfield_size, 8, f"member {m.name}: bitfield size") << 24) | _u(
                    m.offset_bits, 24, f"member {m.name}: offset"
                )
            else:
                off = m.offset_bits
                if not 0 <= off < 1 << 32:
                    raise _Range(f"member {m.name}: offset {off} out of range")
            out += (intern(m.name), type_id(m.type), off)
    elif isinstance(t, Typedef | Volatile | Const | Restrict):
        out += (name, kind, type_id(t.type))
    elif isinstance(t, Array):
        out += (name, kind, 0, type_id(t.type), type_id(t.index_type), _u(t.nelems, 32, "nelems"))
    elif isinstance(t, FuncProto):
        params = t.params
        out += (name, kind | _u(len(params), 16, "vlen"), type_id(t.return_type))
        for prm in params:
            out += (intern(prm.name), type_id(prm.type))
    elif isinstance(t, Func):
        out += (name, kind | int(t.linkage), type_id(t.type))
    elif isinstance(t, Var):
        out += (name, kind, type_id(t.type), int(t.linkage))
    elif isinstance(t, Datasec):
        out += (name, kind | _u(len(t.vars), 16, "vlen"), _u(t.size, 32, "size"))
        for vsi in t.vars:
            out += (type_id(vsi.type), _u(vsi.offset, 32, "offset"), _u(vsi.size, 32, "var size"))
    elif isinstance(t, Enum):
        out += (
            name,
            (t.signed << 31) | kind | _u(len(t.values), 16, "vlen"),
            _u(t.size, 32, "size"),
        )
        for v in t.values:
            if t.is64:
                if not -(1 << 63) <= v.value < (1 << 64):
                    raise _Range(f"{v.name} = {v.value} out of range")
                raw = v.value & 0xFFFFFFFFFFFFFFFF
                out += (intern(v.name), raw & 0xFFFFFFFF, raw >> 32)
            else:
                if not -(1 << 31) <= v.value < (1 << 32):
                    raise _Range(f"{v.name} = {v.value} out of range")
                out += (intern(v.name), v.value & 0xFFFFFFFF)
    elif isinstance(t, Fwd):
        out += (name, (t.union << 31) | kind, 0)
    elif isinstance(t, TypeTag):
        out += (name, (t.attr << 31) | kind, type_id(t.type))
    elif isinstance(t, Float):
        out += (name, kind, _u(t.size, 32, "size"))
    elif isinstance(t, DeclTag):
        if not -(1 << 31) <= t.component_idx < (1 << 31):
            raise _Range(f"component index {t.component_idx} out of range")
        out += (name, (t.attr << 31) | kind, type_id(t.type), t.component_idx & 0xFFFFFFFF)
    else:
        raise _Range(f"cannot marshal {type(t).__name__}")
