"""Every field of every attach target, changed on its own: the plan shows the change, the
apply carries it out, the kernel confirms it and the next plan is a no-op.

A field that is part of the attachment's key (interface, netns, direction, cgroup path and
hook, tracepoint, uprobe place, pid …) gives a new attachment and removes the old one; the
others (xdp ``mode``/``take_over``, tc ``before``/``after``) change the one attachment, by
re-attaching where the kernel cannot change a live link. Everything runs on veth pairs in
namespaces the test creates and in cgroups it creates."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.ebpf import AttachType, Link, Map
from orchestrator.ebpf import link as links
from orchestrator.reconcile import Kind, Op, Reconciler
from orchestrator.reconcile.collection_status import CollectionStatus
from tests.conftest import require_tool
from tests.netns import Cgroup, NetNS, VethPair, create_cgroup
from tests.reconcile.conftest import Env, link_alive, pins_under

pytestmark = pytest.mark.kernel

PROGS = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __type(key, __u32);
    __type(value, __u64);
    __uint(max_entries, 2);
} hits SEC(".maps");
static __always_inline void hit(__u32 i)
{
    __u64 *v = bpf_map_lookup_elem(&hits, &i);
    if (v)
        __sync_fetch_and_add(v, 1);
}
SEC("xdp") int x_prog(struct xdp_md *ctx) { return XDP_PASS; }
SEC("tc") int tc_one(struct __sk_buff *skb) { return -1; }
SEC("tc") int tc_two(struct __sk_buff *skb) { return -1; }
SEC("cgroup/skb") int cg_prog(struct __sk_buff *skb) { return 1; }
SEC("tracepoint") int tp_prog(void *ctx) { return 0; }
SEC("raw_tp") int rtp_prog(void *ctx) { return 0; }
SEC("uprobe") int up_prog(void *ctx) { hit(0); return 0; }
SEC("uretprobe") int uret_prog(void *ctx) { hit(1); return 0; }
SEC("sk_lookup") int lookup_prog(struct bpf_sk_lookup *ctx) { return SK_PASS; }
char LICENSE[] SEC("license") = "GPL";
"""

TARGET_C = r"""
#include <stdio.h>
__attribute__((noinline)) int first_fn(int x) { __asm__ volatile("" ::: "memory"); return x + 1; }
__attribute__((noinline)) int second_fn(int x) { __asm__ volatile("" ::: "memory"); return x + 2; }
int main(void) { printf("%d\n", first_fn(1) + second_fn(2)); return 0; }
"""

DUMMY = "bpfsame0"  # an interface of this name in both namespaces (a veth pair)


@dataclass
class World:
    """What the targets point at: a veth pair (namespaces a, b), an interface named DUMMY
    in each namespace, two cgroups, two copies of a small ELF binary."""

    env: Env
    veth: VethPair
    cg1: Cgroup
    cg2: Cgroup
    bin1: Path
    bin2: Path
    obj: Path

    @property
    def ns_a(self) -> NetNS:
        return self.veth.a.ns

    @property
    def ns_b(self) -> NetNS:
        return self.veth.b.ns

    def fill(self, text: str) -> str:
        return (
            text.replace("@VB@", self.veth.b.name)
            .replace("@NSA@", str(self.ns_a.path))
            .replace("@NSB@", str(self.ns_b.path))
            .replace("@CG1@", str(self.cg1.path))
            .replace("@CG2@", str(self.cg2.path))
            .replace("@BIN1@", str(self.bin1))
            .replace("@BIN2@", str(self.bin2))
            .replace("@OFF1@", str(links.resolve_symbol(self.bin1, "first_fn")))
            .replace("@OFF2@", str(links.resolve_symbol(self.bin1, "second_fn")))
            .replace("@PID@", str(os.getpid()))
        )

    def manifest(self, attach: list[str]) -> None:
        lines = "".join(f"\n                - {{{self.fill(a)}}}" for a in attach)
        self.env.write(
            "fields",
            f"""
            apiVersion: bpforch.dev/v1
            kind: Collection
            metadata: {{name: fields}}
            spec:
              object: {self.obj}
              maps:
                hits: {{pin: true}}
              attach:{lines}
            """,
        )


