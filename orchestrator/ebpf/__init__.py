"""The loader core: eBPF ELF objects → specs → live maps, programs and links.

Pure Python: our own ELF and BTF code (pyelftools only to find uprobe symbols in
binaries), ctypes for the bpf() syscall.

```python
from orchestrator import ebpf

spec = ebpf.CollectionSpec.from_file("x.bpf.o")      # pure: no kernel needed
spec.rewrite_constants({"magic": 0x1235})
with ebpf.Collection(spec, ebpf.CollectionOptions(pin_path="/sys/fs/bpf/x")) as coll:
    coll.programs["xdp_main"].test_run(data=bytes(64))
```
"""

from __future__ import annotations

from orchestrator.ebpf import inspect
from orchestrator.ebpf._sys import (
    AttachType,
    LinkType,
    MapFlags,
    MapType,
    ProgFlags,
    ProgType,
    UpdateFlags,
)
from orchestrator.ebpf.asm import Instruction, Instructions, Reference, RefKind
from orchestrator.ebpf.binding import Binding, bind, close_all
from orchestrator.ebpf.btf.kernel import KernelBTF
from orchestrator.ebpf.btf.kernel import load as load_kernel_btf
from orchestrator.ebpf.collection import (
    Collection,
    CollectionOptions,
    load_collection,
)
from orchestrator.ebpf.errors import (
    AttachConflictError,
    AttachError,
    AttachTargetError,
    BindError,
    BTFError,
    ConstantError,
    COREError,
    CORERelocationError,
    Error,
    KconfigError,
    KeyExistsError,
    KeyNotFoundError,
    LiteralError,
    MapIncompatibleError,
    MountNotFoundError,
    NetnsError,
    NetnsFileError,
    NetnsNotFoundError,
    NotFoundError,
    NotSupportedError,
    ParseError,
    PermissionDeniedError,
    PinError,
    SpecError,
    SyscallError,
    TargetNotFoundError,
    UnresolvedReferenceError,
    VerifierError,
)
from orchestrator.ebpf.externs import ExternKind, ExternSpec
from orchestrator.ebpf.link import (
    Link,
    LinkInfo,
    attach_cgroup,
    attach_netns,
    attach_raw_tracepoint,
    attach_tcx,
    attach_tracepoint,
    attach_uprobe,
    attach_xdp,
    cgroup_attached,
    iter_links,
    tcx_attached,
    xdp_attached,
)
from orchestrator.ebpf.link.struct_ops import StructOpsLink, StructOpsSpec, attach_struct_ops
from orchestrator.ebpf.map_codec import MapCodec
from orchestrator.ebpf.maps import Map, MapInfo
from orchestrator.ebpf.mounts import bpffs_root, cgroup2_root, tracefs_root
from orchestrator.ebpf.perf import PerfReader, PerfRecord
from orchestrator.ebpf.programs import (
    Program,
    ProgramInfo,
    RunResult,
    RunStats,
    StatsEnabled,
    enable_stats,
    stats_enabled,
)
from orchestrator.ebpf.ringbuf import RingBufReader
from orchestrator.ebpf.spec import (
    CollectionSpec,
    MapEntry,
    MapSpec,
    PinType,
    ProgramSpec,
    Unresolved,
    VariableSpec,
)
from orchestrator.ebpf.values import Hex, NetworkOrder, References
from orchestrator.ebpf.verification import ProgramReport, verify
from orchestrator.ebpf.verifier import Rejection, SourceLine

__all__ = [
    "AttachConflictError",
    "AttachError",
    "AttachTargetError",
    "AttachType",
    "BTFError",
    "BindError",
    "Binding",
    "COREError",
    "CORERelocationError",
    "Collection",
    "CollectionOptions",
    "CollectionSpec",
    "ConstantError",
    "Error",
    "ExternKind",
    "ExternSpec",
    "Hex",
    "Instruction",
    "Instructions",
    "KconfigError",
    "KernelBTF",
    "KeyExistsError",
    "KeyNotFoundError",
    "Link",
    "LinkInfo",
    "LinkType",
    "LiteralError",
    "Map",
    "MapCodec",
    "MapEntry",
    "MapFlags",
    "MapIncompatibleError",
    "MapInfo",
    "MapSpec",
    "MapType",
    "MountNotFoundError",
    "NetnsError",
    "NetnsFileError",
    "NetnsNotFoundError",
    "NetworkOrder",
    "NotFoundError",
    "NotSupportedError",
    "ParseError",
    "PerfReader",
    "PerfRecord",
    "PermissionDeniedError",
    "PinError",
    "PinType",
    "ProgFlags",
    "ProgType",
    "Program",
    "ProgramInfo",
    "ProgramReport",
    "ProgramSpec",
    "RefKind",
    "Reference",
    "References",
    "Rejection",
    "RingBufReader",
    "RunResult",
    "RunStats",
    "SourceLine",
    "SpecError",
    "StatsEnabled",
    "StructOpsLink",
    "StructOpsSpec",
    "SyscallError",
    "TargetNotFoundError",
    "Unresolved",
    "UnresolvedReferenceError",
    "UpdateFlags",
    "VariableSpec",
    "VerifierError",
    "attach_cgroup",
    "attach_netns",
    "attach_raw_tracepoint",
    "attach_struct_ops",
    "attach_tcx",
    "attach_tracepoint",
    "attach_uprobe",
    "attach_xdp",
    "bind",
    "bpffs_root",
    "cgroup2_root",
    "cgroup_attached",
    "close_all",
    "enable_stats",
    "inspect",
    "iter_links",
    "load_collection",
    "load_kernel_btf",
    "stats_enabled",
    "tcx_attached",
    "tracefs_root",
    "verify",
    "xdp_attached",
]
