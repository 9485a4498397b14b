"""The verifier in the CLI: ``bpforch verify``, a rejection explained by ``apply`` (with
``--verifier-log``), ``apply --dry-run=kernel``, and budget warnings in apply, plan, status
and verify. Against the real kernel, with objects from bpf/ and bpf/broken/."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator import cli
from tests.conftest import BPF_DIR

BROKEN = BPF_DIR / "broken"
NULL_LINE = "null_map_value.c:20: return *v ? XDP_PASS : XDP_DROP;"
NULL_SUMMARY = (
    f"{NULL_LINE} -- R0 invalid mem access 'map_value_or_null': a map lookup can return NULL; "
    "check the pointer before using it"
)

# 170,000 iterations of a loop the verifier walks one by one: about 850,000 instructions
BIG = """\
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, __u32); __type(value, __u64);
         __uint(max_entries, 1); } total SEC(".maps");
SEC("xdp") int big(struct xdp_md *ctx)
{
	__u32 zero = 0;
	__u64 *sum = bpf_map_lookup_elem(&total, &zero);

	if (!sum)
		return XDP_PASS;
	for (__u32 i = 0; i < 170000; i++)
		*sum += i ^ *sum;
	return XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
"""

# the constant decides whether the lookup's result is checked: with check=0 the verifier
# (which treats frozen .rodata as constants) sees an unchecked dereference
GUARDED = """\
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct { __uint(type, BPF_MAP_TYPE_HASH); __type(key, __u32); __type(value, __u64);
         __uint(max_entries, 4); } seen SEC(".maps");
const volatile int check = 1;
SEC("xdp") int guarded(struct xdp_md *ctx)
{
	__u32 k = 0;
	__u64 *v = bpf_map_lookup_elem(&seen, &k);
	if (check && !v)
		return XDP_PASS;
	return *v;
}
char LICENSE[] SEC("license") = "GPL";
"""


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def manifest(directory: Path, name: str, obj: Path, extra: str = "") -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(
        f"apiVersion: bpforch.dev/v1\nkind: Collection\nmetadata:\n  name: {name}\n"
        f"spec:\n  object: {obj}\n{extra}"
    )
    return path


@pytest.fixture
def where(pin_dir: Path, tmp_path: Path) -> list[str]:
    return ["--bpffs-root", str(pin_dir / "root"), "--state-dir", str(tmp_path / "state")]


# ---------------------------------------------------------------------------- verify


@pytest.mark.kernel
def test_verify_reports_each_program() -> None:
    code, out, err = run_cli("verify", str(BPF_DIR / "tailcall.o"))
    assert code == cli.EXIT_OK and err == ""
    lines = out.splitlines()
    assert lines[0].split() == [
        "PROGRAM",
        "RESULT",
        "INSNS",
        "BUDGET",
        "STATES",
        "PEAK",
        "TIME",
        "XLATED",
        "JITED",
    ]
    rows = {ln.split()[0]: ln for ln in lines[1:4]}
    assert set(rows) == {"tail_pass", "tail_drop", "xdp_entry"}
    for row in rows.values():
        assert re.fullmatch(
            r"\S+ +verified +\d+ +(<0\.01|\d+\.\d\d)% +\d+ +\d+ +\d+ (us|ms) +\d+ B +\d+ B", row
        ), row
    assert lines[-1] == f"3 verified, 0 rejected ({BPF_DIR / 'tailcall.o'})"

    code, out, _ = run_cli("verify", str(BPF_DIR / "tailcall.o"), "xdp_entry", "-o", "json")
    data = json.loads(out)
    assert code == 0 and (data["verified"], data["rejected"]) == (1, 0)
    [prog] = data["programs"]
    assert prog["name"] == "xdp_entry" and prog["type"] == "xdp" and prog["accepted"]
    assert prog["budget"] == 1_000_000 and 0 < prog["verified_insns"] < 1000
    assert prog["processed_states"] >= 1 and prog["peak_states"] >= 1
    assert prog["verification_time_us"] > 0 and prog["xlated_bytes"] % 8 == 0
    assert prog["jited_bytes"] > 0 and prog["error"] is None


@pytest.mark.kernel
def test_verify_a_rejected_program_exits_1() -> None:
    code, out, _ = run_cli("verify", str(BROKEN / "null_map_value.o"))
    assert code == cli.EXIT_ERROR
    lines = out.splitlines()
    assert re.fullmatch(r"null_map_value +REJECTED +7 +<0\.01% +0 +0 +\d+ (us|ms) +- +-", lines[1])
    assert lines[2] == f"null_map_value: {NULL_SUMMARY}"
    assert lines[3] == f"0 verified, 1 rejected ({BROKEN / 'null_map_value.o'})"
    code, out, _ = run_cli("verify", str(BROKEN / "null_map_value.o"), "--output", "json")
    [prog] = json.loads(out)["programs"]
    assert code == 1 and prog["accepted"] is False and prog["rejected"] is True
    assert prog["error"]["class"] == "null-map-value" and prog["error"]["insn"] == 7
    assert prog["error"]["summary"] == NULL_SUMMARY
    assert prog["error"]["message"] == f"program null_map_value: {NULL_SUMMARY}"


@pytest.mark.kernel
def test_verify_a_program_that_fails_before_the_verifier() -> None:
    """bpf/unresolved.o: one program refers to a symbol no section defines, so it never
    reaches the verifier; the other is verified."""
    obj = BPF_DIR / "unresolved.o"
    code, out, _ = run_cli("verify", str(obj))
    assert code == cli.EXIT_ERROR
    lines = out.splitlines()
    assert re.fullmatch(r"counted +verified .*", lines[1]) and lines[2].split() == [
        "asm_const",
        "FAILED",
        *["-"] * 7,
    ]
    assert lines[3] == (
        "program asm_const: instruction 0: symbol MY_CONST is defined in no section of the "
        "object "
        "(define it, or declare it __ksym or __kconfig)"
    )
    assert lines[4] == f"1 verified, 0 rejected, 1 failed before verification ({obj})"
    data = json.loads(run_cli("verify", str(obj), "-o", "json")[1])
    assert (data["verified"], data["rejected"], data["failed"]) == (1, 0, 1)
    failed = next(p for p in data["programs"] if p["name"] == "asm_const")
    assert failed["accepted"] is False and failed["rejected"] is False
    assert failed["error"]["message"].startswith("program asm_const: instruction 0: symbol")


@pytest.mark.kernel
def test_verify_with_constants(compile_bpf: Callable[..., Path]) -> None:
    obj = str(compile_bpf(GUARDED))
    assert run_cli("verify", obj)[0] == cli.EXIT_OK
    code, out, _ = run_cli("verify", obj, "--constants", "check=0")
    assert code == cli.EXIT_ERROR and "R0 invalid mem access 'map_value_or_null'" in out
    # values as a manifest writes them; repeated flags add up
    code, _, err = run_cli(
        "verify", str(BPF_DIR / "xdp_counter.o"), "--constants", "verdict=1", "--constants",
        "version=0x10",
    )  # fmt: skip
    assert code == cli.EXIT_OK, err


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("verdict", "error: --constants verdict: not NAME=VALUE"),
        ("=1", "error: --constants =1: not NAME=VALUE"),
        ("verdict=1.5", "error: --constants verdict=1.5: '1.5' is not an integer, boolean or"),
        ("verdict=[1]", "error: --constants verdict=[1]: '[1]' is not an integer, boolean"),
        ("nope=1", "error: {obj}: constant nope: not in object (it has: verdict, version)"),
    ],
)
def test_verify_refuses_bad_constants(arg: str, message: str) -> None:
    obj = BPF_DIR / "xdp_counter.o"
    code, out, err = run_cli("verify", str(obj), "--constants", arg)
    assert code == cli.EXIT_ERROR and out == ""
    assert err.startswith(message.format(obj=obj)), err


def test_verify_refuses_a_missing_object_or_program(tmp_path: Path) -> None:
    code, _, err = run_cli("verify", str(tmp_path / "nope.o"))
    assert code == cli.EXIT_ERROR and err.startswith(f"error: {tmp_path / 'nope.o'}: ")
    assert err.count(str(tmp_path / "nope.o")) == 1, err
    code, _, err = run_cli("verify", str(BPF_DIR / "xdp_counter.o"), "xdp_cont")
    assert code == cli.EXIT_ERROR
    assert "program xdp_cont: not in object" in err and "xdp_count" in err


@pytest.mark.kernel
def test_verify_writes_every_log_with_source_lines(tmp_path: Path) -> None:
    log = tmp_path / "verifier.log"
    code, _, _ = run_cli(
        "verify", str(BROKEN / "null_map_value.o"), "--verifier-log", str(log)
    )  # fmt: skip
    assert code == cli.EXIT_ERROR
    text = log.read_text()
    assert text.startswith("# program null_map_value (xdp): rejected: program null_map_value: ")
    assert "; return *v ? XDP_PASS : XDP_DROP; [file:./null_map_value.c line_num:20" in text
    assert "R0 invalid mem access 'map_value_or_null'" in text
    code, _, _ = run_cli("verify", str(BPF_DIR / "xdp_counter.o"), "--verifier-log", str(log))
    text = log.read_text()
    assert code == 0 and text.startswith("# program xdp_count (xdp): verified\n")
    assert "[file:" in text and "processed " in text
    code, _, err = run_cli(
        "verify", str(BPF_DIR / "xdp_counter.o"), "--verifier-log", str(tmp_path / "no/such")
    )  # fmt: skip
    assert code == cli.EXIT_ERROR and f"error: verifier log {tmp_path / 'no/such'}: " in err


# ---------------------------------------------------------------------------- apply


@pytest.mark.kernel
def test_apply_explains_a_rejection(tmp_path: Path, where: list[str]) -> None:
    m = tmp_path / "m"
    manifest(m, "broken", BROKEN / "null_map_value.o")
    code, _, err = run_cli("apply", str(m), *where)
    assert code == cli.EXIT_ERROR
    first = err.splitlines()[0]
    assert first.startswith("error: collection broken (")
    assert first.endswith(
        f"program null_map_value: {NULL_SUMMARY} (nothing was changed: the previous "
        "generation is live)"
    )
    assert "(the whole verifier log of program null_map_value: apply --verifier-log FILE)" in err
    assert "the verifier's log ends" not in err  # the class says it all

    log = tmp_path / "verifier.log"
    code, _, err = run_cli("apply", str(m), "--verifier-log", str(log), *where)
    assert code == cli.EXIT_ERROR
    assert f"the verifier log of program null_map_value is in {log}" in err
    text = log.read_text()
    assert "; return *v ? XDP_PASS : XDP_DROP; [file:./null_map_value.c line_num:20" in text
    assert text.rstrip().endswith("mark_read 0")
    assert run_cli("status", *where)[1].strip() == "No collections applied."


@pytest.mark.kernel
def test_apply_shows_the_log_tail_for_an_unknown_message(
    tmp_path: Path, where: list[str], compile_bpf: Callable[..., Path]
) -> None:
    src = GUARDED.replace(
        "bpf_map_lookup_elem(&seen, &k)",
        "bpf_map_lookup_elem(&seen, (void *)(long)ctx->rx_queue_index)",
    )
    m = tmp_path / "m"
    manifest(m, "odd", compile_bpf(src))
    code, _, err = run_cli("apply", str(m), *where)
    assert code == cli.EXIT_ERROR
    lines = err.splitlines()
    assert (
        ".c:9: __u64 *v = bpf_map_lookup_elem(&seen, (void *)(long)ctx->rx_queue_index); -- R2 "
        in lines[0]
    )
    i = lines.index("the verifier's log ends:")
    tail = lines[i + 1 : i + 9]
    n = next(j for j, ln in enumerate(tail) if not ln.startswith("  "))
    assert 3 <= n <= 8, tail  # the last lines of the log, indented
    assert any("R2 type=" in ln for ln in tail[:n]) and tail[n - 1].startswith("  processed ")
    assert tail[n].startswith("(the whole verifier log of program guarded: ")


@pytest.mark.kernel
def test_apply_dry_run_kernel(tmp_path: Path, where: list[str]) -> None:
    good = tmp_path / "good"
    manifest(good, "tp", BPF_DIR / "tp_counter.o")
    code, out, err = run_cli("apply", "--dry-run=kernel", str(good), *where)
    assert code == cli.EXIT_OK, err
    assert "+ collection tp" in out
    assert out.rstrip().endswith("Kernel dry run: everything loaded; nothing was changed.")
    assert run_cli("status", *where)[1].strip() == "No collections applied."
    # --dry-run alone still plans only, and takes no value from the path after it
    code, out, _ = run_cli("apply", "--dry-run", str(good), *where)
    assert code == 0 and out.rstrip().endswith("Dry run: nothing was changed.")
    code, out, _ = run_cli("apply", "--dry-run=plan", str(good), *where)
    assert code == 0 and out.rstrip().endswith("Dry run: nothing was changed.")

    bad = tmp_path / "bad"
    manifest(bad, "broken", BROKEN / "null_map_value.o")
    code, _, err = run_cli("apply", str(bad), "--dry-run=kernel", *where)
    assert code == cli.EXIT_ERROR
    assert f"program null_map_value: {NULL_SUMMARY} (kernel dry run: nothing was changed)" in err
    assert run_cli("status", *where)[1].strip() == "No collections applied."


def test_apply_dry_run_takes_only_kernel(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["apply", "--dry-run=verifier", str(tmp_path)])
    assert info.value.code == 2
    assert "argument --dry-run: 'verifier' is not a kind of dry run" in capsys.readouterr().err


# ---------------------------------------------------------------------------- budget


@pytest.mark.kernel
def test_budget_warnings(
    tmp_path: Path, where: list[str], compile_bpf: Callable[..., Path]
) -> None:
    obj = compile_bpf(BIG)
    m = tmp_path / "m"
    manifest(m, "big", obj)
    warning = re.compile(
        r"warning: collection big: program big: the verifier processed (8\d\d,\d\d\d) "
        r"instructions(?P<when> at the last apply)?, 8\d% of its 1,000,000 budget \(a small "
        r"change may get it rejected: bound loops tighter, use bpf_loop\(\), or split it with "
        r"tail calls\)"
    )
    code, out, err = run_cli("apply", "--dry-run=kernel", str(m), *where)  # loads it
    assert code == cli.EXIT_OK and "Kernel dry run" in out
    found = warning.fullmatch(err.strip())
    assert found is not None and found["when"] is None, err
    code, _, err = run_cli("apply", str(m), *where)
    assert code == cli.EXIT_OK, err
    found = warning.fullmatch(err.strip())
    assert found is not None and found["when"] is None, err
    insns = found[1]
    code, _, err = run_cli("apply", "--dry-run=kernel", str(m), *where)  # nothing to load
    assert code == cli.EXIT_OK
    found = warning.fullmatch(err.strip())
    assert found is not None and found["when"] and found[1] == insns, err

    code, out, err = run_cli("plan", str(m), *where)  # loads nothing: the recorded figure
    assert code == cli.EXIT_OK and "No changes." in out
    found = warning.fullmatch(err.strip())
    assert found is not None and found["when"] and found[1] == insns, err

    code, out, err = run_cli("status", *where)
    assert code == 0 and "  program big: id " in out and f", {insns} insns verified" in out
    assert warning.fullmatch(err.strip()) is not None
    data = json.loads(run_cli("status", "-o", "json", *where)[1])
    [prog] = data["collections"][0]["programs"]
    assert prog["verified_insns"] == int(insns.replace(",", ""))
    assert len(data["warnings"]) == 1

    code, _, err = run_cli("verify", str(obj))
    assert code == cli.EXIT_OK
    assert f"warning: {obj}: program big: the verifier processed {insns} instructions" in err
    assert run_cli("destroy", "--all", *where)[0] == 0
