"""``bpforch status --all``: every program and link on the hooks bpforch manages, its own
marked owned (with the collection) and the rest foreign, next to programs another tool
attached at the very same hooks (a veth end in a namespace, a cgroup, a tracepoint)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from orchestrator import cli, ebpf
from tests.conftest import BPF_DIR
from tests.netns import Cgroup, VethPair

pytestmark = pytest.mark.kernel


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def test_owned_and_foreign_at_every_managed_hook(
    veth: VethPair, cgroup: Cgroup, pin_dir: Path, tmp_path: Path
) -> None:
    b = veth.b
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "all.yaml").write_text(
        f"""\
apiVersion: bpforch.dev/v1
kind: Collection
metadata: {{name: net}}
spec:
  object: {BPF_DIR / "xdp_counter.o"}
  attach:
    - {{program: xdp_count, xdp: {{interface: {b.name}, netns: {b.ns.path}, mode: generic}}}}
---
apiVersion: bpforch.dev/v1
kind: Collection
metadata: {{name: filter}}
spec:
  object: {BPF_DIR / "tc_filter.o"}
  attach:
    - {{program: tc_ingress, tc: {{interface: {b.name}, netns: {b.ns.path}, direction: ingress}}}}
---
apiVersion: bpforch.dev/v1
kind: Collection
metadata: {{name: cg}}
spec:
  object: {BPF_DIR / "cgroup_egress.o"}
  attach:
    - {{program: cg_egress, cgroup: {{path: {cgroup.path}, attach: egress}}}}
---
apiVersion: bpforch.dev/v1
kind: Collection
metadata: {{name: tp}}
spec:
  object: {BPF_DIR / "tp_counter.o"}
  attach:
    - {{program: count_getppid, tracepoint: {{group: syscalls, name: sys_enter_getppid}}}}
"""
    )
    where = ["--bpffs-root", str(pin_dir / "root"), "--state-dir", str(tmp_path / "state")]
    assert run_cli("apply", str(tmp_path / "m"), *where)[0] == 0
    # another tool at the same hooks: a tcx program after ours, a cgroup program on the
    # cgroup's ingress, a second program on the same tracepoint
    tc = ebpf.load_collection(BPF_DIR / "tc_filter.o")
    cg = ebpf.load_collection(BPF_DIR / "cgroup_egress.o")
    tp = ebpf.load_collection(BPF_DIR / "tp_counter.o")
    try:
        with (
            ebpf.attach_tcx(tc.programs["tc_ingress"], b.name, "egress", netns=b.ns.path) as l1,
            ebpf.attach_cgroup(cg.programs["cg_egress"], cgroup.path, "ingress") as l2,
            ebpf.attach_tracepoint(
                tp.programs["count_getppid"], "syscalls", "sys_enter_getppid"
            ) as l3,
        ):
            code, out, err = run_cli("status", "--all", "-o", "json", *where)
            assert code == 0, err
            hooks = json.loads(out)["hooks"]
            assert hooks["problems"] == []
            mine = {(h["hook"], h["target"], h["collection"]) for h in hooks["hooks"] if h["owned"]}
            assert mine == {
                ("xdp", b.name, "net"),
                ("tcx/ingress", b.name, "filter"),
                ("cgroup/egress", str(cgroup.path), "cg"),
                ("tracepoint", "sys_enter_getppid", "tp"),
            }
            foreign = {
                (h["hook"], h["target"], h["program_id"], h["link_id"])
                for h in hooks["hooks"]
                if not h["owned"]
            }
            assert ("tcx/egress", b.name, tc.programs["tc_ingress"].id, l1.id) in foreign
            assert (
                "cgroup/ingress",
                str(cgroup.path),
                cg.programs["cg_egress"].id,
                l2.id,
            ) in foreign
            assert (
                "tracepoint",
                "sys_enter_getppid",
                tp.programs["count_getppid"].id,
                l3.id,
            ) in foreign
            xdp = next(h for h in hooks["hooks"] if h["hook"] == "xdp" and h["target"] == b.name)
            assert xdp["netns"] == str(b.ns.path) and xdp["detail"] == "generic"
            # the human form: one line per program, owned or foreign
            code, out, _ = run_cli("status", "--all", *where)
            assert code == 0
            lines = out.split("On the hooks bpforch manages:\n", 1)[1].splitlines()
            assert lines[0].split() == ["HOOK", "TARGET", "PROGRAM", "LINK", "OWNER"]
            egress = [line for line in lines if line.strip().startswith("tcx/egress")]
            assert len(egress) == 1 and egress[0].endswith("foreign"), egress
            assert f" {l1.id} " in egress[0]
            ingress = [line for line in lines if line.strip().startswith("tcx/ingress")]
            assert len(ingress) == 1 and ingress[0].endswith("owned: filter")
    finally:
        for coll in (tc, cg, tp):
            coll.close()
        assert run_cli("destroy", "--all", *where)[0] == 0


def test_a_namespace_the_record_names_that_is_gone(
    veth: VethPair, pin_dir: Path, tmp_path: Path
) -> None:
    b = veth.b
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "x.yaml").write_text(
        "apiVersion: bpforch.dev/v1\nkind: Collection\nmetadata: {name: net}\n"
        f"spec:\n  object: {BPF_DIR / 'xdp_counter.o'}\n  attach:\n"
        f"    - {{program: xdp_count, xdp: {{interface: {b.name}, netns: {b.ns.path}}}}}\n"
    )
    where = ["--bpffs-root", str(pin_dir / "root"), "--state-dir", str(tmp_path / "state")]
    assert run_cli("apply", str(tmp_path / "m"), *where)[0] == 0
    try:
        veth.delete()
        code, out, _ = run_cli("status", "--all", *where)
        assert code == 0
        assert f"  warning: network namespace {b.ns.path}: gone" in out.splitlines()
    finally:
        assert run_cli("destroy", "--all", *where)[0] == 0
