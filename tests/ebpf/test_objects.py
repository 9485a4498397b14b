"""The shipped objects in ``bpf/``: each loads into the kernel and behaves as its source says,
seen through test runs, tracepoint hits and map reads — also after ``rewrite_constants`` and
``map_replacements``. A rebuild with ``make -C bpf`` must give the same specs, so the
committed ``.o`` files cannot go stale silently."""

from __future__ import annotations

import ctypes
import os
import struct
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from orchestrator import ebpf
from orchestrator.ebpf import _sys as bpfsys
from orchestrator.ebpf.collection import load_subset
from tests.conftest import BPF_DIR, obj, require_tool

pytestmark = pytest.mark.kernel

XDP_ABORTED, XDP_DROP, XDP_PASS = 0, 1, 2
TC_ACT_OK, TC_ACT_SHOT = 0, 2
ETH_HLEN = 14
SKB_CTX_SIZE = 192  # sizeof(struct __sk_buff)
SKB_MARK_OFFSET = 8
TRACEFS = Path("/sys/kernel/tracing")
_libc = ctypes.CDLL(None, use_errno=True)
_NR_GETTID = 186


def spec_of(name: str) -> ebpf.CollectionSpec:
    return ebpf.CollectionSpec.from_file(obj(f"{name}.o"))


def udp_packet(dport: int, *, ethertype: int = 0x0800, proto: int = 17) -> bytes:
    eth = b"\x02" * 6 + b"\x04" * 6 + struct.pack("!H", ethertype)
    ip = bytes([0x45, 0, 0, 28, 0, 0, 0, 0, 64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2])
    udp = struct.pack("!HHHH", 40000, dport, 8, 0)
    return eth + ip + udp


@contextmanager
def tracepoint(prog: ebpf.Program, group: str, name: str) -> Iterator[None]:
    """Attach ``prog`` to a tracepoint through a perf event for the duration of the block."""
    tp_id = int((TRACEFS / "events" / group / name / "id").read_text())
    attr = bpfsys.PerfEventAttr(type=bpfsys.PERF_TYPE_TRACEPOINT, config=tp_id)
    attr.sample_period = 1
    attr.wakeup_events = 1
    with bpfsys.perf_event_open(attr, pid=-1, cpu=0) as pfd:
        bpfsys.ioctl(pfd, bpfsys.PERF_EVENT_IOC_SET_BPF, prog.fd.raw)
        bpfsys.ioctl(pfd, bpfsys.PERF_EVENT_IOC_ENABLE)
        yield


def gettid() -> int:
    return int(_libc.syscall(_NR_GETTID))


# --------------------------------------------------------------------- the contract objects


def test_xdp_counter(fd_guard: None) -> None:
    spec = spec_of("xdp_counter")
    assert set(spec.programs) == {"xdp_count"}
    assert spec.programs["xdp_count"].type == ebpf.ProgType.XDP
    counters = spec.maps["counters"]
    assert (counters.type, counters.key_size, counters.value_size, counters.max_entries) == (
        ebpf.MapType.ARRAY,
        4,
        8,
        4,
    )
    with ebpf.Collection(spec) as coll:
        prog = coll.programs["xdp_count"]
        assert prog.test_run(bytes(64)).retval == XDP_PASS
        assert prog.test_run(bytes(100)).retval == XDP_PASS
        assert dict(coll.maps["counters"].items()) == {0: 2, 1: 164, 2: 0, 3: 0}

    upgraded = spec.copy()
    upgraded.rewrite_constants({"verdict": XDP_DROP, "version": 7})
    with ebpf.Collection(upgraded) as coll:
        assert coll.programs["xdp_count"].test_run(bytes(60)).retval == XDP_DROP
        assert dict(coll.maps["counters"].items()) == {0: 1, 1: 60, 2: 7, 3: 0}
    # the original spec still has the shipped defaults
    assert spec.variables["verdict"].value == XDP_PASS
    assert spec.variables["version"].value == 0


