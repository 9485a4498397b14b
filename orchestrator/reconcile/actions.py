"""What a plan is made of: the typed actions an apply runs, in the order it runs them, and
the lines (:class:`Change`) the plan prints for them.

The planner decides everything here (:func:`orchestrator.reconcile.plan.plan`, pure); the
transaction (:mod:`orchestrator.reconcile.transaction`) executes exactly these actions, in
this order, and decides nothing of its own: it only turns names and records into kernel
handles and checks that the kernel still is what the plan saw. Every printed line belongs
to the one action that does what it says; an action may print nothing (the steps every
apply takes: the staging directory, the record) or lines about several things (a
collection's maps and programs are staged by one load).

The order of an apply, and the failpoints each action reaches
(:mod:`orchestrator.reconcile.failpoints`)::

    RemoveLeftover*          staging directories of interrupted applies
    ClaimRoot?               the root's owner marker, on the first apply under a root
    OpenStaging?             the staging directory of this transaction
    Unchanged | Stage | Keep per collection, dependencies first          load verify pin
                             (a WriteEntries action, for map contents a manifest declares,
                             belongs right after its collection's Stage or Keep: its maps
                             are staged, and nothing is switched to them yet)
    KeepLink | SwitchLink | Attach | MakeBeforeBreak   per attachment   switch / attach
    Reattach*                XDP links attached anew for their mode, last           attach
    Seal                     the new record, and each staged tree's ownership marker
    Commit* Delete*          staged trees swapped into place, deleted ones moved out commit
    WriteRecord              the record is written: the apply is committed          record
    Release Detach* RemoveStaging   the old generation goes (failures are warnings) release
    Mark* ReleaseRoot?       markers for collections made before markers existed; the root
                             given up when nothing under it is bpforch's any more

A failure before the record is written undoes every step (the transaction's journal).

The lines (:class:`Change` and what it is made of), :class:`PlanProblem`, the base
:class:`Action` and :class:`Unchanged` are defined in :mod:`orchestrator.reconcile.lines`
and exported here too: a plan that changes nothing imports only that module, and this one
is imported when a plan makes any other action.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from orchestrator.manifest.model import Attachment, DesiredCollection
from orchestrator.reconcile.lines import (
    Action,
    Change,
    FieldDiff,
    Kind,
    Op,
    PlanProblem,
    Unchanged,
)
from orchestrator.reconcile.state import (
    AttachmentRecord,
    CollectionRecord,
    MapRecord,
    MapShape,
    StateRecord,
)

# ---------------------------------------------------------------------------- maps


@dataclass(frozen=True, slots=True)
class FromPin:
    """A map pinned outside the root (``from: {pinned: PATH}``), opened through its path
    (checked again to be a pin on bpffs when it is opened)."""

    path: Path

    def to_json(self) -> dict[str, object]:
        return {"from": "pinned", "path": str(self.path)}


@dataclass(frozen=True, slots=True)
class FromStaged:
    """A map of a collection staged earlier in this transaction (loaded anew, or kept and
    pinned in its new tree)."""

    collection: str
    map: str

    def to_json(self) -> dict[str, object]:
        return {"from": "staged", "collection": self.collection, "map": self.map}


@dataclass(frozen=True, slots=True)
class FromLive:
    """A live map of an applied collection: through its pin, or (not pinned) by id through
    a program of ``owner`` that holds it."""

    collection: str
    map: MapRecord
    owner: CollectionRecord = field(repr=False, compare=False)

    def to_json(self) -> dict[str, object]:
        return {"from": "live", "collection": self.collection, "map": self.map.name,
                "id": self.map.id}  # fmt: skip


@dataclass(frozen=True, slots=True)
class NotApplied:
    """A map of a collection that is neither applied nor staged: the apply fails there."""

    collection: str
    map: str

    def to_json(self) -> dict[str, object]:
        return {"from": "not applied", "collection": self.collection, "map": self.map}


MapSource = FromPin | FromStaged | FromLive | NotApplied


@dataclass(frozen=True, slots=True)
class Replacement:
    """A map handed to a load in place of the one the object declares: a preserved map (its
    own live map) or a substitution (``from``). ``record``: the substitution as the record
    keeps it (``collection/<name>/<map>`` or ``pinned:<path>``; "" for a preserved map)."""

    map: str
    source: MapSource
    record: str = ""

    def to_json(self) -> dict[str, object]:
        return {"map": self.map, **self.source.to_json()}


class MapFate(enum.Enum):
    """What becomes of a map of a kept collection."""

    PIN = "pin"  # opened (pin, or through its programs) and pinned in the new tree
    HELD = "held"  # not pinned: its programs hold it (recorded by id, without a pin)
    CARRY = "carry"  # a substitution: someone else's, recorded as it is
    DROP = "drop"  # unpinned and held by nothing: freed with the old tree


@dataclass(frozen=True, slots=True)
class KeptMap:
    map: MapRecord
    fate: MapFate


# ---------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class RemoveLeftover(Action):
    """Remove the staging directory of an interrupted apply (its marker proves it ours)."""

    action: ClassVar[str] = "remove_leftover"
    path: Path

    def to_json(self) -> dict[str, object]:
        return {"action": self.action, "path": str(self.path)}


@dataclass(frozen=True, slots=True)
class ClaimRoot(Action):
    """Pin the root's owner marker: nothing under the root was bpforch's yet."""

    action: ClassVar[str] = "claim_root"


@dataclass(frozen=True, slots=True)
class OpenStaging(Action):
    """Make this transaction's staging directory, with its marker."""

    action: ClassVar[str] = "open_staging"


