"""Load plans (orchestrator.ebpf.loadplan): reused for an unchanged spec, never for a changed
one. Every spec the spec cache hands out for a file shares one set of plans, so a spec
changed after an earlier load of the same file must load as changed."""

from __future__ import annotations

import dataclasses
import gc
import warnings
from pathlib import Path

import pytest

from orchestrator import ebpf
from orchestrator.ebpf import _sys, speccache
from orchestrator.ebpf import btf as _btf
from orchestrator.ebpf.asm import Instructions
from orchestrator.ebpf.collection import _extra_flags
from tests.conftest import obj

XDP_DROP, XDP_PASS = 1, 2
pytestmark = pytest.mark.kernel

# mov r0, XDP_DROP; exit
_RETURN_DROP = bytes([0xB7, 0, 0, 0, XDP_DROP, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0])


def _loaded_once() -> ebpf.CollectionSpec:
    """A fresh cache entry for xdp_counter.o, loaded once (its plans are made)."""
    speccache.default.clear()
    spec = ebpf.CollectionSpec.from_file(obj("xdp_counter.o"))
    with ebpf.Collection(spec) as coll:
        assert coll.programs["xdp_count"].test_run(bytes(60)).retval == XDP_PASS
    return spec


def _run(coll: ebpf.Collection) -> int:
    return coll.programs["xdp_count"].test_run(bytes(60)).retval


def test_an_unchanged_copy_reuses_the_plans(fd_guard: None) -> None:
    first = _loaded_once()
    plans = first._plans
    map_plan, prog_plan = plans.maps["counters"], plans.programs["xdp_count"]
    rodata_plan, btf_plan = plans.maps[".rodata"], plans.btf
    assert btf_plan is not None
    second = ebpf.CollectionSpec.from_file(obj("xdp_counter.o"))
    assert second is not first and second._plans is plans
    for spec in (second, first):
        with ebpf.Collection(spec) as coll:
            assert _run(coll) == XDP_PASS
            assert coll.maps["counters"][2] == 0
            assert coll.programs["xdp_count"].info().btf_id != 0  # func/line info loaded
    assert plans.maps["counters"] is map_plan
    assert plans.maps[".rodata"] is rodata_plan
    assert plans.programs["xdp_count"] is prog_plan
    assert plans.btf is btf_plan


def _kernel_btf_blob(coll: ebpf.Collection) -> bytes:
    """The BTF blob the kernel holds for the collection's program."""
    btf_id = coll.programs["xdp_count"].info().btf_id
    assert btf_id != 0
    with _sys.fd_by_id(_sys.Cmd.BTF_GET_FD_BY_ID, btf_id) as fd:
        return _sys.btf_info(fd)[1]


def test_btf_changed_after_a_cached_load_is_loaded(fd_guard: None) -> None:
    """The collection's BTF plan (its blob and buffer) is not used once the BTF changed:
    a type added, or a type changed in place and ``changed()`` called."""
    spec = _loaded_once()
    btf = spec.btf
    assert btf is not None
    try:
        btf.add(_btf.Int("bpforch_plan_int", 4))
        with ebpf.Collection(spec) as coll:
            assert _run(coll) == XDP_PASS
            assert b"bpforch_plan_int\0" in _kernel_btf_blob(coll)
        func = btf.type_by_name("xdp_count", _btf.Func)
        func.name = "xdp_count_renamed"
        btf.changed()
        with ebpf.Collection(ebpf.CollectionSpec.from_file(obj("xdp_counter.o"))) as coll:
            assert _run(coll) == XDP_PASS
            assert b"xdp_count_renamed\0" in _kernel_btf_blob(coll)
    finally:
        speccache.default.clear()  # the cached spec's BTF was changed in place


