"""The ``union bpf_attr`` members, one ctypes struct per command, and the info structs
(``bpf_prog_info``, ``bpf_map_info``, ``bpf_link_info`` …) and ``perf_event_attr``,
field for field as in ``linux/bpf.h`` (a test checks every offset against the running
kernel's BTF)."""

from __future__ import annotations

import ctypes

from orchestrator.ebpf._sys.enums import (
    BPF_OBJ_NAME_LEN,
    BPF_TAG_SIZE,
)

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


class EnableStatsAttr(_Attr):
    _fields_ = [("type", u32)]


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
PERF_TYPE_SOFTWARE = 1
PERF_FLAG_FD_NO_GROUP = 1 << 0
