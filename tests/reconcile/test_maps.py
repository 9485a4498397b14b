"""Maps through manifests, against the real kernel: every map type the kernel can pin is
preserved across upgrades and substituted (``from: {collection}``, ``from: {pinned}``),
empty or filled, and the programs really use that very map (their map ids say so); pins
exist exactly where the manifest (or the rules in ``pin_reason``) puts them, and pinning or
unpinning a live map reloads nothing."""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator import ebpf
from orchestrator.ebpf import Map, Program
from orchestrator.manifest import ManifestError
from orchestrator.reconcile import Kind, Op
from tests import maptypes
from tests.conftest import BPF_DIR
from tests.reconcile.conftest import Env, map_alive

pytestmark = pytest.mark.kernel

Build = Callable[..., Path]


def manifest(
    env: Env, name: str, obj: Path, *, gen: int = 1, maps: str = "", file: str | None = None
) -> None:
    """A collection of ``obj`` with constant ``gen``; ``maps`` is the YAML of spec.maps."""
    maps_line = f"          maps: {maps}\n" if maps else ""
    env.write(
        file or name,
        f"""
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {{name: {name}}}
        spec:
          object: {obj}
          constants: {{gen: {gen}}}
{maps_line}""",
    )


def map_ids(env: Env, coll: str, prog: str = "user") -> tuple[int, ...]:
    """The ids of the maps the live program uses (read from the kernel, not the record)."""
    with Program.from_pin(env.root / coll / "progs" / prog) as p:
        return p.info().map_ids


def pin_of(env: Env, coll: str, name: str = "m") -> Path:
    return env.root / coll / "maps" / name


# ---------------------------------------------------------------------------- preserve

PRESERVABLE = [k for k in maptypes.KINDS if not k.holds_code]


@pytest.mark.parametrize("kind", PRESERVABLE, ids=[k.name for k in PRESERVABLE])
def test_preserve_keeps_every_map_type(
    env: Env, compile_bpf: Build, kind: maptypes.Kind, fd_guard: None
) -> None:
    """``preserve: true`` keeps the map (same id, the new programs use it) across upgrades,
    empty (an empty hash map once got a new id every upgrade, a ring buffer failed with "no
    keys to iterate") and filled (its contents stay)."""
    obj = compile_bpf(kind.source)
    r = env.reconciler()
    manifest(env, "keep", obj, gen=1, maps="{m: {preserve: true}}")
    r.apply(env.desired())
    st = r.status().get("keep")
    assert st is not None
    map_id, prog_id = st.map("m").id, st.program("user").id
    assert map_id in map_ids(env, "keep")

    manifest(env, "keep", obj, gen=2, maps="{m: {preserve: true}}")
    p = r.plan(env.desired())
    line = p.change("keep", Kind.MAP, "m")
    assert line is not None and line.op is Op.NOOP and "preserved" in line.reason
    r.apply(env.desired())
    st = r.status().get("keep")
    assert st is not None and st.condition == "Ready" and st.generation == 2
    assert st.map("m").id == map_id and st.program("user").id != prog_id
    assert map_id in map_ids(env, "keep")

    if kind.fill is None:
        return
    with contextlib.ExitStack() as stack:
        live = stack.enter_context(Map.from_pin(pin_of(env, "keep")))
        check = kind.fill(live, maptypes.Fill(stack))
        manifest(env, "keep", obj, gen=3, maps="{m: {preserve: true}}")
        r.apply(env.desired())
        st = r.status().get("keep")
        assert st is not None and st.generation == 3 and st.map("m").id == map_id
        assert map_id in map_ids(env, "keep")
        with Map.from_pin(pin_of(env, "keep")) as again:
            assert again.id == map_id
            check(again)
    assert not r.plan(env.desired()).has_changes