def test_xdp_counter_with_a_replaced_map(fd_guard: None) -> None:
    spec = spec_of("xdp_counter")
    with ebpf.Map.create(spec.maps["counters"]) as mine:
        mine[0] = 1000
        opts = ebpf.CollectionOptions(map_replacements={"counters": mine})
        with ebpf.Collection(spec, opts) as coll:
            coll.programs["xdp_count"].test_run(bytes(64))
            assert coll.maps["counters"].id == mine.id
        assert mine[0] == 1001
        assert mine[1] == 64


def test_tc_filter(fd_guard: None) -> None:
    spec = spec_of("tc_filter")
    ports = spec.maps["blocked_ports"]
    assert (ports.type, ports.key_size, ports.value_size, ports.max_entries) == (
        ebpf.MapType.HASH,
        2,
        1,
        1024,
    )
    with ebpf.Collection(spec) as coll:
        prog = coll.programs["tc_ingress"]
        assert prog.info().type == ebpf.ProgType.SCHED_CLS
        coll.maps["blocked_ports"][53] = 1
        assert prog.test_run(udp_packet(53)).retval == TC_ACT_SHOT
        assert prog.test_run(udp_packet(54)).retval == TC_ACT_OK
        assert prog.test_run(udp_packet(53, proto=6)).retval == TC_ACT_OK  # TCP
        assert prog.test_run(udp_packet(53, ethertype=0x0806)).retval == TC_ACT_OK  # ARP
        # an "IPv6" packet shorter than an IPv6 header is refused by the kernel's test run
        with pytest.raises(ebpf.SyscallError, match=r"tc_ingress: .* \(check the input"):
            prog.test_run(udp_packet(53, ethertype=0x86DD))
        assert dict(coll.maps["stats"].items()) == {0: 3, 1: 1}
        del coll.maps["blocked_ports"][53]
        assert prog.test_run(udp_packet(53)).retval == TC_ACT_OK


def test_tc_filter_with_a_prefilled_replacement(fd_guard: None) -> None:
    spec = spec_of("tc_filter")
    with ebpf.Map.create(spec.maps["blocked_ports"]) as blocked:
        blocked.update(8080, 1)
        blocked.update(9090, 1)
        spec.rewrite_maps({"blocked_ports": blocked})
        with ebpf.Collection(spec) as coll:
            prog = coll.programs["tc_ingress"]
            assert prog.test_run(udp_packet(8080)).retval == TC_ACT_SHOT
            assert prog.test_run(udp_packet(9090)).retval == TC_ACT_SHOT
            assert prog.test_run(udp_packet(53)).retval == TC_ACT_OK
            assert coll.maps["stats"][1] == 2


def test_tp_counter_counts_only_the_target(fd_guard: None) -> None:
    spec = spec_of("tp_counter")
    prog_spec = spec.programs["count_getppid"]
    assert prog_spec.type == ebpf.ProgType.TRACEPOINT
    spec.rewrite_constants({"target_tgid": os.getpid()})
    with ebpf.Collection(spec) as coll:
        with tracepoint(coll.programs["count_getppid"], "syscalls", "sys_enter_getppid"):
            for _ in range(5):
                os.getppid()
            # a child's getppid is another tgid: not counted
            subprocess.run(["sh", "-c", "echo $PPID"], check=True, capture_output=True)
        assert coll.maps["calls"][0] == 5


def test_tp_counter_default_counts_every_process(fd_guard: None) -> None:
    with ebpf.Collection(spec_of("tp_counter")) as coll:
        with tracepoint(coll.programs["count_getppid"], "syscalls", "sys_enter_getppid"):
            for _ in range(3):
                os.getppid()
        # other processes may call getppid too: at least ours were counted
        calls = coll.maps["calls"][0]
        assert isinstance(calls, int)
        assert calls >= 3


def test_cgroup_egress(fd_guard: None) -> None:
    with ebpf.Collection(spec_of("cgroup_egress")) as coll:
        prog = coll.programs["cg_egress"]
        assert prog.info().type == ebpf.ProgType.CGROUP_SKB
        assert prog.test_run(bytes(64)).retval == 1
        assert prog.test_run(bytes(100)).retval == 1
        # test runs hand the program the packet without its ethernet header
        assert dict(coll.maps["egress_stats"].items()) == {0: 2, 1: 164 - 2 * ETH_HLEN}


