"""The maps bpforch owns, opened by address for day-2 work (``bpforch map``, ``bpforch
events``): ``COLLECTION/MAP``, or the path of a pinned map.

A map of an applied collection is reached as observe reaches it: through its pin, opened
relative to the owned root without following a symlink, or, for a map that is not pinned,
through a program of the collection that holds it. A map the collection takes from another
(``from:``) is the source's map. A path under the owned root is opened the same way (a
symlink planted there is refused); any other path is someone else's pin, opened as given.
Keys and values are literals typed by the BTF the kernel holds for the map
(:class:`~orchestrator.ebpf.map_codec.LiteralMap`); names in prog arrays and maps of maps
resolve to the collection's own programs and maps.
"""

from __future__ import annotations

import errno
import os
import posixpath
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from orchestrator.ebpf import Map, Program, btf
from orchestrator.ebpf.errors import Error as EbpfError
from orchestrator.ebpf.errors import PinError, SyscallError, clip, quote
from orchestrator.ebpf.map_codec import LiteralMap, MapCodec
from orchestrator.ebpf.suggestions import hint
from orchestrator.ebpf.values import References
from orchestrator.reconcile.errors import ReconcileError
from orchestrator.reconcile.observe import observe, open_map
from orchestrator.reconcile.owner import open_owned, open_root
from orchestrator.reconcile.state import ActualState, CollectionRecord, MapRecord

__all__ = ["LiveMap", "MapAddress", "MapAddressError", "open_live_map"]


class MapAddressError(ReconcileError):
    """A map address that names nothing bpforch can open (a collection or map that is not
    applied, a malformed address, a pin that is gone or not a map)."""


@dataclass(frozen=True, slots=True)
class MapAddress:
    """``COLLECTION/MAP`` (``collection``, ``map``) or an absolute pin path (``path``)."""

    collection: str = ""
    map: str = ""
    path: Path | None = None

    @classmethod
    def parse(cls, text: str) -> MapAddress:
        if text.startswith("/"):
            if "\0" in text:
                raise MapAddressError(f"map path {quote(text)} contains a NUL byte")
            return cls(path=Path(posixpath.normpath(text)))
        coll, sep, name = text.partition("/")
        if not sep or not coll or not name or "/" in name:
            raise MapAddressError(
                f"map {quote(text)}: expected COLLECTION/MAP, or the absolute path of a "
                "pinned map (see bpforch map ls)"
            )
        return cls(collection=coll, map=name)

    def __str__(self) -> str:
        return str(self.path) if self.path is not None else f"{self.collection}/{self.map}"


class _Opened(Mapping[str, int]):
    """Names of a collection's programs (or maps) to fds, opened on first use and kept until
    :meth:`close` (a prog array update needs the program's fd only while it runs)."""

    def __init__(self, names: list[str], opener: Callable[[str], int]) -> None:
        self._names = names
        self._opener = opener
        self._fds: dict[str, int] = {}

    def __getitem__(self, name: str) -> int:
        if name not in self._names:
            raise KeyError(name)
        fd = self._fds.get(name)
        if fd is None:
            fd = self._fds[name] = self._opener(name)
        return fd

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class LiveMap:
    """An open map with its codec (``literal``); close it (or use ``with``)."""

    def __init__(
        self,
        address: MapAddress,
        m: Map,
        codec: MapCodec,
        *,
        record: CollectionRecord | None,
        pin: Path | None,
        held: list[Map | Program],
        root: Path,
    ) -> None:
        self.address = address
        self.root = root
        self.map = m
        self.literal = LiteralMap(m, codec)
        self.record = record
        self.pin = pin
        self._held = held

    @property
    def codec(self) -> MapCodec:
        return self.literal.codec

    def close(self) -> None:
        for h in self._held:
            h.close()
        self._held.clear()
        self.map.close()

    def __enter__(self) -> LiveMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def find_type(self, name: str) -> btf.Type:
        """The BTF type ``name`` from the BTF the collection's programs were loaded with
        (the types of the object they came from). MapAddressError if none has it."""
        rec = self.record
        if rec is None:
            raise MapAddressError(
                f"map {self.address}: not a map of an applied collection, so there are no "
                f"programs to take type {quote(name)} from (give --btf FILE)"
            )
        return collection_type(self.root, rec, name)