def test_preserving_does_not_walk_the_map(
    env: Env, compile_bpf: Build, monkeypatch: pytest.MonkeyPatch, fd_guard: None
) -> None:
    """Handing a preserved map to the next generation costs no element syscall, however
    many entries it holds."""
    from orchestrator.ebpf import _sys as bpfsys

    kind = next(k for k in maptypes.KINDS if k.type == ebpf.MapType.HASH)
    source = kind.source.replace("__uint(max_entries, 8)", "__uint(max_entries, 4096)")
    obj = compile_bpf(source)
    r = env.reconciler()
    manifest(env, "big", obj, gen=1, maps="{m: {preserve: true}}")
    r.apply(env.desired())
    with Map.from_pin(pin_of(env, "big")) as m:
        m.batch_update((i, i) for i in range(4000))
    manifest(env, "big", obj, gen=2, maps="{m: {preserve: true}}")
    desired = env.desired()
    walked: list[object] = []
    real = bpfsys.map_get_next_key

    def counting(*args: object) -> object:
        walked.append(args)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(bpfsys, "map_get_next_key", counting)
    r.apply(desired)
    monkeypatch.undo()
    assert walked == []
    with Map.from_pin(pin_of(env, "big")) as m:
        assert m.count_entries() == 4000


@pytest.mark.parametrize(
    "kind", [k for k in maptypes.KINDS if k.holds_code], ids=lambda k: str(k.name)
)
def test_preserve_is_refused_for_maps_of_one_generation(
    env: Env, compile_bpf: Build, kind: maptypes.Kind
) -> None:
    """A prog array or a map of maps holds programs or maps of one generation: keeping the
    old one's entries would mix generations, so ``preserve`` is a validation error that
    names the file, line and column."""
    obj = compile_bpf(kind.source)
    manifest(env, "gen", obj, maps="{m: {preserve: true}}")
    with pytest.raises(ManifestError) as info:
        env.desired()
    text = str(info.value)
    assert "gen.yaml:" in text and "spec.maps.m.preserve" in text
    assert "belongs to one generation" in text and "remove preserve" in text


def test_ring_buffer_readers_keep_reading_across_an_upgrade(
    env: Env, compile_bpf: Build, fd_guard: None
) -> None:
    """A preserved ring buffer keeps its map: a reader opened before the upgrade reads what
    the old generation wrote and what the new one writes, in order."""
    source = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 4096 * 4); } m SEC(".maps");
const volatile __u64 gen = 0;
SEC("socket") int user(struct __sk_buff *skb)
{
    __u64 v = gen;
    bpf_ringbuf_output(&m, &v, sizeof(v), 0);
    return 0;
}
char LICENSE[] SEC("license") = "GPL";
"""
    obj = compile_bpf(source)
    r = env.reconciler()

    def run() -> None:
        with Program.from_pin(env.root / "rb" / "progs" / "user") as p:
            p.test_run(bytes(64))

    manifest(env, "rb", obj, gen=1, maps="{m: {preserve: true}}")
    r.apply(env.desired())
    with (
        Map.from_pin(pin_of(env, "rb")) as ring,
        ebpf.RingBufReader(ring) as reader,
    ):
        run()
        manifest(env, "rb", obj, gen=2, maps="{m: {preserve: true}}")
        r.apply(env.desired())
        run()
        got = [int.from_bytes(rec, "little") for rec in reader.read(timeout=1.0)]
    assert got == [1, 2]


# ---------------------------------------------------------------------------- from


@pytest.mark.parametrize("kind", maptypes.KINDS, ids=maptypes.kind_ids())
def test_from_collection_gives_the_program_the_same_map(
    env: Env, compile_bpf: Build, kind: maptypes.Kind, fd_guard: None
) -> None:
    """A ``from: {collection}`` map is the source's very map, empty (an empty hash map was
    once silently replaced by a private one while status said "from collection/…") or
    filled; status shows the source's id, and the source is pinned because it is used."""
    obj = compile_bpf(kind.source)
    r = env.reconciler()
    manifest(env, "owner", obj)
    user_maps = "{m: {from: {collection: owner, map: m}}}"
    manifest(env, "user", obj, maps=user_maps)
    r.apply(env.desired())
    status = r.status()
    owner, user = status.get("owner"), status.get("user")
    assert owner is not None and user is not None and user.condition == "Ready"
    owner_id = owner.map("m").id
    assert owner.map("m").pin == os.fspath(pin_of(env, "owner"))  # pinned: user uses it
    assert user.map("m").id == owner_id and user.map("m").source == "collection/owner/m"
    assert owner_id in map_ids(env, "user") and owner_id in map_ids(env, "owner")
    assert not pin_of(env, "user").exists()
    assert not r.plan(env.desired()).has_changes

    if kind.fill is None:
        return
    with contextlib.ExitStack() as stack:
        live = stack.enter_context(Map.from_pin(pin_of(env, "owner")))
        program = stack.enter_context(Program.from_pin(env.root / "owner" / "progs" / "user"))
        check = kind.fill(live, maptypes.Fill(stack, program))
        manifest(env, "user", obj, gen=2, maps=user_maps)  # the user is reloaded
        r.apply(env.desired())
        user = r.status().get("user")
        assert user is not None and user.generation == 2 and user.map("m").id == owner_id
        assert owner_id in map_ids(env, "user")
        check(live)


