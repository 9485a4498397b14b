"""Hostile input through the real command line (``python -m orchestrator`` as a subprocess):
each gets a clean error that names the file and the field, exit code 1 and no traceback,
promptly (a FIFO or a device never blocks, a pipe reader that goes away ends it quietly)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import BPF_DIR, ROOT

TIMEOUT = 30  # seconds: anything slower is a hang


def bpforch(*argv: str, stdout: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *argv],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=TIMEOUT,
    )


def clean_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 1, no traceback, and every needle in stderr (or stdout for validate)."""
    text = proc.stderr + (proc.stdout or "")
    assert proc.returncode == 1, text
    assert "Traceback" not in text, text
    for needle in needles:
        assert needle in text, (needle, text)
    return text


def manifest(name: str = "tp", obj: str = f"{BPF_DIR}/tp_counter.o", extra: str = "") -> str:
    return (
        f"apiVersion: bpforch.dev/v1\nkind: Collection\nmetadata: {{name: {name}}}\n"
        f"spec:\n  object: {obj}\n{extra}"
    )


# ---------------------------------------------------------------------------- manifests


def test_an_integer_of_5000_digits(tmp_path: Path) -> None:
    m = tmp_path / "m.yaml"
    m.write_text(manifest(extra=f"  constants: {{target_tgid: {'9' * 5000}}}\n"))
    clean_error(
        bpforch("validate", str(m)),
        f"{m}:6:28: spec.constants.target_tgid: integer of 5000 digits is too large",
    )


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ("", "spec.object"),
        (
            '  maps:\n    shared_stats: {from: {pinned: "/sys/fs/bpf/a\\0b"}}\n',
            "spec.maps.shared_stats.from.pinned",
        ),
    ],
)
def test_a_nul_byte_in_a_path(tmp_path: Path, extra: str, field: str) -> None:
    m = tmp_path / "m.yaml"
    obj = '"/tmp/a\\0b.o"' if field == "spec.object" else f"{BPF_DIR}/shared_user.o"
    m.write_text(manifest(obj=obj, extra=extra))
    clean_error(bpforch("validate", str(m)), f"{m}:", f"{field}: path ", "contains a NUL byte")


