"""The printed plan is exactly what runs: over a range of applies and destroys against the
real kernel, the steps the transaction reaches (recorded at its failpoints, which sit right
before the syscalls) are the plan's actions in the plan's order, and the kernel shows each
action's effect (a kept or switched link keeps its id, a new link is new, a replaced or
detached one is gone, a staged collection has new programs, a kept one the same)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.ebpf._sys import LinkType
from orchestrator.ebpf.link import Link
from orchestrator.reconcile import ApplyResult, Kind, Status, Step
from orchestrator.reconcile.actions import (
    Action,
    Attach,
    ClaimRoot,
    Commit,
    Delete,
    Detach,
    Keep,
    KeepLink,
    MakeBeforeBreak,
    OpenStaging,
    Reattach,
    Release,
    ReleaseRoot,
    RemoveStaging,
    Seal,
    Stage,
    SwitchLink,
    Unchanged,
    WriteRecord,
)
from orchestrator.reconcile.owner import OWNER_PIN
from tests.netns import VethPair
from tests.reconcile.conftest import Env, link_alive, pins_under, prog_alive
from tests.reconcile.test_attach_changes import gone

pytestmark = pytest.mark.kernel

SOURCE = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __type(key, __u32);
    __type(value, __u64);
    __uint(max_entries, 4);
} hits SEC(".maps");
const volatile __u64 gen = 0;
static __always_inline void hit(__u32 i)
{
    __u64 *v = bpf_map_lookup_elem(&hits, &i);
    if (v)
        __sync_fetch_and_add(v, gen + 1);
}
SEC("xdp") int on_xdp(struct xdp_md *ctx) { hit(0); return XDP_PASS; }
SEC("tc") int tc_a(struct __sk_buff *skb) { hit(1); return -1; }
SEC("tc") int tc_b(struct __sk_buff *skb) { hit(2); return -1; }
SEC("tracepoint/syscalls/sys_enter_getppid") int on_tp(void *ctx) { hit(3); return 0; }
char LICENSE[] SEC("license") = "GPL";
"""

Reached = tuple[str, str]  # (step, subject)


def steps_of(action: Action) -> list[Reached]:
    """The failpoints an action reaches, in order (the actions not listed reach none)."""
    match action:
        case Stage():
            return [(s, action.collection) for s in ("load", "verify", "pin")]
        case Keep():
            return [("verify", action.collection)] * bool(action.fresh) + [
                ("pin", action.collection)
            ]
        case SwitchLink():
            return [("switch", action.key)]  # every switch here runs a new program
        case Attach() | MakeBeforeBreak() | Reattach():
            return [("attach", action.key)]
        case Commit() | Delete():
            return [("commit", action.collection)]
        case WriteRecord():
            return [("record", "")]
        case Release():
            return [("release", "")]
    return []


# Every action type these applies and destroys plan; each is checked either by the
# failpoints it reaches (steps_of) or by its effect (check_effects). A new action type
# fails the test until it is added to both.
CHECKED: frozenset[type[Action]] = frozenset(
    {
        ClaimRoot,
        OpenStaging,
        Unchanged,
        Stage,
        Keep,
        KeepLink,
        SwitchLink,
        Attach,
        MakeBeforeBreak,
        Reattach,
        Seal,
        Commit,
        Delete,
        WriteRecord,
        Release,
        Detach,
        RemoveStaging,
        ReleaseRoot,
    }
)


class Recorder:
    """Failpoints that note every step the transaction reaches."""

    def __init__(self) -> None:
        self.reached: list[Reached] = []

    def reach(self, step: Step, subject: str) -> None:
        self.reached.append((step, subject))


