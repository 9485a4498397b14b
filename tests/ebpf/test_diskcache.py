"""The persisted cache (``diskcache``) behind the spec cache and the kernel BTF index: what
a process reads back equals what it would have parsed, and nothing in the directory that
this code did not write is ever trusted (each refusal is one warning, never a crash)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import stat
import struct
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator import ebpf
from orchestrator.ebpf import btf, diskcache, speccache, specfile
from orchestrator.ebpf.btf import core
from orchestrator.ebpf.btf import ext as _btf_ext
from orchestrator.ebpf.btf import kernel as kernel_btf
from orchestrator.ebpf.btf.spec import _Positions
from tests.conftest import BPF_DIR, obj, require_kernel

CORE_SRC = Path(__file__).parent / "core"
LOGGER = "orchestrator.ebpf.diskcache"


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"  # made (0700) by the cache


def _objects() -> list[Path]:
    return sorted(BPF_DIR.glob("*.o"))


def _fresh(
    path: Path, disk: diskcache.DiskCache
) -> tuple[ebpf.CollectionSpec, speccache.CacheStats]:
    """What a new process gets: a spec cache of its own over the same directory."""
    cache = speccache.SpecCache(disk=disk)
    spec = cache.get(path)
    return spec, cache.stats()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _entries(d: Path, kind: str = "spec") -> list[Path]:
    if not d.exists():
        return []
    return sorted(p for p in d.iterdir() if p.name.startswith(f"{kind}-"))


# ---------------------------------------------------------------------------- equality


def _tid(spec: btf.Spec | None, t: btf.Type | None) -> int | None:
    if t is None:
        return None
    assert spec is not None
    return spec.type_id(t)


def _map_view(m: ebpf.MapSpec, b: btf.Spec | None) -> tuple[object, ...]:
    return (
        m.name,
        m.type,
        m.key_size,
        m.value_size,
        m.max_entries,
        m.flags,
        m.pinning,
        None if m.inner_map is None else _map_view(m.inner_map, b),
        [(e.key, bytes(e.value) if not isinstance(e.value, str) else e.value) for e in m.contents],
        [type(e.value) for e in m.contents],
        _tid(b, m.key),
        _tid(b, m.value),
        m.map_extra,
        m.numa_node,
        m.extra,
        m.freeze,
        m.section,
        m.btf is not None,
        _tid(b, m.btf_value_type),
        None
        if m.struct_ops is None
        else (
            _tid(b, m.struct_ops.type),
            m.struct_ops.data,
            dict(m.struct_ops.funcs),
            m.struct_ops.link,
        ),
    )


def _view(s: ebpf.CollectionSpec) -> tuple[object, ...]:
    """Everything a spec holds, with BTF types as ids in its own BTF."""
    b = s.btf
    progs = {
        k: (
            p.name,
            p.type,
            p.attach_type,
            p.section,
            p.instructions.raw,
            dict(p.instructions.references),
            p.license,
            p.kernel_version,
            p.flags,
            p.attach_to,
            p.autoload,
            p.known_section,
            [(f.insn, _tid(b, f.func)) for f in p.func_infos],
            [(li.insn, li.file_name, li.line, li.line_number, li.column) for li in p.line_infos],
            [(r.insn, _tid(b, r.type), r.access, r.kind) for r in p.core_relos],
            p.btf is not None and p.btf is b,
            p.unresolved,
        )
        for k, p in s.programs.items()
    }
    variables = {
        k: (v.name, v.section, v.offset, v.size, _tid(b, v.type), v.linkage, v.raw)
        for k, v in s.variables.items()
    }
    externs = {
        k: (e.name, e.kind, _tid(b, e.type), e.weak, e.offset, e.size) for k, e in s.externs.items()
    }
    return (
        s.name,
        None if b is None else b.marshal()[0],
        [_map_view(m, b) for m in s.maps.values()],
        progs,
        variables,
        externs,
    )


@pytest.fixture(scope="module")
def core_objects(
    compile_bpf: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> list[Path]:
    """The CO-RE, extern and struct_ops sources of tests/ebpf/core, built against the
    running kernel's vmlinux.h (skipped without bpftool/clang)."""
    from tests.conftest import require_tool

    bpftool = require_tool("bpftool")
    import subprocess

    inc = tmp_path_factory.mktemp("vmlinux-h")
    header = subprocess.run(
        [bpftool, "btf", "dump", "file", "/sys/kernel/btf/vmlinux", "format", "c"],
        check=True,
        capture_output=True,
    ).stdout
    (inc / "vmlinux.h").write_bytes(header)
    return [
        compile_bpf((CORE_SRC / name).read_text(), f"-I{inc}")
        for name in ("core_task.c", "externs.c", "tcp_cc.c")
    ]


def test_every_object_reads_back_as_a_fresh_parse(
    cache_dir: Path, core_objects: list[Path]
) -> None:
    disk = diskcache.DiskCache(cache_dir)
    for path in [*_objects(), *core_objects]:
        _, stats = _fresh(path, disk)
        assert (stats.parsed, stats.loaded) == (1, 0), path
        again, stats = _fresh(path, disk)
        assert (stats.parsed, stats.loaded) == (0, 1), path
        assert _view(again) == _view(ebpf.CollectionSpec.from_file(path, cache=False)), path
        assert again.path == str(path) and again.name == path.name
    assert any(p.core_relos for p in _fresh(core_objects[0], disk)[0].programs.values())
    assert _fresh(core_objects[1], disk)[0].externs
    assert any(m.struct_ops is not None for m in _fresh(core_objects[2], disk)[0].maps.values())


def test_the_cached_btf_blob_is_what_a_load_marshals(cache_dir: Path) -> None:
    disk = diskcache.DiskCache(cache_dir)
    _fresh(obj("globals.o"), disk)
    spec, _ = _fresh(obj("globals.o"), disk)
    fresh = ebpf.CollectionSpec.from_file(obj("globals.o"), cache=False)
    assert spec.btf is not None and fresh.btf is not None
    extra = specfile._extra_strings(spec)
    assert extra  # the object has line info: its strings are in the blob
    assert spec.btf.marshal(extra) == fresh.btf.marshal(extra)