@pytest.mark.parametrize("kind", maptypes.KINDS, ids=maptypes.kind_ids())
def test_from_pinned_gives_the_program_the_same_map(
    env: Env, pin_dir: Path, compile_bpf: Build, kind: maptypes.Kind, fd_guard: None
) -> None:
    """A ``from: {pinned}`` map is the foreign map itself, empty (a blocklist another tool
    fills later was once never seen, and every apply "repaired" the drift with yet another
    map) or filled; applies are stable, and the foreign map is neither written nor removed."""
    obj = compile_bpf(kind.source)
    spec = ebpf.CollectionSpec.from_file(obj)
    foreign = pin_dir / "foreign"
    with contextlib.ExitStack() as stack:
        donor = stack.enter_context(ebpf.Collection(spec))
        donor.maps["m"].pin(foreign)
        foreign_id = donor.maps["m"].id
        r = env.reconciler()
        user_maps = f"{{m: {{from: {{pinned: {foreign}}}}}}}"
        manifest(env, "user", obj, maps=user_maps)
        r.apply(env.desired())
        user = r.status().get("user")
        assert user is not None and user.condition == "Ready"
        assert user.map("m").id == foreign_id and user.map("m").source == f"pinned:{foreign}"
        assert foreign_id in map_ids(env, "user")
        p = r.plan(env.desired())
        assert not p.has_changes, p
        assert r.apply(env.desired()).applied is False

        check = None
        if kind.fill is not None:
            check = kind.fill(donor.maps["m"], maptypes.Fill(stack, donor.programs["user"]))
            manifest(env, "user", obj, gen=2, maps=user_maps)
            r.apply(env.desired())
            user = r.status().get("user")
            assert user is not None and user.generation == 2
            assert user.map("m").id == foreign_id and foreign_id in map_ids(env, "user")
        r.destroy()
        assert foreign.exists()
        with Map.from_pin(foreign) as again:
            assert again.id == foreign_id
            if check is not None:
                check(again)


# ---------------------------------------------------------------------------- pin

HASH_SOURCE = next(k for k in maptypes.KINDS if k.type == ebpf.MapType.HASH).source


def test_unpinned_maps_are_reached_through_their_programs(
    env: Env, compile_bpf: Build, fd_guard: None
) -> None:
    """Without ``pin`` a map has no pin: it lives with the programs that use it, status
    reads it through them, and the record lists it by id. A map no loaded program uses and
    nothing pins is not kept at all."""
    source = maptypes.SOURCE.replace(
        'struct { DECL } m SEC(".maps");',
        'struct { DECL } m SEC(".maps");\n'
        "struct { __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, __u32); __type(value, __u32);"
        ' __uint(max_entries, 1); } unused SEC(".maps");',
    ).replace("DECL", maptypes.KINDS[0].decl)
    obj = compile_bpf(source)
    r = env.reconciler()
    manifest(env, "plain", obj)
    p = r.plan(env.desired())
    m_line, unused_line = p.change("plain", Kind.MAP, "m"), p.change("plain", Kind.MAP, "unused")
    assert m_line is not None and "not pinned (its programs hold it)" in m_line.reason
    assert unused_line is not None and unused_line.op is Op.NOOP
    assert "not kept: no loaded program uses it" in unused_line.reason
    r.apply(env.desired())
    assert os.listdir(env.root / "plain" / "maps") == []
    st = r.status().get("plain")
    assert st is not None and st.condition == "Ready"
    assert [m.name for m in st.maps] == [".rodata", "m"]
    m = st.map("m")
    assert m.pin == "" and m.type == "hash" and m.entries == 0
    assert m.id in map_ids(env, "plain") and map_alive(m.id)
    with Map.from_id(m.id) as live:
        live[1] = 7
    st = r.status().get("plain")
    assert st is not None and st.map("m").entries == 1
    assert not r.plan(env.desired()).has_changes


