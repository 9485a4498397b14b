"""Observe at scale with its cache (orchestrator.reconcile.cache): a no-op plan of 1,000
collections reuses what the kernel said before, and drift made behind bpforch's back (a
pin replaced or removed, a link detached while its pin stays) is still seen."""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest

from orchestrator import ebpf
from orchestrator.ebpf import Program, _sys
from orchestrator.ebpf import link as links
from orchestrator.ebpf.errors import SyscallError
from orchestrator.reconcile import Kind, Op
from orchestrator.reconcile.cache import FIXED_LINKS
from tests.conftest import BPF_DIR
from tests.netns import VethPair
from tests.reconcile.conftest import Env
from tests.reconcile.test_apply import xdp_manifest

pytestmark = pytest.mark.kernel

N = 1000
TRACED = ("c0010", "c0011")  # with a tracepoint link (a kind observe remembers)


def many(env: Env, n: int = N) -> None:
    for i in range(n):
        name = f"c{i:04d}"
        if name in TRACED:
            body = (
                "  object: @BPF@/tp_counter.o\n"
                f"  constants: {{target_tgid: {(1 << 30) + i}}}\n"
                "  attach:\n    - program: count_getppid\n"
                "      tracepoint: {group: syscalls, name: sys_enter_getpgid}\n"
            )
        else:
            body = (
                "  object: @BPF@/xdp_counter.o\n"
                f"  constants: {{version: {i}}}\n"
                "  maps:\n    counters: {pin: true}\n"
            )
        env.write(
            name,
            "apiVersion: bpforch.dev/v1\nkind: Collection\n"
            f"metadata: {{name: {name}}}\nspec:\n{body}",
        )


def test_drift_behind_our_back_is_seen_through_the_cache(
    env: Env, veth: VethPair, fd_guard: None
) -> None:
    many(env)
    xdp_manifest(env, veth)  # an XDP link: a kind that is read back on every observe
    r = env.reconciler()
    desired = env.desired()
    r.apply(desired)
    total = N + 1

    # fresh directories are not remembered (their stamps could hide a change in the same
    # tick); once settled, a no-op plan reuses every listing
    assert not r.plan(desired).has_changes
    time.sleep(1.1)
    assert not r.plan(desired).has_changes
    hits = r.cache.hits
    assert not r.plan(desired).has_changes
    assert r.cache.hits - hits == total

    # behind bpforch's back:
    root = env.root
    # a program pin replaced by another program (of another collection)
    os.unlink(root / "c0100" / "progs" / "xdp_count")
    with Program.from_pin(root / "c0200" / "progs" / "xdp_count") as other:
        other.pin(root / "c0100" / "progs" / "xdp_count")
        other_id = other.id
    # a map pin removed
    os.unlink(root / "c0300" / "maps" / "counters")
    # a tracepoint link's pin replaced by a link running another program
    (pin,) = os.listdir(root / "c0011" / "links")
    with Program.from_pin(root / "c0010" / "progs" / "count_getppid") as prog:
        new = links.attach_tracepoint(prog, "syscalls", "sys_enter_getsid")
    with new:
        os.unlink(root / "c0011" / "links" / pin)
        new.pin(root / "c0011" / "links" / pin)
    # the XDP link detached while its pin stays: no directory changes
    st = r.status().get("xdp-counter")
    assert st is not None
    with links.Link.from_id(st.attachments[0].link_id) as link:
        link.detach()

    hits = r.cache.hits
    actual = r.observe()
    assert r.cache.hits - hits == total - 3  # c0100, c0300 and c0011 changed on bpffs
    drift = {n: [str(d) for d in c.drift] for n, c in actual.collections.items() if c.drift}
    assert drift == {
        "c0100": [f"program xdp_count: pin progs/xdp_count holds program id {other_id}, not "
                  f"{actual.collections['c0100'].record.programs['xdp_count'].id}"],
        "c0300": ["map counters: pin maps/counters is missing"],
        "c0011": [f"attachment {a}: pin links/{pin} holds link id {new.id}, not "
                  f"{actual.collections['c0011'].record.attachments[a].link_id}"
                  for a in actual.collections["c0011"].record.attachments],
        "xdp-counter": [f"attachment {st.attachments[0].key}: link {st.attachments[0].link_id} "
                        "was detached from its hook"],
    }  # fmt: skip
    p = r.plan(desired)
    assert sorted(p.collections(Op.UPDATE)) == ["c0011", "c0100", "c0300", "xdp-counter"]
    assert p.change("c0300", Kind.MAP, "counters") is not None
    assert p.changes_for("xdp-counter", Kind.ATTACHMENT)[0].op is Op.REPLACE

    r.apply(desired)
    assert not r.plan(desired).has_changes


