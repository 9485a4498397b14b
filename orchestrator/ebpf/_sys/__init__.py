"""The bpf() system call: one typed wrapper per command, attr structs mirroring linux/bpf.h.

This is the only module that calls ``syscall()`` or packs a ``bpf_attr``. Every attr struct
below mirrors the member of ``union bpf_attr`` used by one command, field for field; the
kernel accepts an attr shorter than its own as long as it is zero-extended, so each command
passes exactly its own struct (see ``bpf_check_uarg_tail_zero`` in kernel/bpf/syscall.c).
A test checks every struct and enum here against the running kernel's BTF.

Failures raise :class:`~orchestrator.ebpf.errors.SyscallError` subclasses chosen by errno;
callers add the noun of their object in front of the message.
"""

from __future__ import annotations

import ctypes
import enum
import errno as _errno
import functools
import os
import platform
import warnings
from collections.abc import Iterator
from types import TracebackType
from typing import ClassVar, Self

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
    machine = platform.machine()
    try:
        return _SYSCALL_NUMBERS[machine][name]
    except KeyError:
        raise NotSupportedError(f"{name}: unsupported architecture {machine}") from None


_NR_BPF = _nr("bpf")
_NR_PERF_EVENT_OPEN = _nr("perf_event_open")

BPF_OBJ_NAME_LEN = 16
BPF_TAG_SIZE = 8


class Cmd(enum.IntEnum):
    """``enum bpf_cmd``."""

    MAP_CREATE = 0
    MAP_LOOKUP_ELEM = 1
    MAP_UPDATE_ELEM = 2
    MAP_DELETE_ELEM = 3
    MAP_GET_NEXT_KEY = 4
    PROG_LOAD = 5
    OBJ_PIN = 6
    OBJ_GET = 7
    PROG_ATTACH = 8
    PROG_DETACH = 9
    PROG_TEST_RUN = 10
    PROG_GET_NEXT_ID = 11
    MAP_GET_NEXT_ID = 12
    PROG_GET_FD_BY_ID = 13
    MAP_GET_FD_BY_ID = 14
    OBJ_GET_INFO_BY_FD = 15
    PROG_QUERY = 16
    RAW_TRACEPOINT_OPEN = 17
    BTF_LOAD = 18
    BTF_GET_FD_BY_ID = 19
    TASK_FD_QUERY = 20
    MAP_LOOKUP_AND_DELETE_ELEM = 21
    MAP_FREEZE = 22
    BTF_GET_NEXT_ID = 23
    MAP_LOOKUP_BATCH = 24
    MAP_LOOKUP_AND_DELETE_BATCH = 25
    MAP_UPDATE_BATCH = 26
    MAP_DELETE_BATCH = 27
    LINK_CREATE = 28
    LINK_UPDATE = 29
    LINK_GET_FD_BY_ID = 30
    LINK_GET_NEXT_ID = 31
    ENABLE_STATS = 32
    ITER_CREATE = 33
    LINK_DETACH = 34
    PROG_BIND_MAP = 35


class MapType(enum.IntEnum):
    """``enum bpf_map_type`` (through Linux 6.18)."""

    UNSPEC = 0
    HASH = 1
    ARRAY = 2
    PROG_ARRAY = 3
    PERF_EVENT_ARRAY = 4
    PERCPU_HASH = 5
    PERCPU_ARRAY = 6
    STACK_TRACE = 7
    CGROUP_ARRAY = 8
    LRU_HASH = 9
    LRU_PERCPU_HASH = 10
    LPM_TRIE = 11
    ARRAY_OF_MAPS = 12
    HASH_OF_MAPS = 13
    DEVMAP = 14
    SOCKMAP = 15
    CPUMAP = 16
    XSKMAP = 17
    SOCKHASH = 18
    CGROUP_STORAGE = 19
    REUSEPORT_SOCKARRAY = 20
    PERCPU_CGROUP_STORAGE = 21
    QUEUE = 22
    STACK = 23
    SK_STORAGE = 24
    DEVMAP_HASH = 25
    STRUCT_OPS = 26
    RINGBUF = 27
    INODE_STORAGE = 28
    TASK_STORAGE = 29
    BLOOM_FILTER = 30
    USER_RINGBUF = 31
    CGRP_STORAGE = 32
    ARENA = 33

    @property
    def per_cpu(self) -> bool:
        return self in (
            MapType.PERCPU_HASH,
            MapType.PERCPU_ARRAY,
            MapType.LRU_PERCPU_HASH,
            MapType.PERCPU_CGROUP_STORAGE,
        )

    @property
    def of_maps(self) -> bool:
        return self in (MapType.ARRAY_OF_MAPS, MapType.HASH_OF_MAPS)