def test_a_fifo_or_device_as_manifest_or_object(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    clean_error(bpforch("validate", str(fifo)), f"{fifo}: not a regular file (a fifo)")
    d = tmp_path / "dir"
    d.mkdir()
    os.mkfifo(d / "in-dir.yaml")
    (d / "ok.yaml").write_text(manifest())
    clean_error(bpforch("validate", str(d)), f"{d / 'in-dir.yaml'}: not a regular file (a fifo)")
    os.mkfifo(tmp_path / "obj.o")
    m = tmp_path / "m.yaml"
    m.write_text(manifest(obj=str(tmp_path / "obj.o")))
    clean_error(
        bpforch("validate", str(m)),
        f"{m}:5:11: spec.object: cannot read object: {tmp_path / 'obj.o'}: not a regular file",
    )
    m.write_text(manifest(obj="/dev/zero"))
    clean_error(bpforch("validate", str(m)), "spec.object: cannot read object: /dev/zero: not a")


def test_a_huge_label_and_a_huge_string_constant(tmp_path: Path) -> None:
    big = "x" * 1_500_000
    m = tmp_path / "m.yaml"
    m.write_text(
        manifest(extra=f"  constants: {{target_tgid: {big}}}\n").replace(
            "metadata: {name: tp}", f"metadata: {{name: tp, labels: {{team: {big}}}}}"
        )
    )
    proc = bpforch("validate", str(m))
    text = clean_error(
        proc,
        f"metadata.labels.team: '{'x' * 80}…' (1500000 characters) is longer than 63",
    )
    assert len(text) < 2000


# ---------------------------------------------------------------------------- the record

BAD_RECORDS = {
    "a top-level list": ("[]", "the record: expected an object, got a list"),
    "a collection that is a list": (
        '{"version": 1, "collections": {"a": []}}',
        "collections.a: expected an object, got a list",
    ),
    "a collection that is a string": (
        '{"version": 1, "collections": {"a": "x"}}',
        "collections.a: expected an object, got the string 'x'",
    ),
    "a NUL in a pin": (
        json.dumps(
            {
                "version": 1,
                "collections": {
                    "a": {
                        "generation": 1,
                        "digest": "d",
                        "object": "/x.o",
                        "programs": {"p": {"id": 1, "tag": "t", "pin": "progs/p\0x"}},
                    }
                },
            }
        ),
        "collections.a.programs.p.pin: 'progs/p\\x00x' contains a NUL byte",
    ),
    "nesting 100,000 levels deep": (
        '{"version": 1, "collections": ' + "[" * 100_000 + "]" * 100_000 + "}",
        "unreadable (nested too deeply)",
    ),
    "an unknown source": (
        json.dumps(
            {
                "version": 1,
                "collections": {
                    "a": {
                        "generation": 1,
                        "digest": "d",
                        "object": "/x.o",
                        "maps": {
                            "m": {
                                "id": 1,
                                "shape": {
                                    "type": 2,
                                    "key_size": 4,
                                    "value_size": 8,
                                    "max_entries": 1,
                                    "flags": 0,
                                },
                                "source": "somewhere:else",
                            }
                        },
                    }
                },
            }
        ),
        "collections.a.maps.m.source: unknown source 'somewhere:else'",
    ),
}


@pytest.mark.kernel
@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_a_wrongly_shaped_record(case: str, tmp_path: Path, pin_dir: Path) -> None:
    text, field = BAD_RECORDS[case]
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.json").write_text(text)
    where = ["--bpffs-root", str(pin_dir / "root"), "--state-dir", str(state)]
    m = tmp_path / "m.yaml"
    m.write_text(manifest())
    for verb in (["status"], ["plan", str(m)], ["apply", str(m)], ["destroy", "--all"]):
        clean_error(bpforch(*verb, *where), f"state record {state / 'state.json'}: ", field)


# ---------------------------------------------------------------------------- output


def closed_pipe() -> int:
    """The write end of a pipe whose reader is gone (what `| true` gives once it exits)."""
    r, w = os.pipe()
    os.close(r)
    return w


@pytest.mark.parametrize(
    "argv",
    [
        ["validate", str(ROOT / "manifests")],
        ["validate", "-o", "json", str(ROOT / "manifests")],
        ["--help"],
        ["validate", "/nonexistent"],  # the problem goes to stderr; stdout is the pipe
    ],
)
def test_output_into_a_closed_pipe(argv: list[str]) -> None:
    w = closed_pipe()
    try:
        proc = bpforch(*argv, stdout=w)
    finally:
        os.close(w)
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    if argv[-1] == "/nonexistent":  # nothing reached stdout: an ordinary error
        assert proc.returncode == 1 and "no such file" in proc.stderr
    elif argv == ["--help"]:  # argparse ignores a failed write of its help and exits 0
        assert proc.returncode == 0 and proc.stderr == ""
    else:
        assert proc.returncode == 141 and proc.stderr == ""


def test_output_into_head_of_a_long_listing(tmp_path: Path) -> None:
    """`bpforch validate -o json DIR | head -1` with an output (240 KB) larger than a pipe
    holds: head exits after one line, and bpforch stops quietly with 141."""
    for i in range(1000):
        (tmp_path / f"m{i}.yaml").write_text(manifest(name=f"c{i}"))
    proc = subprocess.run(
        f"{sys.executable} -m orchestrator validate -o json {tmp_path} | head -1; "
        'echo "exit ${PIPESTATUS[0]}" >&2',
        shell=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        executable="/bin/bash",
    )
    assert proc.stdout == "{\n" and proc.stderr == "exit 141\n"


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize("kind", ["fifo", "device", "huge", "deep", "wide int"])
def test_serve_with_a_hostile_config_exits_1_promptly(tmp_path: Path, kind: str) -> None:
    config = tmp_path / "config.yaml"
    make: dict[str, Callable[[], None]] = {
        "fifo": lambda: os.mkfifo(config),
        "device": lambda: config.symlink_to("/dev/zero"),
        "huge": lambda: config.write_text("manifests: [m]\n#" + "x" * (2 << 20) + "\n"),
        "deep": lambda: config.write_text("manifests: " + "[" * 100_000 + "]" * 100_000 + "\n"),
        "wide int": lambda: config.write_text(f"manifests: [m]\ndebounce_ms: {'9' * 5000}\n"),
    }
    make[kind]()
    expect = {
        "fifo": "not a regular file (a fifo)",
        "device": "not a regular file (a character device)",
        "huge": "2.0 MiB, over the 1 MiB limit for a configuration",
        "deep": "invalid yaml: nested too deeply",
        "wide int": f"{config}:2:14: $.debounce_ms: integer too large",
    }[kind]
    t0 = time.monotonic()
    clean_error(bpforch("serve", "--config", str(config)), str(config), expect)
    assert time.monotonic() - t0 < TIMEOUT
