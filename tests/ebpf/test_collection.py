"""Loading collections into the real kernel: behaviour seen through test runs and maps."""

from __future__ import annotations

import ctypes
import errno
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator import ebpf
from orchestrator.ebpf._sys import UpdateFlags
from orchestrator.ebpf.collection import load_subset
from tests import maptypes

pytestmark = pytest.mark.kernel

HEADER = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "GPL";
"""

PACKET = bytes(64)

COUNTER = (
    HEADER
    + """
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __type(key, __u32);
    __type(value, __u64);
    __uint(max_entries, 4);
} counters SEC(".maps");

const volatile __u32 verdict = XDP_PASS;
const volatile __u32 slot = 0;
__u64 runs = 0;

static __noinline void bump(__u32 k)
{
    __u64 *v = bpf_map_lookup_elem(&counters, &k);
    if (v)
        __sync_fetch_and_add(v, 1);
}

SEC("xdp")
int count(struct xdp_md *ctx)
{
    bump(slot);
    runs++;
    if (verdict == 99)          /* dead code once .rodata is frozen */
        return XDP_ABORTED;
    return verdict;
}
"""
)

TYPES = (
    HEADER
    + """
struct flow { __u32 saddr; __u16 port; __u8 proto; __u8 pad; };
struct stats { __u64 packets; __u64 bytes; };
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __type(key, struct flow);
    __type(value, struct stats);
    __uint(max_entries, 64);
} flows SEC(".maps");
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __type(key, __u32);
    __type(value, __u32);
    __uint(max_entries, 2);
} percpu SEC(".maps");
struct {
    __uint(type, BPF_MAP_TYPE_QUEUE);
    __type(value, __u32);
    __uint(max_entries, 8);
} queue SEC(".maps");
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __type(key, __u64);
    __type(value, __u64);
    __uint(max_entries, 128);
} lru SEC(".maps");
SEC("xdp")
int touch(struct xdp_md *ctx)
{
    struct flow f = { .saddr = 1, .port = 2, .proto = 3 };
    struct stats *s = bpf_map_lookup_elem(&flows, &f);
    if (s) { s->packets++; s->bytes += ctx->data_end - ctx->data; }
    __u32 k = 0, *c = bpf_map_lookup_elem(&percpu, &k);
    if (c) (*c)++;
    __u32 v = 7;
    bpf_map_push_elem(&queue, &v, 0);
    __u64 lk = 1, lv = 2;
    bpf_map_update_elem(&lru, &lk, &lv, 0);
    return XDP_PASS;
}
"""
)

TAILCALL = (
    HEADER
    + """
SEC("xdp") int prog_a(struct xdp_md *ctx) { return XDP_DROP; }
SEC("xdp") int prog_b(struct xdp_md *ctx) { return XDP_TX; }
struct {
    __uint(type, BPF_MAP_TYPE_PROG_ARRAY);
    __uint(max_entries, 4);
    __type(key, __u32);
    __array(values, int (void *));
} jump SEC(".maps") = { .values = { [0] = (void *)&prog_a, [2] = (void *)&prog_b } };
const volatile __u32 target = 0;
SEC("xdp")
int entry(struct xdp_md *ctx)
{
    bpf_tail_call(ctx, &jump, target);
    return XDP_PASS;
}
"""
)

MAP_IN_MAP = (
    HEADER
    + """
struct inner { __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, __u32); __type(value, __u32);
               __uint(max_entries, 1); };
struct inner inner_a SEC(".maps");
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
    __uint(max_entries, 2);
    __type(key, __u32);
    __array(values, struct inner);
} outer SEC(".maps") = { .values = { [1] = &inner_a } };
SEC("xdp")
int through(struct xdp_md *ctx)
{
    __u32 k = 1, z = 0;
    void *m = bpf_map_lookup_elem(&outer, &k);
    if (!m) return XDP_ABORTED;
    __u32 *v = bpf_map_lookup_elem(m, &z);
    if (!v) return XDP_ABORTED;
    return *v;
}
"""
)

PINNED = (
    HEADER
    + """
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __type(key, __u32);
    __type(value, __u32);
    __uint(max_entries, 16);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} shared SEC(".maps");
