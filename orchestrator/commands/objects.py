"""``bpforch inspect OBJECT [--manifest]``: what an object contains, without loading it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

from orchestrator.commands.output import EXIT_OK, emit_json, error, output_option, table

_VALUE_WIDTH = 60


def add_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="what an eBPF object contains (no kernel needed)",
        description="Show an object's programs (section, type, attach type and target, "
        "instruction count, the manifest hooks each fits), maps (type, key and value types "
        "from BTF, max_entries, flags, pinning), constants and variables with their initial "
        "values, externs and license, without loading anything. --manifest prints a "
        "starting manifest instead.",
    )
    p.add_argument("object", type=Path, metavar="OBJECT", help="an eBPF ELF object file")
    p.add_argument(
        "--manifest",
        action="store_true",
        help="print a starting manifest (YAML): every program attached to a target of the "
        "kind it fits, with <PLACEHOLDERS> to fill in",
    )
    output_option(p)
    p.set_defaults(func=cmd_inspect)


def cmd_inspect(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from orchestrator.manifest.inspection import inspect_object, starter_manifest
    from orchestrator.manifest.objects import ObjectError

    try:
        report = inspect_object(args.object)
    except ObjectError as exc:
        return error(err, f"inspect {args.object}: {exc}")
    if args.manifest:
        text = starter_manifest(report)
        if args.output == "json":
            emit_json({"object": str(report.path), "manifest": text}, out)
        else:
            out.write(text)
        return EXIT_OK
    if args.output == "json":
        emit_json(report.to_json(), out)
        return EXIT_OK
    render_report(report, out)
    return EXIT_OK


def _short(text: str) -> str:
    return text if len(text) <= _VALUE_WIDTH else text[: _VALUE_WIDTH - 1] + "…"


def render_report(report: object, out: TextIO) -> None:
    from orchestrator.manifest.inspection import ObjectReport
    from orchestrator.manifest.literals import render

    assert isinstance(report, ObjectReport)
    license_ = f", license {report.license}" if report.license else ""
    print(f"{report.path}: sha256 {report.sha256[:16]}…{license_}", file=out)
    print("\nprograms:", file=out)
    rows = [["NAME", "SECTION", "TYPE", "ATTACH TYPE", "TARGET", "INSNS", "FITS"]]
    for p in report.programs:
        rows.append(
            [
                p.name,
                p.section,
                p.type,
                p.attach_type or "-",
                p.attach_to or "-",
                str(p.instructions),
                ", ".join(p.fits) or "-",
            ]
        )
    table(rows, out, "  ")
    for p in report.programs:
        if p.unloadable is not None:
            print(f"  {p.name}: cannot be loaded: {p.unloadable}", file=out)
        elif not p.autoload:
            print(f"  {p.name}: not loaded unless listed in spec.programs (section ?…)", file=out)
    if report.maps:
        print("\nmaps:", file=out)
        rows = [["NAME", "TYPE", "KEY", "VALUE", "MAX ENTRIES", "FLAGS", "PINNING"]]
        for m in report.maps:
            rows.append(
                [
                    m.name,
                    m.type,
                    m.key_type or (f"{m.key_size} bytes" if m.key_size else "-"),
                    m.value_type or (f"{m.value_size} bytes" if m.value_size else "-"),
                    str(m.max_entries),
                    ",".join(m.flags) or "-",
                    m.pinning,
                ]
            )
        table(rows, out, "  ")
    for title, items in (("constants", report.constants), ("variables", report.variables)):
        if not items:
            print(f"\n{title}: none", file=out)
            continue
        print(f"\n{title}:", file=out)
        rows = [["NAME", "SECTION", "TYPE", "VALUE"]]
        for c in items:
            value = render(c.value) if c.value is not None else f"({c.size} bytes, no BTF)"
            rows.append([c.name, c.section, c.type, _short(value)])
        table(rows, out, "  ")
    if report.externs:
        print("\nexterns:", file=out)
        rows = [["NAME", "KIND", "TYPE", "WEAK"]]
        for x in report.externs:
            rows.append([x.name, x.kind, x.type, "yes" if x.weak else "no"])
        table(rows, out, "  ")
    else:
        print("\nexterns: none", file=out)
