"""The loader's caches: parsed specs by file (``speccache``), marshalled BTF per spec and
encoded func/line info. A cached result must never be observable: a changed file is parsed
again, and nothing done to a spec you got changes what the next caller gets."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from orchestrator import ebpf
from orchestrator.ebpf import speccache
from orchestrator.ebpf.btf import Int, Pointer, Spec, Struct
from orchestrator.ebpf.btf import Member as BtfMember
from orchestrator.ebpf.btf import ext as btf_ext
from tests.conftest import obj

XDP_DROP, XDP_PASS = 1, 2


def _copy(name: str, to: Path) -> Path:
    shutil.copyfile(obj(name), to)
    return to


# ---------------------------------------------------------------------------- spec cache


def test_unchanged_file_is_a_hit_and_gives_equal_specs() -> None:
    cache = speccache.SpecCache()
    path = obj("xdp_counter.o")  # committed long ago: its identity is not racy
    first = cache.get(path)
    again = cache.get(path)
    assert cache.stats() == speccache.CacheStats(hits=1, verified=0, parsed=1, entries=1)
    assert again is not first
    assert again.programs["xdp_count"].instructions == first.programs["xdp_count"].instructions
    assert sorted(again.maps) == sorted(first.maps)
    assert again.path == os.fspath(path) and again.name == "xdp_counter.o"
    uncached = ebpf.CollectionSpec.from_file(path, cache=False)
    assert uncached.programs["xdp_count"].instructions == again.programs["xdp_count"].instructions


def test_changed_file_is_parsed_again(tmp_path: Path) -> None:
    cache = speccache.SpecCache()
    path = _copy("xdp_counter.o", tmp_path / "x.o")
    assert set(cache.get(path).programs) == {"xdp_count"}
    _copy("tc_filter.o", tmp_path / "new.o").replace(path)  # atomic replace: new inode
    assert set(cache.get(path).programs) == {"tc_ingress"}
    path.write_bytes(obj("tp_counter.o").read_bytes())  # rewrite in place: same inode
    assert set(cache.get(path).programs) == {"count_getppid"}
    assert cache.stats().parsed == 3 and cache.stats().hits == 0


def test_racy_entry_is_verified_by_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rewrite that keeps size and timestamps (same clock tick) is still noticed."""
    path = _copy("xdp_counter.o", tmp_path / "x.o")
    real = os.stat(path)
    now = time.time_ns()

    class SameIdentity:
        st_dev, st_ino, st_size = real.st_dev, real.st_ino, real.st_size
        st_mtime_ns = st_ctime_ns = now

    monkeypatch.setattr(speccache, "_stat", lambda p: SameIdentity)
    cache = speccache.SpecCache()
    assert set(cache.get(path).programs) == {"xdp_count"}
    assert set(cache.get(path).programs) == {"xdp_count"}  # racy: read, hashed, unchanged
    assert cache.stats() == speccache.CacheStats(hits=0, verified=1, parsed=1, entries=1)
    path.write_bytes(obj("cgroup_egress.o").read_bytes())  # "same identity", new bytes
    assert set(cache.get(path).programs) == {"cg_egress"}
    assert cache.stats().parsed == 2


