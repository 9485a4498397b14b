"""Verifier rejections a developer can act on.

The kernel's verifier explains a rejection in a log written for kernel developers: register
states, instruction numbers and, near the end, one decisive message. This module turns that
log into what the program's author needs: the instruction that failed, the C source line it
came from (the program's ``.BTF.ext`` line info), the message, and the class of rejection
with a one-line explanation and fix. It also reads the statistics a ``BPF_LOG_STATS`` log
ends with, and interleaves source lines with a log the way ``bpftool prog dump xlated
linum`` shows them.

Pure: it works on log text and line info records; nothing here calls the kernel.

Instruction numbers. The log numbers instructions as the loader submitted them (before the
verifier rewrites any), a 64-bit immediate load counting as two; the line info records the
loader submits count the same slots (after it linked subprograms into the program), so the
two match without translation.

Classes. Each is recognised from a message of the verifier (``kernel/bpf/verifier.c``), and
each is proven by a small program under ``bpf/broken/`` that Linux 6.18 rejects with it.
A message none of them matches still gets its instruction, its source line and the log.
"""

from __future__ import annotations

import bisect
import enum
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator.ebpf.limits import BUDGET as BUDGET
from orchestrator.ebpf.limits import BUDGET_WARNING as BUDGET_WARNING

if TYPE_CHECKING:
    from orchestrator.ebpf.btf.ext import LineInfo

__all__ = [
    "BUDGET",
    "BUDGET_WARNING",
    "Diagnosis",
    "Rejection",
    "SourceLine",
    "Stats",
    "annotate",
    "budget_share",
    "classify",
    "diagnose",
    "parse_stats",
    "source_line",
]

# MAX_BPF_STACK (include/linux/filter.h): the bytes of one stack frame.
_STACK = 512


class Rejection(enum.Enum):
    """The class of a verifier rejection; the value is its name in output."""

    NULL_MAP_VALUE = "null-map-value"
    NULL_POINTER = "null-pointer"
    SCALAR_DEREFERENCE = "scalar-dereference"
    PACKET_BOUNDS = "packet-bounds"
    MAP_VALUE_BOUNDS = "map-value-bounds"
    UNBOUNDED_ACCESS = "unbounded-access"
    UNINITIALISED_STACK = "uninitialised-stack"
    STACK_BOUNDS = "stack-bounds"
    INFINITE_LOOP = "infinite-loop"
    TOO_COMPLEX = "too-complex"
    HELPER_NOT_ALLOWED = "helper-not-allowed"
    GPL_ONLY = "gpl-only"
    UNRELEASED_REFERENCE = "unreleased-reference"
    MISALIGNED = "misaligned-access"
    RETURN_VALUE_UNSET = "return-value-unset"
    READ_ONLY_WRITE = "read-only-write"
    CONTEXT_ACCESS = "context-access"

    @property
    def explanation(self) -> str:
        """What went wrong, in the program author's terms (one line)."""
        return _TEXT[self][0]

    @property
    def fix(self) -> str:
        """What usually fixes it (one line)."""
        return _TEXT[self][1]


