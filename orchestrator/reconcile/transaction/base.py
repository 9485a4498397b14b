"""What every step of the transaction shares: its state (the staged collections, the undo
list, the fds it owns, the warnings) and the ways it reaches pins and maps."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator import ebpf
from orchestrator.ebpf import BTFCache, Collection, Map, Program
from orchestrator.ebpf import link as _links
from orchestrator.ebpf.inspect import FD, remove_tree_at
from orchestrator.manifest.cache import ObjectSnapshot
from orchestrator.manifest.cache import default as default_store
from orchestrator.manifest.model import DesiredCollection, Source
from orchestrator.reconcile.actions import FromPin, FromStaged, MapSource, NotApplied
from orchestrator.reconcile.errors import ApplyError
from orchestrator.reconcile.facts import pinned_problem
from orchestrator.reconcile.failpoints import Failpoints
from orchestrator.reconcile.observe import open_map
from orchestrator.reconcile.owner import MARK_PIN, STAGING_PREFIX, open_owned
from orchestrator.reconcile.plan import Plan
from orchestrator.reconcile.state import CollectionRecord, MapRecord, MapShape, StateRecord
from orchestrator.reconcile.transaction.journal import Journal


def pin_name(name: str) -> str:
    """A map or program name as a bpffs file name (bpffs refuses dots: ``.rodata`` is
    pinned as ``_rodata``)."""
    return check_name(name.replace(".", "_"))


def check_name(name: str) -> str:
    if not name or "/" in name or "." in name or "\0" in name:
        raise ApplyError(f"{name!r}: not usable as a pin name")
    return name


@dataclass
class Staged:
    """One collection's next generation while the transaction runs: freshly loaded
    (``coll``), or the live programs and maps kept (``coll`` None, only attachments or
    metadata changed)."""

    desired: DesiredCollection
    # the staged tree's name in the staging directory: everything in it is made (and its
    # pins' inodes read) relative to the staging directory's fd
    rel: str
    coll: Collection | None
    maps: dict[str, Map]
    programs: dict[str, Program]
    object_sha256: str
    load_key: str
    shapes: dict[str, MapShape]
    sources: dict[str, str] = field(default_factory=dict)  # map -> substitution key
    pinned: set[str] = field(default_factory=set)  # maps pinned under maps/ (see pin_reason)
    held: set[str] = field(default_factory=set)  # maps the programs hold (not pinned: kept)
    carried: dict[str, MapRecord] = field(default_factory=dict)  # kept records, verbatim
    # attachment key -> (link, kind, pin relative to the collection directory)
    links: dict[str, tuple[_links.Link, str, str]] = field(default_factory=dict)


class TransactionBase:
    """The state of one transaction; the steps are the mixins of
    :class:`~orchestrator.reconcile.transaction.Transaction`."""

    def __init__(
        self,
        root: Path,
        state_dir: Path,
        failpoints: Failpoints,
        plan: Plan,
        objects: ObjectSnapshot | None = None,
        *,
        root_fd: int,
    ) -> None:
        self.objects = objects if objects is not None else default_store.snapshot()
        self.root = root
        self.state_dir = state_dir
        self.failpoints = failpoints
        self.plan = plan
        self.txid = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.staging = root / f"{STAGING_PREFIX}{self.txid}"
        self.root_fd = root_fd  # held open (and locked) by the caller
        self.staging_fd: int | None = None
        self.token = plan.owner_token
        self.claimed = False  # this transaction pinned the root's owner marker
        self.complete = True  # every tree it removed went completely
        self.staged: dict[str, Staged] = {}
        self.record: StateRecord | None = None  # the new record, once sealed
        # collection -> its entry of ``record`` as JSON, made for its marker (the record
        # file is written with the same text); only for that sealed record
        self.texts: dict[str, str] = {}
        self.journal = Journal()  # what to undo if the apply fails before the record
        self.owned: list[Map | Program | _links.Link] = []  # fds closed at the end
        # the BTF of the objects it loads, each loaded once for all the collections that
        # load that object (closed at the end; what was loaded keeps its own reference)
        self.btf = BTFCache()
        self.warnings: list[str] = []
        self.current: tuple[str, Source | None] = ("", None)  # for error messages
        self.verify_only = False
        self.verified: dict[str, dict[str, int]] = {}  # the kernel dry run's verified_insns

    def _pin_staged(self, obj: Map | Program | _links.Link, rel: str) -> None:
        """Pin ``obj`` at ``rel``, a path in the staging directory, relative to its fd (no
        lookup from the root); a failure names the pin by its whole path."""
        assert self.staging_fd is not None  # the staged trees are in the staging directory
        obj.pin(rel, dir_fd=self.staging_fd, shown_dir=os.fspath(self.staging))

    def _remove(self, name: str, what: str) -> None:
        """Remove the tree ``<root>/name`` (never following a symlink; its marker goes
        last); a failure or what was left is a warning."""
        shown = os.fspath(self.root / name)
        try:
            result = remove_tree_at(self.root_fd, name, shown=shown, last=MARK_PIN)
        except (OSError, ebpf.Error) as err:
            self.complete = False
            self.warnings.append(f"{what}: {err}")
            return
        if result.left:
            self.complete = False
            self.warnings.append(
                f"{what}: left {', '.join(result.left)} (not bpforch's: symlinks and mount "
                "points are never followed or removed; remove them by hand)"
            )

    def _map(self, source: MapSource) -> Map:
        """An fd of the map the plan named (owned by the transaction, or by the staged
        collection that holds it)."""
        if isinstance(source, FromStaged):
            st = self.staged.get(source.collection)
            if st is None or source.map not in st.maps:
                raise ApplyError(
                    f"collection {source.collection} has no map {source.map}",
                    collection=source.collection,
                )
            return st.maps[source.map]
        if isinstance(source, NotApplied):
            raise ApplyError(
                f"map {source.map} of collection {source.collection}: not applied (apply "
                f"{source.collection} first, or in the same run)"
            )
        if isinstance(source, FromPin):
            m = Map.from_pin(self._pinned_path(source.path))
        else:
            m = self._live_map(source.owner, source.map)
        self.owned.append(m)
        return m

    def _live_map(self, rec: CollectionRecord, mr: MapRecord) -> Map:
        """A live map of ``rec`` (not a substitution): through its pin, never a symlink, or
        (not pinned) through the programs that hold it."""
        if mr.pin:
            return Map.from_fd(self._open(rec.name, mr.pin))
        return open_map(self.root, rec, mr)

    def _pinned_path(self, path: Path) -> Path:
        problem = pinned_problem(path)
        if problem is not None:
            raise ApplyError(problem)
        return Path(os.path.realpath(path))

    def _open(self, coll: str, rel: str) -> FD:
        """BPF_OBJ_GET of the pin ``<root>/coll/rel``, never through a symlink."""
        parts = [check_name(coll), *rel.split("/")]
        for part in parts:
            if part in ("", ".", ".."):
                raise ApplyError(f"{self.root}/{coll}/{rel}: not a pin path bpforch makes")
        try:
            return open_owned(self.root_fd, "/".join(parts))
        except (OSError, ebpf.Error) as err:
            raise ApplyError(f"pin {self.root}/{coll}/{rel}: {err}") from err