@pytest.fixture(scope="module")
def target_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = require_tool("gcc")
    out = tmp_path_factory.mktemp("uprobe-fields") / "target"
    src = out.with_suffix(".c")
    src.write_text(TARGET_C)
    subprocess.run([gcc, "-O1", "-o", str(out), str(src)], check=True)
    return out


@pytest.fixture
def world(
    env: Env,
    veth: VethPair,
    cgroup: Cgroup,
    tmp_path: Path,
    target_binary: Path,
    compile_bpf: Callable[..., Path],
) -> Iterator[World]:
    # a second veth pair whose two ends have the same name, one in each namespace (this
    # kernel has no dummy interfaces: no modules); it goes with the namespaces
    subprocess.run(
        [
            "ip", "link", "add", DUMMY, "netns", veth.a.ns.name,
            "type", "veth", "peer", "name", DUMMY, "netns", veth.b.ns.name,
        ],
        check=True,
    )  # fmt: skip
    for ns in (veth.a.ns, veth.b.ns):
        ns.ip("link", "set", "dev", DUMMY, "up")
    cg2 = create_cgroup()
    bin1, bin2 = tmp_path / "bin1", tmp_path / "bin2"
    shutil.copy(target_binary, bin1)
    shutil.copy(target_binary, bin2)
    try:
        yield World(env, veth, cgroup, cg2, bin1, bin2, compile_bpf(PROGS))
    finally:
        env.reconciler().destroy()
        cg2.remove()


# ---------------------------------------------------------------------------- kernel checks


def link_info(st: CollectionStatus, program: str) -> links.LinkInfo:
    a = next(a for a in st.attachments if a.program == program)
    with Link.from_id(a.link_id) as link:
        return link.info()


def prog_id(st: CollectionStatus, program: str) -> int:
    return st.program(program).id


def xdp_on(w: World, iface: str, ns: NetNS) -> links.XDPAttachment | None:
    return links.xdp_attached(iface, ns.path)


def check_xdp(iface: str, ns: str, mode: str, *, other: tuple[str, str] | None = None) -> Check:
    def check(w: World, st: CollectionStatus) -> None:
        netns = w.ns_a if ns == "a" else w.ns_b
        name = w.fill(iface)
        got = xdp_on(w, name, netns)
        assert got is not None and got.prog_id == prog_id(st, "x_prog") and got.mode == mode
        if other is not None:  # where it was before: nothing there now
            other_ns = w.ns_a if other[1] == "a" else w.ns_b
            assert xdp_on(w, w.fill(other[0]), other_ns) is None

    return check


def check_tc(iface: str, ns: str, direction: str, order: tuple[str, ...]) -> Check:
    def check(w: World, st: CollectionStatus) -> None:
        netns = w.ns_a if ns == "a" else w.ns_b
        hook = links.tcx_attached(w.fill(iface), direction, netns.path)  # type: ignore[arg-type]
        assert hook.prog_ids == tuple(prog_id(st, p) for p in order)
        # no other hook of the test holds a program of ours
        for other_iface, other_ns in ((DUMMY, w.ns_a), (DUMMY, w.ns_b), (w.veth.b.name, w.ns_b)):
            for other_dir in ("ingress", "egress"):
                if (other_iface, other_ns, other_dir) == (w.fill(iface), netns, direction):
                    continue
                state = links.tcx_attached(other_iface, other_dir, other_ns.path)  # type: ignore[arg-type]
                assert state.programs == (), (other_iface, other_dir)

    return check


