"""Live programs: loading with verifier-log handling, test runs, info and pins."""

from __future__ import annotations

import array
import ctypes
import errno
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.ebpf import _sys
from orchestrator.ebpf import btf as _btf
from orchestrator.ebpf._sys import FD, AttachType, Closing, Cmd, ProgType
from orchestrator.ebpf.btf.ext import LazyLineInfos, LineInfo
from orchestrator.ebpf.errors import SyscallError, VerifierError
from orchestrator.ebpf.handle import Handle
from orchestrator.ebpf.maps import kernel_btf_spec, kernel_name
from orchestrator.ebpf.verifier import diagnose

# A failed load is retried with a log of this size. The kernel keeps the tail of a log that
# does not fit (Linux 6.4+: the end is what explains a failure) and says how large the whole
# log is; the loader loads once more to get all of it, up to FAILURE_LOG_SIZE unless the
# caller asked for an instruction-level log (then up to the kernel's limit).
DEFAULT_LOG_SIZE = 256 * 1024
FAILURE_LOG_SIZE = 16 << 20
MAX_LOG_SIZE = (1 << 30) - 1  # UINT_MAX >> 2, the kernel's cap on log_size
# Log levels (linux/bpf.h): BPF_LOG_LEVEL1 (instructions walked), BPF_LOG_LEVEL2 (every
# state), BPF_LOG_STATS (the verifier's statistics).
LOG_LEVEL1, LOG_LEVEL2, LOG_STATS = 1, 2, 4
_TRACE = LOG_LEVEL1 | LOG_LEVEL2


@dataclass(frozen=True, slots=True)
class RunResult:
    """The outcome of BPF_PROG_TEST_RUN."""

    retval: int
    data: bytes
    ctx: bytes
    duration_ns: int


@dataclass(frozen=True, slots=True)
class ProgramInfo:
    """What the kernel reports about a program (BPF_OBJ_GET_INFO_BY_FD)."""

    id: int
    name: str
    type: ProgType | int
    tag: str
    xlated: bytes
    map_ids: tuple[int, ...]
    btf_id: int
    load_time_ns: int
    run_time_ns: int
    run_count: int
    verified_insns: int
    created_by_uid: int


@dataclass(frozen=True, slots=True)
class RunStats:
    """How often a program ran and for how long in all (the kernel counts only while
    statistics are enabled: :func:`enable_stats` or ``sysctl kernel.bpf_stats_enabled=1``)."""

    run_count: int
    run_time_ns: int


STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")


class StatsEnabled(Closing):
    """Kernel BPF statistics on while this is open (BPF_ENABLE_STATS; see
    :func:`enable_stats`)."""

    def __init__(self, fd: FD) -> None:
        self._fd = fd

    @property
    def closed(self) -> bool:
        return self._fd.closed

    def close(self) -> None:
        self._fd.close()


def enable_stats() -> StatsEnabled:
    """Turn on the kernel's per-program statistics (run count, run time) until the returned
    object is closed; the kernel keeps them on while any holder (or the sysctl) wants them.
    Costs a few ns per program run. Needs Linux 5.8 and CAP_SYS_ADMIN."""
    try:
        return StatsEnabled(_sys.enable_stats())
    except SyscallError as err:
        if err.errno != errno.EPERM:
            raise
        raise err.replace(hint="BPF_ENABLE_STATS needs CAP_SYS_ADMIN") from err


def stats_enabled() -> bool:
    """Whether the kernel counts program runs now, by the sysctl (which an open
    :func:`enable_stats` does not change: check both)."""
    try:
        return STATS_SYSCTL.read_text().strip() not in ("", "0")
    except OSError:
        return False


@dataclass(frozen=True, slots=True)
class LoadRequest:
    """Everything BPF_PROG_LOAD needs, after relocation."""

    name: str
    type: ProgType
    instructions: bytes
    license: str
    attach_type: AttachType | None = None
    kernel_version: int = 0
    flags: int = 0
    btf_fd: FD | None = None
    func_info: bytes = b""
    func_info_count: int = 0
    line_info: bytes = b""
    line_info_count: int = 0
    attach_btf_id: int = 0
    attach_btf_obj_fd: FD | None = None
    fd_array: bytes = b""
    # the records ``line_info`` encodes, to point a verifier rejection at its source line
    # (held as parsed: built only if the load fails)
    line_infos: tuple[LineInfo, ...] | LazyLineInfos = ()


