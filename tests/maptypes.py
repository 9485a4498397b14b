"""Every map type the kernel can pin, as a tiny object per type: one map ``m`` of that type,
a constant ``gen`` and a socket filter ``user`` that refers to ``m`` (so the program's map
ids show which map it really uses). For each type, how to put something in it from user
space and how to check that it is still there.

Used by the loader tests (``map_replacements``) and the reconciler tests (``preserve``,
``from: {collection}``, ``from: {pinned}``).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator import ebpf
from orchestrator.ebpf import Map, MapType
from orchestrator.ebpf.spec import MapSpec
from tests.netns import CGROUP2_ROOT

SO_COOKIE = 57

SOURCE = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct pair { __u64 a; __u32 b; };
struct lpm_v4 { __u32 prefixlen; __u8 addr[4]; };
struct inner {
    __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, __u32); __type(value, __u32);
    __uint(max_entries, 2);
};
struct { DECL } m SEC(".maps");
const volatile __u64 gen = 0;
SEC("socket") int user(void *ctx)
{
    void *p = &m;
    asm volatile("" : : "r"(p)); /* refer to m without using it */
    return gen;
}
char LICENSE[] SEC("license") = "GPL";
"""

# The inner map shape of the map-in-map kinds.
INNER = MapSpec("inner", MapType.ARRAY, 4, 4, 2)


@dataclass
class Fill:
    """What a test holds while a filled map must stay filled: sockets, fds, inner maps, a
    program for prog arrays."""

    stack: contextlib.ExitStack
    program: ebpf.Program | None = None


Checker = Callable[[Map], None]
Filler = Callable[[Map, Fill], Checker]


def number(v: object) -> object:
    """A value read back as an int: maps without BTF (opened by pin) give raw bytes."""
    return int.from_bytes(v, "little") if isinstance(v, bytes) else v


def _cookie(s: socket.socket) -> int:
    return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8), "little")


def _fd(fill: Fill, fd: int) -> int:
    fill.stack.callback(os.close, fd)
    return fd


def _keyed(key: object, value: object, expect: object | None = None) -> Filler:
    def fill(m: Map, _f: Fill) -> Checker:
        m[key] = value

        def check(m2: Map) -> None:
            assert number(m2[key]) == (value if expect is None else expect), m2

        return check

    return fill


def _percpu(m: Map, _f: Fill) -> Checker:
    m[1] = 7

    def check(m2: Map) -> None:
        got = m2[1]
        assert isinstance(got, list) and {number(v) for v in got} == {7}, got

    return check


def _pushed(m: Map, _f: Fill) -> Checker:
    m.push(3)

    def check(m2: Map) -> None:
        assert number(m2.peek()) == 3

    return check


def _bloom(m: Map, _f: Fill) -> Checker:
    m.push(11)

    def check(m2: Map) -> None:
        assert m2.peek(11) is True

    return check


def _lpm(m: Map, _f: Fill) -> Checker:
    key = (24).to_bytes(4, "little") + bytes([10, 1, 2, 0])
    m[key] = 5

    def check(m2: Map) -> None:
        assert number(m2[key]) == 5

    return check


def _devmap(m: Map, _f: Fill) -> Checker:
    lo = socket.if_nametoindex("lo")
    m[0] = lo

    def check(m2: Map) -> None:
        assert number(m2[0]) == lo

    return check


def _first_u32(v: object) -> object:
    """The first u32 of a struct value (typed: a dict; without BTF: bytes)."""
    if isinstance(v, bytes):
        return int.from_bytes(v[:4], "little")
    assert isinstance(v, dict), v
    return next(iter(v.values()))


def _devmap_hash(m: Map, _f: Fill) -> Checker:
    # struct bpf_devmap_val {u32 ifindex; union {int fd; u32 id} bpf_prog}, raw: maps
    # opened by pin may have no BTF
    lo = socket.if_nametoindex("lo")
    m[42] = lo.to_bytes(4, "little") + bytes(4)

    def check(m2: Map) -> None:
        assert _first_u32(m2[42]) == lo

    return check


def _cpumap(m: Map, _f: Fill) -> Checker:
    # struct bpf_cpumap_val {u32 qsize; union {int fd; u32 id} bpf_prog}
    m[0] = (64).to_bytes(4, "little") + bytes(4)

    def check(m2: Map) -> None:
        assert _first_u32(m2[0]) == 64

    return check


def _sockets(key: int) -> Filler:
    def fill(m: Map, f: Fill) -> Checker:
        a, b = socket.socketpair()
        f.stack.callback(a.close)
        f.stack.callback(b.close)
        m[key] = a.fileno()
        cookie = _cookie(a)

        def check(m2: Map) -> None:
            assert number(m2[key]) == cookie

        return check

    return fill