def check_cgroup(which: str, attach: str) -> Check:
    def check(w: World, st: CollectionStatus) -> None:
        for cg in (w.cg1, w.cg2):
            for hook in ("ingress", "egress"):
                state = links.cgroup_attached(cg.path, hook)
                mine = cg is (w.cg1 if which == "cg1" else w.cg2) and hook == attach
                want = (prog_id(st, "cg_prog"),) if mine else ()
                assert state.prog_ids == want, (cg.path, hook)

    return check


def check_tracepoint(name: str) -> Check:
    def check(w: World, st: CollectionStatus) -> None:
        assert link_info(st, "tp_prog").target == links.TracepointTarget(name)

    return check


def check_raw_tracepoint(name: str) -> Check:
    def check(w: World, st: CollectionStatus) -> None:
        assert link_info(st, "rtp_prog").target == links.RawTracepointTarget(name)

    return check


def check_uprobe(program: str, binary: str, fn: str, *, pid_filtered: bool = False) -> Check:
    def check(w: World, st: CollectionStatus) -> None:
        path = w.bin1 if binary == "bin1" else w.bin2
        offset = links.resolve_symbol(path, fn)
        retprobe = program == "uret_prog"
        assert link_info(st, program).target == links.UprobeTarget(str(path), offset, retprobe)
        # it fires for the binary's process, unless it is limited to this test's process
        slot = 1 if retprobe else 0
        with Map.from_pin(w.env.root / "fields" / "maps" / "hits") as hits:
            before = hits[slot]
            subprocess.run([str(path)], check=True, capture_output=True)
            after = hits[slot]
        assert isinstance(before, int) and isinstance(after, int)
        assert after == before + (0 if pid_filtered else 1)

    return check


def check_netns(ns: str) -> Check:
    def check(w: World, st: CollectionStatus) -> None:
        netns = w.ns_a if ns == "a" else w.ns_b
        target = link_info(st, "lookup_prog").target
        assert target == links.NetnsTarget(os.stat(netns.path).st_ino, AttachType.SK_LOOKUP)

    return check


Check = Callable[[World, CollectionStatus], None]


@dataclass(frozen=True)
class Case:
    """One field changed: the attachments before and after, whether that changes the
    attachment's key (a new attachment replaces the old one), and the kernel checks."""

    field: str
    before: list[str]
    after: list[str]
    new_key: bool
    check_before: Check
    check_after: Check


XDP_VB = "program: x_prog, xdp: {interface: @VB@, netns: @NSB@, mode: generic"
TC_VB = "tc: {interface: @VB@, netns: @NSB@, direction: ingress"
UP = "uprobe: {path: @BIN1@, symbol: first_fn"