def collection_type(root: Path, rec: CollectionRecord, name: str) -> btf.Type:
    """Type ``name`` from the BTF of the collection's loaded programs."""
    root_fd = open_root(root)
    try:
        for p in sorted(rec.programs.values(), key=lambda p: p.name):
            try:
                prog = Program.from_fd(open_owned(root_fd, f"{rec.name}/{p.pin}"))
            except (EbpfError, OSError):
                continue
            with prog:
                spec = prog.btf_spec()
            if spec is None:
                continue
            try:
                return spec.type_by_name(name)
            except EbpfError:
                names = [
                    n for n in spec.names() if isinstance(_first(spec, n), btf.Struct | btf.Union)
                ]
                raise MapAddressError(
                    f"collection {rec.name}: its programs' BTF has no type {quote(name)}"
                    f"{hint(name, sorted(names))}"
                ) from None
    finally:
        os.close(root_fd)
    raise MapAddressError(
        f"collection {rec.name}: no program of it was loaded with BTF, so it has no type "
        f"{quote(name)} (give --btf FILE)"
    )


def _first(spec: btf.Spec, name: str) -> btf.Type | None:
    found = spec.types_by_name(name)
    return found[0] if found else None


def _inside(root: Path, path: Path) -> str | None:
    """``path`` relative to ``root`` when it lies under it (lexically: no symlink is
    resolved to decide), else None."""
    r, p = posixpath.normpath(os.fspath(root)), posixpath.normpath(os.fspath(path))
    if p.startswith(r.rstrip("/") + "/"):
        return p[len(r.rstrip("/")) + 1 :]
    return None


def open_live_map(
    address: str | MapAddress,
    *,
    root: Path,
    state_dir: Path,
    key_format: str | None = None,
    value_format: str | None = None,
    actual: ActualState | None = None,
) -> LiveMap:
    """Open the map at ``address`` (``COLLECTION/MAP`` or a pin path). Raises
    MapAddressError (nothing there), ReconcileError (the record) or an ebpf Error."""
    addr = address if isinstance(address, MapAddress) else MapAddress.parse(address)
    if actual is None:
        try:
            actual = observe(root, state_dir)
        except (EbpfError, OSError) as err:
            raise MapAddressError(f"map {addr}: observe {root}: {err}") from err
    records = {n: c.record for n, c in actual.collections.items()}
    held: list[Map | Program] = []
    rec: CollectionRecord | None
    pin: Path | None = None
    m: Map | None = None
    try:
        if addr.path is None:
            rec = records.get(addr.collection)
            if rec is None:
                known = ", ".join(sorted(records)) or "none"
                raise MapAddressError(
                    f"map {addr}: collection {quote(addr.collection)} is not applied "
                    f"(applied: {clip(known)})"
                )
            mr = rec.maps.get(addr.map)
            if mr is None:
                raise MapAddressError(
                    f"map {addr}: collection {rec.name} has no map {quote(addr.map)}"
                    f"{hint(addr.map, sorted(rec.maps))}"
                )
            m, rec, pin = _open_recorded(root, records, rec, mr)
        else:
            m, rec, pin = _open_path(root, records, addr.path)
        refs = _references(root, rec, held) if rec is not None else None
        codec = MapCodec.of(m, refs=refs, key_format=key_format, value_format=value_format)
    except BaseException:
        for h in held:
            h.close()
        if m is not None:
            m.close()
        raise
    return LiveMap(addr, m, codec, record=rec, pin=pin, held=held, root=root)


