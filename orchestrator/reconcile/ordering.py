"""The order an apply runs in: the actions a plan's decisions become, placed where the
transaction runs them (see :mod:`orchestrator.reconcile.actions`), and the actions that
destroy a recorded collection. Pure: no kernel, no files."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from orchestrator.reconcile.lines import Action, Change, Kind, Op, Unchanged
from orchestrator.reconcile.rules import attachment_title
from orchestrator.reconcile.state import ActualCollection, ActualState

if TYPE_CHECKING:
    from orchestrator.reconcile.actions import Delete, Detach, Keep, Stage, WriteEntries


def delete_collection(
    deleted: list[Delete], detaches: list[Detach], ac: ActualCollection, why: str
) -> None:
    """Append the action that destroys ``ac`` (its lines: the collection, its attachments,
    programs and maps), and the detaches of its links."""
    from orchestrator.reconcile.actions import Delete, Detach

    rec = ac.record
    lines = [
        Change(
            Op.DELETE, Kind.COLLECTION, rec.name, rec.name, f"{why} (generation {rec.generation})"
        )
    ]
    for key, ra in sorted(rec.attachments.items()):
        lines.append(
            Change(
                Op.DELETE,
                Kind.ATTACHMENT,
                rec.name,
                key,
                f"link {ra.link_id} is detached",
                title=attachment_title(ra.program, ra.kind, ra.target),
            )
        )
        detaches.append(Detach(rec.name, ra))
    for pname, pr in sorted(rec.programs.items()):
        lines.append(Change(Op.DELETE, Kind.PROGRAM, rec.name, pname, f"program id {pr.id}"))
    for mname, mr in sorted(rec.maps.items()):
        if mr.source:
            continue
        why_map = f"map id {mr.id}"
        if mr.preserve:
            why_map += ", preserved: its contents are deleted with it"
        lines.append(Change(Op.DELETE, Kind.MAP, rec.name, mname, why_map))
    deleted.append(Delete(rec.name, rec, ac.ident, lines=tuple(lines)))


def transaction_actions(
    actual: ActualState,
    collections: Sequence[Unchanged | Stage | Keep | WriteEntries],
    links: Sequence[Action],
    deleted: Sequence[Delete],
    detaches: Sequence[Detach],
    entries: dict[str, dict[str, str]] | None = None,
) -> tuple[Action, ...]:
    """Every action of an apply, in the order the transaction runs them (see
    :mod:`orchestrator.reconcile.actions`). Only the collections' own actions when there is
    nothing to do: no change, no leftover, no bookkeeping (collections adopted from their
    markers, recovered from them after a killed apply, or made before markers existed are
    recorded and marked; a root with
    collections but no owner marker is claimed)."""
    own = actual.ownership
    unsettled = bool(own.adopted or own.unmarked or own.recovered) or (
        bool(actual.collections) and not own.token
    )
    # no collection staged, kept or written to
    unchanged = all(isinstance(a, Unchanged) for a in collections)
    if unchanged and not deleted and not actual.staging and not unsettled:
        return tuple(collections)
    from orchestrator.reconcile.actions import (
        ClaimRoot,
        Commit,
        Keep,
        Mark,
        OpenStaging,
        Release,
        ReleaseRoot,
        RemoveLeftover,
        RemoveStaging,
        Seal,
        Stage,
        WriteRecord,
    )

    staged = [a for a in collections if isinstance(a, Stage | Keep)]
    out: list[Action] = [RemoveLeftover(path) for path in actual.staging]
    if not own.token and (staged or actual.collections):
        out.append(ClaimRoot())
    staging = bool(staged or deleted)
    if staging:
        out.append(OpenStaging())
    out += collections
    out += links
    out.append(Seal(actual.record, tuple(a.collection for a in deleted), entries or {}))
    for a in staged:
        ac = actual.collections.get(a.collection)
        out.append(Commit(a.collection, ac is not None, ac.ident if ac is not None else None))
    out += deleted
    out.append(WriteRecord())
    if staging:
        out.append(Release())
        out += detaches
        out.append(RemoveStaging())
    touched = {a.collection for a in staged} | {a.collection for a in deleted}
    for name in own.unmarked:
        ac = actual.collections.get(name)
        if name not in touched and ac is not None and not ac.drift:
            out.append(Mark(name, ac.record))
    if not staged and set(actual.collections) <= {a.collection for a in deleted}:
        out.append(ReleaseRoot())  # nothing is recorded any more
    return tuple(out)


__all__ = ["delete_collection", "transaction_actions"]
