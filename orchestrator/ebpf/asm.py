"""eBPF instructions.

A program's instructions are kept as the raw little-endian bytes the kernel takes plus a
sparse table of *references* (instruction index → what the instruction refers to: a map,
a map's value, an extern). Linking and relocation patch the bytes in place; the table is
what load time resolves. :class:`Instruction` decodes single instructions for inspection,
tests and error messages.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

INSN_SIZE = 8

# Instruction classes and fields (linux/bpf_common.h, linux/bpf.h).
CLASS_LD = 0x00
CLASS_LDX = 0x01
CLASS_ST = 0x02
CLASS_STX = 0x03
CLASS_ALU = 0x04
CLASS_JMP = 0x05
CLASS_JMP32 = 0x06
CLASS_ALU64 = 0x07
MODE_IMM = 0x00
SIZE_DW = 0x18
OP_CALL = 0x80
OP_EXIT = 0x90
OP_JA = 0x00
LD_IMM64 = CLASS_LD | MODE_IMM | SIZE_DW  # 0x18
CALL = CLASS_JMP | OP_CALL  # 0x85
EXIT = CLASS_JMP | OP_EXIT  # 0x95

_INSN = struct.Struct("<BBhi")


class RefKind(enum.Enum):
    """What an instruction's reference points at."""

    MAP = "map"  # ld_imm64 of a map fd (BPF_PSEUDO_MAP_FD)
    MAP_VALUE = "map_value"  # ld_imm64 of an address inside a map's value (BPF_PSEUDO_MAP_VALUE)
    EXTERN = "extern"  # ld_imm64 / call of an extern symbol (.kconfig, .ksyms, kfunc)


@dataclass(frozen=True, slots=True)
class Reference:
    kind: RefKind
    name: str
    offset: int = 0  # byte offset into the map value (MAP_VALUE)


@dataclass(frozen=True, slots=True)
class Instruction:
    """One decoded instruction. ``constant`` is 64 bits wide for ld_imm64 (two slots)."""

    opcode: int
    dst: int
    src: int
    offset: int
    constant: int

    @property
    def cls(self) -> int:
        return self.opcode & 0x07

    @property
    def is_ld_imm64(self) -> bool:
        return self.opcode == LD_IMM64

    @property
    def is_call(self) -> bool:
        return self.opcode == CALL

    @property
    def is_exit(self) -> bool:
        return self.opcode == EXIT

    @property
    def slots(self) -> int:
        return 2 if self.is_ld_imm64 else 1

    def __str__(self) -> str:
        return (
            f"op={self.opcode:#04x} dst=r{self.dst} src=r{self.src} "
            f"off={self.offset} imm={self.constant}"
        )


def decode(raw: bytes | bytearray | memoryview, index: int) -> Instruction:
    """Decode the instruction at slot ``index`` (the first slot of an ld_imm64)."""
    op, regs, off, imm = _INSN.unpack_from(raw, index * INSN_SIZE)
    if op == LD_IMM64 and (index + 1) * INSN_SIZE < len(raw):
        hi = _INSN.unpack_from(raw, (index + 1) * INSN_SIZE)[3]
        imm = (imm & 0xFFFFFFFF) | (hi << 32)
    return Instruction(op, regs & 0x0F, regs >> 4, off, imm)


def encode(insn: Instruction) -> bytes:
    regs = (insn.src << 4) | (insn.dst & 0x0F)
    if insn.is_ld_imm64:
        lo = insn.constant & 0xFFFFFFFF
        hi = (insn.constant >> 32) & 0xFFFFFFFF
        return struct.pack("<BBhIBBhI", insn.opcode, regs, insn.offset, lo, 0, 0, 0, hi)
    return _INSN.pack(insn.opcode, regs, insn.offset, insn.constant)


def get_imm(raw: bytes | bytearray, index: int) -> int:
    return int(struct.unpack_from("<i", raw, index * INSN_SIZE + 4)[0])


def opcode(raw: bytes | bytearray, index: int) -> int:
    return raw[index * INSN_SIZE]


class Instructions:
    """An immutable instruction stream: raw bytes plus references by instruction index."""

    __slots__ = ("_refs", "raw")

    def __init__(self, raw: bytes, refs: Mapping[int, Reference] | None = None) -> None:
        if len(raw) % INSN_SIZE:
            raise ValueError(f"instruction stream of {len(raw)} bytes is not a multiple of 8")
        self.raw = bytes(raw)
        self._refs: dict[int, Reference] = dict(refs or {})

    @property
    def references(self) -> Mapping[int, Reference]:
        return self._refs

    def __len__(self) -> int:
        """The number of 8-byte slots (an ld_imm64 takes two)."""
        return len(self.raw) // INSN_SIZE

    def __iter__(self) -> Iterator[Instruction]:
        i, n = 0, len(self)
        while i < n:
            insn = decode(self.raw, i)
            yield insn
            i += insn.slots

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Instructions):
            return NotImplemented
        return self.raw == other.raw and self._refs == other._refs

    def __hash__(self) -> int:
        return hash(self.raw)

    def referenced(self, kind: RefKind | None = None) -> set[str]:
        """Names this stream refers to (optionally only of one kind)."""
        return {r.name for r in self._refs.values() if kind is None or r.kind is kind}

    def __repr__(self) -> str:
        return f"Instructions({len(self)} slots, {len(self._refs)} references)"