def test_a_racy_entry_is_trusted_once_verified_late_enough(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry taken while the file was racy is verified on every lookup; a verification
    made more than RACY_NS after the file last changed makes an entry that is a hit."""
    path = _copy("xdp_counter.o", tmp_path / "x.o")
    real = os.stat(path)
    changed = time.time_ns() - speccache.RACY_NS + 100_000_000  # racy for another 0.1 s

    class AlmostOld:
        st_dev, st_ino, st_size = real.st_dev, real.st_ino, real.st_size
        st_mtime_ns = st_ctime_ns = changed

    monkeypatch.setattr(speccache, "_stat", lambda p: AlmostOld)
    cache = speccache.SpecCache()
    cache.get(path)  # parsed while racy
    while time.time_ns() <= changed + speccache.RACY_NS:
        time.sleep(0.02)
    cache.get(path)  # still racy as stored: read and verified, now by an old identity
    assert cache.stats() == speccache.CacheStats(hits=0, verified=1, parsed=1, entries=1)
    path.write_bytes(obj("tc_filter.o").read_bytes())  # behind the faked identity's back
    assert set(cache.get(path).programs) == {"xdp_count"}  # a hit: not read
    assert cache.stats() == speccache.CacheStats(hits=1, verified=1, parsed=1, entries=1)
    AlmostOld.st_size += 1  # any change of identity is read again
    assert set(cache.get(path).programs) == {"tc_ingress"}
    assert cache.stats() == speccache.CacheStats(hits=1, verified=1, parsed=2, entries=1)


def test_a_served_spec_is_named_by_the_path_it_was_asked_by(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _copy("xdp_counter.o", tmp_path / "x.o")
    monkeypatch.chdir(tmp_path)
    cache = speccache.SpecCache()
    for given in (str(path), "x.o", "./x.o", path, str(path), "x.o"):
        spec = cache.get(given)
        assert (spec.name, spec.path) == ("x.o", os.fspath(given))
    os.link(path, tmp_path / "y.o")
    assert cache.get("y.o").name == "y.o" and cache.get(tmp_path / "y.o").name == "y.o"


def test_old_identity_is_trusted_without_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _copy("xdp_counter.o", tmp_path / "x.o")
    real = os.stat(path)
    old = time.time_ns() - 10 * speccache.RACY_NS

    class OldIdentity:
        st_dev, st_ino, st_size = real.st_dev, real.st_ino, real.st_size
        st_mtime_ns = st_ctime_ns = old

    monkeypatch.setattr(speccache, "_stat", lambda p: OldIdentity)
    cache = speccache.SpecCache()
    assert set(cache.get(path).programs) == {"xdp_count"}
    path.write_bytes(obj("tc_filter.o").read_bytes())  # behind the faked identity's back
    assert set(cache.get(path).programs) == {"xdp_count"}  # a hit: the file was not read
    assert cache.stats() == speccache.CacheStats(hits=1, verified=0, parsed=1, entries=1)


def test_sha256_reads_the_file_and_never_parses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SpecCache.sha256: what shared() would give, from a trusted entry without reading the
    file, else by hashing its bytes now (a changed file is seen); nothing is ever parsed."""
    import hashlib

    path = _copy("xdp_counter.o", tmp_path / "x.o")
    cache = speccache.SpecCache()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert cache.sha256(path) == digest
    assert cache.stats() == speccache.CacheStats(hits=0, verified=0, parsed=0, entries=0)
    path.write_bytes(obj("tc_filter.o").read_bytes())  # rewritten in place: seen
    assert cache.sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest() != digest
    assert cache.stats().parsed == 0
    # a file that is not an object has bytes all the same
    path.write_bytes(b"not an object")
    assert cache.sha256(path) == hashlib.sha256(b"not an object").hexdigest()
    # a trusted entry answers without reading the file
    real = os.stat(path)
    old = time.time_ns() - 10 * speccache.RACY_NS

    class OldIdentity:
        st_dev, st_ino, st_size = real.st_dev, real.st_ino, real.st_size
        st_mtime_ns = st_ctime_ns = old

    path.write_bytes(obj("xdp_counter.o").read_bytes())
    real = os.stat(path)
    OldIdentity.st_size = real.st_size
    monkeypatch.setattr(speccache, "_stat", lambda p: OldIdentity)
    _, shared = cache.shared(path)
    assert shared == digest
    path.write_bytes(obj("tc_filter.o").read_bytes())  # behind the faked identity's back
    assert cache.sha256(path) == digest  # from the entry: the file was not read
    assert cache.stats() == speccache.CacheStats(hits=1, verified=0, parsed=1, entries=1)


def test_sha256_errors_are_the_lookup_s(tmp_path: Path) -> None:
    cache = speccache.SpecCache()
    with pytest.raises(ebpf.ParseError, match=r"missing\.o: no such file"):
        cache.sha256(tmp_path / "missing.o")
    (tmp_path / "dir.o").mkdir()
    with pytest.raises(ebpf.ParseError, match=r"dir\.o: is a directory"):
        cache.sha256(tmp_path / "dir.o")
    with pytest.raises(ebpf.ParseError, match="NUL byte"):
        cache.sha256("a\0b.o")


def test_mutating_a_returned_spec_never_reaches_the_cache() -> None:
    cache = speccache.SpecCache()
    path = obj("xdp_counter.o")
    spec = cache.get(path)
    spec.rewrite_constants({"verdict": XDP_DROP, "version": 7})
    spec.maps["counters"].max_entries = 99
    spec.maps["counters"].contents.append(ebpf.MapEntry(0, b"\1" * 8))
    spec.programs["xdp_count"].autoload = False
    spec.programs["xdp_count"].attach_to = "eth9"
    spec.maps.pop(".rodata")
    spec.variables.clear()
    del spec.programs["xdp_count"]

    fresh = cache.get(path)
    assert fresh.variables["verdict"].value == XDP_PASS
    assert fresh.variables["version"].value == 0
    assert fresh.maps["counters"].max_entries == 4
    assert fresh.maps["counters"].contents == []
    prog = fresh.programs["xdp_count"]
    assert prog.autoload and prog.attach_to == ""
    assert cache.stats().hits == 1


def test_variables_of_a_copy_write_their_own_maps() -> None:
    cache = speccache.SpecCache()
    a = cache.get(obj("xdp_counter.o"))
    b = cache.get(obj("xdp_counter.o"))
    a.variables["version"].set(5)
    assert a.maps[".rodata"].contents[0].value != b.maps[".rodata"].contents[0].value
    assert b.variables["version"].value == 0


def test_served_specs_copy_on_first_touch_and_never_share_a_change() -> None:
    """A served spec shares the cached spec's maps, programs, variables and externs until
    one of them is first accessed; then it holds its own deep copy of all four. Whatever
    is changed through one served spec (by any of the four, or their setters) never
    reaches the cache, another served spec or a copy made before."""
    cache = speccache.SpecCache()
    path = obj("xdp_counter.o")
    cached, _ = cache.shared(path)
    a, b = cache.get(path), cache.get(path)
    before = a.copy()  # of a spec not copied yet: its own deep copy
    assert a._source is cached and b._source is cached
    # reading what loading needs copies nothing
    a.check_constants({"verdict": XDP_DROP})
    assert a.subset(["xdp_count"]) == (["xdp_count"], sorted(cached.maps))
    assert "xdp_count" in repr(a)
    assert a._source is cached
    with pytest.raises(ebpf.ConstantError):
        a.check_constants({"nope": 1})

    a.maps["counters"].max_entries = 99  # the first touch copies all four
    assert a._source is None and a.maps["counters"] is not cached.maps["counters"]
    a.variables["version"].set(9)
    a.programs["xdp_count"].attach_to = "eth9"
    del a.variables["verdict"]
    b.programs = {}
    b.maps = {}
    b.variables = {}
    b.externs = {}
    for other in (cache.get(path), before, cached):
        assert other.maps["counters"].max_entries == 4
        assert other.variables["version"].value == 0
        assert other.programs["xdp_count"].attach_to == ""
        assert "verdict" in other.variables
        assert set(other.programs) == {"xdp_count"}
    assert a.variables["version"].value == 9 and a.maps["counters"].max_entries == 99
    assert b.maps == {} and b.programs == {} and b.variables == {} and b.externs == {}


def test_a_served_spec_s_inner_maps_and_contents_are_its_own() -> None:
    """What a copy made at the first touch holds in place (inner map specs, the entries of
    a map's contents and their bytearray values) is never the cached spec's."""
    cache = speccache.SpecCache()
    path = obj("map_in_map.o")
    cached, _ = cache.shared(path)
    a = cache.get(path)
    outer = a.maps["outer_array"]
    assert outer.inner_map is not None and cached.maps["outer_array"].inner_map is not None
    assert outer.inner_map is not cached.maps["outer_array"].inner_map
    outer.inner_map.max_entries += 7
    outer.contents[0].value = "inner_b"
    outer.contents.pop()
    data = cache.get(obj("globals.o")).maps[".data"]
    value = data.contents[0].value
    assert isinstance(value, bytearray)
    value[:] = b"\xff" * len(value)
    for other in (cache.get(path), cached):
        inner = other.maps["outer_array"].inner_map
        assert inner is not None and inner.max_entries == outer.inner_map.max_entries - 7
        assert [e.value for e in other.maps["outer_array"].contents] == ["inner_a", "inner_b"]
    assert cache.get(obj("globals.o")).maps[".data"].contents[0].value != value


@pytest.mark.kernel
def test_a_served_spec_is_not_copied_to_be_loaded(fd_guard: None) -> None:
    cache = speccache.SpecCache()
    path = obj("xdp_counter.o")
    cached, _ = cache.shared(path)
    spec = cache.get(path)
    with ebpf.Collection(spec) as coll:
        assert coll.programs["xdp_count"].test_run(bytes(60)).retval == XDP_PASS
    assert spec._source is cached  # loading only read it
    spec.rewrite_constants({"verdict": XDP_DROP})  # then changed: its own copy
    assert spec._source is None
    with ebpf.Collection(spec) as coll:
        assert coll.programs["xdp_count"].test_run(bytes(60)).retval == XDP_DROP
    with ebpf.Collection(cache.get(path)) as coll:
        assert coll.programs["xdp_count"].test_run(bytes(60)).retval == XDP_PASS


def test_lru_bound(tmp_path: Path) -> None:
    cache = speccache.SpecCache(max_entries=2)
    paths = [_copy("xdp_counter.o", tmp_path / f"{i}.o") for i in range(3)]
    for p in paths:
        cache.get(p)
    assert cache.stats().entries == 2
    cache.clear()
    assert cache.stats() == speccache.CacheStats(0, 0, 0, 0)


def test_errors_are_not_cached(tmp_path: Path) -> None:
    cache = speccache.SpecCache()
    missing = tmp_path / "missing.o"
    with pytest.raises(ebpf.ParseError, match=r"missing\.o: no such file"):
        cache.get(missing)
    bad = tmp_path / "bad.o"
    bad.write_bytes(b"not an object at all, just text" * 4)
    with pytest.raises(ebpf.ParseError, match=r"bad\.o: not an ELF file"):
        cache.get(bad)
    bad.write_bytes(obj("xdp_counter.o").read_bytes())
    assert set(cache.get(bad).programs) == {"xdp_count"}
    unreadable = _copy("xdp_counter.o", tmp_path / "dir.o")
    unreadable.unlink()
    unreadable.mkdir()
    with pytest.raises(ebpf.ParseError, match=r"dir\.o: is a directory"):
        cache.get(unreadable)


def test_concurrent_gets() -> None:
    """Threads share one cache: every caller gets its own complete spec."""
    cache = speccache.SpecCache()
    path = obj("globals.o")
    want = ebpf.CollectionSpec.from_file(path, cache=False)
    got: list[ebpf.CollectionSpec] = []

    def work() -> None:
        for _ in range(25):
            got.append(cache.get(path))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 200 and len({id(s) for s in got}) == 200
    for spec in got:
        assert sorted(spec.programs) == sorted(want.programs)
        assert sorted(spec.variables) == sorted(want.variables)
    stats = cache.stats()
    assert stats.hits + stats.verified + stats.parsed == 200 and stats.entries == 1


def test_from_file_uses_the_default_cache() -> None:
    speccache.default.clear()
    ebpf.CollectionSpec.from_file(obj("tp_counter.o"))
    ebpf.CollectionSpec.from_file(obj("tp_counter.o"))
    ebpf.CollectionSpec.from_file(obj("tp_counter.o"), cache=False)
    assert speccache.default.stats() == speccache.CacheStats(1, 0, 1, 1)


# ---------------------------------------------------------------------------- marshal cache


def test_marshal_is_cached_until_the_spec_changes() -> None:
    spec = Spec()
    i32 = Int("int", 4, signed=True)
    spec.add(Struct("s", 4, [BtfMember("a", i32, 0)]))
    blob, strings = spec.marshal(["f.c"])
    assert spec.marshal(["f.c"])[0] is blob
    assert spec.marshal(("f.c", "f.c"))[1] is strings  # a set of strings: order, dups moot
    other, other_strings = spec.marshal(["g.c"])
    assert "g.c" in other_strings and "f.c" not in other_strings and other != blob
    spec.add(Pointer(i32))  # add() forgets the cached blobs
    grown, _ = spec.marshal(["f.c"])
    assert grown != blob and len(Spec.parse(grown)) == 3
    s = spec.type_by_name("s", Struct)
    s.members[0].name = "renamed"  # in place: only changed() tells the cache
    assert spec.marshal(["f.c"])[0] is grown
    spec.changed()
    assert Spec.parse(spec.marshal(["f.c"])[0]).type_by_name("s", Struct).members[0].name == (
        "renamed"
    )


def test_copied_spec_does_not_share_the_marshal_cache() -> None:
    spec = Spec()
    spec.add(Struct("s", 4, [BtfMember("a", Int("int", 4), 0)]))
    blob, _ = spec.marshal()
    cp = spec.copy()
    cp.type_by_name("s", Struct).size = 8
    assert Spec.parse(cp.marshal()[0]).type_by_name("s", Struct).size == 8
    assert spec.marshal()[0] is blob


# ---------------------------------------------------------------------------- func/line info


def test_encoded_infos_are_memoized_by_identity() -> None:
    spec = ebpf.CollectionSpec.from_file(obj("globals.o"), cache=False)
    assert spec.btf is not None
    prog = next(p for p in spec.programs.values() if p.line_infos)
    strings = spec.btf.marshal(btf_ext.line_strings(prog.line_infos))[1]
    lines = btf_ext.encoded_line_infos(prog.line_infos, strings)
    assert lines == btf_ext.encode_line_infos(prog.line_infos, strings)
    assert btf_ext.encoded_line_infos(prog.line_infos, strings) is lines
    funcs = btf_ext.encoded_func_infos(prog.func_infos, spec.btf)
    assert funcs == btf_ext.encode_func_infos(prog.func_infos, spec.btf.type_id)
    assert btf_ext.encoded_func_infos(prog.func_infos, spec.btf) is funcs
    assert btf_ext.line_strings(prog.line_infos) == {
        s for li in prog.line_infos for s in (li.file_name, li.line)
    }
    shorter = prog.line_infos[1:]  # another tuple: encoded afresh
    assert btf_ext.encoded_line_infos(shorter, strings) == lines[16:]


# ---------------------------------------------------------------------------- in the kernel


@pytest.mark.kernel
def test_cached_specs_load_independently(fd_guard: None) -> None:
    speccache.default.clear()
    dropping = ebpf.CollectionSpec.from_file(obj("xdp_counter.o"))
    dropping.rewrite_constants({"verdict": XDP_DROP, "version": 3})
    with ebpf.Collection(dropping) as coll:
        assert coll.programs["xdp_count"].test_run(bytes(60)).retval == XDP_DROP
        assert coll.maps["counters"][2] == 3
    shipped = ebpf.CollectionSpec.from_file(obj("xdp_counter.o"))
    assert speccache.default.stats().hits == 1
    for _ in range(2):  # the second load reuses the marshalled BTF and encoded infos
        with ebpf.Collection(shipped) as coll:
            assert coll.programs["xdp_count"].test_run(bytes(60)).retval == XDP_PASS
            assert coll.maps["counters"][2] == 0
            assert coll.programs["xdp_count"].info().btf_id != 0
