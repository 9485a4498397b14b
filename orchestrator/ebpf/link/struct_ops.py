"""``struct_ops`` maps: kernel operation tables (``tcp_congestion_ops`` ...) implemented by
BPF programs (Linux 5.6; ``.struct_ops.link`` and BPF links for them: Linux 6.4).

In the object, a variable in the ``.struct_ops`` (or ``.struct_ops.link``) section holds
the table, typed by the object's copy of the kernel struct; its function-pointer members
are relocated against programs in ``SEC("struct_ops/...")``. At load time:

- the kernel's struct (``tcp_congestion_ops``) and its wrapper value type
  (``bpf_struct_ops_tcp_congestion_ops``, whose member ``data`` holds the struct) are found
  in the kernel's BTF;
- the map is a ``BPF_MAP_TYPE_STRUCT_OPS`` with ``btf_vmlinux_value_type_id`` set to the
  wrapper and the wrapper's size as value size;
- each program is loaded with ``attach_btf_id`` = the kernel struct and
  ``expected_attach_type`` = the index of its member in the kernel struct;
- the value is built from the object's data, member by member (matched by name, since
  the kernel's layout may differ), with each function pointer replaced by the program's fd.

Registration is what :func:`attach_struct_ops` does: writing the value registers a plain
struct_ops map (and deleting it unregisters); for ``.struct_ops.link`` maps, writing only
stores it and a ``BPF_LINK_CREATE`` registers it, until the link is closed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from orchestrator.ebpf import _sys
from orchestrator.ebpf import btf as _btf
from orchestrator.ebpf._sys import FD, Closing, MapType
from orchestrator.ebpf.btf.kernel import KernelBTF, essential_name
from orchestrator.ebpf.errors import AttachTargetError, BTFError, Error, ParseError, SpecError
from orchestrator.ebpf.link.base import Link
from orchestrator.ebpf.maps import Map

if TYPE_CHECKING:
    from orchestrator.ebpf.collection import Collection
    from orchestrator.ebpf.spec import MapSpec

__all__ = ["StructOpsLink", "StructOpsSpec", "attach_struct_ops"]

VALUE_PREFIX = "bpf_struct_ops_"


@dataclass(frozen=True)
class StructOpsSpec:
    """A struct_ops table as the object declares it. ``funcs``: member → program name."""

    type: _btf.Struct
    data: bytes
    funcs: Mapping[str, str] = field(default_factory=dict)
    link: bool = False


@dataclass(frozen=True)
class KernelStructOps:
    """Where the kernel keeps a struct_ops type: ids in vmlinux BTF."""

    type_id: int
    type: _btf.Struct
    value_type_id: int
    value_type: _btf.Struct
    data_offset: int  # of the struct inside the value type

    def member_index(self, name: str) -> int:
        for i, m in enumerate(self.type.members):
            if m.name == name:
                return i
        raise AttachTargetError(f"struct {self.type.name}: the kernel has no member {name}")


# ------------------------------------------------------------------------------ parse time


def collect(
    spec: _btf.Spec | None,
    sections: list[tuple[str, bytes, list[tuple[int, str]]]],
) -> list[tuple[str, StructOpsSpec]]:
    """The struct_ops tables in ``sections``: (name, data, [(offset, symbol name)])."""
    out: list[tuple[str, StructOpsSpec]] = []
    for sec_name, data, relocs in sections:
        if spec is None:
            raise ParseError(f"section {sec_name}: struct_ops needs BTF (compile with -g)")
        try:
            datasec = spec.type_by_name(sec_name, _btf.Datasec)
        except BTFError as err:
            raise ParseError(f"section {sec_name}: no BTF datasec describes it") from err
        for vsi in datasec.vars:
            var = vsi.type
            assert isinstance(var, _btf.Var)
            st = _btf.skip_qualifiers(var.type)
            if not isinstance(st, _btf.Struct):
                raise ParseError(f"struct_ops {var.name}: {_btf.describe(st)} is not a struct")
            body = data[vsi.offset : vsi.offset + st.size]
            if len(body) != st.size:
                raise ParseError(f"struct_ops {var.name}: data is truncated")
            funcs: dict[str, str] = {}
            for off, sym in relocs:
                rel = off - vsi.offset
                if not 0 <= rel < st.size:
                    continue
                member = next((m for m in st.members if m.offset_bits == rel * 8), None)
                if member is None or not _is_func_ptr(member.type):
                    raise ParseError(
                        f"struct_ops {var.name}: relocation at offset {rel} is not a "
                        "function pointer member"
                    )
                funcs[member.name] = sym
            out.append(
                (var.name, StructOpsSpec(st, bytes(body), funcs, sec_name == ".struct_ops.link"))
            )
    return out


def _is_func_ptr(t: _btf.Type) -> bool:
    p = _btf.skip_qualifiers(t)
    return isinstance(p, _btf.Pointer) and isinstance(
        _btf.skip_qualifiers(p.target), _btf.FuncProto
    )


# ------------------------------------------------------------------------------ load time


def kernel_types(ops: StructOpsSpec, kb: KernelBTF, what: str) -> KernelStructOps:
    name = essential_name(ops.type.name)
    found = kb.find(name, _btf.Kind.STRUCT)
    value = kb.find(VALUE_PREFIX + name, _btf.Kind.STRUCT)
    if found is None or value is None:
        raise AttachTargetError(
            f"{what}: the kernel has no struct_ops type {name} (is the subsystem built in?)"
        )
    mod, kspec, kid = found
    vmod, vspec, vid = value
    if mod != "vmlinux" or vmod != "vmlinux":
        raise AttachTargetError(f"{what}: struct_ops types in modules ({mod}) are not supported")
    ktype = kspec.type_by_id(kid)
    vtype = vspec.type_by_id(vid)
    assert isinstance(ktype, _btf.Struct) and isinstance(vtype, _btf.Struct)
    data = next((m for m in vtype.members if m.name == "data"), None)
    if data is None:
        raise AttachTargetError(f"{what}: {vtype.name} has no data member")
    return KernelStructOps(kid, ktype, vid, vtype, data.offset_bits // 8)


class StructOpsMap(Map):
    """A struct_ops map with what it needs to be registered (see :func:`attach_struct_ops`)."""

    ops: StructOpsSpec
    kernel: KernelStructOps


def create_map(spec: MapSpec, kernel: KernelStructOps, btf_fd: FD | None) -> StructOpsMap:
    """BPF_MAP_CREATE for a struct_ops map (its value is written on attach)."""
    from orchestrator.ebpf.maps import kernel_name

    assert spec.struct_ops is not None
    size = kernel.value_type.size
    flags = spec.flags | (int(_sys.MapFlags.LINK) if spec.struct_ops.link else 0)
    attr = _sys.MapCreateAttr(
        map_type=MapType.STRUCT_OPS,
        key_size=4,
        value_size=size,
        max_entries=1,
        map_flags=flags,
        map_name=kernel_name(spec.name).encode(),
        btf_vmlinux_value_type_id=kernel.value_type_id,
    )
    if btf_fd is not None:
        attr.btf_fd = btf_fd.raw
    try:
        fd = _sys.map_create(attr)
    except Error as err:
        raise type(err)(f"map {spec.name}: create struct_ops: {err}", *_errno(err)) from err
    m = StructOpsMap(
        fd,
        name=spec.name,
        type=MapType.STRUCT_OPS,
        key_size=4,
        value_size=size,
        max_entries=1,
        flags=flags,
    )
    m.ops = spec.struct_ops
    m.kernel = kernel
    return m


def _errno(err: Error) -> tuple[int, ...]:
    code = getattr(err, "errno", None)
    return (code,) if isinstance(code, int) else ()


def build_value(
    name: str, ops: StructOpsSpec, kernel: KernelStructOps, prog_fds: Mapping[str, int]
) -> bytes:
    """The map value: the object's data laid out as the kernel's struct, programs as fds."""
    value = bytearray(kernel.value_type.size)
    base = kernel.data_offset
    kmembers = {m.name: m for m in kernel.type.members}
    for m in ops.type.members:
        off = m.offset_bits // 8
        if m.bitfield_size or m.offset_bits % 8:
            raise SpecError(f"struct_ops {name}: bitfield member {m.name} is not supported")
        size = _btf.sizeof(m.type)
        local = ops.data[off : off + size]
        km = kmembers.get(m.name)
        if m.name in ops.funcs:
            if km is None:
                raise AttachTargetError(
                    f"struct_ops {name}: the kernel's {kernel.type.name} has no member "
                    f"{m.name} (program {ops.funcs[m.name]})"
                )
            fd = prog_fds[ops.funcs[m.name]]
            kpos = base + km.offset_bits // 8
            value[kpos : kpos + 8] = fd.to_bytes(8, "little")
            continue
        if km is None:
            if any(local):
                raise AttachTargetError(
                    f"struct_ops {name}: member {m.name} is set but the kernel's "
                    f"{kernel.type.name} has no such member"
                )
            continue
        ksize = _btf.sizeof(km.type)
        if ksize != size:
            raise AttachTargetError(
                f"struct_ops {name}: member {m.name} has size {size}, the kernel's {ksize}"
            )
        kpos = base + km.offset_bits // 8
        value[kpos : kpos + size] = local
    return bytes(value)


class StructOpsLink(Closing):
    """A registered struct_ops map. Closing unregisters it: closes the BPF link (which can
    be pinned through :attr:`link` to outlive the process), or, for maps without
    ``BPF_F_LINK``, deletes the map's element."""

    def __init__(self, m: Map, link: Link | None) -> None:
        self._map = m.clone()
        self._link = link
        self.name = m.name

    @property
    def link(self) -> Link | None:
        """The BPF link (``.struct_ops.link`` maps, Linux 6.4), None for plain maps."""
        return self._link

    def close(self) -> None:
        if self._map.closed:
            return
        try:
            if self._link is not None:
                self._link.close()
            else:
                _sys.map_delete_elem(self._map.fd, bytes(4))
        finally:
            self._map.close()


