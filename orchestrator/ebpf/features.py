"""Kernel feature probes: what the running kernel can do, asked of the kernel itself.

Nothing here decides from a table of kernel versions or program types: each probe makes the
smallest request that shows the feature (a two-instruction program of the type in question,
a one-entry map with the flag in question) and keeps the kernel's answer for the rest of
the process. Every probe runs at most once per process, under a lock, so concurrent callers
wait for the first answer instead of probing again.

:func:`program_support` is what a plan uses to refuse program types the kernel will not
load (on kernels where BPF trampolines are forbidden, fentry/fexit/fmod_ret/lsm/freplace
fail with EPERM before verification while tp_btf, iter and struct_ops load fine).
"""

from __future__ import annotations

import ctypes
import errno
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from orchestrator.ebpf import _sys
from orchestrator.ebpf._sys import AttachType, MapFlags, MapType, ProgFlags, ProgType
from orchestrator.ebpf.errors import Error, SyscallError
from orchestrator.ebpf.files import open_file

__all__ = [
    "PMU_ROOT",
    "Support",
    "kprobe_pmu",
    "mmapable_arrays",
    "program_kind",
    "program_support",
    "syscall_wrapper",
]

PMU_ROOT = Path("/sys/bus/event_source/devices")

T = TypeVar("T")

_lock = threading.Lock()
_answers: dict[tuple[object, ...], object] = {}


def _once(key: tuple[object, ...], probe: Callable[[], T]) -> T:
    """The answer of ``probe`` for ``key``, computed at most once per process."""
    with _lock:
        if key in _answers:
            return _answers[key]  # type: ignore[return-value]
        answer = probe()
        _answers[key] = answer
        return answer


@dataclass(frozen=True, slots=True)
class Support:
    """What a probe found. ``ok`` False: the kernel refuses, ``reason`` says how (and
    ``errno`` is the kernel's error number). ``ok`` True with a ``reason``: the probe could
    not decide (the real load will tell), never a refusal."""

    ok: bool
    reason: str = ""
    errno: int = 0


# ---------------------------------------------------------------------------- program types

# a program that returns 0: r0 = 0; exit
_RETURN_ZERO = bytes([0xB7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0])

_TRACING_NAMES = {
    AttachType.TRACE_RAW_TP: "tp_btf",
    AttachType.TRACE_FENTRY: "fentry",
    AttachType.TRACE_FEXIT: "fexit",
    AttachType.MODIFY_RETURN: "fmod_ret",
    AttachType.TRACE_ITER: "iter",
    AttachType.LSM_MAC: "lsm",
    AttachType.LSM_CGROUP: "lsm_cgroup",
}


def program_kind(prog_type: ProgType | int, attach_type: AttachType | int | None = None) -> str:
    """How users name programs of this type and attach type: "fentry", "tp_btf", "lsm",
    "freplace", "xdp", "cgroup_skb" …"""
    if attach_type is not None and attach_type in _TRACING_NAMES:
        return _TRACING_NAMES[AttachType(attach_type)]
    if prog_type == ProgType.EXT:
        return "freplace"
    if isinstance(prog_type, ProgType):
        return prog_type.name.lower()
    return f"program type {prog_type}"


def _btf_target(
    prog_type: ProgType | int, attach_type: AttachType | int | None, what: str
) -> tuple[int, int] | Support:
    """(attach_btf_id, expected attach type) of a real kernel function, tracepoint or
    struct_ops member that a probe of ``attach_type`` can name; a Support if there is none
    to name (no kernel BTF: the probe cannot decide)."""
    from orchestrator.ebpf import btf as _btf
    from orchestrator.ebpf.btf import kernel as kernel_btf

    try:
        kb = kernel_btf.load()
    except Error as err:
        return Support(True, f"{what}: probe undecided: no kernel BTF to name a target ({err})")
    func, typedef, struct = _btf.Kind.FUNC, _btf.Kind.TYPEDEF, _btf.Kind.STRUCT
    candidates: dict[AttachType | None, tuple[_btf.Kind, tuple[str, ...]]] = {
        AttachType.TRACE_RAW_TP: (typedef, ("btf_trace_sched_switch", "btf_trace_sys_enter")),
        AttachType.TRACE_FENTRY: (func, ("bpf_fentry_test1", "vfs_read", "do_sys_openat2")),
        AttachType.TRACE_FEXIT: (func, ("bpf_fentry_test1", "vfs_read", "do_sys_openat2")),
        AttachType.MODIFY_RETURN: (func, ("bpf_modify_return_test", "security_file_open")),
        AttachType.TRACE_ITER: (func, ("bpf_iter_task", "bpf_iter_bpf_map")),
        AttachType.LSM_MAC: (func, ("bpf_lsm_file_open", "bpf_lsm_bpf")),
        AttachType.LSM_CGROUP: (func, ("bpf_lsm_socket_post_create", "bpf_lsm_socket_bind")),
        None: (struct, ("tcp_congestion_ops",)),  # struct_ops
    }
    if prog_type == ProgType.STRUCT_OPS:
        key = None
    elif attach_type in _TRACING_NAMES:
        key = AttachType(attach_type)
    else:
        return Support(True, f"{what}: probe undecided: no target for this attach type")
    kind, names = candidates[key]
    for name in names:
        found = kb.find(name, kind)
        if found is None or found[0] != "vmlinux":
            continue
        _, spec, type_id = found
        if key is not None:
            return type_id, int(key)
        members = getattr(spec.type_by_id(type_id), "members", ())
        for index, member in enumerate(members):
            if member.name == "ssthresh":  # u32 (*)(struct sock *): returning 0 is valid
                return type_id, index
    return Support(True, f"{what}: probe undecided: the kernel BTF has no known target")