SEC("xdp") int use(struct xdp_md *ctx)
{
    __u32 k = 1, v = 1, *p = bpf_map_lookup_elem(&shared, &k);
    if (p) __sync_fetch_and_add(p, 1); else bpf_map_update_elem(&shared, &k, &v, 0);
    return XDP_PASS;
}
"""
)

PINNED_OTHER_SHAPE = PINNED.replace("__uint(max_entries, 16)", "__uint(max_entries, 32)")

PARTIAL = (
    HEADER
    + """
struct { __uint(type, BPF_MAP_TYPE_HASH); __type(key, __u32); __type(value, __u32);
         __uint(max_entries, 4); __uint(pinning, LIBBPF_PIN_BY_NAME); } kept SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, __u32); __type(value, __u64);
         __uint(max_entries, 4); } other SEC(".maps");
const volatile __u32 knob = 1;
SEC("xdp") int good_one(struct xdp_md *ctx)
{ __u32 k = 0; __u64 *v = bpf_map_lookup_elem(&other, &k); if (v) (*v)++; return knob; }
SEC("xdp") int good_two(struct xdp_md *ctx)
{ __u32 k = 0; __u32 *v = bpf_map_lookup_elem(&kept, &k); return v ? *v : 0; }
SEC("xdp") int zz_bad(struct xdp_md *ctx)
{
    unsigned char *p = (void *)(long)ctx->data;
    return p[100];              /* no bounds check: the verifier says no */
}
"""
)

Build = Callable[..., Path]


def load(build: Build, source: str, **opts: object) -> ebpf.Collection:
    spec = ebpf.CollectionSpec.from_file(build(source))
    return ebpf.Collection(spec, ebpf.CollectionOptions(**opts))  # type: ignore[arg-type]


def test_load_run_and_read_maps(compile_bpf: Build, fd_guard: None) -> None:
    with load(compile_bpf, COUNTER) as coll:
        prog = coll.programs["count"]
        for _ in range(3):
            assert prog.test_run(PACKET).retval == 2  # XDP_PASS
        assert coll.maps["counters"][0] == 3
        assert list(coll.maps["counters"].items()) == [(0, 3), (1, 0), (2, 0), (3, 0)]
        assert coll.maps["counters"].count_entries() == 4
        info = prog.info()
        assert info.name == "count" and info.type == ebpf.ProgType.XDP
        assert info.run_count == 0 or info.run_count >= 3
        assert len(info.xlated) % 8 == 0 and len(info.map_ids) == 3


def test_rewrite_constants_changes_behaviour(compile_bpf: Build, fd_guard: None) -> None:
    spec = ebpf.CollectionSpec.from_file(compile_bpf(COUNTER))
    plain = spec.copy()
    spec.rewrite_constants({"verdict": 1, "slot": 3})
    with ebpf.Collection(spec) as coll:
        assert coll.programs["count"].test_run(PACKET).retval == 1  # XDP_DROP
        assert coll.maps["counters"][3] == 1 and coll.maps["counters"][0] == 0
        # .rodata is frozen before verification: the dead branch is gone from the program
        with pytest.raises(ebpf.PermissionDeniedError):
            coll.maps[".rodata"][0] = bytes(8)
    with ebpf.Collection(plain) as coll:
        assert coll.programs["count"].test_run(PACKET).retval == 2


def test_loading_never_mutates_the_spec(compile_bpf: Build, fd_guard: None) -> None:
    spec = ebpf.CollectionSpec.from_file(compile_bpf(COUNTER))
    before = {
        n: (p.instructions.raw, dict(p.instructions.references)) for n, p in spec.programs.items()
    }
    contents = {
        n: [bytes(e.value) for e in m.contents if not isinstance(e.value, str)]
        for n, m in spec.maps.items()
    }
    with ebpf.Collection(spec) as coll:
        coll.programs["count"].test_run(PACKET)
        coll.maps[".bss"][0] = bytes(8)
    assert {
        n: (p.instructions.raw, dict(p.instructions.references)) for n, p in spec.programs.items()
    } == before
    assert {
        n: [bytes(e.value) for e in m.contents if not isinstance(e.value, str)]
        for n, m in spec.maps.items()
    } == contents


def test_typed_map_api(compile_bpf: Build, fd_guard: None) -> None:
    with load(compile_bpf, TYPES) as coll:
        flows = coll.maps["flows"]
        key = {"saddr": 1, "port": 2, "proto": 3}
        flows[key] = {"packets": 10, "bytes": 1000}
        flows.update({"saddr": 9}, {"packets": 1}, UpdateFlags.NOEXIST)
        with pytest.raises(ebpf.KeyExistsError, match="map flows"):
            flows.update({"saddr": 9}, {"packets": 2}, UpdateFlags.NOEXIST)
        with pytest.raises(ebpf.KeyNotFoundError, match="map flows"):
            flows.update({"saddr": 5}, {"packets": 2}, UpdateFlags.EXIST)
        assert coll.programs["touch"].test_run(PACKET).retval == 2
        assert flows[key] == {"packets": 11, "bytes": 1064}
        assert flows.count_entries() == 2
        assert flows.get({"saddr": 77}, None) is None
        with pytest.raises(KeyError):
            flows[{"saddr": 77}]
        del flows[{"saddr": 9}]
        assert list(flows.keys()) == [{"saddr": 1, "port": 2, "proto": 3, "pad": 0}]

        percpu = coll.maps["percpu"]
        values = percpu[0]
        assert isinstance(values, list) and len(values) == ebpf._sys.possible_cpus()
        assert sum(values) == 1  # one run, on one CPU
        percpu[1] = 5  # the same value on every CPU
        assert percpu[1] == [5] * ebpf._sys.possible_cpus()

        queue = coll.maps["queue"]
        queue.push(3)
        assert queue.pop() == 7 and queue.pop() == 3
        with pytest.raises(ebpf.KeyNotFoundError):
            queue.pop()

        lru = coll.maps["lru"]
        assert lru[1] == 2
        assert lru.batch_update([(i, i * 10) for i in range(10, 20)]) == 10
        got = dict(lru.batch_lookup(chunk=4))
        assert got[15] == 150 and got[1] == 2 and len(got) == 11
        assert lru.batch_delete([10, 11, 12]) == 3
        assert lru.count_entries() == 8
        with pytest.raises(ebpf.SpecError, match="map lru: key"):
            lru["not an int"] = 1


def test_iteration_tolerates_concurrent_deletes(compile_bpf: Build, fd_guard: None) -> None:
    with load(compile_bpf, TYPES) as coll:
        lru = coll.maps["lru"]
        for i in range(50):
            lru[i] = i
        seen = []
        for k, _ in lru.items():
            seen.append(k)
            # delete the current and a later key while iterating: the hash walk restarts
            for victim in (k, 49 - int(k)):  # type: ignore[call-overload]
                lru.get(victim, None) is not None and lru.delete(victim)
        assert len(seen) == len(set(seen)) <= 50
        assert lru.count_entries() == 0


def test_tail_calls_through_static_prog_array(compile_bpf: Build, fd_guard: None) -> None:
    spec = ebpf.CollectionSpec.from_file(compile_bpf(TAILCALL))
    assert [(e.key, e.value) for e in spec.maps["jump"].contents] == [(0, "prog_a"), (2, "prog_b")]
    for target, expected in ((0, 1), (2, 3), (1, 2), (3, 2)):  # DROP, TX, miss → PASS
        s = spec.copy()
        s.rewrite_constants({"target": target})
        with ebpf.Collection(s) as coll:
            assert coll.programs["entry"].test_run(PACKET).retval == expected


def test_map_in_map_with_static_inner(compile_bpf: Build, fd_guard: None) -> None:
    with load(compile_bpf, MAP_IN_MAP) as coll:
        coll.maps["inner_a"][0] = 3
        assert coll.programs["through"].test_run(PACKET).retval == 3
        inner_id = coll.maps["inner_a"].info().id
        assert coll.maps["outer"].lookup(1) == inner_id.to_bytes(4, "little")


def test_a_map_of_maps_whose_inner_definition_has_no_type_is_refused(
    compile_bpf: Build, fd_guard: None
) -> None:
    """An inner map template without a type (a spec edited by hand) is refused, naming the
    outer map; the load is all or nothing, so nothing is left open."""
    spec = ebpf.CollectionSpec.from_file(compile_bpf(MAP_IN_MAP))
    outer = spec.maps["outer"]
    assert outer.inner_map is not None
    outer.inner_map.type = ebpf.MapType.UNSPEC
    with pytest.raises(ebpf.SpecError, match="map outer: inner map definition has no type"):
        ebpf.Collection(spec)


def test_map_replacement(compile_bpf: Build, fd_guard: None) -> None:
    spec = ebpf.CollectionSpec.from_file(compile_bpf(COUNTER))
    with ebpf.Map.create(spec.maps["counters"]) as mine:
        mine[0] = 100
        opts = ebpf.CollectionOptions(map_replacements={"counters": mine})
        with ebpf.Collection(spec, opts) as coll:
            coll.programs["count"].test_run(PACKET)
        assert mine[0] == 101  # the program wrote into our map

        other = spec.maps["counters"].copy()
        other.max_entries = 5
        with ebpf.Map.create(other) as wrong:
            opts = ebpf.CollectionOptions(map_replacements={"counters": wrong})
            with pytest.raises(ebpf.MapIncompatibleError, match="max entries 5, spec wants 4"):
                ebpf.Collection(spec, opts)

        rewritten = spec.copy()
        rewritten.rewrite_maps({"counters": mine})
        with ebpf.Collection(rewritten) as coll:
            coll.programs["count"].test_run(PACKET)
        assert mine[0] == 102
        # the options' replacement wins over the spec's for the same map
        with ebpf.Map.create(spec.maps["counters"]) as theirs:
            opts = ebpf.CollectionOptions(map_replacements={"counters": theirs})
            with ebpf.Collection(rewritten, opts) as coll:
                assert coll.maps["counters"].id == theirs.id
                coll.programs["count"].test_run(PACKET)
            assert theirs[0] == 1 and mine[0] == 102
        with pytest.raises(ebpf.SpecError, match="not in object"):
            spec.copy().rewrite_maps({"nope": mine})


@pytest.mark.parametrize(("kind", "filled"), maptypes.EMPTY_AND_FILLED)
def test_map_replacement_is_used_for_every_map_type(
    compile_bpf: Build, kind: maptypes.Kind, filled: bool, fd_guard: None
) -> None:
    """A replacement is used as it is, whatever its type and contents: an empty map (once
    falsy) and keyless maps (ring buffers, queues, bloom filters: once "no keys to iterate")
    included. The program really refers to the replacement (its map ids say so), and the
    loader neither reads nor writes the replacement's elements."""
    import contextlib

    spec = ebpf.CollectionSpec.from_file(compile_bpf(kind.source))
    with contextlib.ExitStack() as stack:
        donor = stack.enter_context(ebpf.Collection(spec))
        mine = donor.maps["m"]
        check = None
        if filled:
            assert kind.fill is not None
            check = kind.fill(mine, maptypes.Fill(stack, donor.programs["user"]))
        opts = ebpf.CollectionOptions(map_replacements={"m": mine})
        with ebpf.Collection(spec, opts) as coll:
            assert coll.maps["m"].id == mine.id
            assert mine.id in coll.programs["user"].info().map_ids
            assert coll.programs["user"].id != donor.programs["user"].id
        if check is not None:
            check(mine)


