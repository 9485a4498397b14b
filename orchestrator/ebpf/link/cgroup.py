"""cgroup v2 hooks: attach with a BPF link on a cgroup directory, and query a hook."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from orchestrator.ebpf import _sys
from orchestrator.ebpf import mounts as _mounts
from orchestrator.ebpf._sys import AttachType, LinkType
from orchestrator.ebpf.errors import (
    AttachConflictError,
    AttachError,
    SyscallError,
    TargetNotFoundError,
)
from orchestrator.ebpf.link.base import (
    CgroupTarget,
    Link,
)
from orchestrator.ebpf.link.query import AttachedProgram, HookState, _prog_name, _query, iter_links

if TYPE_CHECKING:
    from orchestrator.ebpf.programs import Program

CGROUP2_SUPER_MAGIC = 0x63677270


_CGROUP_TYPES: dict[str, AttachType] = {
    "ingress": AttachType.CGROUP_INET_INGRESS,
    "egress": AttachType.CGROUP_INET_EGRESS,
    "sock_create": AttachType.CGROUP_INET_SOCK_CREATE,
    "sock_release": AttachType.CGROUP_INET_SOCK_RELEASE,
    "sock_ops": AttachType.CGROUP_SOCK_OPS,
    "device": AttachType.CGROUP_DEVICE,
    "bind4": AttachType.CGROUP_INET4_BIND,
    "bind6": AttachType.CGROUP_INET6_BIND,
    "post_bind4": AttachType.CGROUP_INET4_POST_BIND,
    "post_bind6": AttachType.CGROUP_INET6_POST_BIND,
    "connect4": AttachType.CGROUP_INET4_CONNECT,
    "connect6": AttachType.CGROUP_INET6_CONNECT,
    "sendmsg4": AttachType.CGROUP_UDP4_SENDMSG,
    "sendmsg6": AttachType.CGROUP_UDP6_SENDMSG,
    "recvmsg4": AttachType.CGROUP_UDP4_RECVMSG,
    "recvmsg6": AttachType.CGROUP_UDP6_RECVMSG,
    "getpeername4": AttachType.CGROUP_INET4_GETPEERNAME,
    "getpeername6": AttachType.CGROUP_INET6_GETPEERNAME,
    "getsockname4": AttachType.CGROUP_INET4_GETSOCKNAME,
    "getsockname6": AttachType.CGROUP_INET6_GETSOCKNAME,
    "sysctl": AttachType.CGROUP_SYSCTL,
    "getsockopt": AttachType.CGROUP_GETSOCKOPT,
    "setsockopt": AttachType.CGROUP_SETSOCKOPT,
}


def cgroup_attach_type(name: str | AttachType) -> AttachType:
    """The attach type for a cgroup hook name ("ingress", "egress", "sock_create",
    "connect4" …, as in section names without the ``cgroup/`` prefix)."""
    if isinstance(name, AttachType):
        return name
    key = name.removeprefix("cgroup_skb/").removeprefix("cgroup/").replace("inet_", "")
    try:
        return _CGROUP_TYPES[key]
    except KeyError:
        raise ValueError(
            f"cgroup attach type {name!r}: expected one of {', '.join(_CGROUP_TYPES)}"
        ) from None


def _cgroup2_hint() -> str:
    root = _mounts.find_mount("cgroup2")
    if root is None:
        return "cgroup v2 is not mounted: mount -t cgroup2 none /sys/fs/cgroup"
    return f"cgroup v2 is mounted at {root}"


@contextlib.contextmanager
def _cgroup_fd(path: str | os.PathLike[str]) -> Iterator[int]:
    p = os.fspath(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError as err:
        raise TargetNotFoundError(f"cgroup {p}: no such directory ({_cgroup2_hint()})") from err
    except OSError as err:
        raise AttachError(f"cgroup {p}: {(err.strerror or str(err)).lower()}") from err
    try:
        if _sys.fs_magic(p) != CGROUP2_SUPER_MAGIC:
            raise AttachError(f"cgroup {p}: not a cgroup v2 directory (mount -t cgroup2)")
        yield fd
    finally:
        os.close(fd)


def attach_cgroup(
    prog: Program, cgroup_path: str | os.PathLike[str], attach_type: str | AttachType
) -> Link:
    """Attach a cgroup program (cgroup_skb, cgroup/sock, connect4 …) to a cgroup v2
    directory with a link, in multi-program mode: other programs at the hook keep running.
    Needs Linux 5.7 and CAP_NET_ADMIN (CAP_SYS_ADMIN for some hooks)."""
    at = cgroup_attach_type(attach_type)
    what = f"cgroup {at.name.lower()} link of {prog.name} on {os.fspath(cgroup_path)}"
    with _cgroup_fd(cgroup_path) as cg:
        attr = _sys.LinkCreateAttr(prog_fd=prog.fd.raw, target_fd=cg, attach_type=at)
        try:
            fd = _sys.link_create(attr)
        except SyscallError as err:
            if err.errno == errno.EPERM:
                # a program attached exclusively (BPF_PROG_ATTACH without ALLOW_MULTI) refuses
                # every other attachment at the hook
                state = _query(cg, at, what)
                if state.programs:
                    first = state.programs[0].prog_id
                    raise AttachConflictError(
                        f"{what}: the hook is held by program {first} ({_prog_name(first)}) "
                        "attached exclusively by someone else",
                        prog_id=first,
                        prog_name=_prog_name(first),
                    ) from err
            hint = " (does the program type match the attach type?)" if err.errno == 22 else ""
            raise AttachError(f"{what}: {err.detail}{hint}") from err
    return Link.from_fd(fd, what)


def cgroup_attached(path: str | os.PathLike[str], attach_type: str | AttachType) -> HookState:
    """The programs attached directly to a cgroup hook (not inherited ones), with the ids
    of the links that hold them (the kernel's query, completed from the list of links where
    it does not report link ids)."""
    at = cgroup_attach_type(attach_type)
    with _cgroup_fd(path) as cg:
        state = _query(cg, at, f"cgroup {os.fspath(path)}")
    if all(p.link_id is not None for p in state.programs):
        return state
    cgroup_id = os.stat(os.fspath(path)).st_ino
    by_prog: dict[int, list[int]] = {}
    for info in iter_links(LinkType.CGROUP):
        t = info.target
        if isinstance(t, CgroupTarget) and t.cgroup_id == cgroup_id and t.attach_type == at:
            by_prog.setdefault(info.program_id, []).append(info.id)
    programs = []
    for p in state.programs:
        ids = by_prog.get(p.prog_id, [])
        programs.append(AttachedProgram(p.prog_id, p.link_id or (ids.pop(0) if ids else None)))
    return HookState(tuple(programs), state.revision)
