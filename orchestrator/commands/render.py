"""How plans, status and the hooks inventory are printed for a terminal (``--output json``
is each value's ``to_json``): terraform-style blocks, coloured by operation when the output
is a terminal and ``NO_COLOR`` is unset."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, TextIO

from orchestrator.commands.output import table

if TYPE_CHECKING:
    from orchestrator.reconcile import Plan, Status
    from orchestrator.reconcile.inventory import Inventory

ENTRY_LINES = 20  # entry changes printed per map (the rest are counted)
RECOVERED = (
    "an apply was killed after putting its tree in place, before writing the record: what the "
    "tree holds is read from its ownership marker"
)


def color_of(stream: TextIO) -> bool:
    return stream.isatty() and os.environ.get("NO_COLOR") is None


def paint(text: str, op: str, color: bool) -> str:
    if not color:
        return text
    code = {"create": "32", "update": "33", "replace": "35", "delete": "31"}.get(op)
    return f"\033[{code}m{text}\033[0m" if code else text


def render_plan(plan: Plan, out: TextIO) -> None:
    """terraform-style: one block per collection (with where it is declared), each change
    with its reason, then problems and the summary line."""
    from orchestrator.reconcile import Change, Kind, Op

    color = color_of(out)
    by_collection: dict[str, list[Change]] = {}
    for ch in plan.changes:
        by_collection.setdefault(ch.collection, []).append(ch)
    if not plan.has_changes and not plan.problems:
        print("No changes. The kernel matches the manifests.", file=out)
        render_ownership(plan, out)
        return
    if plan.has_changes:
        print("bpforch will perform the following actions:\n", file=out)
    for name, items in by_collection.items():
        if all(c.op is Op.NOOP for c in items):
            continue
        shown = [c for c in items if c.printed]
        head = next((c for c in items if c.kind is Kind.COLLECTION), None)
        op = head.op if head is not None else Op.NOOP
        line = f"  {op.symbol} collection {name}"
        if head is not None and head.reason:
            line += f": {head.reason}"
        if head is not None and head.source is not None:
            line += f"  ({head.source})"
        print(paint(line, op.value, color), file=out)
        for diff in head.diffs if head is not None else ():
            print(paint(f"        {diff}", op.value, color), file=out)
        entries: dict[str, int] = {}  # map -> entry lines printed
        for ch in shown:
            if ch is head:
                continue
            if ch.kind is Kind.ENTRY:
                n = entries[ch.name] = entries.get(ch.name, 0) + 1
                if n <= ENTRY_LINES:
                    line = f"      {ch.op.symbol} entry {ch.name} {ch.reason}"
                    print(paint(line, ch.op.value, color), file=out)
                elif n == ENTRY_LINES + 1:
                    more = sum(1 for c in shown if c.kind is Kind.ENTRY and c.name == ch.name)
                    print(
                        f"      … {more - ENTRY_LINES} more entry changes in map {ch.name} "
                        "(--output json lists each)",
                        file=out,
                    )
                continue
            line = f"      {ch.symbol} {ch.kind.value} {ch.title or ch.name}"
            if ch.reason:
                line += f": {ch.reason}"
            print(paint(line, ch.op.value, color), file=out)
            for diff in ch.diffs:
                print(paint(f"          {diff}", ch.op.value, color), file=out)
        print(file=out)
    for path in plan.garbage:
        print(f"  - leftover {path} (from an interrupted apply; removed)", file=out)
    render_ownership(plan, out, "  ")
    for prob in plan.problems:
        print(paint(f"error: {prob}", "delete", color), file=out)
    print(plan.summary(), file=out)


def render_ownership(plan: Plan, out: TextIO, indent: str = "") -> None:
    for name in plan.adopted:
        print(f"{indent}adopted: {name} (no record listed it: rebuilt from its marker)", file=out)
    for name in plan.recovered:
        print(f"{indent}recovered: {name} ({RECOVERED})", file=out)
    for f in plan.foreign:
        print(f"{indent}foreign: {f} (not bpforch's: left alone)", file=out)


def render_status(status: Status, out: TextIO, none: str | None = None) -> None:
    """``none``: what to say when there is no collection (the default: none is applied)."""
    from orchestrator.reconcile.lines import FieldDiff

    if not status.collections:
        print(none if none is not None else "No collections applied.", file=out)
    for c in status.collections:
        rev = f", git {c.git_revision[:12]}" if c.git_revision else ""
        print(
            f"{c.name}: {c.condition} (generation {c.generation}, observed "
            f"{c.observed_generation}, digest {c.digest[:12]}{rev})",
            file=out,
        )
        if c.message:
            print(f"  {c.reason}: {c.message}", file=out)
        print(f"  manifest {c.manifest}, applied {c.applied_at}", file=out)
        if c.labels is None:
            print("  labels: not recorded (applied before bpforch kept them)", file=out)
        elif c.labels:
            print(f"  labels: {', '.join(f'{k}={v}' for k, v in c.labels.items())}", file=out)
        for cname, value in (c.constants if c.constants is not None else {}).items():
            print(f"  constant {cname}: {FieldDiff.shown(value)}", file=out)
        for p in c.programs:
            verified = f", {p.verified_insns:,} insns verified" if p.verified_insns else ""
            print(f"  program {p.name}: id {p.id}, tag {p.tag}{verified}", file=out)
        for m in c.maps:
            entries = f", {m.entries} entries" if m.entries is not None else ""
            where = f" from {m.source}" if m.source else ", pinned" if m.pin else ""
            print(
                f"  map {m.name}: id {m.id}, {m.type}, max {m.max_entries}{entries}{where}",
                file=out,
            )
        for a in c.attachments:
            state = "attached" if a.alive else "DETACHED"
            print(f"  attachment {a.title or a.key}: link {a.link_id}, {state}", file=out)
        for d in c.drift:
            print(f"  drift: {d} (the next apply repairs it)", file=out)
    for path in status.garbage:
        print(f"leftover: {path} (the next apply removes it)", file=out)
    for name in status.adopted:
        print(
            f"adopted: {name} (no record listed it: rebuilt from its ownership marker; the "
            "next apply records it)",
            file=out,
        )
    for name in status.recovered:
        print(f"recovered: {name} ({RECOVERED}; the next apply records it)", file=out)
    for f in status.foreign:
        print(f"foreign: {f} (not bpforch's: never followed, changed or removed)", file=out)


def render_inventory(hooks: Inventory, out: TextIO) -> None:
    """One line per program at a hook, like ``bpftool net``, owned or foreign."""
    print("\nOn the hooks bpforch manages:", file=out)
    if not hooks.entries:
        print("  nothing attached", file=out)
    rows = [("HOOK", "TARGET", "PROGRAM", "LINK", "OWNER")]
    for e in hooks.entries:
        target = e.target + (f" (netns {e.netns})" if e.netns else "")
        detail = f", {e.detail}" if e.detail else ""
        rows.append(
            (
                e.hook,
                target,
                f"{e.program} (id {e.program_id}{detail})",
                str(e.link_id) if e.link_id is not None else "-",
                f"owned: {e.owner}" if e.owned else "foreign",
            )
        )
    if hooks.entries:
        table(rows, out, "  ")
    for problem in hooks.problems:
        print(f"  warning: {problem}", file=out)