def test_replacement_is_not_walked_or_written(
    compile_bpf: Build, monkeypatch: pytest.MonkeyPatch, fd_guard: None
) -> None:
    """Handing over a map costs no element syscall: a hash map with 5,000 entries is used
    without a single BPF_MAP_GET_NEXT_KEY, lookup or update (counted at the syscall layer),
    and the object's initial contents are not written into it."""
    from orchestrator.ebpf import _sys as bpfsys

    source = (
        HEADER
        + """
struct {
    __uint(type, BPF_MAP_TYPE_HASH); __type(key, __u32); __type(value, __u32);
    __uint(max_entries, 8192);
} big SEC(".maps");
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, __u32); __type(value, __u32);
    __uint(max_entries, 2);
} init SEC(".maps");
SEC("xdp") int touch(struct xdp_md *ctx)
{
    __u32 k = 0;
    __u32 *v = bpf_map_lookup_elem(&big, &k);
    __u32 *w = bpf_map_lookup_elem(&init, &k);
    return (v ? *v : 0) + (w ? *w : 0);
}
"""
    )
    spec = ebpf.CollectionSpec.from_file(compile_bpf(source))
    spec.maps["init"].contents.append(ebpf.MapEntry(0, (9).to_bytes(4, "little")))
    with ebpf.Map.create(spec.maps["big"]) as big, ebpf.Map.create(spec.maps["init"]) as init:
        big.batch_update((i, i) for i in range(5000))
        calls: dict[str, int] = {}
        for name in ("map_get_next_key", "map_lookup_elem", "map_update_elem"):
            real = getattr(bpfsys, name)

            def counting(*args: object, _real: Any = real, _name: str = name) -> object:
                calls[_name] = calls.get(_name, 0) + 1
                return _real(*args)

            monkeypatch.setattr(bpfsys, name, counting)
        opts = ebpf.CollectionOptions(map_replacements={"big": big, "init": init})
        with ebpf.Collection(spec, opts) as coll:
            assert coll.maps["big"].id == big.id
        monkeypatch.undo()
        assert calls == {}
        assert init[0] == 0  # the object's initial contents went nowhere
        assert big.count_entries() == 5000