def test_toggling_pin_pins_and_unpins_in_place(
    env: Env, compile_bpf: Build, fd_guard: None
) -> None:
    """``pin`` false -> true pins the live map (same id, same contents) and true -> false
    removes the pin; neither reloads a program."""
    obj = compile_bpf(HASH_SOURCE)
    r = env.reconciler()
    manifest(env, "tog", obj)
    r.apply(env.desired())
    st = r.status().get("tog")
    assert st is not None
    ids = (st.program("user").id, st.map("m").id)
    with Map.from_id(ids[1]) as live:
        live[3] = 9

    manifest(env, "tog", obj, maps="{m: {pin: true}}")
    p = r.plan(env.desired())
    line = p.change("tog", Kind.MAP, "m")
    assert line is not None and line.op is Op.UPDATE and line.reason.startswith("pin:")
    assert str(line) == (
        f"~ map tog/m: pin: live map (id {ids[1]}) is pinned at maps/m in place (pin: true); "
        "nothing is reloaded"
    )
    prog_line = p.change("tog", Kind.PROGRAM, "user")
    assert prog_line is not None and prog_line.op is Op.NOOP
    assert p.counts() == (0, 1, 0)
    r.apply(env.desired())
    st = r.status().get("tog")
    assert st is not None and st.condition == "Ready" and st.generation == 2
    assert (st.program("user").id, st.map("m").id) == ids
    assert st.map("m").pin == os.fspath(pin_of(env, "tog"))
    with Map.from_pin(pin_of(env, "tog")) as pinned:
        assert pinned.id == ids[1] and pinned[3] == 9
    assert not r.plan(env.desired()).has_changes

    manifest(env, "tog", obj, maps="{m: {pin: false}}")
    p = r.plan(env.desired())
    line = p.change("tog", Kind.MAP, "m")
    assert line is not None and line.op is Op.UPDATE and line.reason.startswith("unpin:")
    r.apply(env.desired())
    st = r.status().get("tog")
    assert st is not None and st.condition == "Ready"
    assert (st.program("user").id, st.map("m").id) == ids
    assert not pin_of(env, "tog").exists() and st.map("m").pin == ""
    with Map.from_id(ids[1]) as live:
        assert live[3] == 9
    assert not r.plan(env.desired()).has_changes


def test_pins_are_observed(env: Env, compile_bpf: Build, fd_guard: None) -> None:
    """A pin the manifest asks for that is missing is drift, and so is one it does not ask
    for; the extra one is removed without a reload."""
    obj = compile_bpf(HASH_SOURCE)
    r = env.reconciler()
    manifest(env, "obs", obj)
    r.apply(env.desired())
    st = r.status().get("obs")
    assert st is not None
    ids = (st.program("user").id, st.map("m").id)
    with Map.from_id(ids[1]) as live:
        live.pin(pin_of(env, "obs"))  # someone pins it by hand
    st = r.status().get("obs")
    assert st is not None and st.condition == "Drifted"
    assert "unexpected pin maps/m" in st.message
    p = r.plan(env.desired())
    line = p.change("obs", Kind.MAP, "m")
    assert line is not None and line.op is Op.UPDATE and "is removed (drift)" in line.reason
    r.apply(env.desired())
    st = r.status().get("obs")
    assert st is not None and st.condition == "Ready"
    assert (st.program("user").id, st.map("m").id) == ids
    assert not pin_of(env, "obs").exists()

    manifest(env, "obs", obj, maps="{m: {pin: true}}")
    r.apply(env.desired())
    pin_of(env, "obs").unlink()
    st = r.status().get("obs")
    assert st is not None and st.condition == "Drifted" and "pin maps/m is missing" in st.message
    r.apply(env.desired())
    st = r.status().get("obs")
    assert st is not None and st.condition == "Ready" and pin_of(env, "obs").exists()


