"""Loading programs through the verifier to learn whether, and at what cost, they load.

:func:`verify` loads each program of a spec on its own, with the maps it needs, and closes
everything again: nothing is pinned or attached. Each program gets a
:class:`ProgramReport`: accepted or why not (a :class:`~orchestrator.ebpf.VerifierError`
explains itself), the instructions the verifier processed and their share of its 1,000,000
budget, the states it explored (``BPF_LOG_STATS``), how long it took, and the size of the
translated and JIT-compiled program. A CI job can use it to ask: does this object load on
this kernel, with these constants, and how close does it come to the limit?
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.ebpf import _sys
from orchestrator.ebpf._sys import ProgType
from orchestrator.ebpf.collection import CollectionOptions, _Loader
from orchestrator.ebpf.errors import Error, SpecError, VerifierError
from orchestrator.ebpf.programs import LOG_LEVEL2, LOG_STATS
from orchestrator.ebpf.spec import CollectionSpec, PinType
from orchestrator.ebpf.suggestions import hint
from orchestrator.ebpf.verifier import BUDGET, Stats, annotate, parse_stats

__all__ = ["ProgramReport", "verify"]


@dataclass(frozen=True, slots=True)
class ProgramReport:
    """How one program fared. ``error``: None if the verifier accepted it, else why not (a
    :class:`VerifierError`, or another loader error such as a missing attach target).
    ``verified_insns``: instructions the verifier processed (the kernel's
    ``verified_insns``; for a rejected program, as far as it got). ``xlated_size`` and
    ``jited_size``: bytes of the translated and the JIT-compiled program (0 if rejected).
    ``log``: the verifier log with source lines, when asked for."""

    name: str
    type: str
    error: Error | None
    stats: Stats
    verified_insns: int
    xlated_size: int
    jited_size: int
    load_seconds: float
    log: str = ""

    @property
    def accepted(self) -> bool:
        return self.error is None

    @property
    def rejected(self) -> bool:
        """Whether the verifier rejected it (else it failed before, or was accepted)."""
        return isinstance(self.error, VerifierError)

    @property
    def budget(self) -> int:
        return self.stats.limit or BUDGET

    @property
    def budget_share(self) -> float:
        return self.verified_insns / self.budget

    def to_json(self) -> dict[str, object]:
        error: dict[str, object] | None = None
        if self.error is not None:
            error = {"message": str(self.error)}
            if isinstance(self.error, VerifierError):
                error.update(self.error.diagnosis.to_json())
                error["truncated_log"] = self.error.truncated
        return {
            "name": self.name,
            "type": self.type,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "verified_insns": self.verified_insns,
            "budget": self.budget,
            "budget_share": round(self.budget_share, 6),
            "processed_states": self.stats.total_states,
            "peak_states": self.stats.peak_states,
            "max_states_per_insn": self.stats.max_states_per_insn,
            "verification_time_us": self.stats.time_us,
            "stack_depth": list(self.stats.stack_depth),
            "xlated_bytes": self.xlated_size,
            "jited_bytes": self.jited_size,
            "load_seconds": round(self.load_seconds, 6),
            "error": error,
        }


def verify(
    spec: CollectionSpec,
    programs: Sequence[str] | None = None,
    *,
    full_log: bool = False,
    options: CollectionOptions | None = None,
) -> list[ProgramReport]:
    """Load each of ``programs`` (default: every program a collection would load) through
    the verifier, one at a time, and report on each; then close everything. Maps are
    created as the programs need them and shared between them, never pinned (pinning by
    name is ignored). ``full_log``: keep each program's whole verifier log (level 1: it
    costs verifier time, and large programs have long logs), with source lines.

    Raises :class:`SpecError` for a program name the spec does not have; every other
    failure is the report of the program it concerns. ``spec`` is not changed."""
    names = list(programs) if programs is not None else None
    if names is None:
        names = [n for n, p in spec.programs.items() if p.autoload]
    for name in names:
        if name not in spec.programs:
            raise SpecError(f"program {name}: not in object{hint(name, sorted(spec.programs))}")
    work = spec.copy()
    for ms in work.maps.values():
        ms.pinning = PinType.NONE  # nothing of a check stays behind
    base = options or CollectionOptions()
    level = LOG_STATS | (LOG_LEVEL2 if full_log else 0)
    opts = CollectionOptions(
        map_replacements=base.map_replacements,
        log_level=level,
        log_size=base.log_size,
        kernel_btf=base.kernel_btf,
        kconfig_path=base.kconfig_path,
    )
    loader = _Loader(work, opts)
    reports: list[ProgramReport] = []
    try:
        for name in names:
            reports.append(_verify_one(loader, name, full_log))
    finally:
        loader.cleanup()
    return reports


def _verify_one(loader: _Loader, name: str, full_log: bool) -> ProgramReport:
    spec = loader.spec.programs[name]
    kind = spec.type.name.lower() if isinstance(spec.type, ProgType) else str(spec.type)
    start = time.perf_counter()
    try:
        prog = loader.program(name)
    except Error as err:
        elapsed = time.perf_counter() - start
        log = err.log if isinstance(err, VerifierError) else ""
        stats = parse_stats(log)
        text = err.annotated_log() if full_log and isinstance(err, VerifierError) else ""
        return ProgramReport(name, kind, err, stats, stats.insns or 0, 0, 0, elapsed, text)
    elapsed = time.perf_counter() - start
    try:
        info = _sys.prog_info(prog.fd)
        stats = parse_stats(prog.verifier_log)
        text = annotate(prog.verifier_log, spec.line_infos) if full_log else ""
    finally:
        loader.programs.pop(name, None)
        prog.close()
    return ProgramReport(
        name,
        kind,
        None,
        stats,
        int(info.verified_insns) or (stats.insns or 0),
        int(info.xlated_prog_len),
        int(info.jited_prog_len),
        elapsed,
        text,
    )