def test_a_spec_read_back_is_the_callers_own(cache_dir: Path) -> None:
    disk = diskcache.DiskCache(cache_dir)
    _fresh(obj("xdp_counter.o"), disk)
    cache = speccache.SpecCache(disk=disk)
    a = cache.get(obj("xdp_counter.o"))
    name = next(n for n, v in a.variables.items() if v.constant)
    a.rewrite_constants({name: 7})
    b = cache.get(obj("xdp_counter.o"))
    assert b.variables[name].value != 7
    assert cache.stats().loaded == 1


@pytest.mark.kernel
def test_loads_the_same_into_the_kernel(
    cache_dir: Path, core_objects: list[Path], pin_dir: Path, fd_guard: None
) -> None:
    require_kernel()
    disk = diskcache.DiskCache(cache_dir)
    paths = [obj("xdp_counter.o"), obj("globals.o"), obj("map_in_map.o"), obj("tailcall.o")]
    paths.append(core_objects[0])  # CO-RE
    for path in paths:
        _fresh(path, disk)
        served, stats = _fresh(path, disk)
        assert stats.loaded == 1
        fresh = ebpf.CollectionSpec.from_file(path, cache=False)
        results = []
        for spec in (fresh, served):
            with ebpf.Collection(spec) as coll:
                results.append(
                    (
                        {n: p.tag for n, p in coll.programs.items()},
                        {
                            n: (m.type, m.key_size, m.value_size, m.max_entries, m.flags)
                            for n, m in ((n, m.info()) for n, m in coll.maps.items())
                        },
                    )
                )
        assert results[0] == results[1], path
        assert results[0][0], path


@pytest.mark.kernel
@pytest.mark.parametrize("name", ["xdp_counter.o", "globals.o", "cgroup_egress.o", "tailcall.o"])
def test_a_spec_read_back_decodes_types_only_when_read(
    name: str, cache_dir: Path, pin_dir: Path, fd_guard: None
) -> None:
    """As after a parse, map key/value types, variables' types and func info come back held
    by id: reading an entry back and loading it decodes none of the object's BTF, and each
    type reads back (from the spec or the loaded map) as the one a parse gives."""
    require_kernel()
    disk = diskcache.DiskCache(cache_dir)
    _fresh(obj(name), disk)
    spec, stats = _fresh(obj(name), disk)
    assert stats.loaded == 1
    b = spec.btf
    assert b is not None
    assert all(t is None for t in b._cache)
    with ebpf.Collection(spec, ebpf.CollectionOptions(pin_path=pin_dir)) as coll:
        assert all(t is None for t in b._cache)
        fresh = ebpf.CollectionSpec.from_file(obj(name), cache=False)
        assert fresh.btf is not None
        for mname, m in coll.maps.items():
            ms, mf = spec.maps[mname], fresh.maps[mname]
            assert m.key_type is ms.key and m.value_type is ms.value, mname
            assert _tid(b, ms.key) == _tid(fresh.btf, mf.key), mname
            assert _tid(b, ms.value) == _tid(fresh.btf, mf.value), mname
    for vname, v in spec.variables.items():
        assert _tid(b, v.type) == _tid(fresh.btf, fresh.variables[vname].type), vname
    for pname, p in spec.programs.items():
        want = [_tid(fresh.btf, fi.func) for fi in fresh.programs[pname].func_infos]
        assert [_tid(b, fi.func) for fi in p.func_infos] == want, pname
        assert all(isinstance(fi.func, btf.Func) for fi in p.func_infos)


def test_a_cached_func_info_of_another_kind_is_refused() -> None:
    """A func info's id is checked to be a func when the entry is read, although the type
    is decoded later: an entry naming another kind is damaged."""
    spec = ebpf.CollectionSpec.from_file(obj("xdp_counter.o"), cache=False)
    data = specfile.encode(spec)
    assert data is not None
    n = int.from_bytes(data[4:8], "little")
    doc = json.loads(data[8 : 8 + n])
    prog = doc["programs"][0]
    func_infos = prog[specfile.PROGRAM_FIELDS.index("func_infos")]
    assert func_infos
    assert spec.btf is not None
    not_func = next(tid for tid in range(1, 100) if spec.btf.kind_of(tid) is not btf.Kind.FUNC)
    func_infos[0][1] = not_func
    body = json.dumps(doc).encode()
    damaged = data[:4] + len(body).to_bytes(4, "little") + body + data[8 + n :]
    with pytest.raises(specfile.SpecFileError, match="is not a func"):
        specfile.decode(damaged)


@pytest.mark.parametrize("tid", [-1, 10_000])
def test_a_cached_type_id_the_btf_does_not_have_is_refused(tid: int) -> None:
    """A type id (here a map's key type) is checked to be one of the entry's BTF types
    when the entry is read, although the type is decoded later."""
    spec = ebpf.CollectionSpec.from_file(obj("xdp_counter.o"), cache=False)
    data = specfile.encode(spec)
    assert data is not None
    n = int.from_bytes(data[4:8], "little")
    doc = json.loads(data[8 : 8 + n])
    doc["maps"][0][specfile.MAP_FIELDS.index("key")] = tid
    body = json.dumps(doc).encode()
    damaged = data[:4] + len(body).to_bytes(4, "little") + body + data[8 + n :]
    with pytest.raises(specfile.SpecFileError, match=f"no type with id {tid}"):
        specfile.decode(damaged)


def test_xdp_program_read_back_runs(cache_dir: Path, fd_guard: None) -> None:
    require_kernel()
    disk = diskcache.DiskCache(cache_dir)
    _fresh(obj("xdp_counter.o"), disk)
    spec, stats = _fresh(obj("xdp_counter.o"), disk)
    assert stats.loaded == 1
    with ebpf.Collection(spec) as coll:
        prog = next(iter(coll.programs.values()))
        assert prog.test_run(data=b"\0" * 64).retval in (1, 2)


# ---------------------------------------------------------------------------- refusals


