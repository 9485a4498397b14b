"""Plans that say what changes, through the CLI against the real kernel: constants read back
from the live generation (old → new), the object digest, max_entries, attachment options,
preserved maps (``=``) and one short line per attachment, on a veth pair the test creates."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tests.commands.conftest import Cli
from tests.conftest import BPF_DIR
from tests.netns import VethPair

pytestmark = pytest.mark.kernel


def xdp_counter(
    cli: Cli, veth: VethPair, obj: Path, *, version: int, mode: str, labels: str = "{team: net}"
) -> None:
    cli.write(
        "xdp-counter",
        f"""\
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {{name: xdp-counter, labels: {labels}}}
        spec:
          object: {obj}
          constants: {{version: {version}}}
          maps:
            counters: {{preserve: true}}
          attach:
            - program: xdp_count
              xdp: {{interface: {veth.b.name}, netns: {veth.b.ns.path}, mode: {mode}}}
        """,
    )


def tp_counter(cli: Cli, max_entries: int | None) -> None:
    size = f"max_entries: {max_entries}" if max_entries is not None else ""
    cli.write(
        "tp-counter",
        f"""\
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {{name: tp-counter}}
        spec:
          object: {BPF_DIR}/tp_counter.o
          maps:
            calls: {{pin: true, {size}}}
          attach:
            - program: count_getppid
              tracepoint: {{group: syscalls, name: sys_enter_getppid}}
        """,
    )


def plan_json(cli: Cli) -> dict[str, object]:
    """``bpforch plan --output json``, which exits 2: there are changes."""
    proc = cli("plan", str(cli.manifests), "--output", "json")
    assert proc.returncode == 2, proc.stderr
    data = json.loads(proc.stdout)
    assert isinstance(data, dict)
    return data


def test_plan_shows_constants_object_preserved_maps_and_short_attachment_lines(
    cli: Cli, veth: VethPair, tmp_path: Path
) -> None:
    obj = tmp_path / "xdp_counter.o"
    shutil.copy(BPF_DIR / "xdp_counter.o", obj)
    xdp_counter(cli, veth, obj, version=1, mode="generic")
    out = cli.ok("apply", str(cli.manifests))
    ns = veth.b.ns.name
    hook = f"xdp_count → xdp {veth.b.name} (netns {ns})"
    assert f"      + attachment {hook}: new link\n" in out
    status = cli.json("status")
    coll = status["collections"][0]  # type: ignore[index]
    counters = next(m for m in coll["maps"] if m["name"] == "counters")
    link = coll["attachments"][0]["link_id"]
    old_sha = hashlib.sha256(obj.read_bytes()).hexdigest()

    # a new object (same code, other bytes) and a new version
    with obj.open("ab") as f:
        f.write(b"\0")
    new_sha = hashlib.sha256(obj.read_bytes()).hexdigest()
    xdp_counter(cli, veth, obj, version=2, mode="generic")
    proc = cli("plan", str(cli.manifests))
    assert proc.returncode == 2, proc.stderr
    out = proc.stdout
    assert "manifest or object changed" not in out
    assert (
        "  ~ collection xdp-counter: generation 1 -> 2: changed: object, constant version  (" in out
    )
    assert f"        object: sha256:{old_sha[:12]}… → sha256:{new_sha[:12]}…\n" in out
    assert "        constant version: 1 → 2\n" in out
    assert f"      = map counters: preserved, id {counters['id']}\n" in out
    assert (
        f"      ~ attachment {hook}: link {link} switched to the new program in place "
        "(BPF_LINK_UPDATE)\n" in out
    )
    data = plan_json(cli)
    changes = data["changes"]
    assert isinstance(changes, list)
    head = changes[0]
    assert head["diffs"] == [
        {"field": "object", "old": f"sha256:{old_sha}", "new": f"sha256:{new_sha}"},
        {"field": "constant version", "old": 1, "new": 2},
    ]
    kept = next(c for c in changes if c["name"] == "counters")
    assert (kept["op"], kept["reason"]) == ("noop", f"preserved, id {counters['id']}")
    cli.ok("apply", str(cli.manifests))

    # an attachment option: the mode (a re-attach), with its field diff
    xdp_counter(cli, veth, obj, version=2, mode="native")
    proc = cli("plan", str(cli.manifests))
    assert proc.returncode == 2
    assert f"      -/+ attachment {hook}: xdp mode generic -> native: re-attach: link " in (
        proc.stdout
    )
    assert "          mode: generic → native\n" in proc.stdout
    assert "changed: attachments" in proc.stdout
    # the constant that did not change is not shown
    assert "constant version" not in proc.stdout


def test_plan_shows_max_entries(cli: Cli) -> None:
    tp_counter(cli, None)
    cli.ok("apply", str(cli.manifests))
    tp_counter(cli, 8)
    proc = cli("plan", str(cli.manifests))
    assert proc.returncode == 2
    assert "changed: map calls" in proc.stdout
    assert (
        "      -/+ map calls: not preserved: recreated with generation 2, pinned (pin: true)\n"
        "          max_entries: 1 → 8\n" in proc.stdout
    )
    changes = plan_json(cli)["changes"]
    assert isinstance(changes, list)
    calls = next(c for c in changes if c["name"] == "calls")
    assert calls["diffs"] == [{"field": "max_entries", "old": 1, "new": 8}]
    # the constants did not change: none is listed
    assert "diffs" not in changes[0]


def test_status_shows_live_constants_and_labels(cli: Cli, veth: VethPair) -> None:
    xdp_counter(
        cli, veth, BPF_DIR / "xdp_counter.o", version=3, mode="generic", labels="{team: net, a: b}"
    )
    cli.ok("apply", str(cli.manifests))
    out = cli.ok("status")
    # the verdict is the object's own (XDP_PASS), the version the manifest's
    assert "  labels: a=b, team=net\n  constant verdict: 2\n  constant version: 3\n" in out
    coll = cli.json("status")["collections"][0]  # type: ignore[index]
    assert coll["labels"] == {"a": "b", "team": "net"}
    assert coll["constants"] == {"verdict": 2, "version": 3}
    # what the kernel holds, not what the manifest says: a manifest changed but not applied
    # changes nothing in status
    xdp_counter(cli, veth, BPF_DIR / "xdp_counter.o", version=4, mode="generic")
    assert cli.json("status")["collections"][0]["constants"]["version"] == 3  # type: ignore[index]


def test_every_kind_of_constant_is_diffed_and_shown(cli: Cli) -> None:
    def write(constants: str) -> None:
        cli.write(
            "globals",
            f"""\
            apiVersion: bpforch.dev/v1
            kind: Collection
            metadata: {{name: globals}}
            spec:
              object: {BPF_DIR}/globals.o
              constants: {constants}
            """,
        )

    write("{c_s16: -7, c_name: hello, c_point: {x: 1, y: 2}, c_enabled: false}")
    cli.ok("apply", str(cli.manifests))
    (coll,) = cli.json("status")["collections"]  # type: ignore[index]
    # every constant, from both .rodata sections, read back from the kernel
    assert coll["constants"] == {
        "c_u8": 0xAB,
        "c_s16": -7,
        "c_s32": -100,
        "c_u64": 0x1122334455667788,
        "c_name": "hello",
        "c_point": {"x": 1, "y": 2, "tag": coll["constants"]["c_point"]["tag"]},
        "c_table": [10, 20, 30, 40],
        "c_enabled": False,
        "c_extra": 77,
    }
    assert "  constant c_name: hello\n" in cli.ok("status")
    # c_name dropped from the manifest: the object's own value comes back
    write("{c_s16: -8, c_point: {x: 1, y: 2}, c_enabled: false}")
    proc = cli("plan", str(cli.manifests))
    assert proc.returncode == 2
    assert (
        "changed: constant c_name, constant c_s16  (" in proc.stdout
        and "        constant c_name: hello → globals\n        constant c_s16: -7 → -8\n"
        in proc.stdout
    )