_TEXT: dict[Rejection, tuple[str, str]] = {
    Rejection.NULL_MAP_VALUE: (
        "a map lookup can return NULL",
        "check the pointer before using it",
    ),
    Rejection.NULL_POINTER: (
        "this pointer can be NULL (the helper or kfunc that returned it can fail)",
        "check it against NULL before using it",
    ),
    Rejection.SCALAR_DEREFERENCE: (
        "a plain number is used as a pointer",
        "dereference only pointers the verifier knows (context, packet, map value, stack); "
        "read other memory with bpf_probe_read_kernel()",
    ),
    Rejection.PACKET_BOUNDS: (
        "packet data is accessed without proving that it lies before data_end",
        "compare the pointer plus the access size with data_end first "
        "(if (p + n > data_end) return ...)",
    ),
    Rejection.MAP_VALUE_BOUNDS: (
        "an access can fall outside the map value",
        "check the index or offset against the value's size before the access",
    ),
    Rejection.UNBOUNDED_ACCESS: (
        "memory is accessed at an index or offset with no known upper bound",
        "bound it first (if (i >= N) return ...; or i &= N - 1)",
    ),
    Rejection.UNINITIALISED_STACK: (
        "stack memory is read before anything was written to it (only loads with "
        "CAP_PERFMON may read uninitialised stack)",
        "initialise the variable or buffer first (= {} or __builtin_memset)",
    ),
    Rejection.STACK_BOUNDS: (
        "an access falls outside the 512-byte stack frame, or a helper is told to use more "
        "bytes than the stack buffer holds",
        "pass the buffer's real size (sizeof(buf)) and keep stack use within 512 bytes",
    ),
    Rejection.INFINITE_LOOP: (
        "a loop comes back to the same state, so it never ends",
        "make the loop's exit depend on a counter that changes each iteration, or use bpf_loop()",
    ),
    Rejection.TOO_COMPLEX: (
        "the verifier gave up after 1,000,000 instructions (it walks every path and every "
        "loop iteration)",
        "bound loops tighter or move them into bpf_loop(), split the program with tail "
        "calls, or reduce branching",
    ),
    Rejection.HELPER_NOT_ALLOWED: (
        "this program type may not call that helper",
        "use a helper this program type allows (bpftool feature probe lists them), or "
        "another program type",
    ),
    Rejection.GPL_ONLY: (
        "that helper is GPL-only and the object's license is not GPL-compatible",
        'declare a GPL-compatible license (char LICENSE[] SEC("license") = "GPL";)',
    ),
    Rejection.UNRELEASED_REFERENCE: (
        "a reference taken here (a ring buffer reservation, a socket lookup) is not released "
        "on every path",
        "submit or discard the ring buffer record, or release the socket (bpf_sk_release), "
        "before every return",
    ),
    Rejection.MISALIGNED: (
        "an access is not aligned to its size (stack accesses and atomic operations must be)",
        "align the field to its size (no packed struct around a counter), or access it in "
        "smaller pieces",
    ),
    Rejection.RETURN_VALUE_UNSET: (
        "the program exits without setting a return value (R0)",
        "return a value on every path (the program's function returns int, not void)",
    ),
    Rejection.READ_ONLY_WRITE: (
        "the program writes into read-only memory: a const global (.rodata) or a map "
        "frozen for programs",
        "drop const from the variable (it then lives in .data or .bss), or set the value "
        "before loading (constants)",
    ),
    Rejection.CONTEXT_ACCESS: (
        "the program accesses a context field it may not (or with the wrong size)",
        "use only the context fields this program type allows, with their declared size "
        "(most are read-only)",
    ),
}

# Each message as this kernel prints it. A named group ``insn`` names the instruction the
# message is about, where that is not the instruction the verifier stopped at. Compiled on
# first use (by re's cache): most processes never see a rejection.
_RULES: tuple[tuple[Rejection, str], ...] = (
    (Rejection.NULL_MAP_VALUE, r"R\d+ invalid mem access 'map_value_or_null'"),
    (Rejection.NULL_POINTER, r"R\d+ invalid mem access '\w+_or_null'"),
    (Rejection.SCALAR_DEREFERENCE, r"R\d+ invalid mem access 'scalar'"),
    (Rejection.PACKET_BOUNDS, r"invalid access to packet, .*"),
    (Rejection.PACKET_BOUNDS, r"R\d+ offset is outside of the packet"),
    (Rejection.MAP_VALUE_BOUNDS, r"invalid access to map value, value_size=\d+ .*"),
    (Rejection.UNBOUNDED_ACCESS, r"R\d+ unbounded memory access, .*"),
    (Rejection.INFINITE_LOOP, r"infinite loop detected at insn (?P<insn>\d+)"),
    (Rejection.TOO_COMPLEX, r"BPF program is too large\. Processed \d+ insn"),
    (Rejection.HELPER_NOT_ALLOWED, r"program of this type cannot use helper \S+"),
    (
        Rejection.GPL_ONLY,
        r"cannot call GPL-restricted function from non-GPL compatible program",
    ),
    (Rejection.UNRELEASED_REFERENCE, r"Unreleased reference id=\d+ alloc_insn=(?P<insn>\d+)"),
    (
        Rejection.UNRELEASED_REFERENCE,
        r"BPF_EXIT instruction in main prog would lead to reference leak",
    ),
    (Rejection.MISALIGNED, r"misaligned (?:\w+ )?access off \S+ size \d+"),
    (Rejection.RETURN_VALUE_UNSET, r"R0 !read_ok"),
    (Rejection.READ_ONLY_WRITE, r"write into map forbidden, .*"),
    (Rejection.CONTEXT_ACCESS, r"invalid bpf_context access off=-?\d+ size=\d+"),
)

