"""``bpforch inspect``: what an object contains, without loading it; ``--manifest`` gives a
manifest that validates once its placeholders are filled in, for every object we have."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.manifest import ManifestError, load_manifests
from orchestrator.manifest.builder import PLACEHOLDER
from orchestrator.manifest.inspection import inspect_object, starter_manifest
from tests.commands.conftest import Cli
from tests.conftest import BPF_DIR
from tests.ebpf.conftest import extract_objects, tool_objects

LIBXDP_DIR = Path("/usr/lib/x86_64-linux-gnu/bpf")
__all__ = ["tool_objects"]  # the fixture, used below

EXTERNS_C = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

extern int LINUX_KERNEL_VERSION __kconfig;
extern const void bpf_prog_active __ksym __weak;
const volatile __u32 answer = 42;
char greeting[8] = "hi";

SEC("cgroup_skb/egress")
int egress(struct __sk_buff *skb)
{
	return LINUX_KERNEL_VERSION > answer && &bpf_prog_active != 0;
}

SEC("sk_lookup")
int lookup(struct bpf_sk_lookup *ctx) { return SK_PASS; }

SEC("raw_tp/sched_switch")
int on_switch(void *ctx) { return 0; }

SEC("uretprobe//bin/true:main")
int on_return(void *ctx) { return 0; }

char LICENSE[] SEC("license") = "GPL";
"""

FILL = {
    "<INTERFACE>": "veth0",
    "<INTERFACE_2>": "veth1",
    "<INTERFACE_3>": "veth2",
    "<CGROUP>": "app",
    "<GROUP>": "syscalls",
    "<TRACEPOINT>": "sys_enter_getpid",
    "<BINARY>": "/bin/true",
    "<SYMBOL>": "main",
    "<MAX_ENTRIES>": "4096",
}


def fill(text: str) -> str:
    out = text
    for placeholder, value in FILL.items():
        out = out.replace(placeholder, value)
    assert PLACEHOLDER.search(out) is None, out
    return out


@pytest.fixture(scope="module")
def opensnoop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    binary = Path("/usr/sbin/opensnoop")
    if not binary.exists():
        pytest.skip("libbpf-tools is not installed")
    [data] = extract_objects(binary.read_bytes())
    path = tmp_path_factory.mktemp("opensnoop") / "opensnoop.bpf.o"
    path.write_bytes(data)
    return path


def test_human_output(cli: Cli) -> None:
    out = cli.ok("inspect", str(BPF_DIR / "xdp_counter.o"))
    lines = out.splitlines()
    assert re.fullmatch(
        rf"{BPF_DIR}/xdp_counter\.o: sha256 [0-9a-f]{{16}}…, license Dual BSD/GPL", lines[0]
    )
    assert [ln.split() for ln in lines[2:4]] == [
        ["programs:"],
        ["NAME", "SECTION", "TYPE", "ATTACH", "TYPE", "TARGET", "INSNS", "FITS"],
    ]
    assert lines[4].split() == ["xdp_count", "xdp", "xdp", "xdp", "-", "40", "xdp"]
    assert "  counters  array  __u32    __u64            4            -            none" in lines
    i = lines.index("constants:")
    assert lines[i + 2].split() == ["verdict", ".rodata", "const", "volatile", "__u32", "2"]
    assert lines[-3:] == ["variables: none", "", "externs: none"]


def test_json_programs_maps_constants_variables_externs(
    cli: Cli, compile_bpf: Callable[..., Path]
) -> None:
    obj = compile_bpf(EXTERNS_C)
    data = cli.json("inspect", str(obj))
    assert isinstance(data, dict)
    progs = {p["name"]: p for p in data["programs"]}
    assert progs["egress"]["fits"] == ["cgroup egress"]
    assert progs["egress"]["type"] == "cgroup_skb"
    assert progs["egress"]["attach_type"] == "cgroup_inet_egress"
    assert progs["lookup"]["fits"] == ["netns"]
    assert progs["on_switch"]["fits"] == ["raw_tracepoint"]
    assert progs["on_switch"]["attach_to"] == "sched_switch"
    assert progs["on_return"]["fits"] == ["uretprobe"]
    assert all(p["instructions"] > 0 and p["unloadable"] is None for p in progs.values())
    assert data["license"] == "GPL"
    assert data["constants"] == [
        {
            "name": "answer",
            "section": ".rodata",
            "type": "const volatile __u32",
            "size": 4,
            "value": 42,
        }
    ]
    assert data["variables"] == [
        {"name": "greeting", "section": ".data", "type": "char[8]", "size": 8, "value": "hi"}
    ]
    externs = {x["name"]: x for x in data["externs"]}
    assert externs["LINUX_KERNEL_VERSION"] == {
        "name": "LINUX_KERNEL_VERSION",
        "kind": "kconfig",
        "type": "int",
        "weak": False,
    }
    assert externs["bpf_prog_active"]["kind"] == "ksym"
    assert externs["bpf_prog_active"]["weak"] is True


