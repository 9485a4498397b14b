"""The model-based test of the declarative layer (see tests/reconcile/model.py), and the
counterexamples it found, kept as ordinary regression tests.

CI runs a bounded number of examples; ``BPFORCH_MODEL_EXAMPLES`` / ``BPFORCH_MODEL_STEPS``
(read only here) or ``benchmarks/state_machine.py`` run it longer.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from orchestrator.ebpf import link as links
from tests.conftest import ROOT
from tests.netns import Cgroup, VethPair
from tests.reconcile import model
from tests.reconcile.conftest import Env

pytestmark = pytest.mark.kernel


def test_model(capsys: pytest.CaptureFixture[str]) -> None:
    examples = int(os.environ.get("BPFORCH_MODEL_EXAMPLES", "10"))
    steps = int(os.environ.get("BPFORCH_MODEL_STEPS", "30"))
    with model.world() as w:
        run_state_machine_as_test(
            model.ModelMachine,
            settings=settings(
                max_examples=examples,
                stateful_step_count=steps,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
                report_multiple_bugs=False,
                phases=[Phase.generate, Phase.shrink]
                if os.environ.get("BPFORCH_MODEL_SHRINK", "1") == "1"
                else [Phase.generate],
            ),
        )
        with capsys.disabled():
            print(f"\nmodel: {w.summary()}")


# ---------------------------------------------------------------------------- counterexamples
# Each test below is a shrunk counterexample the machine found, as an ordinary test.


def _model_manifest(env: Env, veth: VethPair | None, attach: str) -> None:
    """Collection cb of model.o: XDP on lo in ``veth``'s first namespace (none without
    ``veth``), then ``attach``."""
    xdp = ""
    if veth is not None:
        where = f"interface: lo, netns: {veth.a.ns.path}, mode: generic"
        xdp = f"            - {{program: model_xdp, xdp: {{{where}}}}}\n"
    head = """
        apiVersion: bpforch/v1
        kind: Collection
        metadata: {name: cb}
        spec:
          object: @BPF@/model.o
          attach:
"""
    env.write("cb", f"{head}{xdp}{attach}\n        ")


def _apply_killed_at(env: Env, step: str) -> None:
    """Apply ``env``'s manifests in a child process killed with SIGKILL at ``step``."""
    code = (
        "import sys; from pathlib import Path\n"
        "from orchestrator.manifest import load_manifests\n"
        "from orchestrator.reconcile import Reconciler\n"
        "from tests.failpoints import KillAt\n"
        "r = Reconciler(bpffs_root=Path(sys.argv[1]), state_dir=Path(sys.argv[2]),\n"
        "               failpoints=KillAt.parse(sys.argv[4]))\n"
        "r.apply(load_manifests([Path(sys.argv[3])]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(env.root), str(env.state_dir), str(env.manifests), step],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -9, (proc.returncode, proc.stderr)


@pytest.mark.parametrize("step", ["attach:2", "commit", "record", "release"])
def test_kill_after_a_new_xdp_link_converges(
    step: str, env: Env, veth: VethPair, cgroup: Cgroup
) -> None:
    """A new collection attaches XDP, then a second hook; the apply is killed after the XDP
    link exists (pinned in the staging directory, or already swapped into place). The next
    apply must converge: that XDP program is bpforch's own leftover, not someone else's."""
    _model_manifest(
        env,
        veth,
        f"            - {{program: model_cg, cgroup: {{path: {cgroup.path}, attach: egress}}}}",
    )
    _apply_killed_at(env, step)
    r = env.reconciler()
    r.apply(env.desired())
    st = r.status().get("cb")
    assert st is not None and st.condition == "Ready", st
    assert not r.plan(env.desired()).has_changes
    held = links.xdp_attached("lo", veth.a.ns.path)
    assert held is not None and held.prog_id == st.program("model_xdp").id
    assert not any(p.name.startswith("_staging-") for p in env.root.iterdir())


@pytest.mark.parametrize("step", ["attach:1", "commit", "record", "release"])
def test_kill_after_xdp_added_to_an_applied_collection_converges(
    step: str, env: Env, veth: VethPair, cgroup: Cgroup
) -> None:
    """An applied collection gains an XDP attachment; the apply is killed after its link
    exists. With ``record``, the new tree (with the new link) is in place but the record
    still names the generation before: the next apply must see that link as its own (the
    tree's ownership marker records it), not as someone else's program on the interface."""
    cg = f"            - {{program: model_cg, cgroup: {{path: {cgroup.path}, attach: egress}}}}"
    _model_manifest(env, None, cg)
    env.reconciler().apply(env.desired())
    _model_manifest(env, veth, cg)
    _apply_killed_at(env, step)
    r = env.reconciler()
    before = r.plan(env.desired())
    # only after the swap and before the record is the tree newer than the record
    want = ("cb",) if step == "record" else ()
    assert before.recovered == want and r.status().recovered == want, step
    r.apply(env.desired())
    st = r.status().get("cb")
    assert st is not None and st.condition == "Ready", st
    assert not r.status().recovered
    assert not r.plan(env.desired()).has_changes
    held = links.xdp_attached("lo", veth.a.ns.path)
    assert held is not None and held.prog_id == st.program("model_xdp").id
    assert not any(p.name.startswith("_staging-") for p in env.root.iterdir())
