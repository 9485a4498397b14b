"""The parser's fast paths: the ELF header read with ``struct``, an object's BTF checked whole
without being decoded (``decode.validate``), DATASECs fixed up in their raw records
(``Spec.patch_datasec``) and marshalling that copies the records of types never decoded.
Each is checked against the slow path it replaces."""

from __future__ import annotations

import gc
import random
import re
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator import ebpf
from orchestrator.ebpf import elf
from orchestrator.ebpf.btf import Datasec, Func, Int, Kind, Spec, Struct
from orchestrator.ebpf.btf import decode as btf_decode
from orchestrator.ebpf.btf import describe as _btf_describe
from orchestrator.ebpf.btf import sizeof as btf_sizeof
from orchestrator.ebpf.errors import BTFError
from tests.ebpf.test_btf import info, raw_btf, signatures

ROOT = Path(__file__).resolve().parents[2]
OBJECTS = sorted((ROOT / "bpf").glob("*.o")) + sorted(
    Path("/usr/lib/x86_64-linux-gnu/bpf").glob("*.o")
)


def btf_of(path: Path) -> bytes:
    reader = elf._Reader(path.read_bytes(), path.name)
    reader._load_sections()
    return reader.by_name[".BTF"].data


BTF_OBJECTS = [p for p in OBJECTS if b".BTF\0" in p.read_bytes()]


# ---------------------------------------------------------------------------- ELF header


