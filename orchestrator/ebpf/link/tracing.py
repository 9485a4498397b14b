"""Tracepoints (through a perf event) and raw tracepoints (raw_tp and tp_btf)."""

from __future__ import annotations

import errno
from pathlib import Path

from orchestrator.ebpf import _sys
from orchestrator.ebpf import mounts as _mounts
from orchestrator.ebpf._sys import FD, ProgType
from orchestrator.ebpf.errors import (
    AttachError,
    SyscallError,
    TargetNotFoundError,
)
from orchestrator.ebpf.files import read_text
from orchestrator.ebpf.link.base import (
    Link,
)
from orchestrator.ebpf.programs import Program


def _tracefs() -> Path:
    """Where tracefs is mounted (from mountinfo); MountNotFoundError if nowhere."""
    return _mounts.tracefs_root()


def _perf_link(prog: Program, perf: FD, what: str) -> Link:
    """A perf_event link on ``perf``; the link holds its own reference to the perf event,
    so ``perf`` is closed here on every path: the link alone owns the event's lifetime."""
    with perf:
        try:
            fd = _sys.link_create_perf_event(prog.fd, perf)
        except SyscallError as err:
            hint = ""
            if err.errno == errno.EINVAL:
                hint = " (does the program type match the event?)"
            elif err.errno == errno.EEXIST:
                hint = " (the program is already attached to this event)"
            raise AttachError(f"{what}: {err.detail}{hint}") from err
    return Link.from_fd(fd, what)


def attach_tracepoint(prog: Program, group: str, name: str) -> Link:
    """Attach a tracepoint program to ``group/name`` (e.g. syscalls/sys_enter_getppid):
    perf_event_open on the tracepoint id from tracefs, then a perf_event link. Needs tracefs
    mounted, CAP_PERFMON (or CAP_SYS_ADMIN) and Linux 5.15 (perf links). The program runs for
    every CPU and process."""
    what = f"tracepoint {group}/{name} of {prog.name}"
    if "/" in group or "/" in name or group in ("", ".", "..") or name in ("", ".", ".."):
        raise ValueError(f"{what}: group and name must be plain names")
    id_file = _tracefs() / "events" / group / name / "id"
    try:
        tp_id = int(read_text(id_file, limit=4096))
    except FileNotFoundError as err:
        raise TargetNotFoundError(
            f"{what}: no such tracepoint ({id_file} is missing; see "
            f"{id_file.parents[2] / 'available_events'})"
        ) from err
    attr = _sys.PerfEventAttr(
        type=_sys.PERF_TYPE_TRACEPOINT, config=tp_id, sample_period=1, wakeup_events=1
    )
    try:
        perf = _sys.perf_event_open(attr, pid=-1, cpu=0)
    except SyscallError as err:
        raise AttachError(f"{what}: {err.detail}") from err
    return _perf_link(prog, perf, what)


def attach_raw_tracepoint(prog: Program, name: str | None = None) -> Link:
    """Attach a raw_tp program to raw tracepoint ``name`` (e.g. "sys_enter"), or a tp_btf
    program (``name`` None: its target came from BTF at load time), with
    BPF_RAW_TRACEPOINT_OPEN. Needs Linux 4.17 (raw_tp), 5.5 (tp_btf), CAP_PERFMON."""
    what = f"raw tracepoint {name or '(btf)'} of {prog.name}"
    if name is None and prog.type in (ProgType.RAW_TRACEPOINT, ProgType.RAW_TRACEPOINT_WRITABLE):
        raise AttachError(f"{what}: raw_tp programs need a name (e.g. sys_enter)")
    try:
        fd = _sys.raw_tracepoint_open(prog.fd, name)
    except SyscallError as err:
        if err.errno == errno.ENOENT:
            raise TargetNotFoundError(
                f"{what}: no such raw tracepoint (names are those of the kernel's "
                "tracepoints without the group, e.g. sys_enter)"
            ) from err
        hint = ""
        if err.errno == errno.EINVAL:
            hint = " (raw_tp programs need a name; tp_btf programs must not get one)"
        raise AttachError(f"{what}: {err.detail}{hint}") from err
    return Link.from_fd(fd, what)
