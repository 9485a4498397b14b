"""Stage: the plan's Stage and Keep actions (a collection's next generation, loaded or
kept, pinned under the staging directory)."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import TYPE_CHECKING

from orchestrator.ebpf import Collection, CollectionOptions, CollectionSpec, Map, PinType, Program
from orchestrator.ebpf.collection import load_subset
from orchestrator.manifest.model import DesiredCollection
from orchestrator.reconcile.actions import Keep, MapFate, Stage
from orchestrator.reconcile.errors import ApplyError, where
from orchestrator.reconcile.observe import held_maps
from orchestrator.reconcile.state import MapRecord
from orchestrator.reconcile.transaction.base import Staged, TransactionBase, check_name, pin_name

if TYPE_CHECKING:
    from orchestrator.manifest.objects import ObjectInfo


class StageSteps(TransactionBase):
    """The Stage and Keep actions."""

    def _planned_object(self, name: str, d: DesiredCollection, sha256: str) -> ObjectInfo:
        """The object of ``d`` as the plan saw it (``sha256``); an error if it can't be read,
        if its bytes are not the manifest's ``sha256`` (when given) or changed since the plan."""
        from orchestrator.manifest.objects import ObjectError

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
        if info.sha256 != sha256:
            raise ApplyError(
                f"{where(name, d.source)}: object {d.object_file} changed since the plan "
                "(plan and apply again)",
                collection=name,
            )
        return info

    def _stage(self, action: Stage) -> None:
        """Load the object as the plan says and pin the new tree under the staging
        directory (not in a kernel dry run)."""
        name, d = action.collection, action.desired
        self.current = (name, d.source)
        self.failpoints.reach("load", name)
        info = self._planned_object(name, d, action.object_sha256)
        spec = prepared(info.spec, d)
        replacements = {r.map: self._map(r.source) for r in action.replacements}
        self.failpoints.reach("verify", name)
        opts = CollectionOptions(map_replacements=replacements, btf_cache=self.btf)
        if action.load_maps is None:
            coll = Collection(spec, opts)
        else:
            assert d.programs is not None
            coll = load_subset(spec, opts, d.programs, action.load_maps)
        st = Staged(
            d,
            check_name(name),
            coll,
            coll.maps,
            coll.programs,
            info.sha256,
            action.load_key,
            dict(action.shapes),
            {r.map: r.record for r in action.replacements if r.record},
            set(action.pinned) & coll.maps.keys(),
            # what outlives the load unpinned (recorded by id): whatever the loaded programs
            # hold (the object's own spec says the same as the prepared copy: constants
            # change no reference); the plan read it for the same programs of the same
            # object (the autoloaded ones, or the binding's: what Collection and
            # load_subset load)
            set(held_maps(info.spec, coll.programs) if action.held is None else action.held),
        )
        self.staged[name] = st
        if self.verify_only:
            return
        self._pin(st)

    def _pin(self, st: Staged) -> None:
        """Pin the next generation under the staging directory: everything is made
        relative to the staging directory's fd (which this transaction made, under the
        root it holds locked), so no path is looked up from the root again."""
        self.failpoints.reach("pin", st.desired.name)
        sfd, rel = self.staging_fd, st.rel  # plain strings: this runs per collection
        assert sfd is not None
        try:
            os.mkdir(rel, 0o700, dir_fd=sfd)  # the staging directory is checked to be on bpffs
            for sub in ("maps", "progs", "links") if st.desired.attach else ("maps", "progs"):
                os.mkdir(f"{rel}/{sub}", 0o700, dir_fd=sfd)
        except OSError as err:  # named by its whole path, as the user would look it up
            raise OSError(err.errno, err.strerror, f"{self.staging}/{err.filename}") from err
        for mname in sorted(st.pinned):
            # the rest live as long as the programs that hold them (recorded by id), or
            # not at all (held by nothing: not recorded)
            self._pin_staged(st.maps[mname], f"{rel}/maps/{pin_name(mname)}")
        for pname, p in st.programs.items():
            self._pin_staged(p, f"{rel}/progs/{pin_name(pname)}")

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
        st = Staged(
            d,
            check_name(name),
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
        name, d, rec, names = action.collection, action.desired, action.record, action.fresh
        info = self._planned_object(name, d, rec.object_sha256)
        spec = prepared(info.spec, d)
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
        opts = CollectionOptions(map_replacements=replacements, btf_cache=self.btf)
        coll = load_subset(spec, opts, names, [])
        with coll:
            out = {pname: coll.detach_program(pname) for pname in names}
        self.owned.extend(out.values())
        return out


def prepared(original: CollectionSpec, d: DesiredCollection) -> CollectionSpec:
    """A copy of ``original`` as ``d`` loads it (constants, max_entries, no libbpf pinning:
    bpforch makes the pins, under the collection). The shapes of its maps are the plan's
    (:func:`~orchestrator.reconcile.facts.map_shapes` of the same object)."""
    spec = original.copy()
    spec.rewrite_constants(d.constants)
    for mname, ms in spec.maps.items():
        ms.pinning = PinType.NONE  # pins are ours to make, under the collection
        mo = d.maps.get(mname)
        if mo is not None and mo.max_entries:
            ms.max_entries = mo.max_entries
    return spec