def _reuseport(m: Map, f: Fill) -> Checker:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    f.stack.callback(udp.close)
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    udp.bind(("127.0.0.1", 0))
    m[3] = udp.fileno()
    cookie = _cookie(udp)

    def check(m2: Map) -> None:
        assert number(m2[3]) == cookie

    return check


def _cgroup_array(m: Map, f: Fill) -> Checker:
    m[1] = _fd(f, os.open(CGROUP2_ROOT, os.O_RDONLY))

    def check(m2: Map) -> None:
        m2.delete(1)  # no lookups from user space: a delete finds the element or raises

    return check


def _storage(open_key: Callable[[Fill], int]) -> Filler:
    def fill(m: Map, f: Fill) -> Checker:
        key = open_key(f)
        m[key] = {"a": 5, "b": 6}

        def check(m2: Map) -> None:
            assert m2[key] == {"a": 5, "b": 6}

        return check

    return fill


def _socket_key(f: Fill) -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    f.stack.callback(s.close)
    return s.fileno()


def _prog_array(m: Map, f: Fill) -> Checker:
    assert f.program is not None
    m[1] = f.program
    pid = f.program.id

    def check(m2: Map) -> None:
        assert m2[1] == pid.to_bytes(4, "little")

    return check


def _map_in_map(m: Map, f: Fill) -> Checker:
    inner = f.stack.enter_context(Map.create(INNER))
    m[1] = inner
    iid = inner.id

    def check(m2: Map) -> None:
        assert m2[1] == iid.to_bytes(4, "little")

    return check


@dataclass(frozen=True)
class Kind:
    """One map type: the declaration of ``m`` and how to fill it (None: nothing user space
    can put in it: the kernel or a program writes it, or its elements need an attachment
    or an mmap)."""

    type: MapType
    decl: str
    fill: Filler | None = None

    @property
    def name(self) -> str:
        return self.type.name.lower()

    @property
    def source(self) -> str:
        return SOURCE.replace("DECL", self.decl)

    @property
    def holds_code(self) -> bool:
        """Its elements are programs or maps of one generation (no ``preserve``)."""
        return self.type in (MapType.PROG_ARRAY, MapType.ARRAY_OF_MAPS, MapType.HASH_OF_MAPS)


def _simple(t: str, key: str, value: str, n: int, extra: str = "") -> str:
    return (
        f"__uint(type, BPF_MAP_TYPE_{t}); __type(key, {key}); __type(value, {value}); "
        f"__uint(max_entries, {n});{extra}"
    )


_STORAGE = "__uint(map_flags, BPF_F_NO_PREALLOC); __type(key, int); __type(value, struct pair);"