@dataclass(frozen=True, slots=True)
class Stage(Action):
    """Load the collection's object through the verifier (constants rewritten, ``replacements``
    handed over) and pin the new generation under the staging directory: the maps in
    ``pinned`` and every program. ``load_maps``: with a program binding, the maps loaded
    besides what the programs use (None: the whole object is loaded). ``object_sha256``: the
    object the plan read (the apply refuses another); ``shapes``: the shape of each map it
    creates, as the plan read them from that object (recorded as they are)."""

    action: ClassVar[str] = "stage"
    collection: str
    desired: DesiredCollection = field(repr=False, compare=False)
    object_sha256: str
    load_key: str
    replacements: tuple[Replacement, ...]
    pinned: frozenset[str]
    load_maps: tuple[str, ...] | None
    shapes: Mapping[str, MapShape] = field(repr=False, compare=False)
    # the maps the loaded programs hold (kept without a pin, recorded by id), as the plan
    # read them from the same object (``CollectionFacts.held``); None: found at the load
    held: frozenset[str] | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, object]:
        return {
            "action": self.action,
            "collection": self.collection,
            "object": str(self.desired.object_file),
            "object_sha256": self.object_sha256,
            "replacements": [r.to_json() for r in self.replacements],
            "pinned": sorted(self.pinned),
        }


@dataclass(frozen=True, slots=True)
class Keep(Action):
    """Keep a collection's live programs and maps (only its attachments, metadata or pins
    change): they get a second pin in the new tree, each map as ``maps`` says. ``fresh``:
    programs loaded once more from the same object with the live maps (a tcx link placed
    anew needs another instance); ``fresh_replacements``: the substituted maps they get
    (the unpinned maps their live instances hold are taken by id)."""

    action: ClassVar[str] = "keep"
    collection: str
    desired: DesiredCollection = field(repr=False, compare=False)
    record: CollectionRecord = field(repr=False, compare=False)
    maps: tuple[KeptMap, ...]
    fresh: tuple[str, ...] = ()
    fresh_replacements: tuple[Replacement, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "action": self.action,
            "collection": self.collection,
            "maps": {k.map.name: k.fate.value for k in self.maps},
            "fresh": list(self.fresh),
        }