def _served_and_warned(
    path: Path, disk: diskcache.DiskCache, caplog: pytest.LogCaptureFixture, why: str
) -> None:
    """A lookup parses afresh (the entry is not used), warns once naming ``why``, and a
    second process does not warn again once the entry is rewritten."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        spec, stats = _fresh(path, disk)
    assert (stats.parsed, stats.loaded) == (1, 0)
    assert _view(spec) == _view(ebpf.CollectionSpec.from_file(path, cache=False))
    warnings = [r for r in caplog.records if r.name == LOGGER]
    assert len(warnings) == 1, caplog.text
    assert why in warnings[0].getMessage()


@pytest.fixture
def filled(cache_dir: Path) -> Iterator[tuple[diskcache.DiskCache, Path]]:
    disk = diskcache.DiskCache(cache_dir)
    _fresh(obj("xdp_counter.o"), disk)
    (entry,) = _entries(cache_dir)
    yield disk, entry


def test_a_flipped_byte_is_ignored_with_a_warning(
    filled: tuple[diskcache.DiskCache, Path], caplog: pytest.LogCaptureFixture
) -> None:
    disk, entry = filled
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0x40
    entry.write_bytes(bytes(data))
    _served_and_warned(obj("xdp_counter.o"), disk, caplog, "sha256 does not match")
    # the fresh parse replaced it: the next process is served without a warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _, stats = _fresh(obj("xdp_counter.o"), diskcache.DiskCache(disk.path))
    assert stats.loaded == 1 and not caplog.records


def test_a_truncated_entry_is_ignored(
    filled: tuple[diskcache.DiskCache, Path], caplog: pytest.LogCaptureFixture
) -> None:
    disk, entry = filled
    entry.write_bytes(entry.read_bytes()[:-10])
    _served_and_warned(obj("xdp_counter.o"), disk, caplog, "the header says")
    entry.write_bytes(entry.read_bytes()[:20])
    _served_and_warned(obj("xdp_counter.o"), diskcache.DiskCache(disk.path), caplog, "truncated")


@pytest.mark.parametrize(
    ("body", "why"),
    [(b"\x01", "truncated (no key)"), (b"\x40\x00abc", "stored under another key")],
)
def test_a_well_formed_entry_without_its_key_is_ignored(
    filled: tuple[diskcache.DiskCache, Path],
    caplog: pytest.LogCaptureFixture,
    body: bytes,
    why: str,
) -> None:
    """Header, length and sha256 right, but the body too short to hold its key (or a key
    longer than the body): ignored with a warning, never an exception to the caller."""
    disk, entry = filled
    head = diskcache._HEADER.pack(
        diskcache.MAGIC, diskcache.FORMAT, 0, len(body), hashlib.sha256(body).digest()
    )
    entry.write_bytes(head + body)
    _served_and_warned(obj("xdp_counter.o"), disk, caplog, why)


def test_a_file_that_is_not_an_entry_is_ignored(
    filled: tuple[diskcache.DiskCache, Path], caplog: pytest.LogCaptureFixture
) -> None:
    disk, entry = filled
    data = bytearray(entry.read_bytes())
    data[0] ^= 0xFF  # the magic
    entry.write_bytes(bytes(data))
    _served_and_warned(obj("xdp_counter.o"), disk, caplog, "not a bpforch cache entry")


def test_another_format_version_is_ignored(
    filled: tuple[diskcache.DiskCache, Path], caplog: pytest.LogCaptureFixture
) -> None:
    disk, entry = filled
    data = bytearray(entry.read_bytes())
    data[8] += 1  # the header's format
    entry.write_bytes(bytes(data))
    _served_and_warned(obj("xdp_counter.o"), disk, caplog, "format 2, not 1")


@pytest.mark.parametrize("version", [specfile.VERSION - 1, specfile.VERSION + 1])
def test_another_payload_version_is_ignored(
    cache_dir: Path, caplog: pytest.LogCaptureFixture, version: int
) -> None:
    """An entry of another spec format (the previous one, a later one) is not read: the
    object is parsed again, with a warning."""
    disk = diskcache.DiskCache(cache_dir)
    spec = ebpf.CollectionSpec.from_file(obj("xdp_counter.o"), cache=False)
    payload = specfile.encode(spec)
    assert payload is not None
    digest = _sha(obj("xdp_counter.o"))
    # a well-formed entry (right header, right sha256) of another spec format
    disk.put(speccache.SPEC_KIND, digest, version.to_bytes(4, "little") + payload[4:])
    why = f"does not decode (version {version}, not {specfile.VERSION})"
    _served_and_warned(obj("xdp_counter.o"), disk, caplog, why)


def test_damaged_json_in_a_well_formed_entry_is_ignored(
    cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    disk = diskcache.DiskCache(cache_dir)
    spec = ebpf.CollectionSpec.from_file(obj("xdp_counter.o"), cache=False)
    payload = specfile.encode(spec)
    assert payload is not None
    version, n = specfile._HEAD.unpack_from(payload)
    doc = json.loads(payload[specfile._HEAD.size : specfile._HEAD.size + n])
    doc["maps"][0][specfile.MAP_FIELDS.index("max_entries")] = "x"
    text = json.dumps(doc).encode()
    bad = specfile._HEAD.pack(version, len(text)) + text + payload[specfile._HEAD.size + n :]
    disk.put(speccache.SPEC_KIND, _sha(obj("xdp_counter.o")), bad)
    _served_and_warned(obj("xdp_counter.o"), disk, caplog, "max_entries: expected an integer")


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("name", 5, "name: expected a string, got int"),
        ("max_entries", True, "max_entries: expected an integer, got bool"),
        ("freeze", 0, "freeze: expected a boolean, got int"),
        (None, None, "expected a list of 19"),  # a row of another length
    ],
)
def test_a_damaged_map_row_is_refused(field: str | None, value: object, why: str) -> None:
    """A map's row is checked for its length and each scalar field for its exact type
    (together); a damaged one refuses the entry, naming the field."""
    spec = ebpf.CollectionSpec.from_file(obj("xdp_counter.o"), cache=False)
    data = specfile.encode(spec)
    assert data is not None
    version, n = specfile._HEAD.unpack_from(data)
    doc = json.loads(data[specfile._HEAD.size : specfile._HEAD.size + n])
    if field is None:
        doc["maps"][0].append(0)
    else:
        doc["maps"][0][specfile.MAP_FIELDS.index(field)] = value
    text = json.dumps(doc).encode()
    bad = specfile._HEAD.pack(version, len(text)) + text + data[specfile._HEAD.size + n :]
    with pytest.raises(specfile.SpecFileError, match=re.escape(why)):
        specfile.decode(bad)


@pytest.mark.parametrize(
    ("part", "field", "value", "why"),
    [
        ("maps", "type", 999, "map counters: unknown type 999 or pinning 0"),
        ("maps", "pinning", 7, "map counters: unknown type 2 or pinning 7"),
        ("programs", "type", 999, "program xdp_count: unknown type 999 or attach type 37"),
        ("programs", "attach_type", 999, "program xdp_count: unknown type 6 or attach type 999"),
        ("programs", "attach_type", True, "expected an integer, got bool"),
    ],
)
def test_an_unknown_enum_value_is_refused(part: str, field: str, value: object, why: str) -> None:
    """A map's type and pinning, a program's type and attach type are looked up among the
    enums' members: a value none has refuses the entry, naming the map or program."""
    spec = ebpf.CollectionSpec.from_file(obj("xdp_counter.o"), cache=False)
    data = specfile.encode(spec)
    assert data is not None
    version, n = specfile._HEAD.unpack_from(data)
    doc = json.loads(data[specfile._HEAD.size : specfile._HEAD.size + n])
    fields = specfile.MAP_FIELDS if part == "maps" else specfile.PROGRAM_FIELDS
    doc[part][0][fields.index(field)] = value
    text = json.dumps(doc).encode()
    bad = specfile._HEAD.pack(version, len(text)) + text + data[specfile._HEAD.size + n :]
    with pytest.raises(specfile.SpecFileError, match=re.escape(why)):
        specfile.decode(bad)