KINDS = [
    Kind(MapType.HASH, _simple("HASH", "__u32", "__u64", 8), _keyed(1, 7)),
    Kind(MapType.ARRAY, _simple("ARRAY", "__u32", "__u64", 8), _keyed(1, 7)),
    Kind(MapType.PROG_ARRAY, _simple("PROG_ARRAY", "__u32", "__u32", 4), _prog_array),
    Kind(
        MapType.PERF_EVENT_ARRAY,
        "__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY); __type(key, __u32); __type(value, __u32);",
    ),
    Kind(MapType.PERCPU_HASH, _simple("PERCPU_HASH", "__u32", "__u64", 8), _percpu),
    Kind(MapType.PERCPU_ARRAY, _simple("PERCPU_ARRAY", "__u32", "__u64", 8), _percpu),
    Kind(MapType.STACK_TRACE, _simple("STACK_TRACE", "__u32", "__u64[127]", 16)),
    Kind(MapType.CGROUP_ARRAY, _simple("CGROUP_ARRAY", "__u32", "__u32", 4), _cgroup_array),
    Kind(MapType.LRU_HASH, _simple("LRU_HASH", "__u32", "__u64", 8), _keyed(1, 7)),
    Kind(MapType.LRU_PERCPU_HASH, _simple("LRU_PERCPU_HASH", "__u32", "__u64", 8), _percpu),
    Kind(
        MapType.LPM_TRIE,
        _simple("LPM_TRIE", "struct lpm_v4", "__u32", 16, " __uint(map_flags, BPF_F_NO_PREALLOC);"),
        _lpm,
    ),
    Kind(
        MapType.ARRAY_OF_MAPS,
        "__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS); __type(key, __u32); __uint(max_entries, 4);"
        " __array(values, struct inner);",
        _map_in_map,
    ),
    Kind(
        MapType.HASH_OF_MAPS,
        "__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS); __type(key, __u32); __uint(max_entries, 4);"
        " __array(values, struct inner);",
        _map_in_map,
    ),
    Kind(MapType.DEVMAP, _simple("DEVMAP", "__u32", "__u32", 4), _devmap),
    Kind(MapType.SOCKMAP, _simple("SOCKMAP", "__u32", "__u64", 4), _sockets(0)),
    Kind(MapType.CPUMAP, _simple("CPUMAP", "__u32", "struct bpf_cpumap_val", 1), _cpumap),
    Kind(MapType.XSKMAP, _simple("XSKMAP", "__u32", "__u32", 4)),
    Kind(MapType.SOCKHASH, _simple("SOCKHASH", "__u32", "__u64", 4), _sockets(77)),
    Kind(
        MapType.CGROUP_STORAGE,
        "__uint(type, BPF_MAP_TYPE_CGROUP_STORAGE);"
        " __type(key, struct bpf_cgroup_storage_key); __type(value, __u64);",
    ),
    Kind(
        MapType.REUSEPORT_SOCKARRAY,
        _simple("REUSEPORT_SOCKARRAY", "__u32", "__u64", 4),
        _reuseport,
    ),
    Kind(
        MapType.PERCPU_CGROUP_STORAGE,
        "__uint(type, BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE);"
        " __type(key, struct bpf_cgroup_storage_key); __type(value, __u64);",
    ),
    Kind(
        MapType.QUEUE,
        "__uint(type, BPF_MAP_TYPE_QUEUE); __type(value, __u32); __uint(max_entries, 4);",
        _pushed,
    ),
    Kind(
        MapType.STACK,
        "__uint(type, BPF_MAP_TYPE_STACK); __type(value, __u32); __uint(max_entries, 4);",
        _pushed,
    ),
    Kind(
        MapType.SK_STORAGE,
        "__uint(type, BPF_MAP_TYPE_SK_STORAGE); " + _STORAGE,
        _storage(_socket_key),
    ),
    Kind(
        MapType.DEVMAP_HASH,
        _simple("DEVMAP_HASH", "__u32", "struct bpf_devmap_val", 4),
        _devmap_hash,
    ),
    Kind(MapType.RINGBUF, "__uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 4096 * 4);"),
    Kind(
        MapType.INODE_STORAGE,
        "__uint(type, BPF_MAP_TYPE_INODE_STORAGE); " + _STORAGE,
        _storage(lambda f: _fd(f, os.open(Path(__file__).parent, os.O_RDONLY))),
    ),
    Kind(
        MapType.TASK_STORAGE,
        "__uint(type, BPF_MAP_TYPE_TASK_STORAGE); " + _STORAGE,
        _storage(lambda f: _fd(f, os.pidfd_open(os.getpid()))),
    ),
    Kind(
        MapType.BLOOM_FILTER,
        "__uint(type, BPF_MAP_TYPE_BLOOM_FILTER); __type(value, __u32);"
        " __uint(max_entries, 64); __uint(map_extra, 3);",
        _bloom,
    ),
    Kind(
        MapType.USER_RINGBUF,
        "__uint(type, BPF_MAP_TYPE_USER_RINGBUF); __uint(max_entries, 4096 * 4);",
    ),
    Kind(
        MapType.CGRP_STORAGE,
        "__uint(type, 32); " + _STORAGE,
        _storage(lambda f: _fd(f, os.open(CGROUP2_ROOT, os.O_RDONLY))),
    ),
    Kind(
        MapType.ARENA,
        # programs need the arena's user address: fixed here (map_extra) instead of mmap
        "__uint(type, 33); __uint(map_flags, BPF_F_MMAPABLE); __uint(max_entries, 2);"
        " __uint(map_extra, 0x40000000);",
    ),
]

# struct_ops maps are registered with the kernel, not shared data: they have tests of their
# own, and are neither preserved nor substituted.
assert {k.type for k in KINDS} == set(MapType) - {MapType.UNSPEC, MapType.STRUCT_OPS}


def kind_ids() -> list[str]:
    return [k.name for k in KINDS]


# (kind, filled) for every kind empty, and filled where user space can fill it
EMPTY_AND_FILLED = [
    pytest.param(k, filled, id=f"{k.name}-{'filled' if filled else 'empty'}")
    for k in KINDS
    for filled in (False, True)
    if not filled or k.fill is not None
]


def map_ids_of(program: ebpf.Program) -> tuple[int, ...]:
    return program.info().map_ids