CASES = [
    Case(
        "xdp.interface",
        [XDP_VB + "}"],
        [f"program: x_prog, xdp: {{interface: {DUMMY}, netns: @NSB@, mode: generic}}"],
        True,
        check_xdp("@VB@", "b", "generic"),
        check_xdp(DUMMY, "b", "generic", other=("@VB@", "b")),
    ),
    Case(
        "xdp.mode",
        [XDP_VB + "}"],
        ["program: x_prog, xdp: {interface: @VB@, netns: @NSB@, mode: native}"],
        False,
        check_xdp("@VB@", "b", "generic"),
        check_xdp("@VB@", "b", "native"),
    ),
    Case(
        "xdp.netns",
        [f"program: x_prog, xdp: {{interface: {DUMMY}, netns: @NSA@, mode: generic}}"],
        [f"program: x_prog, xdp: {{interface: {DUMMY}, netns: @NSB@, mode: generic}}"],
        True,
        check_xdp(DUMMY, "a", "generic"),
        check_xdp(DUMMY, "b", "generic", other=(DUMMY, "a")),
    ),
    Case(
        "xdp.take_over",
        [XDP_VB + "}"],
        [XDP_VB + ", take_over: true}"],
        False,
        check_xdp("@VB@", "b", "generic"),
        check_xdp("@VB@", "b", "generic"),
    ),
    Case(
        "tc.interface",
        [f"program: tc_one, {TC_VB}}}"],
        [f"program: tc_one, tc: {{interface: {DUMMY}, netns: @NSB@, direction: ingress}}"],
        True,
        check_tc("@VB@", "b", "ingress", ("tc_one",)),
        check_tc(DUMMY, "b", "ingress", ("tc_one",)),
    ),
    Case(
        "tc.direction",
        [f"program: tc_one, {TC_VB}}}"],
        ["program: tc_one, tc: {interface: @VB@, netns: @NSB@, direction: egress}"],
        True,
        check_tc("@VB@", "b", "ingress", ("tc_one",)),
        check_tc("@VB@", "b", "egress", ("tc_one",)),
    ),
    Case(
        "tc.netns",
        [f"program: tc_one, tc: {{interface: {DUMMY}, netns: @NSA@, direction: ingress}}"],
        [f"program: tc_one, tc: {{interface: {DUMMY}, netns: @NSB@, direction: ingress}}"],
        True,
        check_tc(DUMMY, "a", "ingress", ("tc_one",)),
        check_tc(DUMMY, "b", "ingress", ("tc_one",)),
    ),
    Case(
        "tc.before",
        [f"program: tc_one, {TC_VB}}}", f"program: tc_two, {TC_VB}}}"],
        [f"program: tc_one, {TC_VB}}}", f"program: tc_two, {TC_VB}, before: tc_one}}"],
        False,
        check_tc("@VB@", "b", "ingress", ("tc_one", "tc_two")),
        check_tc("@VB@", "b", "ingress", ("tc_two", "tc_one")),
    ),
    Case(
        "tc.after",
        [f"program: tc_one, {TC_VB}}}", f"program: tc_two, {TC_VB}, before: tc_one}}"],
        [f"program: tc_one, {TC_VB}}}", f"program: tc_two, {TC_VB}, after: tc_one}}"],
        False,
        check_tc("@VB@", "b", "ingress", ("tc_two", "tc_one")),
        check_tc("@VB@", "b", "ingress", ("tc_one", "tc_two")),
    ),
    Case(
        "cgroup.path",
        ["program: cg_prog, cgroup: {path: @CG1@, attach: egress}"],
        ["program: cg_prog, cgroup: {path: @CG2@, attach: egress}"],
        True,
        check_cgroup("cg1", "egress"),
        check_cgroup("cg2", "egress"),
    ),
    Case(
        "cgroup.attach",
        ["program: cg_prog, cgroup: {path: @CG1@, attach: egress}"],
        ["program: cg_prog, cgroup: {path: @CG1@, attach: ingress}"],
        True,
        check_cgroup("cg1", "egress"),
        check_cgroup("cg1", "ingress"),
    ),
    Case(
        "tracepoint.name",
        ["program: tp_prog, tracepoint: {group: syscalls, name: sys_enter_getppid}"],
        ["program: tp_prog, tracepoint: {group: syscalls, name: sys_enter_getpid}"],
        True,
        check_tracepoint("sys_enter_getppid"),
        check_tracepoint("sys_enter_getpid"),
    ),
    Case(
        "tracepoint.group",
        ["program: tp_prog, tracepoint: {group: syscalls, name: sys_enter_getppid}"],
        ["program: tp_prog, tracepoint: {group: raw_syscalls, name: sys_enter}"],
        True,
        check_tracepoint("sys_enter_getppid"),
        check_tracepoint("sys_enter"),
    ),
    Case(
        "raw_tracepoint.name",
        ["program: rtp_prog, raw_tracepoint: {name: sys_enter}"],
        ["program: rtp_prog, raw_tracepoint: {name: sys_exit}"],
        True,
        check_raw_tracepoint("sys_enter"),
        check_raw_tracepoint("sys_exit"),
    ),
    Case(
        "uprobe.path",
        [f"program: up_prog, {UP}}}"],
        ["program: up_prog, uprobe: {path: @BIN2@, symbol: first_fn}"],
        True,
        check_uprobe("up_prog", "bin1", "first_fn"),
        check_uprobe("up_prog", "bin2", "first_fn"),
    ),
    Case(
        "uprobe.symbol",
        [f"program: up_prog, {UP}}}"],
        ["program: up_prog, uprobe: {path: @BIN1@, symbol: second_fn}"],
        True,
        check_uprobe("up_prog", "bin1", "first_fn"),
        check_uprobe("up_prog", "bin1", "second_fn"),
    ),
    Case(
        "uprobe.offset",
        ["program: up_prog, uprobe: {path: @BIN1@, offset: @OFF1@}"],
        ["program: up_prog, uprobe: {path: @BIN1@, offset: @OFF2@}"],
        True,
        check_uprobe("up_prog", "bin1", "first_fn"),
        check_uprobe("up_prog", "bin1", "second_fn"),
    ),
    Case(
        # a uretprobe needs a uretprobe program: the program changes with the field
        "uprobe.retprobe",
        [f"program: up_prog, {UP}}}"],
        [f"program: uret_prog, {UP}, retprobe: true}}"],
        True,
        check_uprobe("up_prog", "bin1", "first_fn"),
        check_uprobe("uret_prog", "bin1", "first_fn"),
    ),
    Case(
        "uprobe.pid",
        [f"program: up_prog, {UP}}}"],
        [f"program: up_prog, {UP}, pid: @PID@}}"],
        True,
        check_uprobe("up_prog", "bin1", "first_fn"),
        check_uprobe("up_prog", "bin1", "first_fn", pid_filtered=True),
    ),
    Case(
        "netns.path",
        ["program: lookup_prog, netns: {path: @NSA@}"],
        ["program: lookup_prog, netns: {path: @NSB@}"],
        True,
        check_netns("a"),
        check_netns("b"),
    ),
]


