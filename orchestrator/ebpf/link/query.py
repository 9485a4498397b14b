"""What is attached where: every program at a tcx or cgroup hook (BPF_PROG_QUERY), and
every link in the kernel."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from orchestrator.ebpf import _sys
from orchestrator.ebpf._sys import AttachType, Cmd, LinkType
from orchestrator.ebpf.errors import (
    AttachError,
    SyscallError,
)
from orchestrator.ebpf.link.base import (
    LinkInfo,
    _decode_info,
)


@dataclass(frozen=True, slots=True)
class AttachedProgram:
    """One program at a multi-program hook, in run order."""

    prog_id: int
    link_id: int | None  # None: attached with BPF_PROG_ATTACH (no link)


@dataclass(frozen=True, slots=True)
class HookState:
    """Everything attached at a tcx or cgroup hook; ``revision`` changes on every change
    (tcx only; 0 for cgroups) and can be passed to :func:`attach_tcx` as
    ``expected_revision`` to attach only if nothing changed since."""

    programs: tuple[AttachedProgram, ...]
    revision: int = 0

    @property
    def prog_ids(self) -> tuple[int, ...]:
        return tuple(p.prog_id for p in self.programs)

    @property
    def link_ids(self) -> tuple[int | None, ...]:
        return tuple(p.link_id for p in self.programs)


def _prog_name(prog_id: int) -> str:
    try:
        fd = _sys.fd_by_id(Cmd.PROG_GET_FD_BY_ID, prog_id)
    except SyscallError:
        return "?"
    with fd:
        return str(_sys.prog_info(fd).name.decode("utf-8", "replace"))


def _query(target_fd: int, attach_type: AttachType, what: str) -> HookState:
    try:
        prog_ids, link_ids, revision = _sys.prog_query(target_fd, attach_type)
    except SyscallError as err:
        raise AttachError(f"{what}: query: {err.detail}") from err
    return HookState(
        programs=tuple(
            AttachedProgram(p, k or None) for p, k in zip(prog_ids, link_ids, strict=True)
        ),
        revision=revision,
    )


def iter_links(link_type: LinkType | None = None) -> Iterator[LinkInfo]:
    """Every link in the kernel (BPF_LINK_GET_NEXT_ID), optionally of one type, as
    :class:`LinkInfo` values (no fd stays open). Links that vanish meanwhile are skipped.
    Needs CAP_SYS_ADMIN."""
    for link_id in _sys.iter_ids(Cmd.LINK_GET_NEXT_ID):
        try:
            fd = _sys.fd_by_id(Cmd.LINK_GET_FD_BY_ID, link_id)
        except SyscallError:
            continue  # gone since we saw its id
        with fd:
            try:
                if link_type is not None and _sys.link_info(fd).type != link_type:
                    continue
                raw, name = _sys.link_info_named(fd)
            except SyscallError:
                continue
        yield _decode_info(raw, name)