def test_line_infos_changed_after_a_cached_load_are_loaded(fd_guard: None) -> None:
    """New source lines in a program's line info reach the BTF string table it loads with
    (the BTF plan is keyed by the programs' line infos)."""
    spec = _loaded_once()
    prog = spec.programs["xdp_count"]
    first, *rest = prog.line_infos
    prog.line_infos = (dataclasses.replace(first, line="// bpforch changed line"), *rest)
    with ebpf.Collection(spec) as coll:
        assert _run(coll) == XDP_PASS
        assert b"// bpforch changed line\0" in _kernel_btf_blob(coll)
    with ebpf.Collection(ebpf.CollectionSpec.from_file(obj("xdp_counter.o"))) as coll:
        assert b"// bpforch changed line" not in _kernel_btf_blob(coll)


def test_constants_rewritten_after_a_cached_load_are_loaded(fd_guard: None) -> None:
    _loaded_once()
    changed = ebpf.CollectionSpec.from_file(obj("xdp_counter.o"))
    changed.rewrite_constants({"verdict": XDP_DROP, "version": 7})
    with ebpf.Collection(changed) as coll:
        assert _run(coll) == XDP_DROP
        assert coll.maps["counters"][2] == 7
    # a copy that was not changed still loads the object's own constants
    with ebpf.Collection(ebpf.CollectionSpec.from_file(obj("xdp_counter.o"))) as coll:
        assert _run(coll) == XDP_PASS
        assert coll.maps["counters"][2] == 0
    # the same spec object, written in place after it was loaded
    changed.variables["version"].set(9)
    with ebpf.Collection(changed) as coll:
        assert _run(coll) == XDP_DROP
        assert coll.maps["counters"][2] == 9


def test_map_edits_after_a_cached_load_are_loaded(fd_guard: None) -> None:
    spec = _loaded_once()
    spec.maps["counters"].max_entries = 8
    spec.maps["counters"].contents.append(ebpf.MapEntry(3, (5).to_bytes(8, "little")))
    with ebpf.Collection(spec) as coll:
        assert coll.maps["counters"].info().max_entries == 8
        assert coll.maps["counters"].max_entries == 8
        assert coll.maps["counters"][3] == 5
    spec.maps["counters"].contents[0].value = (6).to_bytes(8, "little")
    with ebpf.Collection(spec) as coll:
        assert coll.maps["counters"][3] == 6
    unchanged = ebpf.CollectionSpec.from_file(obj("xdp_counter.o"))
    with ebpf.Collection(unchanged) as coll:
        assert coll.maps["counters"].info().max_entries == 4
        assert coll.maps["counters"][3] == 0


def test_program_edits_after_a_cached_load_are_loaded(fd_guard: None) -> None:
    spec = _loaded_once()
    prog = spec.programs["xdp_count"]
    prog.instructions = Instructions(_RETURN_DROP)
    prog.func_infos = prog.line_infos = ()
    with ebpf.Collection(spec) as coll:
        assert _run(coll) == XDP_DROP
        assert coll.programs["xdp_count"].info().xlated != b""
        assert coll.maps["counters"][0] == 0  # the new program counts nothing
    with ebpf.Collection(ebpf.CollectionSpec.from_file(obj("xdp_counter.o"))) as coll:
        assert _run(coll) == XDP_PASS
        assert coll.maps["counters"][0] == 1


def test_a_replacement_after_a_cached_load_is_used(fd_guard: None) -> None:
    _loaded_once()
    spec = ebpf.CollectionSpec.from_file(obj("xdp_counter.o"))
    with ebpf.Map.create(spec.maps["counters"]) as existing:
        spec.rewrite_maps({"counters": existing})
        with ebpf.Collection(spec) as coll:
            assert coll.maps["counters"].id == existing.id
            assert _run(coll) == XDP_PASS
        assert existing[0] == 1  # the program counted into the replacement


def test_a_spec_without_btf_after_a_cached_load(fd_guard: None) -> None:
    """A plan made with the collection's BTF is not used once the spec has none."""
    spec = _loaded_once()
    spec.btf = None
    for m in spec.maps.values():
        m.btf = None
    for p in spec.programs.values():
        p.btf = None
    with ebpf.Collection(spec) as coll:
        assert _run(coll) == XDP_PASS
        assert coll.programs["xdp_count"].info().btf_id == 0
        assert coll.maps["counters"].info().btf_id == 0