class ProgType(enum.IntEnum):
    """``enum bpf_prog_type`` (through Linux 6.18)."""

    UNSPEC = 0
    SOCKET_FILTER = 1
    KPROBE = 2
    SCHED_CLS = 3
    SCHED_ACT = 4
    TRACEPOINT = 5
    XDP = 6
    PERF_EVENT = 7
    CGROUP_SKB = 8
    CGROUP_SOCK = 9
    LWT_IN = 10
    LWT_OUT = 11
    LWT_XMIT = 12
    SOCK_OPS = 13
    SK_SKB = 14
    CGROUP_DEVICE = 15
    SK_MSG = 16
    RAW_TRACEPOINT = 17
    CGROUP_SOCK_ADDR = 18
    LWT_SEG6LOCAL = 19
    LIRC_MODE2 = 20
    SK_REUSEPORT = 21
    FLOW_DISSECTOR = 22
    CGROUP_SYSCTL = 23
    RAW_TRACEPOINT_WRITABLE = 24
    CGROUP_SOCKOPT = 25
    TRACING = 26
    STRUCT_OPS = 27
    EXT = 28
    LSM = 29
    SK_LOOKUP = 30
    SYSCALL = 31
    NETFILTER = 32


class AttachType(enum.IntEnum):
    """``enum bpf_attach_type`` (through Linux 6.18)."""

    CGROUP_INET_INGRESS = 0
    CGROUP_INET_EGRESS = 1
    CGROUP_INET_SOCK_CREATE = 2
    CGROUP_SOCK_OPS = 3
    SK_SKB_STREAM_PARSER = 4
    SK_SKB_STREAM_VERDICT = 5
    CGROUP_DEVICE = 6
    SK_MSG_VERDICT = 7
    CGROUP_INET4_BIND = 8
    CGROUP_INET6_BIND = 9
    CGROUP_INET4_CONNECT = 10
    CGROUP_INET6_CONNECT = 11
    CGROUP_INET4_POST_BIND = 12
    CGROUP_INET6_POST_BIND = 13
    CGROUP_UDP4_SENDMSG = 14
    CGROUP_UDP6_SENDMSG = 15
    LIRC_MODE2 = 16
    FLOW_DISSECTOR = 17
    CGROUP_SYSCTL = 18
    CGROUP_UDP4_RECVMSG = 19
    CGROUP_UDP6_RECVMSG = 20
    CGROUP_GETSOCKOPT = 21
    CGROUP_SETSOCKOPT = 22
    TRACE_RAW_TP = 23
    TRACE_FENTRY = 24
    TRACE_FEXIT = 25
    MODIFY_RETURN = 26
    LSM_MAC = 27
    TRACE_ITER = 28
    CGROUP_INET4_GETPEERNAME = 29
    CGROUP_INET6_GETPEERNAME = 30
    CGROUP_INET4_GETSOCKNAME = 31
    CGROUP_INET6_GETSOCKNAME = 32
    XDP_DEVMAP = 33
    CGROUP_INET_SOCK_RELEASE = 34
    XDP_CPUMAP = 35
    SK_LOOKUP = 36
    XDP = 37
    SK_SKB_VERDICT = 38
    SK_REUSEPORT_SELECT = 39
    SK_REUSEPORT_SELECT_OR_MIGRATE = 40
    PERF_EVENT = 41
    TRACE_KPROBE_MULTI = 42
    LSM_CGROUP = 43
    STRUCT_OPS = 44
    NETFILTER = 45
    TCX_INGRESS = 46
    TCX_EGRESS = 47
    TRACE_UPROBE_MULTI = 48
    CGROUP_UNIX_CONNECT = 49
    CGROUP_UNIX_SENDMSG = 50
    CGROUP_UNIX_RECVMSG = 51
    CGROUP_UNIX_GETPEERNAME = 52
    CGROUP_UNIX_GETSOCKNAME = 53
    NETKIT_PRIMARY = 54
    NETKIT_PEER = 55
    TRACE_KPROBE_SESSION = 56
    TRACE_UPROBE_SESSION = 57


