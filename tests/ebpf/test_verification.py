"""ebpf.verify: each program through the verifier on its own, with its statistics; nothing
pinned or attached, nothing left open, the spec unchanged."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator import ebpf
from orchestrator.ebpf import _sys
from orchestrator.ebpf.spec import PinType
from orchestrator.ebpf.verifier import BUDGET
from tests.conftest import BPF_DIR, BPFFS

pytestmark = pytest.mark.kernel

MIXED = """\
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct { __uint(type, BPF_MAP_TYPE_HASH); __type(key, __u32); __type(value, __u64);
         __uint(max_entries, 4); __uint(pinning, LIBBPF_PIN_BY_NAME); } seen SEC(".maps");
SEC("xdp") int good(struct xdp_md *ctx)
{
	__u32 k = 0;
	__u64 *v = bpf_map_lookup_elem(&seen, &k);
	return v ? *v : XDP_PASS;
}
SEC("xdp") int bad(struct xdp_md *ctx)
{
	__u32 k = 0;
	__u64 *v = bpf_map_lookup_elem(&seen, &k);
	return *v;
}
SEC("mystery/thing") int odd(void *ctx) { return 0; }
SEC("?xdp") int optional(struct xdp_md *ctx) { return XDP_PASS; }
char LICENSE[] SEC("license") = "GPL";
"""


def test_verify_reports_what_the_kernel_says(fd_guard: None) -> None:
    before = set(os.listdir(BPFFS))
    spec = ebpf.CollectionSpec.from_file(BPF_DIR / "pinned.o")  # a map pinned by name
    [report] = ebpf.verify(spec)
    assert set(os.listdir(BPFFS)) == before  # nothing pinned, even a map pinned by name
    assert spec.maps["pinned_runs"].pinning == PinType.BY_NAME  # the spec is unchanged
    assert report.name == "sk_count" and report.type == "socket_filter"
    assert report.accepted and report.error is None and report.log == ""
    # the same program loaded by hand: the figures are the kernel's
    unpinned = spec.copy()
    unpinned.maps["pinned_runs"].pinning = PinType.NONE
    with ebpf.Collection(unpinned) as coll:
        info = _sys.prog_info(coll.programs["sk_count"].fd)
        assert report.verified_insns == info.verified_insns > 0
        assert report.xlated_size == info.xlated_prog_len > 0
        assert report.jited_size == info.jited_prog_len > 0
    s = report.stats
    assert s.insns == report.verified_insns and s.limit == BUDGET
    assert s.total_states is not None and s.peak_states is not None
    assert s.time_us is not None and s.time_us > 0 and s.stack_depth
    assert report.budget == BUDGET and report.budget_share == report.verified_insns / BUDGET
    data = report.to_json()
    assert data["accepted"] is True and data["error"] is None
    assert (
        data["verification_time_us"] == s.time_us and data["xlated_bytes"] == info.xlated_prog_len
    )


def test_verify_reports_each_program_and_goes_on_after_a_rejection(
    compile_bpf: Callable[..., Path], fd_guard: None
) -> None:
    spec = ebpf.CollectionSpec.from_file(compile_bpf(MIXED))
    reports = {r.name: r for r in ebpf.verify(spec)}
    assert set(reports) == {"good", "bad", "odd"}  # what a collection would load
    assert reports["good"].accepted
    bad = reports["bad"]
    assert isinstance(bad.error, ebpf.VerifierError)
    assert bad.error.kind is ebpf.Rejection.NULL_MAP_VALUE
    assert bad.error.source is not None and bad.error.source.text == "return *v;"
    assert bad.verified_insns == bad.stats.insns and bad.verified_insns > 0
    assert bad.xlated_size == bad.jited_size == 0
    error = bad.to_json()["error"]
    assert isinstance(error, dict)
    assert error["class"] == "null-map-value" and error["message"] == str(bad.error)
    assert error["source"]["text"] == "return *v;"  # type: ignore[index]
    odd = reports["odd"]
    assert isinstance(odd.error, ebpf.NotSupportedError) and not odd.accepted
    assert bad.rejected and not odd.rejected and not reports["good"].rejected
    # named programs, in the order given (a program that does not load by default too)
    named = ebpf.verify(spec, ["optional", "good"])
    assert [r.name for r in named] == ["optional", "good"] and all(r.accepted for r in named)
    with pytest.raises(ebpf.SpecError, match=r"program goood: not in object .*good"):
        ebpf.verify(spec, ["goood"])


def test_verify_with_the_full_log(compile_bpf: Callable[..., Path], fd_guard: None) -> None:
    spec = ebpf.CollectionSpec.from_file(compile_bpf(MIXED))
    reports = {r.name: r for r in ebpf.verify(spec, ["good", "bad"], full_log=True)}
    good, bad = reports["good"], reports["bad"]
    # every state of every path, with source lines as bpftool's linum shows them
    assert "[file:" in good.log and " line_num:" in good.log
    assert "; return v ? *v : XDP_PASS; [file:" in good.log
    assert "processed" in good.log and "verification time" in good.log
    assert "R0 invalid mem access 'map_value_or_null'" in bad.log
    assert "; return *v; [file:" in bad.log