def load_attr(req: LoadRequest) -> tuple[_sys.ProgLoadAttr, list[array.array[int]]]:
    """The BPF_PROG_LOAD attributes of ``req`` that stay the same from load to load: all
    but the instructions' address and the fds (``prog_btf_fd``, ``attach_prog_fd``,
    ``fd_array``), which the caller sets. Func and line info are set only with a BTF fd.
    Returned with the C buffers they point at (license, func and line info), which the
    caller keeps alive while the attributes are used."""
    buffers: list[array.array[int]] = []

    def c_copy(data: bytes) -> int:
        """The address of a C copy of ``data`` (an array.array: no ctypes type made per
        length), kept in ``buffers``."""
        buffers.append(_sys.cbytes(data))
        return _sys.address(buffers[-1])

    attr = _sys.ProgLoadAttr(
        prog_type=req.type,
        insn_cnt=len(req.instructions) // 8,
        license=c_copy(req.license.encode() + b"\0"),
        kern_version=req.kernel_version,
        prog_flags=req.flags,
        prog_name=kernel_name(req.name).encode(),
        expected_attach_type=int(req.attach_type) if req.attach_type is not None else 0,
        attach_btf_id=req.attach_btf_id,
    )
    if req.btf_fd is not None:
        if req.func_info_count:
            attr.func_info_rec_size = 8
            attr.func_info = c_copy(req.func_info)
            attr.func_info_cnt = req.func_info_count
        if req.line_info_count:
            attr.line_info_rec_size = 16
            attr.line_info = c_copy(req.line_info)
            attr.line_info_cnt = req.line_info_count
    return attr, buffers


@dataclass(frozen=True, slots=True)
class LogOptions:
    """``level``: the log asked for on every load (0: only when a load fails, then at level
    1); ``size``: its buffer (0: DEFAULT_LOG_SIZE); ``disabled``: never a log."""

    level: int = 0
    size: int = 0
    disabled: bool = False


