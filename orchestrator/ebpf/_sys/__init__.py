"""The bpf() system call: one typed wrapper per command.

This package is the only place that calls ``syscall()`` or packs a ``bpf_attr``: the call
site is here (:func:`bpf`, and the command wrappers around it), the attr and info structs
are in :mod:`.attrs` (each mirrors the member of ``union bpf_attr`` used by one command,
field for field; the kernel accepts an attr shorter than its own as long as it is
zero-extended, so each command passes exactly its own struct: see
``bpf_check_uarg_tail_zero`` in kernel/bpf/syscall.c), the commands, types and flags in
:mod:`.enums`, the owned fd in :mod:`.fd`. This module re-exports all of them. A test
checks every struct and enum against the running kernel's BTF.

Failures raise :class:`~orchestrator.ebpf.errors.SyscallError` subclasses chosen by errno
and command, with the operation and errno as fields.
"""

from __future__ import annotations

import array
import ctypes
import errno as _errno
import functools
import os
from collections.abc import Iterator

from orchestrator.ebpf._statfs import BPF_FS_MAGIC as BPF_FS_MAGIC
from orchestrator.ebpf._statfs import fs_magic as fs_magic
from orchestrator.ebpf._sys.attrs import (
    PERF_EVENT_IOC_DISABLE,
    PERF_EVENT_IOC_ENABLE,
    PERF_EVENT_IOC_SET_BPF,
    PERF_FLAG_FD_CLOEXEC,
    PERF_FLAG_FD_NO_GROUP,
    PERF_SAMPLE_RAW,
    PERF_TYPE_SOFTWARE,
    PERF_TYPE_TRACEPOINT,
    BtfInfo,
    BtfLoadAttr,
    EnableStatsAttr,
    GetIdAttr,
    InfoAttr,
    IterCreateAttr,
    LinkCreateAttr,
    LinkDetachAttr,
    LinkInfo,
    LinkUpdateAttr,
    MapBatchAttr,
    MapCreateAttr,
    MapElemAttr,
    MapFreezeAttr,
    MapInfo,
    ObjPinAttr,
    PerfEventAttr,
    ProgInfo,
    ProgLoadAttr,
    ProgQueryAttr,
    RawTracepointOpenAttr,
    TestRunAttr,
    s32,
    u8,
    u32,
    u64,
)
from orchestrator.ebpf._sys.enums import (
    BPF_F_AFTER,
    BPF_F_ALLOW_MULTI,
    BPF_F_ALLOW_OVERRIDE,
    BPF_F_BEFORE,
    BPF_F_ID,
    BPF_F_LINK,
    BPF_F_REPLACE,
    BPF_F_TEST_RUN_ON_CPU,
    BPF_F_TEST_XDP_LIVE_FRAMES,
    BPF_OBJ_NAME_LEN,
    BPF_PSEUDO_BTF_ID,
    BPF_PSEUDO_CALL,
    BPF_PSEUDO_FUNC,
    BPF_PSEUDO_KFUNC_CALL,
    BPF_PSEUDO_MAP_FD,
    BPF_PSEUDO_MAP_IDX,
    BPF_PSEUDO_MAP_IDX_VALUE,
    BPF_PSEUDO_MAP_VALUE,
    BPF_STATS_RUN_TIME,
    BPF_TAG_SIZE,
    AttachType,
    Cmd,
    LinkType,
    MapFlags,
    MapType,
    PerfEventLinkType,
    ProgFlags,
    ProgType,
    UpdateFlags,
    XDPFlags,
    map_type_label,
)
from orchestrator.ebpf._sys.fd import FD, Closing
from orchestrator.ebpf.errors import ENOTSUPP as ENOTSUPP  # callers test err.errno against it
from orchestrator.ebpf.errors import (
    KeyExistsError,
    KeyNotFoundError,
    NotFoundError,
    NotSupportedError,
    PermissionDeniedError,
    SyscallError,
)

_SYSCALL_NUMBERS = {
    "x86_64": {"bpf": 321, "perf_event_open": 298},
    "aarch64": {"bpf": 280, "perf_event_open": 241},
    "riscv64": {"bpf": 280, "perf_event_open": 241},
    "ppc64le": {"bpf": 361, "perf_event_open": 319},
    "s390x": {"bpf": 351, "perf_event_open": 331},
}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.ioctl.restype = ctypes.c_int
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]


