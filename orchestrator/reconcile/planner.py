"""The planner: the decisions behind :func:`orchestrator.reconcile.plan.plan`, per collection
(create, keep, reload, delete; each map, program and attachment), as the typed actions of
:mod:`orchestrator.reconcile.actions` in the order the transaction runs them. Pure: no
syscall, no file access."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.manifest.model import (
    Attachment,
    DesiredCollection,
    DesiredState,
    OnIncompatible,
    Source,
    TcTarget,
    XdpTarget,
)
from orchestrator.reconcile.entries import plan_entries
from orchestrator.reconcile.lines import (
    Action,
    Change,
    FieldDiff,
    Kind,
    Op,
    PlanProblem,
    Unchanged,
)
from orchestrator.reconcile.ordering import delete_collection, transaction_actions
from orchestrator.reconcile.rules import (
    PinRules,
    attachment_title,
    changed_parts,
    collection_diffs,
    describe_target,
    field_diffs,
    link_pin_name,
    load_key,
    pin_file,
    previous_link,
    reattached,
    source_key,
    target_kind,
    tc_reattach,
    title_of,
    topo_order,
    xdp_reattach,
)
from orchestrator.reconcile.selector import Selector, stranded
from orchestrator.reconcile.state import (
    IN_PLACE_KINDS,
    ActualCollection,
    ActualState,
    CollectionFacts,
    CollectionRecord,
    Foreign,
)

if TYPE_CHECKING:  # the actions of a plan that changes something: imported when one is made
    from orchestrator.reconcile.actions import (
        Delete,
        Detach,
        Keep,
        MapSource,
        Reattach,
        Replacement,
        Stage,
        WriteEntries,
    )

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class Planner:
    """One plan in the making: what each collection does, by the phase of the transaction
    that runs it, and the problems found on the way."""

    def __init__(
        self,
        desired: DesiredState,
        actual: ActualState,
        prune: bool,
        selector: Selector | None = None,
    ) -> None:
        self.desired = desired
        self.selector = selector
        # the declared collections the plan is about (all without a selector); the others
        # are left as they are, but still count for pins and dependencies
        self.selected = frozenset(
            n
            for n, d in desired.collections.items()
            if selector is None or selector.matches(d.labels)
        )
        self.pins = PinRules.of(desired)
        self.actual = actual
        self.prune = prune
        self.lines: list[Change] = []  # the lines of the action being planned
        self.problems: list[PlanProblem] = []
        # (collection, map) whose kernel object changes in this apply
        self.recreated: set[tuple[str, str]] = set()
        # the actions, by the phase of the transaction that runs them
        self.collections: list[Unchanged | Stage | Keep | WriteEntries] = []
        # collection -> map -> digest of its declared entries (recorded by the apply)
        self.entry_digests: dict[str, dict[str, str]] = {}
        self.warnings: list[str] = []
        self.staged: dict[str, Stage | Keep] = {}
        self.links: list[Action] = []
        self.reattaches: list[Reattach] = []
        self.deleted: list[Delete] = []
        self.detaches: list[Detach] = []
        # collections whose directory is taken by something that is not bpforch's
        self.blocked = {f.collection: f for f in actual.foreign if f.collection}
        self.own_prog_ids = {  # program id -> the collection that owns it
            p.id: c.record.name
            for c in actual.collections.values()
            for p in c.record.programs.values()
        }

    def problem(self, coll: str, message: str, source: Source | None) -> None:
        self.problems.append(PlanProblem(coll, message, source))

    def add(
        self,
        op: Op,
        kind: Kind,
        coll: str,
        name: str,
        reason: str,
        source: Source | None,
        *,
        diffs: tuple[FieldDiff, ...] = (),
        title: str = "",
        shown: bool = False,
    ) -> None:
        self.lines.append(Change(op, kind, coll, name, reason, source, diffs, title, shown))

    def take(self) -> tuple[Change, ...]:
        """The lines added since the last call: the lines of the action being made."""
        out = tuple(self.lines)
        self.lines.clear()
        return out

    def line(self, kind: Kind, name: str) -> Change | None:
        for c in self.lines:
            if c.kind is kind and c.name == name:
                return c
        return None

    def run(self) -> tuple[Action, ...] | None:
        """Every action, in the order the transaction runs them; None if the names are not
        usable (nothing else is planned then). The problems are in ``problems``."""
        desired = self.desired.collections
        order, cyclic = topo_order({n: c.depends_on() for n, c in desired.items()})
        for name, c in desired.items():
            if not DNS_LABEL.fullmatch(name):
                self.problem(
                    name,
                    "collection name is not a DNS label (lower-case letters, digits and '-', "
                    "at most 63; it names the pin directory)",
                    c.source,
                )
        if self.problems:
            return None
        for name in cyclic:
            self.problem(name, "map substitutions form a cycle", desired[name].source)
        for name in order:
            if name in self.selected:
                self.collection(desired[name])
        self.deletes()
        if self.selector is not None:
            self.left_out()
        return transaction_actions(
            self.actual,
            self.collections,
            [*self.links, *self.reattaches],
            self.deleted,
            self.detaches,
            self.entry_digests,
        )

    def source(self, coll: str, mname: str, hops: int = 0) -> MapSource:
        """Where map ``mname`` of collection ``coll`` is taken from by a collection planned
        now: the staged one if ``coll`` is staged before (loaded anew, or kept with the map
        pinned in its new tree), else the live one (a substitution of a substitution is
        followed to its source)."""
        from orchestrator.reconcile.actions import (
            FromLive,
            FromPin,
            FromStaged,
            Keep,
            MapFate,
            NotApplied,
            Stage,
        )

        st = self.staged.get(coll)
        if isinstance(st, Stage) or (
            isinstance(st, Keep)
            and any(k.map.name == mname and k.fate is MapFate.PIN for k in st.maps)
        ):
            return FromStaged(coll, mname)
        ac = self.actual.collections.get(coll)
        if ac is None or mname not in ac.record.maps or hops > 8:
            return NotApplied(coll, mname)
        mr = ac.record.maps[mname]
        if mr.source.startswith("pinned:"):
            return FromPin(Path(mr.source.removeprefix("pinned:")))
        if mr.source:
            _, src, smap = mr.source.split("/", 2)
            return self.source(src, smap, hops + 1)
        return FromLive(coll, mr, ac.record)

    # ------------------------------------------------------------------ one collection

    def collection(self, d: DesiredCollection) -> None:
        actual = self.actual.collections.get(d.name)
        rec = actual.record if actual is not None else None
        reasons: list[str] = []
        diffs: tuple[FieldDiff, ...] = ()
        facts = self.actual.facts.collections.get(d.name)
        blocked = self.blocked.get(d.name)
        if blocked is not None:
            self.problem(d.name, blocked_message(blocked), d.source)
            return
        if rec is None:
            op = Op.CREATE
            reasons.append("new collection")
        else:
            if not d.digest:
                reasons.append("no digest (manifests read without their objects): re-applied")
            elif rec.digest != d.digest:
                diffs = collection_diffs(d, rec, facts)
                reasons.append(changed_parts(d, rec, facts, diffs))
            assert actual is not None
            if actual.drift:
                reasons.append("repair drift: " + "; ".join(str(x) for x in actual.drift))
            if rec.digest == d.digest and not actual.drift:
                # the manifest is the same, but another collection's from may have come or
                # gone: such a map is pinned (or unpinned) in place
                for mname, why in sorted(self.pins.changes(d, rec).items()):
                    reasons.append(f"map {mname}: " + ("pin" if why is not None else "unpin"))
        must_reload = False
        for mname, mo in sorted(d.maps.items()):
            src = mo.source_from
            if src is None or src.collection is None:
                continue
            smap = src.map or mname
            if (src.collection, smap) in self.recreated and rec is not None:
                must_reload = True
                reasons.append(f"map {mname} follows {src.collection}/{smap}, which is recreated")
            if (
                src.collection in self.desired.collections
                and src.collection not in self.selected
                and src.collection not in self.actual.collections
            ):
                self.problem(
                    d.name,
                    f"map {mname}: substitutes a map of collection {src.collection}, which the "
                    f"selector {self.selector} leaves out and which is not applied (select "
                    f"{src.collection} too, or apply it first)",
                    mo.source or d.source,
                )
            if src.collection not in self.desired.collections:
                self.problem(
                    d.name,
                    f"map {mname}: substitutes a map of collection {src.collection}, "
                    "which is not declared (declare it, or remove the substitution)",
                    mo.source or d.source,
                )
        if rec is not None and not reasons:
            line = Change(
                Op.NOOP,
                Kind.COLLECTION,
                d.name,
                d.name,
                f"unchanged (generation {rec.generation})",
                d.source,
            )
            self.collections.append(Unchanged(d.name, lines=(line,)))
            self.entries(d, actual, None)
            return
        if rec is not None:
            op = Op.UPDATE
            reason = f"generation {rec.generation} -> {rec.generation + 1}: " + "; ".join(reasons)
        else:
            reason = "; ".join(reasons)
        reuse = (
            actual is not None
            and not must_reload
            and facts is not None
            and bool(facts.object_sha256)
            and bool(actual.record.load_key)
            and actual.record.load_key
            in (
                load_key(d, facts.object_sha256),
                load_key(d, facts.object_sha256, legacy=True),
            )
            # only attachments drifted (gone, detached, or in another XDP mode or tcx
            # position: they are attached anew), or a pin the manifest does not ask for
            # appeared (it is removed)
            and all(
                (
                    x.kind == "attachment"
                    and x.code in ("missing", "replaced", "detached", "mode", "order")
                )
                or (x.kind == "map" and x.code == "extra")
                for x in actual.drift
            )
        )
        if reuse:
            reason += " (same object, constants and maps: programs and maps are kept)"
        self.add(op, Kind.COLLECTION, d.name, d.name, reason, d.source, diffs=diffs)
        for text in facts.problems if facts is not None else ():
            self.problem(d.name, text, d.source)
        reattach = reattached(d, actual)
        if reuse:
            assert actual is not None
            # a tcx link placed anew needs another instance of its program: the kernel
            # takes a program once per hook, and the old link stays until the new one runs
            fresh = {
                a.program: reattach[a.key()]
                for a in d.attach
                if isinstance(a.target, TcTarget) and a.key() in reattach
            }
            self.keep(d, actual, facts, fresh)
            self.staged[d.name] = self.kept_action(d, actual.record)
            self.collections.append(self.staged[d.name])
            self.entries(d, actual, None)
            self.attachments(d, actual, reuse=True, reattach=reattach, fresh=frozenset(fresh))
            return
        pinned = self.maps(d, actual, facts)
        self.programs(d, rec, facts, "; ".join(reasons))
        stage = self.stage_action(d, rec, facts, pinned)
        self.staged[d.name] = stage
        self.collections.append(stage)
        # preserved maps are handed over (their live entries stay); the others start anew
        self.entries(d, actual, {r.map for r in stage.replacements if not r.record})
        self.attachments(d, actual, reattach=reattach)

    def entries(
        self, d: DesiredCollection, actual: ActualCollection | None, kept: set[str] | None
    ) -> None:
        """The :class:`WriteEntries` actions of ``d`` (see :func:`plan_entries`)."""
        rec = actual.record if actual is not None else None
        planned = plan_entries(d, rec, self.actual.facts.entries.get(d.name, {}), kept)
        self.entry_digests[d.name] = planned.digests
        self.problems += [PlanProblem(d.name, m, src) for m, src in planned.problems]
        self.warnings += planned.warnings
        self.collections += planned.actions

    def stage_action(
        self,
        d: DesiredCollection,
        rec: CollectionRecord | None,
        facts: CollectionFacts | None,
        pinned: frozenset[str],
    ) -> Stage:
        """The load of ``d``'s object, with the map lines just planned: its substitutions and
        the preserved maps handed over (a NOOP line), the maps ``pinned`` (as :meth:`maps`
        found them: :class:`PinRules` for the shapes the object declares)."""
        from orchestrator.reconcile.actions import FromPin, Replacement, Stage

        shapes = facts.maps if facts is not None else {}
        sha = facts.object_sha256 if facts is not None else ""
        replacements: list[Replacement] = []
        for mname, mo in sorted(d.maps.items()):
            sf = mo.source_from
            if sf is not None:
                if sf.pinned is not None:
                    replacements.append(
                        Replacement(mname, FromPin(sf.pinned), f"pinned:{sf.pinned}")
                    )
                else:
                    assert sf.collection is not None
                    smap = sf.map or mname
                    replacements.append(
                        Replacement(
                            mname,
                            self.source(sf.collection, smap),
                            f"collection/{sf.collection}/{smap}",
                        )
                    )
                continue
            line = self.line(Kind.MAP, mname)
            if (
                mo.preserve
                and rec is not None
                and mname in rec.maps
                and line is not None
                and line.op is Op.NOOP
            ):
                replacements.append(Replacement(mname, self.source(d.name, mname)))
        load_maps = None
        if d.programs is not None:
            # with a program binding, also the maps the manifest names and the pinned ones
            named = {m for m, mo in d.maps.items() if m in shapes and mo.source_from is None}
            load_maps = tuple(sorted(named | pinned))
        return Stage(
            d.name,
            d,
            sha,
            load_key(d, sha),
            tuple(replacements),
            pinned,
            load_maps,
            shapes,
            facts.held if facts is not None else None,
            lines=self.take(),
        )

    def kept_action(self, d: DesiredCollection, rec: CollectionRecord) -> Keep:
        """What a kept collection does with each recorded map, with the lines just planned:
        a substitution is carried as it is, a map no longer pinned is held by its programs
        (or freed with the old tree: a DELETE line), every other map pinned in the new tree;
        programs with a REPLACE line are loaded again (:meth:`keep`)."""
        from orchestrator.reconcile.actions import Keep, KeptMap, MapFate, Replacement

        maps: list[KeptMap] = []
        for mname, mr in sorted(rec.maps.items()):
            line = self.line(Kind.MAP, mname)
            if mr.source:
                fate = MapFate.CARRY
            elif line is not None and line.op is Op.DELETE:
                fate = MapFate.DROP
            elif self.pins.reason(d.name, mname, mr.shape) is None:
                fate = MapFate.HELD
            else:
                fate = MapFate.PIN
            maps.append(KeptMap(mr, fate))
        fresh = tuple(c.name for c in self.lines if c.kind is Kind.PROGRAM and c.op is Op.REPLACE)
        fresh_replacements = tuple(
            Replacement(mname, self.source(d.name, mname))
            for mname, mr in sorted(rec.maps.items())
            if fresh and mr.source
        )
        return Keep(d.name, d, rec, tuple(maps), fresh, fresh_replacements, lines=self.take())

    def keep(
        self,
        d: DesiredCollection,
        actual: ActualCollection,
        facts: CollectionFacts | None,
        fresh: Mapping[str, str],
    ) -> None:
        """Lines for the maps and programs a collection keeps (only its attachments, its
        metadata or its pins changed): NOOP, or a map pinned (``~``) or unpinned in place
        (``~``; ``-`` if no program holds it, so unpinning frees it); a program in ``fresh``
        (name -> why) is loaded once more from the same object, with the live maps."""
        rec = actual.record
        changes = self.pins.changes(d, rec)
        extra = {x.name for x in actual.drift if x.kind == "map" and x.code == "extra"}
        held = facts.held if facts is not None else None
        for mname, mr in sorted(rec.maps.items()):
            mo = d.maps.get(mname)
            src = mo.source if mo is not None and mo.source is not None else d.source
            if mname not in changes and mname in extra:
                self.add(
                    Op.UPDATE,
                    Kind.MAP,
                    d.name,
                    mname,
                    f"unpin: the pin maps/{pin_file(mname)} that the manifest does not ask for "
                    f"is removed (drift); the map (id {mr.id}) stays with its programs",
                    src,
                )
            elif mname not in changes and mr.preserve:
                self.add(
                    Op.NOOP, Kind.MAP, d.name, mname, f"preserved, id {mr.id}", src, shown=True
                )
            elif mname not in changes:
                self.add(Op.NOOP, Kind.MAP, d.name, mname, f"kept (id {mr.id})", src)
            elif (why := changes[mname]) is not None:
                self.add(
                    Op.UPDATE,
                    Kind.MAP,
                    d.name,
                    mname,
                    f"pin: live map (id {mr.id}) is pinned at maps/{pin_file(mname)} in place "
                    f"({why}); nothing is reloaded",
                    src,
                )
            elif held is None or mname in held:
                self.add(
                    Op.UPDATE,
                    Kind.MAP,
                    d.name,
                    mname,
                    f"unpin: live map (id {mr.id}) is no longer pinned (the manifest does not "
                    "pin it); its programs hold it, nothing is reloaded",
                    src,
                )
            else:
                self.add(
                    Op.DELETE,
                    Kind.MAP,
                    d.name,
                    mname,
                    f"unpin: map id {mr.id} is no longer pinned and no loaded program uses "
                    "it, so it is freed",
                    src,
                )
        for pname, pr in sorted(rec.programs.items()):
            if pname in fresh:
                self.add(
                    Op.REPLACE,
                    Kind.PROGRAM,
                    d.name,
                    pname,
                    f"new instance (replaces id {pr.id}): {fresh[pname]}; loaded again from "
                    "the same object with the live maps (a tcx hook takes a program once)",
                    d.source,
                )
                continue
            self.add(Op.NOOP, Kind.PROGRAM, d.name, pname, f"kept (id {pr.id})", d.source)

    def maps(
        self, d: DesiredCollection, actual: ActualCollection | None, facts: CollectionFacts | None
    ) -> frozenset[str]:
        """The map lines of ``d`` loaded anew; returns the maps of the object (of the shapes
        in ``facts``) that :class:`PinRules` pins in the new tree."""
        rec = actual.record if actual is not None else None
        pinned_maps: set[str] = set()
        old_maps = rec.maps if rec is not None else {}
        gen = rec.generation + 1 if rec is not None else 1
        known = facts is not None and (bool(facts.maps) or bool(facts.object_sha256))
        names = set(facts.maps) if facts is not None and known else set(d.maps) | set(old_maps)
        unused = set(facts.unused_maps) if facts is not None else set()
        for mname in sorted(names | set(old_maps)):
            mo = d.maps.get(mname)
            old = old_maps.get(mname)
            src = mo.source if mo is not None and mo.source is not None else d.source
            if mname not in names:
                gone = (
                    "no program in spec.programs uses it"
                    if mname in unused
                    else "no longer in the object"
                )
                self.add(Op.DELETE, Kind.MAP, d.name, mname, gone, src)
                continue
            if mo is not None and mo.source_from is not None:
                sf = mo.source_from
                smap = sf.map or mname
                key = source_key(sf.collection, smap, sf.pinned)
                if sf.pinned is not None:
                    what = f"pinned map {sf.pinned}"
                    prob = self.actual.facts.pinned.get(sf.pinned)
                    if prob is not None:
                        self.problem(d.name, f"map {mname}: {prob}", src)
                else:
                    what = f"map {smap} of collection {sf.collection}"
                    if (sf.collection, smap) in self.recreated:
                        self.recreated.add((d.name, mname))
                if old is None:
                    self.add(Op.CREATE, Kind.MAP, d.name, mname, f"substituted: uses {what}", src)
                elif old.source != key or (d.name, mname) in self.recreated:
                    self.recreated.add((d.name, mname))
                    self.add(Op.REPLACE, Kind.MAP, d.name, mname, f"now uses {what}", src)
                else:
                    self.add(Op.NOOP, Kind.MAP, d.name, mname, f"substituted: uses {what}", src)
                continue
            new_shape = facts.maps.get(mname) if facts is not None else None
            drifted = actual is not None and actual.drifted("map", mname)
            shape = new_shape if new_shape is not None else old.shape if old is not None else None
            why = self.pins.reason(d.name, mname, shape)
            if why is not None and new_shape is not None:
                pinned_maps.add(mname)  # new_shape: a map the object declares (facts.maps)
            held = facts.held if facts is not None else None
            if why is None and held is not None and mname not in held:
                # nothing would hold it: it is not kept (and not recorded)
                if old is None or old.source:
                    self.add(
                        Op.NOOP,
                        Kind.MAP,
                        d.name,
                        mname,
                        "not kept: no loaded program uses it and nothing pins it (pin: true "
                        "keeps it)",
                        src,
                    )
                else:
                    self.add(
                        Op.DELETE,
                        Kind.MAP,
                        d.name,
                        mname,
                        f"map id {old.id} is not kept: no loaded program uses it and nothing "
                        "pins it any more",
                        src,
                    )
                continue
            pinned = ", not pinned (its programs hold it)"
            if why is not None:
                pinned = f", pinned ({why})"
            sized: tuple[FieldDiff, ...] = ()
            if (
                old is not None
                and new_shape is not None
                and old.shape.max_entries != new_shape.max_entries
            ):
                sized = (FieldDiff("max_entries", old.shape.max_entries, new_shape.max_entries),)
            if old is None or old.source:
                self.recreated.add((d.name, mname))
                self.add(Op.CREATE, Kind.MAP, d.name, mname, "new map" + pinned, src)
            elif mo is not None and mo.preserve and not drifted:
                diff = old.shape.difference(new_shape) if new_shape is not None else None
                if diff is None:
                    self.add(
                        Op.NOOP,
                        Kind.MAP,
                        d.name,
                        mname,
                        f"preserved, id {old.id}",
                        src,
                        shown=True,
                    )
                elif mo.on_incompatible is OnIncompatible.RECREATE:
                    self.recreated.add((d.name, mname))
                    self.add(
                        Op.REPLACE,
                        Kind.MAP,
                        d.name,
                        mname,
                        f"preserved map is incompatible ({diff}): recreated, its contents are "
                        "lost (on_incompatible: recreate)",
                        src,
                        diffs=sized,
                    )
                else:
                    self.problem(
                        d.name,
                        f"map {mname}: preserved map (id {old.id}) is incompatible with the new "
                        f"object ({diff}) (set on_incompatible: recreate to drop its contents, "
                        "or keep the map's definition)",
                        src,
                    )
            elif mo is not None and mo.preserve:
                self.recreated.add((d.name, mname))
                self.add(
                    Op.REPLACE,
                    Kind.MAP,
                    d.name,
                    mname,
                    "preserved map is gone (drift): recreated empty",
                    src,
                )
            else:
                self.recreated.add((d.name, mname))
                self.add(
                    Op.REPLACE,
                    Kind.MAP,
                    d.name,
                    mname,
                    f"not preserved: recreated with generation {gen}" + pinned,
                    src,
                    diffs=sized,
                )
        return frozenset(pinned_maps)

    def programs(
        self,
        d: DesiredCollection,
        rec: CollectionRecord | None,
        facts: CollectionFacts | None,
        why: str,
    ) -> None:
        old = rec.programs if rec is not None else {}
        if facts is not None and facts.programs:
            names = set(facts.programs)
        elif d.programs is not None:
            names = set(d.programs)
        else:
            names = set(old) | {a.program for a in d.attach}
        for pname in sorted(names | set(old)):
            if pname not in names:
                self.add(Op.DELETE, Kind.PROGRAM, d.name, pname, "no longer loaded", d.source)
            elif pname in old:
                self.add(
                    Op.REPLACE,
                    Kind.PROGRAM,
                    d.name,
                    pname,
                    "reloaded (new program id)",
                    d.source,
                )
            else:
                self.add(Op.CREATE, Kind.PROGRAM, d.name, pname, "new program", d.source)

    def attachments(
        self,
        d: DesiredCollection,
        actual: ActualCollection | None,
        *,
        reuse: bool = False,
        reattach: Mapping[str, str] | None = None,
        fresh: frozenset[str] = frozenset(),
    ) -> None:
        """One action (and line) per attachment, then the links of the old generation that
        go (a line for each attachment no longer declared). ``reattach``: keys whose live
        link is replaced by a new one on the same hook (see :func:`reattached`); ``fresh``:
        programs of a kept collection that get a new instance (their other links follow
        it)."""
        from orchestrator.reconcile.actions import (
            Attach,
            Detach,
            KeepLink,
            MakeBeforeBreak,
            Reattach,
            SwitchLink,
        )

        reattach = reattach or {}
        rec = actual.record if actual is not None else None
        old = rec.attachments if rec is not None else {}
        seen: set[str] = set()
        carried: set[int] = set()  # link ids that stay, in the new tree
        for a in d.attach:
            key = a.key()
            seen.add(key)
            kind = target_kind(a.target)
            ra = old.get(key)
            src = a.source or d.source
            take_over = isinstance(a.target, XdpTarget) and a.target.take_over
            here = (d.name, a, key, kind, f"links/{link_pin_name(a)}")
            title = title_of(a)
            if ra is None:
                ra = previous_link(d, old, key, kind)
                if ra is not None and not (
                    actual is not None
                    and actual.drifted("attachment", ra.key, "missing", "replaced", "detached")
                ):
                    seen.add(ra.key)
                    if key in reattach:
                        self.add(
                            Op.REPLACE,
                            Kind.ATTACHMENT,
                            d.name,
                            key,
                            f"{reattach[key]}: {xdp_reattach(ra, a)}",
                            src,
                            title=title,
                        )
                        self.reattaches.append(Reattach(*here, ra, take_over, lines=self.take()))
                        continue
                    self.add(
                        Op.UPDATE,
                        Kind.ATTACHMENT,
                        d.name,
                        key,
                        f"link {ra.link_id} switched from {ra.program} to {a.program} in place "
                        "(BPF_LINK_UPDATE)",
                        src,
                        title=title,
                    )
                    self.links.append(SwitchLink(*here, ra, lines=self.take()))
                    carried.add(ra.link_id)
                    continue
                ra = None
            # a live link that runs another program is still switched in place
            drifted = actual is not None and actual.drifted(
                "attachment", key, "missing", "replaced", "detached"
            )
            if ra is not None and not drifted:
                changes = field_diffs(ra, a.target)
                why = reattach.get(key)
                if why is not None and kind == "xdp":
                    self.add(
                        Op.REPLACE,
                        Kind.ATTACHMENT,
                        d.name,
                        key,
                        f"{why}: {xdp_reattach(ra, a)}",
                        src,
                        diffs=changes,
                        title=title,
                    )
                    self.reattaches.append(Reattach(*here, ra, take_over, lines=self.take()))
                elif why is not None:
                    self.add(
                        Op.REPLACE,
                        Kind.ATTACHMENT,
                        d.name,
                        key,
                        f"{why}: {tc_reattach(ra, a)}",
                        src,
                        diffs=changes,
                        title=title,
                    )
                    self.links.append(MakeBeforeBreak(*here, ra, take_over, lines=self.take()))
                elif reuse and ra.program == a.program and a.program not in fresh:
                    if changes:
                        self.add(
                            Op.UPDATE,
                            Kind.ATTACHMENT,
                            d.name,
                            key,
                            f"recorded: link {ra.link_id} stays as it is",
                            src,
                            diffs=changes,
                            title=title,
                        )
                    else:
                        self.add(
                            Op.NOOP,
                            Kind.ATTACHMENT,
                            d.name,
                            key,
                            f"link {ra.link_id}",
                            src,
                            title=title,
                        )
                    self.links.append(KeepLink(*here, ra, lines=self.take()))
                    carried.add(ra.link_id)
                elif kind in IN_PLACE_KINDS:
                    self.add(
                        Op.UPDATE,
                        Kind.ATTACHMENT,
                        d.name,
                        key,
                        f"link {ra.link_id} switched to the new program in place (BPF_LINK_UPDATE)",
                        src,
                        diffs=changes,
                        title=title,
                    )
                    self.links.append(SwitchLink(*here, ra, lines=self.take()))
                    carried.add(ra.link_id)
                else:
                    self.add(
                        Op.REPLACE,
                        Kind.ATTACHMENT,
                        d.name,
                        key,
                        f"make-before-break: a new link, then link {ra.link_id} is detached "
                        "(both programs run for a moment)",
                        src,
                        diffs=changes,
                        title=title,
                    )
                    self.links.append(MakeBeforeBreak(*here, ra, take_over, lines=self.take()))
                continue
            taking = self.check_target(d, a, src)
            if taking is not None:
                # our own link is gone (drift): re-attach in its place (-/+), else ~
                op = Op.REPLACE if ra is not None else Op.UPDATE
                self.add(op, Kind.ATTACHMENT, d.name, key, taking, src, title=title)
            elif ra is not None:
                self.add(
                    Op.REPLACE,
                    Kind.ATTACHMENT,
                    d.name,
                    key,
                    f"re-attach: link {ra.link_id} is gone or detached (drift)",
                    src,
                    title=title,
                )
            else:
                self.add(
                    Op.CREATE,
                    Kind.ATTACHMENT,
                    d.name,
                    key,
                    "new link",
                    src,
                    title=title,
                )
            if ra is not None and kind == "xdp":
                # our XDP link is gone or detached: attached anew with the mode changes
                self.reattaches.append(Reattach(*here, ra, take_over, lines=self.take()))
            elif ra is not None:
                self.links.append(MakeBeforeBreak(*here, ra, take_over, lines=self.take()))
            else:
                self.links.append(Attach(*here, take_over, lines=self.take()))
        for key, ra in sorted(old.items()):
            if key not in seen:
                self.add(
                    Op.DELETE,
                    Kind.ATTACHMENT,
                    d.name,
                    key,
                    f"no longer declared: link {ra.link_id} is detached",
                    d.source,
                    title=attachment_title(ra.program, ra.kind, ra.target),
                )
                self.detaches.append(Detach(d.name, ra, lines=self.take()))
            elif ra.link_id not in carried:
                self.detaches.append(Detach(d.name, ra))  # replaced: its line says so

    def check_target(self, d: DesiredCollection, a: Attachment, src: Source | None) -> str | None:
        """Add a problem if the target can't be used; the reason of a take-over if the
        attachment replaces a foreign XDP program (``take_over: true``), else None."""
        tf = self.actual.facts.targets.get(a.target.key())
        if tf is None:
            return None
        if tf.problem is not None:
            self.problem(d.name, f"attachment {a.key()}: {tf.problem}", src)
            return None
        if not isinstance(a.target, XdpTarget) or not tf.xdp_prog_id:
            return None
        if tf.xdp_prog_id in self.actual.ownership.leftover_programs:
            return None  # bpforch's own, left by a killed apply: released before the attach
        name = f" {tf.xdp_prog_name}" if tf.xdp_prog_name else ""
        owner = self.own_prog_ids.get(tf.xdp_prog_id)
        if owner is not None and owner != d.name:
            self.problem(
                d.name,
                f"attachment {a.key()}: {describe_target(a.target)} already runs xdp "
                f"program{name} (id {tf.xdp_prog_id}) of collection {owner}; an interface "
                f"takes one xdp program (remove it from {owner} in an apply of its own first)",
                src,
            )
        elif owner is None and a.target.take_over and tf.xdp_link_id:
            self.problem(
                d.name,
                f"attachment {a.key()}: {describe_target(a.target)} runs xdp program{name} "
                f"(id {tf.xdp_prog_id}) held by link {tf.xdp_link_id} of another process; "
                "take_over only replaces programs attached through netlink (a link can't be "
                "restored if the apply fails: let its owner detach it)",
                src,
            )
        elif owner is None and a.target.take_over:
            return (
                f"take over XDP program {tf.xdp_prog_id}{f' ({tf.xdp_prog_name})' if name else ''}"
                f" attached by someone else (through netlink, {tf.xdp_mode}): it is detached "
                f"and {a.program} attached by a link right after (the kernel refuses a link "
                "while a netlink program is attached, so the interface runs no XDP program "
                "for a moment); it is put back if the apply fails"
            )
        elif owner is None:
            self.problem(
                d.name,
                f"attachment {a.key()}: {describe_target(a.target)} already runs xdp "
                f"program{name} (id {tf.xdp_prog_id}) attached by someone else; bpforch "
                "never detaches what it does not own (detach it first, use another "
                "interface, or set take_over: true on the xdp target)",
                src,
            )
        return None

    # ------------------------------------------------------------------ deletes

    def left_out(self) -> None:
        """With a selector: a collection it leaves out must not lose what it takes from a
        selected one (see :func:`~orchestrator.reconcile.selector.stranded`)."""
        assert self.selector is not None
        gone = {d.collection for d in self.deleted}
        for coll, message in stranded(
            self.selector, self.selected, self.desired, self.actual, gone, self.recreated
        ):
            d = self.desired.collections.get(coll)
            self.problem(coll, message, d.source if d is not None and coll not in gone else None)

    def deletes(self) -> None:
        desired = self.desired.collections
        gone: dict[str, ActualCollection] = {}
        if self.prune:
            gone = {
                n: c
                for n, c in self.actual.collections.items()
                if n not in desired
                and (self.selector is None or self.selector.matches(c.record.labels))
            }
        order, _ = topo_order({n: c.record.depends_on for n, c in gone.items()})
        for name in reversed(order):
            blocked = self.blocked.get(name)
            if blocked is not None:
                self.problem(name, blocked_message(blocked), None)
                continue
            delete_collection(
                self.deleted, self.detaches, gone[name], "not declared any more (--prune)"
            )


def blocked_message(f: Foreign) -> str:
    """Why a collection can't be applied or destroyed: its directory is foreign."""
    return (
        f"{f.path} is not bpforch's ({f.what}); bpforch never follows, changes or removes "
        "it (remove or rename it if it is yours, or give the collection another name)"
    )


__all__ = ["Planner", "blocked_message", "delete_collection", "transaction_actions"]