def _with_program_field(data: bytes, field: str, value: object) -> bytes:
    """An encoded spec whose first program's ``field`` is ``value`` (a damaged entry)."""
    version, n = specfile._HEAD.unpack_from(data)
    doc = json.loads(data[specfile._HEAD.size : specfile._HEAD.size + n])
    doc["programs"][0][specfile.PROGRAM_FIELDS.index(field)] = value
    text = json.dumps(doc).encode()
    return specfile._HEAD.pack(version, len(text)) + text + data[specfile._HEAD.size + n :]


@pytest.mark.parametrize(
    ("field", "row", "why"),
    [
        ("refs", [0, "map", "counters", None], "expected rows of [int, str, str, int]"),
        ("refs", [0, "nothing", "counters", 0], "KeyError: 'nothing'"),
        ("unresolved", [0, "why", 5, "f"], "expected rows of [int, str, str, str]"),
    ],
)
def test_a_damaged_program_record_is_refused(field: str, row: object, why: str) -> None:
    """Each record of a program (reference, unresolved symbol) is checked field
    by field for its exact type and count: a damaged one refuses the entry, naming what
    was expected."""
    spec = ebpf.CollectionSpec.from_file(obj("xdp_counter.o"), cache=False)
    data = specfile.encode(spec)
    assert data is not None
    assert specfile.decode(_with_program_field(data, field, [])).programs  # well formed
    with pytest.raises(specfile.SpecFileError, match=re.escape(why)):
        specfile.decode(_with_program_field(data, field, [row]))


@pytest.mark.parametrize(
    ("ref", "why"),
    [
        ([0, "8"], "expected an integer, got str"),
        ([True, 8], "expected an integer, got bool"),
        ([0, 1 << 40], "byte reference out of range"),
        ([-1, 8], "byte reference out of range"),
        ([0], "bad byte reference"),
        ("0:8", "bad byte reference"),
    ],
)
def test_a_damaged_byte_reference_is_refused(ref: object, why: str) -> None:
    """A reference to the entry's raw bytes (here a program's instructions) is a pair of
    integers inside them: anything else refuses the entry."""
    spec = ebpf.CollectionSpec.from_file(obj("xdp_counter.o"), cache=False)
    data = specfile.encode(spec)
    assert data is not None
    with pytest.raises(specfile.SpecFileError, match=re.escape(why)):
        specfile.decode(_with_program_field(data, "insns", ref))


# what a damaged document may hold where a value was: other kinds of JSON value, and integers
# in and out of every range (type ids, offsets, enum values)
_DAMAGE = (None, True, False, 0, 1, -1, 3, 7, 2**31, 2**64, 99_999, "", "x", "b", "a", "s")
_DAMAGE += ([], [0], [0, 0], [0, 8], [[]], [["i", 0], ["b", [0, 1]]], {}, {"a": 1}, 0.5)


def _json_nodes(doc: object, path: tuple[object, ...] = ()) -> Iterator[tuple[object, ...]]:
    yield path
    if isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _json_nodes(v, (*path, i))
    elif isinstance(doc, dict):
        for k, v in doc.items():
            yield from _json_nodes(v, (*path, k))


def _has(node: object, key: object) -> bool:
    if isinstance(node, dict):
        return key in node
    return isinstance(node, list) and isinstance(key, int) and key < len(node)


@pytest.mark.parametrize("name", ["xdp_counter.o", "globals.o", "map_in_map.o", "tailcall.o"])
def test_a_damaged_document_is_refused_or_reads_whole(name: str) -> None:
    """Any one or two nodes of an entry's document (a row, a field, a record, a type id, a
    byte reference) replaced by another JSON value: the entry is refused with
    SpecFileError, or it is a spec whose maps, programs (their line and func info too)
    and variables read without error; never another exception."""
    spec = ebpf.CollectionSpec.from_file(obj(name), cache=False)
    payload = specfile.encode(spec)
    assert payload is not None
    version, n = specfile._HEAD.unpack_from(payload)
    head = specfile._HEAD.size
    text = payload[head : head + n]
    paths = [p for p in _json_nodes(json.loads(text)) if p]
    rnd = random.Random(name)
    refused = 0
    for _ in range(1500):
        doc = json.loads(text)
        for _ in range(rnd.randint(1, 2)):
            node: Any = doc
            *above, last = rnd.choice(paths)
            for key in above:
                node = node[key] if _has(node, key) else None
            if _has(node, last):  # (unless an earlier damage replaced what held it)
                node[last] = json.loads(json.dumps(rnd.choice(_DAMAGE)))  # its own
        damaged = json.dumps(doc).encode()
        try:
            out = specfile.decode(
                specfile._HEAD.pack(version, len(damaged)) + damaged + payload[head + n :]
            )
        except specfile.SpecFileError:
            refused += 1
            continue
        read: list[object] = []
        for m in out.maps.values():
            for held in (m, m.inner_map):
                if held is not None:
                    read += (held.key, held.value, held.btf_value_type)
        for p in out.programs.values():
            read += (p.line_infos, [fi.func for fi in p.func_infos], p.instructions.raw)
        read += [v.type for v in out.variables.values()]
        out.copy()
    assert refused > 1000  # most damage is refused (a value of the right kind may not be)