def _nr(name: str) -> int:
    machine = os.uname().machine  # what platform.machine() reads, without importing it
    try:
        return _SYSCALL_NUMBERS[machine][name]
    except KeyError:
        raise NotSupportedError(f"{name}: unsupported architecture {machine}") from None


_NR_BPF = _nr("bpf")
_NR_PERF_EVENT_OPEN = _nr("perf_event_open")


# Map element commands: ENOENT is a missing key (or an empty queue), EEXIST a present one.
_ELEMENT_CMDS = frozenset(
    {
        Cmd.MAP_LOOKUP_ELEM,
        Cmd.MAP_UPDATE_ELEM,
        Cmd.MAP_DELETE_ELEM,
        Cmd.MAP_GET_NEXT_KEY,
        Cmd.MAP_LOOKUP_AND_DELETE_ELEM,
        Cmd.MAP_LOOKUP_BATCH,
        Cmd.MAP_LOOKUP_AND_DELETE_BATCH,
        Cmd.MAP_UPDATE_BATCH,
        Cmd.MAP_DELETE_BATCH,
    }
)
# Commands that open an object by pin or id: ENOENT is a missing object.
_OPEN_CMDS = frozenset(
    {
        Cmd.OBJ_GET,
        Cmd.MAP_GET_FD_BY_ID,
        Cmd.PROG_GET_FD_BY_ID,
        Cmd.LINK_GET_FD_BY_ID,
        Cmd.BTF_GET_FD_BY_ID,
    }
)


def error_from_errno(op: str, err: int, cmd: Cmd | None = None) -> SyscallError:
    """The error for a failed call (``op`` names the operation; ``cmd`` is the bpf command,
    None for another system call). Its class says what the errno means for that call:
    KeyNotFoundError/KeyExistsError only for map element commands, NotFoundError only for
    the commands that open a pin or an id."""
    if cmd in _ELEMENT_CMDS and err == _errno.ENOENT:
        return KeyNotFoundError(op, err)
    if cmd in _ELEMENT_CMDS and err == _errno.EEXIST:
        return KeyExistsError(op, err)
    if cmd in _OPEN_CMDS and err == _errno.ENOENT:
        return NotFoundError(op, err)
    if err in (_errno.EPERM, _errno.EACCES):
        return PermissionDeniedError(op, err)
    return SyscallError(op, err)


_CMD_NOUN = {
    Cmd.MAP_CREATE: "create map",
    Cmd.MAP_LOOKUP_ELEM: "lookup",
    Cmd.MAP_UPDATE_ELEM: "update",
    Cmd.MAP_DELETE_ELEM: "delete",
    Cmd.MAP_GET_NEXT_KEY: "next key",
    Cmd.PROG_LOAD: "load program",
    Cmd.OBJ_PIN: "pin",
    Cmd.OBJ_GET: "open pin",
    Cmd.PROG_ATTACH: "attach",
    Cmd.PROG_DETACH: "detach",
    Cmd.PROG_TEST_RUN: "test run",
    Cmd.OBJ_GET_INFO_BY_FD: "get info",
    Cmd.BTF_LOAD: "load btf",
    Cmd.LINK_CREATE: "create link",
    Cmd.LINK_UPDATE: "update link",
    Cmd.MAP_FREEZE: "freeze map",
    Cmd.ENABLE_STATS: "enable stats",
}


_byref, _sizeof = ctypes.byref, ctypes.sizeof
# The commands on a load's path by plain names: naming an enum member looks a class
# attribute up (~0.1 µs on Python 3.11), a few times per map and program loaded.
_MAP_CREATE, _MAP_UPDATE_ELEM, _MAP_FREEZE = Cmd.MAP_CREATE, Cmd.MAP_UPDATE_ELEM, Cmd.MAP_FREEZE
_PROG_LOAD, _BTF_LOAD = Cmd.PROG_LOAD, Cmd.BTF_LOAD


def bpf(cmd: Cmd, attr: ctypes.Structure) -> int:
    """Issue ``bpf(cmd, &attr, sizeof(attr))``; return the result or raise."""
    while True:
        # _libc looked up per call: the loader benchmark times bpf() by replacing it
        ret = _libc.syscall(_NR_BPF, cmd, _byref(attr), _sizeof(attr))
        if ret >= 0:
            return int(ret)
        err = ctypes.get_errno()
        if err == _errno.EINTR or (err == _errno.EAGAIN and cmd == _PROG_LOAD):
            continue  # PROG_LOAD returns EAGAIN when the verifier was interrupted
        raise error_from_errno(_CMD_NOUN.get(cmd, cmd.name.lower().replace("_", " ")), err, cmd)


