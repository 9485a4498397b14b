"""The ``bpforch`` command line: argument parsing and rendering over the library API.

Exit codes follow the conventions users know from terraform: 0 success (and, for ``plan``,
no changes), 1 error (for ``verify``: a program was rejected), 2 changes pending (``plan``
only); 141 when the reader of the output went away (``| head``), as for a tool killed by
SIGPIPE, with no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from argparse import SUPPRESS
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from orchestrator import __version__, schemas
from orchestrator import commands as day2
from orchestrator.commands.output import EXIT_ERROR, EXIT_OK, emit_json, output_option
from orchestrator.commands.render import (
    render_inventory,
    render_plan,
    render_status,
)
from orchestrator.service import cli as service_cli

if TYPE_CHECKING:  # the verbs import what they use when they run (bpforch --help: nothing)
    from orchestrator.ebpf import ProgramReport, VerifierError
    from orchestrator.manifest import DesiredState, ObjectStore
    from orchestrator.reconcile import Failpoints, Reconciler
    from orchestrator.reconcile.inventory import Inventory
    from orchestrator.reconcile.selector import Selector
    from orchestrator.service.daemon_status import DaemonStatus

EXIT_CHANGES = 2
EXIT_BROKEN_PIPE = 128 + 13  # as if killed by SIGPIPE, like `yes | head`


# ---------------------------------------------------------------------------- arguments


def _common(p: argparse.ArgumentParser, *, state: bool = True) -> None:
    output_option(p)
    if state:
        service_cli.add_root_options(p)


def _selector_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "-l",
        "--selector",
        action="append",
        default=[],
        metavar="SELECTOR",
        help=f"only {what} whose labels match: key=value, key!=value, key or !key, "
        "comma-separated or repeated (all must hold), as kubectl's -l",
    )


def _selector(args: argparse.Namespace) -> Selector | None:
    """The selector of ``--selector`` (None without one); SelectorError if it is not one."""
    from orchestrator.reconcile.selector import Selector

    return Selector.parse(args.selector) if args.selector else None


Commands = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def build_parser(extra_commands: Sequence[Commands] = ()) -> argparse.ArgumentParser:
    """The ``bpforch`` parser; ``extra_commands`` add the verbs of modules above this one
    (``orchestrator.__main__`` adds ``demo``), each setting ``func(args, out, err)``."""
    parser = argparse.ArgumentParser(
        prog="bpforch",
        description="Declarative eBPF: validate, plan and apply YAML manifests of eBPF "
        "collections to the running kernel.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"bpforch {__version__}")
    service_cli.add_cache_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("validate", help="check manifests (schema, objects, cross-references)")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or directories")
    _common(p, state=False)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("plan", help="show what apply would change (exit 2 if anything)")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    p.add_argument(
        "--prune",
        action="store_true",
        help="also remove owned collections that no manifest declares any more",
    )
    p.add_argument(
        "--refresh-only",
        action="store_true",
        help="only report drift between the record and the kernel",
    )
    _selector_option(p, "the collections")
    _common(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("apply", help="apply manifests as one transaction")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    p.add_argument(
        "--prune",
        action="store_true",
        help="also remove owned collections that no manifest declares any more",
    )
    p.add_argument(
        "--dry-run",
        action="store_const",
        const=True,
        default=False,
        help="plan only, change nothing; --dry-run=kernel also loads every changed "
        "collection through the verifier (preserved and substituted maps included), then "
        "rolls back",
    )
    p.add_argument(  # what --dry-run=kernel becomes (see main)
        "--dry-run-kernel", dest="dry_run", action="store_const", const="kernel", help=SUPPRESS
    )
    p.add_argument(
        "--verifier-log",
        type=Path,
        metavar="FILE",
        help="if the verifier rejects a program, write its whole log to FILE, with the "
        "source line of each instruction",
    )
    _selector_option(p, "the collections")
    _common(p)
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser(
        "verify",
        help="load an object's programs through the verifier, attach nothing, and report "
        "on each (exit 1 if one is rejected)",
    )
    p.add_argument("object", type=Path, metavar="OBJECT", help="an eBPF object file")
    p.add_argument(
        "programs", nargs="*", metavar="PROGRAM", help="programs (default: all it loads)"
    )
    p.add_argument(
        "--constants",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME=VALUE",
        help="set .rodata constants first (values as in a manifest: 42, 0x2a, true, text)",
    )
    p.add_argument(
        "--verifier-log",
        type=Path,
        metavar="FILE",
        help="write every program's whole verifier log to FILE, with the source line of "
        "each instruction (costs verifier time)",
    )
    _common(p, state=False)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("status", help="what is applied, and any drift from the kernel")
    p.add_argument("names", nargs="*", metavar="NAME", help="collections (default: all)")
    p.add_argument(
        "--all",
        action="store_true",
        help="also every program and link on the hooks bpforch manages (XDP and tcx per "
        "interface of its namespaces, the cgroups it targets, tracepoints), owned or foreign",
    )
    _selector_option(p, "the applied collections")
    _common(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("destroy", help="detach and remove applied collections")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--all", action="store_true", help="every collection bpforch owns")
    p.add_argument("--dry-run", action="store_true", help="show what would go, change nothing")
    _selector_option(p, "the applied collections (instead of names or --all)")
    _common(p)
    p.set_defaults(func=cmd_destroy)

    service_cli.add_commands(sub)

    p = sub.add_parser(
        "schema",
        help="print a schema: manifest, config (JSON Schema) or crd (Kubernetes)",
        description="Print the JSON Schema of manifests or of the service configuration, "
        "or the CustomResourceDefinition of Collection documents. --write DIR writes all "
        "of them into DIR instead.",
    )
    p.add_argument("name", nargs="?", choices=schemas.NAMES, metavar="{manifest,config,crd}")
    p.add_argument("--write", type=Path, metavar="DIR", help="write every schema into DIR")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser(
        "metrics",
        help="print the Prometheus metrics once (for node_exporter's textfile collector)",
        description="Print what the metrics endpoint of serve/watch serves (but the reconcile "
        "duration histogram, which only a running daemon has): the daemon's counters from "
        "its status file, the collections, drift, programs and maps read from the kernel now, "
        "and the metrics the manifests in PATH declare (or those of --config's manifests).",
    )
    p.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="manifests")
    p.add_argument(
        "--config", type=Path, help="take the manifests, root and state dir from this file"
    )
    p.add_argument(
        "--write",
        type=Path,
        metavar="FILE",
        help="replace FILE atomically instead of printing (e.g. "
        "/var/lib/node_exporter/textfile/bpforch.prom)",
    )
    service_cli.add_root_options(p)
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser(
        "configmap",
        help="print a Kubernetes ConfigMap of manifests and the objects they reference",
        description="Validate the manifests, then print one ConfigMap holding them (data) and "
        "their objects (binaryData), each manifest's object field rewritten to the object's "
        "file name: mounted as the manifest directory of bpforch serve in a DaemonSet "
        "(see packaging/kubernetes).",
    )
    p.add_argument("name", help="the ConfigMap's name")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or directories")
    p.add_argument("-n", "--namespace", help="the ConfigMap's namespace")
    p.set_defaults(func=cmd_configmap)

    day2.add_commands(sub)

    for add in extra_commands:  # verbs of the layers above (bpforch demo)
        add(sub)

    p = sub.add_parser(
        "completion",
        help="print the shell completion script for bash or zsh",
        description="Print a completion script generated from this command line. Install: "
        "bpforch completion bash > /etc/bash_completion.d/bpforch; bpforch completion zsh > "
        "/usr/local/share/zsh/site-functions/_bpforch",
    )
    p.add_argument("shell", choices=("bash", "zsh"))
    p.set_defaults(func=cmd_completion, parser=parser)
    return parser


# ---------------------------------------------------------------------------- verbs


def _load(args: argparse.Namespace, out: TextIO, err: TextIO) -> DesiredState | None:
    """Load and validate manifests; on problems render them and return None. Warnings
    (a deprecated apiVersion) go to ``err``."""
    from orchestrator.manifest import ManifestError, load_manifests

    try:
        desired = load_manifests(list(args.paths), store=args.store)
    except ManifestError as exc:
        if args.output == "json":
            emit_json({"valid": False, "problems": [p.to_dict() for p in exc.problems]}, out)
        else:
            print(str(exc), file=err)
            n = len(exc.problems)
            print(f"{n} problem{'s' if n != 1 else ''} found, nothing was changed", file=err)
        return None
    for warning in desired.warnings:
        print(f"warning: {warning}", file=err)
    return desired


def cmd_validate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    desired = _load(args, out, err)
    if desired is None:
        return EXIT_ERROR
    names = sorted(desired.collections)
    if args.output == "json":
        emit_json(
            {
                "valid": True,
                "files": [str(f) for f in desired.files],
                "warnings": [w.to_dict() for w in desired.warnings],
                "collections": {
                    n: {"object": str(c.object_file), "digest": c.digest, "source": str(c.source)}
                    for n, c in sorted(desired.collections.items())
                },
            },
            out,
        )
    else:
        files = len(desired.files)
        print(
            f"valid: {len(names)} collection{'s' if len(names) != 1 else ''} "
            f"in {files} file{'s' if files != 1 else ''}"
            + (f" ({', '.join(names)})" if names else ""),
            file=out,
        )
    return EXIT_OK


def _reconciler(args: argparse.Namespace, *, remember: bool = True) -> Reconciler:
    """``remember``: False for a command that observes once (see :class:`Reconciler`)."""
    from orchestrator.reconcile import Reconciler

    return Reconciler(
        bpffs_root=args.bpffs_root,
        state_dir=args.state_dir,
        failpoints=args.failpoints,
        store=args.store,
        remember=remember,
    )


def _unselected(desired: DesiredState, selector: Selector | None, prune: bool, err: TextIO) -> bool:
    """Whether ``selector`` selects none of the declared collections (said on ``err``);
    with ``prune`` it may select only recorded ones, to prune them."""
    if selector is None or prune:
        return False
    if any(selector.matches(d.labels) for d in desired.collections.values()):
        return False
    print(
        f"error: selector {selector}: matches none of the {len(desired.collections)} "
        "collections in the manifests (see their metadata.labels)",
        file=err,
    )
    return True


def cmd_plan(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from orchestrator.reconcile import ReconcileError

    rec = _reconciler(args, remember=False)  # one observe
    from orchestrator.reconcile.selector import SelectorError

    try:
        selector = _selector(args)
    except SelectorError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_ERROR
    try:
        if args.refresh_only:
            return _refresh_only(rec, args, out, selector)
        desired = _load(args, out, err)
        if desired is None or _unselected(desired, selector, args.prune, err):
            return EXIT_ERROR
        plan = rec.plan(desired, prune=args.prune, selector=selector)
    except ReconcileError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_ERROR
    if args.output == "json":
        emit_json(plan.to_json(), out)
    else:
        render_plan(plan, out)
        for warning in plan.warnings:
            print(f"warning: {warning}", file=err)
    if plan.problems:
        return EXIT_ERROR
    return EXIT_CHANGES if plan.has_changes else EXIT_OK


def _refresh_only(
    rec: Reconciler, args: argparse.Namespace, out: TextIO, selector: Selector | None
) -> int:
    """Report drift between the record and the kernel (of the collections ``selector``
    selects, if given), change nothing."""
    status = rec.status()
    drift = [
        (c.name, d)
        for c in status.collections
        if selector is None or selector.matches(c.labels)
        for d in c.drift
    ]
    if args.output == "json":
        emit_json(
            {
                "drift": [{"collection": n, **d.to_json()} for n, d in drift],
                "garbage": [str(p) for p in status.garbage],
            },
            out,
        )
    elif drift or status.garbage:
        for n, d in drift:
            print(f"drift: {n}: {d} (the next apply repairs it)", file=out)
        for path in status.garbage:
            print(f"leftover: {path} (the next apply removes it)", file=out)
    else:
        print("No drift: the kernel matches the record.", file=out)
    return EXIT_CHANGES if drift or status.garbage else EXIT_OK


def cmd_apply(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from orchestrator.reconcile import ReconcileError
    from orchestrator.reconcile.selector import SelectorError

    try:
        selector = _selector(args)
    except SelectorError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_ERROR
    desired = _load(args, out, err)
    if desired is None or _unselected(desired, selector, args.prune, err):
        return EXIT_ERROR
    rec = _reconciler(args)
    try:
        result = rec.apply(desired, prune=args.prune, dry_run=args.dry_run, selector=selector)
    except ReconcileError as exc:
        print(f"error: {exc}", file=err)
        _explain_rejection(exc, args.verifier_log, err)
        print("nothing was changed: the previous state is still live", file=err)
        return EXIT_ERROR
    if args.output == "json":
        emit_json(result.to_json(), out)
        return EXIT_OK
    render_plan(result.plan, out)
    for warning in result.warnings:
        print(f"warning: {warning}", file=err)
    if args.dry_run == "kernel":
        print("Kernel dry run: everything loaded; nothing was changed.", file=out)
    elif args.dry_run:
        print("Dry run: nothing was changed.", file=out)
    elif result.plan.has_changes:
        add, change, destroy = result.plan.counts()
        print(
            f"Apply complete! {add} added, {change} changed, {destroy} destroyed "
            f"in {result.duration_s * 1000:.0f} ms.",
            file=out,
        )
    return EXIT_OK


def cmd_status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from orchestrator.reconcile import ReconcileError
    from orchestrator.service.daemon_status import read_status
    from orchestrator.service.errors import ServiceError

    rec = _reconciler(args, remember=args.all)  # --all observes a second time
    from orchestrator.reconcile.selector import SelectorError

    try:
        selector = _selector(args)
    except SelectorError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_ERROR
    try:
        status = rec.status()
    except ReconcileError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_ERROR
    if args.names:
        known = {c.name for c in status.collections}
        missing = [n for n in args.names if n not in known]
        if missing:
            print(f"error: not applied: {', '.join(missing)} (see bpforch status)", file=err)
            return EXIT_ERROR
        status = dataclasses.replace(
            status, collections=tuple(c for c in status.collections if c.name in args.names)
        )
    if selector is not None:
        status = dataclasses.replace(
            status, collections=tuple(c for c in status.collections if selector.matches(c.labels))
        )
    try:
        hooks = _inventory(rec) if args.all else None
    except ReconcileError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_ERROR
    try:
        daemon = read_status(args.state_dir)
    except ServiceError as exc:  # a corrupt status file must not hide the kernel's view
        print(f"warning: {exc}", file=err)
        daemon = None
    if args.output == "json":
        data = status.to_json()
        data["daemon"] = daemon.to_json() if daemon is not None else None
        if hooks is not None:
            data["hooks"] = hooks.to_json()
        emit_json(data, out)
    else:
        if daemon is not None:
            print(daemon.describe(), file=out)
        none = (
            None if selector is None else f"No applied collection matches the selector {selector}."
        )
        render_status(status, out, none)
        if hooks is not None:
            render_inventory(hooks, out)
        for warning in status.warnings:
            print(f"warning: {warning}", file=err)
    return EXIT_OK


def _inventory(rec: Reconciler) -> Inventory:
    from orchestrator.reconcile.inventory import inventory

    return inventory(rec.observe())


def cmd_destroy(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from orchestrator.commands.destroy import preserved_maps, render_footer
    from orchestrator.reconcile import Op, ReconcileError
    from orchestrator.reconcile.selector import SelectorError

    try:
        selector = _selector(args)
    except SelectorError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_ERROR
    if bool(args.names) == (bool(args.all) or selector is not None):
        print(
            "error: name the collections to destroy, or pass --all or --selector (not both)",
            file=err,
        )
        return EXIT_ERROR
    rec = _reconciler(args)
    names = None if args.all or selector is not None else list(args.names)
    preserved = preserved_maps(rec, names)
    try:
        result = rec.destroy(names, dry_run=args.dry_run, selector=selector)
    except ReconcileError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_ERROR
    if args.output == "json":
        data = result.to_json()
        gone = set(result.plan.collections(Op.DELETE))
        data["dry_run"] = args.dry_run
        data["preserved_maps"] = [p.to_json() for p in preserved if p.collection in gone]
        emit_json(data, out)
    elif selector is not None and not result.plan.collections(Op.DELETE):
        print(f"No applied collection matches the selector {selector}.", file=out)
    else:
        render_plan(result.plan, out)
        render_footer(result, preserved, args.dry_run, out)
    return EXIT_OK


def _rejection(exc: BaseException) -> VerifierError | None:
    """The verifier's rejection behind an error, if one is."""
    from orchestrator.ebpf import VerifierError

    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, VerifierError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def _explain_rejection(exc: BaseException, log_file: Path | None, err: TextIO) -> None:
    """After a failed apply: the end of the verifier's log when no class explains its
    message, and the whole log (with source lines) in ``log_file`` if one was asked for."""
    rejection = _rejection(exc)
    if rejection is None:
        return
    if rejection.kind is None:
        print("the verifier's log ends:", file=err)
        for line in rejection.tail().splitlines():
            print(f"  {line}", file=err)
    if log_file is None:
        print(
            f"(the whole verifier log of program {rejection.program}: apply --verifier-log FILE)",
            file=err,
        )
        return
    try:
        _write_text(log_file, rejection.annotated_log())
    except OSError as exc2:
        print(f"error: verifier log {log_file}: {exc2.strerror or exc2}", file=err)
        return
    print(f"the verifier log of program {rejection.program} is in {log_file}", file=err)


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8", errors="replace") as f:
        f.write(text)