def test_a_substitution_source_is_pinned_in_place(
    env: Env, compile_bpf: Build, fd_guard: None
) -> None:
    """When another collection starts to use a map (``from``), the owner's live map is
    pinned without a reload; when it stops, the pin goes again."""
    obj = compile_bpf(HASH_SOURCE)
    r = env.reconciler()
    manifest(env, "owner", obj)
    r.apply(env.desired())
    st = r.status().get("owner")
    assert st is not None and st.map("m").pin == ""
    ids = (st.program("user").id, st.map("m").id)

    manifest(env, "user", obj, maps="{m: {from: {collection: owner, map: m}}}")
    p = r.plan(env.desired())
    line = p.change("owner", Kind.MAP, "m")
    assert line is not None and line.op is Op.UPDATE
    assert "(collection user uses it (from))" in line.reason
    r.apply(env.desired())
    status = r.status()
    owner, user = status.get("owner"), status.get("user")
    assert owner is not None and user is not None
    assert (owner.program("user").id, owner.map("m").id) == ids
    assert owner.map("m").pin != "" and user.map("m").id == ids[1]
    assert ids[1] in map_ids(env, "user")
    assert not r.plan(env.desired()).has_changes

    env.remove("user")
    p = r.plan(env.desired(), prune=True)
    line = p.change("owner", Kind.MAP, "m")
    assert line is not None and line.op is Op.UPDATE and line.reason.startswith("unpin:")
    r.apply(env.desired(), prune=True)
    owner = r.status().get("owner")
    assert owner is not None and owner.condition == "Ready"
    assert (owner.program("user").id, owner.map("m").id) == ids
    assert not pin_of(env, "owner").exists()


def test_pin_false_where_a_pin_is_needed_is_refused(env: Env, compile_bpf: Build) -> None:
    """An explicit ``pin: false`` on a map that must be pinned is a validation error that
    names the file, line and column: a map another collection substitutes, a prog array,
    a preserved map."""
    env.write(
        "shared",
        """
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {name: shared-owner}
        spec:
          object: @BPF@/shared_owner.o
          maps:
            shared_stats: {pin: false}
        ---
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {name: shared-user}
        spec:
          object: @BPF@/shared_user.o
          maps:
            shared_stats:
              from: {collection: shared-owner, map: shared_stats}
        """,
    )
    with pytest.raises(ManifestError) as info:
        env.desired()
    text = str(info.value)
    assert "shared.yaml:8:" in text and "spec.maps.shared_stats.pin" in text
    assert "collection shared-user uses it" in text and "remove pin: false" in text
    env.remove("shared")

    prog_array = next(k for k in maptypes.KINDS if k.type == ebpf.MapType.PROG_ARRAY)
    manifest(env, "pa", compile_bpf(prog_array.source), maps="{m: {pin: false}}")
    with pytest.raises(ManifestError) as info:
        env.desired()
    text = str(info.value)
    assert "pa.yaml:" in text and "spec.maps.m.pin" in text
    assert "a prog array is always pinned" in text
    env.remove("pa")

    manifest(env, "pres", compile_bpf(HASH_SOURCE), maps="{m: {pin: false, preserve: true}}")
    with pytest.raises(ManifestError, match="a preserved map is pinned"):
        env.desired()
    env.remove("pres")

    manifest(env, "tm", compile_bpf(TIMERS), maps="{timers: {pin: false}}")
    with pytest.raises(ManifestError) as info:
        env.desired()
    text = str(info.value)
    assert "tm.yaml:" in text and "spec.maps.timers.pin" in text
    assert "values hold timers is always pinned" in text


