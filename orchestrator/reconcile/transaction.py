"""The apply transaction: stage → switch → commit, or roll back to the old generation.

Layout on bpffs (nothing ever carries a version or generation in its name)::

    <root>/<collection>/maps/<map>        the maps the collection pins (see below)
    <root>/<collection>/progs/<program>
    <root>/<collection>/links/<link>      one pin per attachment
    <root>/_staging-<txid>/<collection>/…  the next generation while it is being built

bpffs refuses names with a dot, so pins use ``_`` (``.rodata`` is pinned as ``_rodata``).

A map is pinned when :func:`~orchestrator.reconcile.rules.pin_reason` says so (``pin: true``,
preserved, substituted by another collection, a prog array); any other map lives as long
as the programs that use it and is recorded by id (a map that no loaded program holds and
nothing pins is not kept). Pinning or unpinning a live map needs no reload: the kept
collection's next tree has the pin or lacks it.

Steps, each with what its rollback does:

1. **stage** (per changed collection, dependencies first): read the object, rewrite
   constants, hand over preserved maps and substitutions as map replacements (a
   substitution from a collection staged in the same transaction uses its staged map), load
   through the verifier, pin the new tree under the staging directory (preserved maps get a
   second pin there). *Rollback*: close every fd, remove the staging tree.
2. **switch** (per attachment): xdp/tcx/cgroup/netns links are switched to the new program
   with ``BPF_LINK_UPDATE`` (the hook is never empty) and pinned again in the staging tree;
   tracepoint/raw_tp/uprobe links are replaced make-before-break (the new link is attached
   and pinned in the staging tree, the old one lives until release); new attachments get new
   links. A tcx attachment placed anew (``before``/``after`` changed) gets a new link for a
   fresh program instance (loaded from the same object with the live maps when the
   collection's programs are kept) before the old link goes, since a tcx link cannot move
   and a hook takes a program once. An XDP attachment whose mode changes is done last: its
   link is detached and the program attached again in the new mode (a link's mode is fixed
   and the kernel refuses native and generic programs on one interface at once), so the
   interface runs no XDP program for a moment. An XDP attachment with ``take_over: true``
   whose interface runs a foreign program attached through netlink detaches that program
   first (only if it is still the one seen: ``XDP_FLAGS_REPLACE`` with its fd) and attaches
   our link right after: the kernel refuses ``BPF_LINK_CREATE`` while a netlink program is
   attached (EBUSY) and has no atomic switch from one to a link, so the interface runs no
   XDP program for about one RCU grace period (10-25 ms measured for veth on 6.18).
   *Rollback*: each updated link is switched back to
   the program it ran before, each new link is detached, a taken-over program is attached
   again through netlink in its old mode (the transaction holds an fd of it until the end),
   and an XDP program re-attached for its mode is attached again in its old mode by a new
   link pinned where the old one was (the next apply sees that pin as replaced and
   re-attaches).
3. **commit**: each staged collection directory is swapped with the live one in one
   ``renameat2(RENAME_EXCHANGE)`` (or moved into place if new); deleted collections are moved
   into the staging directory; then the record is written atomically. *Rollback* (if the
   record can't be written): every swap and move is undone, then steps 2 and 1 are undone.
4. **release** (after the record is written, cannot fail the apply): links of the old
   generation that are not carried over are detached, and the staging directory (now holding
   the old trees) is removed, unpinning old programs and maps that were not carried over.

A crash (kill -9) leaves, per collection, the old or the new tree at its place, plus a
staging directory; :func:`observe` reports the difference from the record as drift and the
staging directory as garbage, and the next apply removes the garbage and converges.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import os
import stat
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from orchestrator import ebpf
from orchestrator.ebpf import (
    Collection,
    CollectionOptions,
    CollectionSpec,
    Map,
    PinType,
    Program,
    ProgType,
)
from orchestrator.ebpf import link as _links
from orchestrator.ebpf.collection import load_subset
from orchestrator.ebpf.errors import AttachConflictError
from orchestrator.ebpf.inspect import (
    FD,
    is_mount_root,
    open_dir_at,
    open_pin_at,
    pin_at,
    remove_tree_at,
)
from orchestrator.manifest.cache import ObjectSnapshot
from orchestrator.manifest.cache import default as default_store
from orchestrator.manifest.model import (
    Attachment,
    CgroupTarget,
    DesiredCollection,
    NetnsTarget,
    RawTracepointTarget,
    Source,
    TcTarget,
    TracepointTarget,
    UprobeTarget,
    XdpMode,
    XdpTarget,
)
from orchestrator.reconcile.actions import (
    Action,
    Attach,
    ClaimRoot,
    Commit,
    Delete,
    Detach,
    FromPin,
    FromStaged,
    Keep,
    KeepLink,
    LinkAction,
    MakeBeforeBreak,
    MapFate,
    MapSource,
    Mark,
    NotApplied,
    OpenStaging,
    Reattach,
    Release,
    ReleaseRoot,
    RemoveLeftover,
    RemoveStaging,
    Seal,
    Stage,
    SwitchLink,
    Unchanged,
    WriteRecord,
)
from orchestrator.reconcile.errors import ApplyError, where
from orchestrator.reconcile.failpoints import Failpoints
from orchestrator.reconcile.observe import (
    held_maps,
    map_shape,
    open_map,
    pinned_problem,
)
from orchestrator.reconcile.owner import (
    MARK_PIN,
    STAGING_PREFIX,
    claim_root,
    mark_collection,
    mark_staging,
    open_owned,
    release_root,
)
from orchestrator.reconcile.plan import (
    Plan,
    link_pin_name,
    target_fields,
)
from orchestrator.reconcile.state import (
    AttachmentRecord,
    CollectionRecord,
    MapRecord,
    MapShape,
    ProgramRecord,
    StateRecord,
)
from orchestrator.reconcile.store import git_revision, rename, write_record


def pin_name(name: str) -> str:
    """A map or program name as a bpffs file name (bpffs refuses dots: ``.rodata`` is
    pinned as ``_rodata``)."""
    return _check_name(name.replace(".", "_"))


def _check_name(name: str) -> str:
    if not name or "/" in name or "." in name or "\0" in name:
        raise ApplyError(f"{name!r}: not usable as a pin name")
    return name


@dataclass
class _Staged:
    """One collection's next generation while the transaction runs: freshly loaded
    (``coll``), or the live programs and maps kept (``coll`` None, only attachments or
    metadata changed)."""

    desired: DesiredCollection
    dir: Path
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


class Transaction:
    """One apply or destroy: runs the actions of ``plan``, in order, and nothing else. Use
    once: :meth:`run` (or :meth:`verify`, a kernel dry run)."""

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
        self.staged: dict[str, _Staged] = {}
        self.record: StateRecord | None = None  # the new record, once sealed
        self.undo: list[tuple[str, Callable[[], None]]] = []
        self.owned: list[Map | Program | _links.Link] = []  # fds closed at the end
        self.warnings: list[str] = []
        self.current: tuple[str, Source | None] = ("", None)  # for error messages
        self.verify_only = False
        self.verified: dict[str, dict[str, int]] = {}  # the kernel dry run's verified_insns

    # ------------------------------------------------------------------ driver

    def verify(self) -> None:
        """A kernel dry run: the plan's Stage and Keep actions load every changed collection
        through the verifier (with its preserved maps and substitutions as replacements, so
        incompatibilities show), then everything is closed. Nothing is pinned, attached or
        recorded."""
        self.verify_only = True
        try:
            for action in self.plan.actions:
                if isinstance(action, Stage | Keep):
                    self._do(action)
            self.verified = {
                name: {p: prog.verified_insns for p, prog in st.programs.items()}
                for name, st in self.staged.items()
            }
        except Exception as err:
            self._close_all()
            located = isinstance(err, ApplyError) and err.collection != ""
            what = where(*self.current) + ": " if self.current[0] and not located else ""
            raise ApplyError(f"{what}{err} (kernel dry run: nothing was changed)") from err
        self._close_all()

    def run(self) -> tuple[dict[str, int], list[str]]:
        """Run the plan's actions; return the generations in the new record and the
        warnings of the steps after the commit. Any failure up to the record write undoes
        every step (the previous generation is live again); after it, failures are
        warnings (leftovers the next apply removes)."""
        actions = self.plan.actions
        end = next(i for i, a in enumerate(actions) if isinstance(a, WriteRecord)) + 1
        self.current = ("", None)
        try:
            for action in actions[:end]:
                self._do(action)
        except BaseException as err:
            problems = self._rollback()
            self._close_all()
            if not isinstance(err, Exception):
                raise
            located = isinstance(err, ApplyError) and err.collection != ""
            what = where(*self.current) + ": " if self.current[0] and not located else ""
            extra = ""
            if problems:
                extra = " (rollback was incomplete: " + "; ".join(problems) + ")"
            else:
                extra = " (nothing was changed: the previous generation is live)"
            raise ApplyError(f"{what}{err}{extra}") from err
        self._close_all()
        for action in actions[end:]:
            self._do(action)
        assert self.record is not None
        return {n: c.generation for n, c in self.record.collections.items()}, self.warnings

    def _do(self, action: Action) -> None:
        """Run one action (each step does what its action says; see
        :mod:`orchestrator.reconcile.actions` for the order)."""
        match action:
            case RemoveLeftover():
                # an interrupted apply's staging directory (its marker proves it ours, and
                # we hold the lock): only unpinned, since a link there may be live in the
                # tree too
                self._remove(action.path.name, f"staging leftover {action.path}")
            case ClaimRoot():
                self.token = claim_root(self.root_fd, self.state_dir)
                self.claimed = True
            case OpenStaging():
                os.mkdir(self.staging.name, 0o700, dir_fd=self.root_fd)
                self.staging_fd = open_dir_at(self.root_fd, self.staging.name)
                mark_staging(self.staging_fd, self.token, self.txid)
            case Unchanged():
                pass
            case Stage():
                self._stage(action)
            case Keep():
                self._keep(action)
            case KeepLink() | SwitchLink() | Attach() | MakeBeforeBreak() | Reattach():
                self._link(action)
            case Seal():
                self.current = ("", None)
                self.record = self._new_record(action)
                self._mark(self.record)
            case Commit():
                self._commit(action)
            case Delete():
                self._delete(action)
            case WriteRecord():
                self.failpoints.reach("record", "")
                assert self.record is not None
                write_record(self.state_dir, self.record)
            case Release():
                self._release()
            case Detach():
                self._detach_old(action)
            case RemoveStaging():
                self._remove_staging()
            case Mark():
                self._mark_old(action)
            case ReleaseRoot():
                # the record is empty: unless a tree was left behind, nothing under the
                # root is bpforch's any more
                assert self.record is not None
                if not self.record.collections and self.complete and self.token:
                    release_root(self.root_fd, self.token)
            case _:
                raise AssertionError(f"unknown action {action!r}")

    # ------------------------------------------------------------------ garbage

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

    # ------------------------------------------------------------------ stage

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
        parts = [_check_name(coll), *rel.split("/")]
        for part in parts:
            if part in ("", ".", ".."):
                raise ApplyError(f"{self.root}/{coll}/{rel}: not a pin path bpforch makes")
        try:
            return open_owned(self.root_fd, "/".join(parts))
        except (OSError, ebpf.Error) as err:
            raise ApplyError(f"pin {self.root}/{coll}/{rel}: {err}") from err

    def _stage(self, action: Stage) -> None:
        """Load the object as the plan says and pin the new tree under the staging
        directory (not in a kernel dry run)."""
        from orchestrator.manifest.objects import ObjectError

        name, d = action.collection, action.desired
        self.current = (name, d.source)
        self.failpoints.reach("load", name)
        try:
            info = self.objects.get(d.object_file)
        except ObjectError as err:
            raise ApplyError(f"{where(name, d.source)}: object: {err}", collection=name) from err
        if d.sha256 and info.sha256 != d.sha256.lower():
            raise ApplyError(
                f"{where(name, d.source)}: object {d.object_file} has sha256 {info.sha256}, "
                f"the manifest wants {d.sha256} (rebuild it, or update sha256)",
                collection=name,
            )
        if info.sha256 != action.object_sha256:
            raise ApplyError(
                f"{where(name, d.source)}: object {d.object_file} changed since the plan "
                "(plan and apply again)",
                collection=name,
            )
        spec, shapes = _prepared(info.spec, d)
        replacements = {r.map: self._map(r.source) for r in action.replacements}
        self.failpoints.reach("verify", name)
        opts = CollectionOptions(map_replacements=replacements)
        if action.load_maps is None:
            coll = Collection(spec, opts)
        else:
            assert d.programs is not None
            coll = load_subset(spec, opts, d.programs, action.load_maps)
        st = _Staged(
            d,
            self.staging / _check_name(name),
            coll,
            coll.maps,
            coll.programs,
            info.sha256,
            action.load_key,
            shapes,
            {r.map: r.record for r in action.replacements if r.record},
            set(action.pinned) & coll.maps.keys(),
            # what outlives the load unpinned (recorded by id): whatever the loaded programs
            # hold
            set(held_maps(spec, coll.programs)),
        )
        self.staged[name] = st
        if self.verify_only:
            return
        self._pin(st)

    def _pin(self, st: _Staged) -> None:
        """Pin the next generation under the staging directory."""
        self.failpoints.reach("pin", st.desired.name)
        sdir = os.fspath(st.dir)  # plain strings: this runs per collection
        os.mkdir(sdir, 0o700)  # the staging directory was checked to be on bpffs
        for sub in ("maps", "progs", "links") if st.desired.attach else ("maps", "progs"):
            os.mkdir(f"{sdir}/{sub}", 0o700)
        for mname in sorted(st.pinned):
            # the rest live as long as the programs that hold them (recorded by id), or
            # not at all (held by nothing: not recorded)
            st.maps[mname].pin(f"{sdir}/maps/{pin_name(mname)}")
        for pname, p in st.programs.items():
            p.pin(f"{sdir}/progs/{pin_name(pname)}")

    def _keep(self, action: Keep) -> None:
        """Stage a collection whose programs and maps stay: open them from their live pins
        (they get a second pin in the staging tree); each map as the plan says (pinned in
        the tree, recorded without a pin, carried, or left to go with the old tree)."""
        name, d, rec = action.collection, action.desired, action.record
        self.current = (name, d.source)
        maps: dict[str, Map] = {}
        carried: dict[str, MapRecord] = {}
        for kept in action.maps:
            mr = kept.map
            if kept.fate is MapFate.CARRY:
                carried[mr.name] = mr
            elif kept.fate is MapFate.HELD:
                carried[mr.name] = replace(mr, pin="", ino=0)
            elif kept.fate is MapFate.PIN:
                m = self._live_map(rec, mr)
                self.owned.append(m)
                maps[mr.name] = m
        programs: dict[str, Program] = {}
        for pname, pr in rec.programs.items():
            p = Program.from_fd(self._open(name, pr.pin))
            self.owned.append(p)
            programs[pname] = p
        if action.fresh:
            programs.update(self._fresh(action, maps, programs))
        st = _Staged(
            d,
            self.staging / _check_name(name),
            None,
            maps,
            programs,
            rec.object_sha256,
            rec.load_key,
            {n: mr.shape for n, mr in rec.maps.items()},
            pinned=set(maps),
            carried=carried,
        )
        self.staged[name] = st
        if not self.verify_only:
            self._pin(st)

    def _fresh(
        self, action: Keep, maps: dict[str, Map], live: dict[str, Program]
    ) -> dict[str, Program]:
        """New instances of the programs ``action.fresh`` of a kept collection, loaded from
        the same object with the live maps as replacements (so they share every map, the
        frozen ``.rodata`` included, with the instances they stand beside): a tcx link
        placed anew needs one, since a hook takes a program once and the old link stays
        until the new one runs. The unpinned maps their live instances hold are taken by
        id (while those programs are open, the ids name those very maps)."""
        from orchestrator.manifest.objects import ObjectError

        name, d, rec, names = action.collection, action.desired, action.record, action.fresh
        try:
            info = self.objects.get(d.object_file)
        except ObjectError as err:
            raise ApplyError(f"{where(name, d.source)}: object: {err}", collection=name) from err
        if info.sha256 != rec.object_sha256:
            raise ApplyError(
                f"{where(name, d.source)}: object {d.object_file} changed since the plan "
                "(plan and apply again)",
                collection=name,
            )
        spec, _ = _prepared(info.spec, d)
        used = {i for pname in names for i in live[pname].info().map_ids}
        replacements: dict[str, Map] = dict(maps)
        for r in action.fresh_replacements:
            replacements[r.map] = self._map(r.source)
        for mname, mr in rec.maps.items():
            if mname not in replacements and not mr.source and mr.id in used:
                m = Map.from_id(mr.id)
                self.owned.append(m)
                replacements[mname] = m
        self.failpoints.reach("verify", name)
        coll = load_subset(spec, CollectionOptions(map_replacements=replacements), names, [])
        with coll:
            out = {pname: coll.detach_program(pname) for pname in names}
        self.owned.extend(out.values())
        return out

    # ------------------------------------------------------------------ switch

    def _link(self, action: LinkAction) -> None:
        """Run one attachment action: its link (the live one, switched or kept, or a new
        one) ends up pinned at the action's pin in the staged tree."""
        name, a, key = action.collection, action.attachment, action.key
        st = self.staged[name]
        self.current = (name, a.source or st.desired.source)
        prog = st.programs.get(a.program)
        if prog is None:
            raise ApplyError(
                f"{where(*self.current)}: attachment {key}: program "
                f"{a.program} is not loaded (add it to programs:)",
                collection=name,
            )
        pin = st.dir / action.pin
        if isinstance(action, Reattach):
            self._reattach_xdp(action, prog, pin)
            return
        if isinstance(action, KeepLink):
            # kept as it is: the same link gets a second pin in the new tree
            link = _links.Link.from_fd(self._open(name, action.link.pin))
            self.owned.append(link)
        elif isinstance(action, SwitchLink):
            link = _links.Link.from_fd(self._open(name, action.link.pin))
            self.owned.append(link)
            # undo target: whatever the link runs now (after a crash, that may not be
            # the recorded program)
            before = Program.from_id(link.program_id)
            self.owned.append(before)
            if before.id != prog.id:  # it may run it already (an interrupted apply)
                self.failpoints.reach("switch", key)
                link.update(prog, before)
                self.undo.append(
                    (f"switch link {link.id} back", partial(link.update, before, prog))
                )
        else:
            self.failpoints.reach("attach", key)
            link = self._attach(st, prog, a, action.take_over)
            self.owned.append(link)
            self.undo.append((f"detach new link {link.id}", partial(_detach, link)))
        link.pin(pin)
        st.links[key] = (link, action.link_kind, action.pin)

    def _reattach_xdp(self, action: Reattach, prog: Program, pin: Path) -> None:
        """Attach ``prog`` anew where our link ``action.link`` runs now: that link is
        detached first (``BPF_LINK_DETACH``), since the kernel fixes an XDP link's mode when
        it is made and refuses native and generic programs on one interface at once
        (EEXIST), so the interface runs no XDP program between the two calls (the interface
        is looked up before, to keep that short). Undo attaches the old program again in
        its old mode by a new link pinned in the old one's place; the next apply then sees
        that pin as replaced and attaches anew. A link pinned there that no longer holds the
        interface (detached, or the interface gone) is left to the release step."""
        name, t, key, ra = action.collection, action.attachment.target, action.key, action.link
        assert isinstance(t, XdpTarget)
        index = _links.ifindex(t.interface, t.netns)
        live = f"{_check_name(name)}/{ra.pin}"
        try:
            old: _links.Link | None = _links.Link.from_fd(self._open(name, ra.pin))
        except ApplyError:
            old = None  # gone (drift): nothing holds the interface
        if old is not None:
            self.owned.append(old)
            info = old.info()
            target = info.target
            if info.attached and isinstance(target, _links.XDPTarget) and target.ifindex == index:
                before = Program.from_id(info.program_id)
                self.owned.append(before)
                mode = _links.xdp_mode(index, before.id, t.netns) or "auto"
                _detach(old)
                self.undo.append(
                    (
                        f"attach {before.name} to {t.interface} again in {mode} mode",
                        partial(_restore_xdp, before, index, mode, t.netns, self.root_fd, live),
                    )
                )
        self.failpoints.reach("attach", key)
        mode = "auto" if t.mode is XdpMode.AUTO else t.mode.value
        link = self._attach_xdp(prog, t, mode, key, action.take_over, index)
        self.owned.append(link)
        self.undo.append((f"detach new link {link.id}", partial(_detach, link)))
        link.pin(pin)
        self.staged[name].links[key] = (link, action.link_kind, action.pin)

    def _attach_xdp(
        self,
        prog: Program,
        t: XdpTarget,
        mode: str,
        key: str,
        take_over: bool,
        iface: int | str | None = None,
    ) -> _links.Link:
        """Attach XDP. When the interface still holds one of our own programs whose link pin
        is gone, the kernel is releasing that link in a deferred work item
        (bpf_link_put_deferred): wait for it briefly instead of failing with EBUSY.

        With ``take_over``, a foreign program attached through netlink is detached (only if it
        is still the one seen: XDP_FLAGS_REPLACE with its fd) and the link made right after;
        the kernel offers no atomic way from a netlink program to a link (BPF_LINK_CREATE
        says EBUSY while one is attached). Rollback attaches the foreign program again, the
        way it was (netlink, same mode); the transaction holds an fd of it until the end, so
        it survives the moment it is attached nowhere."""
        ours = self.plan.own_programs  # recorded, or left by a killed apply
        deadline = time.monotonic() + 2.0
        while True:
            try:
                where = t.interface if iface is None else iface
                return _links.attach_xdp(prog, where, mode, netns=t.netns)  # type: ignore[arg-type]
            except AttachConflictError:
                held = _links.xdp_attached(t.interface, t.netns)
                if held is not None and held.prog_id not in ours:
                    if not take_over or held.link_id is not None:
                        raise
                    self._take_over(held, t, key)
                    continue
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)

    def _take_over(self, held: _links.XDPAttachment, t: XdpTarget, key: str) -> None:
        """Detach the foreign netlink-attached XDP program ``held``; undo puts it back."""
        foreign = Program.from_id(held.prog_id)
        self.owned.append(foreign)
        _links.set_xdp_netlink(held.ifindex, None, held.mode, expected=foreign, netns=t.netns)
        self.undo.append(
            (
                f"re-attach foreign xdp program {held.prog_id} ({held.prog_name}) to {t.interface}",
                partial(_links.set_xdp_netlink, held.ifindex, foreign, held.mode, netns=t.netns),
            )
        )
        self.failpoints.reach("take_over", key)

    def _attach(self, st: _Staged, prog: Program, a: Attachment, take_over: bool) -> _links.Link:
        t = a.target
        if isinstance(t, XdpTarget):
            mode = "auto" if t.mode is XdpMode.AUTO else t.mode.value
            if mode not in ("auto", "native", "generic"):
                raise ApplyError(f"attachment {a.key()}: xdp mode {mode} is not supported")
            return self._attach_xdp(prog, t, mode, a.key(), take_over)
        if isinstance(t, TcTarget):
            # before/after name another program of this collection at the same hook (it must
            # be attached already: declare it earlier)
            before = st.links.get(f"{t.before}@{t.key()}") if t.before else None
            after = st.links.get(f"{t.after}@{t.key()}") if t.after else None
            for anchor, name in ((before, t.before), (after, t.after)):
                if name and anchor is None:
                    raise ApplyError(
                        f"attachment {a.key()}: {name} is not attached at {t.key()} before it "
                        "(declare that attachment first)"
                    )
            return _links.attach_tcx(
                prog,
                t.interface,
                t.direction.value,
                before=before[0] if before is not None else None,
                after=after[0] if after is not None else None,
                netns=t.netns,
            )
        if isinstance(t, CgroupTarget):
            return _links.attach_cgroup(prog, t.path, t.attach)
        if isinstance(t, TracepointTarget):
            return _links.attach_tracepoint(prog, t.group, t.name)
        if isinstance(t, RawTracepointTarget):
            # a tp_btf program's tracepoint was fixed at load time (attach_btf_id): the
            # kernel refuses a name for it
            tp_btf = prog.type == ProgType.TRACING
            return _links.attach_raw_tracepoint(prog, None if tp_btf else t.name)
        if isinstance(t, UprobeTarget):
            return _links.attach_uprobe(
                prog, t.path, t.symbol, t.offset, retprobe=t.retprobe, pid=t.pid
            )
        assert isinstance(t, NetnsTarget)
        at = "sk_lookup" if prog.type == ProgType.SK_LOOKUP else "flow_dissector"
        return _links.attach_netns(prog, t.netns, at)

    # ------------------------------------------------------------------ commit

    def _new_record(self, seal: Seal) -> StateRecord:
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        out = dict(seal.base.collections)
        revs: dict[Path, str | None] = {}
        for name, st in self.staged.items():
            d = st.desired
            old = out.get(name)
            sdir = os.fspath(st.dir)
            maps: dict[str, MapRecord] = dict(st.carried)
            for mname, m in st.maps.items():
                mo = d.maps.get(mname)
                src = st.sources.get(mname, "")
                if not src and mname not in st.pinned and mname not in st.held:
                    continue  # nothing holds it: gone with the transaction's fds
                rel = f"maps/{pin_name(mname)}" if mname in st.pinned else ""
                shape = st.shapes.get(mname)
                if shape is None:
                    shape = MapShape(int(m.type), m.key_size, m.value_size, m.max_entries, m.flags)
                maps[mname] = MapRecord(
                    mname,
                    m.id,
                    shape,
                    rel,
                    preserve=bool(mo is not None and mo.preserve),
                    source=src,
                    ino=os.stat(f"{sdir}/{rel}").st_ino if rel else 0,
                )
            programs: dict[str, ProgramRecord] = {}
            for pname, p in st.programs.items():
                rel = f"progs/{pin_name(pname)}"
                programs[pname] = ProgramRecord(
                    pname,
                    p.id,
                    p.tag,
                    rel,
                    int(p.type),
                    ino=os.stat(f"{sdir}/{rel}").st_ino,
                    verified_insns=p.verified_insns,
                )
            atts: dict[str, AttachmentRecord] = {}
            for a in d.attach:
                link, kind, pin = st.links[a.key()]
                atts[a.key()] = AttachmentRecord(
                    a.key(),
                    a.program,
                    kind,
                    link.id,
                    pin,
                    target=target_fields(a.target),
                    mode=_kernel_mode(link, a.target),
                )
            base = d.source.file.parent
            if base not in revs:
                revs[base] = git_revision(base)
            out[name] = CollectionRecord(
                name=name,
                generation=(old.generation + 1) if old is not None else 1,
                digest=d.digest,
                object_file=os.fspath(d.object_file),
                object_sha256=st.object_sha256,
                manifest=str(d.source),
                applied_at=now,
                git_revision=revs[base],
                maps=maps,
                programs=programs,
                attachments=atts,
                depends_on=tuple(sorted(d.depends_on())),
                load_key=st.load_key,
            )
        for name in seal.deleted:
            out.pop(name, None)
        return StateRecord(out)

    def _mark(self, record: StateRecord) -> None:
        """Pin each staged tree's ownership marker, holding its collection's new record (so
        a lost state record can be rebuilt from the pins)."""
        for name in self.staged:
            assert self.staging_fd is not None
            fd = open_dir_at(self.staging_fd, name)
            try:
                mark_collection(fd, self.token, record.collections[name], self.txid)
            finally:
                os.close(fd)

    def _live_dir(self, name: str) -> bool:
        """Whether the directory ``<root>/name`` exists. Anything else there (a symlink or
        a mount put there since the plan) is refused: it is never moved or followed."""
        try:
            st = os.stat(name, dir_fd=self.root_fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode) and not is_mount_root(self.root_fd, name):
                return True
        except FileNotFoundError:
            return False
        raise ApplyError(
            f"{self.root / name} is not a directory bpforch made (a symlink or mount put "
            "there since the plan); bpforch never moves or follows it"
        )

    def _commit(self, action: Commit) -> None:
        """Swap the staged tree with the live one atomically, or move it into place."""
        name = action.collection
        rfd, sfd = self.root_fd, self.staging_fd
        self.failpoints.reach("commit", name)
        assert sfd is not None
        _check_name(name)
        if not self._live_dir(name):  # a new collection: move into place
            rename(name, name, src_dir=sfd, dst_dir=rfd)
            self.undo.append(
                (f"move {name} back", partial(rename, name, name, src_dir=rfd, dst_dir=sfd))
            )
        else:  # swap old and new trees atomically
            rename(name, name, exchange=True, src_dir=sfd, dst_dir=rfd)
            self.undo.append(
                (
                    f"swap {name} back",
                    partial(rename, name, name, exchange=True, src_dir=sfd, dst_dir=rfd),
                )
            )

    def _delete(self, action: Delete) -> None:
        """Move a deleted collection's tree into the staging directory (it goes with the
        release)."""
        name = action.collection
        rfd, sfd = self.root_fd, self.staging_fd
        self.failpoints.reach("commit", name)
        if not self._live_dir(_check_name(name)):
            return
        assert sfd is not None
        rename(name, name, src_dir=rfd, dst_dir=sfd)
        self.undo.append((f"restore {name}", partial(rename, name, name, src_dir=sfd, dst_dir=rfd)))

    # ------------------------------------------------------------------ rollback / release

    def _rollback(self) -> list[str]:
        problems = []
        for what, fn in reversed(self.undo):
            try:
                fn()
            except Exception as err:
                problems.append(f"{what}: {err}")
        self.undo.clear()
        if self.staging_fd is not None:
            os.close(self.staging_fd)
            self.staging_fd = None
            try:
                result = remove_tree_at(
                    self.root_fd, self.staging.name, shown=os.fspath(self.staging), last=MARK_PIN
                )
            except (OSError, ebpf.Error) as err:
                problems.append(f"remove {self.staging}: {err}")
            else:
                if result.left:
                    problems.append(f"remove {self.staging}: left {', '.join(result.left)}")
        if self.claimed and not problems and self.complete:
            release_root(self.root_fd, self.token)  # nothing under the root is ours
        return problems

    def _close_all(self) -> None:
        for st in self.staged.values():
            if st.coll is not None:
                st.coll.close()
        for obj in self.owned:
            obj.close()
        self.owned.clear()

    def _release(self) -> None:
        """The record is written: the old generation (its trees now in the staging
        directory) is about to go. If this step fails, the rest of the release is left to
        the next apply."""
        sfd = self.staging_fd
        if sfd is None:
            return
        try:
            self.failpoints.reach("release", "")
        except Exception as err:
            self.staging_fd = None
            os.close(sfd)
            self.complete = False
            self.warnings.append(f"release: {err} (the next apply removes {self.staging})")

    def _detach_old(self, action: Detach) -> None:
        """Detach a link of the old generation through its pin in the old tree (now in the
        staging directory), if that pin still holds it and the new record does not list it;
        nothing is reached through a symlink."""
        sfd, ra = self.staging_fd, action.link
        assert self.record is not None
        if sfd is None:
            return  # the release failed: the next apply removes the leftovers
        keep = {a.link_id for c in self.record.collections.values() for a in c.attachments.values()}
        if ra.link_id in keep:
            return
        *dirs, leaf = [action.collection, *ra.pin.split("/")]
        with contextlib.ExitStack() as stack:
            cur = sfd
            try:
                for part in dirs:
                    cur = open_dir_at(cur, part)
                    stack.callback(os.close, cur)
                fd = open_pin_at(cur, leaf)
            except FileNotFoundError:
                return  # no tree, or no pin: nothing holds the link there
            except (ebpf.Error, OSError) as err:
                if getattr(err, "errno", None) == errno.ENOENT:
                    return
                self.warnings.append(f"release {self.staging}/{action.collection}/{ra.pin}: {err}")
                return
            try:
                with _links.Link.from_fd(fd) as link:
                    if link.id == ra.link_id:
                        _detach(link)
            except (ebpf.Error, OSError) as err:
                self.warnings.append(f"release {self.staging}/{action.collection}/{ra.pin}: {err}")

    def _remove_staging(self) -> None:
        """Remove the staging directory with the old trees: what only they pinned goes."""
        sfd = self.staging_fd
        if sfd is None:
            return
        self.staging_fd = None
        os.close(sfd)
        self._remove(self.staging.name, "release")

    def _mark_old(self, action: Mark) -> None:
        """Mark a recorded collection made before ownership markers existed (its record
        proves it ours)."""
        try:
            fd = open_dir_at(self.root_fd, action.collection)
            try:
                mark_collection(fd, self.token, action.record, self.txid)
            finally:
                os.close(fd)
        except (OSError, ebpf.Error) as err:
            self.warnings.append(f"mark {self.root / action.collection}: {err}")


