"""Every map type this kernel has, created by the loader from the BTF-defined declarations in
``bpf/map_types.o``, and the map API on each where the type allows it."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import ebpf
from orchestrator.ebpf import _sys as bpfsys
from orchestrator.ebpf._sys import MapFlags, MapType, UpdateFlags
from tests.conftest import obj
from tests.netns import Cgroup

pytestmark = pytest.mark.kernel

SO_COOKIE = 57
NOT_HERE = {MapType.UNSPEC, MapType.STRUCT_OPS}  # struct_ops maps belong to another test


@pytest.fixture
def coll(fd_guard: None) -> Iterator[ebpf.Collection]:
    with ebpf.Collection(ebpf.CollectionSpec.from_file(obj("map_types.o"))) as c:
        yield c


def ncpus() -> int:
    return bpfsys.possible_cpus()


def cookie(sock: socket.socket) -> int:
    return int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8), "little")


def test_every_map_type_is_created(coll: ebpf.Collection) -> None:
    spec = coll.spec
    created = {}
    for name, m in coll.maps.items():
        info = m.info()
        assert info.type == spec.maps[name].type, name
        created[MapType(info.type)] = info
    assert set(created) == set(MapType) - NOT_HERE
    # a perf event array without max_entries is sized to the possible CPUs
    assert created[MapType.PERF_EVENT_ARRAY].max_entries == ncpus()
    # BTF key/value types go to the kernel where it takes them, not where it refuses them
    assert created[MapType.HASH].btf_id != 0
    assert created[MapType.SK_STORAGE].btf_id != 0
    assert created[MapType.PROG_ARRAY].btf_id == 0
    assert created[MapType.LPM_TRIE].flags & MapFlags.NO_PREALLOC
    assert created[MapType.BLOOM_FILTER].map_extra == 3
    assert created[MapType.ARENA].flags & MapFlags.MMAPABLE
    assert created[MapType.RINGBUF].max_entries == 4096 * 4


def test_hash(coll: ebpf.Collection) -> None:
    h = coll.maps["m_hash"]
    h[1] = {"a": 10, "b": 11}
    h.update(2, {"a": 20, "b": 21}, UpdateFlags.NOEXIST)
    assert h[1] == {"a": 10, "b": 11}
    assert h.lookup(3, None) is None
    assert 2 in h and 3 not in h
    assert h.count_entries() == 2
    assert sorted(h.keys()) == [1, 2]  # type: ignore[type-var]
    assert dict(h.items()) == {1: {"a": 10, "b": 11}, 2: {"a": 20, "b": 21}}
    with pytest.raises(ebpf.KeyExistsError, match="m_hash: update 1"):
        h.update(1, {"a": 0, "b": 0}, UpdateFlags.NOEXIST)
    with pytest.raises(ebpf.KeyNotFoundError, match="m_hash: update 3"):
        h.update(3, {"a": 0, "b": 0}, UpdateFlags.EXIST)
    h.update(1, {"a": 12, "b": 13}, UpdateFlags.EXIST)
    assert h[1] == {"a": 12, "b": 13}
    del h[1]
    with pytest.raises(KeyError):  # KeyNotFoundError is a KeyError
        h[1]
    with pytest.raises(ebpf.KeyNotFoundError, match="key 1 not found"):
        h.delete(1)
    with pytest.raises(ebpf.SpecError, match="m_hash"):
        h[4] = {"a": 1, "nope": 2}

    assert h.batch_update([(k, {"a": k, "b": 2 * k}) for k in range(10, 30)]) == 20
    got = dict(h.batch_lookup(chunk=7))  # several chunks
    assert len(got) == 21
    assert got[29] == {"a": 29, "b": 58}
    assert h.batch_delete(range(10, 20)) == 10
    assert h.count_entries() == 11
    drained = h.batch_lookup(delete=True)
    assert len(drained) == 11
    assert h.count_entries() == 0
    h.batch_update([(k, {"a": k, "b": 0}) for k in range(60)])
    with pytest.raises(ebpf.SyscallError, match=r"m_hash: update 64: full \(64 entries\)"):
        for k in range(60, 100):
            h[k] = {"a": 0, "b": 0}
    h.clear()
    assert h.count_entries() == 0


def test_array(coll: ebpf.Collection) -> None:
    a = coll.maps["m_array"]
    assert a.count_entries() == 8
    assert list(a.values()) == [0] * 8
    a[3] = 33
    with pytest.raises(ebpf.KeyExistsError):
        a.update(3, 1, UpdateFlags.NOEXIST)
    a.update(3, 34, UpdateFlags.EXIST)
    assert a[3] == 34
    with pytest.raises(ebpf.NotSupportedError, match="m_array: array elements cannot be deleted"):
        del a[3]
    with pytest.raises(ebpf.SyscallError, match=r"index out of range \(the array has 8"):
        a[8] = 1
    with pytest.raises(ebpf.KeyNotFoundError):
        a[8]
    assert a.batch_update([(0, 100), (7, 700)]) == 2
    assert a.batch_lookup()[:1] + a.batch_lookup()[7:] == [(0, 100), (7, 700)]
    # raw batches whose buffers do not hold what they say: refused before any syscall
    with pytest.raises(
        ValueError,
        match=r"batch update of 2 pairs: got 4 key bytes and 16 value"
        r" bytes, want 8 \(2x4\) and 16 \(2x8\)",
    ):
        a.batch_update_bytes(b"\0" * 4, b"\0" * 16, 2)
    with pytest.raises(ValueError, match=r"batch delete of 3 keys: got 8 bytes, want 12 \(3x4\)"):
        a.batch_delete_bytes(b"\0" * 8, 3)
    assert a.batch_lookup()[7] == (7, 700)  # nothing written


@pytest.mark.parametrize("name", ["m_percpu_hash", "m_percpu_array", "m_lru_percpu_hash"])
def test_per_cpu_values(coll: ebpf.Collection, name: str) -> None:
    m = coll.maps[name]
    n = ncpus()
    m[1] = 5  # one value goes to every CPU
    assert m[1] == [5] * n
    m[2] = list(range(100, 100 + n))
    assert m[2] == list(range(100, 100 + n))
    with pytest.raises(ebpf.SpecError, match=f"per-cpu value needs {n} entries"):
        m[1] = [1] * (n + 1)
    got = dict(m.batch_lookup())
    assert got[1] == [5] * n
    assert got[2] == list(range(100, 100 + n))


def test_lru_hash_evicts(coll: ebpf.Collection) -> None:
    m = coll.maps["m_lru_hash"]
    for k in range(200):
        m[k] = k
    assert 0 < m.count_entries() <= 32
    assert m[199] == 199  # the newest survives
    assert 0 not in m  # the oldest went


def test_lpm_trie(coll: ebpf.Collection) -> None:
    t = coll.maps["m_lpm_trie"]

    def key(prefix: int, *addr: int) -> dict[str, object]:
        return {"prefixlen": prefix, "addr": bytes(addr)}

    t[key(8, 10, 0, 0, 0)] = 8
    t[key(16, 10, 1, 0, 0)] = 16
    assert t[key(32, 10, 1, 2, 3)] == 16  # longest match
    assert t[key(32, 10, 9, 9, 9)] == 8
    assert key(32, 11, 0, 0, 0) not in t
    assert t.count_entries() == 2
    del t[key(16, 10, 1, 0, 0)]
    assert t[key(32, 10, 1, 2, 3)] == 8


@pytest.mark.parametrize(("name", "order"), [("m_queue", [1, 2, 3, 4]), ("m_stack", [4, 3, 2, 1])])
def test_queue_and_stack(coll: ebpf.Collection, name: str, order: list[int]) -> None:
    m = coll.maps[name]
    with pytest.raises(ebpf.KeyNotFoundError, match=f"{name}: empty"):
        m.peek()
    for v in (1, 2, 3, 4):
        m.push(v)
    with pytest.raises(ebpf.SyscallError, match=r"push: full \(4 entries; push with"):
        m.push(5)
    assert m.peek() == order[0]
    assert [m.pop() for _ in range(4)] == order
    with pytest.raises(ebpf.KeyNotFoundError, match=f"{name}: empty"):
        m.pop()
    with pytest.raises(ebpf.NotSupportedError, match="no keys to iterate"):
        m.count_entries()
    # EXIST overwrites the oldest element when full
    for v in (1, 2, 3, 4, 5):
        m.push(v, UpdateFlags.EXIST)
    assert sorted(m.pop() for _ in range(4)) == [2, 3, 4, 5]  # type: ignore[type-var]


def test_bloom_filter(coll: ebpf.Collection) -> None:
    b = coll.maps["m_bloom_filter"]
    for v in (7, 11, 13):
        b.push(v)
    assert b.peek(7) is True
    assert 11 in b and 13 in b
    # false positives exist, but not for most absent values
    absent = sum(1 for v in range(1000, 1100) if v not in b)
    assert absent >= 90
    with pytest.raises(ebpf.SpecError, match="bloom filter peek needs a value"):
        b.peek()
    with pytest.raises(ebpf.NotSupportedError, match="no keys to iterate"):
        list(b.keys())


def test_local_storage(coll: ebpf.Collection, cgroup: Cgroup) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    pidfd = os.pidfd_open(os.getpid())
    inode = os.open(Path(__file__).parent, os.O_RDONLY)
    cg = os.open(cgroup.path, os.O_RDONLY)
    try:
        for name, fd in (
            ("m_sk_storage", sock.fileno()),
            ("m_task_storage", pidfd),
            ("m_inode_storage", inode),
            ("m_cgrp_storage", cg),
        ):
            m = coll.maps[name]
            with pytest.raises(ebpf.KeyNotFoundError):
                m[fd]
            m.update(fd, {"a": fd, "b": 7}, UpdateFlags.NOEXIST)
            assert m[fd] == {"a": fd, "b": 7}
            with pytest.raises(ebpf.KeyExistsError):
                m.update(fd, {"a": 0, "b": 0}, UpdateFlags.NOEXIST)
            with pytest.raises(ebpf.NotSupportedError, match=f"{name}: .* cannot be iterated"):
                list(m.keys())
            del m[fd]
            assert fd not in m
    finally:
        sock.close()
        for fd in (pidfd, inode, cg):
            os.close(fd)


def test_prog_array_and_maps_of_maps(coll: ebpf.Collection) -> None:
    pa = coll.maps["m_prog_array"]
    prog = coll.programs["map_touch"]
    pa[1] = prog
    assert pa[1] == prog.id.to_bytes(4, "little")  # lookups give the program id
    assert 0 not in pa
    assert pa.count_entries() == 4  # like every array, its keys are all the indexes
    del pa[1]
    assert 1 not in pa
    with pytest.raises(ebpf.KeyNotFoundError):
        del pa[1]

    inner_spec = coll.spec.maps["m_array_of_maps"].inner_map
    assert inner_spec is not None
    with ebpf.Map.create(inner_spec) as inner:
        for name in ("m_array_of_maps", "m_hash_of_maps"):
            outer = coll.maps[name]
            outer[2] = inner
            assert outer[2] == inner.id.to_bytes(4, "little")
            del outer[2]
            with pytest.raises(ebpf.SyscallError, match=f"{name}: update 2"):
                outer[2] = coll.maps["m_array"]  # not shaped like the inner map


def test_socket_maps(coll: ebpf.Collection) -> None:
    a, b = socket.socketpair()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sm, sh = coll.maps["m_sockmap"], coll.maps["m_sockhash"]
        sm[0] = a.fileno()
        sh[77] = b.fileno()
        assert sm[0] == cookie(a)  # lookups give the socket cookie
        assert dict(sh.items()) == {77: cookie(b)}
        del sm[0]
        assert 0 not in sm

        udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        udp.bind(("127.0.0.1", 0))
        ra = coll.maps["m_reuseport"]
        ra[3] = udp.fileno()
        assert ra[3] == cookie(udp)
        del ra[3]
    finally:
        for s in (a, b, udp):
            s.close()


def test_device_and_cpu_maps(coll: ebpf.Collection) -> None:
    lo = socket.if_nametoindex("lo")
    dm, dh = coll.maps["m_devmap"], coll.maps["m_devmap_hash"]
    dm[0] = lo
    assert dm[0] == lo
    dh[42] = {"ifindex": lo}
    assert dh[42] == {"ifindex": lo, "bpf_prog": {"fd": 0, "id": 0}}
    assert list(dh.keys()) == [42]
    cpu = coll.maps["m_cpumap"]
    cpu[0] = {"qsize": 64}
    assert cpu[0] == {"qsize": 64, "bpf_prog": {"fd": 0, "id": 0}}
    del cpu[0]
    # an xsk map holds AF_XDP sockets bound to a queue; none here: the slot is empty
    xsk = coll.maps["m_xskmap"]
    with pytest.raises(ebpf.SyscallError, match="m_xskmap: lookup"):
        xsk[0]


def test_cgroup_array(coll: ebpf.Collection, cgroup: Cgroup) -> None:
    ca = coll.maps["m_cgroup_array"]
    fd = os.open(cgroup.path, os.O_RDONLY)
    try:
        ca[1] = fd
        del ca[1]
        with pytest.raises(ebpf.KeyNotFoundError):
            del ca[1]
    finally:
        os.close(fd)


def test_event_and_trace_maps(coll: ebpf.Collection) -> None:
    with pytest.raises(ebpf.NotSupportedError, match="m_ringbuf: ringbuf maps have no keys"):
        coll.maps["m_ringbuf"].count_entries()
    with pytest.raises(ebpf.SyscallError, match="m_ringbuf: lookup"):
        coll.maps["m_ringbuf"].lookup(0)
    assert list(coll.maps["m_perf_event_array"].keys()) == list(range(ncpus()))
    assert coll.maps["m_stack_trace"].count_entries() == 0
    with pytest.raises(ebpf.KeyNotFoundError):
        coll.maps["m_stack_trace"][0]
    # cgroup storage elements exist only while a program using them is attached
    assert list(coll.maps["m_cgroup_storage"].keys()) == []
    assert list(coll.maps["m_percpu_cgroup_storage"].keys()) == []