def run(env: Env, seen: set[type[Action]], *, destroy: bool = False) -> ApplyResult:
    """Apply with --prune (or destroy everything) with the recorder; check that what ran is
    the plan's actions in order, that the plan printed beforehand (``bpforch plan``,
    ``destroy --dry-run``) is that very plan, and each action's effect (``seen`` gathers the
    action types checked).

    Meanwhile the test holds an fd of each link of the old generation (as a tool reading
    them would): a Detach must detach its link though that fd keeps it alive."""
    r = env.reconciler()
    before = r.status()
    held = {a.link_id: Link.from_id(a.link_id) for c in before.collections for a in c.attachments}
    try:
        printed = r.destroy(dry_run=True).plan if destroy else r.plan(env.desired(), prune=True)
        rec = Recorder()
        recording = env.reconciler(rec)
        result = recording.destroy() if destroy else recording.apply(env.desired(), prune=True)
        assert result.applied
        unchecked = {type(a) for a in result.plan.actions} - CHECKED
        assert not unchecked, f"actions this test does not check: {unchecked}"
        expected = [s for a in result.plan.actions for s in steps_of(a)]
        assert len(expected) >= 3 and rec.reached == expected, "\n".join(
            f"{a.action} {getattr(a, 'collection', '')}" for a in result.plan.actions
        )
        assert [a.to_json() for a in printed.actions] == [a.to_json() for a in result.plan.actions]
        assert str(printed) == str(result.plan)
        for action in result.plan.actions:
            if isinstance(action, Detach) and held[action.link.link_id].type in DETACHABLE:
                assert not held[action.link.link_id].info().attached  # not only unpinned
    finally:
        for link in held.values():
            link.close()  # the rest of the old generation can go now
    check_effects(env, result, before, r.status(), seen)
    return result


DETACHABLE = {LinkType.XDP, LinkType.TCX, LinkType.CGROUP, LinkType.NETNS}


def check_effects(
    env: Env, result: ApplyResult, before: Status, after: Status, seen: set[type[Action]]
) -> None:
    """Each action's effect, as the kernel, the record and bpffs show it."""
    old_links = {a.link_id for c in before.collections for a in c.attachments}
    old_progs = {p.id for c in before.collections for p in c.programs}
    staging = sorted(p.name for p in env.root.glob("_staging-*"))
    for action in result.plan.actions:
        seen.add(type(action))
        match action:
            case Unchanged():
                was, now = before.get(action.collection), after.get(action.collection)
                assert was is not None and now is not None
                assert [p.id for p in now.programs] == [p.id for p in was.programs]
                assert [a.link_id for a in now.attachments] == [a.link_id for a in was.attachments]
            case OpenStaging() | RemoveStaging():
                assert staging == []  # opened, then removed: none left behind
            case Seal() | Commit() | WriteRecord():
                # the new record names what runs now
                assert {c.name for c in after.collections} == {
                    a.collection for a in result.plan.actions if isinstance(a, Stage | Keep)
                } | {a.collection for a in result.plan.actions if isinstance(a, Unchanged)}
            case Release():
                # the old generation's programs that the new one does not run are freed
                running = {p.id for c in after.collections for p in c.programs}
                assert all(gone(prog_alive, pid) for pid in old_progs - running)
            case ClaimRoot():
                assert (env.root / OWNER_PIN).exists()
            case ReleaseRoot():
                assert after.collections == () and pins_under(env.root) == []
            case KeepLink() | SwitchLink():
                st = after.get(action.collection)
                assert st is not None
                (att,) = [a for a in st.attachments if a.key == action.key]
                assert att.link_id == action.link.link_id and att.alive
            case Attach() | MakeBeforeBreak() | Reattach():
                st = after.get(action.collection)
                assert st is not None
                (att,) = [a for a in st.attachments if a.key == action.key]
                assert att.link_id not in old_links and att.alive
            case Detach():
                assert gone(link_alive, action.link.link_id)
            case Stage():
                st = after.get(action.collection)
                assert st is not None and st.condition == "Ready"
                assert not {p.id for p in st.programs} & old_progs
            case Keep():
                st = after.get(action.collection)
                assert st is not None and st.condition == "Ready"
                for p in st.programs:
                    kept = action.record.programs[p.name].id
                    assert (p.id == kept) is (p.name not in action.fresh)
                    if p.name in action.fresh:
                        assert gone(prog_alive, kept)
            case Delete():
                assert after.get(action.collection) is None
                assert all(gone(prog_alive, p.id) for p in action.record.programs.values())