def cbytes(data: bytes) -> array.array[int]:
    """A C copy of ``data`` for the kernel to read, at least one byte long so that it has
    an address (:func:`address`). An ``array.array``, not a ctypes array: ctypes makes a
    new array type for every length it has not seen yet (~20 µs each), and a load passes
    buffers of many lengths (instructions, func and line info, BTF, map values)."""
    return array.array("B", data or b"\0")


def address(buf: array.array[int]) -> int:
    """The address of :func:`cbytes`' copy (valid while ``buf`` lives and keeps its size)."""
    return buf.buffer_info()[0]


# ---------------------------------------------------------------------------- maps


def map_create(attr: MapCreateAttr) -> FD:
    return FD(bpf(_MAP_CREATE, attr))


def _elem_attr(fd: FD, key: array.array[int] | None, value: int, flags: int) -> MapElemAttr:
    return MapElemAttr(
        map_fd=fd.raw,
        key=address(key) if key is not None else 0,
        value=value,
        flags=flags,
    )


def map_lookup_elem(
    fd: FD, key: bytes | None, value_size: int, flags: int = 0, value_in: bytes | None = None
) -> bytes:
    """``key`` None for keyless maps (queue/stack peek); ``value_in`` is what a bloom filter
    looks up (the kernel reads the value buffer)."""
    kbuf = cbytes(key) if key is not None else None
    vbuf = ctypes.create_string_buffer(value_size or 1)
    if value_in is not None:
        ctypes.memmove(vbuf, value_in, min(len(value_in), value_size))
    bpf(Cmd.MAP_LOOKUP_ELEM, _elem_attr(fd, kbuf, ctypes.addressof(vbuf), flags))
    return vbuf.raw[:value_size]


def map_lookup_and_delete_elem(fd: FD, key: bytes | None, value_size: int) -> bytes:
    kbuf = cbytes(key) if key is not None else None
    vbuf = ctypes.create_string_buffer(value_size or 1)
    bpf(Cmd.MAP_LOOKUP_AND_DELETE_ELEM, _elem_attr(fd, kbuf, ctypes.addressof(vbuf), 0))
    return vbuf.raw[:value_size]


def map_update_elem(fd: FD, key: bytes | None, value: bytes, flags: int = 0) -> None:
    kbuf = cbytes(key) if key is not None else None
    vbuf = cbytes(value)
    bpf(_MAP_UPDATE_ELEM, _elem_attr(fd, kbuf, address(vbuf), flags))


def map_update_attr(fd: int, attr: bytes) -> None:
    """BPF_MAP_UPDATE_ELEM of ``attr`` (MapElemAttr bytes whose key and value buffers the
    caller keeps alive) on map ``fd``."""
    elem = MapElemAttr.from_buffer_copy(attr)
    elem.map_fd = fd
    bpf(_MAP_UPDATE_ELEM, elem)


def map_delete_elem(fd: FD, key: bytes) -> None:
    kbuf = cbytes(key)
    bpf(Cmd.MAP_DELETE_ELEM, _elem_attr(fd, kbuf, 0, 0))


def map_get_next_key(fd: FD, key: bytes | None, key_size: int) -> bytes | None:
    """The key after ``key`` (the first key when ``key`` is None); None at the end."""
    kbuf = cbytes(key) if key is not None else None
    nbuf = ctypes.create_string_buffer(key_size or 1)
    try:
        bpf(Cmd.MAP_GET_NEXT_KEY, _elem_attr(fd, kbuf, ctypes.addressof(nbuf), 0))
    except KeyNotFoundError:
        return None
    return nbuf.raw[:key_size]


def map_freeze(fd: FD) -> None:
    bpf(_MAP_FREEZE, MapFreezeAttr(map_fd=fd.raw))