def _prepared(
    original: CollectionSpec, d: DesiredCollection
) -> tuple[CollectionSpec, dict[str, MapShape]]:
    """A copy of ``original`` as ``d`` loads it (constants, max_entries, no libbpf pinning:
    bpforch makes the pins, under the collection), and the shape of each map."""
    spec = original.copy()
    spec.rewrite_constants(d.constants)
    shapes: dict[str, MapShape] = {}
    for mname, ms in spec.maps.items():
        ms.pinning = PinType.NONE  # pins are ours to make, under the collection
        mo = d.maps.get(mname)
        if mo is not None and mo.max_entries:
            ms.max_entries = mo.max_entries
        shapes[mname] = map_shape(ms, ms.max_entries)
    return spec, shapes


def _kernel_mode(link: _links.Link, target: object) -> str:
    """The mode the kernel runs an XDP link's program in ("" for other targets, or if the
    kernel does not say)."""
    if not isinstance(target, XdpTarget):
        return ""
    info = link.info()
    if not isinstance(info.target, _links.XDPTarget):
        return ""
    return _links.xdp_mode(info.target.ifindex, info.program_id, target.netns) or ""


def _restore_xdp(
    prog: Program, index: int, mode: str, netns: Path | None, root_fd: int, pin: str
) -> None:
    """Undo of an XDP re-attach: ``prog`` attached again in ``mode`` by a new link, pinned
    where the old (detached) link was pinned (``pin``, relative to the root, reached without
    following a symlink). The record still names the old link, so the next observe reports
    the pin as replaced and the next apply attaches anew."""
    how: _links.XDPMode = (
        "native" if mode == "native" else "generic" if mode == "generic" else "auto"
    )
    link = _links.attach_xdp(prog, index, how, netns=netns)
    *dirs, leaf = pin.split("/")
    with link, contextlib.ExitStack() as stack:
        cur = root_fd
        for d in dirs:
            cur = open_dir_at(cur, d)
            stack.callback(os.close, cur)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISREG(os.stat(leaf, dir_fd=cur, follow_symlinks=False).st_mode):
                os.unlink(leaf, dir_fd=cur)  # the old link's pin (a symlink there stays)
        pin_at(link.fd, cur, leaf)


def _detach(link: _links.Link) -> None:
    """Detach now where the link type allows it; perf_event and raw_tp links detach when
    their last fd and pin go."""
    try:
        link.detach()
    except ebpf.NotSupportedError:
        pass
    except ebpf.Error as err:
        if getattr(err, "errno", None) != errno.ENOLINK:
            raise


__all__ = ["Transaction", "link_pin_name"]
