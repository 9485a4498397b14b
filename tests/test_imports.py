"""Import discipline: each verb imports only what it needs, and the packages' lazy exports
(orchestrator._lazy) are the names their ``TYPE_CHECKING`` imports declare."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

LAZY_PACKAGES = (
    "orchestrator.ebpf",
    "orchestrator.ebpf.link",
    "orchestrator.manifest",
    "orchestrator.reconcile",
    "orchestrator.service",
)

# Heavy dependencies, and the layers a verb that does not touch the kernel never needs.
DEPENDENCIES = ("jsonschema", "elftools", "watchdog", "prometheus_client")
KERNEL = (
    "orchestrator.ebpf.maps",
    "orchestrator.ebpf.programs",
    "orchestrator.ebpf.link",
    "orchestrator.reconcile.reconciler",
    "orchestrator.reconcile.observe",
)
SERVICE = (
    "orchestrator.service.daemon",
    "orchestrator.service.watch",
    "orchestrator.service.metrics",
)


def _declared(package: str) -> dict[str, str]:
    """``name -> "module:attr"`` (or ``"module"``) from the package's TYPE_CHECKING block."""
    module = importlib.import_module(package)
    assert module.__file__ is not None
    tree = ast.parse(Path(module.__file__).read_text())
    out: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom), ast.unparse(imp)
                for alias in imp.names:
                    name = alias.asname or alias.name
                    if imp.module == package:  # from orchestrator.ebpf import inspect
                        out[name] = f"{package}.{alias.name}"
                    else:
                        out[name] = f"{imp.module}:{alias.name}"
    return out


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_lazy_exports_are_the_declared_imports(package: str) -> None:
    module = importlib.import_module(package)
    exports = module.__dict__["_lazy_exports"]
    assert exports == _declared(package)
    assert sorted(exports) == sorted(module.__all__)


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_every_lazy_export_is_the_object_of_its_module(package: str) -> None:
    module = importlib.import_module(package)
    for name, target in module.__dict__["_lazy_exports"].items():
        module_name, _, attr = target.partition(":")
        where = importlib.import_module(module_name)
        expected = getattr(where, attr) if attr else where
        assert getattr(module, name) is expected, name
    assert set(module.__all__) <= set(dir(module))
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        getattr(module, "no_such_name")  # noqa: B009


def test_inspect_serves_the_hook_queries_lazily() -> None:
    """ebpf.inspect's lazily imported names are the objects of their modules."""
    code = (
        "import sys\n"
        "from orchestrator.ebpf import inspect\n"
        "assert 'orchestrator.ebpf.link.xdp' not in sys.modules\n"
        "from orchestrator.ebpf import _netlink, link\n"
        "from orchestrator.ebpf.link import cgroup, query, xdp\n"
        "assert inspect.in_netns is _netlink.in_netns\n"
        "assert inspect.cgroup_attached is cgroup.cgroup_attached is link.cgroup_attached\n"
        "assert inspect.iter_links is query.iter_links\n"
        "assert inspect.xdp_attached is xdp.xdp_attached\n"
        "assert inspect.xdp_mode is xdp.xdp_mode\n"
        "assert {'in_netns', 'xdp_mode'} <= set(dir(inspect))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_an_export_named_like_its_submodule_stays_the_export() -> None:
    """``orchestrator.reconcile.plan`` is the function (as when the package imported
    everything), even after the submodule ``orchestrator.reconcile.plan`` was imported."""
    code = (
        "import orchestrator.reconcile.planner, orchestrator.manifest.loader\n"
        "from orchestrator.reconcile import plan\n"
        "from orchestrator.manifest import schema\n"
        "import types; print(isinstance(plan, types.FunctionType), "
        "isinstance(schema, types.FunctionType))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.split() == ["True", "True"]


def _modules_after(
    argv: list[str], tmp_path: Path, expect: tuple[object, ...] = (0, None)
) -> set[str]:
    """The modules loaded once ``bpforch ARGV`` has run in a fresh interpreter."""
    dump = tmp_path / "modules.json"
    code = (
        "import contextlib, io, json, sys\n"
        "from orchestrator.__main__ import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):\n"
        "    try:\n"
        f"        code = main({argv!r})\n"
        "    except SystemExit as e:\n"
        "        code = e.code\n"
        f"json.dump([code, sorted(sys.modules)], open({str(dump)!r}, 'w'))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    code_, modules = json.loads(dump.read_text())
    assert code_ in expect, (argv, code_)
    return set(modules)


def _loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules for n in names if m == n or m.startswith(n + "."))


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["plan", "--help"]])
def test_help_imports_no_heavy_module(argv: list[str], tmp_path: Path) -> None:
    """Not even the syscall layer, YAML or the manifest loader: only the parser's modules."""
    modules = _modules_after(argv, tmp_path)
    assert _loaded(modules, (*DEPENDENCIES, "yaml", *KERNEL, *SERVICE)) == []
    assert _loaded(modules, ("orchestrator.ebpf._sys", "orchestrator.manifest.loader")) == []


@pytest.mark.parametrize("argv", [["schema", "manifest"], ["completion", "bash"]])
def test_static_verbs_import_no_heavy_module(argv: list[str], tmp_path: Path) -> None:
    modules = _modules_after(argv, tmp_path)
    assert _loaded(modules, (*DEPENDENCIES, *KERNEL, *SERVICE)) == []
    # nor the caches of parsed objects and manifests: they read neither
    caches = (
        "orchestrator.ebpf.diskcache",
        "orchestrator.ebpf.speccache",
        "orchestrator.manifest.cache",
    )
    assert _loaded(modules, caches) == []