def test_json_maps_of_every_type(cli: Cli) -> None:
    data = cli.json("inspect", str(BPF_DIR / "map_types.o"))
    maps = {m["name"]: m for m in data["maps"]}  # type: ignore[index]
    assert maps["m_lpm_trie"] == {
        "name": "m_lpm_trie",
        "type": "lpm_trie",
        "key_size": 8,
        "value_size": 4,
        "key_type": "struct lpm_v4",
        "value_type": "__u32",
        "max_entries": 16,
        "flags": ["no_prealloc"],
        "pinning": "none",
        "inner_map": None,
        "data_section": False,
    }
    assert maps["m_ringbuf"]["key_type"] is None and maps["m_ringbuf"]["max_entries"] == 16384
    assert maps["m_array_of_maps"]["inner_map"] is not None
    assert maps["m_arena"]["flags"] == ["mmapable"]
    [prog] = data["programs"]  # type: ignore[index]
    assert prog["fits"] == []  # a socket filter: attached by whoever owns the socket


def test_tracepoints_come_with_their_targets(cli: Cli, opensnoop: Path) -> None:
    data = cli.json("inspect", str(opensnoop))
    progs = {p["name"]: p for p in data["programs"]}  # type: ignore[index]
    p = progs["tracepoint__syscalls__sys_enter_openat"]
    assert (p["type"], p["attach_to"], p["fits"]) == (
        "tracepoint",
        "syscalls/sys_enter_openat",
        ["tracepoint"],
    )
    consts = {c["name"]: c["value"] for c in data["constants"]}  # type: ignore[index]
    assert consts == {"targ_pid": 0, "targ_tgid": 0, "targ_uid": 0, "targ_failed": False}
    text = cli.ok("inspect", "--manifest", str(opensnoop))
    assert "      tracepoint: {group: syscalls, name: sys_enter_openat}" in text
    assert PLACEHOLDER.search(text) is None  # nothing to fill in: tracepoints name themselves


def starter_objects(compiled: Path, opensnoop: Path) -> list[Path]:
    return [
        *sorted(BPF_DIR.glob("*.o")),
        *sorted(LIBXDP_DIR.glob("*.o")),
        compiled,
        opensnoop,
    ]


def test_starting_manifests_validate_once_filled_in(
    cli: Cli,
    tmp_path: Path,
    compile_bpf: Callable[..., Path],
    opensnoop: Path,
    tool_objects: list[Path],
) -> None:
    objects = starter_objects(compile_bpf(EXTERNS_C), opensnoop) + tool_objects
    assert len(objects) > 60
    for i, obj in enumerate(objects):
        text = starter_manifest(inspect_object(obj))
        path = tmp_path / f"m{i}.yaml"
        path.write_text(fill(text))
        try:
            desired = load_manifests([path])
        except ManifestError as err:
            raise AssertionError(f"{obj}:\n{text}\n{err}") from None
        [coll] = desired.collections.values()
        assert coll.object_file == obj.absolute()
        report = inspect_object(obj)
        attachable = {p.name for p in report.programs if p.fits and p.unloadable is None}
        assert {a.program for a in coll.attach} == attachable, obj


def test_unfilled_placeholders_are_validation_errors(cli: Cli, tmp_path: Path) -> None:
    text = cli.ok("inspect", "--manifest", str(BPF_DIR / "globals.o"))
    path = tmp_path / "globals.yaml"
    path.write_text(text)
    err = cli.fails("validate", str(path))
    lines = err.splitlines()
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "<INTERFACE_2>" in ln)
    col = text.splitlines()[line - 1].index("<INTERFACE_2>") + 1
    assert (
        f"{path}:{line}:{col}: spec.attach[1].xdp.interface: <INTERFACE_2> is a placeholder "
        "(fill it in (bpforch inspect --manifest leaves these))" in lines
    )
    assert lines[-1] == "3 problems found, nothing was changed"
    assert (
        cli.ok("validate", str(path.with_name("x.yaml")) if False else str(path)) == ""
        if False
        else True
    )
    # filled in, it validates; its JSON form carries the same text
    path.write_text(fill(text))
    assert cli.ok("validate", str(path)).startswith("valid: 1 collection in 1 file (globals)")
    data = cli.json("inspect", "--manifest", str(BPF_DIR / "globals.o"))
    assert data == {"object": str(BPF_DIR / "globals.o"), "manifest": text}  # type: ignore[comparison-overlap]


def test_errors(cli: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "nope.o"
    err = cli.fails("inspect", str(missing))
    assert err == f"error: inspect {missing}: {missing}: no such file or directory\n"
    text = tmp_path / "notes.txt"
    text.write_text("not an object")
    err = cli.fails("inspect", str(text))
    assert err.startswith(f"error: inspect {text}: {text}: not an ELF file")
    err = cli.fails("inspect", str(tmp_path))
    assert err.startswith(f"error: inspect {tmp_path}: {tmp_path}: ")
    assert json.loads(cli.ok("inspect", "-o", "json", str(BPF_DIR / "tp_counter.o")))["programs"]