def test_a_listing_read_right_after_a_change_is_not_remembered(env: Env) -> None:
    """bpffs stamps directories with the coarse clock: a listing read within a second of its
    directory's last change could hide a change made in the same tick, so it is read again
    next time; a pin removed right after an observe is seen by the next one."""
    many(env, 3)
    r = env.reconciler()
    r.apply(env.desired())
    r.observe()
    assert r.cache.trees == {}
    os.unlink(env.root / "c0001" / "maps" / "counters")
    assert [str(d) for d in r.observe().collections["c0001"].drift] == [
        "map counters: pin maps/counters is missing"
    ]
    time.sleep(1.1)
    r.observe()
    assert sorted(r.cache.trees) == ["c0000", "c0001", "c0002"]
    os.unlink(env.root / "c0002" / "progs" / "xdp_count")
    actual = r.observe()
    assert [str(d) for d in actual.collections["c0002"].drift] == [
        "program xdp_count: pin progs/xdp_count is missing"
    ]
    assert actual.collections["c0000"].drift == ()


def test_a_remembered_listing_is_dropped_when_a_directory_goes_or_the_record_changes(
    env: Env,
) -> None:
    """A subdirectory removed (its stamp can't be read) or the record file rewritten with
    other bytes: what observe remembered is not used, and the next observe says so."""
    from orchestrator.ebpf.inspect import remove_tree
    from orchestrator.reconcile.store import read_record, write_record

    many(env, 2)
    r = env.reconciler()
    r.apply(env.desired())
    time.sleep(1.1)
    first = r.observe()
    assert sorted(r.cache.trees) == ["c0000", "c0001"]
    assert r.observe().collections["c0000"].record is first.collections["c0000"].record

    remove_tree(env.root / "c0001" / "maps")
    actual = r.observe()
    assert [str(d) for d in actual.collections["c0001"].drift] == [
        "map counters: pin maps/counters is missing"
    ]

    # the record rewritten behind bpforch's back (another generation number): parsed again
    record = read_record(env.state_dir)
    c0 = record.collections["c0000"]
    write_record(
        env.state_dir,
        type(record)({**record.collections, "c0000": replace(c0, generation=7)}),
    )
    assert r.observe().collections["c0000"].record.generation == 7