def test_shared_user_substitutes_the_owners_map(fd_guard: None) -> None:
    owner_spec, user_spec = spec_of("shared_owner"), spec_of("shared_user")
    owner_spec.maps["shared_stats"].compatible_with(user_spec.maps["shared_stats"])
    with ebpf.Collection(owner_spec) as owner:
        shared = owner.maps["shared_stats"]
        opts = ebpf.CollectionOptions(map_replacements={"shared_stats": shared})
        with ebpf.Collection(user_spec, opts) as user:
            assert user.programs["count_gettid"].info().map_ids == (shared.id,)
            with (
                tracepoint(owner.programs["count_getpid"], "syscalls", "sys_enter_getpid"),
                tracepoint(user.programs["count_gettid"], "syscalls", "sys_enter_gettid"),
            ):
                for _ in range(4):
                    os.getpid()
                    gettid()
            # other processes may call these too
            getpids, gettids = shared[0], shared[1]
            assert isinstance(getpids, int)
            assert isinstance(gettids, int)
            assert getpids >= 4
            assert gettids >= 4
            assert shared[2] == shared[3] == 0


# --------------------------------------------------------------------- feature objects


GLOBALS_OUT = {
    "c_u8": 0,
    "c_s16": 1,
    "c_s32": 2,
    "c_u64": 3,
    "c_name": 4,
    "c_point": 5,
    "c_point.tag": 6,
    "c_table": 7,
    "c_enabled": 8,
    "c_extra": 9,
    "weigh": 10,
    "scale": 11,
    "d_runs": 12,
    "d_last": 13,
    "d_greeting": 14,
    "d_custom": 15,
}


def u64(v: int) -> int:
    return v & (1 << 64) - 1


def test_globals_spec() -> None:
    spec = spec_of("globals")
    assert set(spec.programs) == {"xdp_first", "xdp_second", "sock_len", "tc_mark"}
    # two programs share the "xdp" section
    assert spec.programs["xdp_first"].section == spec.programs["xdp_second"].section == "xdp"
    assert spec.programs["sock_len"].type == ebpf.ProgType.SOCKET_FILTER
    assert spec.programs["tc_mark"].type == ebpf.ProgType.SCHED_CLS
    data_maps = {n for n, m in spec.maps.items() if m.is_data_section}
    assert data_maps == {".rodata", ".rodata.extra", ".data", ".data.custom", ".bss"}
    for name in (".rodata", ".rodata.extra"):
        assert spec.maps[name].flags & ebpf.MapFlags.RDONLY_PROG
    consts = {n for n, v in spec.variables.items() if v.constant}
    assert consts == {
        "c_u8",
        "c_s16",
        "c_s32",
        "c_u64",
        "c_name",
        "c_point",
        "c_table",
        "c_enabled",
        "c_extra",
    }
    v = spec.variables
    assert v["c_name"].value == b"globals".ljust(16, b"\0")
    assert v["c_point"].value == {"x": 3, "y": -4, "tag": b"pt\0\0"}
    assert v["c_table"].value == [10, 20, 30, 40]
    assert v["c_s16"].value == -2
    assert v["d_greeting"].value == b"hello\0\0\0"
    assert v["d_last"].value == {"x": 1, "y": 2, "tag": b"dat\0"}
    assert v["b_lens"].value == [0, 0, 0, 0]
    assert (v["d_runs"].section, v["b_sum"].section, v["d_custom"].section) == (
        ".data",
        ".bss",
        ".data.custom",
    )


