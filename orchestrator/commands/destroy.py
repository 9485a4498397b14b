"""What ``bpforch destroy`` says besides its plan: the preserved maps whose contents go with
the collections it destroys, and its summary line."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from orchestrator.reconcile import Op, Reconciler
from orchestrator.reconcile.reconciler import ApplyResult

# maps whose entries are counted by walking the keys; arrays always hold max_entries
_COUNTED = frozenset(
    {"hash", "percpu_hash", "lru_hash", "lru_percpu_hash", "lpm_trie", "hash_of_maps"}
)
_ARRAYS = frozenset({"array", "percpu_array"})


@dataclass(frozen=True, slots=True)
class PreservedMap:
    collection: str
    name: str
    id: int
    entries: int | None  # None: not counted (a ring buffer, a queue …, or unreadable)

    def to_json(self) -> dict[str, object]:
        return {
            "collection": self.collection,
            "map": self.name,
            "id": self.id,
            "entries": self.entries,
        }


def preserved_maps(rec: Reconciler, names: Sequence[str] | None) -> list[PreservedMap]:
    """The preserved maps of the collections ``names`` (all if None) with their entry
    counts, read before they are destroyed. Best effort: what can't be read is not counted."""
    from orchestrator.ebpf import Error as EbpfError
    from orchestrator.ebpf import MapType
    from orchestrator.reconcile import ReconcileError
    from orchestrator.reconcile.observe import open_map

    try:
        actual = rec.observe()
    except ReconcileError:
        return []
    out = []
    for cname, ac in sorted(actual.collections.items()):
        if names is not None and cname not in names:
            continue
        for mname, mr in sorted(ac.record.maps.items()):
            if not mr.preserve or mr.source:
                continue
            entries: int | None = None
            try:
                with open_map(rec.bpffs_root, ac.record, mr) as m:
                    kind = m.type.name.lower() if isinstance(m.type, MapType) else ""
                    if kind in _COUNTED:
                        entries = m.count_entries()
                    elif kind in _ARRAYS:
                        entries = m.max_entries
            except (EbpfError, OSError):
                entries = None
            out.append(PreservedMap(cname, mname, mr.id, entries))
    return out


def render_footer(
    result: ApplyResult, preserved: list[PreservedMap], dry_run: bool, out: TextIO
) -> None:
    """After the plan: the preserved maps whose contents are deleted, then the summary."""
    deleted = set(result.plan.collections(Op.DELETE))
    for pm in preserved:
        if pm.collection not in deleted:
            continue
        count = (
            "" if pm.entries is None else f", {pm.entries} entr{'y' if pm.entries == 1 else 'ies'}"
        )
        verb = "would be deleted" if dry_run else "deleted"
        print(
            f"Preserved map {pm.collection}/{pm.name} (id {pm.id}{count}): its contents "
            f"{verb} with it.",
            file=out,
        )
    if dry_run:
        _, _, destroyed = result.plan.counts()
        n = len(deleted)
        would = (
            f"{n} collection{'s' if n != 1 else ''}, {destroyed} objects would be destroyed; "
            if n
            else ""
        )
        print(f"Dry run: {would}nothing was changed.", file=out)
    elif result.plan.has_changes:
        _, _, destroyed = result.plan.counts()
        n = len(deleted)
        print(
            f"Destroy complete! {n} collection{'s' if n != 1 else ''}, {destroyed} objects "
            f"destroyed in {result.duration_s * 1000:.0f} ms.",
            file=out,
        )
