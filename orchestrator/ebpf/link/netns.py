"""Network-namespace hooks (flow_dissector, sk_lookup): attach with a BPF link on a
netns fd."""

from __future__ import annotations

import errno
import os

from orchestrator.ebpf import _netlink, _sys
from orchestrator.ebpf._sys import AttachType
from orchestrator.ebpf.errors import (
    AttachConflictError,
    AttachError,
    SyscallError,
    TargetNotFoundError,
)
from orchestrator.ebpf.files import reason
from orchestrator.ebpf.link.base import (
    Link,
    NetnsPath,
)
from orchestrator.ebpf.programs import Program


def attach_netns(prog: Program, netns: NetnsPath, attach_type: str | AttachType) -> Link:
    """Attach an sk_lookup or flow_dissector program to a network namespace (``None``: the
    calling thread's) with a netns link. ``attach_type``: "sk_lookup" / "flow_dissector" or
    the AttachType. Needs Linux 5.8 (flow_dissector), 5.9 (sk_lookup)."""
    at: AttachType
    if isinstance(attach_type, AttachType):
        at = attach_type
    elif attach_type in ("sk_lookup", "flow_dissector"):
        at = AttachType[attach_type.upper()]
    else:
        raise ValueError(f"netns attach type {attach_type!r}: expected sk_lookup/flow_dissector")
    p = os.fspath(netns) if netns is not None else "/proc/thread-self/ns/net"
    what = f"netns {at.name.lower()} link of {prog.name} on {p}"
    try:
        nsfd = _netlink.open_netns(p)
    except FileNotFoundError as err:
        raise TargetNotFoundError(
            f"{what}: no such namespace (a path like /var/run/netns/NAME)"
        ) from err
    except OSError as err:
        raise AttachError(f"{what}: {reason(err)} (not a network namespace)") from err
    try:
        attr = _sys.LinkCreateAttr(prog_fd=prog.fd.raw, target_fd=nsfd, attach_type=at)
        try:
            fd = _sys.link_create(attr)
        except SyscallError as err:
            if err.errno in (errno.EEXIST, errno.E2BIG):
                # E2BIG: the hook is full (a flow dissector hook holds one program, sk_lookup
                # 64); EEXIST: a program is attached there without a link
                raise AttachConflictError(
                    f"{what}: the namespace already has a {at.name.lower()} program "
                    "(a flow dissector hook holds one; sk_lookup up to 64)"
                ) from err
            hint = " (is it a netns file?)" if err.errno == errno.EINVAL else ""
            raise AttachError(f"{what}: {err.detail}{hint}") from err
    finally:
        os.close(nsfd)
    return Link.from_fd(fd, what)