def test_a_map_plan_fits_a_decoded_type_and_not_another_type(fd_guard: None) -> None:
    """A map plan is first compared with the spec's attributes as held when it was made
    (its BTF types as the same objects); a type decoded since still fits (through its id,
    and the plan is refreshed), a different type does not."""
    first = _loaded_once()
    plans = first._plans
    made = plans.maps["counters"]
    decoded = ebpf.CollectionSpec.from_file(obj("xdp_counter.o"))
    key_type = decoded.maps["counters"].key  # decoded now: held as a type, not an id
    assert key_type is not None
    with ebpf.Collection(decoded) as coll:
        assert coll.maps["counters"][2] == 0
    refreshed = plans.maps["counters"]
    assert refreshed is not made and refreshed.btf_ids == made.btf_ids
    assert refreshed.attr == made.attr
    with ebpf.Collection(decoded) as coll:  # as held now: used without another check
        assert _run(coll) == XDP_PASS
    assert plans.maps["counters"] is refreshed

    retyped = ebpf.CollectionSpec.from_file(obj("xdp_counter.o"))
    value_type = retyped.maps["counters"].value
    retyped.maps["counters"].key = value_type  # another BTF id for the key
    with ebpf.Collection(retyped) as coll:
        assert _run(coll) == XDP_PASS
    assert plans.maps["counters"].btf_ids != made.btf_ids


def test_initial_contents_that_do_not_fit_fail_on_every_load(fd_guard: None) -> None:
    """A planned write of initial contents fails as a write from the spec does, naming the
    map, and so does the next load of the same spec (plan reused)."""
    spec = _loaded_once()
    key, value = (9).to_bytes(4, "little"), (1).to_bytes(8, "little")
    spec.maps["counters"].contents.append(ebpf.MapEntry(key, value))
    for _ in range(2):
        with pytest.raises(ebpf.Error) as caught:
            ebpf.Collection(spec)
        assert str(caught.value) == (
            "map counters: write initial contents: argument list too long (E2BIG)"
        )
    assert spec._plans.maps["counters"].writes  # the write was planned


def test_a_btf_cache_shares_one_btf_object_among_loads(fd_guard: None) -> None:
    """Loads given one BTFCache hand the kernel their object's BTF once: their programs and
    maps share that BTF object (with constants of their own: BTF holds no values), where
    loads without the cache get a BTF object each. What was loaded keeps the BTF alive once
    the cache is closed; a collection closed later closes none of the cache's fds."""
    spec = ebpf.CollectionSpec.from_file(obj("xdp_counter.o"))
    colls: list[ebpf.Collection] = []
    try:
        with ebpf.BTFCache() as cache:
            for version in (1, 2):
                copy = spec.copy()
                copy.rewrite_constants({"version": version})
                colls.append(ebpf.Collection(copy, ebpf.CollectionOptions(btf_cache=cache)))
            assert len(cache) == 1
            colls[0].close()  # the cache's fd stays open: a third load uses it
            colls.append(ebpf.Collection(spec, ebpf.CollectionOptions(btf_cache=cache)))
            assert len(cache) == 1
        assert len(cache) == 0
        ids = {c.programs["xdp_count"].info().btf_id for c in colls[1:]}
        assert len(ids) == 1 and 0 not in ids
        assert {c.maps["counters"].info().btf_id for c in colls[1:]} == ids
        for c in colls[1:]:
            assert _run(c) == XDP_PASS  # the programs run with the cache closed
        with ebpf.Collection(spec) as alone:
            assert alone.programs["xdp_count"].info().btf_id not in ids
    finally:
        for c in colls:
            c.close()


def test_a_btf_cache_keeps_nothing_for_a_spec_without_btf(fd_guard: None) -> None:
    spec = ebpf.CollectionSpec.from_file(obj("xdp_counter.o")).copy()
    spec.btf = None
    for m in spec.maps.values():
        m.btf = None
    for p in spec.programs.values():
        p.btf = None
    with ebpf.BTFCache() as cache:
        with ebpf.Collection(spec, ebpf.CollectionOptions(btf_cache=cache)) as coll:
            assert _run(coll) == XDP_PASS
            assert coll.programs["xdp_count"].info().btf_id == 0
        assert len(cache) == 0