def test_pin_by_name_reuses_and_refuses(compile_bpf: Build, pin_dir: Path, fd_guard: None) -> None:
    opts = ebpf.CollectionOptions(pin_path=pin_dir)
    with load(compile_bpf, PINNED, pin_path=pin_dir) as coll:
        coll.programs["use"].test_run(PACKET)
        assert (pin_dir / "shared").exists()
    # the pin keeps the map and its contents; a second load reuses it
    spec = ebpf.CollectionSpec.from_file(compile_bpf(PINNED))
    with ebpf.Collection(spec, opts) as coll:
        coll.programs["use"].test_run(PACKET)
        assert coll.maps["shared"][1] == 2
    with ebpf.Map.from_pin(pin_dir / "shared") as m:
        assert m[1] == 2
    bad = ebpf.CollectionSpec.from_file(compile_bpf(PINNED_OTHER_SHAPE))
    with pytest.raises(
        ebpf.MapIncompatibleError, match=r"pinned map at .* max entries 16, spec wants 32"
    ):
        ebpf.Collection(bad, opts)
    assert (pin_dir / "shared").exists()  # the refusal left the existing pin alone
    with pytest.raises(ebpf.SpecError, match="no pin path given"):
        ebpf.Collection(spec)


def test_failure_midway_leaves_nothing(compile_bpf: Build, pin_dir: Path, fd_guard: None) -> None:
    spec = ebpf.CollectionSpec.from_file(compile_bpf(PARTIAL))
    with pytest.raises(ebpf.VerifierError) as info:
        ebpf.Collection(spec, ebpf.CollectionOptions(pin_path=pin_dir))
    err = info.value
    assert err.program == "zz_bad"
    # the message points at the source line, says what the verifier said and how to fix it
    assert re.fullmatch(
        r"program zz_bad: \w+\.c:18: return p\[100\]; +/\* no bounds check: the verifier says no "
        r"\*/ -- invalid access to packet, off=100 size=1, R\d\(id=0,off=100,r=0\): packet data "
        r"is accessed without proving that it lies before data_end; compare the pointer plus "
        r"the access size with data_end first \(if \(p \+ n > data_end\) return \.\.\.\)",
        str(err),
    ), str(err)
    assert err.errno == errno.EACCES  # the load's own errno, not the log's
    assert "invalid access to packet" in err.log
    assert "invalid access to packet" in err.tail()
    assert list(pin_dir.iterdir()) == []  # the pin made for `kept` is gone again


