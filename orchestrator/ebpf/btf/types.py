"""The BTF type model: one class per kind, and the helpers that walk it (sizes, alignment,
C-like descriptions). Types refer to each other by object reference; ids exist only inside a
:class:`~orchestrator.ebpf.btf.spec.Spec`."""

from __future__ import annotations

import builtins
import enum
import operator
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from orchestrator.ebpf.errors import BTFError

if TYPE_CHECKING:
    from orchestrator.ebpf.btf.spec import Spec

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


_INT_SIGNED = 1 << 0
_INT_CHAR = 1 << 1
_INT_BOOL = 1 << 2


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

    def get(self) -> Type:
        """The type, decoded now (or already)."""
        return self.spec.type_by_id(self.tid)


def lazy_type(
    read: Callable[[Any], Any], write: Callable[[Any, Any], None], doc: str | None = None
) -> property:
    """A property for a BTF type held as ``read(obj)`` (stored with ``write(obj, value)``),
    possibly as a type id (a :class:`_Lazy`) until its first read, which decodes it and
    stores the type in its place."""

    def get(obj: Any) -> Any:
        held = read(obj)
        if type(held) is _Lazy:  # not decoded yet: decode it now
            held = held.get()
            write(obj, held)
        return held

    return property(get, write, doc=doc)


def lazy_type_attr(name: str, doc: str | None = None) -> property:
    """:func:`lazy_type` held in the attribute ``name`` (a private one: ``_key``)."""
    return lazy_type(operator.attrgetter(name), lambda obj, value: setattr(obj, name, value), doc)


@dataclass(eq=False, repr=False, slots=True)
class Pointer(Type):
    _kind: ClassVar[Kind] = Kind.PTR
    target: Type
    name: str = ""

    def _refs(self) -> list[Type]:
        return [self.target]

    def _set_refs(self, refs: Sequence[Type]) -> None:
        (self.target,) = refs

    def _clone(self) -> Pointer:
        p = Pointer(_PENDING, self.name)
        # a lazy target stays lazy; Spec.copy rebinds it to the copy
        _TARGET_SLOT.__set__(p, _TARGET_SLOT.__get__(self, Pointer))
        return p

    def __repr__(self) -> str:
        return f"Pointer(target={_short(self.target)})"


# ``Pointer.target`` is a property over the dataclass's slot: a target not decoded yet (a
# _Lazy) is decoded on first read. A property rather than a __getattribute__ override, which
# would run Python code on every attribute read of a pointer, isinstance()'s included.
_TARGET_SLOT: Any = Pointer.__dict__["target"]  # the slot's member descriptor


def raw_target(ptr: Pointer) -> Type | _Lazy:
    """A pointer's target as stored: a :class:`_Lazy` while it is not decoded."""
    return _TARGET_SLOT.__get__(ptr, Pointer)  # type: ignore[no-any-return]


# (read and written through the slot's own descriptor, which the property replaces)
setattr(Pointer, "target", lazy_type(_TARGET_SLOT.__get__, _TARGET_SLOT.__set__))  # noqa: B010


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


def enumerators(t: Type | None) -> dict[int, str] | None:
    """The names of an enum type's values (the first name of each value), or None if ``t``
    (past typedefs and qualifiers) is not an enum."""
    if t is None:
        return None
    try:
        u = skip_qualifiers(t)
    except BTFError:
        return None
    if not isinstance(u, Enum):
        return None
    names: dict[int, str] = {}
    for v in u.values:
        names.setdefault(
            v.value if v.value >= 0 or u.signed else v.value & ((1 << (u.size * 8)) - 1), v.name
        )
    return names


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


_PENDING = Void()  # placeholder for references while a closure of types is decoded
