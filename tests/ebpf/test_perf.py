"""The perf event array reader (ebpf.PerfReader): samples from every CPU's ring, records
that wrap around a ring's end, lost-sample counts, and entries that go with the reader."""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator import ebpf
from orchestrator.ebpf.errors import Error, NotSupportedError
from orchestrator.ebpf.perf import online_cpus

pytestmark = pytest.mark.kernel

PERF_C = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct sample { __u32 seq; __u32 cpu; char text[20]; };

struct { __uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY); __uint(key_size, 4);
		__uint(value_size, 4); } events SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, __u32); __type(value, __u32);
		__uint(max_entries, 1); } seq SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, __u32); __type(value, __s64);
		__uint(max_entries, 1); } last_ret SEC(".maps");

SEC("xdp")
int emit(struct xdp_md *ctx)
{
	__u32 zero = 0;
	__u32 *n = bpf_map_lookup_elem(&seq, &zero);
	__s64 *ret = bpf_map_lookup_elem(&last_ret, &zero);
	struct sample s = {.text = "hello perf"};

	if (!n || !ret)
		return XDP_ABORTED;
	s.seq = *n;
	*n += 1;
	s.cpu = bpf_get_smp_processor_id();
	*ret = bpf_perf_event_output(ctx, &events, BPF_F_CURRENT_CPU, &s, sizeof(s));
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
"""


@pytest.fixture
def coll(compile_bpf: Callable[..., Path]) -> ebpf.Collection:
    spec = ebpf.CollectionSpec.from_file(compile_bpf(PERF_C))
    with ebpf.Collection(spec) as c:
        yield c


@contextlib.contextmanager
def on_cpu(cpu: int) -> Iterator[None]:
    """Run the block on ``cpu`` (test runs of XDP programs run where the caller runs)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def samples(reader: ebpf.PerfReader, want: int) -> list[ebpf.PerfRecord]:
    got: list[ebpf.PerfRecord] = []
    for _ in range(50):
        got += reader.read(timeout=0.1)
        if sum(1 for r in got if not r.lost) + reader.lost >= want:
            break
    return got


def test_samples_arrive_from_every_cpu_with_their_bytes(coll: ebpf.Collection) -> None:
    prog, events = coll.programs["emit"], coll.maps["events"]
    with ebpf.PerfReader(events, pages=4) as reader:
        assert reader.cpus == online_cpus()
        for cpu in reader.cpus:
            with on_cpu(cpu):
                for _ in range(3):
                    assert prog.test_run(bytes(64)).retval == 2
        got = samples(reader, 3 * len(reader.cpus))
    assert reader.lost == 0
    assert len(got) == 3 * len(online_cpus())
    seqs = []
    for rec in got:
        seq, cpu, text = struct.unpack_from("<II20s", rec.data)
        assert cpu == rec.cpu  # written to the ring of the CPU it ran on
        assert text.rstrip(b"\0") == b"hello perf"
        assert len(rec.data) >= 28  # the sample, padded to keep the ring 8-byte aligned
        seqs.append(seq)
    assert sorted(seqs) == list(range(len(got)))


def test_records_wrap_around_the_ring_and_lost_samples_are_counted(
    coll: ebpf.Collection,
) -> None:
    prog, events = coll.programs["emit"], coll.maps["events"]
    with ebpf.PerfReader(events, pages=1, cpus=[0]) as reader:
        # 4096 bytes of ring take 102 samples of 40 bytes: the rest of 300 is dropped
        with on_cpu(0):
            prog.test_run(bytes(64), repeat=300)
        kept = [r for r in reader.read(timeout=1) if not r.lost]
        assert len(kept) == 102 and reader.lost == 0
        # the kernel reports the loss with the next sample that fits the drained ring
        with on_cpu(0):
            prog.test_run(bytes(64))
        [lost, sample] = reader.read(timeout=1)
        assert (lost.cpu, lost.lost, lost.data) == (0, 198, b"")
        assert reader.lost == 198
        assert struct.unpack_from("<I", sample.data)[0] == 300
        # drained, the ring takes new samples again, across its end
        for _ in range(5):
            with on_cpu(0):
                prog.test_run(bytes(64), repeat=60)
            more = samples(reader, 60)
            assert len(more) == 60 and not any(r.lost for r in more)
            seqs = [struct.unpack_from("<I", r.data)[0] for r in more]
            assert seqs == list(range(seqs[0], seqs[0] + 60))
        assert reader.lost == 198


def test_closing_the_reader_removes_its_entries(coll: ebpf.Collection) -> None:
    prog, events = coll.programs["emit"], coll.maps["events"]
    last = coll.maps["last_ret"]
    with ebpf.PerfReader(events, pages=1, cpus=[0]), on_cpu(0):
        prog.test_run(bytes(64))
        assert last[0] == 0
    with on_cpu(0):
        prog.test_run(bytes(64))
    assert last[0] == -2  # -ENOENT: no perf event at this CPU's index any more
    assert events.fd.raw >= 0  # the map itself stays


def test_reader_errors(coll: ebpf.Collection) -> None:
    with pytest.raises(NotSupportedError, match="not a perf event array"):
        ebpf.PerfReader(coll.maps["seq"])
    with pytest.raises(Error, match="not a power of two"):
        ebpf.PerfReader(coll.maps["events"], pages=3)
    with pytest.raises(Error, match=r"has \d+ slots"):
        ebpf.PerfReader(coll.maps["events"], cpus=[os.cpu_count() or 1 + 64])
