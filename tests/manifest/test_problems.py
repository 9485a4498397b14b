"""Bad manifests: each case names the exact problems expected (file, line, column, field
path and a message fragment), and nothing else may be reported."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from orchestrator.manifest import ManifestError, ManifestProblem, load_manifests
from tests.netns import CGROUP2_ROOT

from .conftest import Write

# Lines 1-5 of most cases; what a case adds starts at line 6.
H = """\
apiVersion: bpforch.dev/v1
kind: Collection
metadata: {name: net}
spec:
  object: ../objs/net.o
"""

OWNER = """\
apiVersion: bpforch.dev/v1
kind: Collection
metadata: {name: owner}
spec:
  object: ../objs/owner.o
"""


def user(name: str = "user", obj: str = "user.o", source: str = "owner", extra: str = "") -> str:
    return f"""\
apiVersion: bpforch.dev/v1
kind: Collection
metadata: {{name: {name}}}
spec:
  object: ../objs/{obj}
  maps:
    shared_stats: {{from: {{collection: {source}{extra}}}}}
"""


@dataclass
class Case:
    id: str
    files: dict[str, str]  # relative name -> YAML text (the first is the one passed if one)
    # (file, line, column, field, message fragment[, hint fragment])
    want: list[tuple[str, int, int, str, str] | tuple[str, int, int, str, str, str]]
    paths: list[str] = field(default_factory=lambda: ["m"])


def one(
    id: str, text: str, *want: tuple[int, int, str, str] | tuple[int, int, str, str, str]
) -> Case:
    return Case(id, {"m/a.yaml": text}, [("m/a.yaml", *w) for w in want])  # type: ignore[misc]


CASES = [
    # ------------------------------------------------------------------ YAML
    one(
        "yaml-syntax",
        H + "  maps: {counters: {pin: true}\n",
        (7, 1, "", "invalid YAML", "started at line 6, column 9"),
    ),
    one(
        "duplicate-key",
        H + "  maps:\n    counters: {pin: true, pin: false}\n",
        (7, 27, "spec.maps.counters.pin", "duplicate key 'pin' (first at line 7)"),
    ),
    one(
        "merge-key",
        H + "  maps:\n    counters:\n      <<: {pin: true}\n",
        (8, 7, "spec.maps.counters", "merge keys (<<) are not supported"),
    ),
    one("not-a-mapping", "- a\n- b\n", (1, 1, "", "a manifest must be a mapping, got a list")),
    one(
        "recursive-alias",
        H + "  programs: &p [*p]\n",
        (6, 13, "spec.programs[0]", "recursive alias"),
    ),
    one(
        "alias-bomb",
        "a: &a [1,1,1,1,1,1,1,1,1,1]\n"
        + "".join(
            f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
            for p, c in zip("abcdef", "bcdefg", strict=True)
        ),
        (1, 1, "", "document expands to more than 100000 nodes"),
    ),
    one(
        "wrong-api-version",
        H.replace("bpforch.dev/v1", "bpforch/v2"),
        (
            1,
            13,
            "apiVersion",
            "unknown apiVersion 'bpforch/v2'",
            "this bpforch reads bpforch.dev/v1",
        ),
    ),
    one(
        "wrong-kind",
        H.replace("kind: Collection", "kind: Program"),
        (2, 7, "kind", "unknown kind 'Program'"),
    ),
    # ------------------------------------------------------------------ schema
    one(
        "unknown-field-typo",
        H + "  maps:\n    counters: {max_entires: 8}\n",
        (
            7,
            16,
            "spec.maps.counters.max_entires",
            "unknown field 'max_entires'",
            "did you mean 'max_entries'?",
        ),
    ),
    one(
        "unknown-top-level-field",
        H + "status: {}\n",
        (6, 1, "status", "unknown field 'status'", "allowed: apiVersion, kind, metadata, spec"),
    ),
    one(
        "not-an-integer",
        H + "  maps:\n    counters: {max_entries: abc}\n",
        (7, 29, "spec.maps.counters.max_entries", "expected an integer, got 'abc'"),
    ),
    one(
        "max-entries-zero",
        H + "  maps:\n    counters: {max_entries: 0}\n",
        (7, 29, "spec.maps.counters.max_entries", "expected at least 1, got 0"),
    ),
    one(
        "bool-for-integer",
        H + "  maps:\n    counters: {max_entries: true}\n",
        (7, 29, "spec.maps.counters.max_entries", "expected an integer, got true"),
    ),
    one(
        "name-not-dns-label",
        H.replace("name: net", "name: Web_1"),
        (3, 18, "metadata.name", "'Web_1' is not a DNS label"),
    ),
    one(
        "name-too-long",
        H.replace("name: net", "name: " + "a" * 64),
        (3, 18, "metadata.name", "is longer than 63 characters"),
    ),
    one(
        "missing-object",
        H.replace("  object: ../objs/net.o\n", "  programs: [x]\n"),
        (4, 1, "spec.object", "missing required field"),
    ),
    one(
        "missing-metadata-and-spec",
        "apiVersion: bpforch.dev/v1\nkind: Collection\n",
        (1, 1, "metadata", "missing required field"),
        (1, 1, "spec", "missing required field"),
    ),
    one(
        "attachment-without-target",
        H + "  attach:\n    - {program: xdp_count}\n",
        (7, 7, "spec.attach[0]", "expected exactly one of xdp, tc, cgroup, tracepoint"),
    ),
    one(
        "attachment-with-two-targets",
        H + "  attach:\n    - program: xdp_count\n      xdp: {interface: a}\n"
        "      tc: {interface: a, direction: ingress}\n",
        (9, 7, "spec.attach[0]", "only one of xdp, tc may be given", "separate entries"),
    ),
    one(
        "enum-typo",
        H + "  attach:\n    - {program: tc_ingress, tc: {interface: a, direction: ingres}}\n",
        (
            7,
            59,
            "spec.attach[0].tc.direction",
            "expected one of ingress, egress, got 'ingres'",
            "did you mean 'ingress'?",
        ),
    ),
    one(
        "xdp-mode-unknown",
        H + "  attach:\n    - {program: xdp_count, xdp: {interface: a, mode: turbo}}\n",
        (7, 54, "spec.attach[0].xdp.mode", "expected one of auto, native, generic, offload"),
    ),
    one(
        "xdp-take-over-not-boolean",
        H + "  attach:\n    - {program: xdp_count, xdp: {interface: a, take_over: yes please}}\n",
        (7, 59, "spec.attach[0].xdp.take_over", "expected true or false"),
    ),
    one(
        "cgroup-attach-unknown",
        H + "  attach:\n    - {program: cg_egress, cgroup: {path: /x, attach: egres}}\n",
        (7, 55, "spec.attach[0].cgroup.attach", "got 'egres'", "did you mean 'egress'?"),
    ),
    one(
        "interface-name-too-long",
        H + "  attach:\n    - {program: xdp_count, xdp: {interface: a-very-long-name0}}\n",
        (7, 45, "spec.attach[0].xdp.interface", "'a-very-long-name0' is not an interface name"),
    ),
    one(
        "from-collection-and-pinned",
        H + "  maps:\n    counters: {from: {collection: a, pinned: /sys/fs/bpf/x}}\n",
        (7, 38, "spec.maps.counters.from", "only one of collection, pinned may be given"),
    ),
    one(
        "from-map-without-collection",
        H + "  maps:\n    counters: {from: {map: x, pinned: /sys/fs/bpf/x}}\n",
        (7, 23, "spec.maps.counters.from.map", "'map' needs 'collection'"),
    ),
    one(
        "duplicate-program-binding",
        H + "  programs: [xdp_count, tc_ingress, xdp_count]\n",
        (6, 37, "spec.programs[2]", "duplicate 'xdp_count'"),
    ),
    one(
        "empty-program-binding",
        H + "  programs: []\n",
        (6, 13, "spec.programs", "expected at least 1 item(s)"),
    ),
    one(
        "constant-null",
        H + "  constants: {verdict: null}\n",
        (6, 24, "spec.constants.verdict", "got nothing (null)"),
    ),
    one(
        "constant-name-not-identifier",
        H + "  constants: {bad-name: 1}\n",
        (6, 15, "spec.constants.bad-name", "name 'bad-name' is not a C identifier"),
    ),
    one(
        "sha256-not-hex",
        H + "  sha256: xyz\n",
        (6, 11, "spec.sha256", "'xyz' is not a sha256 digest"),
    ),
    one(
        "label-value-not-string",
        H.replace("{name: net}", "{name: net, labels: {n: 1}}"),
        (3, 35, "metadata.labels.n", "expected a string, got 1"),
    ),
    one(
        "uprobe-offset-negative",
        H + "  attach:\n    - {program: probe, uprobe: {path: /bin/true, offset: -1}}\n",
        (7, 58, "spec.attach[0].uprobe.offset", "expected at least 0, got -1"),
    ),
    one(
        "null-attachment-and-target",
        H + "  attach: [null, {program: xdp_count, xdp: null}]\n",
        (6, 12, "spec.attach[0]", "expected a mapping, got nothing (null)"),
        (6, 44, "spec.attach[1].xdp", "expected a mapping, got nothing (null)"),
    ),
    one(
        "constant-float-and-date",
        H + "  constants: {verdict: 1.5, version: 2024-01-01}\n",
        (6, 24, "spec.constants.verdict", "got 1.5"),
        (6, 38, "spec.constants.version", "got a date"),
    ),
    one(
        "max-entries-above-u32",
        H + "  maps: {counters: {max_entries: 4294967296}}\n",
        (6, 34, "spec.maps.counters.max_entries", "expected at most 4294967295"),
    ),
    one(
        "spec-null",
        H.replace("spec:\n  object: ../objs/net.o\n", "spec:\n"),
        (4, 6, "spec", "expected a mapping, got nothing (null)"),
    ),
    # ------------------------------------------------------------------ objects
    one(
        "object-missing",
        H.replace("net.o", "gone.o"),
        (5, 11, "spec.object", "cannot read object", "relative to the manifest's directory"),
    ),
    one(
        "object-not-elf",
        H.replace("../objs/net.o", "a.yaml"),
        (5, 11, "spec.object", "not an ELF file", "eBPF object"),
    ),
    one(
        "sha256-mismatch",
        H + "  sha256: " + "ab" * 32 + "\n",
        (6, 11, "spec.sha256", "has sha256", "update sha256"),
    ),
    one(
        "unknown-program-binding",
        H + "  programs: [xdp_cont]\n",
        (
            6,
            14,
            "spec.programs[0]",
            "object has no program 'xdp_cont'",
            "did you mean 'xdp_count'?",
        ),
    ),
    one(
        "program-binding-cannot-load",
        H.replace("net.o", "unresolved.o") + "  programs: [counted, asm_const]\n",
        (
            6,
            23,
            "spec.programs[1]",
            "program 'asm_const' cannot be loaded: instruction 0: symbol MY_CONST is defined "
            "in no section of the object",
            "remove it from spec.programs",
        ),
    ),
    one(
        "program-by-default-cannot-load",
        H.replace("net.o", "unresolved.o"),
        (
            5,
            11,
            "spec.object",
            "program 'asm_const' cannot be loaded: instruction 0: symbol MY_CONST",
            "list the programs to load in spec.programs",
        ),
    ),
    one(
        "unknown-map",
        H + "  maps:\n    countres: {pin: true}\n",
        (7, 5, "spec.maps.countres", "object has no map 'countres'", "did you mean 'counters'?"),
    ),
    one(
        "unknown-constant",
        H + "  constants: {verdikt: 1}\n",
        (
            6,
            15,
            "spec.constants.verdikt",
            "object has no constant 'verdikt'",
            "did you mean 'verdict'?",
        ),
    ),
    one(
        "constant-does-not-fit",
        H + "  constants: {small: 300, verdict: -1}\n",
        (6, 22, "spec.constants.small", "300 does not fit __u8"),
        (6, 36, "spec.constants.verdict", "-1 does not fit __u32"),
    ),
    one(
        "constant-string-too-long",
        H + "  constants: {greeting: way too long}\n",
        (6, 25, "spec.constants.greeting", "do not fit char[8]"),
    ),
    one(
        "constant-wrong-kind",
        H + "  constants: {version: [1, 2]}\n",
        (6, 24, "spec.constants.version", "__u64"),
    ),
    one(
        "attach-unknown-program",
        H + "  attach:\n    - {program: xdp_cnt, xdp: {interface: a}}\n",
        (7, 17, "spec.attach[0].program", "object has no program 'xdp_cnt'"),
    ),
    one(
        "attach-program-not-bound",
        H + "  programs: [xdp_count]\n  attach:\n    - {program: tc_ingress, "
        "tc: {interface: a, direction: ingress}}\n",
        (
            8,
            17,
            "spec.attach[0].program",
            "program 'tc_ingress' is not loaded",
            "add it to spec.programs",
        ),
    ),
    one(
        "xdp-program-on-tc",
        H + "  attach:\n    - {program: xdp_count, tc: {interface: a, direction: ingress}}\n",
        (
            7,
            28,
            "spec.attach[0].tc",
            "xdp, attach type xdp (section xdp), not a tc program",
            'SEC("tc")',
        ),
    ),
    one(
        "tc-program-on-xdp",
        H + "  attach:\n    - {program: tc_ingress, xdp: {interface: a}}\n",
        (7, 29, "spec.attach[0].xdp", "not an xdp program"),
    ),
    one(
        "tcx-ingress-program-on-egress",
        H + "  attach:\n    - {program: tcx_in_only, tc: {interface: a, direction: egress}}\n",
        (7, 30, "spec.attach[0].tc", "does not fit direction egress"),
    ),
    one(
        "skb-program-on-connect4",
        H + "  attach:\n    - {program: cg_egress, cgroup: {path: /x, attach: connect4}}\n",
        (
            7,
            28,
            "spec.attach[0].cgroup",
            "cgroup connect4 needs cgroup_sock_addr",
            'SEC("cgroup/connect4")',
        ),
    ),
    one(
        "tracepoint-program-on-netns",
        H + "  attach:\n    - {program: tp_getppid, netns: {}}\n",
        (7, 29, "spec.attach[0].netns", "needs sk_lookup or flow_dissector"),
    ),
    one(
        "xdp-program-as-uprobe",
        H + "  attach:\n    - {program: xdp_count, uprobe: {path: /bin/true}}\n",
        (7, 28, "spec.attach[0].uprobe", "not a uprobe program"),
    ),
    one(
        "data-section-resized",
        H + "  maps:\n    .rodata: {max_entries: 2}\n",
        (7, 28, 'spec.maps[".rodata"].max_entries', ".rodata is a data section"),
    ),
    one(
        "ringbuf-size",
        H + "  maps:\n    events: {max_entries: 5000}\n",
        (7, 27, "spec.maps.events.max_entries", "ring buffer size 5000"),
    ),
    # ------------------------------------------------------------------ maps
    one(
        "preserve-without-pin",
        H + "  maps:\n    counters: {preserve: true, pin: false}\n",
        (7, 37, "spec.maps.counters.pin", "a preserved map is pinned"),
    ),
    one(
        "pinned-not-on-bpffs",
        H + "  maps:\n    counters: {from: {pinned: /sys/fs/bpf/../../../etc/x}}\n",
        (7, 31, "spec.maps.counters.from.pinned", "'/etc/x' is not under /sys/fs/bpf"),
    ),
    one(
        "pinned-relative",
        H + "  maps:\n    counters: {from: {pinned: x/y}}\n",
        (7, 31, "spec.maps.counters.from.pinned", "'x/y' is not absolute"),
    ),
    one(
        "from-with-pin",
        H + "  maps:\n    counters: {pin: true, from: {pinned: /sys/fs/bpf/x}}\n",
        (7, 16, "spec.maps.counters.pin", "'pin' does not apply to a substituted map"),
    ),
    one(
        "substitute-unused-map",
        H + "  maps:\n    unused: {from: {pinned: /sys/fs/bpf/x}}\n",
        (7, 14, "spec.maps.unused.from", "used by no program"),
    ),
    one(
        "substitute-from-self",
        H + "  maps:\n    counters: {from: {collection: net}}\n",
        (7, 35, "spec.maps.counters.from.collection", "cannot substitute its own map"),
    ),
    Case(
        "substitute-unknown-collection",
        {"m/a.yaml": OWNER, "m/b.yaml": user(source="ownr")},
        [
            (
                "m/b.yaml",
                7,
                39,
                "spec.maps.shared_stats.from.collection",
                "no collection named 'ownr'",
                "did you mean 'owner'?",
            )
        ],
    ),
    Case(
        "substitute-unknown-map",
        {"m/a.yaml": OWNER, "m/b.yaml": user(extra=", map: stats")},
        [
            (
                "m/b.yaml",
                7,
                51,
                "spec.maps.shared_stats.from.map",
                "collection owner has no map 'stats'",
            )
        ],
    ),
    Case(
        "substitute-incompatible-type",
        {"m/a.yaml": OWNER, "m/b.yaml": user(obj="hash_user.o")},
        [
            (
                "m/b.yaml",
                7,
                20,
                "spec.maps.shared_stats.from",
                "incompatible with map shared_stats of owner: map shared_stats has type array, "
                "spec wants hash",
            )
        ],
    ),
    Case(
        "substitute-incompatible-override",
        {"m/a.yaml": OWNER + "  maps:\n    shared_stats: {max_entries: 8}\n", "m/b.yaml": user()},
        [("m/b.yaml", 7, 20, "spec.maps.shared_stats.from", "has max entries 8, spec wants 4")],
    ),
    Case(
        "dependency-cycle",
        {
            "m/a.yaml": user("c1", source="c2"),
            "m/b.yaml": user("c2", source="c3"),
            "m/c.yaml": user("c3", source="c1"),
        },
        [
            (
                "m/a.yaml",
                7,
                39,
                "spec.maps.shared_stats.from.collection",
                "dependency cycle: c1 -> c2 -> c3 -> c1",
            )
        ],
    ),
    # ------------------------------------------------------------------ across collections
    Case(
        "duplicate-collection-name",
        {"m/a.yaml": OWNER, "m/sub/b.yaml": OWNER.replace("../objs/owner.o", "../../objs/user.o")},
        [
            ("m/a.yaml", 3, 18, "metadata.name", "declared twice (also at {m}/sub/b.yaml:3:18)"),
            ("m/sub/b.yaml", 3, 18, "metadata.name", "declared twice (also at {m}/a.yaml:3:18)"),
        ],
    ),
    Case(
        "two-xdp-programs-on-one-interface",
        {
            "m/a.yaml": H + "  attach:\n    - {program: xdp_count, xdp: {interface: veth0}}\n",
            "m/b.yaml": H.replace("name: net", "name: net2")
            + "  attach:\n    - {program: xdp_other, xdp: {interface: veth0, mode: native}}\n"
            + "    - {program: xdp_other, xdp: {interface: veth0, netns: blue}}\n",
        },
        [
            (
                "m/b.yaml",
                7,
                45,
                "spec.attach[0].xdp.interface",
                "interface veth0 already has an XDP program (collection net at {m}/a.yaml:7:7)",
            )
        ],
    ),
    one(
        "identical-attachments",
        H + "  attach:\n    - {program: tp_getppid, tracepoint: {group: syscalls, name: x}}\n"
        "    - {program: tp_getppid, tracepoint: {name: x, group: syscalls}}\n",
        (8, 7, "spec.attach[1]", "same attachment as spec.attach[0]"),
    ),
    one(
        "tc-before-and-after",
        H + "  attach:\n    - {program: tc_ingress, tc: {interface: a, direction: ingress}}\n"
        "    - {program: tc_second, tc: {interface: a, direction: ingress, before: tc_ingress,"
        " after: tc_ingress}}\n",
        (8, 87, "spec.attach[1].tc.after", "give either before or after, not both"),
    ),
    one(
        "tc-before-unknown-peer",
        H + "  attach:\n    - {program: tc_ingress, tc: {interface: a, direction: ingress}}\n"
        "    - {program: tc_second, tc: {interface: a, direction: egress, before: tc_ingress}}\n",
        (
            8,
            74,
            "spec.attach[1].tc.before",
            "tc_ingress is not attached at the same hook (tc egress on a)",
        ),
    ),
    one(
        "tc-ordering-circle",
        H + "  attach:\n"
        "    - {program: tc_ingress, tc: {interface: a, direction: ingress, after: tc_second}}\n"
        "    - {program: tc_second, tc: {interface: a, direction: ingress, before: tc_ingress}}\n",
        (
            7,
            75,
            "spec.attach[0].tc.after",
            "tc ordering goes round in a circle: tc_ingress -> tc_second -> tc_ingress",
        ),
    ),
    one(
        "tc-after-itself",
        H + "  attach:\n    - {program: tc_second, tc: {interface: a, direction: ingress, "
        "after: tc_second}}\n",
        (7, 74, "spec.attach[0].tc.after", "cannot be after itself"),
    ),
    one(
        "cgroup-relative-escape",
        H + "  attach:\n    - {program: cg_egress, cgroup: {path: ../../x, attach: egress}}\n",
        (7, 43, "spec.attach[0].cgroup.path", f"leaves {CGROUP2_ROOT}"),
    ),
    one(
        "uprobe-retprobe-mismatch",
        H + "  attach:\n    - {program: probe, uprobe: {path: /bin/true, retprobe: true}}\n",
        (7, 24, "spec.attach[0].uprobe", "but retprobe is true", "set retprobe: false"),
    ),
    one(
        "tp-btf-other-tracepoint",
        H + "  attach:\n    - {program: btf_sched, raw_tracepoint: {name: sched_wakeup}}\n",
        (
            7,
            28,
            "spec.attach[0].raw_tracepoint",
            "is bound to tracepoint sched_switch",
            "use name: sched_switch",
        ),
    ),
    one(
        "no-autoload-program-not-listed",
        H + "  attach:\n    - {program: xdp_manual, xdp: {interface: a}}\n",
        (
            7,
            17,
            "spec.attach[0].program",
            "program 'xdp_manual' is not loaded",
            "loads only when listed in spec.programs",
        ),
    ),
    one(
        "preserve-rodata",
        H + "  maps:\n    .rodata: {preserve: true}\n",
        (7, 25, 'spec.maps[".rodata"].preserve', ".rodata holds the constants"),
    ),
    one(
        "yaml-tag-on-mapping",
        H + "  maps: !!set {counters}\n",
        (6, 9, "spec.maps", "unsupported YAML tag tag:yaml.org,2002:set"),
    ),
    one(
        "yaml-tag-on-scalar",
        H + "  constants: {verdict: !!python/name:os.system x}\n",
        (6, 24, "spec.constants.verdict", "invalid value"),
    ),
    Case(
        "invalid-owner-reported-once",
        {"m/a.yaml": OWNER.replace("spec:", "spec:\n  programz: [x]"), "m/b.yaml": user()},
        [
            (
                "m/a.yaml",
                5,
                3,
                "spec.programz",
                "unknown field 'programz'",
                "did you mean 'programs'?",
            )
        ],
    ),
    one(
        "netns-dot-dot",
        H + "  attach:\n    - {program: lookup, netns: {path: ..}}\n",
        (7, 39, "spec.attach[0].netns.path", "'..' is not a network namespace"),
    ),
    one(
        "interface-dot-dot",
        H + "  attach:\n    - {program: xdp_count, xdp: {interface: ..}}\n",
        (7, 45, "spec.attach[0].xdp.interface", "'..' is not an interface name"),
    ),
    # ------------------------------------------------------------------ files
    Case(
        "path-missing",
        {"m/a.yaml": H},
        [("nope", 0, 0, "", "no such file or directory")],
        paths=["m", "nope"],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_manifest(case: Case, write: Write, tree: Path) -> None:
    for name, text in case.files.items():
        write(name, text)
    with pytest.raises(ManifestError) as info:
        load_manifests([tree / p for p in case.paths])
    got = info.value.problems
    m = str(tree / "m")
    want = []
    for file, line, col, fld, fragment, *hint in case.want:
        want.append((str(tree / file), line, col, fld, fragment.format(m=m), *hint))
    assert len(got) == len(want), "\n".join(str(p) for p in got)
    for p, w in zip(got, want, strict=True):
        assert (str(p.source.file), p.source.line, p.source.column, p.field) == w[:4], str(p)
        assert w[4] in p.message, str(p)
        if len(w) > 5:
            assert w[5] in p.hint, str(p)
    # str() renders one problem per line, file:line:col: field: message (hint)
    lines = str(info.value).splitlines()
    assert lines == [str(p) for p in got]


def test_cases_are_many_and_distinct() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


def test_problem_rendering() -> None:
    from orchestrator.manifest import Source

    p = ManifestProblem(
        Source(Path("/m/a.yaml"), 7, 16), "spec.maps.counters", "unknown field 'x'", "hint"
    )
    assert str(p) == "/m/a.yaml:7:16: spec.maps.counters: unknown field 'x' (hint)"
    assert (
        str(ManifestProblem(Source(Path("/m/a.yaml")), "", "no such file"))
        == "/m/a.yaml: no such file"
    )
    assert p.to_dict() == {
        "file": "/m/a.yaml",
        "line": 7,
        "column": 16,
        "field": "spec.maps.counters",
        "message": "unknown field 'x'",
        "hint": "hint",
    }


def test_manifest_error_survives_pickling() -> None:
    import pickle

    from orchestrator.manifest import Source

    err = ManifestError(
        [
            ManifestProblem(Source(Path("/m/b.yaml"), 2, 1), "kind", "unknown kind 'X'"),
            ManifestProblem(Source(Path("/m/a.yaml"), 9, 3), "spec", "missing required field", "h"),
        ]
    )
    assert [p.source.file.name for p in err.problems] == ["a.yaml", "b.yaml"]  # sorted
    copy = pickle.loads(pickle.dumps(err))
    assert copy.problems == err.problems and str(copy) == str(err)
