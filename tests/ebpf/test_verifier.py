"""The verifier module on log text: classes, the decisive message, the failing instruction,
its source line, statistics, and the log with source lines (pure: no kernel). The logs are
ones Linux 6.18 printed for programs in bpf/broken/ (kernel pointers shortened)."""

from __future__ import annotations

import errno

import pytest

from orchestrator.ebpf import VerifierError
from orchestrator.ebpf._sys import ProgType
from orchestrator.ebpf.btf.ext import LineInfo
from orchestrator.ebpf.programs import LoadRequest, _load_error
from orchestrator.ebpf.verifier import (
    BUDGET,
    Rejection,
    SourceLine,
    annotate,
    budget_share,
    classify,
    diagnose,
    parse_stats,
    source_line,
)

NULL_LOG = """\
0: R1=ctx() R10=fp0
; __u32 key = ctx->ingress_ifindex; @ null_map_value.c:17
0: (61) r1 = *(u32 *)(r1 +12)         ; R1=scalar(smin=0,smax=umax=0xffffffff,var_off=(0x0; 0xffffffff))
1: (63) *(u32 *)(r10 -4) = r1         ; R1=scalar(smin=0,smax=umax=0xffffffff,var_off=(0x0; 0xffffffff)) R10=fp0 fp-8=mmmm????
2: (bf) r2 = r10                      ; R2=fp0 R10=fp0
;  @ null_map_value.c:0
3: (07) r2 += -4                      ; R2=fp-4
; __u64 *v = bpf_map_lookup_elem(&verdicts, &key); @ null_map_value.c:18
4: (18) r1 = 0xffff888170206400       ; R1=map_ptr(map=verdicts,ks=4,vs=8)
6: (85) call bpf_map_lookup_elem#1    ; R0=map_value_or_null(id=1,map=verdicts,ks=4,vs=8)
; return *v ? XDP_PASS : XDP_DROP; @ null_map_value.c:20
7: (79) r1 = *(u64 *)(r0 +0)
R0 invalid mem access 'map_value_or_null'
processed 7 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0
"""  # noqa: E501
NULL_LINES = (
    LineInfo(0, "./null_map_value.c", "\t__u32 key = ctx->ingress_ifindex;", 17, 19),
    LineInfo(1, "./null_map_value.c", "\t__u32 key = ctx->ingress_ifindex;", 17, 8),
    LineInfo(3, "./null_map_value.c", "", 0, 0),
    LineInfo(4, "./null_map_value.c", "\t__u64 *v = bpf_map_lookup_elem(&verdicts, &key);", 18, 13),
    LineInfo(7, "./null_map_value.c", "\treturn *v ? XDP_PASS : XDP_DROP;", 20, 9),
    LineInfo(9, "./null_map_value.c", "\treturn *v ? XDP_PASS : XDP_DROP;", 20, 2),
)

UNRELEASED_LOG = """\
0: R1=ctx() R10=fp0
; int unreleased_reference(struct xdp_md *ctx) @ unreleased_reference.c:13
0: (bf) r6 = r1                       ; R1=ctx() R6=ctx()
; __u32 *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0); @ unreleased_reference.c:15
1: (18) r1 = 0xffff888174582200       ; R1=map_ptr(map=events,ks=0,vs=0)
3: (b7) r2 = 4                        ; R2=4
4: (b7) r3 = 0                        ; R3=0
5: (85) call bpf_ringbuf_reserve#131          ; R0=ringbuf_mem_or_null(id=2,ref_obj_id=2,sz=4) refs=2
; if (!e) @ unreleased_reference.c:17
6: (15) if r0 == 0x0 goto pc+2        ; R0=ringbuf_mem(ref_obj_id=2,sz=4) refs=2
; *e = ctx->ingress_ifindex; @ unreleased_reference.c:19
7: (61) r1 = *(u32 *)(r6 +12)         ; R1=scalar(smin=0,smax=umax=0xffffffff,var_off=(0x0; 0xffffffff)) R6=ctx() refs=2
8: (63) *(u32 *)(r0 +0) = r1          ; R0=ringbuf_mem(ref_obj_id=2,sz=4) R1=scalar(smin=0,smax=umax=0xffffffff,var_off=(0x0; 0xffffffff)) refs=2
; } @ unreleased_reference.c:21
9: (b7) r0 = 2                        ; R0=2 refs=2
10: (95) exit
Unreleased reference id=2 alloc_insn=5
BPF_EXIT instruction in main prog would lead to reference leak
processed 10 insns (limit 1000000) max_states_per_insn 0 total_states 1 peak_states 1 mark_read 0
"""  # noqa: E501
UNRELEASED_LINES = (
    LineInfo(0, "./unreleased_reference.c", "int unreleased_reference(struct xdp_md *ctx)", 13, 0),
    LineInfo(
        1,
        "./unreleased_reference.c",
        "\t__u32 *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);",
        15,
        13,
    ),
    LineInfo(6, "./unreleased_reference.c", "\tif (!e)", 17, 6),
    LineInfo(7, "./unreleased_reference.c", "\t*e = ctx->ingress_ifindex;", 19, 12),
    LineInfo(8, "./unreleased_reference.c", "\t*e = ctx->ingress_ifindex;", 19, 5),
    LineInfo(9, "./unreleased_reference.c", "}", 21, 1),
)