def map_batch(
    cmd: Cmd,
    fd: FD,
    *,
    in_batch: ctypes.Array[ctypes.c_char] | None,
    out_batch: ctypes.Array[ctypes.c_char] | None,
    keys: ctypes.Array[ctypes.c_char],
    values: ctypes.Array[ctypes.c_char] | None,
    count: int,
    elem_flags: int = 0,
) -> tuple[int, bool]:
    """One batch command; returns (elements processed, whether the map was exhausted)."""
    attr = MapBatchAttr(
        in_batch=ctypes.addressof(in_batch) if in_batch is not None else 0,
        out_batch=ctypes.addressof(out_batch) if out_batch is not None else 0,
        keys=ctypes.addressof(keys),
        values=ctypes.addressof(values) if values is not None else 0,
        count=count,
        map_fd=fd.raw,
        elem_flags=elem_flags,
    )
    try:
        bpf(cmd, attr)
    except KeyNotFoundError:
        return int(attr.count), True
    return int(attr.count), False


# ---------------------------------------------------------------------------- programs


class LoadResult:
    """What PROG_LOAD gave back: the fd, or the errno and the verifier log."""

    __slots__ = ("err", "fd", "log", "log_true_size")

    def __init__(self, fd: FD | None, err: int, log: str, log_true_size: int) -> None:
        self.fd = fd
        self.err = err
        self.log = log
        self.log_true_size = log_true_size


def prog_load(attr: ProgLoadAttr, log_size: int = 0, log_level: int = 0) -> LoadResult:
    """BPF_PROG_LOAD; never raises for a kernel refusal, so the caller can retry with a log."""
    log_buf = ctypes.create_string_buffer(log_size) if log_size else None
    attr.log_level = log_level if log_buf is not None else 0
    attr.log_size = log_size if log_buf is not None else 0
    attr.log_buf = ctypes.addressof(log_buf) if log_buf is not None else 0
    try:
        fd = bpf(_PROG_LOAD, attr)
    except SyscallError as exc:
        log = log_buf.value.decode("utf-8", "replace") if log_buf is not None else ""
        return LoadResult(None, exc.errno, log, int(attr.log_true_size))
    log = log_buf.value.decode("utf-8", "replace") if log_buf is not None else ""
    return LoadResult(FD(fd), 0, log, int(attr.log_true_size))


def prog_test_run(attr: TestRunAttr) -> None:
    bpf(Cmd.PROG_TEST_RUN, attr)


def btf_load(
    data: bytes, buf: array.array[int] | None = None, log_size: int = 0, log_level: int = 0
) -> tuple[FD | None, int, str]:
    """BPF_BTF_LOAD; returns (fd, 0, log) or (None, errno, log). ``buf``: the
    :func:`cbytes` copy of ``data`` if the caller keeps one."""
    if buf is None:
        buf = cbytes(data)
    log_buf = ctypes.create_string_buffer(log_size) if log_size else None
    attr = BtfLoadAttr(btf=address(buf), btf_size=len(data))
    if log_buf is not None:  # (no log: the fields stay 0, not set one by one)
        attr.btf_log_buf = ctypes.addressof(log_buf)
        attr.btf_log_size = log_size
        attr.btf_log_level = log_level
    try:
        fd = bpf(_BTF_LOAD, attr)
    except SyscallError as exc:
        log = log_buf.value.decode("utf-8", "replace") if log_buf is not None else ""
        return None, exc.errno, log
    return FD(fd), 0, ""


# ---------------------------------------------------------------------------- objects


def obj_pin(fd: FD, path: str, *, dir_fd: int | None = None) -> None:
    """BPF_OBJ_PIN; with ``dir_fd``, ``path`` is relative to that directory (BPF_F_PATH_FD,
    Linux 6.5)."""
    p = cbytes(os.fsencode(path) + b"\0")
    attr = ObjPinAttr(pathname=address(p), bpf_fd=fd.raw)
    if dir_fd is not None:
        attr.file_flags, attr.path_fd = MapFlags.PATH_FD, dir_fd
    bpf(Cmd.OBJ_PIN, attr)


def obj_get(path: str, flags: int = 0, *, dir_fd: int | None = None) -> FD:
    """BPF_OBJ_GET; with ``dir_fd``, ``path`` is relative to that directory (BPF_F_PATH_FD,
    Linux 6.5). The kernel follows a symlink in the last component: callers that must not
    follow one check it first (:func:`orchestrator.ebpf._bpffs.open_pin_at`)."""
    p = cbytes(os.fsencode(path) + b"\0")
    attr = ObjPinAttr(pathname=address(p), file_flags=flags)
    if dir_fd is not None:
        attr.file_flags, attr.path_fd = flags | MapFlags.PATH_FD, dir_fd
    return FD(bpf(Cmd.OBJ_GET, attr))


