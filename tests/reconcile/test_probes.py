"""What the kernel supports is probed, once per process; the plan refuses what it refuses.

On this kernel tp_btf loads and attaches while fentry/fexit/fmod_ret/lsm/freplace are
refused with EPERM before verification (docs/kernel.md)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator.ebpf import Link, Map, _sys, features
from orchestrator.ebpf import link as _links
from orchestrator.ebpf._sys import AttachType, ProgType
from orchestrator.manifest.errors import ManifestError
from orchestrator.reconcile import Kind, Op
from tests.reconcile.conftest import Env, gone, link_alive, pins_under

pytestmark = pytest.mark.kernel

TP_BTF = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __type(key, __u32);
    __type(value, __u64);
    __uint(max_entries, 1);
} switches SEC(".maps");
SEC("tp_btf/sched_switch")
int on_switch(__u64 *ctx)
{
    __u32 zero = 0;
    __u64 *n = bpf_map_lookup_elem(&switches, &zero);
    if (n)
        __sync_fetch_and_add(n, 1);
    return 0;
}
char LICENSE[] SEC("license") = "GPL";
"""

FENTRY = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("fentry/vfs_read") int on_read(void *ctx) { return 0; }
char LICENSE[] SEC("license") = "GPL";
"""


@pytest.fixture
def fresh_probes() -> Iterator[None]:
    features._forget()
    yield
    features._forget()


def tp_btf_manifest(env: Env, obj: Path, name: str = "sched_switch") -> Path:
    return env.write(
        "runqlat",
        f"""
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {{name: runqlat}}
        spec:
          object: {obj}
          maps:
            switches: {{pin: true}}
          attach:
            - program: on_switch
              raw_tracepoint: {{name: {name}}}
        """,
    )


def test_tp_btf_plans_applies_and_runs(
    env: Env, compile_bpf: Callable[..., Path], fresh_probes: None
) -> None:
    tp_btf_manifest(env, compile_bpf(TP_BTF))
    r = env.reconciler()
    p = r.plan(env.desired())
    assert not p.problems, [str(x) for x in p.problems]
    assert p.change("runqlat", Kind.ATTACHMENT, "on_switch@raw_tracepoint:sched_switch") is not None
    r.apply(env.desired())

    (c,) = r.status().collections
    (a,) = c.attachments
    assert a.alive
    with Link.from_pin(
        env.root / "runqlat" / "links" / os.listdir(env.root / "runqlat" / "links")[0]
    ) as link:
        info = link.info()
    assert isinstance(info.target, _links.RawTracepointTarget)
    assert info.target.name == "sched_switch"

    # it runs: sched_switch fires whenever this thread sleeps
    with Map.from_pin(env.root / "runqlat" / "maps" / "switches") as m:
        before = m[0]
        for _ in range(20):
            time.sleep(0.001)
        after = m[0]
    assert isinstance(before, int) and isinstance(after, int)
    assert after >= before + 20

    assert not r.plan(env.desired()).has_changes
    r.destroy()
    assert gone(link_alive, a.link_id)  # freed in deferred work once its pin is gone
    assert pins_under(env.root) == []


def test_tp_btf_on_another_tracepoint_than_its_section_is_refused(
    env: Env, compile_bpf: Callable[..., Path]
) -> None:
    # a tp_btf program is bound to its tracepoint at load time (attach_btf_id)
    path = tp_btf_manifest(env, compile_bpf(TP_BTF), name="sys_enter")
    with pytest.raises(ManifestError) as info:
        env.desired()
    text = str(info.value)
    assert text.startswith(f"{path}:") and "spec.attach[0].raw_tracepoint" in text
    assert "bound to tracepoint sched_switch when loaded (use name: sched_switch" in text


def test_fentry_is_refused_at_plan_time_by_the_probe(
    env: Env, compile_bpf: Callable[..., Path], fresh_probes: None
) -> None:
    path = env.write(
        "fentry",
        f"""
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {{name: tracing}}
        spec:
          object: {compile_bpf(FENTRY)}
        """,
    )
    p = env.reconciler().plan(env.desired())
    (problem,) = p.problems
    text = str(problem)
    assert text.startswith(f"collection tracing ({path}:")
    assert "program on_read (section fentry/vfs_read): fentry programs are not supported" in text
    assert "fails with EPERM before verification" in text
    # the hint names only the tracing types the probes found usable here
    assert text.endswith("(use a tracepoint, raw_tp or tp_btf program instead)")
    support = features.program_support(ProgType.TRACING, AttachType.TRACE_FENTRY)
    assert not support.ok and support.reason in text
    assert pins_under(env.root) == []


def test_plans_probe_each_program_type_once_per_process(
    env: Env,
    compile_bpf: Callable[..., Path],
    fresh_probes: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tp_btf_manifest(env, compile_bpf(TP_BTF))
    env.write(
        "fentry",
        f"""
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {{name: tracing}}
        spec:
          object: {compile_bpf(FENTRY)}
        """,
    )
    loads: list[tuple[int, int]] = []
    real = _sys.prog_load

    def counting(attr: _sys.ProgLoadAttr, log_size: int = 0, log_level: int = 0) -> object:
        loads.append((int(attr.prog_type), int(attr.expected_attach_type)))
        return real(attr, log_size, log_level)

    monkeypatch.setattr(_sys, "prog_load", counting)
    for _ in range(3):
        p = env.reconciler().plan(env.desired())
        assert len(p.problems) == 1 and "fentry" in str(p.problems[0])
        assert p.collection_op("runqlat") is Op.CREATE
    tracing = int(ProgType.TRACING)
    # tp_btf, fentry, then the alternatives named in the hint (tracepoint, raw_tp)
    assert sorted(loads) == sorted(
        [
            (tracing, int(AttachType.TRACE_RAW_TP)),
            (tracing, int(AttachType.TRACE_FENTRY)),
            (int(ProgType.TRACEPOINT), 0),
            (int(ProgType.RAW_TRACEPOINT), 0),
        ]
    )
