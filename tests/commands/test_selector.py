"""``--selector`` on plan, apply, status and destroy, through the CLI against the real kernel:
only the selected collections are touched, a selection that would break a ``from`` is
refused naming both, and a malformed selector is a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.commands.conftest import Cli
from tests.conftest import BPF_DIR
from tests.netns import VethPair

pytestmark = pytest.mark.kernel


def write_all(
    cli: Cli, veth: VethPair, version: int = 1, owner: Path = BPF_DIR / "shared_owner.o"
) -> None:
    cli.write(
        "xdp-counter",
        f"""\
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {{name: xdp-counter, labels: {{team: net}}}}
        spec:
          object: {BPF_DIR}/xdp_counter.o
          constants: {{version: {version}}}
          attach:
            - program: xdp_count
              xdp: {{interface: {veth.b.name}, netns: {veth.b.ns.path}, mode: generic}}
        """,
    )
    cli.write(
        "shared",
        f"""\
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {{name: shared-owner, labels: {{team: obs, role: owner}}}}
        spec:
          object: {owner}
          maps:
            shared_stats: {{pin: true}}
          attach:
            - program: count_getpid
              tracepoint: {{group: syscalls, name: sys_enter_getpid}}
        ---
        apiVersion: bpforch.dev/v1
        kind: Collection
        metadata: {{name: shared-user, labels: {{team: obs, role: user}}}}
        spec:
          object: {BPF_DIR}/shared_user.o
          maps:
            shared_stats:
              from: {{collection: shared-owner, map: shared_stats}}
          attach:
            - program: count_gettid
              tracepoint: {{group: syscalls, name: sys_enter_gettid}}
        """,
    )


def names(cli: Cli, *selector: str) -> set[str]:
    status = cli.json("status", *selector)
    return {c["name"] for c in status["collections"]}  # type: ignore[index]


def program_ids(cli: Cli, name: str) -> dict[str, int]:
    (coll,) = cli.json("status", name)["collections"]  # type: ignore[index]
    return {p["name"]: p["id"] for p in coll["programs"]}


def test_selector_filters_plan_apply_status_and_destroy(cli: Cli, veth: VethPair) -> None:
    write_all(cli, veth)
    m = str(cli.manifests)
    out = cli("plan", m, "-l", "team=net").stdout
    assert "+ collection xdp-counter" in out and "shared" not in out
    out = cli.ok("apply", m, "--selector", "team=net")
    assert "Apply complete! 4 added" in out
    assert names(cli) == {"xdp-counter"}
    # a selector that leaves the applied one out: the others are applied, it is untouched
    ids = program_ids(cli, "xdp-counter")
    cli.ok("apply", m, "-l", "team!=net")
    assert names(cli) == {"xdp-counter", "shared-owner", "shared-user"}
    assert program_ids(cli, "xdp-counter") == ids
    assert names(cli, "-l", "team=obs") == {"shared-owner", "shared-user"}
    assert names(cli, "-l", "role=user,team=obs") == {"shared-user"}
    assert names(cli, "-l", "role", "-l", "!role") == set()
    assert cli.ok("status", "-l", "role=nobody") == (
        "No applied collection matches the selector role=nobody.\n"
    )
    out = cli.ok("status", "-l", "role=owner")
    assert out.startswith("shared-owner: Ready") and "xdp-counter" not in out

    # a change to every collection, planned for one
    write_all(cli, veth, version=2)
    proc = cli("plan", m, "-l", "team=net")
    assert proc.returncode == 2
    assert "constant version: 1 → 2" in proc.stdout and "shared" not in proc.stdout
    cli.ok("apply", m, "-l", "team=net")
    assert cli("plan", m, "-l", "team=net").returncode == 0

    # destroy by selector
    out = cli.ok("destroy", "--dry-run", "-l", "team=net")
    assert "- collection xdp-counter: destroy" in out and "shared" not in out
    out = cli.ok("destroy", "-l", "team=net")
    assert "Destroy complete! 1 collection, 4 objects destroyed" in out
    assert names(cli) == {"shared-owner", "shared-user"}


def test_a_selection_that_breaks_a_dependency_is_refused(
    cli: Cli, veth: VethPair, tmp_path: Path
) -> None:
    write_all(cli, veth)
    m = str(cli.manifests)
    # the user without its owner, which is not applied
    err = cli.fails("apply", m, "-l", "role=user")
    assert (
        "collection shared-user (" in err
        and "map shared_stats: substitutes a map of collection shared-owner, which the "
        "selector role=user leaves out and which is not applied (select shared-owner too, or "
        "apply it first)"
        in err
    )
    assert names(cli) == set()
    cli.ok("apply", m, "-l", "team=obs")
    # destroying the owner alone would strand the user
    err = cli.fails("destroy", "-l", "role=owner")
    assert "shared-owner: collection shared-user uses its maps (destroy shared-user too" in err
    # a new owner object recreates the map the user takes: the user must come along
    obj = tmp_path / "shared_owner.o"
    obj.write_bytes((BPF_DIR / "shared_owner.o").read_bytes() + b"\0")
    write_all(cli, veth, owner=obj)
    err = cli.fails("apply", m, "-l", "role=owner")
    assert (
        "map shared_stats is recreated, but collection shared-user uses it (map shared_stats) "
        "and the selector role=owner leaves shared-user out: it would keep the old map (select "
        "shared-user too)" in err
    )
    out = cli.ok("apply", m, "-l", "team=obs")
    assert "Apply complete!" in out
    assert names(cli) == {"shared-owner", "shared-user"}


def test_selector_errors(cli: Cli, veth: VethPair) -> None:
    write_all(cli, veth)
    m = str(cli.manifests)
    for verb in (["plan", m], ["apply", m], ["status"], ["destroy"]):
        err = cli.fails(*verb, "-l", "team=a=b")
        assert err == (
            "error: selector 'team=a=b': 'a=b' is not a label value (letters, digits, '-', '_' "
            "and '.', at most 63, beginning and ending with a letter or digit, or empty)\n"
        ), verb
    err = cli.fails("plan", m, "-l", "team=nobody")
    assert err.endswith(
        "error: selector team=nobody: matches none of the 3 collections in the manifests "
        "(see their metadata.labels)\n"
    )
    err = cli.fails("destroy", "xdp-counter", "-l", "team=net")
    assert err == "error: name the collections to destroy, or pass --all or --selector (not both)\n"
    # nothing applied matches: nothing to do
    out = cli.ok("destroy", "-l", "team=nobody")
    assert out == "No applied collection matches the selector team=nobody.\n"
    assert names(cli) == set()


def test_status_names_attachments_by_program_and_hook(cli: Cli, veth: VethPair) -> None:
    write_all(cli, veth)
    cli.ok("apply", str(cli.manifests), "-l", "team=net")
    out = cli.ok("status")
    link = cli.json("status")["collections"][0]["attachments"][0]  # type: ignore[index]
    assert link["title"] == f"xdp_count → xdp {veth.b.name} (netns {veth.b.ns.name})"
    assert f"  attachment {link['title']}: link {link['link_id']}, attached\n" in out