def get_next_id(cmd: Cmd, start: int) -> int | None:
    """PROG/MAP/BTF/LINK_GET_NEXT_ID: the next id after ``start``, None at the end."""
    attr = GetIdAttr(start_id=start)
    try:
        bpf(cmd, attr)
    except SyscallError as err:
        if err.errno == _errno.ENOENT:
            return None
        raise
    return int(attr.next_id)


def iter_ids(cmd: Cmd) -> Iterator[int]:
    cur = 0
    while (nxt := get_next_id(cmd, cur)) is not None:
        yield nxt
        cur = nxt


def fd_by_id(cmd: Cmd, obj_id: int) -> FD:
    return FD(bpf(cmd, GetIdAttr(start_id=obj_id)))


def obj_info(fd: FD, info: ctypes.Structure) -> None:
    """BPF_OBJ_GET_INFO_BY_FD into ``info`` (whose pointers the caller has set)."""
    attr = InfoAttr(bpf_fd=fd.raw, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    bpf(Cmd.OBJ_GET_INFO_BY_FD, attr)


def prog_info(fd: FD) -> ProgInfo:
    info = ProgInfo()
    obj_info(fd, info)
    return info


def enable_stats(stats_type: int = BPF_STATS_RUN_TIME) -> FD:
    """BPF_ENABLE_STATS: the kernel counts every program's runs and run time while the
    returned fd is open (Linux 5.8; CAP_SYS_ADMIN)."""
    return FD(bpf(Cmd.ENABLE_STATS, EnableStatsAttr(type=stats_type)))


def prog_map_ids(fd: FD) -> list[int]:
    """The ids of the maps a program uses (two info calls, no instructions copied)."""
    first = prog_info(fd)
    if not first.nr_map_ids:
        return []
    map_ids = (u32 * first.nr_map_ids)()
    info = ProgInfo(nr_map_ids=first.nr_map_ids, map_ids=ctypes.addressof(map_ids))
    obj_info(fd, info)
    return list(map_ids)[: min(info.nr_map_ids, first.nr_map_ids)]


def prog_xlated(fd: FD) -> tuple[ProgInfo, bytes, list[int]]:
    """The translated instructions and map ids of a program, in a second info call."""
    first = prog_info(fd)
    insns = ctypes.create_string_buffer(first.xlated_prog_len or 1)
    map_ids = (u32 * max(first.nr_map_ids, 1))()
    info = ProgInfo(
        xlated_prog_len=first.xlated_prog_len,
        xlated_prog_insns=ctypes.addressof(insns),
        nr_map_ids=first.nr_map_ids,
        map_ids=ctypes.addressof(map_ids),
    )
    obj_info(fd, info)
    return info, insns.raw[: info.xlated_prog_len], list(map_ids)[: info.nr_map_ids]


def map_info(fd: FD) -> MapInfo:
    info = MapInfo()
    obj_info(fd, info)
    return info


def btf_info(fd: FD) -> tuple[BtfInfo, bytes, str]:
    first = BtfInfo()
    obj_info(fd, first)
    data = ctypes.create_string_buffer(first.btf_size or 1)
    name = ctypes.create_string_buffer(256)
    info = BtfInfo(
        btf=ctypes.addressof(data),
        btf_size=first.btf_size,
        name=ctypes.addressof(name),
        name_len=256,
    )
    obj_info(fd, info)
    return info, data.raw[: info.btf_size], name.value.decode("utf-8", "replace")


def link_info(fd: FD) -> LinkInfo:
    info = LinkInfo()
    obj_info(fd, info)
    return info


# ---------------------------------------------------------------------------- attach


def link_create(attr: LinkCreateAttr) -> FD:
    return FD(bpf(Cmd.LINK_CREATE, attr))


def link_update(link: FD, new_prog: FD, old_prog: FD | None = None) -> None:
    attr = LinkUpdateAttr(link_fd=link.raw, new_prog_fd=new_prog.raw)
    if old_prog is not None:
        attr.flags = BPF_F_REPLACE
        attr.old_prog_fd = old_prog.raw
    bpf(Cmd.LINK_UPDATE, attr)


def link_detach(link: FD) -> None:
    bpf(Cmd.LINK_DETACH, LinkDetachAttr(link_fd=link.raw))


def raw_tracepoint_open(prog: FD, name: str | None) -> FD:
    buf = cbytes(name.encode() + b"\0") if name is not None else None
    attr = RawTracepointOpenAttr(name=address(buf) if buf is not None else 0, prog_fd=prog.raw)
    return FD(bpf(Cmd.RAW_TRACEPOINT_OPEN, attr))


def prog_query(
    target_fd: int, attach_type: AttachType, max_ids: int = 64
) -> tuple[list[int], list[int], int]:
    """BPF_PROG_QUERY: (program ids, link ids, revision) attached at a hook."""
    prog_ids = (u32 * max_ids)()
    link_ids = (u32 * max_ids)()
    attr = ProgQueryAttr(
        target_fd=target_fd,
        attach_type=attach_type,
        prog_ids=ctypes.addressof(prog_ids),
        count=max_ids,
        link_ids=ctypes.addressof(link_ids),
    )
    bpf(Cmd.PROG_QUERY, attr)
    n = int(attr.count)
    return list(prog_ids)[:n], list(link_ids)[:n], int(attr.revision)


def iter_create(link: FD) -> FD:
    return FD(bpf(Cmd.ITER_CREATE, IterCreateAttr(link_fd=link.raw)))


def perf_event_open(
    attr: PerfEventAttr, pid: int, cpu: int, group_fd: int = -1, flags: int = PERF_FLAG_FD_CLOEXEC
) -> FD:
    attr.size = ctypes.sizeof(attr)
    while True:
        ret = _libc.syscall(
            _NR_PERF_EVENT_OPEN,
            ctypes.byref(attr),
            ctypes.c_int(pid),
            ctypes.c_int(cpu),
            ctypes.c_int(group_fd),
            ctypes.c_ulong(flags),
        )
        if ret >= 0:
            return FD(int(ret))
        err = ctypes.get_errno()
        if err != _errno.EINTR:
            raise error_from_errno("perf_event_open", err)


def ioctl(fd: FD, request: int, arg: int = 0) -> None:
    if _libc.ioctl(fd.raw, request, arg) < 0:
        raise error_from_errno(f"ioctl {request:#x}", ctypes.get_errno())


@functools.cache
def possible_cpus() -> int:
    """The number of possible CPUs (per-CPU values and perf arrays are sized by it). Fixed
    at boot (CPU hotplug changes online CPUs, not possible ones), so read once."""
    return _parse_cpu_list("/sys/devices/system/cpu/possible")


def _parse_cpu_list(path: str) -> int:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return os.cpu_count() or 1
    highest = 0
    for part in text.split(","):
        if not part:
            continue
        hi = part.split("-")[-1]
        highest = max(highest, int(hi))
    return highest + 1


# ---------------------------------------------------------------------------- namespaces

CLONE_NEWNET = 0x40000000
CLONE_NEWCGROUP = 0x02000000

_libc.setns.restype = ctypes.c_int
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]