def attach_struct_ops(coll: Collection, name: str) -> StructOpsLink:
    """Register the struct_ops map ``name`` of a loaded collection with the kernel.

    The collection's programs must stay loaded while it is registered (the kernel keeps
    its own references, so closing the collection afterwards is fine).
    """
    m = coll.maps.get(name)
    if not isinstance(m, StructOpsMap):
        raise SpecError(f"map {name}: not a struct_ops map of this collection")
    fds = {}
    for prog in m.ops.funcs.values():
        p = coll.programs.get(prog)
        if p is None:
            raise SpecError(f"struct_ops {name}: program {prog} is not loaded")
        fds[prog] = p.fd.raw
    value = build_value(name, m.ops, m.kernel, fds)
    try:
        _sys.map_update_elem(m.fd, bytes(4), value)
    except Error as err:
        raise type(err)(f"struct_ops {name}: register: {err}", *_errno(err)) from err
    if not m.ops.link:
        return StructOpsLink(m, None)
    attr = _sys.LinkCreateAttr(prog_fd=m.fd.raw, attach_type=int(_sys.AttachType.STRUCT_OPS))
    try:
        fd = _sys.link_create(attr)
    except Error as err:
        raise type(err)(f"struct_ops {name}: link: {err}", *_errno(err)) from err
    return StructOpsLink(m, Link.from_fd(fd, f"struct_ops {name}"))