class LinkType(enum.IntEnum):
    """``enum bpf_link_type`` (through Linux 6.18)."""

    UNSPEC = 0
    RAW_TRACEPOINT = 1
    TRACING = 2
    CGROUP = 3
    ITER = 4
    NETNS = 5
    XDP = 6
    PERF_EVENT = 7
    KPROBE_MULTI = 8
    STRUCT_OPS = 9
    NETFILTER = 10
    TCX = 11
    UPROBE_MULTI = 12
    NETKIT = 13
    SOCKMAP = 14


class MapFlags(enum.IntFlag):
    """``map_flags`` bits for BPF_MAP_CREATE."""

    NONE = 0
    NO_PREALLOC = 1 << 0
    NO_COMMON_LRU = 1 << 1
    NUMA_NODE = 1 << 2
    RDONLY = 1 << 3
    WRONLY = 1 << 4
    STACK_BUILD_ID = 1 << 5
    ZERO_SEED = 1 << 6
    RDONLY_PROG = 1 << 7
    WRONLY_PROG = 1 << 8
    CLONE = 1 << 9
    MMAPABLE = 1 << 10
    PRESERVE_ELEMS = 1 << 11
    INNER_MAP = 1 << 12
    LINK = 1 << 13
    PATH_FD = 1 << 14
    VTYPE_BTF_OBJ_FD = 1 << 15
    TOKEN_FD = 1 << 16
    SEGV_ON_FAULT = 1 << 17
    NO_USER_CONV = 1 << 18


class UpdateFlags(enum.IntEnum):
    """Flags of BPF_MAP_UPDATE_ELEM."""

    ANY = 0
    NOEXIST = 1
    EXIST = 2
    LOCK = 4


class ProgFlags(enum.IntFlag):
    NONE = 0
    STRICT_ALIGNMENT = 1 << 0
    ANY_ALIGNMENT = 1 << 1
    TEST_RND_HI32 = 1 << 2
    TEST_STATE_FREQ = 1 << 3
    SLEEPABLE = 1 << 4
    XDP_HAS_FRAGS = 1 << 5


class XDPFlags(enum.IntFlag):
    """``XDP_FLAGS_*`` from linux/if_link.h, used as link flags for XDP links."""

    NONE = 0
    UPDATE_IF_NOEXIST = 1 << 0
    SKB_MODE = 1 << 1
    DRV_MODE = 1 << 2
    HW_MODE = 1 << 3
    REPLACE = 1 << 4


# Flags of BPF_PROG_ATTACH / BPF_LINK_CREATE for multi-program attach points (tcx, cgroup).
BPF_F_ALLOW_OVERRIDE = 1 << 0
BPF_F_ALLOW_MULTI = 1 << 1
BPF_F_REPLACE = 1 << 2
BPF_F_BEFORE = 1 << 3
BPF_F_AFTER = 1 << 4
BPF_F_ID = 1 << 5
BPF_F_LINK = 1 << 13
BPF_F_TEST_RUN_ON_CPU = 1 << 0
BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1