# ---------------------------------------------------------------------------- verify


def _constants(items: Sequence[str]) -> dict[str, object]:
    """``NAME=VALUE`` pairs; values are read as YAML scalars, like a manifest's."""
    import yaml

    out: dict[str, object] = {}
    for item in items:
        name, eq, text = item.partition("=")
        if not eq or not name:
            raise ValueError(f"--constants {item}: not NAME=VALUE")
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            value = text
        if value is None or isinstance(value, (list, dict, float)):
            raise ValueError(
                f"--constants {item}: {text!r} is not an integer, boolean or string "
                "(quote it to pass it as text)"
            )
        out[name] = value
    return out


def _share(share: float) -> str:
    return "<0.01%" if 0 < share < 0.0001 else f"{share:.2%}"


def _us(us: int | None) -> str:
    if us is None:
        return "-"
    return f"{us} us" if us < 10_000 else f"{us / 1000:.0f} ms"


def render_verify(path: Path, reports: Sequence[ProgramReport], out: TextIO) -> None:
    """One row per program, then why each rejected (or failed) program did not load."""
    head = ("PROGRAM", "RESULT", "INSNS", "BUDGET", "STATES", "PEAK", "TIME", "XLATED", "JITED")
    rows = [head]
    for r in reports:
        s = r.stats
        walked = r.accepted or r.rejected  # the verifier saw it
        result = "verified" if r.accepted else "REJECTED" if r.rejected else "FAILED"
        rows.append(
            (
                r.name,
                result,
                f"{r.verified_insns:,}" if walked else "-",
                _share(r.budget_share) if walked else "-",
                str(s.total_states) if s.total_states is not None else "-",
                str(s.peak_states) if s.peak_states is not None else "-",
                _us(s.time_us),
                f"{r.xlated_size:,} B" if r.accepted else "-",
                f"{r.jited_size:,} B" if r.accepted else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    for row in rows:
        cells = [
            cell.ljust(w) if i < 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip(), file=out)
    from orchestrator.ebpf import VerifierError

    for r in reports:
        if r.error is None:
            continue
        if isinstance(r.error, VerifierError):
            print(f"{r.name}: {r.error.summary()}", file=out)
            if r.error.kind is None:
                for line in r.error.tail().splitlines():
                    print(f"  {line}", file=out)
        else:
            print(str(r.error), file=out)  # it names its program (or map)
    rejected = sum(1 for r in reports if r.rejected)
    failed = sum(1 for r in reports if not r.accepted and not r.rejected)
    counts = f"{len(reports) - rejected - failed} verified, {rejected} rejected"
    if failed:
        counts += f", {failed} failed before verification"
    print(f"{counts} ({path})", file=out)


def cmd_verify(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from orchestrator import ebpf
    from orchestrator.reconcile.budget import budget_warnings

    try:
        constants = _constants(args.constants)
    except ValueError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_ERROR
    try:
        store: ObjectStore = args.store
        spec = store.specs.get(args.object)  # a copy of the parsed object, ours to change
        spec.rewrite_constants(constants)
        reports = ebpf.verify(spec, args.programs or None, full_log=args.verifier_log is not None)
    except (ebpf.Error, OSError) as exc:
        text = str(exc) if isinstance(exc, ebpf.Error) else (exc.strerror or str(exc))
        where = "" if text.startswith(str(args.object)) else f"{args.object}: "
        print(f"error: {where}{text}", file=err)
        return EXIT_ERROR
    if args.verifier_log is not None:
        try:
            _write_text(args.verifier_log, _verify_logs(reports))
        except OSError as exc:
            print(f"error: verifier log {args.verifier_log}: {exc.strerror or exc}", file=err)
            return EXIT_ERROR
    if args.output == "json":
        emit_json(
            {
                "object": str(args.object),
                "programs": [r.to_json() for r in reports],
                "verified": sum(1 for r in reports if r.accepted),
                "rejected": sum(1 for r in reports if r.rejected),
                "failed": sum(1 for r in reports if not r.accepted and not r.rejected),
            },
            out,
        )
    else:
        render_verify(args.object, reports, out)
        figures = {str(args.object): {r.name: r.verified_insns for r in reports if r.accepted}}
        for warning in budget_warnings(figures, kind=""):
            print(f"warning: {warning}", file=err)
    return EXIT_OK if all(r.accepted for r in reports) else EXIT_ERROR


def _verify_logs(reports: Sequence[ProgramReport]) -> str:
    parts = []
    for r in reports:
        verdict = "verified" if r.accepted else f"rejected: {r.error}"
        parts.append(f"# program {r.name} ({r.type}): {verdict}\n{r.log}")
    return "\n".join(p if p.endswith("\n") else p + "\n" for p in parts)


def _expand_dry_run(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``--dry-run=kernel`` as argparse can take it (``--dry-run`` alone takes no value,
    so that ``apply --dry-run PATH`` keeps PATH)."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + argv[i:]
        if arg.startswith("--dry-run="):
            value = arg.partition("=")[2]
            if value not in ("kernel", "plan"):
                parser.error(
                    f"argument --dry-run: {value!r} is not a kind of dry run (--dry-run "
                    "plans only, --dry-run=kernel also loads through the verifier)"
                )
            arg = "--dry-run-kernel" if value == "kernel" else "--dry-run"
        out.append(arg)
    return out


def cmd_metrics(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from orchestrator.service import metrics
    from orchestrator.service.config import load_config
    from orchestrator.service.daemon_status import read_status
    from orchestrator.service.errors import ServiceError

    root, state_dir, paths = args.bpffs_root, args.state_dir, list(args.paths)
    if args.config is not None:
        if paths:
            print("error: give manifests or --config, not both", file=err)
            return EXIT_ERROR
        try:
            config = load_config(args.config)
        except ServiceError as exc:
            print(f"error: {exc}", file=err)
            return EXIT_ERROR
        root, state_dir, paths = config.bpffs_root, config.state_dir, list(config.manifests)
    desired = None
    if paths:
        args.paths = paths
        desired = _load(args, out, err)
        if desired is None:
            return EXIT_ERROR

    def status() -> DaemonStatus | None:
        try:
            return read_status(state_dir)
        except ServiceError as exc:
            print(f"warning: {exc}", file=err)
            return None

    registry = metrics.registry_for(lambda: metrics.Target(root, state_dir, desired), status)
    text = metrics.exposition(registry)
    if args.write is None:
        out.write(text)
        return EXIT_OK
    try:
        _replace_file(args.write, text)
    except OSError as exc:
        print(f"error: --write {args.write}: {exc.strerror or exc}", file=err)
        return EXIT_ERROR
    return EXIT_OK


def _replace_file(path: Path, text: str) -> None:
    """Write ``path`` atomically (a reader sees the old or the new file, never half)."""
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cmd_configmap(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from orchestrator import configmap

    args.output = "human"
    desired = _load(args, out, err)
    if desired is None:
        return EXIT_ERROR
    try:
        cm = configmap.build(args.name, list(args.paths), namespace=args.namespace, desired=desired)
    except (configmap.ConfigMapError, OSError) as exc:
        print(f"error: {exc}", file=err)
        return EXIT_ERROR
    out.write(configmap.render(cm))
    return EXIT_OK


def cmd_completion(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from orchestrator import completion

    out.write(completion.script(args.parser, args.shell))
    return EXIT_OK


def cmd_schema(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if (args.name is None) == (args.write is None):
        print("error: name a schema (manifest, config, crd), or pass --write DIR", file=err)
        return EXIT_ERROR
    if args.write is not None:
        try:
            for path in schemas.write(args.write):
                print(path, file=out)
        except OSError as exc:
            print(f"error: schema --write {args.write}: {exc.strerror or exc}", file=err)
            return EXIT_ERROR
        return EXIT_OK
    out.write(schemas.render(args.name))
    return EXIT_OK


# verbs that do a bounded amount of work and return (``main``'s ``one_shot``)
_BOUNDED = frozenset({cmd_validate, cmd_plan, cmd_apply, cmd_verify, cmd_status, cmd_destroy})
# verbs that print what the parser and the schemas hold, and touch no cache
_STATIC = frozenset({cmd_schema, cmd_completion})


def main(
    argv: Sequence[str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    *,
    failpoints: Failpoints | None = None,
    extra_commands: Sequence[Commands] = (),
    one_shot: bool = False,
) -> int:
    """Run one command. Its manifests and objects are read through one
    :class:`~orchestrator.manifest.ObjectStore` of its own. ``failpoints``: given to every
    reconciler the command makes (fault injection for tests; see
    :mod:`orchestrator.reconcile.failpoints`). ``one_shot``: the process exits after this
    command (the console script): a bounded verb freezes what it loads for the collector
    (see :mod:`orchestrator._gc`); a long-running one (watch, serve) never does."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        try:
            parser = build_parser(extra_commands)
            words = list(sys.argv[1:] if argv is None else argv)
            args = parser.parse_args(_expand_dry_run(parser, words))
        except SystemExit:  # --help, --version and usage errors: flush while we can catch
            sys.stdout.flush()
            raise
        args.failpoints = failpoints
        func: Callable[[argparse.Namespace, TextIO, TextIO], int] = args.func
        if one_shot and func in _BOUNDED:
            from orchestrator._gc import freeze_bursts

            freeze_bursts()
        # a static verb reads no manifest, object or kernel state: no cache to open
        code = func(args, out, err) if func in _STATIC else _with_caches(func, args, out, err)
        out.flush()  # a reader that went away shows here, not at interpreter exit
        return code
    except KeyboardInterrupt:
        print("interrupted", file=err)
        return 130
    except BrokenPipeError:
        # the reader of our output went away (| head, | true): stop quietly, as a C tool
        # killed by SIGPIPE would, without letting the exit's flush fail again
        _quiet(out, err, sys.stdout, sys.stderr)
        return EXIT_BROKEN_PIPE


def _with_caches(
    func: Callable[[argparse.Namespace, TextIO, TextIO], int],
    args: argparse.Namespace,
    out: TextIO,
    err: TextIO,
) -> int:
    """Run ``func`` with the persisted cache of ``--cache-dir``/``--no-cache`` in use for the
    kernel's BTF, and the command's :class:`~orchestrator.manifest.ObjectStore` over it as
    ``args.store`` (where the verbs read manifests and objects through)."""
    from orchestrator.ebpf import diskcache
    from orchestrator.ebpf.speccache import SpecCache
    from orchestrator.manifest import ObjectStore

    # (neither imports the ELF or BTF code: a plan served from the checked state never runs it)
    disk = service_cli.disk_cache(not args.no_cache, args.cache_dir)
    args.store = ObjectStore(SpecCache(disk=disk), manifests_disk=disk)
    previous = diskcache.use_for_kernel_btf(disk)
    try:
        return func(args, out, err)
    finally:
        diskcache.use_for_kernel_btf(previous)


def _quiet(*streams: TextIO) -> None:
    """Point the fds of ``streams`` at /dev/null (what is still buffered goes nowhere)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for stream in streams:
            try:
                fd = stream.fileno()
            except (OSError, ValueError):  # io.StringIO and the like: nothing to redirect
                continue
            os.dup2(devnull, fd)
    finally:
        os.close(devnull)
