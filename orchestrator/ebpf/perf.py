"""Reading a ``BPF_MAP_TYPE_PERF_EVENT_ARRAY`` from user space: one perf ring per CPU.

Programs write with ``bpf_perf_event_output(ctx, &map, BPF_F_CURRENT_CPU, data, size)``: the
sample goes to the perf event stored at the current CPU's index of the map. A reader opens
one ``PERF_COUNT_SW_BPF_OUTPUT`` software event per online CPU (``perf_event_open``),
``mmap``s its ring, and stores the event's fd in the map at that CPU's index.

Each ring is a control page (``struct perf_event_mmap_page``: ``data_head`` written by the
kernel, ``data_tail`` by us) and a power-of-two data area in which records wrap around. A
record is a ``struct perf_event_header`` (u32 type, u16 misc, u16 size), then for
``PERF_RECORD_SAMPLE`` with ``PERF_SAMPLE_RAW`` a u32 size and the bytes the program gave
(padded so the record stays 8-byte aligned), and for ``PERF_RECORD_LOST`` the number of
samples the kernel dropped because the ring was full. Layouts:
``include/uapi/linux/perf_event.h``; the kernel side is ``kernel/events/ring_buffer.c``.

The map's entries belong to the map *file* that stored them: the kernel removes them when
that file is released (``perf_event_fd_array_release``). A reader therefore opens a file of
its own for the map (by id), so closing it removes exactly its own entries. A second reader
of the same map takes the entries over (the last one to start gets the events).

Needs CAP_PERFMON (or CAP_SYS_ADMIN) for ``perf_event_open`` on every CPU, and CAP_BPF.
"""

from __future__ import annotations

import errno
import mmap
import select
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from orchestrator.ebpf import _sys
from orchestrator.ebpf._sys import Closing, MapType
from orchestrator.ebpf.errors import Error, NotSupportedError, SyscallError
from orchestrator.ebpf.maps import Map

__all__ = ["PerfReader", "PerfRecord"]

PERF_COUNT_SW_BPF_OUTPUT = 10  # enum perf_sw_ids
PERF_RECORD_LOST = 2  # enum perf_event_type
PERF_RECORD_SAMPLE = 9
_HEADER = struct.Struct("<IHH")  # struct perf_event_header
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_DATA_HEAD = 1024  # offsetof(struct perf_event_mmap_page, data_head)
_DATA_TAIL = 1032
_DATA_OFFSET = 1040
_DATA_SIZE = 1048


@dataclass(frozen=True, slots=True)
class PerfRecord:
    """A sample (``data``: the bytes the program wrote, padding included) or, when ``lost``
    is not 0, the news that the kernel dropped that many samples on ``cpu``'s full ring
    (the kernel tells it just before the next sample that fits)."""

    cpu: int
    data: bytes = b""
    lost: int = 0


def online_cpus(path: str = "/sys/devices/system/cpu/online") -> list[int]:
    """The online CPUs (``0-3,5``)."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return list(range(_sys.possible_cpus()))
    cpus: list[int] = []
    for part in text.split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


class _Ring:
    """One CPU's perf event and its mapped ring."""

    def __init__(self, cpu: int, fd: _sys.FD, pages: int) -> None:
        self.cpu = cpu
        self.fd = fd
        page = mmap.PAGESIZE
        self.mem = mmap.mmap(
            fd.raw, (1 + pages) * page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
        )
        offset = _U64.unpack_from(self.mem, _DATA_OFFSET)[0]
        size = _U64.unpack_from(self.mem, _DATA_SIZE)[0]
        self.offset = offset or page  # kernels before 4.1 leave these 0
        self.size = size or pages * page

    def close(self) -> None:
        self.mem.close()
        self.fd.close()

    def _read(self, pos: int, n: int) -> bytes:
        """``n`` bytes at ring position ``pos`` (records wrap around the end)."""
        start = self.offset + pos % self.size
        end = self.offset + self.size
        if start + n <= end:
            return self.mem[start : start + n]
        first = end - start
        return self.mem[start:end] + self.mem[self.offset : self.offset + n - first]

    def drain(self) -> Iterator[PerfRecord]:
        head = _U64.unpack_from(self.mem, _DATA_HEAD)[0]
        tail = _U64.unpack_from(self.mem, _DATA_TAIL)[0]
        while tail < head:
            rtype, _misc, size = _HEADER.unpack(self._read(tail, _HEADER.size))
            if size < _HEADER.size:  # corrupt: never loop on it
                tail = head
                break
            body = self._read(tail + _HEADER.size, size - _HEADER.size)
            tail += size
            if rtype == PERF_RECORD_SAMPLE and len(body) >= 4:
                (n,) = _U32.unpack_from(body, 0)
                yield PerfRecord(self.cpu, bytes(body[4 : 4 + n]))
            elif rtype == PERF_RECORD_LOST and len(body) >= 16:
                yield PerfRecord(self.cpu, lost=_U64.unpack_from(body, 8)[0])
            # the kernel may reuse the space as soon as data_tail moves past it
            _U64.pack_into(self.mem, _DATA_TAIL, tail)
        _U64.pack_into(self.mem, _DATA_TAIL, tail)


