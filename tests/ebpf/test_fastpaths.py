"""The parser's fast paths give what the straightforward code gives: string tables read in
one pass, linking that only visits the instructions that matter, relocations of debug
sections skipped, .BTF.ext records bisected per function, line info kept as parsed until
read. Kernel-free."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from orchestrator import ebpf
from orchestrator.ebpf import elf
from orchestrator.ebpf._sys import BPF_PSEUDO_CALL, BPF_PSEUDO_FUNC
from orchestrator.ebpf.asm import CALL, INSN_SIZE, LD_IMM64
from orchestrator.ebpf.btf import Int, Spec
from orchestrator.ebpf.btf import ext as btf_ext
from orchestrator.ebpf.btf.ext import LazyLineInfos, parse_ext
from tests.conftest import BPF_DIR, obj

LIBXDP = Path("/usr/lib/x86_64-linux-gnu/bpf")
OBJECTS = sorted(BPF_DIR.glob("*.o")) + sorted(LIBXDP.glob("*.o"))
_SHDR = struct.Struct("<IIQQQQIIQQ")


def _sections(data: bytes) -> dict[str, tuple[int, int, int]]:
    """name → (header offset, file offset, size), read independently of the loader."""
    shoff, shnum, shstrndx = (
        struct.unpack_from("<Q", data, 0x28)[0],
        struct.unpack_from("<H", data, 0x3C)[0],
        struct.unpack_from("<H", data, 0x3E)[0],
    )
    heads = [_SHDR.unpack_from(data, shoff + i * _SHDR.size) for i in range(shnum)]
    names = heads[shstrndx][4]
    out = {}
    for i, h in enumerate(heads):
        end = data.index(b"\0", names + h[0])
        out[data[names + h[0] : end].decode()] = (shoff + i * _SHDR.size, h[4], h[5])
    return out


def test_string_table_matches_cstr_at_every_offset() -> None:
    table = b"\0.rel.BTF\0xdp\0\xffbad\0unterminated"
    starts = elf._string_starts(table)
    assert set(starts) == {0, 1, 10, 14, 19}  # every string that follows a nul
    for off in range(len(table) + 1):  # starts, suffixes ('.BTF' in '.rel.BTF'), the end
        # what the reader does: a start from the one pass, any other offset by _cstr
        name = starts[off] if off in starts else elf._cstr(table, off)
        assert name == elf._cstr(table, off), off
    with pytest.raises(ebpf.ParseError, match="string offset 99 out of range"):
        elf._cstr(table, 99)


def test_btf_strings_prefilled_and_mid_string_offsets() -> None:
    spec = Spec()
    spec.add(Int("unsigned int", 4))
    blob, strings = spec.marshal()
    parsed = Spec.parse(blob)
    off = strings["unsigned int"]
    assert parsed.string(off) == "unsigned int"
    assert parsed.string(off + len("unsigned ")) == "int"  # a suffix: not a prefilled start
    with pytest.raises(ebpf.BTFError, match="out of range"):
        parsed.string(10_000)


@pytest.mark.parametrize("path", OBJECTS, ids=lambda p: p.name)
def test_linking_visits_every_instruction_that_matters(path: Path) -> None:
    """``_interesting`` finds exactly what a loop over every slot finds."""
    reader = elf._Reader(path.read_bytes(), path.name)
    reader._load_sections()
    for fn in reader._read_functions().values():
        relocs = reader._relocs_of(fn)
        want = []
        for i in range(fn.end - fn.start):
            pos = (fn.start + i) * INSN_SIZE
            op, src = fn.section.data[pos], fn.section.data[pos + 1] >> 4
            if (
                (op == CALL and src == BPF_PSEUDO_CALL)
                or (op == LD_IMM64 and src == BPF_PSEUDO_FUNC)
                or fn.start + i in relocs
            ):
                want.append(i)
        assert elf._interesting(fn, relocs) == want, fn.name


def _corrupt_first_reloc(data: bytes, section: str) -> bytes:
    _, off, size = _sections(data)[section]
    assert size >= 16
    out = bytearray(data)
    struct.pack_into("<Q", out, off + 8, (0xFFFF << 32) | 1)  # symbol 65535, R_BPF_64_64
    return bytes(out)


def test_bad_relocation_in_code_is_an_error() -> None:
    data = _corrupt_first_reloc(obj("xdp_counter.o").read_bytes(), ".relxdp")
    with pytest.raises(ebpf.ParseError, match=r"relocation section \.relxdp: bad symbol index"):
        ebpf.CollectionSpec.from_bytes(data, name="x.o")


def test_relocations_of_debug_sections_are_not_read() -> None:
    good = obj("xdp_counter.o").read_bytes()
    data = _corrupt_first_reloc(good, ".rel.debug_info")
    spec = ebpf.CollectionSpec.from_bytes(data, name="x.o")
    want = ebpf.CollectionSpec.from_bytes(good, name="x.o")
    assert spec.programs["xdp_count"].instructions == want.programs["xdp_count"].instructions


@pytest.mark.parametrize("path", OBJECTS, ids=lambda p: p.name)
def test_ext_records_per_function_are_in_instruction_order(path: Path) -> None:
    spec = ebpf.CollectionSpec.from_file(path, cache=False)
    for prog in spec.programs.values():
        n = len(prog.instructions)
        for recs in (prog.func_infos, prog.line_infos, prog.core_relos):
            insns = [r.insn for r in recs]
            assert insns == sorted(insns) and all(0 <= i < n for i in insns)
        if prog.func_infos:
            assert prog.func_infos[0].insn == 0
            assert prog.func_infos[0].func.name == prog.name


def test_line_info_not_at_an_instruction() -> None:
    data = obj("xdp_counter.o").read_bytes()
    secs = _sections(data)
    _, btf_off, btf_size = secs[".BTF"]
    _, ext_off, ext_size = secs[".BTF.ext"]
    ext = bytearray(data[ext_off : ext_off + ext_size])
    hdr_len, li_off = struct.unpack_from("<I", ext, 4)[0], struct.unpack_from("<I", ext, 16)[0]
    first = hdr_len + li_off + 4 + 8  # record size, then section name and count
    good = parse_ext(bytes(ext), Spec.parse(data[btf_off : btf_off + btf_size]))
    assert good.line_infos["xdp"][0].insn == struct.unpack_from("<I", ext, first)[0] // 8
    struct.pack_into("<I", ext, first, 3)
    for raw_lines in (False, True):
        with pytest.raises(ebpf.BTFError, match="xdp: offset 3 is not at an instruction"):
            parse_ext(
                bytes(ext), Spec.parse(data[btf_off : btf_off + btf_size]), raw_lines=raw_lines
            )


@pytest.mark.parametrize("path", OBJECTS, ids=lambda p: p.name)
def test_raw_line_info_reads_like_decoded(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = ebpf.CollectionSpec.from_file(path, cache=False)
    held = {n: p.__dict__["line_infos"] for n, p in spec.programs.items()}
    parse = btf_ext.parse_ext  # the reader's, forced to read every record

    def decoded(data: bytes, btf: Spec, *, raw_lines: bool = False) -> btf_ext.Ext:
        return parse(data, btf)

    monkeypatch.setattr(btf_ext, "parse_ext", decoded)
    want = ebpf.CollectionSpec.from_file(path, cache=False)
    assert not any(type(p.__dict__["line_infos"]) is LazyLineInfos for p in want.programs.values())
    for name, prog in spec.programs.items():
        assert type(held[name]) is LazyLineInfos or not want.programs[name].line_infos
        assert prog.line_infos == want.programs[name].line_infos
        assert prog.line_infos is prog.line_infos  # built once: memos keyed by it stay valid


def _xdp_counter_ext() -> tuple[bytearray, bytes, int, int]:
    """xdp_counter.o's .BTF.ext, its .BTF, the offset of the first line info record of
    section xdp and the record count."""
    data = obj("xdp_counter.o").read_bytes()
    secs = _sections(data)
    _, btf_off, btf_size = secs[".BTF"]
    _, ext_off, ext_size = secs[".BTF.ext"]
    ext = bytearray(data[ext_off : ext_off + ext_size])
    hdr_len, li_off = struct.unpack_from("<I", ext, 4)[0], struct.unpack_from("<I", ext, 16)[0]
    assert struct.unpack_from("<I", ext, hdr_len + li_off)[0] == 16  # record size
    count = struct.unpack_from("<I", ext, hdr_len + li_off + 8)[0]
    return ext, data[btf_off : btf_off + btf_size], hdr_len + li_off + 12, count


def test_raw_line_info_kept_and_decoded_like_records() -> None:
    ext, btf, _, count = _xdp_counter_ext()
    raw = parse_ext(bytes(ext), Spec.parse(btf), raw_lines=True)
    want = parse_ext(bytes(ext), Spec.parse(btf))
    assert "xdp" not in raw.line_infos and len(raw.raw_line_infos["xdp"].offsets) == count
    assert raw.raw_line_infos["xdp"].decode(0, count, 0) == want.line_infos["xdp"]
    moved = raw.raw_line_infos["xdp"].decode(1, 3, 5)
    assert [li.insn for li in moved] == [li.insn + 5 for li in want.line_infos["xdp"][1:3]]


def test_raw_line_info_out_of_order_is_read_record_by_record() -> None:
    ext, btf, first, count = _xdp_counter_ext()
    assert count >= 2
    a, b = bytes(ext[first : first + 16]), bytes(ext[first + 16 : first + 32])
    ext[first : first + 32] = b + a
    raw = parse_ext(bytes(ext), Spec.parse(btf), raw_lines=True)
    want = parse_ext(bytes(ext), Spec.parse(btf))
    assert "xdp" not in raw.raw_line_infos
    assert raw.line_infos["xdp"] == want.line_infos["xdp"]
    assert want.line_infos["xdp"][0].insn > want.line_infos["xdp"][1].insn
    # the program still gets them in instruction order
    spec = ebpf.CollectionSpec.from_bytes(_with_ext(ext), name="x.o")
    insns = [li.insn for li in spec.programs["xdp_count"].line_infos]
    assert insns == sorted(insns) and len(insns) == count


def _with_ext(ext: bytearray) -> bytes:
    data = bytearray(obj("xdp_counter.o").read_bytes())
    _, off, size = _sections(bytes(data))[".BTF.ext"]
    assert len(ext) == size
    data[off : off + size] = ext
    return bytes(data)


def test_raw_line_info_bad_string_offset_names_it() -> None:
    ext, btf, first, _ = _xdp_counter_ext()
    struct.pack_into("<I", ext, first + 16 + 8, 1 << 20)  # the second record's line string
    for raw_lines in (False, True):
        with pytest.raises(ebpf.BTFError, match=f"string offset {1 << 20} out of range"):
            parse_ext(bytes(ext), Spec.parse(btf), raw_lines=raw_lines)
    with pytest.raises(ebpf.BTFError, match=f"string offset {1 << 20} out of range"):
        ebpf.CollectionSpec.from_bytes(_with_ext(ext), name="x.o")


def test_raw_line_info_read_is_not_a_change_and_assignment_is() -> None:
    spec = ebpf.CollectionSpec.from_file(obj("xdp_counter.o"), cache=False)
    prog = spec.programs["xdp_count"]
    before = dict(prog.__dict__)  # what load plans compare
    assert type(before["line_infos"]) is LazyLineInfos
    lines = prog.line_infos
    assert lines and prog.__dict__ == before
    assert prog.copy().line_infos is lines  # copies share the records
    prog.line_infos = lines[1:]
    assert prog.__dict__ != before and prog.line_infos == lines[1:]


def test_raw_line_info_of_a_section_in_two_blocks() -> None:
    ext, btf, first, count = _xdp_counter_ext()
    assert count >= 2
    name_off = struct.unpack_from("<I", ext, first - 8)[0]
    recs = [bytes(ext[first + 16 * i : first + 16 * i + 16]) for i in range(count)]
    blocks = struct.pack("<II", name_off, 1) + recs[0]
    blocks += struct.pack("<II", name_off, count - 1) + b"".join(recs[1:])
    lines = struct.pack("<I", 16) + blocks
    header = struct.pack("<HBBIIIIIII", 0xEB9F, 1, 0, 32, 0, 0, 0, len(lines), len(lines), 0)
    data = header + lines
    raw = parse_ext(data, Spec.parse(btf), raw_lines=True)
    want = parse_ext(data, Spec.parse(btf))
    assert "xdp" not in raw.raw_line_infos and len(want.line_infos["xdp"]) == count
    assert raw.line_infos == want.line_infos == parse_ext(bytes(ext), Spec.parse(btf)).line_infos


@pytest.mark.parametrize("path", OBJECTS, ids=lambda p: p.name)
def test_raw_line_info_encodes_like_decoded(path: Path) -> None:
    spec = ebpf.CollectionSpec.from_file(path, cache=False)
    for prog in spec.programs.values():
        held = prog.held_line_infos()
        if type(held) is not LazyLineInfos:  # no line info (see the test above)
            assert not prog.line_infos
            continue
        assert spec.btf is not None
        assert held.strings() == btf_ext.line_strings(prog.line_infos)
        assert btf_ext.line_strings(held) is held.strings()
        strings = spec.btf.marshal(held.strings())[1]
        assert len(held) == len(prog.line_infos)
        want = btf_ext.encode_line_infos(prog.line_infos, strings)
        assert held.encoded(strings) == want
        assert btf_ext.encoded_line_infos(held, strings) is held.encoded(strings)


def test_raw_line_info_encoding_names_a_missing_string() -> None:
    spec = ebpf.CollectionSpec.from_file(obj("xdp_counter.o"), cache=False)
    held = spec.programs["xdp_count"].held_line_infos()
    assert type(held) is LazyLineInfos
    first = spec.programs["xdp_count"].line_infos[0]
    strings = {s: 1 for s in held.strings() if s != first.line}
    want = f"line info {first.file_name}:{first.line_number}: string {first.line!r} is not in"
    for infos in (held, spec.programs["xdp_count"].line_infos):
        with pytest.raises(ebpf.BTFError, match=re.escape(want)):
            btf_ext.encoded_line_infos(infos, strings)