def test_verifier_log_on_request(compile_bpf: Build, fd_guard: None) -> None:
    spec = ebpf.CollectionSpec.from_file(compile_bpf(COUNTER))
    with ebpf.Collection(spec, ebpf.CollectionOptions(log_level=2)) as coll:
        assert "processed" in coll.programs["count"].verifier_log


def test_each_load_gets_the_log_it_asks_for(compile_bpf: Build, fd_guard: None) -> None:
    """Loads share one LogOptions per setting: a load asking for a log in between loads
    that do not (and the other way round) gets its own."""
    spec = ebpf.CollectionSpec.from_file(compile_bpf(COUNTER))
    for level, logged in ((0, False), (2, True), (0, False), (1, True), (2, True)):
        with ebpf.Collection(spec, ebpf.CollectionOptions(log_level=level)) as coll:
            assert ("processed" in coll.programs["count"].verifier_log) is logged, level
    with ebpf.Collection(spec, ebpf.CollectionOptions(log_level=2, log_disabled=True)) as coll:
        assert coll.programs["count"].verifier_log == ""


def test_unknown_section_refuses_to_load(compile_bpf: Build, fd_guard: None) -> None:
    src = HEADER + 'SEC("mystery/thing") int odd(void *ctx) { return 0; }\n'
    spec = ebpf.CollectionSpec.from_file(compile_bpf(src))
    assert not spec.programs["odd"].known_section
    with pytest.raises(ebpf.NotSupportedError, match="program odd: section 'mystery/thing'"):
        ebpf.Collection(spec)