def test_globals_behaviour(fd_guard: None) -> None:
    spec = spec_of("globals")
    with ebpf.Collection(spec) as coll:
        first, second = coll.programs["xdp_first"], coll.programs["xdp_second"]
        assert first.test_run(bytes(64)).retval == XDP_PASS
        out = dict(coll.maps["out"].items())
        assert out[0] == 0xAB
        assert out[1] == u64(-2)
        assert out[2] == u64(-100)
        assert out[3] == 0x1122334455667788
        assert out[4] == ord("g") | ord("l") << 8 | ord("s") << 16
        assert out[5] == 3 | u64(-4) << 32 & u64(-1)
        assert out[6] == ord("p") | ord("t") << 8
        assert out[7] == 100
        assert out[8] == 1
        assert out[9] == 77
        assert out[10] == 64 * 3 + 0xAB  # static subprogram in .text
        assert out[11] == u64(64 * -100)  # global function
        # .data and .bss are written by the program and readable from user space
        bss = coll.maps[".bss"][0]
        assert isinstance(bss, bytes)
        assert struct.unpack_from("<Q4I2i", bss, 0) == (64, 64, 0, 0, 0, 64, -64)
        assert second.test_run(bytes(64)).retval == XDP_DROP
        out = dict(coll.maps["out"].items())
        assert out[12] == 6  # d_runs = 5 + one run of xdp_first
        assert out[13] == 3
        assert out[14] == ord("h") | ord("o") << 8
        assert out[15] == 9
        second.test_run(bytes(64))
        assert coll.maps["out"][15] == 10  # .data.custom is writable
        # socket filter: the skb has no ethernet header in a test run
        assert coll.programs["sock_len"].test_run(bytes(64)).retval == (64 - ETH_HLEN) * 3
        res = coll.programs["tc_mark"].test_run(bytes(64), ctx=bytes(SKB_CTX_SIZE))
        assert res.retval == 0
        assert struct.unpack_from("<i", res.ctx, SKB_MARK_OFFSET)[0] == 2 * -100 + 77


def test_globals_after_rewrite_constants(fd_guard: None) -> None:
    spec = spec_of("globals")
    rewritten = spec.copy()
    rewritten.rewrite_constants(
        {
            "c_u8": 7,
            "c_s16": -300,
            "c_s32": 3,
            "c_u64": 1 << 40,
            "c_name": "zq",
            "c_point": {"x": -1, "y": 9, "tag": b"ab\0\0"},
            "c_table": [1, 2, 3, 4],
            "c_enabled": False,
            "c_extra": 5,
        }
    )
    with ebpf.Collection(rewritten) as coll:
        assert coll.programs["xdp_first"].test_run(bytes(32)).retval == XDP_DROP
        out = dict(coll.maps["out"].items())
        assert out[0] == 7
        assert out[1] == u64(-300)
        assert out[2] == 3
        assert out[3] == 1 << 40
        assert out[4] == ord("z") | ord("q") << 8  # the rest of the string is zeroed
        assert out[5] == u64(-1) & 0xFFFFFFFF | 9 << 32
        assert out[6] == ord("a") | ord("b") << 8
        assert out[7] == 10
        assert out[8] == 0
        assert out[9] == 5
        assert out[10] == 32 * 3 + 7
        assert out[11] == 32 * 3
        res = coll.programs["tc_mark"].test_run(bytes(64), ctx=bytes(SKB_CTX_SIZE))
        assert struct.unpack_from("<i", res.ctx, SKB_MARK_OFFSET)[0] == 2 * 3 + 5
    # the copied-from spec is untouched, and bad values change nothing
    assert spec.variables["c_u8"].value == 0xAB
    with pytest.raises(ebpf.ConstantError, match="d_runs"):
        spec.rewrite_constants({"d_runs": 1})  # .data is not a constant
    with pytest.raises(ebpf.ConstantError, match="c_name"):
        spec.rewrite_constants({"c_u8": 1, "c_name": "x" * 17})
    assert spec.variables["c_u8"].value == 0xAB


