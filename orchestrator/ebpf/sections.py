"""Program section names → program type, expected attach type and load flags.

libbpf's conventions come first (``SEC("xdp")``, ``SEC("tracepoint/syscalls/sys_enter_x")``
…): a name ending in ``+`` below matches the bare prefix or the prefix followed by ``/`` and
an attach target; the others match exactly. A leading ``?`` turns autoload off. ``.s``
variants are sleepable and ``xdp.frags`` sets ``BPF_F_XDP_HAS_FRAGS``. For every name
libbpf accepts (1.1's names, and the ones later versions added: ``tcx/``, ``netkit/`` …),
libbpf's meaning holds.

Names libbpf rejects get cilium/ebpf 0.9.1's meaning, so objects written for it load:
its table is matched by plain prefix, in its order, so ``socket/NAME``, ``xdp/NAME``,
``classifier/NAME``, ``sk_lookup/NAME``, ``xdp_devmap/NAME`` or ``seccomp`` are programs
(a prefix ending in ``/`` gives the rest of the name as the attach target).
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.ebpf._sys import AttachType as A
from orchestrator.ebpf._sys import ProgFlags
from orchestrator.ebpf._sys import ProgType as P


@dataclass(frozen=True, slots=True)
class SectionDef:
    pattern: str
    type: P
    attach_type: A | None
    flags: ProgFlags = ProgFlags.NONE

    @property
    def prefix(self) -> bool:
        return self.pattern.endswith("+")

    @property
    def base(self) -> str:
        return self.pattern.rstrip("+")


@dataclass(frozen=True, slots=True)
class SectionInfo:
    """What a section name says about the programs in it."""

    type: P
    attach_type: A | None
    flags: ProgFlags
    attach_to: str  # the part after ``prefix/`` (tracepoint name, function …), or ""
    autoload: bool
    known: bool


_S = ProgFlags.SLEEPABLE
_F = ProgFlags.XDP_HAS_FRAGS

_DEFS: tuple[SectionDef, ...] = (
    SectionDef("socket", P.SOCKET_FILTER, None),
    SectionDef("sk_reuseport/migrate", P.SK_REUSEPORT, A.SK_REUSEPORT_SELECT_OR_MIGRATE),
    SectionDef("sk_reuseport", P.SK_REUSEPORT, A.SK_REUSEPORT_SELECT),
    SectionDef("kprobe+", P.KPROBE, None),
    SectionDef("uprobe+", P.KPROBE, None),
    SectionDef("uprobe.s+", P.KPROBE, None, _S),
    SectionDef("kretprobe+", P.KPROBE, None),
    SectionDef("uretprobe+", P.KPROBE, None),
    SectionDef("uretprobe.s+", P.KPROBE, None, _S),
    SectionDef("kprobe.multi+", P.KPROBE, A.TRACE_KPROBE_MULTI),
    SectionDef("kretprobe.multi+", P.KPROBE, A.TRACE_KPROBE_MULTI),
    SectionDef("kprobe.session+", P.KPROBE, A.TRACE_KPROBE_SESSION),
    SectionDef("uprobe.multi+", P.KPROBE, A.TRACE_UPROBE_MULTI),
    SectionDef("uretprobe.multi+", P.KPROBE, A.TRACE_UPROBE_MULTI),
    SectionDef("uprobe.multi.s+", P.KPROBE, A.TRACE_UPROBE_MULTI, _S),
    SectionDef("uretprobe.multi.s+", P.KPROBE, A.TRACE_UPROBE_MULTI, _S),
    SectionDef("ksyscall+", P.KPROBE, None),
    SectionDef("kretsyscall+", P.KPROBE, None),
    SectionDef("usdt+", P.KPROBE, None),
    SectionDef("usdt.s+", P.KPROBE, None, _S),
    SectionDef("tc/ingress", P.SCHED_CLS, A.TCX_INGRESS),
    SectionDef("tc/egress", P.SCHED_CLS, A.TCX_EGRESS),
    SectionDef("tcx/ingress", P.SCHED_CLS, A.TCX_INGRESS),
    SectionDef("tcx/egress", P.SCHED_CLS, A.TCX_EGRESS),
    SectionDef("tc", P.SCHED_CLS, None),
    SectionDef("classifier", P.SCHED_CLS, None),
    SectionDef("action", P.SCHED_ACT, None),
    SectionDef("netkit/primary", P.SCHED_CLS, A.NETKIT_PRIMARY),
    SectionDef("netkit/peer", P.SCHED_CLS, A.NETKIT_PEER),
    SectionDef("tracepoint+", P.TRACEPOINT, None),
    SectionDef("tp+", P.TRACEPOINT, None),
    SectionDef("raw_tracepoint+", P.RAW_TRACEPOINT, None),
    SectionDef("raw_tp+", P.RAW_TRACEPOINT, None),
    SectionDef("raw_tracepoint.w+", P.RAW_TRACEPOINT_WRITABLE, None),
    SectionDef("raw_tp.w+", P.RAW_TRACEPOINT_WRITABLE, None),
    SectionDef("tp_btf+", P.TRACING, A.TRACE_RAW_TP),
    SectionDef("fentry+", P.TRACING, A.TRACE_FENTRY),
    SectionDef("fmod_ret+", P.TRACING, A.MODIFY_RETURN),
    SectionDef("fexit+", P.TRACING, A.TRACE_FEXIT),
    SectionDef("fentry.s+", P.TRACING, A.TRACE_FENTRY, _S),
    SectionDef("fmod_ret.s+", P.TRACING, A.MODIFY_RETURN, _S),
    SectionDef("fexit.s+", P.TRACING, A.TRACE_FEXIT, _S),
    SectionDef("freplace+", P.EXT, None),
    SectionDef("lsm+", P.LSM, A.LSM_MAC),
    SectionDef("lsm.s+", P.LSM, A.LSM_MAC, _S),
    SectionDef("lsm_cgroup+", P.LSM, A.LSM_CGROUP),
    SectionDef("iter+", P.TRACING, A.TRACE_ITER),
    SectionDef("iter.s+", P.TRACING, A.TRACE_ITER, _S),
    SectionDef("syscall", P.SYSCALL, None, _S),
    SectionDef("xdp.frags/devmap", P.XDP, A.XDP_DEVMAP, _F),
    SectionDef("xdp/devmap", P.XDP, A.XDP_DEVMAP),
    SectionDef("xdp.frags/cpumap", P.XDP, A.XDP_CPUMAP, _F),
    SectionDef("xdp/cpumap", P.XDP, A.XDP_CPUMAP),
    SectionDef("xdp.frags", P.XDP, A.XDP, _F),
    SectionDef("xdp", P.XDP, A.XDP),
    SectionDef("perf_event", P.PERF_EVENT, None),
    SectionDef("lwt_in", P.LWT_IN, None),
    SectionDef("lwt_out", P.LWT_OUT, None),
    SectionDef("lwt_xmit", P.LWT_XMIT, None),
    SectionDef("lwt_seg6local", P.LWT_SEG6LOCAL, None),
    SectionDef("sockops", P.SOCK_OPS, A.CGROUP_SOCK_OPS),
    SectionDef("sk_skb/stream_parser", P.SK_SKB, A.SK_SKB_STREAM_PARSER),
    SectionDef("sk_skb/stream_verdict", P.SK_SKB, A.SK_SKB_STREAM_VERDICT),
    SectionDef("sk_skb/verdict", P.SK_SKB, A.SK_SKB_VERDICT),
    SectionDef("sk_skb", P.SK_SKB, None),
    SectionDef("sk_msg", P.SK_MSG, A.SK_MSG_VERDICT),
    SectionDef("lirc_mode2", P.LIRC_MODE2, A.LIRC_MODE2),
    SectionDef("flow_dissector", P.FLOW_DISSECTOR, A.FLOW_DISSECTOR),
    SectionDef("cgroup_skb/ingress", P.CGROUP_SKB, A.CGROUP_INET_INGRESS),
    SectionDef("cgroup_skb/egress", P.CGROUP_SKB, A.CGROUP_INET_EGRESS),
    SectionDef("cgroup/skb", P.CGROUP_SKB, None),
    SectionDef("cgroup/sock_create", P.CGROUP_SOCK, A.CGROUP_INET_SOCK_CREATE),
    SectionDef("cgroup/sock_release", P.CGROUP_SOCK, A.CGROUP_INET_SOCK_RELEASE),
    SectionDef("cgroup/sock", P.CGROUP_SOCK, A.CGROUP_INET_SOCK_CREATE),
    SectionDef("cgroup/post_bind4", P.CGROUP_SOCK, A.CGROUP_INET4_POST_BIND),
    SectionDef("cgroup/post_bind6", P.CGROUP_SOCK, A.CGROUP_INET6_POST_BIND),
    SectionDef("cgroup/bind4", P.CGROUP_SOCK_ADDR, A.CGROUP_INET4_BIND),
    SectionDef("cgroup/bind6", P.CGROUP_SOCK_ADDR, A.CGROUP_INET6_BIND),
    SectionDef("cgroup/connect4", P.CGROUP_SOCK_ADDR, A.CGROUP_INET4_CONNECT),
    SectionDef("cgroup/connect6", P.CGROUP_SOCK_ADDR, A.CGROUP_INET6_CONNECT),
    SectionDef("cgroup/connect_unix", P.CGROUP_SOCK_ADDR, A.CGROUP_UNIX_CONNECT),
    SectionDef("cgroup/sendmsg4", P.CGROUP_SOCK_ADDR, A.CGROUP_UDP4_SENDMSG),
    SectionDef("cgroup/sendmsg6", P.CGROUP_SOCK_ADDR, A.CGROUP_UDP6_SENDMSG),
    SectionDef("cgroup/sendmsg_unix", P.CGROUP_SOCK_ADDR, A.CGROUP_UNIX_SENDMSG),
    SectionDef("cgroup/recvmsg4", P.CGROUP_SOCK_ADDR, A.CGROUP_UDP4_RECVMSG),
    SectionDef("cgroup/recvmsg6", P.CGROUP_SOCK_ADDR, A.CGROUP_UDP6_RECVMSG),
    SectionDef("cgroup/recvmsg_unix", P.CGROUP_SOCK_ADDR, A.CGROUP_UNIX_RECVMSG),
    SectionDef("cgroup/getpeername4", P.CGROUP_SOCK_ADDR, A.CGROUP_INET4_GETPEERNAME),
    SectionDef("cgroup/getpeername6", P.CGROUP_SOCK_ADDR, A.CGROUP_INET6_GETPEERNAME),
    SectionDef("cgroup/getpeername_unix", P.CGROUP_SOCK_ADDR, A.CGROUP_UNIX_GETPEERNAME),
    SectionDef("cgroup/getsockname4", P.CGROUP_SOCK_ADDR, A.CGROUP_INET4_GETSOCKNAME),
    SectionDef("cgroup/getsockname6", P.CGROUP_SOCK_ADDR, A.CGROUP_INET6_GETSOCKNAME),
    SectionDef("cgroup/getsockname_unix", P.CGROUP_SOCK_ADDR, A.CGROUP_UNIX_GETSOCKNAME),
    SectionDef("cgroup/sysctl", P.CGROUP_SYSCTL, A.CGROUP_SYSCTL),
    SectionDef("cgroup/getsockopt", P.CGROUP_SOCKOPT, A.CGROUP_GETSOCKOPT),
    SectionDef("cgroup/setsockopt", P.CGROUP_SOCKOPT, A.CGROUP_SETSOCKOPT),
    SectionDef("cgroup/dev", P.CGROUP_DEVICE, A.CGROUP_DEVICE),
    SectionDef("struct_ops+", P.STRUCT_OPS, None),
    SectionDef("struct_ops.s+", P.STRUCT_OPS, None, _S),
    SectionDef("sk_lookup", P.SK_LOOKUP, A.SK_LOOKUP),
    SectionDef("netfilter", P.NETFILTER, A.NETFILTER),
)

_EXACT = {d.pattern: d for d in _DEFS if not d.prefix}
_PREFIX = sorted((d for d in _DEFS if d.prefix), key=lambda d: -len(d.base))
# The prefix definitions by base. A name matches the definitions whose base is the name
# or a part of it that ends before a "/"; _PREFIX's order (longest base first) makes the
# longest such part win: classify looks those parts up, longest first.
_PREFIX_BY_BASE: dict[str, SectionDef] = {}
for _d in _PREFIX:
    _PREFIX_BY_BASE.setdefault(_d.base, _d)

# cilium/ebpf 0.9.1's section table (elf_reader.go, getProgType), for names libbpf rejects:
# the first entry the name starts with wins.
_CILIUM: tuple[tuple[str, P, A | None, ProgFlags], ...] = (
    ("socket", P.SOCKET_FILTER, None, ProgFlags.NONE),
    ("sk_reuseport/migrate", P.SK_REUSEPORT, A.SK_REUSEPORT_SELECT_OR_MIGRATE, ProgFlags.NONE),
    ("sk_reuseport", P.SK_REUSEPORT, A.SK_REUSEPORT_SELECT, ProgFlags.NONE),
    ("kprobe/", P.KPROBE, None, ProgFlags.NONE),
    ("uprobe/", P.KPROBE, None, ProgFlags.NONE),
    ("kretprobe/", P.KPROBE, None, ProgFlags.NONE),
    ("uretprobe/", P.KPROBE, None, ProgFlags.NONE),
    ("tc", P.SCHED_CLS, None, ProgFlags.NONE),
    ("classifier", P.SCHED_CLS, None, ProgFlags.NONE),
    ("action", P.SCHED_ACT, None, ProgFlags.NONE),
    ("tracepoint/", P.TRACEPOINT, None, ProgFlags.NONE),
    ("tp/", P.TRACEPOINT, None, ProgFlags.NONE),
    ("raw_tracepoint/", P.RAW_TRACEPOINT, None, ProgFlags.NONE),
    ("raw_tp/", P.RAW_TRACEPOINT, None, ProgFlags.NONE),
    ("raw_tracepoint.w/", P.RAW_TRACEPOINT_WRITABLE, None, ProgFlags.NONE),
    ("raw_tp.w/", P.RAW_TRACEPOINT_WRITABLE, None, ProgFlags.NONE),
    ("tp_btf/", P.TRACING, A.TRACE_RAW_TP, ProgFlags.NONE),
    ("fentry/", P.TRACING, A.TRACE_FENTRY, ProgFlags.NONE),
    ("fmod_ret/", P.TRACING, A.MODIFY_RETURN, ProgFlags.NONE),
    ("fexit/", P.TRACING, A.TRACE_FEXIT, ProgFlags.NONE),
    ("fentry.s/", P.TRACING, A.TRACE_FENTRY, _S),
    ("fmod_ret.s/", P.TRACING, A.MODIFY_RETURN, _S),
    ("fexit.s/", P.TRACING, A.TRACE_FEXIT, _S),
    ("freplace/", P.EXT, None, ProgFlags.NONE),
    ("lsm/", P.LSM, A.LSM_MAC, ProgFlags.NONE),
    ("lsm.s/", P.LSM, A.LSM_MAC, _S),
    ("iter/", P.TRACING, A.TRACE_ITER, ProgFlags.NONE),
    ("syscall", P.SYSCALL, None, ProgFlags.NONE),
    ("xdp_devmap/", P.XDP, A.XDP_DEVMAP, ProgFlags.NONE),
    ("xdp_cpumap/", P.XDP, A.XDP_CPUMAP, ProgFlags.NONE),
    ("xdp", P.XDP, None, ProgFlags.NONE),
    ("perf_event", P.PERF_EVENT, None, ProgFlags.NONE),
    ("lwt_in", P.LWT_IN, None, ProgFlags.NONE),
    ("lwt_out", P.LWT_OUT, None, ProgFlags.NONE),
    ("lwt_xmit", P.LWT_XMIT, None, ProgFlags.NONE),
    ("lwt_seg6local", P.LWT_SEG6LOCAL, None, ProgFlags.NONE),
    ("cgroup_skb/ingress", P.CGROUP_SKB, A.CGROUP_INET_INGRESS, ProgFlags.NONE),
    ("cgroup_skb/egress", P.CGROUP_SKB, A.CGROUP_INET_EGRESS, ProgFlags.NONE),
    ("cgroup/skb", P.CGROUP_SKB, None, ProgFlags.NONE),
    ("cgroup/sock_create", P.CGROUP_SOCK, A.CGROUP_INET_SOCK_CREATE, ProgFlags.NONE),
    ("cgroup/sock_release", P.CGROUP_SOCK, A.CGROUP_INET_SOCK_RELEASE, ProgFlags.NONE),
    ("cgroup/sock", P.CGROUP_SOCK, A.CGROUP_INET_SOCK_CREATE, ProgFlags.NONE),
    ("cgroup/post_bind4", P.CGROUP_SOCK, A.CGROUP_INET4_POST_BIND, ProgFlags.NONE),
    ("cgroup/post_bind6", P.CGROUP_SOCK, A.CGROUP_INET6_POST_BIND, ProgFlags.NONE),
    ("cgroup/dev", P.CGROUP_DEVICE, A.CGROUP_DEVICE, ProgFlags.NONE),
    ("sockops", P.SOCK_OPS, A.CGROUP_SOCK_OPS, ProgFlags.NONE),
    ("sk_skb/stream_parser", P.SK_SKB, A.SK_SKB_STREAM_PARSER, ProgFlags.NONE),
    ("sk_skb/stream_verdict", P.SK_SKB, A.SK_SKB_STREAM_VERDICT, ProgFlags.NONE),
    ("sk_skb", P.SK_SKB, None, ProgFlags.NONE),
    ("sk_msg", P.SK_MSG, A.SK_MSG_VERDICT, ProgFlags.NONE),
    ("lirc_mode2", P.LIRC_MODE2, A.LIRC_MODE2, ProgFlags.NONE),
    ("flow_dissector", P.FLOW_DISSECTOR, A.FLOW_DISSECTOR, ProgFlags.NONE),
    ("cgroup/bind4", P.CGROUP_SOCK_ADDR, A.CGROUP_INET4_BIND, ProgFlags.NONE),
    ("cgroup/bind6", P.CGROUP_SOCK_ADDR, A.CGROUP_INET6_BIND, ProgFlags.NONE),
    ("cgroup/connect4", P.CGROUP_SOCK_ADDR, A.CGROUP_INET4_CONNECT, ProgFlags.NONE),
    ("cgroup/connect6", P.CGROUP_SOCK_ADDR, A.CGROUP_INET6_CONNECT, ProgFlags.NONE),
    ("cgroup/sendmsg4", P.CGROUP_SOCK_ADDR, A.CGROUP_UDP4_SENDMSG, ProgFlags.NONE),
    ("cgroup/sendmsg6", P.CGROUP_SOCK_ADDR, A.CGROUP_UDP6_SENDMSG, ProgFlags.NONE),
    ("cgroup/recvmsg4", P.CGROUP_SOCK_ADDR, A.CGROUP_UDP4_RECVMSG, ProgFlags.NONE),
    ("cgroup/recvmsg6", P.CGROUP_SOCK_ADDR, A.CGROUP_UDP6_RECVMSG, ProgFlags.NONE),
    ("cgroup/getpeername4", P.CGROUP_SOCK_ADDR, A.CGROUP_INET4_GETPEERNAME, ProgFlags.NONE),
    ("cgroup/getpeername6", P.CGROUP_SOCK_ADDR, A.CGROUP_INET6_GETPEERNAME, ProgFlags.NONE),
    ("cgroup/getsockname4", P.CGROUP_SOCK_ADDR, A.CGROUP_INET4_GETSOCKNAME, ProgFlags.NONE),
    ("cgroup/getsockname6", P.CGROUP_SOCK_ADDR, A.CGROUP_INET6_GETSOCKNAME, ProgFlags.NONE),
    ("cgroup/sysctl", P.CGROUP_SYSCTL, A.CGROUP_SYSCTL, ProgFlags.NONE),
    ("cgroup/getsockopt", P.CGROUP_SOCKOPT, A.CGROUP_GETSOCKOPT, ProgFlags.NONE),
    ("cgroup/setsockopt", P.CGROUP_SOCKOPT, A.CGROUP_SETSOCKOPT, ProgFlags.NONE),
    ("sk_lookup/", P.SK_LOOKUP, A.SK_LOOKUP, ProgFlags.NONE),
    ("seccomp", P.SOCKET_FILTER, None, ProgFlags.NONE),
)


# _CILIUM's entries by their first character, each list in the table's order: a name can
# only start with the entries of its own first character (no prefix is empty)
_CILIUM_BY_FIRST: dict[str, list[tuple[str, P, A | None, ProgFlags]]] = {}
for _entry in _CILIUM:
    _CILIUM_BY_FIRST.setdefault(_entry[0][:1], []).append(_entry)


def classify(section: str) -> SectionInfo:
    """Program type, attach type and flags for a section name (``known`` is False if none):
    libbpf's meaning, else cilium/ebpf's (see the module docstring)."""
    autoload = True
    name = section
    if name.startswith("?"):
        autoload = False
        name = name[1:]
    exact = _EXACT.get(name)
    if exact is not None:
        return SectionInfo(exact.type, exact.attach_type, exact.flags, "", autoload, True)
    d = _PREFIX_BY_BASE.get(name)
    if d is not None:
        return SectionInfo(d.type, d.attach_type, d.flags, "", autoload, True)
    cut = name.rfind("/")
    while cut >= 0:  # the base is the part before this "/"; the rest is the target
        d = _PREFIX_BY_BASE.get(name[:cut])
        if d is not None:
            return SectionInfo(d.type, d.attach_type, d.flags, name[cut + 1 :], autoload, True)
        cut = name.rfind("/", 0, cut)
    for prefix, ptype, attach, flags in _CILIUM_BY_FIRST.get(name[:1], ()):
        if name.startswith(prefix):
            target = name[len(prefix) :] if prefix.endswith("/") else ""
            return SectionInfo(ptype, attach, flags, target, autoload, True)
    return SectionInfo(P.UNSPEC, None, ProgFlags.NONE, "", autoload, False)
