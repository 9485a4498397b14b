"""Parsed manifests persisted across commands: what one ``bpforch`` command parsed, the next
one reads back instead of parsing the YAML again (``bpforch validate`` then ``bpforch plan``
of the same files, or ``plan`` run twice).

One entry per set of manifest files a load reads, kept in the
:class:`~orchestrator.ebpf.diskcache.DiskCache` the command keeps parsed objects in, so with
its rules (a 0700 directory of the user's own, only files it wrote, a versioned header with
the payload's sha256, bounded in size, ``--no-cache`` turns it off). The entry's key is a
sha256 over :func:`identity` (bpforch's and Python's versions, :data:`FORMAT` and the size
and mtime of every module of this package, the parser, the schema and the builder, and of
PyYAML's) and the path and sha256 of every file's bytes, in order: a change to any file, or
to which files there are, is a miss, and every file is parsed again.

An entry holds the documents of each file in which parsing and the schema found nothing
wrong: their values and the line and column of every value and every mapping key, in the
order parsing met them (depth first, keys in their order). A load restores those instead
of importing PyYAML, parsing and checking against the schema; the collections are still
built and checked against their objects and the kernel's mounts as for a parsed file. A file
with problems is not kept, nor one with a value JSON does not carry (a ``!hex`` or ``!be16``
map entry): those are parsed every time. The payload is JSON (no pickle) and is checked as
it is read; an entry that does not decode is ignored with one warning and replaced.

Only the command line uses it (see :class:`~orchestrator.manifest.cache.ObjectStore`): the
daemon keeps its parsed files in memory for its lifetime.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

from orchestrator.manifest.document import Document, PathKey

if TYPE_CHECKING:
    from orchestrator.ebpf.diskcache import DiskCache

__all__ = ["FORMAT", "KIND", "SavedDocuments", "identity"]

KIND = "manifests"  # the entries' kind in the disk cache
FORMAT = 1  # of the payload


@functools.cache
def identity() -> str:
    """bpforch's version, :data:`FORMAT`, Python's version and the size and mtime of every
    module of this package and of the libraries that parse and validate (PyYAML,
    jsonschema and its ``referencing``; found, not imported): an entry another parser,
    schema, validator or builder wrote is never read. A module that can't be stat-ed (gone
    in the middle of an upgrade) counts as missing, never as an error."""
    from orchestrator import __version__
    from orchestrator.ebpf.diskcache import tree_identity

    parts = [__version__, str(FORMAT), sys.version]
    parts.append(tree_identity(os.path.dirname(os.path.abspath(__file__))))
    for name in _LIBRARIES:
        spec = importlib.util.find_spec(name)
        found = spec.origin if spec is not None and spec.origin is not None else ""
        parts.append(tree_identity(os.path.dirname(found)) if found else f"no {name}")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


# the libraries whose code decides what a manifest parses and validates to
_LIBRARIES = ("yaml", "jsonschema", "referencing")


class SavedDocuments:
    """The persisted documents of one load (see the module): ``files`` are the path and the
    sha256 of the bytes of every file the load reads, in order. The entry is looked up on
    the first :meth:`get`; :meth:`keep` the documents of every file parsed without problems,
    then :meth:`save` writes them if the lookup missed."""

    def __init__(self, disk: DiskCache, files: Sequence[tuple[Path, bytes]]) -> None:
        self.disk = disk
        self.paths = {str(path): path for path, _ in files}
        self.digests = {str(path): digest.hex() for path, digest in files}
        h = hashlib.sha256(identity().encode())
        for path, digest in files:
            h.update(f"\0{path}\0".encode() + digest)
        self.key = h.hexdigest()
        self._entry: dict[str, list[Document]] | None = None
        self._missed = False
        self._kept: dict[str, list[Document]] = {}

    def get(self, file: Path) -> list[Document] | None:
        """The documents saved for ``file`` (None: parse it)."""
        if self._entry is None:
            self._entry = self._lookup()
        return self._entry.get(str(file))

    def keep(self, file: Path, documents: Sequence[Document]) -> None:
        """``file`` parsed and passed the schema without a problem: save its documents."""
        self._kept[str(file)] = list(documents)

    def save(self) -> None:
        """Write what was kept if the lookup missed (an entry that was read stays)."""
        if not self._missed or not self._kept:
            return
        files = []
        for name, docs in self._kept.items():
            encoded = [_encode(doc) for doc in docs]
            if any(e is None for e in encoded):
                continue  # a value JSON does not carry: parsed every time
            files.append({"path": name, "sha256": self.digests[name], "documents": encoded})
        try:
            payload = json.dumps({"format": FORMAT, "files": files}, separators=(",", ":"))
        except (ValueError, RecursionError):  # pragma: no cover - _encode checked the values
            return
        self.disk.put(KIND, self.key, payload.encode())

    def _lookup(self) -> dict[str, list[Document]]:
        payload = self.disk.get(KIND, self.key)
        if payload is None:
            self._missed = True
            return {}
        try:
            return self._decode(payload)
        except (ValueError, TypeError, KeyError, RecursionError) as err:
            self.disk.reject(KIND, self.key, f"parsed manifests do not decode ({err})")
            self._missed = True
            return {}

    def _decode(self, payload: bytes) -> dict[str, list[Document]]:
        raw = _dict(json.loads(payload))
        if raw.get("format") != FORMAT:
            raise ValueError(f"format {raw.get('format')!r}, not {FORMAT}")
        out: dict[str, list[Document]] = {}
        for raw_file in _list(raw["files"]):
            item = _dict(raw_file)
            name = item["path"]
            if type(name) is not str or self.digests.get(name) != item["sha256"]:
                raise ValueError(f"{name!r} is not one of the files read")
            path = self.paths[name]
            out[name] = [_decode_document(path, d) for d in _list(item["documents"])]
        return out


def _encode(doc: Document) -> dict[str, object] | None:
    """``doc`` as JSON values, or None if its value holds anything but JSON's types or its
    positions are not one per node (what decoding relies on)."""
    if not _plain(doc.value):
        return None
    values, keys = _positions(doc.value)
    if list(doc.values) != values or list(doc.keys) != keys:
        return None
    return {
        "index": doc.index,
        "start": list(doc.start),
        "value": doc.value,
        "values": [n for pos in doc.values.values() for n in pos],
        "keys": [n for pos in doc.keys.values() for n in pos],
    }


def _decode_document(file: Path, raw: object) -> Document:
    d = _dict(raw)
    index, start, value = d["index"], _ints(d["start"]), d["value"]
    if type(index) is not int or len(start) != 2:
        raise ValueError(f"document {index!r} of {file}: bad index or start")
    values, keys = _positions(value)
    flat_values, flat_keys = _ints(d["values"]), _ints(d["keys"])
    if len(flat_values) != 2 * len(values) or len(flat_keys) != 2 * len(keys):
        raise ValueError(f"document {index} of {file}: positions are not one per node")
    return Document(
        file,
        index,
        value,
        (start[0], start[1]),
        dict(zip(values, zip(flat_values[::2], flat_values[1::2], strict=True), strict=True)),
        dict(zip(keys, zip(flat_keys[::2], flat_keys[1::2], strict=True), strict=True)),
    )


def _ints(value: object) -> list[int]:
    items = _list(value)
    if not set(map(type, items)) <= {int}:
        raise ValueError("expected a list of integers")
    return cast(list[int], items)


def _dict(value: object) -> dict[str, object]:
    if type(value) is not dict:
        raise ValueError(f"expected an object, got {type(value).__name__}")
    return cast(dict[str, object], value)


def _list(value: object) -> list[object]:
    if type(value) is not list:
        raise ValueError(f"expected a list, got {type(value).__name__}")
    return cast(list[object], value)


def _plain(value: object) -> bool:
    """Whether ``value`` is made of what JSON gives back as it is."""
    t = type(value)
    if t is dict:
        items = cast(dict[object, object], value).items()
        return all(type(k) is str and _plain(v) for k, v in items)
    if t is list:
        return all(_plain(v) for v in cast(list[object], value))
    return t is str or t is int or t is float or t is bool or value is None


def _positions(value: object) -> tuple[list[PathKey], list[PathKey]]:
    """The paths of every value and of every mapping key, in the order parsing meets them."""
    values: list[PathKey] = []
    keys: list[PathKey] = []

    def walk(v: object, path: PathKey) -> None:
        values.append(path)
        if type(v) is dict:
            for k, child in cast(dict[str, object], v).items():
                key = (*path, k)
                keys.append(key)
                if type(child) is dict or type(child) is list:
                    walk(child, key)
                else:  # a scalar: its own path, without a call
                    values.append(key)
        elif type(v) is list:
            for i, child in enumerate(cast(list[object], v)):
                walk(child, (*path, i))

    walk(value, ())
    return values, keys