def test_tailcall(fd_guard: None) -> None:
    spec = spec_of("tailcall")
    table = spec.maps["jump_table"]
    assert table.type == ebpf.MapType.PROG_ARRAY
    assert [(e.key, e.value) for e in table.contents] == [(0, "tail_pass"), (2, "tail_drop")]
    with ebpf.Collection(spec) as coll:
        entry = coll.programs["xdp_entry"]
        jt = coll.maps["jump_table"]
        # user-space lookups in a prog array give program ids
        assert jt[0] == coll.programs["tail_pass"].id.to_bytes(4, "little")
        assert jt[2] == coll.programs["tail_drop"].id.to_bytes(4, "little")
        assert 1 not in jt
        assert entry.test_run(b"\x00" + bytes(63)).retval == XDP_PASS
        assert entry.test_run(b"\x02" + bytes(63)).retval == XDP_DROP
        assert entry.test_run(b"\x01" + bytes(63)).retval == XDP_ABORTED  # empty slot
        assert entry.test_run(b"\x04" + bytes(63)).retval == XDP_PASS  # 4 & 3 == 0
        assert dict(coll.maps["hits"].items()) == {0: 2, 1: 0, 2: 1, 3: 1}
        # replace slot 1 at run time
        jt[1] = coll.programs["tail_drop"]
        assert entry.test_run(b"\x01" + bytes(63)).retval == XDP_DROP


def test_map_in_map(fd_guard: None) -> None:
    spec = spec_of("map_in_map")
    outer = spec.maps["outer_array"]
    assert outer.inner_map is not None
    assert (outer.inner_map.type, outer.inner_map.max_entries) == (ebpf.MapType.ARRAY, 2)
    assert [(e.key, e.value) for e in outer.contents] == [(0, "inner_a"), (3, "inner_b")]
    assert [(e.key, e.value) for e in spec.maps["outer_hash"].contents] == [(5, "inner_b")]
    with ebpf.Collection(spec) as coll:
        prog = coll.programs["mim_read"]
        coll.maps["inner_a"][0] = 11
        coll.maps["inner_b"][0] = 22
        assert prog.test_run(b"\x00" + bytes(63)).retval == 11
        assert prog.test_run(b"\x03" + bytes(63)).retval == 22
        assert prog.test_run(b"\x85" + bytes(63)).retval == 22  # outer_hash[5]
        assert prog.test_run(b"\x01" + bytes(63)).retval == 1001  # empty slot
        assert prog.test_run(b"\x86" + bytes(63)).retval == 1001
        assert coll.maps["outer_array"][0] == coll.maps["inner_a"].id.to_bytes(4, "little")
        # put another inner map into a slot at run time
        with ebpf.Map.create(outer.inner_map) as extra:
            extra[0] = 33
            coll.maps["outer_hash"][6] = extra
        assert prog.test_run(b"\x86" + bytes(63)).retval == 33


def test_pinned_by_name(pin_dir: Path, fd_guard: None) -> None:
    spec = spec_of("pinned")
    assert spec.maps["pinned_runs"].pinning == ebpf.PinType.BY_NAME
    assert spec.maps["local_runs"].pinning == ebpf.PinType.NONE
    opts = ebpf.CollectionOptions(pin_path=pin_dir)
    with ebpf.Collection(spec, opts) as first:
        first.programs["sk_count"].test_run(bytes(64))
        with ebpf.Collection(spec, opts) as second:
            assert second.maps["pinned_runs"].id == first.maps["pinned_runs"].id
            assert second.maps["local_runs"].id != first.maps["local_runs"].id
            second.programs["sk_count"].test_run(bytes(64))
            assert second.maps["pinned_runs"][0] == 2
            assert second.maps["local_runs"][0] == 1
    assert sorted(p.name for p in pin_dir.iterdir()) == ["pinned_runs"]
    with ebpf.Map.from_pin(pin_dir / "pinned_runs") as m:
        assert m[0] == 2


def test_pinned_refuses_an_incompatible_pin(pin_dir: Path, fd_guard: None) -> None:
    spec = spec_of("pinned")
    wrong = spec.maps["pinned_runs"].copy()
    wrong.pinning = ebpf.PinType.NONE
    wrong.max_entries = 8
    with ebpf.Map.create(wrong) as m:
        m.pin(pin_dir / "pinned_runs")
    with pytest.raises(ebpf.MapIncompatibleError, match="max entries 8, spec wants 1"):
        ebpf.Collection(spec, ebpf.CollectionOptions(pin_path=pin_dir))
    assert sorted(p.name for p in pin_dir.iterdir()) == ["pinned_runs"]