@dataclass(frozen=True, slots=True)
class WriteEntries(Action):
    """Make map ``map`` of ``collection`` hold its declared entries in ``mode`` (exact: a
    set diff, merge: add and update): the staged map of a Stage or Keep (filled before any
    link is switched to it), else the live map of the record. The writes are computed
    against the map as the transaction finds it (a new map holds what its object puts
    there) and undone if the apply fails (the digest recorded for the map travels in
    :class:`Seal`'s ``entries``)."""

    action: ClassVar[str] = "write_entries"
    collection: str
    map: str
    mode: str
    desired: DesiredCollection = field(repr=False, compare=False)
    record: CollectionRecord | None = field(default=None, repr=False, compare=False)
    add: int = 0
    update: int = 0
    delete: int = 0

    def to_json(self) -> dict[str, object]:
        return {
            "action": self.action,
            "collection": self.collection,
            "map": self.map,
            "mode": self.mode,
            "add": self.add,
            "update": self.update,
            "delete": self.delete,
        }


@dataclass(frozen=True, slots=True)
class _LinkAction(Action):
    """An attachment of a staged collection; its link is pinned at ``pin`` (relative to the
    collection directory) in the new tree, ``link_kind`` is what the record says of it."""

    collection: str
    attachment: Attachment = field(repr=False, compare=False)
    key: str
    link_kind: str
    pin: str

    def to_json(self) -> dict[str, object]:
        return {
            "action": self.action,
            "collection": self.collection,
            "attachment": self.key,
            "program": self.attachment.program,
        }


@dataclass(frozen=True, slots=True)
class KeepLink(_LinkAction):
    """The live ``link`` stays as it is (it gets a second pin in the new tree)."""

    action: ClassVar[str] = "keep_link"
    link: AttachmentRecord

    def to_json(self) -> dict[str, object]:
        return {**_LinkAction.to_json(self), "link_id": self.link.link_id}


@dataclass(frozen=True, slots=True)
class SwitchLink(_LinkAction):
    """Switch the live ``link`` to the staged program in place (BPF_LINK_UPDATE: the hook is
    never empty), unless it already runs that program."""

    action: ClassVar[str] = "switch_link"
    link: AttachmentRecord

    def to_json(self) -> dict[str, object]:
        return {**_LinkAction.to_json(self), "link_id": self.link.link_id}


@dataclass(frozen=True, slots=True)
class Attach(_LinkAction):
    """Attach the staged program by a new link. ``take_over``: an XDP program attached
    through netlink by someone else may be detached for it (the manifest says so)."""

    action: ClassVar[str] = "attach"
    take_over: bool = False


@dataclass(frozen=True, slots=True)
class MakeBeforeBreak(_LinkAction):
    """Attach the staged program by a new link while ``replaces`` still runs; the old link
    is detached when the old generation is released (a :class:`Detach` after the commit)."""

    action: ClassVar[str] = "make_before_break"
    replaces: AttachmentRecord
    take_over: bool = False

    def to_json(self) -> dict[str, object]:
        return {**_LinkAction.to_json(self), "replaces": self.replaces.link_id}


@dataclass(frozen=True, slots=True)
class Reattach(_LinkAction):
    """Detach the XDP ``link`` and attach the staged program again by a new link, in the
    mode the manifest asks for (an XDP link's mode is fixed, and native and generic programs
    cannot share an interface). Runs after every other switch."""

    action: ClassVar[str] = "reattach"
    link: AttachmentRecord
    take_over: bool = False

    def to_json(self) -> dict[str, object]:
        return {**_LinkAction.to_json(self), "link_id": self.link.link_id}