class Counters:
    counters: ebpf.Map = ebpf.bind("counters")


class Objects:
    count: ebpf.Program = ebpf.bind("count")
    maps: Counters


class Slotted:
    __slots__ = ()
    count: ebpf.Program = ebpf.bind("count")


def test_load_and_assign(compile_bpf: Build, fd_guard: None) -> None:
    spec = ebpf.CollectionSpec.from_file(compile_bpf(COUNTER))
    objs = spec.load_and_assign(Objects())
    try:
        assert objs.count.test_run(PACKET).retval == 2
        assert objs.maps.counters[0] == 1
    finally:
        ebpf.close_all(objs)

    class Missing:
        prog: ebpf.Program = ebpf.bind("cuont")

    with pytest.raises(ebpf.BindError, match=r"no program cuont in object .did you mean count"):
        spec.load_and_assign(Missing())

    class Twice:
        a: ebpf.Map = ebpf.bind("counters")
        b: ebpf.Map = ebpf.bind("counters")

    with pytest.raises(ebpf.BindError, match="already bound"):
        spec.load_and_assign(Twice())

    with pytest.raises(ebpf.BindError, match="cannot set field"):
        spec.load_and_assign(Slotted())

    class Specs:
        count: ebpf.ProgramSpec = ebpf.bind("count")
        verdict: ebpf.VariableSpec = ebpf.bind("verdict")

    specs = spec.assign(Specs())
    assert specs.count is spec.programs["count"] and specs.verdict.value == 2


def test_load_and_assign_loads_only_what_is_bound(compile_bpf: Build, fd_guard: None) -> None:
    spec = ebpf.CollectionSpec.from_file(compile_bpf(PARTIAL))

    class Good:
        one: ebpf.Program = ebpf.bind("good_one")

    # zz_bad is never loaded, and `kept` (pinned by name) is not needed by good_one
    objs = spec.load_and_assign(Good())
    try:
        assert objs.one.test_run(PACKET).retval == 1
    finally:
        ebpf.close_all(objs)


def test_detach_survives_close(compile_bpf: Build, fd_guard: None) -> None:
    coll = load(compile_bpf, COUNTER)
    prog = coll.detach_program("count")
    counters = coll.detach_map("counters")
    coll.close()
    try:
        assert prog.test_run(PACKET).retval == 2
        assert counters[0] == 1
        with pytest.raises(ebpf.SpecError):
            coll.detach_map("counters")
    finally:
        prog.close()
        counters.close()


def test_pins_and_ids(compile_bpf: Build, pin_dir: Path, fd_guard: None) -> None:
    with load(compile_bpf, COUNTER) as coll:
        prog, counters = coll.programs["count"], coll.maps["counters"]
        prog.pin(pin_dir / "count")
        counters.pin(pin_dir / "counters")
        with pytest.raises(ebpf.PinError, match="exists"):
            prog.pin(pin_dir / "count")
        with ebpf.Program.from_pin(pin_dir / "count") as again:
            assert again.info().id == prog.info().id
            assert again.test_run(PACKET).retval == 2
        with ebpf.Map.from_id(counters.info().id) as same:
            assert same[0] == 1
        with ebpf.Program.from_id(prog.info().id) as same_prog:
            assert same_prog.name == "count"
        prog.unpin()
        counters.unpin()
    assert list(pin_dir.iterdir()) == []
    with pytest.raises(ebpf.NotFoundError) as missing:  # no KeyError: no map element is missing
        ebpf.Map.from_pin(pin_dir / "counters")
    assert not isinstance(missing.value, KeyError)
    with load(compile_bpf, COUNTER) as coll, pytest.raises(ebpf.PinError, match="bpffs"):
        coll.maps["counters"].pin("/tmp/not-bpffs-pin")