def _open_recorded(
    root: Path,
    records: Mapping[str, CollectionRecord],
    rec: CollectionRecord,
    mr: MapRecord,
    depth: int = 0,
) -> tuple[Map, CollectionRecord | None, Path | None]:
    """The map ``mr`` of ``rec``: a substituted one is its source's."""
    if mr.source.startswith("pinned:"):
        path = Path(mr.source.removeprefix("pinned:"))
        try:
            return Map.from_pin(path), None, path
        except (EbpfError, OSError) as err:
            raise MapAddressError(f"map {rec.name}/{mr.name}: its source {path}: {err}") from err
    if mr.source:
        _, coll, name = mr.source.split("/", 2)
        src = records.get(coll)
        if src is None or name not in src.maps or depth > 8:
            raise MapAddressError(
                f"map {rec.name}/{mr.name}: its source, map {name} of collection {coll}, is "
                "not applied"
            )
        return _open_recorded(root, records, src, src.maps[name], depth + 1)
    try:
        m = open_map(root, rec, mr)
    except (EbpfError, OSError) as err:
        raise MapAddressError(f"map {rec.name}/{mr.name}: {err}") from err
    m.name = mr.name
    return m, rec, root / rec.name / mr.pin if mr.pin else None


def _open_path(
    root: Path, records: Mapping[str, CollectionRecord], path: Path
) -> tuple[Map, CollectionRecord | None, Path]:
    rel = _inside(root, path)
    if rel is None:  # someone else's pin: opened as given
        try:
            return Map.from_pin(path), None, path
        except SyscallError as err:  # no such pin, permission denied
            raise MapAddressError(str(err.replace(subject=f"map {path}", action=""))) from err
        except PinError as err:  # another kind of object: says so with the path
            raise MapAddressError(str(err)) from err
        except (EbpfError, OSError) as err:
            raise MapAddressError(f"map {path}: {err}") from err
    try:
        root_fd = open_root(root)
    except FileNotFoundError:
        raise MapAddressError(f"map {path}: {root} does not exist") from None
    try:
        m = Map.from_fd(open_owned(root_fd, rel))
    except OSError as err:
        if err.errno == errno.ELOOP:
            why = "a symlink is in the way (bpforch never follows one in its root)"
        else:
            why = (err.strerror or str(err)).lower()
        raise MapAddressError(f"map {path}: {why}") from err
    except EbpfError as err:
        raise MapAddressError(f"map {path}: {err}") from err
    finally:
        os.close(root_fd)
    coll = rel.split("/", 1)[0]
    rec = records.get(coll)
    for mr in rec.maps.values() if rec is not None else ():
        if mr.pin and f"{coll}/{mr.pin}" == rel:
            m.name = mr.name
    return m, rec, path


def _references(root: Path, rec: CollectionRecord, held: list[Map | Program]) -> References:
    """The collection's programs and maps by name, for prog arrays and maps of maps."""

    def program(name: str) -> int:
        p = rec.programs[name]
        root_fd = open_root(root)
        try:
            prog = Program.from_fd(open_owned(root_fd, f"{rec.name}/{p.pin}"))
        except (EbpfError, OSError) as err:
            raise MapAddressError(f"program {rec.name}/{name}: {err}") from err
        finally:
            os.close(root_fd)
        held.append(prog)
        return prog.fd.raw

    def inner(name: str) -> int:
        try:
            m = open_map(root, rec, rec.maps[name])
        except (EbpfError, OSError) as err:
            raise MapAddressError(f"map {rec.name}/{name}: {err}") from err
        held.append(m)
        return m.fd.raw

    return References(
        programs=_Opened(sorted(rec.programs), program),
        maps=_Opened(sorted(n for n, m in rec.maps.items() if not m.source), inner),
        program_ids={p.id: n for n, p in rec.programs.items()},
        map_ids={m.id: n for n, m in rec.maps.items()},
    )