def _with_line_records(data: bytes, records: bytes) -> bytes:
    """An encoded spec whose first program's line info is ``records`` (appended to the
    entry's bytes)."""
    _, n = specfile._HEAD.unpack_from(data)
    end = len(data) - specfile._HEAD.size - n
    return _with_program_field(data, "line_infos", [end, len(records)]) + records


def _line_records(*rows: tuple[int, int, int, int]) -> bytes:
    return b"".join(struct.pack("<IIII", *row) for row in rows)


@pytest.mark.parametrize(
    ("records", "why"),
    [
        (_line_records((0, 1, 1, 7 << 10))[:-1], "bad line info records"),  # partial
        (_line_records((0, 1, 1 << 30, 7 << 10)), "bad line info records"),  # no such string
        (_line_records((0, 1 << 30, 1, 7 << 10)), "bad line info records"),
        (_line_records((3, 1, 1, 7 << 10), (2, 1, 1, 8 << 10)), "bad line info records"),
        (_line_records((1 << 30, 1, 1, 7 << 10)), "bad line info records"),  # 8 GiB of code
    ],
)
def test_damaged_line_info_records_are_refused(records: bytes, why: str) -> None:
    """A program's line info is held as the records BPF_PROG_LOAD takes: a partial record,
    a string offset outside the BTF's string table or instructions out of order or range
    refuse the entry."""
    spec = ebpf.CollectionSpec.from_file(obj("xdp_counter.o"), cache=False)
    data = specfile.encode(spec)
    assert data is not None
    fine = specfile.decode(_with_line_records(data, _line_records((0, 1, 1, 7 << 10))))
    (li,) = next(iter(fine.programs.values())).line_infos  # well formed
    assert (li.insn, li.line_number, li.column) == (0, 7, 0)
    with pytest.raises(specfile.SpecFileError, match=re.escape(why)):
        specfile.decode(_with_line_records(data, records))


def test_line_info_in_an_entry_without_btf_is_refused(
    compile_bpf: Callable[..., Path],
) -> None:
    """Line info names its strings in the collection's BTF: an entry of an object built
    without BTF (which reads back as it was) that claims line info is refused."""
    source = "#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n"
    source += 'SEC("xdp") int pass(struct xdp_md *ctx) { return XDP_PASS; }\n'
    source += 'char LICENSE[] SEC("license") = "GPL";\n'
    spec = ebpf.CollectionSpec.from_file(compile_bpf(source, "-g0"), cache=False)
    assert spec.btf is None
    data = specfile.encode(spec)
    assert data is not None
    assert specfile.decode(data).programs["pass"].line_infos == ()
    with pytest.raises(specfile.SpecFileError, match="line info without btf"):
        specfile.decode(_with_line_records(data, _line_records((0, 1, 1, 7 << 10))))


@pytest.mark.parametrize("insn", [None, 1 << 29])
def test_line_info_that_would_not_read_back_is_not_persisted(insn: int | None) -> None:
    """Line info out of instruction order, or past what a u32 byte offset holds, would be
    refused when read back: such a spec is not written (else every process would warn)."""
    spec = ebpf.CollectionSpec.from_file(obj("globals.o"), cache=False)
    prog = next(p for p in spec.programs.values() if len(p.line_infos) > 1)
    infos = list(prog.line_infos)
    if insn is None:
        infos.reverse()
    else:
        infos[-1] = _btf_ext.LineInfo(insn, *_line_rest(infos[-1]))
    prog.line_infos = tuple(infos)
    assert specfile.encode(spec) is None


def _line_rest(li: _btf_ext.LineInfo) -> tuple[str, str, int, int]:
    return li.file_name, li.line, li.line_number, li.column


def test_line_info_read_back_is_loaded_as_stored(cache_dir: Path) -> None:
    """A spec read back holds its programs' line info as the stored kernel records, built
    into records only when read, and the load hands the kernel those very bytes: what
    encoding the built records against the marshalled BTF gives."""
    disk = diskcache.DiskCache(cache_dir)
    path = obj("globals.o")
    _fresh(path, disk)
    spec, stats = _fresh(path, disk)
    assert stats.loaded == 1
    assert spec.btf is not None
    extra = specfile._extra_strings(spec)
    _, strings = spec.btf.marshal(extra)
    fresh = ebpf.CollectionSpec.from_file(path, cache=False)
    for name, p in spec.programs.items():
        held = p.held_line_infos()
        assert isinstance(held, _btf_ext.LazyLineInfos)
        assert held._value is None  # not built by the read
        stored = _btf_ext.encoded_line_infos(held, strings)
        assert held._value is None  # nor by the load's encoding
        assert stored == _btf_ext.encode_line_infos(p.line_infos, strings)
        assert p.line_infos == fresh.programs[name].line_infos


def test_an_entry_of_another_owner_is_ignored(
    filled: tuple[diskcache.DiskCache, Path], caplog: pytest.LogCaptureFixture
) -> None:
    require_kernel()  # root: chown
    disk, entry = filled
    os.chown(entry, 65534, 65534)
    _served_and_warned(obj("xdp_counter.o"), disk, caplog, "owned by uid 65534")


def test_an_entry_others_can_write_is_ignored(
    filled: tuple[diskcache.DiskCache, Path], caplog: pytest.LogCaptureFixture
) -> None:
    disk, entry = filled
    entry.chmod(0o666)
    _served_and_warned(obj("xdp_counter.o"), disk, caplog, "mode 0666")