class PerfReader(Closing):
    """Reads the samples programs write to a perf event array, from every online CPU (or
    ``cpus``), with ``pages`` (a power of two) pages of ring per CPU. ``lost`` counts the
    samples the kernel dropped so far. Close it (or use ``with``): that removes its entries
    from the map. Needs Linux 4.4."""

    def __init__(self, m: Map, *, pages: int = 16, cpus: Iterable[int] | None = None) -> None:
        if m.type != MapType.PERF_EVENT_ARRAY:
            raise NotSupportedError(f"map {m.name}: not a perf event array ({m.type})")
        if pages <= 0 or pages & (pages - 1):
            raise Error(f"map {m.name}: perf ring of {pages} pages: not a power of two")
        self.name = m.name
        self.lost = 0
        self._rings: list[_Ring] = []
        wanted = sorted(set(cpus if cpus is not None else online_cpus()))
        slots = m.max_entries
        if not wanted or wanted[-1] >= slots:
            raise Error(
                f"map {m.name}: perf event array has {slots} slots, CPUs {wanted} need "
                f"{(wanted[-1] + 1) if wanted else 1}"
            )
        # a map file of our own: the entries we store go when it is closed
        try:
            self._map = Map.from_id(m.id)
        except SyscallError as err:
            raise err.replace(subject=f"map {m.name}", action="open for reading") from err
        self._map.name = m.name
        try:
            for cpu in wanted:
                ring = self._open(cpu, pages)
                if ring is not None:
                    self._rings.append(ring)
            if not self._rings:
                raise Error(f"map {m.name}: no CPU of {wanted} is online")
            self._poll = select.poll()
            for ring in self._rings:
                self._poll.register(ring.fd.raw, select.POLLIN)
        except BaseException:
            self.close()
            raise

    def _open(self, cpu: int, pages: int) -> _Ring | None:
        attr = _sys.PerfEventAttr(
            type=_sys.PERF_TYPE_SOFTWARE,
            config=PERF_COUNT_SW_BPF_OUTPUT,
            sample_type=_sys.PERF_SAMPLE_RAW,
            sample_period=1,
            wakeup_events=1,
        )
        try:
            fd = _sys.perf_event_open(attr, pid=-1, cpu=cpu)
        except SyscallError as err:
            if err.errno == errno.ENODEV:  # went offline meanwhile
                return None
            raise err.replace(
                subject=f"map {self.name}",
                action=f"perf_event_open on CPU {cpu}",
                hint="needs CAP_PERFMON",
            ) from err
        try:
            ring = _Ring(cpu, fd, pages)
        except OSError as err:
            fd.close()
            raise Error(f"map {self.name}: mmap perf ring of CPU {cpu}: {err.strerror}") from err
        try:
            _sys.ioctl(fd, _sys.PERF_EVENT_IOC_ENABLE)
            self._map.update_bytes(cpu.to_bytes(4, "little"), fd.raw.to_bytes(4, "little"))
        except BaseException:
            ring.close()
            raise
        return ring

    @property
    def cpus(self) -> list[int]:
        return [r.cpu for r in self._rings]

    def close(self) -> None:
        for ring in self._rings:
            ring.close()
        self._rings.clear()
        self._map.close()

    def drain(self) -> Iterator[PerfRecord]:
        """Every record available now, CPU by CPU."""
        if self._map.closed:
            raise Error(f"perf reader of {self.name}: closed")
        for ring in self._rings:
            for rec in ring.drain():
                self.lost += rec.lost
                yield rec

    def read(self, timeout: float | None = None) -> list[PerfRecord]:
        """Wait up to ``timeout`` seconds (None: forever) for records; return those there."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            records = list(self.drain())
            if records:
                return records
            wait_ms = -1
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                wait_ms = max(1, int(left * 1000))
            self._poll.poll(wait_ms)
