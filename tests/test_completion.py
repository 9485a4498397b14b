"""``bpforch completion bash|zsh``: scripts generated from the parser, run by the real
shells. bash through its programmable completion (COMP_WORDS, the function, COMPREPLY);
zsh interactively on a pseudo-terminal, pressing TAB."""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from orchestrator.cli import build_parser
from orchestrator.completion import script
from tests.test_cli import run_cli


def _shell(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed (.ci/setup installs it)")
        pytest.skip(f"{name} is not installed")
    return path


def _verbs() -> list[str]:
    import argparse

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return list(sub.choices)


def bash_complete(line: str, tmp_path: Path) -> list[str]:
    """What bash offers for ``line`` (the cursor at its end)."""
    bash = _shell("bash")
    code, text, _ = run_cli("completion", "bash")
    assert code == 0
    (tmp_path / "bpforch.bash").write_text(text)
    words = line.split(" ")
    program = (
        f"source {tmp_path / 'bpforch.bash'}\n"
        f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
        '_bpforch; printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    proc = subprocess.run([bash, "--norc", "-c", program], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return [w for w in proc.stdout.splitlines() if w]


def test_bash(tmp_path: Path) -> None:
    assert bash_complete("bpforch ", tmp_path) == [
        *_verbs(),
        "-h",
        "--help",
        "-V",
        "--version",
        "--cache-dir",
        "--no-cache",
    ]
    assert bash_complete("bpforch pl", tmp_path) == ["plan"]
    assert bash_complete("bpforch schema ", tmp_path) == ["manifest", "config", "crd"]
    assert bash_complete("bpforch completion z", tmp_path) == ["zsh"]
    assert bash_complete("bpforch plan -o ", tmp_path) == ["human", "json"]
    assert bash_complete("bpforch apply --pr", tmp_path) == ["--prune"]
    assert "--metrics-address" in bash_complete("bpforch serve --", tmp_path)
    assert bash_complete("bpforch watch --debounce-ms ", tmp_path) == []  # a number
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "a.yaml").write_text("")
    assert bash_complete(f"bpforch validate {tmp_path}/manifests/", tmp_path) == [
        f"{tmp_path}/manifests/a.yaml"
    ]
    assert bash_complete(f"bpforch plan --state-dir {tmp_path}/man", tmp_path) == [
        f"{tmp_path}/manifests"
    ]


def zsh_complete(lines: list[str], tmp_path: Path) -> list[str]:
    """What an interactive zsh shows after typing each of ``lines`` and TAB (escape
    sequences removed)."""
    zsh = _shell("zsh")
    code, text, _ = run_cli("completion", "zsh")
    assert code == 0
    (tmp_path / "zfunc").mkdir(exist_ok=True)
    (tmp_path / "zfunc" / "_bpforch").write_text(text)
    shown = []
    for line in lines:
        pid, fd = pty.fork()
        if pid == 0:  # pragma: no cover - the child
            env = {"TERM": "xterm", "PATH": os.environ["PATH"], "HOME": str(tmp_path)}
            os.execve(zsh, [zsh, "-f", "-i"], env)
        try:
            setup = (
                f"PS1='%% '; fpath=({tmp_path / 'zfunc'} $fpath); autoload -Uz compinit; "
                "compinit -u -D; unsetopt beep; print READY-$((20+22))\n"
            )
            os.write(fd, setup.encode())
            _read(fd, 5.0, b"READY-42")
            os.write(fd, line.encode() + b"\t")
            out = _read(fd, 5.0, None)
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(fd)
        shown.append(re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]|[\r\x08]", "", out))
    return shown


def _read(fd: int, timeout: float, until: bytes | None) -> str:
    """Read until ``until`` was printed, or (``until`` None) the output stays quiet for
    0.3 s (completion done), or ``timeout``."""
    out = b""
    deadline = time.monotonic() + timeout
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            out += chunk
            quiet_since = time.monotonic()
            if until is not None and until in out:
                time.sleep(0.1)  # the prompt that follows
                break
        elif out and until is None and time.monotonic() - quiet_since > 0.3:
            break
    return out.decode(errors="replace")


def test_zsh(tmp_path: Path) -> None:
    shown = zsh_complete(
        [
            "bpforch sch",
            "bpforch schema m",
            "bpforch plan -o j",
            "bpforch apply --pr",
            "bpforch s",
        ],
        tmp_path,
    )
    assert shown[0].endswith("bpforch schema "), shown[0]
    assert shown[1].endswith("bpforch schema manifest "), shown[1]
    assert shown[2].endswith("bpforch plan -o json "), shown[2]
    assert shown[3].endswith("bpforch apply --prune "), shown[3]
    # several matches: listed with each verb's help
    assert "serve   -- run as a systemd service" in shown[4], shown[4]
    assert "schema  -- print a schema: manifest, config" in shown[4], shown[4]


def test_every_verb_is_in_both_scripts() -> None:
    parser = build_parser()
    bash, zsh = script(parser, "bash"), script(parser, "zsh")
    for verb in _verbs():
        assert f"        {verb})" in bash, verb
        assert f"'{verb}:" in zsh and f"                {verb})" in zsh, verb


def test_unknown_shell() -> None:
    with pytest.raises(SystemExit) as exit_:
        run_cli("completion", "fish")
    assert exit_.value.code == 2
    with pytest.raises(ValueError, match="no completion for 'fish'"):
        script(build_parser(), "fish")