def test_tail_calls_work_after_the_applying_process_is_gone(env: Env, fd_guard: None) -> None:
    """A prog array is pinned whatever ``pin`` says (the kernel empties a prog array that
    no pin or fd holds), so tail calls still work once ``bpforch apply`` has exited; the
    plan says why it is pinned."""
    import subprocess
    import sys

    env.write(
        "tail",
        f"""
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {{name: tail}}
        spec:
          object: {BPF_DIR}/tailcall.o
        """,
    )
    line = env.reconciler().plan(env.desired()).change("tail", Kind.MAP, "jump_table")
    assert line is not None and "pinned (a prog array is always pinned" in line.reason
    argv = ["--bpffs-root", str(env.root), "--state-dir", str(env.state_dir)]
    subprocess.run(
        [sys.executable, "-m", "orchestrator", "apply", *argv, str(env.manifests)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    st = env.reconciler().status().get("tail")
    assert st is not None and st.condition == "Ready"
    assert st.map("jump_table").pin != "" and st.map("hits").pin == ""
    with Program.from_pin(env.root / "tail" / "progs" / "xdp_entry") as entry:
        assert entry.test_run(data=bytes([0]) + bytes(63)).retval == 2  # XDP_PASS via slot 0
        assert entry.test_run(data=bytes([2]) + bytes(63)).retval == 1  # XDP_DROP via slot 2
    with Map.from_id(st.map("hits").id) as hits:
        assert hits[0] == 1 and hits[2] == 1


TIMERS = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct elem { struct bpf_timer t; };
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, __u32); __type(value, struct elem);
    __uint(max_entries, 1);
} timers SEC(".maps");
const volatile __u64 gen = 0;
SEC("xdp") int arm(struct xdp_md *ctx)
{
    __u32 k = 0;
    struct elem *e = bpf_map_lookup_elem(&timers, &k);
    if (!e)
        return 100;
    long r = bpf_timer_init(&e->t, &timers, 1 /* CLOCK_MONOTONIC */);
    return r < 0 ? -r : gen;
}
char LICENSE[] SEC("license") = "GPL";
"""


def test_maps_holding_timers_are_pinned(env: Env, compile_bpf: Build, fd_guard: None) -> None:
    """The kernel cancels a map's timers, and bpf_timer_init fails with EPERM, once no pin or
    fd holds the map: a map whose values hold a bpf_timer is pinned whatever ``pin`` says,
    so its programs can still start timers after the applying process is gone."""
    from tests.reconcile.test_drift import apply_in_subprocess

    manifest(env, "tm", compile_bpf(TIMERS))
    line = env.reconciler().plan(env.desired()).change("tm", Kind.MAP, "timers")
    assert line is not None and "pinned (its values hold timers" in line.reason
    apply_in_subprocess(env)
    assert pin_of(env, "tm", "timers").exists()
    with Program.from_pin(env.root / "tm" / "progs" / "arm") as arm:
        assert arm.test_run(bytes(64)).retval == 1  # gen: bpf_timer_init succeeded
        assert arm.test_run(bytes(64)).retval == 16  # EBUSY: the timer is set up already


PERF = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct {
    __uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY); __type(key, __u32); __type(value, __u32);
} m SEC(".maps");
const volatile __u64 gen = 0;
SEC("socket") int user(struct __sk_buff *skb)
{
    __u64 v = gen;
    long r = bpf_perf_event_output(skb, &m, BPF_F_CURRENT_CPU, &v, sizeof(v));
    return r < 0 ? -r : 0;
}
char LICENSE[] SEC("license") = "GPL";
"""


def _perf_samples(ring: mmap.mmap) -> list[int]:
    """The u64 of every PERF_RECORD_SAMPLE (raw data) in a one-data-page perf ring."""
    page = mmap.PAGESIZE
    head = int.from_bytes(ring[1024:1032], "little")  # perf_event_mmap_page.data_head
    out, pos = [], 0
    while pos < head:
        at = page + pos % page
        kind, size = int.from_bytes(ring[at : at + 4], "little"), ring[at + 6] | ring[at + 7] << 8
        if kind == 9:  # PERF_RECORD_SAMPLE: header, u32 raw size, raw data
            out.append(int.from_bytes(ring[at + 12 : at + 20], "little"))
        pos += size
    return out


