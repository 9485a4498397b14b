"""The kernel hooks a manifest names, and which programs fit each of its attachment targets.

The manifest names hooks the way users think of them (``cgroup: {attach: egress}``); the
kernel wants a program type and, for most hooks, a matching expected attach type given at
load time (``BPF_PROG_LOAD``'s ``expected_attach_type``, which libbpf derives from the
section name, e.g. ``SEC("cgroup_skb/egress")``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator.ebpf import AttachType, ProgType
from orchestrator.manifest.model import (
    CgroupTarget,
    Direction,
    NetnsTarget,
    RawTracepointTarget,
    Target,
    TcTarget,
    TracepointTarget,
    UprobeTarget,
    XdpTarget,
)

if TYPE_CHECKING:  # the ELF parser is not imported for a plan that parses no object
    from orchestrator.ebpf import ProgramSpec

A = AttachType
P = ProgType

# cgroup attach point -> (program type, kernel attach type)
CGROUP_HOOKS: dict[str, tuple[ProgType, AttachType]] = {
    "ingress": (P.CGROUP_SKB, A.CGROUP_INET_INGRESS),
    "egress": (P.CGROUP_SKB, A.CGROUP_INET_EGRESS),
    "sock_create": (P.CGROUP_SOCK, A.CGROUP_INET_SOCK_CREATE),
    "sock_release": (P.CGROUP_SOCK, A.CGROUP_INET_SOCK_RELEASE),
    "post_bind4": (P.CGROUP_SOCK, A.CGROUP_INET4_POST_BIND),
    "post_bind6": (P.CGROUP_SOCK, A.CGROUP_INET6_POST_BIND),
    "bind4": (P.CGROUP_SOCK_ADDR, A.CGROUP_INET4_BIND),
    "bind6": (P.CGROUP_SOCK_ADDR, A.CGROUP_INET6_BIND),
    "connect4": (P.CGROUP_SOCK_ADDR, A.CGROUP_INET4_CONNECT),
    "connect6": (P.CGROUP_SOCK_ADDR, A.CGROUP_INET6_CONNECT),
    "connect_unix": (P.CGROUP_SOCK_ADDR, A.CGROUP_UNIX_CONNECT),
    "sendmsg4": (P.CGROUP_SOCK_ADDR, A.CGROUP_UDP4_SENDMSG),
    "sendmsg6": (P.CGROUP_SOCK_ADDR, A.CGROUP_UDP6_SENDMSG),
    "sendmsg_unix": (P.CGROUP_SOCK_ADDR, A.CGROUP_UNIX_SENDMSG),
    "recvmsg4": (P.CGROUP_SOCK_ADDR, A.CGROUP_UDP4_RECVMSG),
    "recvmsg6": (P.CGROUP_SOCK_ADDR, A.CGROUP_UDP6_RECVMSG),
    "recvmsg_unix": (P.CGROUP_SOCK_ADDR, A.CGROUP_UNIX_RECVMSG),
    "getpeername4": (P.CGROUP_SOCK_ADDR, A.CGROUP_INET4_GETPEERNAME),
    "getpeername6": (P.CGROUP_SOCK_ADDR, A.CGROUP_INET6_GETPEERNAME),
    "getpeername_unix": (P.CGROUP_SOCK_ADDR, A.CGROUP_UNIX_GETPEERNAME),
    "getsockname4": (P.CGROUP_SOCK_ADDR, A.CGROUP_INET4_GETSOCKNAME),
    "getsockname6": (P.CGROUP_SOCK_ADDR, A.CGROUP_INET6_GETSOCKNAME),
    "getsockname_unix": (P.CGROUP_SOCK_ADDR, A.CGROUP_UNIX_GETSOCKNAME),
    "sysctl": (P.CGROUP_SYSCTL, A.CGROUP_SYSCTL),
    "getsockopt": (P.CGROUP_SOCKOPT, A.CGROUP_GETSOCKOPT),
    "setsockopt": (P.CGROUP_SOCKOPT, A.CGROUP_SETSOCKOPT),
    "device": (P.CGROUP_DEVICE, A.CGROUP_DEVICE),
    "sock_ops": (P.SOCK_OPS, A.CGROUP_SOCK_OPS),
}


def cgroup_section(attach: str) -> str:
    """The libbpf section name of a program for a cgroup attach point."""
    if attach in ("ingress", "egress"):
        return f"cgroup_skb/{attach}"
    return {"sock_ops": "sockops", "device": "cgroup/dev"}.get(attach, f"cgroup/{attach}")


@dataclass(frozen=True, slots=True)
class TargetMismatch:
    """Why a program cannot go on a target, and what would fit."""

    reason: str
    hint: str


def _kind(prog: ProgramSpec) -> str:
    at = f", attach type {prog.attach_type.name.lower()}" if prog.attach_type is not None else ""
    return f"program {prog.name} is {prog.type.name.lower()}{at} (section {prog.section})"


def target_mismatch(prog: ProgramSpec, target: Target) -> TargetMismatch | None:
    """None if ``prog`` can be attached to ``target``, else why not."""
    t, at = prog.type, prog.attach_type
    if isinstance(target, XdpTarget):
        if t == P.XDP and at in (None, A.XDP):
            return None
        return TargetMismatch(f"{_kind(prog)}, not an xdp program", 'xdp needs SEC("xdp")')
    if isinstance(target, TcTarget):
        want = A.TCX_INGRESS if target.direction == Direction.INGRESS else A.TCX_EGRESS
        if t == P.SCHED_CLS and at in (None, want):
            return None
        if t == P.SCHED_CLS and at in (A.TCX_INGRESS, A.TCX_EGRESS):
            return TargetMismatch(
                f"{_kind(prog)}, which does not fit direction {target.direction.value}",
                "change the direction or the section",
            )
        return TargetMismatch(
            f"{_kind(prog)}, not a tc program", 'tc needs SEC("tc") or SEC("tcx/...")'
        )
    if isinstance(target, CgroupTarget):
        ptype, atype = CGROUP_HOOKS[target.attach]
        if t == ptype and at in (None, atype):
            return None
        return TargetMismatch(
            f"{_kind(prog)}, cgroup {target.attach} needs {ptype.name.lower()} with attach "
            f"type {atype.name.lower()}",
            f'use SEC("{cgroup_section(target.attach)}")',
        )
    if isinstance(target, TracepointTarget):
        if t == P.TRACEPOINT:
            return None
        return TargetMismatch(
            f"{_kind(prog)}, not a tracepoint program", 'use SEC("tracepoint/...")'
        )
    if isinstance(target, RawTracepointTarget):
        if t in (P.RAW_TRACEPOINT, P.RAW_TRACEPOINT_WRITABLE):
            return None
        if t == P.TRACING and at == A.TRACE_RAW_TP:
            # tp_btf: the tracepoint is fixed at load time (attach_btf_id) by the section
            if prog.attach_to and prog.attach_to != target.name:
                return TargetMismatch(
                    f"{_kind(prog)} is bound to tracepoint {prog.attach_to} when loaded",
                    f"use name: {prog.attach_to}, or change the section",
                )
            return None
        return TargetMismatch(
            f"{_kind(prog)}, not a raw tracepoint program", 'use SEC("raw_tp/...") or "tp_btf/..."'
        )
    if isinstance(target, UprobeTarget):
        if (
            t == P.KPROBE
            and at is None
            and prog.section.lstrip("?").startswith(("uprobe", "uretprobe", "kprobe", "kretprobe"))
        ):
            ret = prog.section.lstrip("?").startswith(("uretprobe", "kretprobe"))
            if ret != target.retprobe:
                flag = "true" if ret else "false"
                return TargetMismatch(
                    f"{_kind(prog)}, but retprobe is {str(target.retprobe).lower()}",
                    f"set retprobe: {flag}, or change the section",
                )
            return None
        return TargetMismatch(
            f"{_kind(prog)}, not a uprobe program", 'use SEC("uprobe") or "uretprobe"'
        )
    if isinstance(target, NetnsTarget):
        if t in (P.SK_LOOKUP, P.FLOW_DISSECTOR):
            return None
        return TargetMismatch(
            f"{_kind(prog)}, a netns attachment needs sk_lookup or flow_dissector",
            'use SEC("sk_lookup") or SEC("flow_dissector")',
        )
    raise AssertionError(f"unknown target {target!r}")  # pragma: no cover