LOOP_LOG = """\
0: R1=ctx() R10=fp0
; for (;;) { @ infinite_loop.c:10
0: (05) goto pc-1
0: (05) goto pc-1
0: (05) goto pc-1
infinite loop detected at insn 0
cur state: R1=ctx() R10=fp0
old state: R1=ctx() R10=fp0
processed 9 insns (limit 1000000) max_states_per_insn 0 total_states 1 peak_states 1 mark_read 0
"""

# a message no class knows: a number passed where bpf_map_lookup_elem wants a pointer
UNKNOWN_LOG = """\
0: R1=ctx() R10=fp0
; __u64 *v = bpf_map_lookup_elem(&counts, (void *)(long)ctx->rx_queue_index); @ unknown.c:15
0: (61) r2 = *(u32 *)(r1 +16)         ; R1=ctx() R2=scalar(smin=0,smax=umax=0xffffffff,var_off=(0x0; 0xffffffff))
1: (18) r1 = 0xffff888170206400       ; R1=map_ptr(map=counts,ks=4,vs=8)
3: (85) call bpf_map_lookup_elem#1
R2 type=scalar expected=fp, pkt, pkt_meta, map_key, map_value, mem, ringbuf_mem, buf, trusted_ptr_
processed 3 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0
"""  # noqa: E501
UNKNOWN_TEXT = "\t__u64 *v = bpf_map_lookup_elem(&counts, (void *)(long)ctx->rx_queue_index);"
UNKNOWN_LINES = (
    LineInfo(0, "/src/unknown.c", UNKNOWN_TEXT, 15, 61),
    LineInfo(1, "/src/unknown.c", UNKNOWN_TEXT, 15, 13),
    LineInfo(6, "/src/unknown.c", "\treturn v ? XDP_PASS : XDP_DROP;", 17, 2),
)

# log level 2 (every state): precision tracking between the instruction and the message
LEVEL2_LOG = """\
func#0 @0
Live regs before insn:
      0: .1........ (b7) r2 = 0
     12: 0......... (79) r1 = *(u64 *)(r0 +0)
0: R1=ctx() R10=fp0
11: (0f) r0 += r6
mark_precise: frame0: last_idx 11 first_idx 9 subseq_idx -1
mark_precise: frame0: regs=r6 stack= before 10: (67) r6 <<= 3
12: R0=map_value(map=per_queue,ks=4,vs=32,smin=smin32=0,smax=umax=smax32=umax32=32,var_off=(0x0; 0x38))
; slots[i] += 1; @ map_value_bounds.c:22
12: (79) r1 = *(u64 *)(r0 +0)
invalid access to map value, value_size=32 off=32 size=8
R0 max value is outside of the allowed memory range
verification time 119 usec
stack depth 8
processed 12 insns (limit 1000000) max_states_per_insn 0 total_states 1 peak_states 1 mark_read 0
"""  # noqa: E501

STATS_LOG = """\
verification time 85 usec
stack depth 16+32
processed 37 insns (limit 1000000) max_states_per_insn 2 total_states 3 peak_states 4 mark_read 0
"""