@dataclass(frozen=True, slots=True)
class Seal(Action):
    """Build the new record (``base``, the record the plan was made against, with each
    staged collection's new entry, without the ``deleted`` ones) and pin each staged tree's
    ownership marker holding its entry."""

    action: ClassVar[str] = "seal"
    base: StateRecord = field(repr=False, compare=False)
    deleted: tuple[str, ...] = ()
    # collection -> map -> digest of the declared entries written (recorded)
    entries: dict[str, dict[str, str]] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Commit(Action):
    """Swap the collection's staged tree with its live one (``renameat2(RENAME_EXCHANGE)``),
    or move it into place if there is none. ``exists``: whether the plan saw the collection
    live (False: the move refuses to replace anything, and whatever took the name since
    the plan fails the apply; True: a symlink or mount point there is refused). ``ident``:
    the (st_dev, st_ino) of the live directory the plan proved ours (None: there was none);
    a directory there with another identity at the commit is never swapped out."""

    action: ClassVar[str] = "commit"
    collection: str
    exists: bool = field(default=True, compare=False)
    ident: tuple[int, int] | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, object]:
        return {"action": self.action, "collection": self.collection}


@dataclass(frozen=True, slots=True)
class Delete(Action):
    """Move a deleted collection's tree into the staging directory: its links are detached
    (:class:`Detach`) and its pins removed when the old generation is released. ``ident``:
    the (st_dev, st_ino) of the directory the plan proved ours (None: there was none); a
    directory there with another identity at the commit is never moved."""

    action: ClassVar[str] = "delete"
    collection: str
    record: CollectionRecord = field(repr=False, compare=False)
    ident: tuple[int, int] | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, object]:
        return {"action": self.action, "collection": self.collection}


@dataclass(frozen=True, slots=True)
class WriteRecord(Action):
    """Write the new record atomically: from here on the apply is committed."""

    action: ClassVar[str] = "write_record"


@dataclass(frozen=True, slots=True)
class Release(Action):
    """The old generation is about to be released (if this step fails, the rest of the
    release is left to the next apply)."""

    action: ClassVar[str] = "release"


@dataclass(frozen=True, slots=True)
class Detach(Action):
    """Detach ``link`` of the old generation (found at its pin in the old tree, and only if
    the pin still holds that link)."""

    action: ClassVar[str] = "detach"
    collection: str
    link: AttachmentRecord

    def to_json(self) -> dict[str, object]:
        return {"action": self.action, "collection": self.collection,
                "attachment": self.link.key, "link_id": self.link.link_id}  # fmt: skip


@dataclass(frozen=True, slots=True)
class RemoveStaging(Action):
    """Remove the staging directory, now holding the old trees: what was pinned only there
    (programs and maps of the old generation) is freed."""

    action: ClassVar[str] = "remove_staging"


@dataclass(frozen=True, slots=True)
class Mark(Action):
    """Pin the ownership marker of a collection made before markers existed (its record
    proves it bpforch's)."""

    action: ClassVar[str] = "mark"
    collection: str
    record: CollectionRecord = field(repr=False, compare=False)

    def to_json(self) -> dict[str, object]:
        return {"action": self.action, "collection": self.collection}


@dataclass(frozen=True, slots=True)
class ReleaseRoot(Action):
    """Remove the root's owner marker: the record is empty (nothing under the root is
    bpforch's any more, if every tree went completely)."""

    action: ClassVar[str] = "release_root"


LinkAction = KeepLink | SwitchLink | Attach | MakeBeforeBreak | Reattach


__all__ = [
    "Action",
    "Attach",
    "Change",
    "ClaimRoot",
    "Commit",
    "Delete",
    "Detach",
    "FieldDiff",
    "FromLive",
    "FromPin",
    "FromStaged",
    "Keep",
    "KeepLink",
    "KeptMap",
    "Kind",
    "LinkAction",
    "MakeBeforeBreak",
    "MapFate",
    "MapSource",
    "Mark",
    "NotApplied",
    "Op",
    "OpenStaging",
    "PlanProblem",
    "Reattach",
    "Release",
    "ReleaseRoot",
    "RemoveLeftover",
    "RemoveStaging",
    "Replacement",
    "Seal",
    "Stage",
    "SwitchLink",
    "Unchanged",
    "WriteEntries",
    "WriteRecord",
]