# One message, two classes: a stack access outside the frame, or a read (within it) of
# bytes never written. check_stack_access_within_bounds() and the uninitialised-read checks
# print it alike; the offset tells them apart.
_STACK_ACCESS = re.compile(
    r"invalid (?P<op>read from|write to) stack R\d+ off=(?P<off>-?\d+) size=(?P<size>\d+)"
)

# An instruction as the verifier prints it ("7: (79) r1 = *(u64 *)(r0 +0)").
_INSN = re.compile(r"(\d+): \([0-9a-f]{2}\) ")
# A source line as the verifier prints it (verbose_linfo: "; return *v; @ prog.c:19").
_KERNEL_SOURCE = re.compile(r"; .* @ \S+:\d+")
# Lines that are never the decisive message: states, sources, statistics, precision
# tracking (log level 2) and call bookkeeping.
_NOISE = re.compile(
    r"\d+: |from \d+ to \d+: |cur state: |old state: |; |;$|processed \d+ insns |"
    r"verification time |stack depth |func#|Live regs before insn:|last_idx |regs=|"
    r"frame\d+: |mark_precise: |propagating |caller:|callee:|returning from callee:|"
    r"to caller at "
)
_PROCESSED = re.compile(r"^processed (\d+) insns \(limit (\d+)\)(.*)$", re.MULTILINE)
_TIME = re.compile(r"^verification time (\d+) usec$", re.MULTILINE)
_DEPTH = re.compile(r"^stack depth ([\d+]+)$", re.MULTILINE)
_COUNTER = re.compile(r"(\w+) (\d+)")


@dataclass(frozen=True, slots=True)
class SourceLine:
    """Where an instruction came from: ``file`` as the compiler recorded it (often a full
    path), 1-based ``line``, ``column`` (0 when unknown) and the line's ``text``."""

    file: str
    line: int
    column: int
    text: str

    def __str__(self) -> str:
        where = f"{os.path.basename(self.file)}:{self.line}"
        return f"{where}: {self.text}" if self.text else where

    def to_json(self) -> dict[str, object]:
        return {"file": self.file, "line": self.line, "column": self.column, "text": self.text}


@dataclass(frozen=True, slots=True)
class Stats:
    """What the verifier reports about its work (``BPF_LOG_STATS``, log level 4; the
    ``processed`` line also ends every failed log). None where the log does not say."""

    insns: int | None = None  # instructions processed (verified_insns)
    limit: int | None = None
    max_states_per_insn: int | None = None
    total_states: int | None = None
    peak_states: int | None = None
    time_us: int | None = None
    stack_depth: tuple[int, ...] = ()  # bytes, per function (main program first)

    def to_json(self) -> dict[str, object]:
        return {
            "insns": self.insns,
            "limit": self.limit,
            "max_states_per_insn": self.max_states_per_insn,
            "total_states": self.total_states,
            "peak_states": self.peak_states,
            "time_us": self.time_us,
            "stack_depth": list(self.stack_depth),
        }


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """A rejection, explained. ``reason``: the verifier's decisive message; ``kind``: its
    class (None when no class matches); ``insn``: the instruction the message is about (the
    one the verifier stopped at, or the one the message names, like the reservation a leaked
    reference comes from); ``source``: that instruction's source line, or the nearest one
    before it."""

    reason: str
    kind: Rejection | None
    insn: int | None
    source: SourceLine | None
    stats: Stats

    def summary(self) -> str:
        """One line: ``prog.c:19: return *v; -- R0 invalid mem access 'map_value_or_null': a
        map lookup can return NULL; check the pointer before using it``."""
        text = self.reason or "rejected without a message"
        if self.kind is not None:
            text += f": {self.kind.explanation}; {self.kind.fix}"
        if self.source is not None:
            sep = " -- " if self.source.text else ": "
            return f"{self.source}{sep}{text}"
        if self.insn is not None:
            return f"instruction {self.insn}: {text}"
        return text

    def to_json(self) -> dict[str, object]:
        return {
            "class": self.kind.value if self.kind is not None else None,
            "reason": self.reason,
            "explanation": self.kind.explanation if self.kind is not None else None,
            "fix": self.kind.fix if self.kind is not None else None,
            "insn": self.insn,
            "source": self.source.to_json() if self.source is not None else None,
            "summary": self.summary(),
        }