def ready(r: Reconciler) -> CollectionStatus:
    st = r.status().get("fields")
    assert st is not None and st.condition == "Ready", st
    return st


@pytest.mark.parametrize("case", CASES, ids=[c.field for c in CASES])
def test_a_changed_field_is_planned_applied_and_confirmed_by_the_kernel(
    world: World, case: Case, fd_guard: None
) -> None:
    r = world.env.reconciler()
    world.manifest(case.before)
    r.apply(world.env.desired())
    st = ready(r)
    case.check_before(world, st)
    old_links = {a.key: a.link_id for a in st.attachments}
    assert not r.plan(world.env.desired()).has_changes

    world.manifest(case.after)
    p = r.plan(world.env.desired())
    assert not p.problems, [str(x) for x in p.problems]
    changes = [c for c in p.changes_for("fields", Kind.ATTACHMENT) if c.op is not Op.NOOP]
    assert changes, f"{case.field}: the plan shows no attachment change:\n{p}"
    ops = {c.op for c in changes}
    if case.new_key:
        assert ops == {Op.CREATE, Op.DELETE}, str(p)
    else:
        assert ops <= {Op.UPDATE, Op.REPLACE}, str(p)
        field_name = case.field.split(".")[1]
        assert any(d.field == field_name for c in changes for d in c.diffs), str(p)
    assert p.has_changes and p.counts() != (0, 0, 0)

    r.apply(world.env.desired())
    st = ready(r)
    case.check_after(world, st)
    assert not r.plan(world.env.desired()).has_changes
    # links that the change replaced are gone, the others are the same links
    now = {a.key: a.link_id for a in st.attachments}
    deadline = time.monotonic() + 2
    for key, link_id in old_links.items():
        if now.get(key) == link_id:
            continue
        while link_alive(link_id) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not link_alive(link_id), key
    r.destroy()
    assert pins_under(world.env.root) == []
