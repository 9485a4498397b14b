"""Binding named objects to the fields of a user class.

```python
class Objects:
    xdp: ebpf.Program = ebpf.bind("xdp_main")
    counters: ebpf.Map = ebpf.bind("counters")
objs = spec.load_and_assign(Objects(), opts)
```

A field's annotation says what it receives: ``Program``/``Map`` (live objects, from
``load_and_assign`` or ``Collection.assign``) or ``ProgramSpec``/``MapSpec``/``VariableSpec``
(from ``CollectionSpec.assign``). A field annotated with a class that itself has bindings is
a nested group; it is created if unset. A name may be bound only once.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from orchestrator.ebpf._sys import MapType
from orchestrator.ebpf.errors import BindError
from orchestrator.ebpf.maps import Map
from orchestrator.ebpf.programs import Program
from orchestrator.ebpf.spec import CollectionSpec, MapSpec, ProgramSpec, VariableSpec
from orchestrator.ebpf.suggestions import hint

if TYPE_CHECKING:
    from orchestrator.ebpf.collection import Collection, CollectionOptions

T = TypeVar("T")
_KEEPALIVE = "_ebpf_keepalive"


@dataclass(frozen=True, slots=True)
class Binding:
    """The marker ``bind(name)`` leaves on a class attribute."""

    name: str


def bind(name: str) -> Any:
    """Mark a class attribute as bound to the object called ``name``.

    Returns ``Any`` on purpose, like ``dataclasses.field``: the annotation gives the type.
    """
    return Binding(name)


@dataclass(frozen=True, slots=True)
class _Field:
    owner: object
    attr: str
    name: str
    kind: type
    path: str


_KINDS = (Program, Map, ProgramSpec, MapSpec, VariableSpec)


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # unresolvable forward references: fall back to the raw strings
        out: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            out.update(getattr(klass, "__annotations__", {}))
        return out


def _resolve_kind(annotation: Any, where: str) -> type:
    if isinstance(annotation, str):
        bare = annotation.split(".")[-1].split("|")[0].strip()
        for k in _KINDS:
            if k.__name__ == bare:
                return k
        raise BindError(f"{where}: annotation {annotation!r} is not a Program, Map or spec type")
    origin = typing.get_origin(annotation)
    if origin is not None:  # Optional[X] / X | None
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _resolve_kind(args[0], where)
    if isinstance(annotation, type) and issubclass(annotation, _KINDS):
        return annotation
    raise BindError(f"{where}: annotation {annotation!r} is not a Program, Map or spec type")


def _has_bindings(cls: type) -> bool:
    return any(isinstance(v, Binding) for k in cls.__mro__ for v in vars(k).values())


def _fields(target: object, path: str = "") -> Iterator[_Field]:
    cls = type(target)
    hints = _hints(cls)
    seen: set[str] = set()
    for klass in cls.__mro__:
        for attr, value in vars(klass).items():
            if attr in seen:
                continue
            seen.add(attr)
            where = f"{path}{cls.__name__}.{attr}"
            if isinstance(value, Binding):
                if attr not in hints:
                    raise BindError(f"{where}: bound field needs a type annotation")
                yield _Field(target, attr, value.name, _resolve_kind(hints[attr], where), where)
    for attr, annotation in hints.items():
        if attr in seen and isinstance(getattr(cls, attr, None), Binding):
            continue
        if isinstance(annotation, type) and _has_bindings(annotation):
            child = getattr(target, attr, None)
            if not isinstance(child, annotation):
                child = annotation()
                _set(target, attr, child, f"{path}{cls.__name__}.{attr}")
            yield from _fields(child, f"{path}{cls.__name__}.{attr}.")


def _set(owner: object, attr: str, value: object, where: str) -> None:
    try:
        setattr(owner, attr, value)
    except (AttributeError, TypeError) as err:
        raise BindError(f"{where}: cannot set field: {err}") from err


def _collect(target: object) -> list[_Field]:
    fields = list(_fields(target))
    by_name: dict[tuple[str, str], str] = {}
    for f in fields:
        group = (
            "program"
            if f.kind in (Program, ProgramSpec)
            else ("map" if f.kind in (Map, MapSpec) else "variable")
        )
        key = (group, f.name)
        if key in by_name:
            raise BindError(f"{f.path}: {group} {f.name} is already bound to {by_name[key]}")
        by_name[key] = f.path
    return fields


def assign_specs(spec: CollectionSpec, target: T) -> T:
    for f in _collect(target):
        if f.kind is ProgramSpec:
            table: dict[str, Any] = dict(spec.programs)
            what = "program"
        elif f.kind is MapSpec:
            table, what = dict(spec.maps), "map"
        elif f.kind is VariableSpec:
            table, what = dict(spec.variables), "variable"
        else:
            raise BindError(f"{f.path}: a spec can only assign spec types, not {f.kind.__name__}")
        if f.name not in table:
            raise BindError(f"{f.path}: no {what} {f.name} in object{hint(f.name, sorted(table))}")
        _set(f.owner, f.attr, table[f.name], f.path)
    return target


def _check_names(spec_names: list[str], f: _Field, what: str) -> None:
    if f.name not in spec_names:
        raise BindError(f"{f.path}: no {what} {f.name} in object{hint(f.name, sorted(spec_names))}")


def load_and_assign(spec: CollectionSpec, target: T, options: CollectionOptions | None) -> T:
    from orchestrator.ebpf.collection import load_subset

    fields = _collect(target)
    programs: list[str] = []
    maps: list[str] = []
    for f in fields:
        if f.kind is Program:
            _check_names(list(spec.programs), f, "program")
            programs.append(f.name)
        elif f.kind is Map:
            _check_names(list(spec.maps), f, "map")
            maps.append(f.name)
        else:
            raise BindError(
                f"{f.path}: load_and_assign binds Program and Map fields, "
                f"not {f.kind.__name__} (use CollectionSpec.assign)"
            )
    coll = load_subset(spec, options, programs, maps)
    try:
        assign_objects(coll, target, fields)
    except BaseException:
        coll.close()
        raise
    # Dependencies nobody bound: programs hold their own references to maps, except that a
    # prog array is emptied by the kernel when its last user reference goes; keep those.
    keep = [m for m in coll.maps.values() if m.type == MapType.PROG_ARRAY]
    for m in coll.maps.values():
        if m not in keep:
            m.close()
    for p in coll.programs.values():
        p.close()
    if keep:
        try:
            object.__setattr__(target, _KEEPALIVE, keep)
        except (AttributeError, TypeError):
            for m in keep:
                m.close()
    return target


def assign_objects(coll: Collection, target: T, fields: list[_Field] | None = None) -> T:
    fields = fields if fields is not None else _collect(target)
    # Check everything first so a failure assigns nothing.
    for f in fields:
        if f.kind is Program:
            _check_names(list(coll.programs), f, "program")
        elif f.kind is Map:
            _check_names(list(coll.maps), f, "map")
        else:
            raise BindError(
                f"{f.path}: a collection assigns Program and Map fields, not {f.kind.__name__}"
            )
    for f in fields:
        obj: Program | Map = coll.programs[f.name] if f.kind is Program else coll.maps[f.name]
        _set(f.owner, f.attr, obj, f.path)
    for f in fields:
        if f.kind is Program:
            coll.programs.pop(f.name, None)
        else:
            coll.maps.pop(f.name, None)
    return target


def close_all(target: object) -> None:
    """Close every Program and Map bound in ``target`` (and what it keeps alive)."""
    for f in _fields(target):
        obj = getattr(f.owner, f.attr, None)
        if isinstance(obj, (Program, Map)):
            obj.close()
    for m in getattr(target, _KEEPALIVE, []):
        m.close()