def test_validate_imports_no_jsonschema_no_pyelftools_and_no_kernel_layer(
    tmp_path: Path,
) -> None:
    modules = _modules_after(["validate", str(ROOT / "manifests")], tmp_path)
    assert "orchestrator.manifest.loader" in modules  # it did validate
    assert _loaded(modules, (*DEPENDENCIES, *KERNEL, *SERVICE)) == []


@pytest.mark.kernel
def test_plan_imports_neither_the_status_nor_the_transaction_nor_other_hooks(
    tmp_path: Path, pin_dir: Path
) -> None:
    where = ["--bpffs-root", str(pin_dir / "root"), "--state-dir", str(tmp_path / "state")]
    manifest = tmp_path / "tp.yaml"
    manifest.write_text(
        "apiVersion: bpforch.dev/v1\nkind: Collection\nmetadata: {name: tp}\n"
        f"spec: {{object: {ROOT / 'bpf' / 'tp_counter.o'}}}\n"
    )
    modules = _modules_after(["plan", str(manifest), *where], tmp_path, expect=(2,))
    assert "orchestrator.reconcile.planner" in modules  # it did plan
    assert _loaded(modules, (*DEPENDENCIES, *SERVICE)) == []
    unneeded = (
        "orchestrator.reconcile.collection_status",
        "orchestrator.reconcile.transaction",
        "orchestrator.ebpf.link.struct_ops",
        "orchestrator.ebpf.link.uprobe",
        "orchestrator.ebpf.link.netns",
        # the program layer (and tcx, whose types name it) loads programs: a plan never does
        "orchestrator.ebpf.programs",
        "orchestrator.ebpf.link.tcx",
        # the verifier-log parser (the budget is in ebpf.limits), and with no entries
        # declared, the map codecs and the entry rules
        "orchestrator.ebpf.verifier",
        "orchestrator.ebpf.map_codec",
        "orchestrator.manifest.entries",
        # the hook queries of other kinds, served lazily by ebpf.inspect
        "orchestrator.ebpf._netlink",
        "orchestrator.ebpf.link.xdp",
        "orchestrator.ebpf.link.cgroup",
        "orchestrator.ebpf.link.query",
    )
    assert _loaded(modules, unneeded) == []


@pytest.mark.kernel
def test_a_plan_with_no_change_imports_no_action_but_unchanged(
    tmp_path: Path, pin_dir: Path
) -> None:
    """The actions of a plan that changes something (orchestrator.reconcile.actions) are
    imported when one is made: by the apply, not by the no-op plan after it."""
    where = ["--bpffs-root", str(pin_dir / "root"), "--state-dir", str(tmp_path / "state")]
    manifest = tmp_path / "tp.yaml"
    manifest.write_text(
        "apiVersion: bpforch.dev/v1\nkind: Collection\nmetadata: {name: tp}\n"
        f"spec: {{object: {ROOT / 'bpf' / 'tp_counter.o'}}}\n"
    )
    try:
        applied = _modules_after(["apply", str(manifest), *where], tmp_path)
        assert "orchestrator.reconcile.actions" in applied
        modules = _modules_after(["plan", str(manifest), *where], tmp_path)
        assert "orchestrator.reconcile.planner" in modules  # it did plan
        assert "orchestrator.reconcile.lines" in modules
        assert "orchestrator.reconcile.actions" not in modules
    finally:
        _modules_after(["destroy", "--all", *where], tmp_path)


@pytest.mark.kernel
def test_a_plan_served_from_the_checked_state_imports_no_object_or_btf_parser(
    tmp_path: Path, pin_dir: Path
) -> None:
    """Once an apply has kept the checked desired state, a plan of the same files checks
    the objects by their sha256 alone: neither the ELF parser nor the BTF code is imported
    (nor the spec model, nor the persisted specs' codec). Its tracepoint link is vouched
    for by its pin's inode: no link info is read, so the link layer's info decoder
    (orchestrator.ebpf.link.base) is not imported either."""
    where = ["--bpffs-root", str(pin_dir / "root"), "--state-dir", str(tmp_path / "state")]
    cache = ["--cache-dir", str(tmp_path / "cache")]
    manifest = tmp_path / "tp.yaml"
    manifest.write_text(
        "apiVersion: bpforch.dev/v1\nkind: Collection\nmetadata: {name: tp}\n"
        f"spec:\n  object: {ROOT / 'bpf' / 'tp_counter.o'}\n"
        "  attach: [{program: count_getppid, tracepoint: {group: syscalls, "
        "name: sys_enter_getppid}}]\n"
    )
    try:
        applied = _modules_after([*cache, "apply", str(manifest), *where], tmp_path)
        assert "orchestrator.ebpf.elf" in applied or "orchestrator.ebpf.specfile" in applied
        modules = _modules_after([*cache, "plan", str(manifest), *where], tmp_path)
        assert "orchestrator.reconcile.planner" in modules  # it did plan
        parsers = (
            "elftools",
            "orchestrator.ebpf.elf",
            "orchestrator.ebpf.btf",
            "orchestrator.ebpf.spec",
            "orchestrator.ebpf.specfile",
            "orchestrator.ebpf.asm",
            "orchestrator.ebpf.link.base",
        )
        assert _loaded(modules, parsers) == []
    finally:
        _modules_after(["destroy", "--all", *where], tmp_path)


def test_invalid_manifests_still_get_jsonschema_s_problems(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: bpforch.dev/v1\nkind: Collection\nmetadata: {name: x}\n"
        f"spec: {{object: {ROOT / 'bpf' / 'tp_counter.o'}, bogus: 1}}\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator", "validate", str(bad)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 1
    assert f"{bad}:4:" in out.stderr
    assert "spec.bogus" in out.stderr
