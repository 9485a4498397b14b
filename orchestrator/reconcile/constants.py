"""Constants (``const volatile`` globals in ``.rodata``) as a plan diffs them and status shows
them: decoded through BTF into the literals a manifest writes (:mod:`orchestrator.ebpf.values`),
from an object before it is loaded, and read back from the kernel for a live generation (its
``.rodata`` maps, frozen at load, hold exactly what its programs see)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from orchestrator.ebpf import CollectionSpec, Map
from orchestrator.ebpf import btf as _btf
from orchestrator.ebpf import values as _values
from orchestrator.ebpf.btf import layout as _layout
from orchestrator.ebpf.errors import Error as EbpfError
from orchestrator.reconcile.state import CollectionRecord


def object_constants(
    spec: CollectionSpec, declared: Mapping[str, object]
) -> dict[str, object] | None:
    """Every constant of ``spec`` as it will be loaded: the ``declared`` value (a
    manifest's), else the object's own. None if one can't be decoded (no BTF)."""
    out: dict[str, object] = {}
    for name, var in sorted(spec.variables.items()):
        if not var.constant:
            continue
        if var.type is None:
            return None
        try:
            data = (
                _layout.check_constant(name, var.type, declared[name])
                if name in declared
                else var.raw
            )
            out[name] = _values.plain(_values.decode(var.type, data))
        except (EbpfError, ValueError):
            return None
    return out


def rodata_constants(m: Map) -> dict[str, object]:
    """The constants an open ``.rodata`` map holds, decoded through the BTF the kernel
    holds for it; empty for a section without variables in BTF (``.rodata.str1.1``: string
    literals). Raises the library's errors if it can't be read."""
    _, value_type = m.btf_types()
    if not isinstance(value_type, _btf.Datasec):
        return {}
    decoded = _values.decode(value_type, m.lookup_bytes((0).to_bytes(4, sys.byteorder)))
    if not isinstance(decoded, Mapping):
        return {}
    return {str(k): _values.plain(v) for k, v in decoded.items()}


def live_constants(root: Path, rec: CollectionRecord) -> dict[str, object] | None:
    """The constants of ``rec``'s live generation, read from its ``.rodata`` maps (see
    :func:`rodata_constants`). None if a map can't be read (gone). An object without
    constants gives an empty mapping."""
    from orchestrator.reconcile.observe import open_map

    out: dict[str, object] = {}
    for mname, mr in sorted(rec.maps.items()):
        if not mname.startswith(".rodata") or mr.source:
            continue
        try:
            with open_map(root, rec, mr) as m:
                out.update(rodata_constants(m))
        except (EbpfError, OSError, ValueError):
            return None
    return out


__all__ = ["live_constants", "object_constants", "rodata_constants"]