# src_reg values of ld_imm64 (BPF_LD | BPF_IMM | BPF_DW).
BPF_PSEUDO_MAP_FD = 1
BPF_PSEUDO_MAP_VALUE = 2
BPF_PSEUDO_BTF_ID = 3
BPF_PSEUDO_FUNC = 4
BPF_PSEUDO_MAP_IDX = 5
BPF_PSEUDO_MAP_IDX_VALUE = 6
# src_reg values of BPF_CALL.
BPF_PSEUDO_CALL = 1
BPF_PSEUDO_KFUNC_CALL = 2

u8 = ctypes.c_uint8
u32 = ctypes.c_uint32
s32 = ctypes.c_int32
u64 = ctypes.c_uint64


class _Attr(ctypes.Structure):
    """Base of the attr structs. Pointer fields are plain u64 addresses: the caller keeps
    the buffers they point to alive until the call returns."""


class MapCreateAttr(_Attr):
    _fields_ = [
        ("map_type", u32),
        ("key_size", u32),
        ("value_size", u32),
        ("max_entries", u32),
        ("map_flags", u32),
        ("inner_map_fd", u32),
        ("numa_node", u32),
        ("map_name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("map_ifindex", u32),
        ("btf_fd", u32),
        ("btf_key_type_id", u32),
        ("btf_value_type_id", u32),
        ("btf_vmlinux_value_type_id", u32),
        ("map_extra", u64),
        ("value_type_btf_obj_fd", s32),
        ("map_token_fd", s32),
    ]


class MapElemAttr(_Attr):
    _fields_ = [("map_fd", u32), ("key", u64), ("value", u64), ("flags", u64)]


class MapBatchAttr(_Attr):
    _fields_ = [
        ("in_batch", u64),
        ("out_batch", u64),
        ("keys", u64),
        ("values", u64),
        ("count", u32),
        ("map_fd", u32),
        ("elem_flags", u64),
        ("flags", u64),
    ]


class ProgLoadAttr(_Attr):
    _fields_ = [
        ("prog_type", u32),
        ("insn_cnt", u32),
        ("insns", u64),
        ("license", u64),
        ("log_level", u32),
        ("log_size", u32),
        ("log_buf", u64),
        ("kern_version", u32),
        ("prog_flags", u32),
        ("prog_name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("prog_ifindex", u32),
        ("expected_attach_type", u32),
        ("prog_btf_fd", u32),
        ("func_info_rec_size", u32),
        ("func_info", u64),
        ("func_info_cnt", u32),
        ("line_info_rec_size", u32),
        ("line_info", u64),
        ("line_info_cnt", u32),
        ("attach_btf_id", u32),
        ("attach_prog_fd", u32),  # union with attach_btf_obj_fd
        ("core_relo_cnt", u32),
        ("fd_array", u64),
        ("core_relos", u64),
        ("core_relo_rec_size", u32),
        ("log_true_size", u32),
    ]


class ObjPinAttr(_Attr):
    _fields_ = [("pathname", u64), ("bpf_fd", u32), ("file_flags", u32), ("path_fd", s32)]


class TestRunAttr(_Attr):
    __test__ = False  # not a pytest class
    _fields_ = [
        ("prog_fd", u32),
        ("retval", u32),
        ("data_size_in", u32),
        ("data_size_out", u32),
        ("data_in", u64),
        ("data_out", u64),
        ("repeat", u32),
        ("duration", u32),
        ("ctx_size_in", u32),
        ("ctx_size_out", u32),
        ("ctx_in", u64),
        ("ctx_out", u64),
        ("flags", u32),
        ("cpu", u32),
        ("batch_size", u32),
    ]


class GetIdAttr(_Attr):
    _fields_ = [
        ("start_id", u32),
        ("next_id", u32),
        ("open_flags", u32),
        ("fd_by_id_token_fd", s32),
    ]


class InfoAttr(_Attr):
    _fields_ = [("bpf_fd", u32), ("info_len", u32), ("info", u64)]


class ProgQueryAttr(_Attr):
    _fields_ = [
        ("target_fd", u32),
        ("attach_type", u32),
        ("query_flags", u32),
        ("attach_flags", u32),
        ("prog_ids", u64),
        ("count", u32),
        ("_pad", u32),
        ("prog_attach_flags", u64),
        ("link_ids", u64),
        ("link_attach_flags", u64),
        ("revision", u64),
    ]


class RawTracepointOpenAttr(_Attr):
    _fields_ = [("name", u64), ("prog_fd", u32), ("_pad", u32), ("cookie", u64)]


class BtfLoadAttr(_Attr):
    _fields_ = [
        ("btf", u64),
        ("btf_log_buf", u64),
        ("btf_size", u32),
        ("btf_log_size", u32),
        ("btf_log_level", u32),
        ("btf_log_true_size", u32),
        ("btf_flags", u32),
        ("btf_token_fd", s32),
    ]


class LinkCreateAttr(_Attr):
    """``link_create``: the common head plus the 48-byte per-link-type union as 64-bit words.

    Union layouts (offsets from the start of the attr): ``target_btf_id`` u32 @16;
    ``iter_info`` u64 @16 + ``iter_info_len`` u32 @24; ``perf_event.bpf_cookie`` u64 @16;
    ``tcx.relative_fd`` u32 @16 + ``tcx.expected_revision`` u64 @24; ``netfilter`` …
    """

    _fields_ = [
        ("prog_fd", u32),
        ("target_fd", u32),  # union with target_ifindex
        ("attach_type", u32),
        ("flags", u32),
        ("union_lo", u64),
        ("union_hi", u64),
        ("union_rest", u64 * 4),
    ]


class LinkUpdateAttr(_Attr):
    _fields_ = [("link_fd", u32), ("new_prog_fd", u32), ("flags", u32), ("old_prog_fd", u32)]


class LinkDetachAttr(_Attr):
    _fields_ = [("link_fd", u32)]


class MapFreezeAttr(_Attr):
    _fields_ = [("map_fd", u32)]


class IterCreateAttr(_Attr):
    _fields_ = [("link_fd", u32), ("flags", u32)]


class ProgInfo(ctypes.Structure):
    _fields_ = [
        ("type", u32),
        ("id", u32),
        ("tag", u8 * BPF_TAG_SIZE),
        ("jited_prog_len", u32),
        ("xlated_prog_len", u32),
        ("jited_prog_insns", u64),
        ("xlated_prog_insns", u64),
        ("load_time", u64),
        ("created_by_uid", u32),
        ("nr_map_ids", u32),
        ("map_ids", u64),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("ifindex", u32),
        ("gpl_compatible", u32),
        ("netns_dev", u64),
        ("netns_ino", u64),
        ("nr_jited_ksyms", u32),
        ("nr_jited_func_lens", u32),
        ("jited_ksyms", u64),
        ("jited_func_lens", u64),
        ("btf_id", u32),
        ("func_info_rec_size", u32),
        ("func_info", u64),
        ("nr_func_info", u32),
        ("nr_line_info", u32),
        ("line_info", u64),
        ("jited_line_info", u64),
        ("nr_jited_line_info", u32),
        ("line_info_rec_size", u32),
        ("jited_line_info_rec_size", u32),
        ("nr_prog_tags", u32),
        ("prog_tags", u64),
        ("run_time_ns", u64),
        ("run_cnt", u64),
        ("recursion_misses", u64),
        ("verified_insns", u32),
        ("attach_btf_obj_id", u32),
        ("attach_btf_id", u32),
        ("_pad", u32),
    ]


class MapInfo(ctypes.Structure):
    _fields_ = [
        ("type", u32),
        ("id", u32),
        ("key_size", u32),
        ("value_size", u32),
        ("max_entries", u32),
        ("map_flags", u32),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("ifindex", u32),
        ("btf_vmlinux_value_type_id", u32),
        ("netns_dev", u64),
        ("netns_ino", u64),
        ("btf_id", u32),
        ("btf_key_type_id", u32),
        ("btf_value_type_id", u32),
        ("btf_vmlinux_id", u32),
        ("map_extra", u64),
    ]


class BtfInfo(ctypes.Structure):
    _fields_ = [
        ("btf", u64),
        ("btf_size", u32),
        ("id", u32),
        ("name", u64),
        ("name_len", u32),
        ("kernel_btf", u32),
    ]


class LinkInfo(ctypes.Structure):
    """``bpf_link_info``: head plus the per-type union as raw words (see :func:`link_info`)."""

    _fields_ = [("type", u32), ("id", u32), ("prog_id", u32), ("_pad", u32), ("union", u64 * 6)]


class PerfEventAttr(ctypes.Structure):
    """``struct perf_event_attr`` (linux/perf_event.h), up to ``config3``."""

    _fields_ = [
        ("type", u32),
        ("size", u32),
        ("config", u64),
        ("sample_period", u64),
        ("sample_type", u64),
        ("read_format", u64),
        ("flags", u64),
        ("wakeup_events", u32),
        ("bp_type", u32),
        ("config1", u64),
        ("config2", u64),
        ("branch_sample_type", u64),
        ("sample_regs_user", u64),
        ("sample_stack_user", u32),
        ("clockid", s32),
        ("sample_regs_intr", u64),
        ("aux_watermark", u32),
        ("sample_max_stack", ctypes.c_uint16),
        ("_reserved_2", ctypes.c_uint16),
        ("aux_sample_size", u32),
        ("aux_action", u32),  # union with the aux_start_paused/aux_pause/aux_resume bits
        ("sig_data", u64),
        ("config3", u64),
    ]


PERF_TYPE_TRACEPOINT = 2
PERF_SAMPLE_RAW = 1 << 10
PERF_FLAG_FD_CLOEXEC = 1 << 3
# _IO('$', 0) / _IO('$', 1) / _IOW('$', 8, __u32)
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_DISABLE = 0x2401
PERF_EVENT_IOC_SET_BPF = 0x40042408


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
}


def bpf(cmd: Cmd, attr: ctypes.Structure) -> int:
    """Issue ``bpf(cmd, &attr, sizeof(attr))``; return the result or raise."""
    while True:
        ret = _libc.syscall(_NR_BPF, ctypes.c_int(cmd), ctypes.byref(attr), ctypes.sizeof(attr))
        if ret >= 0:
            return int(ret)
        err = ctypes.get_errno()
        if err == _errno.EINTR or (err == _errno.EAGAIN and cmd == Cmd.PROG_LOAD):
            continue  # PROG_LOAD returns EAGAIN when the verifier was interrupted
        raise error_from_errno(_CMD_NOUN.get(cmd, cmd.name.lower().replace("_", " ")), err, cmd)


class Closing:
    """``with obj:`` closes ``obj`` at the end of the block (also on error)."""

    __slots__ = ()

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class FD(Closing):
    """An owned file descriptor. ``close`` is idempotent; use it as a context manager.

    The finalizer only catches leaks (and warns); owners close explicitly.
    """

    __slots__ = ("__weakref__", "_fd")

    _open_count: ClassVar[int] = 0

    def __init__(self, fd: int) -> None:
        if fd < 0:
            raise ValueError(f"invalid fd {fd}")
        self._fd = fd

    @property
    def raw(self) -> int:
        if self._fd < 0:
            raise SyscallError("use fd", _errno.EBADF, action="", detail="use of closed fd")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def dup(self) -> FD:
        return FD(os.dup(self.raw))

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            warnings.warn(f"unclosed bpf fd {self._fd}", ResourceWarning, stacklevel=1)
            self.close()

    def __int__(self) -> int:
        return self.raw

    def __repr__(self) -> str:
        return f"FD({self._fd})" if self._fd >= 0 else "FD(closed)"


def _cbuf(data: bytes) -> ctypes.Array[ctypes.c_char]:
    return ctypes.create_string_buffer(data, len(data) or 1)


# ---------------------------------------------------------------------------- maps


def map_create(attr: MapCreateAttr) -> FD:
    return FD(bpf(Cmd.MAP_CREATE, attr))


def _elem_attr(
    fd: FD, key: ctypes.Array[ctypes.c_char] | None, value: int, flags: int
) -> MapElemAttr:
    return MapElemAttr(
        map_fd=fd.raw,
        key=ctypes.addressof(key) if key is not None else 0,
        value=value,
        flags=flags,
    )


def map_lookup_elem(
    fd: FD, key: bytes | None, value_size: int, flags: int = 0, value_in: bytes | None = None
) -> bytes:
    """``key`` None for keyless maps (queue/stack peek); ``value_in`` is what a bloom filter
    looks up (the kernel reads the value buffer)."""
    kbuf = _cbuf(key) if key is not None else None
    vbuf = ctypes.create_string_buffer(value_size or 1)
    if value_in is not None:
        ctypes.memmove(vbuf, value_in, min(len(value_in), value_size))
    bpf(Cmd.MAP_LOOKUP_ELEM, _elem_attr(fd, kbuf, ctypes.addressof(vbuf), flags))
    return vbuf.raw[:value_size]


def map_lookup_and_delete_elem(fd: FD, key: bytes | None, value_size: int) -> bytes:
    kbuf = _cbuf(key) if key is not None else None
    vbuf = ctypes.create_string_buffer(value_size or 1)
    bpf(Cmd.MAP_LOOKUP_AND_DELETE_ELEM, _elem_attr(fd, kbuf, ctypes.addressof(vbuf), 0))
    return vbuf.raw[:value_size]


def map_update_elem(fd: FD, key: bytes | None, value: bytes, flags: int = 0) -> None:
    kbuf = _cbuf(key) if key is not None else None
    vbuf = _cbuf(value)
    bpf(Cmd.MAP_UPDATE_ELEM, _elem_attr(fd, kbuf, ctypes.addressof(vbuf), flags))


def map_delete_elem(fd: FD, key: bytes) -> None:
    kbuf = _cbuf(key)
    bpf(Cmd.MAP_DELETE_ELEM, _elem_attr(fd, kbuf, 0, 0))


def map_get_next_key(fd: FD, key: bytes | None, key_size: int) -> bytes | None:
    """The key after ``key`` (the first key when ``key`` is None); None at the end."""
    kbuf = _cbuf(key) if key is not None else None
    nbuf = ctypes.create_string_buffer(key_size or 1)
    try:
        bpf(Cmd.MAP_GET_NEXT_KEY, _elem_attr(fd, kbuf, ctypes.addressof(nbuf), 0))
    except KeyNotFoundError:
        return None
    return nbuf.raw[:key_size]


def map_freeze(fd: FD) -> None:
    bpf(Cmd.MAP_FREEZE, MapFreezeAttr(map_fd=fd.raw))


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
        fd = bpf(Cmd.PROG_LOAD, attr)
    except SyscallError as exc:
        log = log_buf.value.decode("utf-8", "replace") if log_buf is not None else ""
        return LoadResult(None, exc.errno, log, int(attr.log_true_size))
    log = log_buf.value.decode("utf-8", "replace") if log_buf is not None else ""
    return LoadResult(FD(fd), 0, log, int(attr.log_true_size))


def prog_test_run(attr: TestRunAttr) -> None:
    bpf(Cmd.PROG_TEST_RUN, attr)


def btf_load(data: bytes, log_size: int = 0, log_level: int = 0) -> tuple[FD | None, int, str]:
    """BPF_BTF_LOAD; returns (fd, 0, log) or (None, errno, log)."""
    buf = _cbuf(data)
    log_buf = ctypes.create_string_buffer(log_size) if log_size else None
    attr = BtfLoadAttr(
        btf=ctypes.addressof(buf),
        btf_size=len(data),
        btf_log_buf=ctypes.addressof(log_buf) if log_buf is not None else 0,
        btf_log_size=log_size if log_buf is not None else 0,
        btf_log_level=log_level if log_buf is not None else 0,
    )
    try:
        fd = bpf(Cmd.BTF_LOAD, attr)
    except SyscallError as exc:
        log = log_buf.value.decode("utf-8", "replace") if log_buf is not None else ""
        return None, exc.errno, log
    return FD(fd), 0, ""


# ---------------------------------------------------------------------------- objects


def obj_pin(fd: FD, path: str, *, dir_fd: int | None = None) -> None:
    """BPF_OBJ_PIN; with ``dir_fd``, ``path`` is relative to that directory (BPF_F_PATH_FD,
    Linux 6.5)."""
    p = _cbuf(os.fsencode(path) + b"\0")
    attr = ObjPinAttr(pathname=ctypes.addressof(p), bpf_fd=fd.raw)
    if dir_fd is not None:
        attr.file_flags, attr.path_fd = MapFlags.PATH_FD, dir_fd
    bpf(Cmd.OBJ_PIN, attr)


def obj_get(path: str, flags: int = 0, *, dir_fd: int | None = None) -> FD:
    """BPF_OBJ_GET; with ``dir_fd``, ``path`` is relative to that directory (BPF_F_PATH_FD,
    Linux 6.5). The kernel follows a symlink in the last component: callers that must not
    follow one check it first (:func:`orchestrator.ebpf._bpffs.open_pin_at`)."""
    p = _cbuf(os.fsencode(path) + b"\0")
    attr = ObjPinAttr(pathname=ctypes.addressof(p), file_flags=flags)
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
    buf = _cbuf(name.encode() + b"\0") if name is not None else None
    attr = RawTracepointOpenAttr(
        name=ctypes.addressof(buf) if buf is not None else 0, prog_fd=prog.raw
    )
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


class _Statfs(ctypes.Structure):
    _fields_ = [
        ("f_type", ctypes.c_long),
        ("f_bsize", ctypes.c_long),
        ("f_blocks", ctypes.c_long),
        ("f_bfree", ctypes.c_long),
        ("f_bavail", ctypes.c_long),
        ("f_files", ctypes.c_long),
        ("f_ffree", ctypes.c_long),
        ("f_fsid", ctypes.c_int * 2),
        ("f_namelen", ctypes.c_long),
        ("f_frsize", ctypes.c_long),
        ("f_flags", ctypes.c_long),
        ("f_spare", ctypes.c_long * 4),
    ]


BPF_FS_MAGIC = 0xCAFE4A11


def fs_magic(path: str) -> int:
    """The ``f_type`` of the filesystem holding ``path`` (statfs(2))."""
    buf = _Statfs()
    if _libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(buf.f_type) & 0xFFFFFFFF


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


class PerfEventLinkType(enum.IntEnum):
    """``enum bpf_perf_event_type``: what a perf_event link is attached to (its info)."""

    UNSPEC = 0
    UPROBE = 1
    URETPROBE = 2
    KPROBE = 3
    KRETPROBE = 4
    TRACEPOINT = 5
    EVENT = 6


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


PERF_TYPE_SOFTWARE = 1
PERF_FLAG_FD_NO_GROUP = 1 << 0