def test_perf_event_array_entries_live_with_the_fd_that_put_them(
    env: Env, compile_bpf: Build, fd_guard: None
) -> None:
    """A preserved perf event array keeps its map across an upgrade: the reader's entry
    keeps working for the new programs and the reader reads both generations' events. The
    entry goes when the map fd that put it there is closed (the kernel ties it to that
    file), not with a generation."""
    from orchestrator.ebpf import _sys as bpfsys

    r = env.reconciler()
    obj = compile_bpf(PERF)
    manifest(env, "perf", obj, gen=1, maps="{m: {preserve: true}}")
    r.apply(env.desired())

    def output() -> int:
        with Program.from_pin(env.root / "perf" / "progs" / "user") as p:
            return p.test_run(bytes(64)).retval

    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})  # BPF_F_CURRENT_CPU: the program runs on CPU 0
    try:
        attr = bpfsys.PerfEventAttr(
            type=bpfsys.PERF_TYPE_SOFTWARE, config=10, sample_type=bpfsys.PERF_SAMPLE_RAW
        )  # PERF_COUNT_SW_BPF_OUTPUT
        attr.sample_period = attr.wakeup_events = 1
        with (
            bpfsys.perf_event_open(attr, -1, 0) as event,
            mmap.mmap(event.raw, 2 * mmap.PAGESIZE) as ring,
            contextlib.ExitStack() as stack,
        ):
            assert output() == 2  # ENOENT: nothing in slot 0 yet
            writer = stack.enter_context(Map.from_pin(pin_of(env, "perf")))
            writer[0] = event.raw
            assert output() == 0
            map_id = writer.id
            manifest(env, "perf", obj, gen=2, maps="{m: {preserve: true}}")
            r.apply(env.desired())
            st = r.status().get("perf")
            assert st is not None and st.generation == 2 and st.map("m").id == map_id
            assert output() == 0  # the new generation writes through the same entry
            assert _perf_samples(ring) == [1, 2]
            stack.close()  # the writer's fd
            assert output() == 2  # the entry went with the fd that put it there
    finally:
        os.sched_setaffinity(0, cpus)


def test_a_from_map_that_is_not_its_sources_is_drift(
    env: Env, compile_bpf: Build, fd_guard: None
) -> None:
    """Status tells the truth about substitutions: a user whose recorded map is not the map
    its source records (here: a record edited by hand) is Drifted, and the next apply
    reloads it with the source's map."""
    import json

    obj = compile_bpf(HASH_SOURCE)
    r = env.reconciler()
    manifest(env, "owner", obj)
    manifest(env, "user", obj, maps="{m: {from: {collection: owner, map: m}}}")
    r.apply(env.desired())
    path = env.state_dir / "state.json"
    doc = json.loads(path.read_text())
    owner_id = doc["collections"]["owner"]["maps"]["m"]["id"]
    doc["collections"]["user"]["maps"]["m"]["id"] = owner_id + 1000
    path.write_text(json.dumps(doc))
    user = r.status().get("user")
    assert user is not None and user.condition == "Drifted"
    assert f"uses map id {owner_id + 1000}, but owner/m is map id {owner_id}" in user.message
    p = r.plan(env.desired())
    assert p.change("user", Kind.PROGRAM, "user").op is Op.REPLACE  # type: ignore[union-attr]
    r.apply(env.desired())
    user = r.status().get("user")
    assert user is not None and user.condition == "Ready" and user.map("m").id == owner_id
    assert owner_id in map_ids(env, "user")


