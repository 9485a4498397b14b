"""Reading a ``BPF_MAP_TYPE_RINGBUF`` map from user space (Linux 5.8).

The kernel exposes a ring buffer through ``mmap`` of its map fd: the first page holds the
consumer position (written by us), the next page the producer position (written by the
kernel), followed by the data area mapped twice in a row so that a record never wraps.
Each record starts with an 8-byte header: ``u32 len`` (bit 31: still being written, bit 30:
discarded) and ``u32 page offset``; records are 8-byte aligned. The map fd is pollable
(readable when data is available). Layout: ``kernel/bpf/ringbuf.c`` and
``Documentation/bpf/ringbuf.rst``.

Python reads of the positions are plain 8-byte loads; on x86-64 (total store order) that
gives the acquire/release ordering the protocol needs.
"""

from __future__ import annotations

import mmap
import select
import struct
import time
from collections.abc import Iterator

from orchestrator.ebpf._sys import Closing, MapType
from orchestrator.ebpf.errors import Error, NotSupportedError
from orchestrator.ebpf.maps import Map

__all__ = ["RingBufReader"]

_BUSY = 1 << 31
_DISCARD = 1 << 30
_HDR = 8
_U64 = struct.Struct("<Q")


class RingBufReader(Closing):
    """Consumes records from a ring buffer map. It maps the map's memory and keeps its own
    duplicate of the fd; close it (or use ``with``) when done. The map may be closed
    independently."""

    def __init__(self, ringbuf: Map) -> None:
        if ringbuf.type != MapType.RINGBUF:
            raise NotSupportedError(f"map {ringbuf.name}: not a ring buffer ({ringbuf.type})")
        size = ringbuf.max_entries
        page = mmap.PAGESIZE
        if size <= 0 or size & (size - 1) or size % page:
            raise Error(f"map {ringbuf.name}: ring buffer size {size} is not a page multiple")
        self.name = ringbuf.name
        self._fd = ringbuf.fd.dup()
        self._mask = size - 1
        try:
            self._cons = mmap.mmap(
                self._fd.raw, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0
            )
            try:
                self._prod = mmap.mmap(
                    self._fd.raw, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
                )
            except BaseException:
                self._cons.close()
                raise
        except OSError as err:
            self._fd.close()
            raise Error(f"map {ringbuf.name}: mmap ring buffer: {err.strerror}") from err
        except BaseException:
            self._fd.close()
            raise
        self._data_off = page
        self._poll = select.poll()
        self._poll.register(self._fd.raw, select.POLLIN)

    def close(self) -> None:
        if self._fd.closed:
            return
        self._prod.close()
        self._cons.close()
        self._fd.close()

    def available(self) -> int:
        """Bytes produced and not consumed yet (headers and padding included)."""
        prod = _U64.unpack_from(self._prod, 0)[0]
        cons = _U64.unpack_from(self._cons, 0)[0]
        return int(prod - cons)

    def drain(self) -> Iterator[bytes]:
        """Yield every complete record available now (discarded ones are skipped)."""
        if self._fd.closed:
            raise Error(f"ring buffer {self.name}: reader is closed")
        cons = _U64.unpack_from(self._cons, 0)[0]
        while True:
            prod = _U64.unpack_from(self._prod, 0)[0]
            if cons >= prod:
                return
            pos = self._data_off + (cons & self._mask)
            length = struct.unpack_from("<I", self._prod, pos)[0]
            if length & _BUSY:
                return  # the producer has not committed this record yet
            n = length & ~(_BUSY | _DISCARD)
            data = bytes(self._prod[pos + _HDR : pos + _HDR + n])
            cons += (n + _HDR + 7) & ~7
            _U64.pack_into(self._cons, 0, cons)
            if not length & _DISCARD:
                yield data

    def read(self, timeout: float | None = None) -> list[bytes]:
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