# Every message as Linux 6.18 printed it for the programs in bpf/broken/ (and two more of
# the same form from the same checks).
@pytest.mark.parametrize(
    ("message", "kind", "insn"),
    [
        ("R0 invalid mem access 'map_value_or_null'", Rejection.NULL_MAP_VALUE, None),
        ("R0 invalid mem access 'ringbuf_mem_or_null'", Rejection.NULL_POINTER, None),
        ("R1 invalid mem access 'scalar'", Rejection.SCALAR_DEREFERENCE, None),
        (
            "invalid access to packet, off=12 size=1, R1(id=0,off=12,r=0)",
            Rejection.PACKET_BOUNDS,
            None,
        ),
        ("R1 offset is outside of the packet", Rejection.PACKET_BOUNDS, None),
        (
            "invalid access to map value, value_size=32 off=32 size=8",
            Rejection.MAP_VALUE_BOUNDS,
            None,
        ),
        (
            "R0 unbounded memory access, make sure to bounds check any such access",
            Rejection.UNBOUNDED_ACCESS,
            None,
        ),
        ("invalid read from stack R2 off=-8 size=8", Rejection.UNINITIALISED_STACK, None),
        ("invalid read from stack R10 off=-8 size=8", Rejection.UNINITIALISED_STACK, None),
        ("invalid write to stack R1 off=-16 size=64", Rejection.STACK_BOUNDS, None),
        ("invalid write to stack R10 off=-520 size=8", Rejection.STACK_BOUNDS, None),
        ("invalid read from stack R10 off=-520 size=8", Rejection.STACK_BOUNDS, None),
        ("invalid read from stack R10 off=8 size=8", Rejection.STACK_BOUNDS, None),
        ("infinite loop detected at insn 7", Rejection.INFINITE_LOOP, 7),
        ("BPF program is too large. Processed 1000001 insn", Rejection.TOO_COMPLEX, None),
        (
            "program of this type cannot use helper bpf_get_socket_cookie#46",
            Rejection.HELPER_NOT_ALLOWED,
            None,
        ),
        (
            "cannot call GPL-restricted function from non-GPL compatible program",
            Rejection.GPL_ONLY,
            None,
        ),
        ("Unreleased reference id=2 alloc_insn=11", Rejection.UNRELEASED_REFERENCE, 11),
        (
            "BPF_EXIT instruction in main prog would lead to reference leak",
            Rejection.UNRELEASED_REFERENCE,
            None,
        ),
        ("misaligned value access off 0+0+4 size 8", Rejection.MISALIGNED, None),
        ("misaligned stack access off 0+0+-15 size 8", Rejection.MISALIGNED, None),
        ("R0 !read_ok", Rejection.RETURN_VALUE_UNSET, None),
        ("write into map forbidden, value_size=4 off=0 size=4", Rejection.READ_ONLY_WRITE, None),
        ("invalid bpf_context access off=16 size=4", Rejection.CONTEXT_ACCESS, None),
    ],
)
def test_classify(message: str, kind: Rejection, insn: int | None) -> None:
    assert classify(message) == (kind, insn)
    assert classify(f"  {message}  ") == (kind, insn)


def test_unknown_messages_have_no_class() -> None:
    assert classify(UNKNOWN_LOG.splitlines()[5]) is None
    assert classify("R1 !read_ok") is None  # only R0 at exit is the return value
    assert classify("") is None


def test_every_class_has_one_line_of_explanation_and_fix() -> None:
    for kind in Rejection:
        for text in (kind.explanation, kind.fix):
            assert text and "\n" not in text and text == text.strip()
            assert text[0].islower() or text[0] in "\"'", text  # lower-case, like every error
    assert len({k.value for k in Rejection}) == len(Rejection)


