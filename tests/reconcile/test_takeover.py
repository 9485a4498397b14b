"""Taking over a foreign XDP program (``take_over: true``): the plan says so, apply replaces
it by a link of ours, and a failed apply puts the foreign program back the way it was
(attached through netlink, same mode). Without take_over it stays a plan problem."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from orchestrator import ebpf
from orchestrator.ebpf import Map, Program
from orchestrator.ebpf import link as links
from orchestrator.reconcile import ApplyError, Kind, Op, PlanError
from tests.conftest import BPF_DIR
from tests.failpoints import OnStep
from tests.netns import UdpReceiver, VethPair, send_udp
from tests.reconcile.conftest import Env, pins_under, prog_alive

pytestmark = pytest.mark.kernel


def manifest(env: Env, veth: VethPair, take_over: bool = True) -> None:
    env.write(
        "xdp-counter",
        f"""
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {{name: xdp-counter}}
        spec:
          object: @BPF@/xdp_counter.o
          maps:
            counters: {{pin: true}}
          attach:
            - program: xdp_count
              xdp: {{interface: {veth.b.name}, netns: {veth.b.ns.path}, mode: generic,
                     take_over: {str(take_over).lower()}}}
        """,
    )


@pytest.fixture
def foreign(veth: VethPair, request: pytest.FixtureRequest) -> Iterator[int]:
    """An XDP program attached through netlink (like `ip link set dev X xdpgeneric obj …`)
    by a tool that exited: only the interface holds it; in generic mode unless the test is
    parametrized indirectly with another mode. Yields its id."""
    mode = getattr(request, "param", "generic")
    with ebpf.load_collection(BPF_DIR / "xdp_counter.o") as coll:
        prog = coll.programs["xdp_count"]
        links.set_xdp_netlink(veth.b.name, prog, mode, netns=veth.b.ns.path)
        prog_id = prog.id
    yield prog_id
    held = links.xdp_attached(veth.b.name, veth.b.ns.path)
    if held is not None and held.prog_id == prog_id and held.link_id is None:
        with Program.from_id(prog_id) as p:
            links.set_xdp_netlink(veth.b.name, None, held.mode, expected=p, netns=veth.b.ns.path)


def assert_foreign_back(veth: VethPair, prog_id: int, mode: str = "generic") -> None:
    held = links.xdp_attached(veth.b.name, veth.b.ns.path)
    assert held is not None
    assert (held.prog_id, held.link_id, held.mode) == (prog_id, None, mode)


def test_take_over_replaces_a_netlink_program(
    env: Env, veth: VethPair, foreign: int, fd_guard: None
) -> None:
    manifest(env, veth)
    r = env.reconciler()
    p = r.plan(env.desired())
    assert p.problems == ()
    (change,) = [c for c in p.changes if c.kind is Kind.ATTACHMENT]
    assert change.op is Op.UPDATE
    assert f"take over XDP program {foreign} (xdp_count) attached by someone else" in change.reason
    assert "runs no XDP program for a moment" in change.reason
    r.apply(env.desired())
    st = r.status().get("xdp-counter")
    assert st is not None and st.condition == "Ready"
    (att,) = st.attachments
    held = links.xdp_attached(veth.b.name, veth.b.ns.path)
    assert held is not None and held.link_id == att.link_id
    assert held.prog_id == st.program("xdp_count").id != foreign
    assert not prog_alive(foreign)  # nobody holds it any more: taken over for good
    with UdpReceiver(veth.b, 7000) as rx:
        send_udp(veth.a, veth.b, 7000, count=3)
        assert rx.drain() == 3
    with Map.from_pin(env.root / "xdp-counter" / "maps" / "counters") as m:
        assert m[0] == 3  # our program sees the packets
    assert not r.plan(env.desired()).has_changes  # ours now: nothing left to take over


@pytest.mark.parametrize(
    ("foreign", "step"),
    [("generic", "take_over"), ("generic", "record"), ("native", "record")],
    indirect=["foreign"],
)
def test_failed_apply_puts_the_foreign_program_back(
    env: Env,
    veth: VethPair,
    foreign: int,
    fd_guard: None,
    step: str,
    request: pytest.FixtureRequest,
) -> None:
    """A failure right after the foreign program was detached (before our link exists), or
    at the very end (record write): the foreign program is attached again, as it was (a
    native one natively, though our link is generic)."""
    mode = request.node.callspec.params["foreign"]
    assert_foreign_back(veth, foreign, mode)  # the starting point

    def fail(subject: str) -> None:
        raise OSError(f"injected {step} failure")

    manifest(env, veth)
    with pytest.raises(ApplyError) as info:
        env.reconciler(OnStep(**{step: fail})).apply(env.desired())
    assert f"injected {step} failure" in str(info.value)
    assert "previous generation is live" in str(info.value)
    assert_foreign_back(veth, foreign, mode)
    assert pins_under(env.root) == []
    assert env.reconciler().status().get("xdp-counter") is None


def test_without_take_over_a_netlink_program_is_a_plan_problem(
    env: Env, veth: VethPair, foreign: int, fd_guard: None
) -> None:
    manifest(env, veth, take_over=False)
    r = env.reconciler()
    (problem,) = r.plan(env.desired()).problems
    assert f"program xdp_count (id {foreign}) attached by someone else" in str(problem)
    assert "set take_over: true" in str(problem)
    with pytest.raises(PlanError):
        r.apply(env.desired())
    assert_foreign_back(veth, foreign)


def test_a_program_held_by_a_foreign_link_is_not_taken_over(
    env: Env, veth: VethPair, fd_guard: None
) -> None:
    manifest(env, veth)
    with ebpf.load_collection(BPF_DIR / "xdp_counter.o") as coll:
        prog = coll.programs["xdp_count"]
        with links.attach_xdp(prog, veth.b.name, "generic", netns=veth.b.ns.path) as link:
            r = env.reconciler()
            (problem,) = r.plan(env.desired()).problems
            text = str(problem)
            assert f"(id {prog.id}) held by link {link.id} of another process" in text
            assert "take_over only replaces programs attached through netlink" in text
            with pytest.raises(PlanError):
                r.apply(env.desired())
            held = links.xdp_attached(veth.b.name, veth.b.ns.path)
            assert held is not None and held.link_id == link.id
    assert pins_under(env.root) == []


def test_netlink_set_refuses_to_clobber(veth: VethPair, foreign: int, fd_guard: None) -> None:
    """set_xdp_netlink never removes a program it was not told about."""
    ns = veth.b.ns.path
    with ebpf.load_collection(BPF_DIR / "xdp_counter.o") as coll:
        mine = coll.programs["xdp_count"]
        with pytest.raises(ebpf.AttachConflictError, match="another XDP program or link"):
            links.set_xdp_netlink(veth.b.name, mine, "generic", netns=ns)
        with pytest.raises(ebpf.AttachConflictError, match=f"program {mine.id} .* not attached"):
            links.set_xdp_netlink(veth.b.name, None, "generic", expected=mine, netns=ns)
        # the right program in the wrong mode: refused too
        with (
            Program.from_id(foreign) as p,
            pytest.raises(ebpf.AttachConflictError, match="in native mode"),
        ):
            links.set_xdp_netlink(veth.b.name, None, "native", expected=p, netns=ns)
        with pytest.raises(ValueError, match="xdp mode 'turbo'"):
            links.set_xdp_netlink(veth.b.name, mine, "turbo", netns=ns)
    assert_foreign_back(veth, foreign)


def test_take_over_where_our_renamed_programs_link_is_gone(
    env: Env, veth: VethPair, fd_guard: None
) -> None:
    """Our link on the hook was removed (drift) and someone attached their program through
    netlink; the manifest now attaches another program of ours there with take_over: the
    plan says "take over", and the apply does exactly that with a new link (not a switch of
    the link that is gone)."""
    import time

    def manifest(program: str, take_over: bool) -> None:
        env.write(
            "tail",
            f"""
            apiVersion: bpforch/v1
            kind: Collection
            metadata: {{name: tail}}
            spec:
              object: @BPF@/tailcall.o
              attach:
                - program: {program}
                  xdp: {{interface: {veth.b.name}, netns: {veth.b.ns.path}, mode: generic,
                         take_over: {str(take_over).lower()}}}
            """,
        )

    r = env.reconciler()
    manifest("tail_pass", False)
    r.apply(env.desired())
    for pin in (env.root / "tail" / "links").iterdir():
        pin.unlink()  # the link's last holder: it goes, and the hook is empty again
    with ebpf.load_collection(BPF_DIR / "xdp_counter.o") as coll:
        prog = coll.programs["xdp_count"]
        deadline = time.monotonic() + 5
        while True:
            try:
                links.set_xdp_netlink(veth.b.name, prog, "generic", netns=veth.b.ns.path)
                break
            except ebpf.Error:  # the link is released in deferred work
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        foreign = prog.id
    manifest("tail_drop", True)
    p = r.plan(env.desired())
    assert p.problems == ()
    att, gone = p.changes_for("tail", Kind.ATTACHMENT)
    assert att.name.startswith("tail_drop@") and att.op is Op.UPDATE
    assert att.reason.startswith(f"take over XDP program {foreign}")
    assert gone.name.startswith("tail_pass@") and gone.op is Op.DELETE
    r.apply(env.desired())
    st = r.status().get("tail")
    assert st is not None and st.condition == "Ready"
    (ours,) = st.attachments
    held = links.xdp_attached(veth.b.name, veth.b.ns.path)
    assert held is not None and held.link_id == ours.link_id
    assert held.prog_id == st.program("tail_drop").id
    assert not prog_alive(foreign)
    assert not r.plan(env.desired()).has_changes
