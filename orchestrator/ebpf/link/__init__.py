"""Links: programs attached to the kernel's hooks, each owned through one BPF link fd.

Concepts follow the ``link`` package of cilium/ebpf. A :class:`Link` is what an ``attach_*``
function returns; closing its last fd (and having no pin) detaches the program. A link can be
pinned on bpffs so it outlives the process, re-adopted with :meth:`Link.from_pin` or
:meth:`Link.from_id`, switched to another program atomically with :meth:`Link.update` (the
hook is never empty), and detached explicitly with :meth:`Link.detach`.

Kernel requirements (the first kernel that has each):

============================  =====================================================  =====
attach function               mechanism                                              Linux
============================  =====================================================  =====
:func:`attach_xdp`            BPF_LINK_CREATE, attach type XDP                        5.9
:func:`attach_tcx`            BPF_LINK_CREATE, TCX_INGRESS/TCX_EGRESS                 6.6
:func:`attach_cgroup`         BPF_LINK_CREATE on a cgroup v2 directory fd             5.7
:func:`attach_netns`          BPF_LINK_CREATE on a netns fd (sk_lookup 5.9)           5.8
:func:`attach_tracepoint`     perf_event_open + BPF_LINK_CREATE (PERF_EVENT)          5.15
:func:`attach_uprobe`         uprobe PMU perf event + BPF_LINK_CREATE (PERF_EVENT)    5.15
:func:`attach_raw_tracepoint` BPF_RAW_TRACEPOINT_OPEN (raw_tp 4.17, tp_btf 5.5)       4.17
============================  =====================================================  =====

Link updates (BPF_LINK_UPDATE) exist for xdp, tcx, cgroup and netns links (and iterators);
perf_event and raw_tracepoint links cannot be updated: replace them make-before-break.

Links to an interface are made in the network namespace that owns the interface: pass
``netns=`` (a path such as ``/var/run/netns/NAME``) and the calling thread enters it for the
syscall only; the link stays attached to that interface after the thread went back.

Discovery for a reconciler: :func:`xdp_attached`, :func:`tcx_attached`,
:func:`cgroup_attached` report what is attached at a hook no matter who attached it (so a
plan can name a foreign owner), :func:`iter_links` lists every link in the kernel.

The package has one module per hook family (:mod:`.xdp`, :mod:`.tcx`, :mod:`.cgroup`,
:mod:`.netns`, :mod:`.tracing`, :mod:`.uprobe`, :mod:`.struct_ops`, and :mod:`.unsupported`
for the kinds this kernel refuses), :mod:`.base` for the :class:`Link` handle and
:mod:`.query` for discovery; this module re-exports their public names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator import _lazy

if TYPE_CHECKING:
    from orchestrator.ebpf._netlink import in_netns
    from orchestrator.ebpf.errors import AttachConflictError, AttachError, TargetNotFoundError
    from orchestrator.ebpf.link.base import (
        CgroupTarget,
        Direction,
        Link,
        LinkInfo,
        LinkTarget,
        NetnsPath,
        NetnsTarget,
        PerfEventTarget,
        RawTracepointTarget,
        TCXTarget,
        TracepointTarget,
        TracingTarget,
        UnknownTarget,
        UprobeTarget,
        XDPTarget,
    )
    from orchestrator.ebpf.link.cgroup import (
        CGROUP2_SUPER_MAGIC,
        attach_cgroup,
        cgroup_attach_type,
        cgroup_attached,
    )
    from orchestrator.ebpf.link.iface import ifindex
    from orchestrator.ebpf.link.netns import attach_netns
    from orchestrator.ebpf.link.query import AttachedProgram, HookState, iter_links
    from orchestrator.ebpf.link.struct_ops import StructOpsLink, attach_struct_ops
    from orchestrator.ebpf.link.tcx import Anchor, LinkID, ProgramID, attach_tcx, tcx_attached
    from orchestrator.ebpf.link.tracing import attach_raw_tracepoint, attach_tracepoint
    from orchestrator.ebpf.link.unsupported import attach_fentry, attach_kprobe, require_supported
    from orchestrator.ebpf.link.uprobe import attach_uprobe, resolve_symbol
    from orchestrator.ebpf.link.xdp import (
        XDPAttachment,
        XDPMode,
        attach_xdp,
        set_xdp_netlink,
        xdp_attached,
        xdp_mode,
    )

__all__ = [
    "CGROUP2_SUPER_MAGIC",
    "Anchor",
    "AttachConflictError",
    "AttachError",
    "AttachedProgram",
    "CgroupTarget",
    "Direction",
    "HookState",
    "Link",
    "LinkID",
    "LinkInfo",
    "LinkTarget",
    "NetnsPath",
    "NetnsTarget",
    "PerfEventTarget",
    "ProgramID",
    "RawTracepointTarget",
    "StructOpsLink",
    "TCXTarget",
    "TargetNotFoundError",
    "TracepointTarget",
    "TracingTarget",
    "UnknownTarget",
    "UprobeTarget",
    "XDPAttachment",
    "XDPMode",
    "XDPTarget",
    "attach_cgroup",
    "attach_fentry",
    "attach_kprobe",
    "attach_netns",
    "attach_raw_tracepoint",
    "attach_struct_ops",
    "attach_tcx",
    "attach_tracepoint",
    "attach_uprobe",
    "attach_xdp",
    "cgroup_attach_type",
    "cgroup_attached",
    "ifindex",
    "in_netns",
    "iter_links",
    "require_supported",
    "resolve_symbol",
    "set_xdp_netlink",
    "tcx_attached",
    "xdp_attached",
    "xdp_mode",
]

_EXPORTS = {
    "Anchor": "orchestrator.ebpf.link.tcx:Anchor",
    "AttachConflictError": "orchestrator.ebpf.errors:AttachConflictError",
    "AttachError": "orchestrator.ebpf.errors:AttachError",
    "AttachedProgram": "orchestrator.ebpf.link.query:AttachedProgram",
    "CGROUP2_SUPER_MAGIC": "orchestrator.ebpf.link.cgroup:CGROUP2_SUPER_MAGIC",
    "CgroupTarget": "orchestrator.ebpf.link.base:CgroupTarget",
    "Direction": "orchestrator.ebpf.link.base:Direction",
    "HookState": "orchestrator.ebpf.link.query:HookState",
    "Link": "orchestrator.ebpf.link.base:Link",
    "LinkID": "orchestrator.ebpf.link.tcx:LinkID",
    "LinkInfo": "orchestrator.ebpf.link.base:LinkInfo",
    "LinkTarget": "orchestrator.ebpf.link.base:LinkTarget",
    "NetnsPath": "orchestrator.ebpf.link.base:NetnsPath",
    "NetnsTarget": "orchestrator.ebpf.link.base:NetnsTarget",
    "PerfEventTarget": "orchestrator.ebpf.link.base:PerfEventTarget",
    "ProgramID": "orchestrator.ebpf.link.tcx:ProgramID",
    "RawTracepointTarget": "orchestrator.ebpf.link.base:RawTracepointTarget",
    "StructOpsLink": "orchestrator.ebpf.link.struct_ops:StructOpsLink",
    "TCXTarget": "orchestrator.ebpf.link.base:TCXTarget",
    "TargetNotFoundError": "orchestrator.ebpf.errors:TargetNotFoundError",
    "TracepointTarget": "orchestrator.ebpf.link.base:TracepointTarget",
    "TracingTarget": "orchestrator.ebpf.link.base:TracingTarget",
    "UnknownTarget": "orchestrator.ebpf.link.base:UnknownTarget",
    "UprobeTarget": "orchestrator.ebpf.link.base:UprobeTarget",
    "XDPAttachment": "orchestrator.ebpf.link.xdp:XDPAttachment",
    "XDPMode": "orchestrator.ebpf.link.xdp:XDPMode",
    "XDPTarget": "orchestrator.ebpf.link.base:XDPTarget",
    "attach_cgroup": "orchestrator.ebpf.link.cgroup:attach_cgroup",
    "attach_fentry": "orchestrator.ebpf.link.unsupported:attach_fentry",
    "attach_kprobe": "orchestrator.ebpf.link.unsupported:attach_kprobe",
    "attach_netns": "orchestrator.ebpf.link.netns:attach_netns",
    "attach_raw_tracepoint": "orchestrator.ebpf.link.tracing:attach_raw_tracepoint",
    "attach_struct_ops": "orchestrator.ebpf.link.struct_ops:attach_struct_ops",
    "attach_tcx": "orchestrator.ebpf.link.tcx:attach_tcx",
    "attach_tracepoint": "orchestrator.ebpf.link.tracing:attach_tracepoint",
    "attach_uprobe": "orchestrator.ebpf.link.uprobe:attach_uprobe",
    "attach_xdp": "orchestrator.ebpf.link.xdp:attach_xdp",
    "cgroup_attach_type": "orchestrator.ebpf.link.cgroup:cgroup_attach_type",
    "cgroup_attached": "orchestrator.ebpf.link.cgroup:cgroup_attached",
    "ifindex": "orchestrator.ebpf.link.iface:ifindex",
    "in_netns": "orchestrator.ebpf._netlink:in_netns",
    "iter_links": "orchestrator.ebpf.link.query:iter_links",
    "require_supported": "orchestrator.ebpf.link.unsupported:require_supported",
    "resolve_symbol": "orchestrator.ebpf.link.uprobe:resolve_symbol",
    "set_xdp_netlink": "orchestrator.ebpf.link.xdp:set_xdp_netlink",
    "tcx_attached": "orchestrator.ebpf.link.tcx:tcx_attached",
    "xdp_attached": "orchestrator.ebpf.link.xdp:xdp_attached",
    "xdp_mode": "orchestrator.ebpf.link.xdp:xdp_mode",
}

_lazy.install(__name__, _EXPORTS)
