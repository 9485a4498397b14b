"""Kernel feature probes: decided by loading a minimal program of the type, once per process."""

from __future__ import annotations

import errno
import threading
from collections.abc import Iterator

import pytest

from orchestrator.ebpf import _sys, features
from orchestrator.ebpf._sys import AttachType, ProgType

A, P = AttachType, ProgType


@pytest.fixture
def fresh_probes() -> Iterator[None]:
    """Forget every probe answer before and after the test (the next caller probes again)."""
    features._forget()
    yield
    features._forget()


class LoadCounter:
    """Counts BPF_PROG_LOAD calls while passing each one to the real syscall."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[int, int]] = []
        real = _sys.prog_load

        def counting(attr: _sys.ProgLoadAttr, log_size: int = 0, log_level: int = 0) -> object:
            self.calls.append((int(attr.prog_type), int(attr.expected_attach_type)))
            return real(attr, log_size, log_level)

        monkeypatch.setattr(_sys, "prog_load", counting)


# ---------------------------------------------------------------------------- classification


def test_a_refusal_before_verification_is_a_refusal_of_the_type() -> None:
    perm = features._classify("fentry", errno.EPERM, "")
    assert not perm.ok and perm.errno == errno.EPERM
    assert (
        "fentry" in perm.reason and "EPERM" in perm.reason and "before verification" in perm.reason
    )
    inval = features._classify("frobnicate", errno.EINVAL, "")
    assert not inval.ok and "does not know this program type" in inval.reason
    notsupp = features._classify("struct_ops", _sys.ENOTSUPP, "")
    assert not notsupp.ok and "ENOTSUPP" in notsupp.reason


def test_a_verifier_message_means_the_probe_cannot_decide() -> None:
    # the kernel knows and allows the type; it objected to the probe program itself
    got = features._classify(
        "tp_btf",
        errno.EINVAL,
        "attach_btf_id 1 is not a typedef\nprocessed 0 insns (limit 1000000) max_states_per_insn 0",
    )
    assert got.ok and "undecided" in got.reason and "not a typedef" in got.reason
    # a statistics line alone is no message: ENOTSUPP then is a refusal
    stats_only = features._classify("x", _sys.ENOTSUPP, "processed 0 insns (limit 1000000)\n")
    assert not stats_only.ok
    assert features._classify("xdp", 0, "").ok
    other = features._classify("xdp", errno.ENOMEM, "")
    assert other.ok and "ENOMEM" in other.reason


def test_program_kind_names_programs_as_sections_do() -> None:
    assert features.program_kind(P.TRACING, A.TRACE_RAW_TP) == "tp_btf"
    assert features.program_kind(P.TRACING, A.TRACE_FENTRY) == "fentry"
    assert features.program_kind(P.LSM, A.LSM_MAC) == "lsm"
    assert features.program_kind(P.EXT) == "freplace"
    assert features.program_kind(P.XDP) == "xdp"
    assert features.program_kind(999) == "program type 999"


# ---------------------------------------------------------------------------- this kernel


@pytest.mark.kernel
@pytest.mark.parametrize(
    ("prog_type", "attach_type"),
    [
        (P.TRACING, A.TRACE_RAW_TP),  # tp_btf
        (P.TRACING, A.TRACE_ITER),
        (P.STRUCT_OPS, None),
        (P.XDP, None),
        (P.SCHED_CLS, None),
        (P.TRACEPOINT, None),
        (P.RAW_TRACEPOINT, None),
        (P.KPROBE, None),
        (P.SYSCALL, None),
        (P.CGROUP_SKB, A.CGROUP_INET_EGRESS),
        (P.CGROUP_SOCK_ADDR, A.CGROUP_INET4_CONNECT),
    ],
)
def test_types_this_kernel_loads_are_supported(
    prog_type: ProgType, attach_type: AttachType | None, fresh_probes: None, fd_guard: None
) -> None:
    got = features.program_support(prog_type, attach_type)
    assert got.ok and got.reason == "", got


@pytest.mark.kernel
@pytest.mark.parametrize(
    ("prog_type", "attach_type", "kind"),
    [
        (P.TRACING, A.TRACE_FENTRY, "fentry"),
        (P.TRACING, A.TRACE_FEXIT, "fexit"),
        (P.TRACING, A.MODIFY_RETURN, "fmod_ret"),
        (P.LSM, A.LSM_MAC, "lsm"),
        (P.EXT, None, "freplace"),
    ],
)
def test_trampoline_types_are_refused_here_with_eperm(
    prog_type: ProgType,
    attach_type: AttachType | None,
    kind: str,
    fresh_probes: None,
    fd_guard: None,
) -> None:
    # docs/kernel.md: this kernel refuses BPF trampolines with EPERM before verification
    got = features.program_support(prog_type, attach_type)
    assert not got.ok and got.errno == errno.EPERM
    assert f"minimal {kind} program fails with EPERM" in got.reason


@pytest.mark.kernel
def test_a_tracing_program_without_a_known_attach_type_is_never_refused(
    fresh_probes: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # there is no target to name: the probe does not guess (and loads nothing)
    loads = LoadCounter(monkeypatch)
    got = features.program_support(P.TRACING)
    assert got.ok and "undecided" in got.reason
    assert loads.calls == []


@pytest.mark.kernel
def test_an_unknown_program_type_is_refused(fresh_probes: None) -> None:
    got = features.program_support(999)
    assert not got.ok and got.errno == errno.EINVAL
    assert "does not know this program type" in got.reason


@pytest.mark.kernel
def test_each_probe_runs_once_per_process(
    fresh_probes: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads = LoadCounter(monkeypatch)
    for _ in range(3):
        assert features.program_support(P.TRACING, A.TRACE_RAW_TP).ok
        assert not features.program_support(P.TRACING, A.TRACE_FENTRY).ok
    assert loads.calls == [
        (int(P.TRACING), int(A.TRACE_RAW_TP)),
        (int(P.TRACING), int(A.TRACE_FENTRY)),
    ]

    # threads that ask at the same time wait for the one probe
    features._forget()
    loads.calls.clear()
    barrier = threading.Barrier(8)
    answers: list[bool] = []

    def ask() -> None:
        barrier.wait()
        answers.append(features.program_support(P.XDP).ok)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [True] * 8
    assert loads.calls == [(int(P.XDP), 0)]


@pytest.mark.kernel
def test_other_probes_answer_for_this_kernel(fresh_probes: None, fd_guard: None) -> None:
    assert features.mmapable_arrays() is True
    kp = features.kprobe_pmu()
    assert not kp.ok and "CONFIG_KPROBES" in kp.reason  # docs/kernel.md: KPROBES off
    # the __x64_sys_* wrappers exist in kallsyms on x86_64 (LINUX_HAS_SYSCALL_WRAPPER)
    with open("/proc/kallsyms", "rb") as f:
        expected = any(b" __x64_sys_bpf" in line for line in f)
    assert features.syscall_wrapper() is expected
