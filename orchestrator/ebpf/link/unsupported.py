"""Hook types this kernel refuses (kprobes; fentry/fexit/fmod_ret/lsm/freplace need
trampolines): attaching them raises :class:`NotSupportedError` with the reason."""

from __future__ import annotations

from orchestrator.ebpf import _sys
from orchestrator.ebpf import features as _features
from orchestrator.ebpf._sys import AttachType, ProgType
from orchestrator.ebpf.errors import (
    AttachError,
    NotSupportedError,
)
from orchestrator.ebpf.link.base import (
    Link,
    _make,
)
from orchestrator.ebpf.programs import Program

_TRAMPOLINE_KINDS: dict[str, tuple[ProgType, AttachType | None]] = {
    "fentry": (ProgType.TRACING, AttachType.TRACE_FENTRY),
    "fexit": (ProgType.TRACING, AttachType.TRACE_FEXIT),
    "fmod_ret": (ProgType.TRACING, AttachType.MODIFY_RETURN),
    "lsm": (ProgType.LSM, AttachType.LSM_MAC),
    "freplace": (ProgType.EXT, None),
}


def _unsupported_reason(kind: str) -> str | None:
    """Why attachments of ``kind`` cannot work here (None: they can), from the kernel
    feature probes (:mod:`orchestrator.ebpf.features`, each run once per process)."""
    if kind in ("kprobe", "kretprobe"):
        support = _features.kprobe_pmu()
    elif kind in _TRAMPOLINE_KINDS:
        support = _features.program_support(*_TRAMPOLINE_KINDS[kind])
    else:
        raise ValueError(f"unknown attachment kind {kind!r}")
    return None if support.ok else support.reason


def require_supported(kind: str) -> None:
    """Raise :class:`NotSupportedError` if attachments of ``kind`` ("kprobe", "kretprobe",
    "fentry", "fexit", "fmod_ret", "lsm", "freplace") cannot work on this kernel; for a plan
    to refuse them before loading anything."""
    reason = _unsupported_reason(kind)
    if reason is not None:
        raise NotSupportedError(f"{kind} attachments are not supported on this kernel: {reason}")


def attach_kprobe(prog: Program, symbol: str, *, retprobe: bool = False) -> Link:
    """kprobe/kretprobe attachments: not implemented, because they cannot be tested here.
    Raises :class:`NotSupportedError` naming the kernel's reason when kprobes are compiled
    out (no kprobe PMU), and a not-implemented one otherwise."""
    kind = "kretprobe" if retprobe else "kprobe"
    reason = _unsupported_reason(kind)
    if reason is not None:
        raise NotSupportedError(f"{kind} {symbol} of {prog.name}: not supported: {reason}")
    raise NotSupportedError(
        f"{kind} {symbol} of {prog.name}: kprobe links are not implemented by bpforch yet"
    )


def attach_fentry(prog: Program) -> Link:
    """fentry/fexit/fmod_ret/lsm attachments (BPF_LINK_CREATE of a tracing link). Raises
    :class:`NotSupportedError` up front where the kernel refuses those program types."""
    reason = _unsupported_reason("fentry")
    if reason is not None:
        raise NotSupportedError(f"fentry/fexit {prog.name}: not supported: {reason}")
    if prog.type not in (ProgType.TRACING, ProgType.LSM, ProgType.EXT):
        raise AttachError(f"fentry/fexit {prog.name}: not a tracing program ({prog.type})")
    attach_type = prog.attach_type or AttachType.TRACE_FENTRY
    attr = _sys.LinkCreateAttr(prog_fd=prog.fd.raw, attach_type=attach_type)
    return _make(f"{attach_type.name.lower()} of {prog.name}", lambda: _sys.link_create(attr))
