"""The ELF/BTF parser only ever raises ebpf.Error subclasses on corrupted input, quickly."""

from __future__ import annotations

import contextlib
import glob
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator import ebpf
from tests.ebpf.test_elf import LEGACY, SUBPROGS

SEEDS: list[bytes] = []


@pytest.fixture(scope="module", autouse=True)
def seeds(compile_bpf: Callable[..., Path]) -> None:
    SEEDS.clear()
    SEEDS.append(compile_bpf(SUBPROGS).read_bytes())
    SEEDS.append(compile_bpf(LEGACY).read_bytes())
    for path in sorted(glob.glob("/usr/lib/x86_64-linux-gnu/bpf/xdp*.o"))[:3]:
        SEEDS.append(Path(path).read_bytes())


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(range(len(SEEDS))).map(lambda i: SEEDS[i])))
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["flip", "byte", "word", "truncate", "splice"]))
        pos = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[pos] = draw(st.integers(0, 255))
        elif kind == "word" and pos + 4 <= len(data):
            data[pos : pos + 4] = draw(
                st.sampled_from([0, 1, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, len(data), 1 << 20])
            ).to_bytes(4, "little")
        elif kind == "truncate":
            del data[max(pos, 1) :]
        elif kind == "splice":
            n = draw(st.integers(1, 64))
            data[pos:pos] = draw(st.binary(min_size=n, max_size=n))
    return bytes(data)


@settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_corrupted_objects_raise_only_our_errors(data: bytes) -> None:
    try:
        spec = ebpf.CollectionSpec.from_bytes(data, name="fuzz")
    except ebpf.Error:
        return
    # whatever parsed must be usable without crashing: copy it and read the variables
    dup = spec.copy()
    for var in dup.variables.values():
        with contextlib.suppress(ebpf.Error):
            _ = var.value


@settings(max_examples=300, deadline=2000)
@given(st.binary(max_size=512))
def test_random_bytes(data: bytes) -> None:
    with pytest.raises(ebpf.Error):
        ebpf.CollectionSpec.from_bytes(b"\x7fELF\x02\x01\x01" + data, name="junk")