RAW_TP = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("raw_tp/sys_enter")
int on_enter(void *ctx) { return 0; }
SEC("tp_btf/sched_switch")
int on_switch(__u64 *ctx) { return 0; }
char LICENSE[] SEC("license") = "GPL";
"""


def test_the_links_observe_remembers_can_be_neither_switched_nor_detached(
    env: Env, compile_bpf: Callable[..., Path]
) -> None:
    """What observe keeps of a tracepoint or uprobe (perf_event), raw_tp or tp_btf (tracing)
    link holds for the life of its pin only because the kernel refuses to switch or detach
    such a link: asked of the kernel itself here (BPF_LINK_UPDATE, BPF_LINK_DETACH), so a
    kernel that starts allowing it fails this test instead of hiding drift."""
    assert {"tracepoint", "raw_tracepoint", "uprobe"} == FIXED_LINKS
    spec = ebpf.CollectionSpec.from_file(compile_bpf(RAW_TP))
    tp_spec = ebpf.CollectionSpec.from_file(BPF_DIR / "tp_counter.o")
    with contextlib.ExitStack() as stack:
        ones = [stack.enter_context(ebpf.Collection(spec)) for _ in range(2)]
        tps = [stack.enter_context(ebpf.Collection(tp_spec)) for _ in range(2)]
        cases: list[tuple[list[ebpf.Collection], str, Callable[[Program], links.Link]]] = [
            (tps, "count_getppid", partial(links.attach_tracepoint, group="syscalls",
                                           name="sys_enter_getpgid")),
            (ones, "on_enter", partial(links.attach_raw_tracepoint, name="sys_enter")),
            (ones, "on_switch", partial(links.attach_raw_tracepoint, name=None)),
        ]  # fmt: skip
        for colls, name, attach in cases:
            first, second = (c.programs[name] for c in colls)
            with attach(first) as link:
                with pytest.raises(SyscallError) as err:
                    _sys.link_update(link.fd, second.fd)
                assert err.value.errno in (errno.EOPNOTSUPP, errno.EINVAL, _sys.ENOTSUPP), name
                with pytest.raises(ebpf.NotSupportedError):
                    link.detach()
                assert link.info().program_id == first.id
                assert link.info().attached


def test_a_reconciler_that_observes_once_keeps_nothing_and_sees_the_same(env: Env) -> None:
    """remember=False (the command line's plan): observe keeps no listing and no record for
    a next observe, and says what a remembering reconciler says, drift included."""
    from orchestrator.reconcile import Reconciler

    many(env, 3)
    r = env.reconciler()
    r.apply(env.desired())
    time.sleep(1.1)
    once = Reconciler(bpffs_root=env.root, state_dir=env.state_dir, store=env.store, remember=False)
    assert not once.plan(env.desired()).has_changes
    assert once.cache.trees == {} and once.cache.hits == 0
    os.unlink(env.root / "c0001" / "maps" / "counters")
    seen, remembered = once.observe(), r.observe()
    assert once.cache.trees == {}
    assert seen.collections == remembered.collections
    assert [str(d) for d in seen.collections["c0001"].drift] == [
        "map counters: pin maps/counters is missing"
    ]
    assert once.plan(env.desired()).changes == r.plan(env.desired()).changes


def test_a_fixed_link_is_known_by_the_pin_inode_the_record_names(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record keeps a tracepoint link's pin inode (the pin the apply made), so an observe
    without anything remembered (a new command) reads no link info while that inode is
    there; a pin replaced by another link (another inode) or removed is seen, and a record
    written before the inode was kept has its links read back as before."""
    from orchestrator.reconcile import observe as observe_module
    from orchestrator.reconcile.store import read_record, write_record

    many(env, 12)  # c0010 and c0011 have a tracepoint link
    env.reconciler().apply(env.desired())
    record = read_record(env.state_dir)
    for name in TRACED:
        (a,) = record.collections[name].attachments.values()
        assert a.ino == os.stat(env.root / name / a.pin).st_ino != 0
    reads: list[str] = []
    real = observe_module._kernel.link_info

    def counted(fd: _sys.FD, **kw: bool) -> links.LinkInfo:
        reads.append("link")
        return real(fd, **kw)

    monkeypatch.setattr(observe_module._kernel, "link_info", counted)
    fresh = env.reconciler()
    fresh.remember = False  # as a command: nothing kept from an earlier observe
    assert all(c.drift == () for c in fresh.observe().collections.values())
    assert reads == []

    # the pin of c0011's link replaced by another link: another inode, read and seen
    (pin,) = os.listdir(env.root / "c0011" / "links")
    a = record.collections["c0011"].attachments
    with Program.from_pin(env.root / "c0010" / "progs" / "count_getppid") as prog:
        new = links.attach_tracepoint(prog, "syscalls", "sys_enter_getsid")
    with new:
        os.unlink(env.root / "c0011" / "links" / pin)
        new.pin(env.root / "c0011" / "links" / pin)
        drift = [str(d) for d in fresh.observe().collections["c0011"].drift]
        assert drift == [
            f"attachment {k}: pin links/{pin} holds link id {new.id}, not {v.link_id}"
            for k, v in a.items()
        ]
        assert reads == ["link"]
    os.unlink(env.root / "c0011" / "links" / pin)
    assert [str(d) for d in fresh.observe().collections["c0011"].drift] == [
        f"attachment {k}: link pin links/{pin} is missing" for k in a
    ]

    # a record without the inode: the link is read back, and found as it was
    c10 = record.collections["c0010"]
    old = {k: replace(v, ino=0) for k, v in c10.attachments.items()}
    write_record(
        env.state_dir,
        type(record)({**record.collections, "c0010": replace(c10, attachments=old)}),
    )
    reads.clear()
    assert fresh.observe().collections["c0010"].drift == ()
    assert reads == ["link"]