def test_legacy_maps(fd_guard: None) -> None:
    spec = spec_of("legacy_maps")
    proto, totals = spec.maps["proto_count"], spec.maps["totals"]
    assert (proto.section, totals.section) == ("maps", "maps")
    assert (proto.type, proto.key_size, proto.value_size, proto.max_entries) == (
        ebpf.MapType.HASH,
        4,
        8,
        256,
    )
    assert proto.flags == ebpf.MapFlags.NO_PREALLOC
    # definitions of different sizes: each is read at its symbol's size
    assert proto.extra == b""
    assert totals.extra == bytes(8)
    assert (totals.type, totals.max_entries) == (ebpf.MapType.ARRAY, 2)
    with ebpf.Collection(spec) as coll:
        prog = coll.programs["leg_count"]
        assert prog.test_run(udp_packet(53)).retval == 1
        assert prog.test_run(udp_packet(53)).retval == 1
        # no BTF for legacy maps: keys and values are bytes; skb->protocol is big-endian
        ip = struct.pack("<I", 0x0008)
        assert dict(coll.maps["proto_count"].items()) == {ip: struct.pack("<Q", 2)}
        total = 2 * (len(udp_packet(53)) - ETH_HLEN)
        assert coll.maps["totals"][struct.pack("<I", 0)] == struct.pack("<Q", total)


# ------------------------------------------------ objects in cilium/ebpf's conventions


def test_cilium_sections(fd_guard: None) -> None:
    """Section names libbpf refuses, read as cilium/ebpf reads them."""
    spec = spec_of("cilium_sections")
    kinds = {n: (p.type, p.attach_type, p.attach_to) for n, p in spec.programs.items()}
    assert kinds == {
        "skb_len": (ebpf.ProgType.SOCKET_FILTER, None, ""),
        "socket_filter": (ebpf.ProgType.SOCKET_FILTER, None, ""),
        "xdp_pass": (ebpf.ProgType.XDP, None, ""),
        "classifier": (ebpf.ProgType.SCHED_CLS, None, ""),
        "lookup": (ebpf.ProgType.SK_LOOKUP, ebpf.AttachType.SK_LOOKUP, "pass"),
    }
    packet = udp_packet(9)
    with ebpf.Collection(spec) as coll:
        assert set(coll.programs) == set(kinds)
        progs = coll.programs
        assert progs["socket_filter"].test_run(packet).retval == len(packet) - ETH_HLEN
        assert progs["skb_len"].test_run(packet).retval == len(packet) - ETH_HLEN
        assert progs["xdp_pass"].test_run(packet).retval == XDP_PASS
        assert progs["classifier"].test_run(packet).retval == TC_ACT_OK
        seen = coll.maps["seen"]
        assert [seen[i] for i in range(4)] == [1, 1, 1, 0]  # skb_len counts nothing


def test_old_clang(fd_guard: None) -> None:
    """Untyped symbols, a subprogram reached through the .text section symbol and by a
    relative call, .rodata through its section symbol, legacy maps, a version section."""
    spec = spec_of("old_clang")
    assert sorted(spec.programs) == ["old_socket", "old_xdp"]
    assert spec.programs["old_socket"].kernel_version == 0x050400
    assert spec.programs["old_socket"].license == "GPL"
    shapes = {n: (m.type, m.key_size, m.value_size, m.max_entries) for n, m in spec.maps.items()}
    assert shapes == {
        "counts": (ebpf.MapType.ARRAY, 4, 8, 1),
        "lengths": (ebpf.MapType.HASH, 4, 8, 16),
        ".rodata": (ebpf.MapType.ARRAY, 4, 8, 1),
    }
    with ebpf.Collection(spec) as coll:
        assert coll.programs["old_socket"].test_run(udp_packet(9)).retval == 82
        assert coll.programs["old_socket"].test_run(udp_packet(9)).retval == 82
        assert coll.programs["old_xdp"].test_run(udp_packet(9)).retval == XDP_PASS
        counts = coll.maps["counts"]
        assert counts[struct.pack("<I", 0)] == struct.pack("<Q", 2)