def test_a_planned_map_is_the_map_its_spec_creates(fd_guard: None) -> None:
    """From a plan's second reuse on, the map it creates copies its attributes from the
    prototype the first reuse kept (no Map.__init__ per load): every attribute is what
    Map.create gives the same spec (a per-CPU map too: its value count)."""
    speccache.default.clear()
    spec = ebpf.CollectionSpec.from_file(obj("map_types.o"))
    plans = spec._plans
    ebpf.Collection(spec).close()  # the plans are made
    assert plans.map_prototypes == {}
    ebpf.Collection(spec).close()  # reused: the maps made give their prototypes
    names = [name for name in spec._plans.maps if spec.maps[name].inner_map is None]
    assert any(spec.maps[name].type.per_cpu for name in names)
    btf_plan = spec._plans.btf
    assert btf_plan is not None
    btf_fd, _err, _log = _sys.btf_load(btf_plan.data)
    assert btf_fd is not None
    with btf_fd, ebpf.Collection(spec) as coll:
        assert all(plans.map_prototypes[name][0] is plans.maps[name] for name in names)
        for name in names:
            planned, ms, plan = coll.maps[name], spec.maps[name], spec._plans.maps[name]
            extra = _extra_flags(ms)
            with ebpf.Map.create(
                ms, btf_fd=btf_fd, btf_ids=plan.btf_ids, extra_flags=extra
            ) as made:
                got, want = dict(vars(planned)), dict(vars(made))
                assert got.pop("_fd") is planned.fd and want.pop("_fd") is made.fd
                assert got == want, name
                assert planned.key_type == made.key_type and planned.value_type == made.value_type


def test_a_kept_prototype_is_not_used_for_a_changed_map(fd_guard: None) -> None:
    """A map's prototype belongs to the plan it was taken for: an edited map spec (a new
    plan) creates a map with its own attributes, and so does the unchanged one after it."""
    spec = _loaded_once()
    ebpf.Collection(spec).close()  # reused: the prototypes are kept
    plans = spec._plans
    kept = plans.map_prototypes["counters"]
    assert kept[0] is plans.maps["counters"] and kept[1]["max_entries"] == 4
    spec.maps["counters"].max_entries = 8
    spec.maps["counters"].flags = int(_sys.MapFlags.WRONLY)  # user space writes only
    for _ in range(3):  # made, reused (its own prototype kept), then copied from it
        with ebpf.Collection(spec) as coll:
            m = coll.maps["counters"]
            assert m.info().max_entries == 8 and m.max_entries == 8
            assert m.flags == int(_sys.MapFlags.WRONLY)  # as asked (the kernel reports 0)
    assert plans.map_prototypes["counters"][1]["max_entries"] == 8
    unchanged = ebpf.CollectionSpec.from_file(obj("xdp_counter.o"))
    for _ in range(3):
        with ebpf.Collection(unchanged) as coll:
            m = coll.maps["counters"]
            assert m.info().max_entries == 4 and m.max_entries == 4 and m.flags == 0


