"""Plan without CAP_SYS_ADMIN: entering a target's network namespace fails with EPERM, and
the plan says so (with a hint) instead of claiming the interface does not exist."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, require_tool
from tests.netns import VethPair
from tests.reconcile.conftest import Env
from tests.reconcile.test_apply import xdp_manifest

pytestmark = pytest.mark.kernel

_PLAN = (
    "import json, sys; from pathlib import Path\n"
    "from orchestrator.manifest import load_manifests\n"
    "from orchestrator.reconcile import Reconciler\n"
    "r = Reconciler(bpffs_root=Path(sys.argv[1]), state_dir=Path(sys.argv[2]))\n"
    "p = r.plan(load_manifests([Path(sys.argv[3])]))\n"
    "print(json.dumps([str(x) for x in p.problems]))\n"
)


def plan_problems(env: Env, *prefix: str) -> list[str]:
    out = subprocess.run(
        [*prefix, sys.executable, "-c", _PLAN, *map(str, (env.root, env.state_dir, env.manifests))],
        cwd=ROOT,
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    )
    problems = json.loads(out.stdout)
    assert isinstance(problems, list)
    return [str(x) for x in problems]


def test_plan_without_cap_sys_admin_names_the_real_cause(env: Env, veth: VethPair) -> None:
    require_tool("setpriv")
    xdp_manifest(env, veth)
    env.state_dir.mkdir(parents=True)
    env.root.mkdir(parents=True)
    # with every capability the interface is found: no problem
    assert plan_problems(env) == []
    drop = ("setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin", "--")
    problems = plan_problems(env, *drop)
    assert len(problems) == 1, problems
    text = problems[0]
    assert f"network namespace {veth.b.ns.path}: cannot enter it: operation not permitted" in text
    assert "needs CAP_SYS_ADMIN" in text
    assert "does not exist" not in text
    assert "xdp-counter.yaml:" in text


def test_a_file_that_is_no_network_namespace(env: Env, veth: VethPair) -> None:
    xdp_manifest(env, veth)
    path = env.manifests / "xdp-counter.yaml"
    not_ns = env.manifests / "plain-file"
    not_ns.write_text("")
    path.write_text(path.read_text().replace(str(veth.b.ns.path), str(not_ns)))
    problems = [str(x) for x in env.reconciler().plan(env.desired()).problems]
    assert len(problems) == 1, problems
    assert f"network namespace {not_ns}: cannot enter it: invalid argument" in problems[0]
    assert "not a network namespace file" in problems[0]