class Program(Handle):
    """A program in the kernel, owned through one fd. Close it (or use ``with``)."""

    def __init__(
        self,
        fd: FD,
        *,
        name: str,
        type: ProgType | int,
        attach_type: AttachType | None = None,
        verifier_log: str = "",
    ) -> None:
        self._fd = fd
        self.name = name
        self.type: ProgType | int
        if isinstance(type, ProgType):
            self.type = type
        else:
            try:
                self.type = ProgType(type)
            except ValueError:
                self.type = type  # a type this code does not know: kept as the number
        self.attach_type = attach_type
        self.verifier_log = verifier_log
        self._pinned: str | None = None
        # read from the kernel on first use, then kept: neither changes while the program lives
        self._id: int | None = None
        self._tag: str | None = None
        self._verified_insns = 0

    @classmethod
    def load(cls, req: LoadRequest, log: LogOptions = LogOptions()) -> Program:
        """BPF_PROG_LOAD. Without a requested log, the first attempt runs without one (the
        log costs verifier time). A failure is retried with a level-1 log (the instructions
        walked up to the failure) and raised as :class:`VerifierError`, which explains it
        from the log and ``req.line_infos``; the errno is the first attempt's (a log that
        does not fit turns the kernel's answer into ENOSPC)."""
        attr, buffers = load_attr(req)
        insns = _sys.cbytes(req.instructions)  # a C copy for the kernel to read
        attr.insns = _sys.address(insns)
        if req.attach_btf_obj_fd is not None:
            attr.attach_prog_fd = req.attach_btf_obj_fd.raw
        if req.btf_fd is not None:
            attr.prog_btf_fd = req.btf_fd.raw
        if req.fd_array:
            buffers.append(_sys.cbytes(req.fd_array))
            attr.fd_array = _sys.address(buffers[-1])
        return cls._load_attr(attr, req.name, req.type, req.attach_type, req.line_infos, log)

    @classmethod
    def _load_attr(
        cls,
        attr: _sys.ProgLoadAttr,
        name: str,
        type: ProgType,
        attach_type: AttachType | None,
        line_infos: tuple[LineInfo, ...] | LazyLineInfos,
        log: LogOptions,
    ) -> Program:
        """BPF_PROG_LOAD of a filled-in ``attr`` (whose buffers the caller keeps alive),
        with the log handling :meth:`load` describes."""
        size = log.size or DEFAULT_LOG_SIZE
        level = 0 if log.disabled else log.level
        result = _sys.prog_load(attr, size if level else 0, level)
        code = result.err
        truncated = False
        if result.fd is None and not log.disabled:
            if not level & _TRACE:  # the walk that led to the failure explains it
                level |= LOG_LEVEL1
                result = _sys.prog_load(attr, size, level)
            cap = MAX_LOG_SIZE if log.level & _TRACE else FAILURE_LOG_SIZE
            while result.fd is None and result.err == errno.ENOSPC:
                if size >= cap or result.log_true_size >= cap:
                    truncated = True  # the kernel kept the tail, which says why
                    break
                size = min(max(size * 8, result.log_true_size + 1), cap)
                result = _sys.prog_load(attr, size, level)
            if result.err != errno.ENOSPC:
                code = result.err
        if result.fd is None:
            if isinstance(line_infos, LazyLineInfos):  # built now, for the message
                line_infos = line_infos.get()
            raise _load_error(name, line_infos, code, result.log, truncated)
        return cls(
            result.fd,
            name=name,
            type=type,
            attach_type=attach_type,
            verifier_log=result.log,
        )

    _kind = "program"
    _by_id = Cmd.PROG_GET_FD_BY_ID

    @classmethod
    def _adopt(cls, fd: FD, name: str | None) -> Program:
        info = _sys.prog_info(fd)
        prog = cls(fd, name=name or info.name.decode("utf-8", "replace"), type=info.type)
        prog._remember(info)
        return prog

    def clone(self) -> Program:
        prog = Program(self.fd.dup(), name=self.name, type=self.type, attach_type=self.attach_type)
        prog._id, prog._tag, prog._verified_insns = self._id, self._tag, self._verified_insns
        return prog

    # ------------------------------------------------------------------ basics

    def _what(self) -> str:
        return f"program {self.name}"

    def __repr__(self) -> str:
        t = self.type.name.lower() if isinstance(self.type, ProgType) else self.type
        return f"Program({self.name!r}, {t}, fd={self._fd.raw if not self.closed else 'closed'})"

    def stats(self) -> RunStats:
        """Run count and run time so far (one BPF_OBJ_GET_INFO_BY_FD, no instructions)."""
        try:
            i = _sys.prog_info(self.fd)
        except SyscallError as err:
            raise err.replace(subject=self._what()) from err
        return RunStats(run_count=i.run_cnt, run_time_ns=i.run_time_ns)

    def info(self) -> ProgramInfo:
        """What the kernel reports about the program now, with its translated instructions
        and map ids (two BPF_OBJ_GET_INFO_BY_FD calls: for the id or tag alone use
        :attr:`id` and :attr:`tag`, which are read once)."""
        i, xlated, map_ids = _sys.prog_xlated(self.fd)
        self._remember(i)
        try:
            t: ProgType | int = ProgType(i.type)
        except ValueError:
            t = i.type
        return ProgramInfo(
            id=i.id,
            name=i.name.decode("utf-8", "replace"),
            type=t,
            tag=bytes(i.tag).hex(),
            xlated=xlated,
            map_ids=tuple(map_ids),
            btf_id=i.btf_id,
            load_time_ns=i.load_time,
            run_time_ns=i.run_time_ns,
            run_count=i.run_cnt,
            verified_insns=i.verified_insns,
            created_by_uid=i.created_by_uid,
        )

    @property
    def id(self) -> int:
        """The program's kernel id: read once (lazily), then kept."""
        if self._id is None:
            self._remember(_sys.prog_info(self.fd))
        assert self._id is not None
        return self._id

    @property
    def tag(self) -> str:
        """The kernel's tag of the program (hex of the SHA of its instructions, as bpftool
        shows it): read once (lazily, with the id), then kept."""
        if self._tag is None:
            self._remember(_sys.prog_info(self.fd))
        assert self._tag is not None
        return self._tag

    @property
    def verified_insns(self) -> int:
        """How many instructions the verifier processed when the program was loaded (read
        once, with the id; 0 on kernels before 5.16, which do not report it)."""
        if self._id is None:
            self._remember(_sys.prog_info(self.fd))
        return self._verified_insns

    def map_ids(self) -> tuple[int, ...]:
        """The ids of the maps the program uses, as the kernel reports them now."""
        return tuple(_sys.prog_map_ids(self.fd))

    def _remember(self, info: _sys.ProgInfo) -> None:
        self._id = int(info.id)
        self._tag = bytes(info.tag).hex()
        self._verified_insns = int(info.verified_insns)

    def btf_spec(self) -> _btf.Spec | None:
        """The BTF the program was loaded with, as the kernel holds it (the whole object's
        types: its structs, for instance), or None for a program loaded without BTF."""
        btf_id = int(_sys.prog_info(self.fd).btf_id)
        return kernel_btf_spec(btf_id) if btf_id else None

    # ------------------------------------------------------------------ pinning

    # ------------------------------------------------------------------ test run

    def test_run(
        self,
        data: bytes = b"",
        *,
        ctx: bytes | None = None,
        repeat: int = 1,
        data_out_size: int | None = None,
        ctx_out_size: int | None = None,
        flags: int = 0,
        cpu: int = 0,
    ) -> RunResult:
        """Run the program on ``data`` (and ``ctx``) with BPF_PROG_TEST_RUN.

        Works for xdp, tc, socket filter, cgroup_skb … here; raw_tp and syscall programs
        need ``repeat=0`` (the kernel rejects a repeat count for them).
        """
        out_size = data_out_size if data_out_size is not None else (len(data) + 256 if data else 0)
        while True:
            din = ctypes.create_string_buffer(data, len(data) or 1)
            dout = ctypes.create_string_buffer(out_size or 1)
            cin = ctypes.create_string_buffer(ctx, len(ctx)) if ctx else None
            csize = ctx_out_size if ctx_out_size is not None else (len(ctx) if ctx else 0)
            cout = ctypes.create_string_buffer(csize) if csize else None
            attr = _sys.TestRunAttr(
                prog_fd=self.fd.raw,
                data_size_in=len(data),
                data_size_out=out_size,
                data_in=ctypes.addressof(din) if data else 0,
                data_out=ctypes.addressof(dout) if out_size else 0,
                repeat=repeat,
                ctx_size_in=len(ctx) if ctx else 0,
                ctx_in=ctypes.addressof(cin) if cin is not None else 0,
                ctx_size_out=csize,
                ctx_out=ctypes.addressof(cout) if cout is not None else 0,
                flags=flags,
                cpu=cpu,
            )
            try:
                _sys.prog_test_run(attr)
            except SyscallError as err:
                if err.errno == errno.ENOSPC and out_size < (1 << 20) and data_out_size is None:
                    out_size = max(out_size * 2, 4096)
                    continue
                hint = ""
                if err.errno in (
                    errno.ENOTSUPP if hasattr(errno, "ENOTSUPP") else -1,
                    _sys.ENOTSUPP,
                    errno.EOPNOTSUPP,
                ):
                    hint = "this program type cannot be test-run"
                elif err.errno == errno.EINVAL and repeat and self.type in _NO_REPEAT:
                    hint = "raw_tp and syscall programs need repeat=0"
                elif err.errno == errno.EINVAL:
                    hint = "check the input: too short for its ethertype, or a bad ctx"
                raise err.replace(subject=f"program {self.name}", hint=hint) from err
            n = min(int(attr.data_size_out), out_size)
            cn = min(int(attr.ctx_size_out), csize)
            return RunResult(
                retval=int(attr.retval),
                data=dout.raw[:n] if out_size else b"",
                ctx=cout.raw[:cn] if cout is not None else b"",
                duration_ns=int(attr.duration),
            )


# Program types whose test run refuses a repeat count.
_NO_REPEAT = (ProgType.RAW_TRACEPOINT, ProgType.SYSCALL)


def _load_error(
    name: str, line_infos: Sequence[LineInfo], err: int, log: str, truncated: bool = False
) -> SyscallError:
    """Program ``name``'s refusal, explained from the log and its line info records."""
    if log:
        if truncated:  # a rotated log starts in the middle of a line
            log = log.split("\n", 1)[1] if "\n" in log else ""
        diagnosis = diagnose(log, line_infos)
        return VerifierError(
            diagnosis.summary(),
            err,
            log,
            name,
            line_infos=line_infos,
            truncated=truncated,
            diagnosis=diagnosis,
        )
    hint = ""
    if err == errno.EPERM:
        hint = (
            "needs CAP_BPF plus CAP_PERFMON/CAP_NET_ADMIN for this program type,"
            " or the kernel's lockdown forbids it"
        )
    elif err == errno.E2BIG:
        hint = "program too large"
    return SyscallError("load", err, subject=f"program {name}", hint=hint)