def test_diagnose_a_null_map_value() -> None:
    d = diagnose(NULL_LOG, NULL_LINES)
    assert d.reason == "R0 invalid mem access 'map_value_or_null'"
    assert d.kind is Rejection.NULL_MAP_VALUE and d.insn == 7
    assert d.source == SourceLine("./null_map_value.c", 20, 9, "return *v ? XDP_PASS : XDP_DROP;")
    assert d.summary() == (
        "null_map_value.c:20: return *v ? XDP_PASS : XDP_DROP; -- R0 invalid mem access "
        "'map_value_or_null': a map lookup can return NULL; check the pointer before using it"
    )
    assert d.stats.insns == 7 and d.stats.limit == BUDGET
    data = d.to_json()
    assert data["class"] == "null-map-value" and data["insn"] == 7
    assert data["source"] == {
        "file": "./null_map_value.c",
        "line": 20,
        "column": 9,
        "text": "return *v ? XDP_PASS : XDP_DROP;",
    }
    assert data["fix"] == "check the pointer before using it"


def test_a_leaked_reference_points_at_where_it_was_taken() -> None:
    d = diagnose(UNRELEASED_LOG, UNRELEASED_LINES)
    assert d.kind is Rejection.UNRELEASED_REFERENCE
    assert d.reason == "Unreleased reference id=2 alloc_insn=5"  # the first, specific line
    assert d.insn == 5
    assert d.source is not None and d.source.line == 15
    assert d.source.text == "__u32 *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);"


def test_an_infinite_loop_and_the_states_after_it() -> None:
    d = diagnose(LOOP_LOG, (LineInfo(0, "infinite_loop.c", "\tfor (;;) {", 10, 2),))
    assert d.kind is Rejection.INFINITE_LOOP and d.insn == 0
    assert str(d.source) == "infinite_loop.c:10: for (;;) {"


def test_an_unknown_message_keeps_its_instruction_and_source_line() -> None:
    d = diagnose(UNKNOWN_LOG, UNKNOWN_LINES)
    assert d.kind is None
    assert d.reason.startswith("R2 type=scalar expected=fp, pkt")
    # instruction 3 has no line info of its own: the nearest one before it (insn 1) counts
    assert d.insn == 3 and d.source is not None and d.source.line == 15
    assert d.summary() == f"unknown.c:15: {UNKNOWN_TEXT.strip()} -- {d.reason}"
    assert d.to_json()["class"] is None and d.to_json()["fix"] is None


def test_level_2_noise_is_not_the_message() -> None:
    d = diagnose(LEVEL2_LOG)
    assert d.reason == "invalid access to map value, value_size=32 off=32 size=8"
    assert d.kind is Rejection.MAP_VALUE_BOUNDS and d.insn == 12
    assert d.source is None and d.summary().startswith("instruction 12: invalid access to map")
    assert d.stats.time_us == 119 and d.stats.stack_depth == (8,)


def test_a_log_without_instructions() -> None:
    """Refused before the walk (or the log rotated away): the last message counts."""
    d = diagnose("arg#0 reference type('UNKNOWN ') size cannot be determined: -22\nR0 !read_ok\n")
    assert d.kind is Rejection.RETURN_VALUE_UNSET and d.insn is None and d.source is None
    assert d.summary() == (
        "R0 !read_ok: the program exits without setting a return value (R0); "
        "return a value on every path (the program's function returns int, not void)"
    )
    d = diagnose("something new\nand then this\nprocessed 1 insns (limit 1000000)\n")
    assert (d.reason, d.kind) == ("and then this", None)
    empty = diagnose("")
    assert empty.reason == "" and empty.summary() == "rejected without a message"


def test_source_line_skips_line_zero_and_takes_the_nearest_before() -> None:
    assert source_line(NULL_LINES, 0) == SourceLine(
        "./null_map_value.c", 17, 19, "__u32 key = ctx->ingress_ifindex;"
    )
    # insn 3 starts a line-0 record (compiler-made code): the line before it counts
    found = source_line(NULL_LINES, 3)
    assert found is not None and found.line == 17 and found.column == 8
    assert source_line(NULL_LINES, 8) == source_line(NULL_LINES, 7)
    assert source_line(NULL_LINES[2:3], 5) is None
    assert source_line((), 5) is None
    # records in any order (subprograms linked after the main program)
    assert source_line(tuple(reversed(NULL_LINES)), 6) == source_line(NULL_LINES, 4)