def test_a_user_of_a_recreated_map_is_planned_from_its_object(
    env: Env, compile_bpf: Build, fd_guard: None
) -> None:
    """A collection whose manifest did not change is reloaded when a map it takes from
    another collection is recreated; its plan lines come from its object like any other
    reload (a map nothing holds or pins is "not kept", a pinned one is recreated at its
    pin), and the apply does what they say."""
    owner_obj = compile_bpf(HASH_SOURCE)
    user_obj = compile_bpf(
        HASH_SOURCE.replace(
            "char LICENSE",
            "struct { __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, __u32); "
            '__type(value, __u32); __uint(max_entries, 1); } mine SEC(".maps"), '
            'unused SEC(".maps");\n\nchar LICENSE',
        )
    )
    r = env.reconciler()
    manifest(env, "owner", owner_obj)
    manifest(
        env, "user", user_obj, maps="{m: {from: {collection: owner, map: m}}, mine: {pin: true}}"
    )
    r.apply(env.desired())
    before = r.status().get("user")
    assert before is not None and before.condition == "Ready"

    manifest(env, "owner", owner_obj, gen=2)  # its map m is not preserved: recreated
    p = r.plan(env.desired())
    head = p.change("user", Kind.COLLECTION, "user")
    assert head is not None and head.op is Op.UPDATE
    assert "map m follows owner/m, which is recreated" in head.reason
    unused = p.change("user", Kind.MAP, "unused")
    assert unused is not None and unused.op is Op.NOOP and "not kept" in unused.reason
    mine = p.change("user", Kind.MAP, "mine")
    assert mine is not None and mine.op is Op.REPLACE and "pinned (pin: true)" in mine.reason
    r.apply(env.desired())
    status = r.status()
    owner, user = status.get("owner"), status.get("user")
    assert owner is not None and user is not None and user.condition == "Ready"
    assert user.map("m").id == owner.map("m").id != before.map("m").id
    assert owner.map("m").id in map_ids(env, "user")
    assert user.map("mine").id != before.map("mine").id
    with Map.from_pin(pin_of(env, "user", "mine")) as pinned:
        assert pinned.id == user.map("mine").id
    assert [m.name for m in user.maps if m.name == "unused"] == []
    assert not r.plan(env.desired()).has_changes


TWO_PROGRAMS = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, __u32); __type(value, __u64);
         __uint(max_entries, 1); } ma SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, __u32); __type(value, __u64);
         __uint(max_entries, 1); } mb SEC(".maps");
static __always_inline void hit(void *m)
{
    __u32 k = 0;
    __u64 *v = bpf_map_lookup_elem(m, &k);
    if (v)
        __sync_fetch_and_add(v, 1);
}
SEC("xdp") int a(struct xdp_md *ctx) { hit(&ma); return XDP_PASS; }
SEC("xdp") int b(struct xdp_md *ctx) { hit(&mb); return XDP_PASS; }
char LICENSE[] SEC("license") = "GPL";
"""


def test_the_maps_recorded_by_id_are_those_the_loaded_programs_hold(
    env: Env, compile_bpf: Build, fd_guard: None
) -> None:
    """The stage records without a pin exactly the maps its loaded programs hold, as the
    plan read them from the object: all of them for the whole object, only the bound
    programs' with a program binding (a map named in the manifest but used by no bound
    program is loaded and not kept)."""
    from orchestrator.reconcile.actions import Stage
    from orchestrator.reconcile.observe import held_maps

    obj = compile_bpf(TWO_PROGRAMS)
    env.write(
        "whole",
        f"""
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {{name: whole}}
        spec: {{object: {obj}}}
        """,
    )
    env.write(
        "bound",
        f"""
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {{name: bound}}
        spec: {{object: {obj}, programs: [a], maps: {{mb: {{max_entries: 2}}}}}}
        """,
    )
    r = env.reconciler()
    p = r.plan(env.desired())
    stages = {a.collection: a for a in p.actions if isinstance(a, Stage)}
    spec = env.store.snapshot().get(obj).spec
    assert stages["whole"].held == held_maps(spec, ["a", "b"]) == {"ma", "mb"}
    assert stages["bound"].held == held_maps(spec, ["a"]) == {"ma"}
    r.apply(env.desired())
    st = r.status()
    whole, bound = st.get("whole"), st.get("bound")
    assert whole is not None and whole.condition == "Ready"
    assert bound is not None and bound.condition == "Ready"
    assert sorted(m.name for m in whole.maps) == ["ma", "mb"]
    assert [m.name for m in bound.maps] == ["ma"]
    assert bound.map("ma").id in map_ids(env, "bound", "a")
    for m in whole.maps:
        assert m.pin == "" and map_alive(m.id)
    assert not r.plan(env.desired()).has_changes
