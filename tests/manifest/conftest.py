"""Fixtures for the manifest tests: small eBPF objects (compiled once per session with
clang, no kernel needed) and a helper that writes manifests into a temporary directory."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import BPF_DIR

HEADER = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "GPL";
"""

# One object with a program for every kind of target, maps and constants of several types.
NET = (
    HEADER
    + """
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __type(key, __u32);
    __type(value, __u64);
    __uint(max_entries, 4);
} counters SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __type(key, __u16);
    __type(value, __u8);
    __uint(max_entries, 1024);
} blocked SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 4096);
} events SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __type(key, __u32);
    __type(value, __u64);
    __uint(max_entries, 1);
} unused SEC(".maps");

const volatile __u32 verdict = XDP_PASS;
const volatile __u64 version = 0;
const volatile __u8 small = 1;
const volatile char greeting[8] = "hi";
__u64 runs = 0;

static __always_inline void bump(__u32 k)
{
    __u64 *v = bpf_map_lookup_elem(&counters, &k);
    if (v)
        __sync_fetch_and_add(v, 1);
}

SEC("xdp")
int xdp_count(struct xdp_md *ctx)
{
    bump(0);
    runs++;
    if (version == 7)
        bump(small);
    return verdict + greeting[0] - 'h';
}

SEC("xdp")
int xdp_other(struct xdp_md *ctx)
{
    return XDP_PASS;
}

SEC("tc")
int tc_ingress(struct __sk_buff *skb)
{
    __u16 port = 53;
    if (bpf_map_lookup_elem(&blocked, &port))
        return 2;
    bump(1);
    return 0;
}

SEC("tc")
int tc_second(struct __sk_buff *skb)
{
    return 0;
}

SEC("tcx/ingress")
int tcx_in_only(struct __sk_buff *skb)
{
    return 0;
}

SEC("tracepoint/syscalls/sys_enter_getppid")
int tp_getppid(void *ctx)
{
    bump(2);
    bpf_ringbuf_output(&events, &ctx, sizeof(ctx), 0);
    return 0;
}

SEC("cgroup_skb/egress")
int cg_egress(struct __sk_buff *skb)
{
    return 1;
}

SEC("cgroup/connect4")
int cg_connect4(struct bpf_sock_addr *ctx)
{
    return 1;
}

SEC("raw_tp/sched_switch")
int raw_sched(void *ctx)
{
    return 0;
}

SEC("uprobe")
int probe(void *ctx)
{
    return 0;
}

SEC("uretprobe")
int ret_probe(void *ctx)
{
    return 0;
}

SEC("?xdp")
int xdp_manual(struct xdp_md *ctx)
{
    return XDP_PASS;
}

SEC("tp_btf/sched_switch")
int btf_sched(void *ctx)
{
    return 0;
}

SEC("sk_lookup")
int lookup(struct bpf_sk_lookup *ctx)
{
    return SK_PASS;
}
"""
)

SHARED_MAP = """
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __type(key, __u32);
    __type(value, __u64);
    __uint(max_entries, 4);
} shared_stats SEC(".maps");
"""

OWNER = (
    HEADER
    + SHARED_MAP
    + """
SEC("tracepoint/syscalls/sys_enter_getpid")
int count_getpid(void *ctx)
{
    __u32 k = 0;
    __u64 *v = bpf_map_lookup_elem(&shared_stats, &k);
    if (v)
        __sync_fetch_and_add(v, 1);
    return 0;
}
"""
)

USER = (
    HEADER
    + SHARED_MAP
    + """
SEC("tracepoint/syscalls/sys_enter_gettid")
int count_gettid(void *ctx)
{
    __u32 k = 1;
    __u64 *v = bpf_map_lookup_elem(&shared_stats, &k);
    if (v)
        __sync_fetch_and_add(v, 1);
    return 0;
}
"""
)

# Same map name, but a hash: substituting it for the owner's array must fail.
OTHER_KIND = USER.replace("BPF_MAP_TYPE_ARRAY", "BPF_MAP_TYPE_HASH")


@pytest.fixture(scope="session")
def objdir(compile_bpf: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with net.o, owner.o, user.o and hash_user.o (read-only: copy to change)."""
    out = tmp_path_factory.mktemp("objs")
    for name, source in (
        ("net.o", NET),
        ("owner.o", OWNER),
        ("user.o", USER),
        ("hash_user.o", OTHER_KIND),
    ):
        shutil.copyfile(compile_bpf(source), out / name)
    # asm_const refers to a symbol no section defines
    shutil.copyfile(BPF_DIR / "unresolved.o", out / "unresolved.o")
    return out


Write = Callable[[str, str], Path]


@pytest.fixture
def tree(tmp_path: Path, objdir: Path) -> Path:
    """A fresh directory with the objects in ``objs/`` and room for manifests."""
    shutil.copytree(objdir, tmp_path / "objs")
    return tmp_path


@pytest.fixture
def write(tree: Path) -> Write:
    """``write(relative_name, yaml_text) -> Path`` (text is dedented)."""

    def do(name: str, text: str) -> Path:
        path = tree / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    return do