def test_parse_stats() -> None:
    s = parse_stats(STATS_LOG)
    assert (s.insns, s.limit, s.max_states_per_insn, s.total_states, s.peak_states) == (
        37,
        1000000,
        2,
        3,
        4,
    )
    assert s.time_us == 85 and s.stack_depth == (16, 32)
    assert s.to_json()["stack_depth"] == [16, 32]
    none = parse_stats("no statistics here")
    assert none.insns is None and none.time_us is None and none.stack_depth == ()
    assert budget_share(800_001) > 0.8 and budget_share(50, 100) == 0.5


def test_annotate_like_bpftool_linum() -> None:
    out = annotate(NULL_LOG, NULL_LINES).splitlines()
    # the kernel's short source lines give way to full ones with file, line and column
    assert not any(" @ null_map_value.c:" in ln for ln in out)
    i = out.index("7: (79) r1 = *(u64 *)(r0 +0)")
    assert out[i - 1] == (
        "; return *v ? XDP_PASS : XDP_DROP; [file:./null_map_value.c line_num:20 line_col:9]"
    )
    key = "; __u32 key = ctx->ingress_ifindex; [file:./null_map_value.c line_num:17 line_col:"
    assert out[:5] == [
        "0: R1=ctx() R10=fp0",
        key + "19]",
        NULL_LOG.splitlines()[2],
        key + "8]",
        NULL_LOG.splitlines()[3],
    ]
    assert out.count(";  [file:./null_map_value.c line_num:0 line_col:0]") == 1
    # a source line is shown when it changes, once for a run of instructions
    loop = annotate(LOOP_LOG, (LineInfo(0, "/s/infinite_loop.c", "\tfor (;;) {", 10, 2),))
    assert loop.count("; for (;;) { [file:/s/infinite_loop.c line_num:10 line_col:2]") == 1
    assert "R0 invalid mem access" in out[-2]
    assert annotate(NULL_LOG, ()) == NULL_LOG


def test_verifier_error_explains_itself() -> None:
    req = LoadRequest(
        name="null_map_value",
        type=ProgType.XDP,
        instructions=b"",
        license="GPL",
        line_infos=NULL_LINES,
    )
    err = _load_error(req.name, req.line_infos, errno.EACCES, NULL_LOG)
    assert isinstance(err, VerifierError)
    assert str(err) == f"program null_map_value: {err.summary()}"
    assert err.errno == errno.EACCES and err.program == "null_map_value"
    assert err.kind is Rejection.NULL_MAP_VALUE and err.insn == 7
    assert err.reason == "R0 invalid mem access 'map_value_or_null'"
    assert err.explanation == "a map lookup can return NULL"
    assert err.fix == "check the pointer before using it"
    assert err.source is not None and err.source.line == 20
    assert err.tail(2).splitlines() == NULL_LOG.splitlines()[-2:]
    assert "[file:./null_map_value.c line_num:20 line_col:9]" in err.annotated_log()
    assert not err.truncated


def test_a_truncated_log_loses_its_partial_first_line() -> None:
    req = LoadRequest(name="p", type=ProgType.XDP, instructions=b"", license="GPL")
    rotated = "e=0x0; 0xffffffff))\n" + UNKNOWN_LOG
    err = _load_error(req.name, req.line_infos, errno.EACCES, rotated, truncated=True)
    assert isinstance(err, VerifierError) and err.truncated
    assert err.log == UNKNOWN_LOG
    assert err.kind is None and err.fix == "" and err.explanation == ""


def test_a_refusal_without_a_log_is_not_a_verifier_error() -> None:
    req = LoadRequest(name="p", type=ProgType.XDP, instructions=b"", license="GPL")
    err = _load_error(req.name, req.line_infos, errno.EPERM, "")
    assert not isinstance(err, VerifierError)
    assert str(err).startswith("program p: load: operation not permitted (EPERM) (needs CAP_BPF")


def test_a_verifier_error_made_by_hand_is_diagnosed_on_demand() -> None:
    err = VerifierError("rejected", errno.EACCES, LOOP_LOG, "x")
    assert err.kind is Rejection.INFINITE_LOOP and err.insn == 0 and err.source is None
    assert err.annotated_log() == LOOP_LOG  # no line info to add