def setns(fd: int, nstype: int) -> None:
    """setns(2) for the calling thread (a network namespace is per thread)."""
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err).lower()}")


# ---------------------------------------------------------------------------- links


def link_info_named(fd: FD, name_size: int = 4096) -> tuple[LinkInfo, str]:
    """``bpf_link_info`` plus the string some link types report through a user buffer: the
    tracepoint name of raw_tp links, the event or file name of perf_event links (tracepoint,
    kprobe, uprobe), the iterator target. Layouts (union words after the 16-byte head):
    raw_tracepoint/iter: name ptr @0, len @1; perf_event: type @0, name ptr @1, len @2 (low
    half; the high half is the uprobe/kprobe offset on return)."""
    info = link_info(fd)
    if info.type in (LinkType.RAW_TRACEPOINT, LinkType.ITER):
        ptr_word, len_word = 0, 1
    elif info.type == LinkType.PERF_EVENT and (info.union[0] & 0xFFFFFFFF) in (
        PerfEventLinkType.UPROBE,
        PerfEventLinkType.URETPROBE,
        PerfEventLinkType.KPROBE,
        PerfEventLinkType.KRETPROBE,
        PerfEventLinkType.TRACEPOINT,
    ):
        ptr_word, len_word = 1, 2
    else:
        return info, ""
    buf = ctypes.create_string_buffer(name_size)
    again = LinkInfo()
    again.union[ptr_word] = ctypes.addressof(buf)
    again.union[len_word] = name_size
    obj_info(fd, again)
    return again, buf.value.decode("utf-8", "replace")