def test_unresolved_fails_only_its_program(fd_guard: None) -> None:
    """Loading everything fails on asm_const, naming the instruction and the symbol, and
    leaves nothing behind; the other program loads on its own."""
    spec = spec_of("unresolved")
    (u,) = spec.programs["asm_const"].unresolved
    assert (u.insn, u.symbol) == (0, "MY_CONST")
    assert spec.programs["counted"].unresolved == ()
    with pytest.raises(ebpf.UnresolvedReferenceError) as info:
        ebpf.Collection(spec)
    assert str(info.value) == (
        "program asm_const: instruction 0: symbol MY_CONST is defined in no section of the "
        "object (define it, or declare it __ksym or __kconfig)"
    )
    assert (info.value.program, info.value.insn, info.value.symbol) == ("asm_const", 0, "MY_CONST")

    class Counted:
        counted: ebpf.Program = ebpf.bind("counted")
        hits: ebpf.Map = ebpf.bind("hits")

    objs = spec.load_and_assign(Counted())
    try:
        assert objs.counted.test_run(udp_packet(9)).retval == 0
        assert objs.hits[0] == 1
    finally:
        ebpf.close_all(objs)

    class Both:
        counted: ebpf.Program = ebpf.bind("counted")
        asm_const: ebpf.Program = ebpf.bind("asm_const")

    with pytest.raises(ebpf.UnresolvedReferenceError, match="program asm_const: instruction 0"):
        spec.load_and_assign(Both())


SHORT_LEGACY = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct short_def { unsigned int type, key_size, value_size, max_entries; };
struct short_def tiny SEC("maps") = { BPF_MAP_TYPE_ARRAY, 4, 4, 1 };
char LICENSE[] SEC("license") = "GPL";
"""


def test_legacy_definition_shorter_than_bpf_map_def(compile_bpf: Callable[..., Path]) -> None:
    with pytest.raises(ebpf.ParseError, match="map tiny: legacy definition of 16 bytes"):
        ebpf.CollectionSpec.from_file(compile_bpf(SHORT_LEGACY))


# --------------------------------------------------------------------- the objects are fresh


def _summary(spec: ebpf.CollectionSpec) -> object:
    maps = {
        name: (
            m.type,
            m.key_size,
            m.value_size,
            m.max_entries,
            m.flags,
            m.pinning,
            m.extra,
            [
                (e.key, bytes(e.value) if not isinstance(e.value, str) else e.value)
                for e in m.contents
            ],
            m.inner_map.name if m.inner_map is not None else None,
        )
        for name, m in spec.maps.items()
    }
    progs = {
        name: (p.type, p.attach_type, p.section, p.license, p.instructions)
        for name, p in spec.programs.items()
    }
    variables = {name: (v.section, v.offset, v.size, v.raw) for name, v in spec.variables.items()}
    return maps, progs, variables


def test_committed_objects_match_a_rebuild(tmp_path: Path, pin_dir: Path, fd_guard: None) -> None:
    require_tool("clang")
    make = require_tool("make")
    subprocess.run(
        [make, "-s", "-C", str(BPF_DIR), f"OUT={tmp_path}"],
        check=True,
        capture_output=True,
        text=True,
    )
    sources = sorted(p.stem for p in [*BPF_DIR.glob("*.c"), *BPF_DIR.glob("*.s")])
    assert len(sources) >= 14
    for name in sources:
        committed = BPF_DIR / f"{name}.o"
        assert committed.exists(), f"{committed} is not built: run make -C bpf and commit it"
        fresh = ebpf.CollectionSpec.from_file(tmp_path / f"{name}.o")
        assert _summary(fresh) == _summary(ebpf.CollectionSpec.from_file(committed)), (
            f"bpf/{name}.o is stale: run make -C bpf and commit it"
        )
        # every program loads, except those that refer to what the object does not define
        # (bpf/unresolved.c, on purpose)
        loadable = [n for n, p in fresh.programs.items() if not p.unresolved]
        assert len(loadable) == len(fresh.programs) - (name == "unresolved")
        opts = ebpf.CollectionOptions(pin_path=pin_dir)
        with load_subset(fresh, opts, loadable, fresh.maps) as coll:
            assert set(coll.programs) == set(loadable)