def test_plans_match_the_cached_specs_own_objects_by_identity_only(fd_guard: None) -> None:
    """A load of a spec the cache served, untouched, reads the cached spec's own map and
    program specs (which never change): its plans name those objects and match them
    without a comparison. Any other spec is compared: a touched copy that differs gets
    new plans (and loads as it is), and the untouched spec after it matches again."""
    path = obj("xdp_counter.o")
    first = _loaded_once()
    cached, _sha = speccache.default.shared(path)
    plans = first._plans
    own_map, own_prog = cached._maps["counters"], cached._programs["xdp_count"]
    assert plans.maps["counters"].made_for is own_map
    assert plans.programs["xdp_count"].made_for is own_prog
    assert plans.btf is not None and plans.btf.made_for is cached._programs
    changed = ebpf.CollectionSpec.from_file(path)
    changed.maps["counters"].max_entries = 8  # touched: its own copies, compared
    prog = changed.programs["xdp_count"]
    prog.instructions = Instructions(_RETURN_DROP)
    prog.func_infos = prog.line_infos = ()
    with ebpf.Collection(changed) as coll:
        assert coll.maps["counters"].info().max_entries == 8
        assert _run(coll) == XDP_DROP
    assert plans.maps["counters"].made_for is None and plans.programs["xdp_count"].made_for is None
    for _ in range(2):  # new plans for the cache's own objects, then matched by identity
        with ebpf.Collection(ebpf.CollectionSpec.from_file(path)) as coll:
            assert coll.maps["counters"].info().max_entries == 4
            assert _run(coll) == XDP_PASS
        assert plans.maps["counters"].made_for is own_map
        assert plans.programs["xdp_count"].made_for is own_prog
    # a spec of its own (not served by the cache), changed in place between loads
    mine = ebpf.CollectionSpec.from_file(path, cache=False)
    for entries in (4, 16):
        mine.maps["counters"].max_entries = entries
        with ebpf.Collection(mine) as coll:
            assert coll.maps["counters"].info().max_entries == entries
        assert mine._plans.maps["counters"].made_for is None
    # an unchanged touched copy matches the same plans, by comparison
    touched = ebpf.CollectionSpec.from_file(path)
    assert touched.maps["counters"].max_entries == 4
    plan = plans.maps["counters"]
    with ebpf.Collection(touched) as coll:
        assert _run(coll) == XDP_PASS
    assert plans.maps["counters"] is plan


def _takes(outer: ebpf.Map, inner: ebpf.MapSpec) -> bool:
    """Whether ``outer`` (a map of maps) takes a map made from ``inner`` as a value."""
    with ebpf.Map.create(inner) as m:
        try:
            outer[0] = m
        except ebpf.SyscallError:
            return False
        del outer[0]
        return True


def test_a_map_of_maps_is_planned_with_its_inner_template(fd_guard: None) -> None:
    """A map of maps loads from a plan that holds its inner template's attributes too (the
    template created, its fd handed to the outer map, then closed, on every load): the
    outer map takes maps shaped like the template and no others, on every load. The
    template edited in place (the outer map's spec unchanged but for it) gets a new plan."""
    speccache.default.clear()
    spec = ebpf.CollectionSpec.from_file(obj("map_types.o"), cache=False)
    template = spec.maps["m_array_of_maps"].inner_map
    assert template is not None
    other = dataclasses.replace(template, max_entries=template.max_entries + 1)
    for _ in range(3):  # made, reused (its prototype kept), then copied from it
        with ebpf.Collection(spec) as coll:
            for name in ("m_array_of_maps", "m_hash_of_maps"):
                plan = spec._plans.maps[name]
                assert plan.inner is not None and plan.made_for is None
                assert _takes(coll.maps[name], template) and not _takes(coll.maps[name], other)
    first = spec._plans.maps["m_array_of_maps"]
    template.max_entries += 1  # in place: the outer spec's attributes are the same objects
    with ebpf.Collection(spec) as coll:
        assert spec._plans.maps["m_array_of_maps"] is not first
        assert _takes(coll.maps["m_array_of_maps"], other)
        assert not _takes(coll.maps["m_array_of_maps"], spec.maps["m_hash_of_maps"].inner_map)


def test_a_served_map_of_maps_matches_its_plan_by_identity(fd_guard: None) -> None:
    """A map of maps of a spec the cache served, untouched, matches its plan by identity
    with the cached spec's own map (whose inner template never changes either)."""
    speccache.default.clear()
    path = obj("map_types.o")
    cached_spec = ebpf.CollectionSpec.from_file(path)
    for _ in range(3):
        with ebpf.Collection(ebpf.CollectionSpec.from_file(path)) as coll:
            template = cached_spec.maps["m_hash_of_maps"].inner_map
            assert template is not None and _takes(coll.maps["m_hash_of_maps"], template)
    cached, _sha = speccache.default.shared(path)
    plan = cached_spec._plans.maps["m_hash_of_maps"]
    assert plan.inner is not None and plan.made_for is cached._maps["m_hash_of_maps"]