def link_create_perf_event(prog: FD, perf: FD, cookie: int = 0) -> FD:
    """BPF_LINK_CREATE of a perf_event link (``perf_event.bpf_cookie`` at union word 0)."""
    attr = LinkCreateAttr(prog_fd=prog.raw, target_fd=perf.raw, attach_type=AttachType.PERF_EVENT)
    attr.union_lo = cookie
    return link_create(attr)


def link_create_tcx(
    prog: FD, ifindex: int, attach_type: int, flags: int, relative: int, expected_revision: int
) -> FD:
    """BPF_LINK_CREATE of a tcx link (``tcx.relative_fd|relative_id`` u32 @16,
    ``tcx.expected_revision`` u64 @24)."""
    attr = LinkCreateAttr(prog_fd=prog.raw, target_fd=ifindex, attach_type=attach_type, flags=flags)
    attr.union_lo = relative
    attr.union_hi = expected_revision
    return link_create(attr)


__all__ = [
    "BPF_FS_MAGIC",
    "BPF_F_AFTER",
    "BPF_F_ALLOW_MULTI",
    "BPF_F_ALLOW_OVERRIDE",
    "BPF_F_BEFORE",
    "BPF_F_ID",
    "BPF_F_LINK",
    "BPF_F_REPLACE",
    "BPF_F_TEST_RUN_ON_CPU",
    "BPF_F_TEST_XDP_LIVE_FRAMES",
    "BPF_OBJ_NAME_LEN",
    "BPF_PSEUDO_BTF_ID",
    "BPF_PSEUDO_CALL",
    "BPF_PSEUDO_FUNC",
    "BPF_PSEUDO_KFUNC_CALL",
    "BPF_PSEUDO_MAP_FD",
    "BPF_PSEUDO_MAP_IDX",
    "BPF_PSEUDO_MAP_IDX_VALUE",
    "BPF_PSEUDO_MAP_VALUE",
    "BPF_TAG_SIZE",
    "CLONE_NEWCGROUP",
    "CLONE_NEWNET",
    "FD",
    "PERF_EVENT_IOC_DISABLE",
    "PERF_EVENT_IOC_ENABLE",
    "PERF_EVENT_IOC_SET_BPF",
    "PERF_FLAG_FD_CLOEXEC",
    "PERF_FLAG_FD_NO_GROUP",
    "PERF_SAMPLE_RAW",
    "PERF_TYPE_SOFTWARE",
    "PERF_TYPE_TRACEPOINT",
    "AttachType",
    "BtfInfo",
    "BtfLoadAttr",
    "Closing",
    "Cmd",
    "GetIdAttr",
    "InfoAttr",
    "IterCreateAttr",
    "LinkCreateAttr",
    "LinkDetachAttr",
    "LinkInfo",
    "LinkType",
    "LinkUpdateAttr",
    "LoadResult",
    "MapBatchAttr",
    "MapCreateAttr",
    "MapElemAttr",
    "MapFlags",
    "MapFreezeAttr",
    "MapInfo",
    "MapType",
    "ObjPinAttr",
    "PerfEventAttr",
    "PerfEventLinkType",
    "ProgFlags",
    "ProgInfo",
    "ProgLoadAttr",
    "ProgQueryAttr",
    "ProgType",
    "RawTracepointOpenAttr",
    "TestRunAttr",
    "UpdateFlags",
    "XDPFlags",
    "bpf",
    "btf_info",
    "btf_load",
    "error_from_errno",
    "fd_by_id",
    "fs_magic",
    "get_next_id",
    "ioctl",
    "iter_create",
    "iter_ids",
    "link_create",
    "link_create_perf_event",
    "link_create_tcx",
    "link_detach",
    "link_info",
    "link_info_named",
    "link_update",
    "map_batch",
    "map_create",
    "map_delete_elem",
    "map_freeze",
    "map_get_next_key",
    "map_info",
    "map_lookup_and_delete_elem",
    "map_lookup_elem",
    "map_type_label",
    "map_update_elem",
    "obj_get",
    "obj_info",
    "obj_pin",
    "perf_event_open",
    "possible_cpus",
    "prog_info",
    "prog_load",
    "prog_map_ids",
    "prog_query",
    "prog_test_run",
    "prog_xlated",
    "raw_tracepoint_open",
    "s32",
    "setns",
    "u8",
    "u32",
    "u64",
]