def _load(attr: _sys.ProgLoadAttr) -> tuple[int, str]:
    """(errno or 0, verifier log) of loading a probe program; the program is closed."""
    insns = ctypes.create_string_buffer(_RETURN_ZERO, len(_RETURN_ZERO))
    lic = ctypes.create_string_buffer(b"GPL\0")
    attr.insns = ctypes.addressof(insns)
    attr.insn_cnt = len(_RETURN_ZERO) // 8
    attr.license = ctypes.addressof(lic)
    result = _sys.prog_load(attr, log_size=4096, log_level=1)
    if result.fd is not None:
        result.fd.close()
    return result.err, result.log


def _messages(log: str) -> list[str]:
    """The verifier's messages, without its closing statistics line."""
    return [
        line
        for line in (raw.strip() for raw in log.splitlines())
        if line and not line.startswith(("processed ", "verification time"))
    ]


def _classify(what: str, err: int, log: str) -> Support:
    """A probe load's outcome. A refusal that comes before verification (no verifier
    message) is about the program type itself and so applies to every program of it;
    a verifier message means the kernel knows and allows the type and objected to the
    probe program, so the probe cannot decide."""
    if err == 0:
        return Support(True)
    name = errno.errorcode.get(err, "ENOTSUPP" if err == _sys.ENOTSUPP else str(err))
    messages = _messages(log)
    if messages:
        return Support(True, f"{what}: probe undecided ({name}: {messages[-1]})", err)
    if err in (errno.EPERM, errno.EACCES):
        return Support(
            False,
            f"loading a minimal {what} program fails with {name} before verification (the "
            "kernel forbids the program type here: lockdown, an LSM, no BPF trampolines or a "
            "missing capability)",
            err,
        )
    if err == errno.EINVAL:
        return Support(
            False,
            f"loading a minimal {what} program fails with EINVAL before verification (the "
            "kernel does not know this program type or attach type: it is too old or built "
            "without it)",
            err,
        )
    if err in (errno.EOPNOTSUPP, _sys.ENOTSUPP):
        return Support(
            False,
            f"loading a minimal {what} program fails with {name} (this kernel build or "
            "architecture does not support it)",
            err,
        )
    return Support(True, f"{what}: probe undecided ({name})", err)


def _probe_program(prog_type: ProgType | int, attach_type: AttachType | int | None) -> Support:
    what = program_kind(prog_type, attach_type)
    attr = _sys.ProgLoadAttr(prog_type=int(prog_type))
    if attach_type is not None:
        attr.expected_attach_type = int(attach_type)
    if prog_type == ProgType.SYSCALL:
        attr.prog_flags = int(ProgFlags.SLEEPABLE)  # syscall programs must be sleepable
    if prog_type in (ProgType.TRACING, ProgType.LSM, ProgType.STRUCT_OPS):
        target = _btf_target(prog_type, attach_type, what)
        if isinstance(target, Support):
            return target
        attr.attach_btf_id, expected = target
        attr.expected_attach_type = expected
    elif prog_type == ProgType.EXT:
        # freplace targets a function of another BPF program, which a probe does not have:
        # a kernel that allows the type gets as far as the target check and says so in the
        # log ("cannot replace kernel functions"), one that forbids it refuses first
        attr.attach_btf_id = 1
    return _classify(what, *_load(attr))


def program_support(
    prog_type: ProgType | int, attach_type: AttachType | int | None = None
) -> Support:
    """Whether the kernel loads programs of ``prog_type`` with ``attach_type`` (as a
    section name gives them), decided by loading ``r0 = 0; exit`` of that type once per
    process. Tracing, lsm and struct_ops probes name a real target from the kernel's BTF
    (``sched_switch`` for tp_btf, a kernel function for fentry/fexit/fmod_ret, an lsm hook,
    ``tcp_congestion_ops``). Needs CAP_BPF (and CAP_PERFMON / CAP_NET_ADMIN for the types
    that always need them, like the real load)."""
    key = ("program", int(prog_type), None if attach_type is None else int(attach_type))
    return _once(key, lambda: _probe_program(prog_type, attach_type))


# ---------------------------------------------------------------------------- other probes


def kprobe_pmu() -> Support:
    """Whether kprobes can be created: the kprobe PMU exists (CONFIG_KPROBES)."""

    def probe() -> Support:
        if (PMU_ROOT / "kprobe" / "type").exists():
            return Support(True)
        return Support(False, "kprobes are compiled out of this kernel (CONFIG_KPROBES is off)")

    return _once(("kprobe_pmu",), probe)


def mmapable_arrays() -> bool:
    """Whether array maps accept BPF_F_MMAPABLE (Linux 5.5)."""

    def probe() -> bool:
        attr = _sys.MapCreateAttr(
            map_type=MapType.ARRAY,
            key_size=4,
            value_size=4,
            max_entries=1,
            map_flags=MapFlags.MMAPABLE,
        )
        try:
            fd = _sys.map_create(attr)
        except SyscallError:
            return False
        fd.close()
        return True

    return _once(("mmapable_arrays",), probe)


def syscall_wrapper() -> bool:
    """Whether syscalls go through ``__<arch>_sys_*`` wrappers (LINUX_HAS_SYSCALL_WRAPPER)."""

    def probe() -> bool:
        try:
            with open_file("/proc/kallsyms") as f:
                return any(b" __x64_sys_bpf" in line for line in f)
        except OSError:
            return False

    return _once(("syscall_wrapper",), probe)


def _forget() -> None:
    """Drop every answer (for tests that count probes); the next call probes again."""
    with _lock:
        _answers.clear()
