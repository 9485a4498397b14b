"""User-space probes: a uprobe PMU perf event on an ELF symbol, attached with a BPF link."""

from __future__ import annotations

import ctypes
import errno
import os
import struct

from orchestrator.ebpf import _sys
from orchestrator.ebpf import features as _features
from orchestrator.ebpf.errors import (
    AttachError,
    NotSupportedError,
    SyscallError,
    TargetNotFoundError,
    clip,
)
from orchestrator.ebpf.files import open_file, read_text, reason, stat_regular
from orchestrator.ebpf.link.base import (
    Link,
)
from orchestrator.ebpf.link.tracing import _perf_link
from orchestrator.ebpf.programs import Program

PMU_ROOT = _features.PMU_ROOT


def _pmu(kind: str) -> tuple[int, dict[str, str]]:
    """The type number of a dynamic PMU and its format fields (name -> "config:0")."""
    base = PMU_ROOT / kind
    try:
        pmu_type = int(read_text(base / "type", limit=4096))
    except FileNotFoundError as err:
        raise NotSupportedError(
            f"{kind}: no {kind} PMU in {PMU_ROOT} (kernel built without)"
        ) from err
    fields: dict[str, str] = {}
    fmt = base / "format"
    if fmt.is_dir():
        for entry in fmt.iterdir():
            fields[entry.name] = read_text(entry, limit=4096).strip()
    return pmu_type, fields


def _format_bit(spec: str, what: str) -> int:
    # "config:0" -> bit 0 of config
    field, _, bits = spec.partition(":")
    if field != "config" or not bits.isdigit():
        raise NotSupportedError(f"{what}: unexpected PMU format {spec!r}")
    return int(bits)


def resolve_symbol(path: str | os.PathLike[str], symbol: str) -> int:
    """The file offset of function ``symbol`` in the ELF file at ``path`` (from .symtab,
    else .dynsym): its address translated through the PT_LOAD segment that holds it."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    p = os.fspath(path)
    try:
        f = open_file(p)  # a regular file, opened without blocking
    except FileNotFoundError as err:
        raise TargetNotFoundError(f"uprobe {p}: no such file") from err
    except OSError as err:
        raise AttachError(f"uprobe {p}: {reason(err)}") from err
    with f:
        try:
            elf = ELFFile(f)
            address = None
            for section_name in (".symtab", ".dynsym"):
                section = elf.get_section_by_name(section_name)
                if section is None or not hasattr(section, "get_symbol_by_name"):
                    continue
                for sym in section.get_symbol_by_name(symbol) or []:
                    if sym["st_info"]["type"] in ("STT_FUNC", "STT_GNU_IFUNC") and sym["st_value"]:
                        address = int(sym["st_value"])
                        break
                if address is not None:
                    break
            if address is None:
                raise TargetNotFoundError(
                    f"uprobe {p}: symbol {symbol} not found in .symtab/.dynsym "
                    "(is the binary stripped? give an offset instead)"
                )
            for seg in elf.iter_segments():
                if seg["p_type"] != "PT_LOAD":
                    continue
                start = int(seg["p_vaddr"])
                if start <= address < start + int(seg["p_memsz"]):
                    return address - start + int(seg["p_offset"])
        except (ELFError, EOFError, struct.error, ValueError) as err:
            raise AttachError(f"uprobe {p}: not an ELF file: {clip(str(err))}") from err
        except OSError as err:  # FileError: it turned into a stream since it was opened
            raise AttachError(f"uprobe {p}: {reason(err)}") from err
    raise AttachError(f"uprobe {p}: symbol {symbol} at {address:#x} is in no loadable segment")


def attach_uprobe(
    prog: Program,
    path: str | os.PathLike[str],
    symbol: str | None = None,
    offset: int = 0,
    *,
    retprobe: bool = False,
    pid: int | None = None,
) -> Link:
    """Attach a kprobe-type program as a uprobe (or uretprobe) on a function of an ELF file:
    at ``symbol`` (+ ``offset``), or at file ``offset`` when no symbol is given. Uses the
    uprobe PMU (``/sys/bus/event_source/devices/uprobe``) and a perf_event link; ``pid``
    limits it to one process (default: every process). Needs Linux 5.15 and CAP_PERFMON
    (or CAP_SYS_ADMIN)."""
    p = os.path.realpath(os.fspath(path))
    what = f"uprobe {p}:{symbol or hex(offset)} of {prog.name}"
    if retprobe:
        what = "uret" + what[1:]
    try:
        stat_regular(p)  # the kernel refuses anything else, with a bare EINVAL
    except FileNotFoundError as err:
        raise TargetNotFoundError(f"{what}: no such file") from err
    except OSError as err:
        raise AttachError(f"{what}: {reason(err)}") from err
    file_offset = offset
    if symbol is not None:
        file_offset = resolve_symbol(p, symbol) + offset
    pmu_type, fields = _pmu("uprobe")
    config = 0
    if retprobe:
        if "retprobe" not in fields:
            raise NotSupportedError(f"{what}: the uprobe PMU has no retprobe format bit")
        config |= 1 << _format_bit(fields["retprobe"], what)
    path_buf = ctypes.create_string_buffer(os.fsencode(p) + b"\0")
    attr = _sys.PerfEventAttr(
        type=pmu_type,
        config=config,
        config1=ctypes.addressof(path_buf),
        config2=file_offset,
        sample_period=1,
        wakeup_events=1,
    )
    try:
        perf = _sys.perf_event_open(
            attr, pid=pid if pid is not None else -1, cpu=0 if pid is None else -1
        )
    except SyscallError as err:
        if err.errno == errno.ESRCH:
            raise TargetNotFoundError(f"{what}: no process {pid}") from err
        raise AttachError(f"{what}: {err.detail}") from err
    return _perf_link(prog, perf, what)
