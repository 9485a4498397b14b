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

The package: :mod:`.types` (the type model), :mod:`.spec` (:class:`Spec`), :mod:`.decode` and
:mod:`.encode` (the wire format), :mod:`.ext` (``.BTF.ext``: func/line info and CO-RE
relocation records), :mod:`.core` (CO-RE relocation against a target spec), :mod:`.kernel`
(the running kernel's BTF) and :mod:`.layout` (Python values ↔ bytes laid out by a type).
"""

from __future__ import annotations

from orchestrator.ebpf.btf.spec import RecordIndex, Spec
from orchestrator.ebpf.btf.types import (
    BTF_MAGIC,
    BTF_MAX_TYPE,
    BTF_MAX_VLEN,
    BTF_VERSION,
    POINTER_SIZE,
    Array,
    Const,
    Datasec,
    DeclTag,
    Enum,
    EnumValue,
    Float,
    Func,
    FuncLinkage,
    FuncParam,
    FuncProto,
    Fwd,
    Int,
    Kind,
    Member,
    Pointer,
    Restrict,
    Struct,
    Type,
    Typedef,
    TypeTag,
    Union,
    Var,
    VarLinkage,
    VarSecinfo,
    Void,
    Volatile,
    alignof,
    describe,
    enumerators,
    sizeof,
    skip_qualifiers,
)

__all__ = [
    "BTF_MAGIC",
    "BTF_MAX_TYPE",
    "BTF_MAX_VLEN",
    "BTF_VERSION",
    "POINTER_SIZE",
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
    "RecordIndex",
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
    "enumerators",
    "sizeof",
    "skip_qualifiers",
]