def classify(message: str) -> tuple[Rejection, int | None] | None:
    """The class of one verifier message, and the instruction it names (if it names one);
    None for a message no class knows."""
    message = message.strip()
    m = _STACK_ACCESS.fullmatch(message)
    if m is not None:
        off, size = int(m["off"]), int(m["size"])
        if m["op"] == "read from" and off >= -_STACK and off + size <= 0:
            return Rejection.UNINITIALISED_STACK, None
        return Rejection.STACK_BOUNDS, None
    for kind, pattern in _RULES:
        m = re.fullmatch(pattern, message)
        if m is not None:
            insn = m.groupdict().get("insn")
            return kind, int(insn) if insn is not None else None
    return None


def diagnose(log: str, line_infos: Sequence[LineInfo] = ()) -> Diagnosis:
    """Explain a failed load's verifier log: its decisive message, the class, the failing
    instruction and its source line (from ``line_infos``, the records submitted with the
    program)."""
    lines = [ln.strip() for ln in log.splitlines()]
    last_insn: int | None = None
    after = 0
    for i in range(len(lines) - 1, -1, -1):
        m = _INSN.match(lines[i])
        if m is not None:
            last_insn, after = int(m[1]), i + 1
            break
    candidates = [ln for ln in lines[after:] if ln and not _NOISE.match(ln)]
    reason = ""
    kind: Rejection | None = None
    insn = last_insn
    for ln in candidates:
        found = classify(ln)
        if found is not None:
            reason, (kind, named) = ln, found
            if named is not None:
                insn = named
            break
    else:
        if candidates:
            # after the last instruction, the first message is the verifier's reason; in a
            # log without instructions (the program was refused before it was walked), the
            # last one is
            reason = candidates[0] if last_insn is not None else candidates[-1]
    source = source_line(line_infos, insn) if insn is not None else None
    return Diagnosis(reason, kind, insn, source, parse_stats(log))


def source_line(line_infos: Sequence[LineInfo], insn: int) -> SourceLine | None:
    """The source line of instruction ``insn``: the line info record that starts at it, or
    the nearest one before it. Records of line 0 (code the compiler made up) are skipped."""
    records = sorted(line_infos, key=lambda li: li.insn)
    i = bisect.bisect_right([li.insn for li in records], insn) - 1
    while i >= 0:
        li = records[i]
        if li.line_number > 0:
            return SourceLine(li.file_name, li.line_number, li.column, li.line.strip())
        i -= 1
    return None


def parse_stats(log: str) -> Stats:
    """The statistics at the end of a verifier log (the last report wins)."""
    processed = list(_PROCESSED.finditer(log))
    if not processed:
        insns = limit = None
        counters: dict[str, int] = {}
    else:
        last = processed[-1]
        insns, limit = int(last[1]), int(last[2])
        counters = {k: int(v) for k, v in _COUNTER.findall(last[3])}
    times = _TIME.findall(log)
    depths = _DEPTH.findall(log)
    return Stats(
        insns=insns,
        limit=limit,
        max_states_per_insn=counters.get("max_states_per_insn"),
        total_states=counters.get("total_states"),
        peak_states=counters.get("peak_states"),
        time_us=int(times[-1]) if times else None,
        stack_depth=tuple(int(d) for d in depths[-1].split("+") if d) if depths else (),
    )


def annotate(log: str, line_infos: Iterable[LineInfo]) -> str:
    """``log`` with the source line of each instruction before it, as ``bpftool prog dump
    xlated linum`` prints them (``; text [file:F line_num:N line_col:C]``), whenever the
    line changes. The kernel's own shorter source lines (``; text @ file:N``) give way to
    them. Without line info, the log is returned as it is."""
    records = sorted(line_infos, key=lambda li: li.insn)
    if not records:
        return log
    starts = [li.insn for li in records]
    out: list[str] = []
    shown = -1
    for ln in log.splitlines():
        if _KERNEL_SOURCE.fullmatch(ln.strip()):
            continue
        m = _INSN.match(ln)
        if m is not None:
            i = bisect.bisect_right(starts, int(m[1])) - 1
            if i >= 0 and i != shown:
                li = records[i]
                out.append(
                    f"; {li.line.strip()} [file:{li.file_name} line_num:{li.line_number} "
                    f"line_col:{li.column}]"
                )
                shown = i
        out.append(ln)
    return "\n".join(out) + ("\n" if log.endswith("\n") else "")


def budget_share(insns: int, limit: int | None = None) -> float:
    """The share of the verifier's budget ``insns`` processed instructions use."""
    return insns / (limit or BUDGET)