def test_a_map_of_maps_without_an_inner_type_fails_on_every_load(fd_guard: None) -> None:
    spec = ebpf.CollectionSpec.from_file(obj("map_types.o"), cache=False)
    ebpf.Collection(spec).close()  # planned
    template = spec.maps["m_array_of_maps"].inner_map
    assert template is not None
    template.type = _sys.MapType.UNSPEC
    for _ in range(2):
        with pytest.raises(ebpf.SpecError, match=r"^map m_array_of_maps: inner map definition"):
            ebpf.Collection(spec)


def test_an_outer_map_the_kernel_refuses_closes_its_inner_template(fd_guard: None) -> None:
    """The inner template is created before the outer map: an outer map the kernel refuses
    leaves no fd open and fails as it did when the outer map was created from its spec, on
    the first load of the changed spec (its plan made) and the next (the plan reused)."""
    spec = ebpf.CollectionSpec.from_file(obj("map_types.o"), cache=False)
    ebpf.Collection(spec).close()  # planned
    spec.maps["m_array_of_maps"].max_entries = 0
    for _ in range(2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            with pytest.raises(
                ebpf.SyscallError,
                match=r"^map m_array_of_maps: create: invalid argument \(EINVAL\)",
            ):
                ebpf.Collection(spec)
            gc.collect()  # an fd left open is closed by its finalizer, which warns
        assert [str(w.message) for w in caught if w.category is ResourceWarning] == []
        plan = spec._plans.maps["m_array_of_maps"]
        assert plan.inner is not None and plan.held["max_entries"] == 0


def test_a_map_pinned_by_name_found_again_is_the_map_from_pin_gives(
    pin_dir: Path, fd_guard: None
) -> None:
    """A map pinned by name that a load found compatible is checked, on the next loads
    that find the same (spec fields, shape in the kernel's info), from the load plans'
    entry: the map made is, attribute for attribute, what Map.from_pin and the loader's
    settings give, with its own fd, id and pin, and the kernel's BTF ids as read."""
    speccache.default.clear()
    path = obj("pinned.o")
    opts = ebpf.CollectionOptions(pin_path=pin_dir)
    ebpf.Collection(ebpf.CollectionSpec.from_file(path), opts).close()  # pins it
    spec = ebpf.CollectionSpec.from_file(path)
    plans = spec._plans
    assert plans.pins == {}
    for _ in range(3):  # checked and kept, then taken from the plans' entry
        with ebpf.Collection(ebpf.CollectionSpec.from_file(path), opts) as coll:
            got = coll.maps["pinned_runs"]
            with ebpf.Map.from_pin(pin_dir / "pinned_runs") as want:
                ms = spec.maps["pinned_runs"]
                want.name, want.key_type, want.value_type = ms.name, ms.key, ms.value
                mine, theirs = dict(vars(got)), dict(vars(want))
                assert mine.pop("_fd") is got.fd and theirs.pop("_fd") is want.fd
                assert got.fd.raw != want.fd.raw and mine == theirs
                assert got.pinned == str(pin_dir / "pinned_runs") and got.id == want.id
        assert list(plans.pins) == ["pinned_runs"]


def _pin_entry_kept(pin_dir: Path) -> tuple[Path, ebpf.CollectionOptions]:
    """pinned.o and options pinning under ``pin_dir``, loaded twice from a fresh spec cache:
    the pin is made, then found compatible and kept in the load plans."""
    speccache.default.clear()
    path = obj("pinned.o")
    opts = ebpf.CollectionOptions(pin_path=pin_dir)
    for _ in range(2):
        ebpf.Collection(ebpf.CollectionSpec.from_file(path), opts).close()
    return path, opts


def test_a_pin_replaced_or_a_spec_changed_after_a_kept_pin_is_seen(
    pin_dir: Path, fd_guard: None
) -> None:
    """The plans' entry of a pinned map is used only while the spec and the pinned map's
    shape are what it saw: a pin replaced by another compatible map gives that map, by an
    incompatible one or by a program fails as on a first load, and a changed spec is
    checked against the pin."""
    path, opts = _pin_entry_kept(pin_dir)
    pin = pin_dir / "pinned_runs"
    spec = ebpf.CollectionSpec.from_file(path)
    kept = spec._plans.pins["pinned_runs"]
    template = spec.maps["pinned_runs"].copy()
    template.pinning = ebpf.PinType.NONE
    # another map of the same shape: used, with its own id
    pin.unlink()
    with ebpf.Map.create(template) as other:
        other.pin(pin)
        with ebpf.Collection(ebpf.CollectionSpec.from_file(path), opts) as coll:
            assert coll.maps["pinned_runs"].id == other.id
        assert spec._plans.pins["pinned_runs"] is kept
    # an incompatible map
    pin.unlink()
    template.max_entries = 8
    with ebpf.Map.create(template) as wrong:
        wrong.pin(pin)
        for _ in range(2):
            with pytest.raises(ebpf.MapIncompatibleError, match="max entries 8, spec wants 1"):
                ebpf.Collection(ebpf.CollectionSpec.from_file(path), opts)
        # a spec changed to fit it loads; the unchanged one still refuses it
        changed = ebpf.CollectionSpec.from_file(path)
        changed.maps["pinned_runs"].max_entries = 8
        with ebpf.Collection(changed, opts) as coll:
            assert coll.maps["pinned_runs"].id == wrong.id
        with pytest.raises(ebpf.MapIncompatibleError, match="max entries 8, spec wants 1"):
            ebpf.Collection(ebpf.CollectionSpec.from_file(path), opts)
    # a program
    pin.unlink()
    with ebpf.Collection(ebpf.CollectionSpec.from_file(obj("xdp_counter.o"))) as coll:
        coll.programs["xdp_count"].pin(pin)
        with pytest.raises(ebpf.PinError, match=r"^map pin .*: not a map but a program$"):
            ebpf.Collection(ebpf.CollectionSpec.from_file(path), opts)
    pin.unlink()


def test_a_kept_pin_entry_keeps_nothing_read_per_load(pin_dir: Path, fd_guard: None) -> None:
    """The plans' entry of a pinned map keeps none of what each load reads: the same spec
    loaded under another pin path gives a map pinned there (what ``unpin`` removes), and a
    pin replaced by a map of the same shape without BTF gives that map, typed by no kernel
    BTF. Each is, attribute for attribute, what Map.from_pin and the loader's settings give."""
    speccache.default.clear()
    path = obj("pinned.o")
    other_dir = pin_dir / "other"
    other_dir.mkdir()
    for d in (pin_dir, other_dir):  # the pins are made
        opts = ebpf.CollectionOptions(pin_path=d)
        ebpf.Collection(ebpf.CollectionSpec.from_file(path), opts).close()

    def load(d: Path, untyped: bool = False) -> ebpf.Collection:
        spec = ebpf.CollectionSpec.from_file(path)
        if untyped:  # typed by the pinned map's BTF, if it has any
            spec.maps["pinned_runs"].key = spec.maps["pinned_runs"].value = None
        coll = ebpf.Collection(spec, ebpf.CollectionOptions(pin_path=d))
        got = coll.maps["pinned_runs"]
        with ebpf.Map.from_pin(d / "pinned_runs") as want:
            ms = spec.maps["pinned_runs"]
            want.name, want.key_type, want.value_type = ms.name, ms.key, ms.value
            mine, theirs = dict(vars(got)), dict(vars(want))
            assert mine.pop("_fd") is got.fd and theirs.pop("_fd") is want.fd
            if mine != theirs:
                coll.close()
                assert mine == theirs
        return coll

    load(pin_dir).close()  # checked, and kept
    kept = speccache.default.shared(path)[0]._plans.pins["pinned_runs"]
    with load(other_dir) as coll:  # from the entry
        assert coll.maps["pinned_runs"].pinned == str(other_dir / "pinned_runs")
        coll.maps["pinned_runs"].unpin()
    assert (pin_dir / "pinned_runs").exists() and not (other_dir / "pinned_runs").exists()
    template = ebpf.CollectionSpec.from_file(path).maps["pinned_runs"]
    template.pinning, template.key, template.value = ebpf.PinType.NONE, None, None
    with ebpf.Map.create(template) as bare:  # the same shape, no BTF
        bare.pin(other_dir / "pinned_runs")
        with load(pin_dir, untyped=True) as coll:
            key, _value = coll.maps["pinned_runs"].btf_types()  # the pin's own BTF
            assert isinstance(key, _btf.Typedef) and key.name == "__u32"
        with load(other_dir, untyped=True) as coll:
            assert coll.maps["pinned_runs"].id == bare.id
            assert coll.maps["pinned_runs"].btf_types() == (None, None)
    assert speccache.default.shared(path)[0]._plans.pins["pinned_runs"] is kept


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("type", _sys.MapType.HASH, "has type array, spec wants hash"),
        ("key_size", 8, "has key size 4, spec wants 8"),
        ("value_size", 16, "has value size 8, spec wants 16"),
        ("max_entries", 2, "has max entries 1, spec wants 2"),
        ("flags", int(_sys.MapFlags.RDONLY_PROG), "has flags 0x0, spec wants 0x80"),
    ],
)
def test_a_kept_pin_entry_is_not_used_for_a_spec_changed_in_any_field_the_check_reads(
    pin_dir: Path, fd_guard: None, field: str, value: object, why: str
) -> None:
    """Each field of the spec that the check of a pinned map reads, changed after a load
    kept the pin's entry, has the pin checked again (and refused as on a first load)."""
    path, opts = _pin_entry_kept(pin_dir)
    spec = ebpf.CollectionSpec.from_file(path)
    kept = spec._plans.pins["pinned_runs"]
    setattr(spec.maps["pinned_runs"], field, value)
    with pytest.raises(ebpf.MapIncompatibleError) as err:
        ebpf.Collection(spec, opts)
    assert str(err.value) == (
        f"map pinned_runs: pinned map at {pin_dir / 'pinned_runs'} is incompatible: map "
        f"pinned_runs: existing map pinned_runs {why} (remove the pin or change the definition)"
    )
    assert spec._plans.pins["pinned_runs"] is kept


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("type", _sys.MapType.HASH, "has type hash, spec wants array"),
        ("value_size", 16, "has value size 16, spec wants 8"),
        ("max_entries", 2, "has max entries 2, spec wants 1"),
        ("flags", int(_sys.MapFlags.RDONLY_PROG), "has flags 0x80, spec wants 0x0"),
    ],
)
def test_a_kept_pin_entry_is_not_used_for_a_pin_replaced_by_a_map_of_another_shape(
    pin_dir: Path, fd_guard: None, field: str, value: object, why: str
) -> None:
    """A pin replaced, after a load kept its entry, by a map that differs in any field the
    check reads is checked again (and refused as on a first load)."""
    path, opts = _pin_entry_kept(pin_dir)
    kept = ebpf.CollectionSpec.from_file(path)._plans.pins["pinned_runs"]
    template = ebpf.CollectionSpec.from_file(path).maps["pinned_runs"]
    template.pinning = ebpf.PinType.NONE
    setattr(template, field, value)
    (pin_dir / "pinned_runs").unlink()
    with ebpf.Map.create(template) as other:
        other.pin(pin_dir / "pinned_runs")
        with pytest.raises(ebpf.MapIncompatibleError) as err:
            ebpf.Collection(ebpf.CollectionSpec.from_file(path), opts)
    assert str(err.value) == (
        f"map pinned_runs: pinned map at {pin_dir / 'pinned_runs'} is incompatible: map "
        f"pinned_runs: existing map pinned_runs {why} (remove the pin or change the definition)"
    )
    assert ebpf.CollectionSpec.from_file(path)._plans.pins["pinned_runs"] is kept
