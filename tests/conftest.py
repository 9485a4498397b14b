"""Shared fixtures. Kernel tests are marked ``kernel``: they skip when the kernel can't be
reached (not root, no bpf(), no bpffs) — except under ``CI=true``, where they fail instead,
and so does every other skip (a missing tool, object or mount: see
``pytest_runtest_makereport``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BPF_DIR = ROOT / "bpf"
BPFFS = Path("/sys/fs/bpf")
PIN_PREFIX = "bpforch-test-"  # pin_dir names: bpforch-test-<pid of the test run>-<hex>

# The command line and the daemon persist parsed objects in /var/cache/bpforch unless told
# otherwise: tests, and the bpforch processes they start, use a directory of this run.
_CACHE_ROOT = tempfile.mkdtemp(prefix="bpforch-test-cache-")
os.environ["BPFORCH_CACHE_DIR"] = os.path.join(_CACHE_ROOT, "cache")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_CACHE_ROOT, ignore_errors=True)


# namespaces, veth pairs, cgroups and UDP traffic for kernel tests (fixtures: netns, veth,
# netns_factory, cgroup)
pytest_plugins = ["tests.netns"]


def _kernel_problem() -> str | None:
    if os.geteuid() != 0:
        return "not root"
    if not (BPFFS.is_dir() and os.path.ismount(BPFFS)):
        return f"bpffs is not mounted at {BPFFS} (mount -t bpf bpf {BPFFS})"
    try:
        from orchestrator.ebpf import _sys as bpfsys

        attr = bpfsys.MapCreateAttr(map_type=2, key_size=4, value_size=4, max_entries=1)
        bpfsys.map_create(attr).close()
    except Exception as err:  # any failure means: no usable bpf()
        return f"bpf() unusable: {err}"
    return None


_PROBLEM: str | bool | None = False


def kernel_problem() -> str | None:
    global _PROBLEM
    if _PROBLEM is False:
        _PROBLEM = _kernel_problem()
    return _PROBLEM if isinstance(_PROBLEM, str) else None


def require_kernel() -> None:
    """Skip (or under CI, fail) a test that needs the kernel when it can't be reached."""
    problem = kernel_problem()
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"kernel test cannot reach the kernel under CI: {problem}")
    pytest.skip(f"needs the kernel: {problem}")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("kernel") is not None:
        require_kernel()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under ``CI=true`` nothing skips: a skip (a missing tool, object, mount or kernel
    feature, whichever test asked for it) fails the test, naming what was missing, since
    CI installs all of it and runs on the real kernel."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if os.environ.get("CI") != "true" or not report.skipped or hasattr(report, "wasxfail"):
        return
    _fail_the_skip(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """The same for a whole module skipped while it is collected (``pytest.skip(...,
    allow_module_level=True)``, ``pytest.importorskip``)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if os.environ.get("CI") == "true" and report.skipped:
        _fail_the_skip(report)


def _fail_the_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    report.outcome = "failed"
    report.longrepr = f"skipped under CI=true, where nothing may skip: {reason}"


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed (.ci/run installs it)")
        pytest.skip(f"{name} is not installed")
    return path


def run_git(repo: Path, *args: str) -> str:
    """``git -C repo args`` on a test's own repository; its output, stripped. Every
    ``GIT_*`` variable of the caller is dropped (under ``git rebase -x`` or a hook,
    ``GIT_DIR``, ``GIT_WORK_TREE`` and ``GIT_INDEX_FILE`` name the outer repository, which a
    test would commit into), neither the user's nor the system's configuration is read,
    and the search for a repository stops at ``repo``'s parent."""
    git = require_tool("git")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env |= {
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CEILING_DIRECTORIES": str(Path(repo).absolute().parent),
    }
    identity = ["-c", "user.name=t", "-c", "user.email=t@t"]
    return subprocess.run(
        [git, "-C", str(repo), *identity, *args],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def git_commit(repo: Path, files: dict[str, str], message: str = "m") -> str:
    """A new repository in ``repo`` (which exists) with one commit of ``files`` (relative
    path -> text), by :func:`run_git`; its HEAD."""
    run_git(repo, "init", "-q")
    for rel, text in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    run_git(repo, "add", ".")
    run_git(repo, "commit", "-q", "-m", message)
    return run_git(repo, "rev-parse", "HEAD")


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


@pytest.fixture
def fd_guard() -> Iterator[None]:
    """Fail the test if it leaves file descriptors open."""
    import gc

    gc.collect()
    before = open_fds()
    yield
    gc.collect()
    leaked = open_fds() - before
    # the listing itself opened one fd that is closed again; anything else is a leak
    leaked = {fd for fd in leaked if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not leaked, f"leaked fds: {sorted(leaked)} -> " + ", ".join(
        os.readlink(f"/proc/self/fd/{fd}") for fd in sorted(leaked)
    )


@pytest.fixture
def pin_dir() -> Iterator[Path]:
    """A fresh directory on bpffs, removed with everything in it afterwards."""
    require_kernel()
    path = BPFFS / f"{PIN_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def objects() -> Path:
    """The directory of compiled test objects (bpf/*.o)."""
    return BPF_DIR


def obj(name: str) -> Path:
    path = BPF_DIR / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run make -C bpf")
    return path


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)  # type: ignore[call-overload, no-any-return]


BPF_CFLAGS = [
    "-O2",
    "-g",
    "-target",
    "bpf",
    "-D__TARGET_ARCH_x86",
    "-I/usr/include/x86_64-linux-gnu",
]


@pytest.fixture(scope="session")
def compile_bpf(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``compile_bpf(source, *extra_flags) -> Path``: build a small eBPF object from C text
    (cached by content for the session)."""
    import hashlib

    out_dir = tmp_path_factory.mktemp("bpfobj")

    def build(source: str, *flags: str) -> Path:
        clang = require_tool("clang")
        digest = hashlib.sha256((source + "\0".join(flags)).encode()).hexdigest()[:16]
        out = out_dir / f"{digest}.o"
        if not out.exists():
            src = out_dir / f"{digest}.c"
            src.write_text(source)
            cmd = [clang, *BPF_CFLAGS, *flags, "-c", str(src), "-o", str(out)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise AssertionError(f"clang failed:\n{proc.stderr}")
        return out

    return build


# ---------------------------------------------------------------------------- leak guard

_BPFFS_BEFORE: set[str] | None = None


def _bpffs_entries() -> set[str] | None:
    try:
        return set(os.listdir(BPFFS)) if os.path.ismount(BPFFS) else None
    except OSError:
        return None


def _other_run(name: str) -> bool:
    """A pin directory of another test run on this machine (runs in parallel worktrees):
    that run checks its own."""
    if not name.startswith(PIN_PREFIX):
        return False
    pid = name.removeprefix(PIN_PREFIX).split("-", 1)[0]
    return pid.isdigit() and int(pid) != os.getpid()


def pytest_sessionstart(session: pytest.Session) -> None:
    global _BPFFS_BEFORE
    _BPFFS_BEFORE = _bpffs_entries()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if it left anything new at the top of bpffs: every test pins under its
    own directory and removes it (other processes pinning at the same time would show up
    here too, except the pin directories of other test runs, which name their pid)."""
    after = _bpffs_entries()
    if _BPFFS_BEFORE is None or after is None:
        return
    leaked = sorted(n for n in after - _BPFFS_BEFORE if not _other_run(n))
    if leaked:
        print(f"\nbpffs leak: the test run left {', '.join(leaked)} in {BPFFS}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
