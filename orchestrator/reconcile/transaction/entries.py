"""WriteEntries: a map's declared entries written inside the transaction (a staged map
before any link switches to it, a live one in place), with the previous contents noted in
the journal so that a failed apply puts them back."""

from __future__ import annotations

from orchestrator.ebpf import Map, MapType, Program
from orchestrator.ebpf.errors import Error as EbpfError
from orchestrator.ebpf.map_codec import MapCodec
from orchestrator.ebpf.values import References
from orchestrator.manifest import entries as rules
from orchestrator.manifest.objects import ObjectError
from orchestrator.reconcile import entries as _entries
from orchestrator.reconcile.actions import WriteEntries
from orchestrator.reconcile.errors import ApplyError, where
from orchestrator.reconcile.transaction.base import TransactionBase


class EntrySteps(TransactionBase):
    """The WriteEntries action."""

    def _write_entries(self, action: WriteEntries) -> None:
        name, mname, d = action.collection, action.map, action.desired
        mo = d.maps[mname]
        src = mo.source if mo.source is not None else d.source
        self.current = (name, src)
        self.failpoints.reach("entries", f"{name}/{mname}")
        try:
            info = self.objects.get(d.object_file)
        except ObjectError as err:
            raise ApplyError(f"{where(name, d.source)}: object: {err}", collection=name) from err
        mspec = info.spec.maps[mname]
        max_entries = mo.max_entries if mo.max_entries is not None else mspec.max_entries
        m = self._entries_map(action)
        programs, maps = self._entry_refs(action)
        try:
            codec = MapCodec.of(
                mspec,
                refs=References(
                    programs={n: int(p.fd) for n, p in programs.items()},
                    maps={n: int(x.fd) for n, x in maps.items()},
                ),
            )
            assert mo.entries is not None
            encoded, _ = _entries.encoded(codec, mo.entries, max_entries, action.mode)
            if encoded.problems:
                message = encoded.problems[0].message
                raise ApplyError(f"{where(name, src)}: map {mname}: {message}", collection=name)
            declared, raw = encoded.compared, encoded.raw
            refs = codec.type in rules.REFERENCES
            ids = (
                {p.id: n for n, p in programs.items()}
                if codec.type == MapType.PROG_ARRAY
                else {x.id: n for n, x in maps.items()}
            )
            before = dict(m.items_bytes(chunk=4096))  # raw, to put back
            live = _entries.read_live(m, codec, ids, declared) if refs else None
            current = live if live is not None else _compared(before, codec, declared)
            delta = _entries.diff(action.mode, declared, current, codec.type in rules.ARRAYS)
            if delta.count == 0:
                return
            zero = bytes(codec.value_buffer_size) if codec.type in rules.ARRAYS else None
            touched = [*delta.add, *delta.update, *delta.delete]
            self.journal.add(
                f"restore the entries of map {mname} of collection {name}",
                lambda: _restore(m, touched, before, zero),
            )
            _entries.write(m, raw, delta, zero)
        except EbpfError as err:
            raise ApplyError(
                f"{where(name, src)}: map {mname}: writing its entries: {err}", collection=name
            ) from err

    def _entries_map(self, action: WriteEntries) -> Map:
        """The map to write: staged (loaded anew, or kept and pinned in the new tree), else
        the live one of the record."""
        st = self.staged.get(action.collection)
        if st is not None and action.map in st.maps:
            return st.maps[action.map]
        rec = action.record
        if rec is None or action.map not in rec.maps:
            raise ApplyError(
                f"collection {action.collection} has no map {action.map}",
                collection=action.collection,
            )
        m = self._live_map(rec, rec.maps[action.map])
        self.owned.append(m)
        return m

    def _entry_refs(self, action: WriteEntries) -> tuple[dict[str, Program], dict[str, Map]]:
        """The programs and maps that names in a prog array or a map of maps stand for: the
        staged ones, else the live ones of the record."""
        st = self.staged.get(action.collection)
        if st is not None:
            return dict(st.programs), dict(st.maps)
        rec = action.record
        mo = action.desired.maps[action.map]
        if rec is None or mo.entries is None:
            return {}, {}
        wanted = {str(e.value) for e in mo.entries}
        programs: dict[str, Program] = {}
        maps: dict[str, Map] = {}
        rtype = rec.maps[action.map].shape.type if action.map in rec.maps else -1
        if rtype == int(MapType.PROG_ARRAY):
            for pname, pr in rec.programs.items():
                if pname in wanted:
                    p = Program.from_fd(self._open(rec.name, pr.pin))
                    self.owned.append(p)
                    programs[pname] = p
        elif rtype in (int(MapType.ARRAY_OF_MAPS), int(MapType.HASH_OF_MAPS)):
            for mname, mr in rec.maps.items():
                if mname in wanted and not mr.source:
                    x = self._live_map(rec, mr)
                    self.owned.append(x)
                    maps[mname] = x
        return programs, maps


def _compared(
    before: dict[bytes, bytes], codec: object, declared: dict[bytes, bytes | str]
) -> dict[bytes, bytes | str]:
    """The raw contents as compared: array indices not declared that hold zero left out."""
    arrays = getattr(codec, "type", None) in rules.ARRAYS
    return {k: v for k, v in before.items() if not (arrays and k not in declared and not any(v))}


def _restore(m: Map, keys: list[bytes], before: dict[bytes, bytes], zero: bytes | None) -> None:
    """Put back the entries at ``keys`` as they were (a key that was absent is deleted; an
    array index reset to its old value)."""
    back = [k for k in keys if k in before]
    gone = [k for k in keys if k not in before]
    values = [before[k] for k in back]
    if m.type in rules.REFERENCES:
        # the kernel gave back ids: a program or map is written by fd
        for k, v in zip(back, values, strict=True):
            ident = int.from_bytes(v[:4], "little")
            ref: Program | Map = (
                Program.from_id(ident) if m.type == MapType.PROG_ARRAY else Map.from_id(ident)
            )
            try:
                m.update_bytes(k, int(ref.fd).to_bytes(4, "little"))
            finally:
                ref.close()
    else:
        _entries.update(m, back, values)
    if zero is None:
        _entries.delete(m, gone)
    else:
        _entries.update(m, gone, [zero] * len(gone))


__all__ = ["EntrySteps"]