def patched(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def test_header_errors_name_the_field() -> None:
    data = (ROOT / "bpf" / "xdp_counter.o").read_bytes()
    with pytest.raises(ebpf.ParseError, match=r"^obj: not an eBPF object \(e_machine EM_X86_64\)"):
        ebpf.CollectionSpec.from_bytes(patched(data, 18, "<H", 62), name="obj")
    with pytest.raises(ebpf.ParseError, match=r"not an eBPF object \(e_machine 48879\)"):
        ebpf.CollectionSpec.from_bytes(patched(data, 18, "<H", 0xBEEF), name="obj")
    with pytest.raises(ebpf.ParseError, match=r"not a relocatable object \(e_type ET_EXEC\)"):
        ebpf.CollectionSpec.from_bytes(patched(data, 16, "<H", 2), name="obj")
    with pytest.raises(ebpf.ParseError, match="section header table is malformed or truncated"):
        ebpf.CollectionSpec.from_bytes(patched(data, 58, "<H", 32), name="obj")  # e_shentsize
    with pytest.raises(ebpf.ParseError, match="section header table is malformed or truncated"):
        ebpf.CollectionSpec.from_bytes(patched(data, 40, "<Q", len(data)), name="obj")  # e_shoff
    with pytest.raises(ebpf.ParseError, match="bad section name table index"):
        ebpf.CollectionSpec.from_bytes(patched(data, 62, "<H", 999), name="obj")  # e_shstrndx


def test_header_fields() -> None:
    data = (ROOT / "bpf" / "xdp_counter.o").read_bytes()
    h = elf.records._header(data)
    _, etype, machine, *_, shentsize, shnum, shstrndx = struct.unpack_from(
        "<16sHHIQQQIHHHHHH", data
    )
    assert (h.type, h.machine, h.shentsize, h.shnum, h.shstrndx) == (
        etype,
        machine,
        shentsize,
        shnum,
        shstrndx,
    )
    assert (h.type, h.machine, h.shentsize) == (1, 247, 64)


# ---------------------------------------------------------------------------- validate


@pytest.mark.parametrize("path", BTF_OBJECTS, ids=lambda p: p.name)
def test_real_objects_validate_and_decode(path: Path) -> None:
    spec = Spec.parse(btf_of(path))
    btf_decode.validate(spec)
    assert all(t is None for t in spec._cache)  # nothing decoded by the check
    assert len(list(spec.types)) == len(spec)


def _decode_all_fails(blob: bytes) -> bool:
    try:
        list(Spec.parse(blob).types)
    except BTFError:
        return False
    return True


def _validate_fails(blob: bytes) -> bool:
    try:
        btf_decode.validate(Spec.parse(blob))
    except BTFError:
        return False
    return True


def test_validate_accepts_exactly_what_decoding_accepts() -> None:
    """Random whole-word damage to real objects' type records: the check without decoding
    refuses a blob exactly when decoding every type does."""
    rng = random.Random(14)
    checked = refused = 0
    for path in BTF_OBJECTS:
        good = btf_of(path)
        type_len = struct.unpack_from("<I", good, 12)[0]
        nwords = type_len // 4
        for _ in range(60):
            blob = bytearray(good)
            for _ in range(rng.randint(1, 3)):
                idx = rng.randrange(nwords)
                val = rng.choice(
                    [rng.randrange(1 << 32), rng.randrange(64), rng.randrange(4096), 0]
                )
                struct.pack_into("<I", blob, 24 + 4 * idx, val)
            try:
                Spec.parse(bytes(blob))
            except BTFError:
                continue  # refused by the index: neither check is reached
            ok_decode = _decode_all_fails(bytes(blob))
            assert _validate_fails(bytes(blob)) == ok_decode, (path.name, blob.hex())
            checked += 1
            refused += not ok_decode
    assert checked > 200 and refused > 50  # the damage reached both outcomes


def _damaged(good: bytes, rng: random.Random) -> bytes:
    """``good`` (a BTF blob) with one to three words of its type section overwritten."""
    nwords = struct.unpack_from("<I", good, 12)[0] // 4
    blob = bytearray(good)
    for _ in range(rng.randint(1, 3)):
        val = rng.choice([rng.randrange(1 << 32), rng.randrange(64), rng.randrange(4096), 0])
        struct.pack_into("<I", blob, 24 + 4 * rng.randrange(nwords), val)
    return bytes(blob)


def _sound(spec: Spec) -> bool:
    """The test's own bulk soundness check, an oracle for the index pass's
    (``btf_decode.index_checked``): whether validate's record check would find nothing
    wrong with a spec that has no base, from one walk over the records not decoded yet
    (no index built) that gathers every name offset and type reference and compares the
    largest with the table's ends. False means "maybe damaged"."""
    w, offs, first, cache = spec._words, spec._offs, spec._first, spec._cache
    end_id = first + len(offs)
    names: list[int] = []
    refs: list[int] = []
    name, ref, add_names, add_refs = names.append, refs.append, names.extend, refs.extend
    nfunc, nvar = len(btf_decode._FUNC_LINKAGES), len(btf_decode._VAR_LINKAGES)
    for i, o in enumerate(offs):
        if cache[i] is not None:
            continue
        info, st = w[o + 1], w[o + 2]
        kind = (info >> 24) & 0x1F
        vlen = info & 0xFFFF
        b = o + 3
        name(w[o])
        if kind in btf_decode._REF_KINDS:  # PTR, TYPEDEF, VOLATILE, CONST, RESTRICT, *_TAG
            ref(st)
        elif kind == 4 or kind == 5:  # STRUCT, UNION
            add_names(w[b : b + 3 * vlen : 3])
            add_refs(w[b + 1 : b + 3 * vlen : 3])
        elif kind == 13:  # FUNC_PROTO
            ref(st)
            add_names(w[b : b + 2 * vlen : 2])
            add_refs(w[b + 1 : b + 2 * vlen : 2])
        elif kind == 12:  # FUNC: a known linkage, an own func proto
            if vlen >= nfunc or not first <= st < end_id:
                return False
            if (w[offs[st - first] + 1] >> 24) & 0x1F != 13:
                return False
        elif kind == 14:  # VAR
            if w[b] >= nvar:
                return False
            ref(st)
        elif kind == 3:  # ARRAY
            ref(w[b])
            ref(w[b + 1])
        elif kind == 15:  # DATASEC
            add_refs(w[b : b + 3 * vlen : 3])
        elif kind == 6:  # ENUM
            add_names(w[b : b + 2 * vlen : 2])
        elif kind == 19:  # ENUM64
            add_names(w[b : b + 3 * vlen : 3])
        elif kind == 1:  # INT
            bits = w[b] & 0xFF
            if bits == 0 or bits > st * 8:
                return False
    str_end = len(spec._strtab)
    return max(names, default=0) < str_end and max(refs, default=0) < end_id


def test_the_bulk_check_passes_only_what_the_record_check_passes() -> None:
    """validate's one-pass check (no messages) says sound of every real object, and of a
    damaged blob only when the record-by-record check (the messages) finds nothing."""
    rng = random.Random(15)
    sound = damaged = 0
    for path in BTF_OBJECTS:
        good = btf_of(path)
        assert _sound(Spec.parse(good)), path.name
        btf_decode.validate(Spec.parse(good))  # unchecked: the index pass answers now
        for _ in range(60):
            blob = _damaged(good, rng)
            try:
                spec = Spec.parse(blob)
            except BTFError:
                continue
            try:
                btf_decode._check_records(spec)
            except BTFError:
                assert not _sound(spec), (path.name, blob.hex())
                damaged += 1
            else:
                sound += _sound(spec)
    assert sound > 100 and damaged > 50  # both outcomes reached


def test_the_checked_index_pass_agrees_with_the_bulk_check() -> None:
    """Spec.parse(checked=True) checks soundness while indexing: on real objects and on
    damaged blobs it finds what the test's _sound finds of the same blob with nothing
    decoded, the same index, and the DATASEC ids a scan of the records finds."""
    rng = random.Random(16)
    sound = damaged = 0
    for path in BTF_OBJECTS:
        good = btf_of(path)
        blobs = [good, *(_damaged(good, rng) for _ in range(60))]
        for blob in blobs:
            try:
                plain = Spec.parse(blob)
            except BTFError as err:
                with pytest.raises(BTFError, match=re.escape(str(err))):
                    Spec.parse(blob, checked=True)
                continue
            checked = Spec.parse(blob, checked=True)
            assert checked._offs == plain._offs
            assert checked._sound == _sound(plain), (path.name, blob.hex())
            assert checked.ids_of_kind(Kind.DATASEC) == plain.ids_of_kind(Kind.DATASEC)
            sound += bool(checked._sound)
            damaged += not checked._sound
    assert sound > 100 and damaged > 50  # both outcomes reached


def test_a_checked_parse_still_gives_validates_messages() -> None:
    """Unsound at the index pass: validate checks record by record, with its messages."""
    spec = Spec.parse(raw_btf([0, info(2), 9], b"\0"), checked=True)
    assert spec._sound is False
    with pytest.raises(BTFError, match="type 1 refers to missing type 9"):
        btf_decode.validate(spec)


@pytest.mark.parametrize(
    ("words", "strings", "message"),
    [
        ([0, info(2), 9], b"\0", "type 1 refers to missing type 9"),
        ([5, info(1), 4, 32], b"\0", "string offset 5 out of range"),
        ([0, info(12, vlen=7), 0], b"\0", "bad linkage 7"),
        ([0, info(12), 0], b"\0", "not a func proto"),
        ([0, info(12), 2, 0, info(1), 4, 32], b"\0", "not a func proto"),
        ([0, info(14), 0, 5], b"\0", "bad linkage 5"),
        ([0, info(1), 4, 0], b"\0", "0 bits in 4 bytes"),
        ([0, info(4, vlen=1), 4, 9, 1, 0], b"\0", "string offset 9 out of range"),
        ([0, info(15, vlen=1), 4, 7, 0, 4], b"\0", "missing type 7"),
    ],
)
def test_validate_errors(words: list[int], strings: bytes, message: str) -> None:
    spec = Spec.parse(raw_btf(words, strings))
    with pytest.raises(BTFError, match=message):
        btf_decode.validate(spec)


def test_corrupt_btf_in_an_object_fails_its_parse() -> None:
    path = ROOT / "bpf" / "xdp_counter.o"
    data = bytearray(path.read_bytes())
    btf = btf_of(path)
    at = bytes(data).find(btf)
    spec = Spec.parse(btf)
    last = spec._offs[-1]  # the last record: refer its type to a missing id
    kinds_with_type = (Kind.PTR, Kind.TYPEDEF, Kind.CONST, Kind.VOLATILE, Kind.FUNC, Kind.VAR)
    tid = next(
        i
        for i in range(len(spec), 0, -1)
        if spec.kind_of(i) in kinds_with_type and spec._offs[i - 1] <= last
    )
    hdr_len = struct.unpack_from("<I", btf, 4)[0]
    word = at + hdr_len + 4 * (spec._offs[tid - 1] + 2)
    struct.pack_into("<I", data, word, 100_000)
    with pytest.raises(ebpf.BTFError, match=f"xdp_counter.o: btf: type {tid} refers to missing"):
        ebpf.CollectionSpec.from_bytes(bytes(data), name="xdp_counter.o")


# ---------------------------------------------------------------------------- DATASEC fix-up


def _fix(spec: Spec, path: Path) -> None:
    reader = elf._Reader(path.read_bytes(), path.name)
    reader._load_sections()
    reader.btf = spec
    reader._fixup_datasecs()


@pytest.mark.parametrize("path", BTF_OBJECTS, ids=lambda p: p.name)
def test_raw_datasec_fixup_matches_the_decoded_one(path: Path) -> None:
    raw = Spec.parse(btf_of(path))
    decoded = Spec.parse(btf_of(path))
    list(decoded.types)  # every type decoded first: the fix-up works on the objects
    _fix(raw, path)
    assert all(t is None for t in raw._cache)  # patched in place, nothing decoded
    _fix(decoded, path)
    assert signatures(raw) == signatures(decoded)
    assert raw.marshal()[0] == Spec.parse(decoded.marshal()[0]).marshal()[0]


def test_patch_datasec_errors() -> None:
    # id 1: int, id 2: datasec holding the int (not a variable)
    spec = Spec.parse(
        raw_btf([1, info(1), 4, 32, 5, info(15, vlen=1), 0, 1, 0, 4], b"\0int\0.bss\0")
    )
    with pytest.raises(BTFError, match=r"datasec \.bss: member is INT, not a variable"):
        spec.patch_datasec(2, 4, {})
    with pytest.raises(BTFError, match=r"type 1 is .*, not a datasec"):
        spec.patch_datasec(1, 4, {})
    member_decoded = Spec.parse(
        raw_btf([1, info(1), 4, 32, 5, info(15, vlen=1), 0, 1, 0, 4], b"\0int\0.bss\0")
    )
    assert isinstance(member_decoded.type_by_id(1), Int)  # the datasec's record stays raw
    with pytest.raises(BTFError, match=r"datasec \.bss: member is INT, not a variable"):
        member_decoded.patch_datasec(2, 4, {})
    decoded = Spec.parse(
        raw_btf([1, info(1), 4, 32, 5, info(15, vlen=1), 0, 1, 0, 4], b"\0int\0.bss\0")
    )
    assert isinstance(decoded.type_by_id(2), Datasec)
    with pytest.raises(BTFError, match=r"datasec \.bss: member is INT, not a variable"):
        decoded.patch_datasec(2, 4, {})


# ---------------------------------------------------------------------------- marshal


@pytest.mark.parametrize("path", BTF_OBJECTS, ids=lambda p: p.name)
def test_marshal_copies_undecoded_records(path: Path) -> None:
    """The table and the records come out as parsed (a parsed object's table is already
    deduplicated) whatever was decoded before; a decoded type that changed is encoded."""
    btf = btf_of(path)
    untouched = Spec.parse(btf)
    blob, strings = untouched.marshal(["file.c"])
    assert all(t is None for t in untouched._cache)
    type_len, str_len = struct.unpack_from("<I", btf, 12)[0], struct.unpack_from("<I", btf, 20)[0]
    assert blob[24 : 24 + type_len] == btf[24 : 24 + type_len]
    assert blob[24 + type_len : 24 + type_len + str_len] == btf[24 + type_len :]
    assert blob.endswith(b"\0file.c\0") or strings["file.c"] < str_len
    decoded = Spec.parse(btf)
    list(decoded.types)
    assert decoded.marshal(["file.c"]) == (blob, strings)
    assert signatures(Spec.parse(blob)) == signatures(decoded)
    ints = [t for t in decoded.types if isinstance(t, Int | Struct)]
    if ints:
        ints[0].name = "bpforch_renamed"
        decoded.changed()
        again, strings2 = decoded.marshal()
        assert Spec.parse(again).type_by_id(decoded.type_id(ints[0])).name == "bpforch_renamed"
        assert "bpforch_renamed" in strings2


def test_decoded_types_are_marshalled_as_parsed_until_changed() -> None:
    path = ROOT / "bpf" / "map_types.o"
    btf = btf_of(path)
    type_len = struct.unpack_from("<I", btf, 12)[0]
    spec = Spec.parse(btf)
    structs = [t for t in spec.types if isinstance(t, Struct) and t.name]
    assert spec._as_parsed and structs
    target = structs[0]
    tid = spec.type_id(target)
    target.name = "bpforch_renamed"  # in place, without changed(): not marshalled
    assert spec.marshal()[0][24 : 24 + type_len] == btf[24 : 24 + type_len]
    spec.changed()
    assert not spec._as_parsed
    assert Spec.parse(spec.marshal()[0]).type_by_id(tid).name == "bpforch_renamed"
    # a copy exists to be changed: its decoded types are always encoded
    fresh = Spec.parse(btf)
    cp = fresh.copy()
    cp.type_by_id(tid).name = "in_the_copy"
    assert Spec.parse(cp.marshal()[0]).type_by_id(tid).name == "in_the_copy"
    assert Spec.parse(fresh.marshal()[0]).type_by_id(tid).name == target_name(btf, tid)
    # added types are encoded after the parsed records
    added = fresh.add(Int("bpforch_added", 4))
    blob = fresh.marshal()[0]
    assert blob[24 : 24 + type_len] == btf[24 : 24 + type_len]
    assert Spec.parse(blob).type_by_id(added).name == "bpforch_added"


def target_name(btf: bytes, tid: int) -> str:
    return Spec.parse(btf).type_by_id(tid).name


def test_an_objects_extern_fixups_are_marshalled(
    build: Callable[..., ebpf.CollectionSpec],
) -> None:
    """The ELF reader changes the BTF of objects with externs (as libbpf does): those
    changes reach the marshalled blob."""
    spec = build("externs.c")
    assert spec.btf is not None and spec.externs
    assert not spec.btf._as_parsed
    again = Spec.parse(spec.btf.marshal()[0])
    seen = set()
    for tid in spec.btf.ids_of_kind(Kind.DATASEC):
        sec = spec.btf.type_by_id(tid)
        assert isinstance(sec, Datasec)
        if sec.name in (".kconfig", ".ksyms"):
            seen.add(sec.name)
            got = again.type_by_id(tid)
            assert isinstance(got, Datasec) and got.size == sec.size > 0
            assert [(v.offset, v.size) for v in got.vars] == [(v.offset, v.size) for v in sec.vars]
    assert seen == {".kconfig", ".ksyms"}


# ---------------------------------------------------------------------------- map definitions


def test_pointed_array_len() -> None:
    # 1 int, 2 array[7] of int, 3 ptr → 2, 4 const → 2, 5 ptr → 4, 6 ptr → int, 7 ptr → void
    words = [1, info(1), 4, 0x01000020]
    words += [0, info(3), 0, 1, 1, 7]
    words += [0, info(2), 2, 0, info(10), 2, 0, info(2), 4, 0, info(2), 1, 0, info(2), 0]
    spec = Spec.parse(raw_btf(words, b"\0int\0"))
    ptrs = {tid: spec.type_by_id(tid) for tid in (3, 5, 6, 7)}
    assert all(t is None for t in spec._cache[:2])  # the targets are not decoded yet
    assert spec.pointed_array_len(ptrs[3]) == 7  # type: ignore[arg-type]
    assert spec._cache[1] is None  # read from its record: still not decoded (id 2)
    got = {tid: spec.pointed_array_len(p) for tid, p in ptrs.items()}  # type: ignore[arg-type]
    assert got == {3: 7, 5: 7, 6: None, 7: None}  # 5: through the const, decoded
    arr = spec.type_by_id(2)  # decoded first: the object is read
    assert spec.pointed_array_len(ptrs[3]) == 7 and arr is spec.type_by_id(2)  # type: ignore[arg-type]


@pytest.mark.parametrize("path", BTF_OBJECTS, ids=lambda p: p.name)
def test_map_definitions_match_the_decoded_reading(path: Path) -> None:
    """Every map of every object reads the same with all BTF decoded before the maps."""
    fast = ebpf.CollectionSpec.from_file(path, cache=False)  # every one parses
    reader = elf._Reader(path.read_bytes(), path.name)
    reader._load_sections()
    reader.btf = Spec.parse(reader.by_name[".BTF"].data)
    reader._fixup_datasecs()
    list(reader.btf.types)
    maps: dict[str, ebpf.MapSpec] = {}
    reader._read_btf_maps(maps, {})
    for name, m in maps.items():
        f = fast.maps[name]
        assert (m.type, m.key_size, m.value_size, m.max_entries, m.flags, m.pinning) == (
            f.type,
            f.key_size,
            f.value_size,
            f.max_entries,
            f.flags,
            f.pinning,
        ), name


# ---------------------------------------------------------------------------- lazy types


@pytest.mark.parametrize("path", BTF_OBJECTS, ids=lambda p: p.name)
def test_sizeof_id_matches_sizeof(path: Path) -> None:
    """sizeof_id (records of undecoded types) gives what sizeof gives on the decoded type,
    errors included, for every type of every object, and decodes nothing on success."""
    spec = Spec.parse(btf_of(path))
    decoded = Spec.parse(btf_of(path))
    for tid in range(len(spec) + 1):
        try:
            want: int | str = btf_sizeof(decoded.type_by_id(tid))
        except BTFError as err:
            want = str(err)
        fresh = Spec.parse(btf_of(path)) if tid % 16 == 0 else spec
        try:
            got: int | str = fresh.sizeof_id(tid)
        except BTFError as err:
            got = str(err)
        assert got == want, tid
        if isinstance(got, int) and fresh is not spec:
            assert all(t is None for t in fresh._cache), tid


SMALL = ["xdp_counter.o", "tc_filter.o", "pinned.o", "globals.o", "cgroup_egress.o"]


@pytest.mark.parametrize("name", SMALL)
def test_a_parse_decodes_no_type_and_reads_them_on_use(name: str) -> None:
    """Map key/value types, the data sections' types, variables' types and func info are
    held by id: a parse of a small object decodes none of its BTF, and each reads back as
    the same type a fully decoded reading gives (same ids, same descriptions)."""
    path = ROOT / "bpf" / name
    spec = ebpf.CollectionSpec.from_file(path, cache=False)
    btf = spec.btf
    assert btf is not None
    assert all(t is None for t in btf._cache)
    copy = spec.copy()  # copied before anything is read: both read the same types
    ids: list[tuple[str, int | None]] = []
    for mname, m in spec.maps.items():
        for attr in ("key", "value", "btf_value_type"):
            tid = m._type_id(attr, btf)
            ids.append((f"{mname}.{attr}", tid))
            t = getattr(m, attr)
            assert (t is None) == (tid is None)
            if t is not None:
                assert t is btf.type_by_id(tid) is getattr(copy.maps[mname], attr)
                assert m._type_id(attr, btf) == btf.type_id(t) == tid  # decoded: same id
    for vname, v in spec.variables.items():
        assert v.type is not None and v.type is copy.variables[vname].type
        assert _btf_describe(v.type) in repr(v)
    for p in spec.programs.values():
        for fi in p.func_infos:
            assert isinstance(fi.func, Func) and fi.type_id_in(btf) == btf.type_id(fi.func)
    # against a reading with every type decoded first (the decoded path)
    full = ebpf.CollectionSpec.from_file(path, cache=False)
    assert full.btf is not None
    list(full.btf.types)
    for mname, m in full.maps.items():
        for attr in ("key", "value", "btf_value_type"):
            t = getattr(m, attr)
            got = getattr(spec.maps[mname], attr)
            assert (t is None) == (got is None)
            if t is not None:
                assert full.btf.type_id(t) == btf.type_id(got)
                assert _btf_describe(t) == _btf_describe(got)
    assert sorted(full.variables) == sorted(spec.variables)
    assert len(ids) == 3 * len(spec.maps)


@pytest.mark.parametrize("name", [*SMALL, "tailcall.o"])
def test_a_parse_leaves_nothing_to_the_cycle_collector(name: str) -> None:
    """A parse's working tables (sections, symbols, the reader) are freed by reference
    counting when it ends: what it leaves in reference cycles is only the BTF types it
    decoded (a spec and its decoded pointers refer to each other), none for a parse that
    decodes none. Cyclic garbage would make every parse pay for collector runs."""
    path = ROOT / "bpf" / name
    ebpf.CollectionSpec.from_file(path, cache=False)
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        spec = ebpf.CollectionSpec.from_file(path, cache=False)
        assert spec.btf is not None
        decoded = [t for t in spec.btf._cache if t is not None]
        del spec
        gc.collect()
        left = {type(x).__name__ for x in gc.garbage}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert not left & {"_Reader", "_Section", "_Symbol", "_Layout", "ProgramSpec", "function"}
    if not decoded:
        assert not left


@pytest.mark.parametrize("name", SMALL)
def test_a_parse_decodes_only_the_strings_it_reads(name: str) -> None:
    """An object's BTF string table is decoded whole on first need (marshal, a spec file,
    line info), not by the parse, which looks up the few strings it reads; a copy made
    before shares what either decodes. The blob and string offsets are the same either way."""
    path = ROOT / "bpf" / name
    spec = ebpf.CollectionSpec.from_file(path, cache=False)
    btf = spec.btf
    assert btf is not None
    every = btf_decode.split_strings(btf._strtab, 0)
    assert not btf._strs_whole and 0 < len(btf._strs) < len(every)
    assert all(every[off] == s for off, s in btf._strs.items())
    copy = btf.copy()
    blob = btf.marshal({"x"})
    assert btf._str_cache == every and copy._str_cache == every
    eager = ebpf.CollectionSpec.from_file(path, cache=False).btf
    assert eager is not None
    assert eager._str_cache == every  # decoded whole before anything reads it
    assert eager.marshal({"x"}) == blob


def test_map_definition_errors_on_the_record_path() -> None:
    """A map definition read from the records fails as the decoded reading does."""
    path = ROOT / "bpf" / "xdp_counter.o"
    data = path.read_bytes()
    spec = ebpf.CollectionSpec.from_bytes(data, "x")
    (mname,) = [n for n, m in spec.maps.items() if m.section == ".maps"]
    assert spec.maps[mname].key_size and spec.maps[mname].value_size
    # rename the struct's "type" member to an unknown field: both paths name it
    blob = btf_of(path)
    at = data.index(blob)
    hdr_len, _, _, str_off, _ = struct.unpack_from("<IIIII", blob, 4)
    strtab_at = at + hdr_len + str_off
    pos = data.index(b"\0max_entries\0", strtab_at) + 1
    bad = data[:pos] + b"max_entriez" + data[pos + len(b"max_entries") :]
    with pytest.raises(ebpf.ParseError, match=f"map {mname}: unknown field 'max_entriez'"):
        ebpf.CollectionSpec.from_bytes(bad, "x")


# ---------------------------------------------------------------------------- the profile


def _profile_cold(*args: str) -> str:
    """What ``benchmarks/profile_cold.py ARGS bpf/xdp_counter.o`` prints."""
    import subprocess
    import sys

    script = ROOT / "benchmarks" / "profile_cold.py"
    obj = ROOT / "bpf" / "xdp_counter.o"
    return subprocess.run(
        [sys.executable, str(script), *args, str(obj)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def test_profile_cold_smoke() -> None:
    """benchmarks/profile_cold.py runs and names the parser's functions (not a timing test)."""
    out = _profile_cold("--phase", "parse", "--reps", "2", "--top", "50")
    assert out.startswith("parse of 1 objects x 2 reps: ")
    assert "inside bpf(): 0%" in out  # parsing makes no syscall
    assert "elf/__init__.py" in out and "(read)" in out


def test_profile_cold_ledger() -> None:
    """``--ledger`` times every stage of the reader on a real parse: each stage that runs is
    listed with a time ("other" is printed as the total less the stages, so it is not
    checked against the total: that would hold by construction)."""
    out = _profile_cold("--ledger", "--reps", "3")
    lines = out.splitlines()
    head = next(line for line in lines if line.startswith("xdp_counter.o: parse "))
    total = float(head.split()[2])
    rows = {
        line[:40].strip(): float(line[40:].split()[0]) for line in lines if line.startswith("  ")
    }
    for stage in (
        "read the file",
        "section table, symbols, relocations",
        ".BTF: header, index, bulk check",
        "DATASEC fix-up",
        ".BTF.ext",
        "BTF map definitions",
        "linking programs",
        "other",
    ):
        assert stage in rows, stage
    # a stage is part of the parse: more than nothing, less than the whole
    assert all(0 < us < total for name, us in rows.items() if name != "other")