def test_the_transaction_runs_the_plans_actions_in_order(
    env: Env, veth: VethPair, compile_bpf: Callable[..., Path], fd_guard: None
) -> None:
    obj = compile_bpf(SOURCE)
    hook = f"interface: {veth.b.name}, netns: {veth.b.ns.path}"

    def manifest(gen: int, *attach: str) -> None:
        lines = "".join(f"\n                - {a}" for a in attach)
        env.write(
            "run",
            f"""
            apiVersion: bpforch/v1
            kind: Collection
            metadata: {{name: run}}
            spec:
              object: {obj}
              constants: {{gen: {gen}}}
              maps: {{hits: {{pin: true, preserve: true}}}}
              attach:{lines}
            """,
        )

    xdp = f"{{program: on_xdp, xdp: {{{hook}, mode: generic}}}}"
    xdp_native = f"{{program: on_xdp, xdp: {{{hook}, mode: native}}}}"
    tc_a = f"{{program: tc_a, tc: {{{hook}, direction: ingress}}}}"
    tc_b = f"{{program: tc_b, tc: {{{hook}, direction: ingress}}}}"
    tc_b_first = f"{{program: tc_b, tc: {{{hook}, direction: ingress, before: tc_a}}}}"
    tp = "{program: on_tp, tracepoint: {group: syscalls, name: sys_enter_getppid}}"
    env.write(
        "other",
        f"""
        apiVersion: bpforch/v1
        kind: Collection
        metadata: {{name: other}}
        spec:
          object: {obj}
          programs: [on_tp]
          attach:
            - {tp}
        """,
    )

    seen: set[type[Action]] = set()

    def kinds(result: ApplyResult) -> list[str]:
        return [a.action for a in result.plan.actions]

    # new: everything staged and attached
    manifest(1, xdp, tc_a, tc_b, tp)
    result = run(env, seen)
    assert kinds(result).count("attach") == 5 and kinds(result).count("stage") == 2

    # a new object generation: links switched in place, the tracepoint made before broken
    manifest(2, xdp, tc_a, tc_b, tp)
    result = run(env, seen)
    assert kinds(result) == [
        "open_staging",
        "unchanged",  # other (collections in name order, dependencies first)
        "stage",
        "switch_link",
        "switch_link",
        "switch_link",
        "make_before_break",
        "seal",
        "commit",
        "write_record",
        "release",
        "detach",
        "remove_staging",
    ]

    # only attachments change: the programs are kept; the XDP mode is re-attached last,
    # tc_b gets a fresh instance placed before tc_a, the tracepoint goes
    manifest(2, xdp_native, tc_a, tc_b_first)
    result = run(env, seen)
    assert kinds(result) == [
        "open_staging",
        "unchanged",
        "keep",
        "keep_link",
        "make_before_break",
        "reattach",
        "seal",
        "commit",
        "write_record",
        "release",
        "detach",  # tc_b's old link
        "detach",  # the XDP link re-attached (already detached: nothing to do)
        "detach",  # the tracepoint, no longer declared
        "remove_staging",
    ]
    keep = next(a for a in result.plan.actions if isinstance(a, Keep))
    assert keep.fresh == ("tc_b",)
    shown = [c.name.split("@")[0] for c in result.plan.changes_for("run", Kind.ATTACHMENT)]
    assert shown == ["tc_a", "tc_b", "on_xdp", "on_tp"]  # printed in the order they run

    # pruned: a collection no longer declared is deleted, its link detached
    env.remove("other")
    result = run(env, seen)
    assert "delete" in kinds(result) and "release_root" not in kinds(result)

    # destroyed: the root is given up at the end
    result = run(env, seen, destroy=True)
    assert kinds(result)[-1] == "release_root"
    assert any(isinstance(a, ReleaseRoot) for a in result.plan.actions)
    assert pins_under(env.root) == []
    assert seen == CHECKED  # every action type ran at least once above