def test_a_symlinked_entry_is_not_followed(
    filled: tuple[diskcache.DiskCache, Path], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    disk, entry = filled
    target = tmp_path / "elsewhere"
    entry.rename(target)
    entry.symlink_to(target)
    _served_and_warned(obj("xdp_counter.o"), disk, caplog, "a symlink")
    assert not entry.is_symlink()  # replaced by a fresh entry; the target is untouched
    assert target.exists()


def test_a_fifo_entry_is_not_read(
    filled: tuple[diskcache.DiskCache, Path], caplog: pytest.LogCaptureFixture
) -> None:
    disk, entry = filled
    entry.unlink()
    os.mkfifo(entry, 0o600)
    _served_and_warned(obj("xdp_counter.o"), disk, caplog, "not a regular file")


def test_an_oversized_entry_is_not_read(
    filled: tuple[diskcache.DiskCache, Path],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    disk, entry = filled
    monkeypatch.setattr(diskcache, "ENTRY_MAX", entry.stat().st_size - 1)
    _served_and_warned(obj("xdp_counter.o"), disk, caplog, "byte limit")


def test_an_entry_under_another_key_is_ignored(
    cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    disk = diskcache.DiskCache(cache_dir)
    _fresh(obj("xdp_counter.o"), disk)
    _fresh(obj("pinned.o"), disk)
    digest, other = _sha(obj("xdp_counter.o")), _sha(obj("pinned.o"))
    mine = cache_dir / disk._name(speccache.SPEC_KIND, digest)
    theirs = cache_dir / disk._name(speccache.SPEC_KIND, other)
    os.replace(theirs, mine)
    _served_and_warned(obj("xdp_counter.o"), disk, caplog, "stored under another key")


@pytest.mark.parametrize("mode", [0o777, 0o750, 0o701])
def test_a_directory_others_can_use_turns_the_cache_off(
    cache_dir: Path, caplog: pytest.LogCaptureFixture, mode: int
) -> None:
    disk = diskcache.DiskCache(cache_dir)
    _fresh(obj("xdp_counter.o"), disk)
    cache_dir.chmod(mode)
    disk = diskcache.DiskCache(cache_dir)
    _served_and_warned(obj("xdp_counter.o"), disk, caplog, f"mode {mode:04o}, not trusted")
    before = sorted(p.name for p in cache_dir.iterdir())
    _fresh(obj("pinned.o"), disk)  # nothing written there either, and no second warning
    assert sorted(p.name for p in cache_dir.iterdir()) == before
    assert len([r for r in caplog.records if r.name == LOGGER]) == 1


def test_a_directory_of_another_owner_turns_the_cache_off(
    cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    require_kernel()  # root: chown
    cache_dir.mkdir(mode=0o700)
    os.chown(cache_dir, 65534, 65534)
    _served_and_warned(
        obj("xdp_counter.o"), diskcache.DiskCache(cache_dir), caplog, "owned by uid 65534"
    )
    assert list(cache_dir.iterdir()) == []


def test_a_symlinked_directory_is_not_used(
    cache_dir: Path, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    cache_dir.symlink_to(real)
    _served_and_warned(obj("xdp_counter.o"), diskcache.DiskCache(cache_dir), caplog, "a symlink")
    assert list(real.iterdir()) == []


def test_the_directory_is_made_private(cache_dir: Path) -> None:
    _fresh(obj("xdp_counter.o"), diskcache.DiskCache(cache_dir))
    st = cache_dir.stat()
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
    (entry,) = _entries(cache_dir)
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert entry.read_bytes().startswith(diskcache.MAGIC)  # our format, no pickle
    assert b"\x80\x04\x95" not in entry.read_bytes()[:3]


def test_an_unwritable_directory_is_no_error(
    cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache_dir.parent.joinpath("file").write_bytes(b"")
    disk = diskcache.DiskCache(cache_dir.parent / "file" / "cache")  # a file as a parent
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        spec, stats = _fresh(obj("xdp_counter.o"), disk)
    assert stats.parsed == 1 and spec.programs
    assert "not a directory, not used (the cache is off: give --cache-dir" in caplog.text


def test_no_temporary_files_are_left(cache_dir: Path) -> None:
    disk = diskcache.DiskCache(cache_dir)
    for path in _objects()[:4]:
        _fresh(path, disk)
    assert all(not p.name.startswith(".tmp-") for p in cache_dir.iterdir())


# ---------------------------------------------------------------------------- bounds


def test_total_size_is_bounded_oldest_first(cache_dir: Path) -> None:
    disk = diskcache.DiskCache(cache_dir)
    order = [obj("globals.o"), obj("xdp_counter.o"), obj("pinned.o"), obj("tc_filter.o")]
    names: list[str] = []
    for i, path in enumerate(order[:3]):
        before = set(_entries(cache_dir))
        _fresh(path, disk)
        (new,) = set(_entries(cache_dir)) - before
        os.utime(new, ns=(10**18 + i * 10**9,) * 2)  # distinct ages, oldest first
        names.append(new.name)
    _, held = disk.usage()
    bounded = diskcache.DiskCache(cache_dir, max_bytes=held)  # no room for a fourth
    _fresh(order[3], bounded)
    entries, total = bounded.usage()
    assert total <= held and entries < 4
    left = {p.name for p in _entries(cache_dir)}
    assert names[0] not in left  # the oldest went first
    kept = [n for n in names if n in left]
    assert kept == names[3 - len(kept) :]  # and only older ones before newer ones
    _, stats = _fresh(order[3], diskcache.DiskCache(cache_dir))
    assert stats.loaded == 1  # the new entry stays


def test_an_entry_larger_than_the_bound_is_not_kept(cache_dir: Path) -> None:
    disk = diskcache.DiskCache(cache_dir, max_bytes=100)
    _fresh(obj("globals.o"), disk)
    assert disk.usage() == (0, 0)


def test_eviction_leaves_foreign_files_alone(cache_dir: Path) -> None:
    disk = diskcache.DiskCache(cache_dir)
    _fresh(obj("xdp_counter.o"), disk)
    foreign = cache_dir / ("spec-" + "0" * 64)
    foreign.write_bytes(b"not ours" * 1000)
    foreign.chmod(0o600)
    note = cache_dir / "README"
    note.write_text("hello")
    _fresh(obj("pinned.o"), diskcache.DiskCache(cache_dir, max_bytes=6000))
    assert [p for p in _entries(cache_dir) if p != foreign] != []  # the new one stays
    assert foreign.exists() and note.exists()


# ---------------------------------------------------------------------------- kernel BTF


@pytest.fixture
def kernel_disk(cache_dir: Path) -> Iterator[diskcache.DiskCache]:
    disk = diskcache.DiskCache(cache_dir)
    previous = kernel_btf.use_disk(disk)
    kernel_btf._CACHE.clear()
    try:
        yield disk
    finally:
        kernel_btf.use_disk(previous)
        kernel_btf._CACHE.clear()


def test_kernel_btf_index_reads_back_the_same(
    kernel_disk: diskcache.DiskCache, cache_dir: Path
) -> None:
    if not os.path.exists(kernel_btf.VMLINUX):
        pytest.skip("no kernel btf")
    first = kernel_btf.load().vmlinux
    assert len(_entries(cache_dir, kernel_btf.INDEX_KIND)) == 1
    kernel_btf._CACHE.clear()
    again = kernel_btf.load().vmlinux
    assert again is not first
    assert again._noffs_pos is not None and isinstance(again._noffs_pos[0], _Positions)
    fresh = btf.Spec.parse(Path(kernel_btf.VMLINUX).read_bytes())
    for name in ("task_struct", "sk_buff", "bpf_map", "xdp_md", "pid_t", "no_such_type_x"):
        assert again.ids_by_name(name) == fresh.ids_by_name(name), name
    assert core.flavored_index(again) == core.flavored_index(fresh)
    t = again.type_by_name("task_struct", btf.Struct)
    assert t.size == fresh.type_by_name("task_struct", btf.Struct).size
    assert again.marshal()[0] == fresh.marshal()[0]


def test_a_damaged_kernel_btf_index_is_ignored(
    kernel_disk: diskcache.DiskCache,
    cache_dir: Path,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    # a small stand-in blob: the index of any BTF file is persisted the same way
    spec = ebpf.CollectionSpec.from_file(obj("globals.o"), cache=False)
    assert spec.btf is not None
    blob = tmp_path / "btf"
    blob.write_bytes(spec.btf.marshal()[0])
    kernel_btf.load(blob)
    assert len(_entries(cache_dir, kernel_btf.INDEX_KIND)) == 1
    key = kernel_btf._index_key(str(blob), os.stat(blob), blob.read_bytes())
    # a well-formed entry whose index does not fit the blob
    offsets = array("I", [0, 4, 1 << 20]).tobytes()  # past the end of the blob
    index = kernel_btf._INDEX_HEAD.pack(2, 3, 0, 0, 2) + offsets + bytes(12) + b"{}"
    kernel_disk.put(kernel_btf.INDEX_KIND, key, index)
    kernel_btf._CACHE.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        kb = kernel_btf.load(blob)
    assert "does not decode" in caplog.text
    assert kb.vmlinux.marshal()[0] == blob.read_bytes()


def test_kernel_btf_index_is_keyed_by_the_blob_identity(
    kernel_disk: diskcache.DiskCache, cache_dir: Path, tmp_path: Path
) -> None:
    a = ebpf.CollectionSpec.from_file(obj("globals.o"), cache=False).btf
    b = ebpf.CollectionSpec.from_file(obj("xdp_counter.o"), cache=False).btf
    assert a is not None and b is not None
    blob = tmp_path / "btf"
    blob.write_bytes(a.marshal()[0])
    kernel_btf.load(blob)
    blob.write_bytes(b.marshal()[0])  # rewritten: another identity
    kernel_btf._CACHE.clear()
    kb = kernel_btf.load(blob)
    assert kb.vmlinux.marshal()[0] == b.marshal()[0]
    assert len(_entries(cache_dir, kernel_btf.INDEX_KIND)) == 2


def test_a_btf_file_rewritten_with_the_same_stat_is_not_served_its_old_index(
    kernel_disk: diskcache.DiskCache, tmp_path: Path
) -> None:
    """A same-size rewrite within one timestamp tick keeps a file's stat (device, inode,
    size, times): for a BTF file other than sysfs's vmlinux the bytes are in the index's
    key. Parsed twice under one stat, the second blob gets its own index."""
    a = ebpf.CollectionSpec.from_file(obj("globals.o"), cache=False).btf
    assert a is not None
    raw = a.marshal()[0]
    # the same types under other names: the same size, other bytes
    hdr_len = int.from_bytes(raw[4:8], "little")
    start = hdr_len + int.from_bytes(raw[16:20], "little")
    strings = slice(start, start + int.from_bytes(raw[20:24], "little"))
    other = bytearray(raw)
    other[strings] = bytes(
        (c - 0x61 + 1) % 26 + 0x61 if 0x61 <= c <= 0x7A else c for c in raw[strings]
    )
    assert len(other) == len(raw) and bytes(other) != raw
    blob = tmp_path / "btf"
    blob.write_bytes(raw)
    st = os.stat(blob)  # the stat both blobs are read under
    first = kernel_btf._parse(str(blob), st, raw)
    assert first.marshal()[0] == raw
    second = kernel_btf._parse(str(blob), st, bytes(other))
    assert second.marshal()[0] == bytes(other)
    assert len(_entries(kernel_disk.path, kernel_btf.INDEX_KIND)) == 2


def test_without_a_disk_nothing_is_written(cache_dir: Path) -> None:
    kernel_btf._CACHE.clear()
    previous = kernel_btf.use_disk(None)
    try:
        if os.path.exists(kernel_btf.VMLINUX):
            kernel_btf.load()
        speccache.SpecCache().get(obj("xdp_counter.o"))
    finally:
        kernel_btf.use_disk(previous)
        kernel_btf._CACHE.clear()
    assert not cache_dir.exists()


def test_a_directory_that_cannot_be_made_turns_the_cache_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    disk = diskcache.DiskCache(tmp_path / "missing" / "cache")  # no parent
    _served_and_warned(obj("xdp_counter.o"), disk, caplog, "cannot create it")
    assert not (tmp_path / "missing").exists()


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A private directory on a read-only file system (a tmpfs mounted ro, mode 0700), as
    a container's read-only root file system is."""
    import subprocess

    require_kernel()  # root: mount
    d = tmp_path / "ro"
    d.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,mode=0700,size=1m", "none", str(d)], check=True
    )
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=True)


@pytest.mark.parametrize("where", ["the directory", "a directory to create"])
def test_a_read_only_directory_turns_the_cache_off_with_one_warning(
    read_only_dir: Path, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    path = read_only_dir if where == "the directory" else read_only_dir / "cache"
    disk = diskcache.DiskCache(path)
    why = "cannot write into it" if path == read_only_dir else "cannot create it"
    _served_and_warned(obj("xdp_counter.o"), disk, caplog, why)
    (warning,) = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    # it names the directory, the reason and what to do
    assert warning == (
        f"cache {path}: {why}: read-only file system (the cache is off: give --cache-dir "
        "or cache_dir a writable directory, or --no-cache)"
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _fresh(obj("pinned.o"), disk)  # off: no second try, no second warning
    assert not [r for r in caplog.records if r.name == LOGGER]


def test_a_denied_default_directory_is_quiet_only_when_asked(
    read_only_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    disk = diskcache.DiskCache(read_only_dir / "cache", quiet_denied=True)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        _, stats = _fresh(obj("xdp_counter.o"), disk)
    assert stats.parsed == 1
    records = [r for r in caplog.records if r.name == LOGGER]
    assert [r.levelno for r in records] == [logging.DEBUG]
    assert "cannot create it: read-only file system" in records[0].getMessage()


def test_the_code_identity_changes_with_any_loader_module(tmp_path: Path) -> None:
    """Entries are keyed by the loader's code: editing, adding or removing a module (at
    any depth) changes the key; bytecode caches do not."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "__pycache__").mkdir()
    a, b = tmp_path / "a.py", tmp_path / "sub" / "b.py"
    a.write_text("x = 1\n")
    b.write_text("y = 2\n")
    seen = {diskcache.tree_identity(str(tmp_path))}

    def changed() -> bool:
        new = diskcache.tree_identity(str(tmp_path))
        fresh = new not in seen
        seen.add(new)
        return fresh

    (tmp_path / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "notes.txt").write_text("not code")
    assert not changed()
    b.write_text("y = 3\n")  # same size: the mtime tells
    os.utime(b, ns=(1, 1))
    assert changed()
    b.write_text("y = 30\n")
    os.utime(b, ns=(1, 1))  # same mtime: the size tells
    assert changed()
    (tmp_path / "sub" / "c.py").write_text("")
    assert changed()
    a.unlink()
    assert changed()


def _record_line(path: str, digit: str, size: int) -> str:
    """A line of a RECORD: the path, its sha256 (urlsafe base64, here one repeated digit)
    and its size."""
    return f"{path},sha256={digit * 43},{size}\n"


def _site(tmp_path: Path, version: str = "1.2.3") -> tuple[str, Path]:
    """A site-packages as pip leaves it: ``orchestrator/ebpf/`` next to the distribution's
    RECORD, which lists the loader's modules with their hashes. (loader root, RECORD)"""
    root = tmp_path / "site" / "orchestrator" / "ebpf"
    root.mkdir(parents=True)
    (root / "diskcache.py").write_text("# the module\n")
    record = tmp_path / "site" / f"bpforch-{version}.dist-info" / "RECORD"
    record.parent.mkdir()
    record.write_text(
        _record_line("orchestrator/__init__.py", "a", 10)
        + _record_line("orchestrator/ebpf/diskcache.py", "b", 13)
        + f"bpforch-{version}.dist-info/RECORD,,\n"
    )
    return str(root), record


def test_an_installed_wheel_is_identified_by_its_record(tmp_path: Path) -> None:
    """Installed from a wheel, the code is identified by its distribution's RECORD (the
    sha256 of every installed file): any change of it, or of the version, is another key;
    the modules' stats are not read."""
    root, record = _site(tmp_path)
    assert diskcache._installed_record(root, "1.2.3") == record.read_bytes()
    first = diskcache._identity(root, "1.2.3")
    assert diskcache._identity(root, "1.2.3") == first  # stable
    # a module touched without pip (its RECORD unchanged) is not what identifies it
    os.utime(Path(root) / "diskcache.py", ns=(1, 1))
    assert diskcache._identity(root, "1.2.3") == first
    seen = {first}
    text = record.read_text()
    for changed in (
        text.replace("a" * 43, "c" * 43),  # a reinstalled module with other contents
        text + _record_line("orchestrator/ebpf/NEW.py", "d", 1),  # a new module
        text.replace(",10\n", ",11\n"),  # a size
    ):
        record.write_text(changed)
        new = diskcache._identity(root, "1.2.3")
        assert new not in seen
        seen.add(new)
    # same RECORD, another version: the dist-info is named for it
    (tmp_path / "site" / "bpforch-1.2.3.dist-info").rename(
        tmp_path / "site" / "bpforch-1.2.4.dist-info"
    )
    assert diskcache._identity(root, "1.2.4") not in seen


@pytest.mark.parametrize(
    "case", ["no dist-info", "another version", "editable", "symlink", "oversized", "directory"]
)
def test_without_a_record_of_its_own_the_modules_identify_the_code(
    tmp_path: Path, case: str
) -> None:
    """A RECORD that does not describe these very files (none, another version's, an
    editable install's that lists no module), or one that is not a regular file of
    bounded size read without following a symlink, is not used: the modules' sizes and
    mtimes are, so an in-place edit is seen."""
    root, record = _site(tmp_path)
    if case == "no dist-info":
        shutil.rmtree(record.parent)
    elif case == "another version":
        record.parent.rename(tmp_path / "site" / "bpforch-9.9.9.dist-info")
    elif case == "editable":
        record.write_text(_record_line("__editable__.bpforch-1.2.3.pth", "e", 50))
    elif case == "symlink":
        real = tmp_path / "RECORD"
        record.rename(real)
        record.symlink_to(real)
    elif case == "oversized":
        with record.open("a") as f:
            f.write("x" * diskcache.RECORD_MAX)
    else:
        record.unlink()
        record.mkdir()
    assert diskcache._installed_record(root, "1.2.3") is None
    before = diskcache._identity(root, "1.2.3")
    assert before == diskcache._identity(root, "1.2.3")
    module = Path(root) / "diskcache.py"
    module.write_text("# edited\n")  # same size: the mtime tells
    os.utime(module, ns=(1, 1))
    assert diskcache._identity(root, "1.2.3") != before


def test_this_checkout_is_identified_by_its_modules() -> None:
    """The tests run from a source checkout (an editable install at most): no RECORD of
    its own, so the per-module identity is what keys the cache."""
    from orchestrator import __version__

    root = os.path.dirname(os.path.abspath(diskcache.__file__))
    assert diskcache._installed_record(root, __version__) is None
    assert diskcache.code_identity() == diskcache._identity(root, __version__)