def test_ctypes_and_raw_values(compile_bpf: Build, fd_guard: None) -> None:
    class Stats(ctypes.Structure):
        _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]

    with load(compile_bpf, TYPES) as coll:
        flows = coll.maps["flows"]
        raw_key = (1).to_bytes(4, "little") + (2).to_bytes(2, "little") + bytes([3, 0])
        flows[raw_key] = Stats(4, 5)
        assert flows[{"saddr": 1, "port": 2, "proto": 3}] == {"packets": 4, "bytes": 5}
        with pytest.raises(ebpf.SpecError):
            flows[raw_key] = b"short"


def test_no_fd_leak_after_many_loads(compile_bpf: Build) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with load(compile_bpf, TAILCALL) as coll:
            coll.programs["entry"].test_run(PACKET)
    assert len(os.listdir("/proc/self/fd")) == before


SUBSET = (
    HEADER
    + """
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, __u32); __type(value, __u64);
         __uint(max_entries, 1); } a_only SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, __u32); __type(value, __u64);
         __uint(max_entries, 1); } tail_only SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, __u32); __type(value, __u64);
         __uint(max_entries, 1); } b_only SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, __u32); __type(value, __u32);
         __uint(max_entries, 1); } inner SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS); __uint(max_entries, 1); __type(key, __u32);
         __array(values, struct { __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, __u32);
                                  __type(value, __u32); __uint(max_entries, 1); });
} outer SEC(".maps") = { .values = { &inner } };
const volatile __u32 limit = 3;
__u64 counter;

static __always_inline void bump(void *map)
{ __u32 k = 0; __u64 *v = bpf_map_lookup_elem(map, &k); if (v) *v += 1; }

SEC("xdp") int tail(struct xdp_md *ctx) { bump(&tail_only); return XDP_PASS; }

struct { __uint(type, BPF_MAP_TYPE_PROG_ARRAY); __uint(max_entries, 1); __type(key, __u32);
         __array(values, int (void *)); } jumps SEC(".maps") = { .values = { [0] = &tail } };

SEC("xdp") int a(struct xdp_md *ctx)
{ bump(&a_only); bpf_tail_call(ctx, &jumps, 0); return limit; }
SEC("xdp") int b(struct xdp_md *ctx)
{ __u32 k = 0; bump(&b_only); counter++; return bpf_map_lookup_elem(&outer, &k) ? 1 : 2; }
"""
)


def test_subset_is_what_a_partial_load_creates(compile_bpf: Build, fd_guard: None) -> None:
    """``subset`` (what plans list for ``programs:``) names exactly the programs and maps a
    partial load creates: the maps the programs use, what prog arrays and maps of maps among
    them hold, transitively, and the maps asked for."""
    spec = ebpf.CollectionSpec.from_file(compile_bpf(SUBSET))
    cases = [
        (["a"], [], ["a", "tail"], [".rodata", "a_only", "jumps", "tail_only"]),
        (["b"], [], ["b"], [".bss", "b_only", "inner", "outer"]),
        (["b"], ["a_only"], ["b"], [".bss", "a_only", "b_only", "inner", "outer"]),
        ([], ["jumps"], ["tail"], ["jumps", "tail_only"]),
    ]
    for programs, maps, want_programs, want_maps in cases:
        assert spec.subset(programs, maps) == (want_programs, want_maps), (programs, maps)
        with load_subset(spec, None, programs, maps) as coll:
            assert (sorted(coll.programs), sorted(coll.maps)) == (want_programs, want_maps)
    with pytest.raises(ebpf.SpecError, match=r"program c: not in object \(it has: a, b, tail\)"):
        spec.subset(["c"])
    with pytest.raises(ebpf.SpecError, match=r"map a_onyl: not in object \(did you mean a_only"):
        spec.subset([], ["a_onyl"])
