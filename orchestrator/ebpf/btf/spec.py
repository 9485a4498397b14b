"""A :class:`Spec`: one BTF blob, its types by id and by name, decoded lazily."""

from __future__ import annotations

import bisect
import operator
import zlib
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TypeVar, overload

from orchestrator.ebpf.btf import decode as _decode
from orchestrator.ebpf.btf import encode as _encode
from orchestrator.ebpf.btf.types import (
    _MAX_CHAIN,
    BTF_MAX_TYPE,
    POINTER_SIZE,
    Array,
    Datasec,
    Kind,
    Pointer,
    Type,
    Var,
    VarLinkage,
    Void,
    _Lazy,
    describe,
    raw_target,
    sizeof,
    skip_qualifiers,
)
from orchestrator.ebpf.errors import BTFError

_MARSHAL_CACHE_SIZE = 8  # distinct extra-string sets remembered per spec

T = TypeVar("T", bound=Type)

# what skip_qualifiers looks through: typedef, volatile, const, restrict, type tag
_QUALIFIER_KINDS = frozenset(
    {Kind.TYPEDEF, Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.TYPE_TAG}
)
# kinds whose record's size word is their size (what sizeof reads from the decoded type)
_SIZED_KINDS = frozenset(
    {Kind.INT, Kind.STRUCT, Kind.UNION, Kind.ENUM, Kind.DATASEC, Kind.FLOAT, Kind.ENUM64}
)
_MAX_LINKAGE = max(VarLinkage)  # a VAR record's linkage word is at most this
# Kinds as plain ints, for the readers of raw records (an enum member's attribute lookup
# costs more than the rest of a record's test)
_PTR, _ARRAY, _STRUCT, _VAR, _DATASEC = (
    int(k) for k in (Kind.PTR, Kind.ARRAY, Kind.STRUCT, Kind.VAR, Kind.DATASEC)
)


class Spec:
    """One BTF blob: types by id and by name, parsed lazily.

    A *split* spec (module BTF) sits on top of a ``base`` spec (vmlinux): its type ids and
    string offsets continue after the base's, and its types may refer to base types.
    Methods that take ids accept base ids too; :meth:`marshal` emits only the spec's own
    types.
    """

    __slots__ = (
        "_as_parsed",
        "_base",
        "_cache",
        "_datasec_ids",
        "_first",
        "_ids",
        "_marshalled",
        "_name_hashes",
        "_names",
        "_noffs",
        "_noffs_pos",
        "_offs",
        "_scan",
        "_sound",
        "_str_start",
        "_strs",
        "_strs_whole",
        "_strtab",
        "_void",
        "_words",
    )

    def __init__(self, *, base: Spec | None = None) -> None:
        """An empty spec (add types with :meth:`add`), optionally split on ``base``."""
        self._base = base
        self._first = base._next_id() if base is not None else 1
        self._str_start = base._str_end() if base is not None else 0
        self._strtab = b"" if base is not None else b"\0"
        self._words: array[int] = array("I")
        self._offs: array[int] = array("I")
        self._cache: list[Type | None] = []
        self._ids: dict[Type, int] = {}
        self._names: dict[str, list[int]] | None = None
        self._noffs: Sequence[int] | None = None  # name offset of every own record
        # name offset -> (first, last) record index with it
        self._noffs_pos: tuple[Mapping[int, int], Mapping[int, int]] | None = None
        self._scan: dict[str, list[int]] = {}  # name lookups answered without the index
        # crc32 of each distinct own type name (ascending) and that name's offset: from a
        # persisted index, name lookups bisect instead of searching the string table
        self._name_hashes: tuple[array[int], array[int]] | None = None
        # offset -> string of the string table: those looked up so far (see _str_cache);
        # _strs_whole: False while a parsed table is still to be decoded whole
        self._strs: dict[int, str] = {}
        self._strs_whole = True
        self._void = Void()
        self._marshalled: dict[frozenset[str], tuple[bytes, dict[str, int]]] = {}
        # Every decoded own type still says what its parsed record says: cleared by
        # changed() and in copies (which exist to be changed); marshal then re-encodes them.
        self._as_parsed = False
        # From a checked parse: whether every record passed the index pass's soundness check
        # (None: not checked), and the DATASEC records' ids (records never change kind).
        self._sound: bool | None = None
        self._datasec_ids: list[int] | None = None

    # ---- construction

    @classmethod
    def parse(cls, data: bytes, *, base: Spec | None = None, checked: bool = False) -> Spec:
        """Parse a BTF blob (either byte order). Corrupt input raises :class:`BTFError`;
        damage inside a type record may only be found when that type is decoded.
        ``checked`` (an object's BTF, no base): the indexing pass also does the bulk
        soundness check of :func:`~.decode.validate`, which then costs nothing."""
        spec = cls(base=base)
        strtab, spec._words = _decode.read(data, split=base is not None)
        spec._strtab = strtab
        if checked and base is None:
            spec._offs, spec._sound, spec._datasec_ids = _decode.index_checked(
                spec._words, spec._first, len(strtab)
            )
        else:
            spec._offs = _decode.index_records(spec._words, spec._first)
        spec._cache = [None] * len(spec._offs)
        spec._strs_whole = len(strtab) > _decode.PREFILL_STRINGS  # else: on first use
        spec._as_parsed = True
        return spec

    @classmethod
    def parse_indexed(cls, data: bytes, index: RecordIndex) -> Spec:
        """:meth:`parse` with the record index a previous :meth:`record_index` of the same
        blob gave (the persisted kernel BTF index): no indexing pass. BTFError if the index
        does not fit the blob."""
        spec = cls()
        strtab, spec._words = _decode.read(data, split=False)
        spec._strtab = strtab
        offs, noffs = index.offsets, index.name_offsets
        n = len(offs)
        if len(noffs) != n or not len(index.names) == len(index.first) == len(index.last):
            raise BTFError("btf: the record index is inconsistent")
        if not _index_fits(spec._words, offs, noffs):
            raise BTFError("btf: the record index does not fit the blob")
        spec._offs = offs
        spec._cache = [None] * n
        spec._noffs = noffs
        spec._noffs_pos = (
            _Positions(index.names, index.first),
            _Positions(index.names, index.last),
        )
        if len(index.hashes) != len(index.hashed):
            raise BTFError("btf: the record index is inconsistent")
        spec._name_hashes = (index.hashes, index.hashed)
        spec._strs_whole = len(strtab) > _decode.PREFILL_STRINGS  # else: on first use
        return spec

    def record_index(self) -> RecordIndex:
        """Where each own record starts and what names it, by name offset (what
        :meth:`parse_indexed` takes back)."""
        noffs, first, last = self._name_offsets()
        names = array("I", sorted(first))
        tab, start = self._strtab, self._str_start
        by_hash = sorted(
            (zlib.crc32(tab[off - start : tab.find(b"\0", off - start)]), off)
            for off in names
            if off and start <= off < start + len(tab)
        )
        return RecordIndex(
            self._offs,
            array("I", noffs),
            names,
            array("I", (first[k] for k in names)),
            array("I", (last[k] for k in names)),
            array("I", (h for h, _ in by_hash)),
            array("I", (off for _, off in by_hash)),
        )

    def copy(self) -> Spec:
        """A deep copy: mutating its types never affects this spec. The base is shared."""
        new = Spec.__new__(Spec)
        new._base = self._base
        new._first = self._first
        new._str_start = self._str_start
        new._strtab = self._strtab  # immutable bytes
        new._words = self._words  # never mutated after parse
        new._offs = self._offs
        new._strs = self._strs  # offset -> str of the shared, immutable table
        new._strs_whole = self._strs_whole
        new._void = Void()
        new._marshalled = {}
        new._as_parsed = False
        new._sound = self._sound
        new._datasec_ids = self._datasec_ids
        new._names = None if self._names is None else {k: list(v) for k, v in self._names.items()}
        new._noffs = self._noffs
        new._noffs_pos = self._noffs_pos
        new._scan = {k: list(v) for k, v in self._scan.items()}
        new._name_hashes = self._name_hashes
        mapping: dict[Type, Type] = {self._void: new._void}
        cache: list[Type | None] = [None] * len(self._cache)
        for i, t in enumerate(self._cache):
            if t is not None:
                c = t._clone()
                mapping[t] = c
                cache[i] = c
        for c in mapping.values():
            if isinstance(c, Pointer):
                raw = raw_target(c)
                if type(raw) is _Lazy:
                    object.__setattr__(c, "target", _Lazy(new, raw.tid))
                    continue
            refs = c._refs()
            if refs:
                c._set_refs([mapping.get(r, r) for r in refs])
        new._cache = cache
        new._ids = {c: i + self._first for i, c in enumerate(cache) if c is not None}
        return new

    def add(self, t: Type) -> int:
        """Append ``t`` and every type it refers to that is not in the spec yet; give t's id.

        Void is never added (it is id 0). Adding a type that is already present is a no-op.
        """
        existing = self._lookup_id(t)
        if existing is not None:
            return existing
        self._marshalled.clear()
        stack = [t]
        while stack:
            cur = stack.pop()
            if self._lookup_id(cur) is not None:
                continue
            tid = self._next_id()
            if tid > BTF_MAX_TYPE:
                raise BTFError(f"btf: more than {BTF_MAX_TYPE} types")
            self._cache.append(cur)
            self._ids[cur] = tid
            if self._names is not None and cur.name:
                self._names.setdefault(cur.name, []).append(tid)
            if cur.name in self._scan:
                self._scan[cur.name].append(tid)
            stack.extend(r for r in reversed(cur._refs()) if self._lookup_id(r) is None)
        return self._ids[t]

    # ---- queries

    @property
    def base(self) -> Spec | None:
        return self._base

    @property
    def first_id(self) -> int:
        """The id of this spec's first own type: 1, or the base's count + 1 when split."""
        return self._first

    def __len__(self) -> int:
        """The number of types (base types included), not counting Void."""
        return self._next_id() - 1

    @property
    def types(self) -> Iterator[Type]:
        """All types in id order (base first when split), without Void at id 0."""
        return self._iter_types()

    def _iter_types(self) -> Iterator[Type]:
        if self._base is not None:
            yield from self._base.types
        first, cache = self._first, self._cache
        chunk = 4096  # decode in batches: much cheaper per type than one by one
        for lo in range(0, len(cache), chunk):
            todo = [first + i for i in range(lo, min(lo + chunk, len(cache))) if cache[i] is None]
            if todo:
                self._decode(todo)
            for i in range(lo, min(lo + chunk, len(cache))):
                t = cache[i]
                assert t is not None
                yield t

    def type_by_id(self, type_id: int) -> Type:
        """The type with this id; id 0 is :class:`Void`."""
        if type_id == 0:
            return self._void
        if type_id < self._first:
            if self._base is None:
                raise BTFError(f"btf: no type with id {type_id}")
            return self._base.type_by_id(type_id)
        idx = type_id - self._first
        if idx >= len(self._cache):
            raise BTFError(f"btf: no type with id {type_id}")
        t = self._cache[idx]
        if t is None:
            self._decode([type_id])
            t = self._cache[idx]
            assert t is not None
        return t

    def type_id(self, t: Type) -> int:
        """The id of ``t`` in this spec (or its base); BTFError if it is not there."""
        tid = self._lookup_id(t)
        if tid is None:
            raise BTFError(f"btf: {describe(t)} is not in this spec")
        return tid

    def _lookup_id(self, t: Type) -> int | None:
        if isinstance(t, Void):
            return 0
        tid = self._ids.get(t)
        if tid is None and self._base is not None:
            return self._base._lookup_id(t)
        return tid

    def ids_by_name(self, name: str) -> list[int]:
        """The ids of every type with this name (base ids first), without decoding them."""
        found = self._base.ids_by_name(name) if self._base is not None else []
        found.extend(self._own_ids(name))
        return found

    def names(self) -> Iterator[str]:
        """Every distinct type name of this spec's own types (not the base's)."""
        return iter(self._name_index())

    def names_containing(self, part: str) -> list[str]:
        """Distinct names of own types that contain ``part`` (cheap without the full index:
        a search of the string table)."""
        if self._names is not None:
            return [n for n in self._names if part in n]
        raw = part.encode("utf-8", "surrogateescape")
        if not raw:
            return list(self._name_index())
        found: dict[str, set[int]] = {}
        spec: Spec | None = self
        while spec is not None:
            tab, start = spec._strtab, spec._str_start
            pos = tab.find(raw)
            while pos >= 0:
                lo = tab.rfind(b"\0", 0, pos) + 1
                hi = tab.find(b"\0", pos)
                hi = len(tab) if hi < 0 else hi
                name = tab[lo:hi].decode("utf-8", "surrogateescape")
                found.setdefault(name, set()).add(start + lo)
                pos = tab.find(raw, hi)
            spec = spec._base
        used = self._name_offsets()[1]
        out = [
            n
            for n, offs in sorted(found.items())
            if any(o in used for o in offs) and self._own_ids(n)
        ]
        out.extend(
            t.name
            for t in self._cache[len(self._offs) :]
            if t is not None and part in t.name and t.name not in out
        )
        return out

    def kind_of(self, type_id: int) -> Kind:
        """The kind of a type without decoding it (cheap, for candidate searches)."""
        if type_id == 0:
            return Kind.UNKN
        if type_id < self._first:
            if self._base is None:
                raise BTFError(f"btf: no type with id {type_id}")
            return self._base.kind_of(type_id)
        idx = type_id - self._first
        if idx >= len(self._cache):
            raise BTFError(f"btf: no type with id {type_id}")
        t = self._cache[idx]
        if t is not None or idx >= len(self._offs):
            assert t is not None
            return t.kind
        return Kind((self._words[self._offs[idx] + 1] >> 24) & 0x1F)

    def ids_of_kind(self, kind: Kind) -> list[int]:
        """The ids of this spec's own types of one kind, in id order, without decoding any
        (a scan of the records' info words)."""
        words, first, k = self._words, self._first, int(kind)
        if kind is Kind.DATASEC and self._datasec_ids is not None:
            out = list(self._datasec_ids)  # found by a checked parse's index pass
        else:
            out = [first + i for i, o in enumerate(self._offs) if (words[o + 1] >> 24) & 0x1F == k]
        cache = self._cache
        for i in range(len(self._offs), len(cache)):  # added after parsing
            t = cache[i]
            if t is not None and t.kind is kind:
                out.append(first + i)
        return out

    def patch_datasec(self, type_id: int, size: int, offsets: Mapping[str, int]) -> None:
        """Set a DATASEC's size and its variables' offsets (by variable name; a variable
        not in ``offsets`` keeps its offset), then order the variables by offset: the ELF
        reader's fix-up of what clang leaves at 0. A DATASEC not decoded yet is patched in
        its raw record (nothing is decoded), so call this only while nothing else holds the
        spec (before it is copied or marshalled)."""
        idx = type_id - self._first
        t = self._cache[idx] if 0 <= idx < len(self._cache) else None
        if t is not None or not 0 <= idx < len(self._offs):
            t = self.type_by_id(type_id)
            if not isinstance(t, Datasec):
                raise BTFError(f"btf: type {type_id} is {describe(t)}, not a datasec")
            t.size = size
            for vsi in t.vars:
                var = vsi.type
                if not isinstance(var, Var):
                    raise BTFError(f"datasec {t.name}: member is {var.kind.name}, not a variable")
                off = offsets.get(var.name)
                if off is not None:
                    vsi.offset = off
            t.vars.sort(key=lambda v: v.offset)
            self.changed()
            return
        w, o = self._words, self._offs[idx]
        info = w[o + 1]
        if (info >> 24) & 0x1F != _DATASEC:
            what = describe(self.type_by_id(type_id))
            raise BTFError(f"btf: type {type_id} is {what}, not a datasec")
        vlen = info & 0xFFFF
        name = self.string(w[o]) if w[o] else ""
        secinfos = []
        first, cache, offs = self._first, self._cache, self._offs
        nown = len(offs)
        for j in range(vlen):
            b = o + 3 + 3 * j
            ref, off, vsize = w[b], w[b + 1], w[b + 2]
            ridx = ref - first
            if 0 <= ridx < nown and cache[ridx] is None:  # the usual: an own record, read here
                ro = offs[ridx]
                if (w[ro + 1] >> 24) & 0x1F != _VAR:
                    kind = Kind((w[ro + 1] >> 24) & 0x1F)
                    raise BTFError(f"datasec {name}: member is {kind.name}, not a variable")
                var_name = self.string(w[ro]) if w[ro] else ""
            else:
                kind = self.kind_of(ref)
                if kind is not Kind.VAR:
                    raise BTFError(f"datasec {name}: member is {kind.name}, not a variable")
                var_name = self._name_of(ref)
            found = offsets.get(var_name)
            secinfos.append((ref, off if found is None else found, vsize))
        secinfos.sort(key=operator.itemgetter(1))
        w[o + 2] = size
        w[o + 3 : o + 3 + 3 * vlen] = array("I", [x for rec in secinfos for x in rec])
        self._marshalled.clear()

    def datasec_vars(self, type_id: int) -> list[tuple[str, int, int, int, int]] | None:
        """A DATASEC's variables as ``(name, linkage, type id, offset, size)`` read from
        the records, when it and its variables are own types not decoded yet (nothing is
        decoded); else None (use the decoded :class:`Datasec`)."""
        first, cache, offs, words = self._first, self._cache, self._offs, self._words
        idx = type_id - first
        if not 0 <= idx < len(offs) or cache[idx] is not None:
            return None
        o = offs[idx]
        info = words[o + 1]
        if (info >> 24) & 0x1F != _DATASEC:
            return None
        out = []
        for j in range(info & 0xFFFF):
            b = o + 3 + 3 * j
            ref = words[b]
            vidx = ref - first
            if not 0 <= vidx < len(offs) or cache[vidx] is not None:
                return None
            vo = offs[vidx]
            vinfo = words[vo + 1]
            if (vinfo >> 24) & 0x1F != _VAR or words[vo + 3] > _MAX_LINKAGE:
                return None
            name = self.string(words[vo]) if words[vo] else ""
            out.append(
                (name, int(words[vo + 3]), int(words[vo + 2]), int(words[b + 1]), int(words[b + 2]))
            )
        return out

    def _unqualified(self, type_id: int) -> int:
        """Where the record of what ``type_id`` is past typedefs and qualifiers starts,
        when that path has only own types not decoded yet; else -1."""
        first, cache, offs, words = self._first, self._cache, self._offs, self._words
        n, tid = len(offs), type_id
        for _ in range(_MAX_CHAIN):
            idx = tid - first
            if tid == 0 or not 0 <= idx < n or cache[idx] is not None:
                return -1
            o = offs[idx]
            if (words[o + 1] >> 24) & 0x1F not in _QUALIFIER_KINDS:
                return int(o)
            tid = words[o + 2]
        return -1

    def pointer_members(self, type_id: int) -> list[tuple[str, int, int, int | None]] | None:
        """A STRUCT's members (past qualifiers) read from the records, when it is an own
        type not decoded yet (nothing is decoded); else None. Each is ``(name, type id,
        target, nelems)``: ``target`` is the pointee's id when the member is a pointer
        (past qualifiers), -1 when it is something else, -2 when that path meets a decoded
        or a base type (ask the decoded member); ``nelems`` is what :meth:`array_len_id`
        gives for ``target`` when the pointee is an own array record not decoded yet (a
        map definition's ``__uint``: ``int (*name)[N]``), else None (ask it)."""
        o = self._unqualified(type_id)
        w = self._words
        if o < 0:
            return None
        info = w[o + 1]
        if (info >> 24) & 0x1F != _STRUCT:
            return None
        string, unqualified = self.string, self._unqualified
        first, cache, offs = self._first, self._cache, self._offs
        n = len(offs)
        out = []
        for b in range(o + 3, o + 3 + 3 * (info & 0xFFFF), 3):
            mtype = int(w[b + 1])
            idx = mtype - first
            if mtype and 0 <= idx < n and cache[idx] is None:
                mo = offs[idx]  # the usual member: an own pointer, no qualifier
                if (w[mo + 1] >> 24) & 0x1F in _QUALIFIER_KINDS:
                    mo = unqualified(mtype)
            else:
                mo = -1
            nelems = None
            if mo < 0:
                target = -2
            elif (w[mo + 1] >> 24) & 0x1F == _PTR:
                target = int(w[mo + 2])
                tidx = target - first
                if 0 <= tidx < n and cache[tidx] is None:
                    to = offs[tidx]
                    if (w[to + 1] >> 24) & 0x1F == _ARRAY:
                        nelems = int(w[to + 5])
            else:
                target = -1
            out.append((string(w[b]) if w[b] else "", mtype, target, nelems))
        return out

    def array_len_id(self, type_id: int) -> int | None:
        """What :meth:`pointed_array_len` gives for a pointer whose target is
        ``type_id``: its element count when it is an array (past qualifiers), else None."""
        o = self._unqualified(type_id)
        if o < 0:
            target = skip_qualifiers(self.type_by_id(type_id))
            return int(target.nelems) if isinstance(target, Array) else None
        w = self._words
        return int(w[o + 5]) if (w[o + 1] >> 24) & 0x1F == _ARRAY else None

    def sizeof_id(self, type_id: int) -> int:
        """``sizeof(self.type_by_id(type_id))``, read from the records of own types not
        decoded yet (which stay undecoded); anything else, errors included, goes through
        the decoded types (the same result and messages)."""
        first, cache, offs, words = self._first, self._cache, self._offs, self._words
        mult, tid = 1, type_id
        for _ in range(_MAX_CHAIN):
            idx = tid - first
            if tid == 0 or not 0 <= idx < len(offs) or cache[idx] is not None:
                break
            o = offs[idx]
            kind = (words[o + 1] >> 24) & 0x1F
            if kind in _SIZED_KINDS:
                return mult * int(words[o + 2])
            if kind == _PTR:
                return mult * POINTER_SIZE
            if kind == _ARRAY:
                mult *= int(words[o + 5])
                tid = int(words[o + 3])
            elif kind in _QUALIFIER_KINDS or kind == _VAR:
                tid = int(words[o + 2])
            else:
                break
        else:
            return sizeof(self.type_by_id(type_id))  # raises: the chain is too long
        try:
            return mult * sizeof(self.type_by_id(tid))
        except BTFError:
            return sizeof(self.type_by_id(type_id))  # the message names the first type

    def pointed_array_len(self, ptr: Pointer) -> int | None:
        """``N`` when ``ptr`` points at an array of ``N`` (``__uint(name, N)`` in a map
        definition is ``int (*name)[N]``), else None. An array of this spec that is not
        decoded yet is read from its record and stays undecoded."""
        raw = raw_target(ptr)
        if type(raw) is _Lazy and raw.spec is self:
            idx = raw.tid - self._first
            if 0 <= idx < len(self._offs) and self._cache[idx] is None:
                o = self._offs[idx]
                kind = (self._words[o + 1] >> 24) & 0x1F
                if kind == _ARRAY:
                    return int(self._words[o + 5])
                if kind not in _QUALIFIER_KINDS:
                    return None
        target = skip_qualifiers(ptr.target)
        return int(target.nelems) if isinstance(target, Array) else None

    def _name_of(self, type_id: int) -> str:
        """A type's name, without decoding it (own or the base's)."""
        if type_id < self._first:
            assert self._base is not None
            return self._base._name_of(type_id)
        idx = type_id - self._first
        t = self._cache[idx]
        if t is not None:
            return t.name
        off = self._words[self._offs[idx]]
        return self.string(off) if off else ""

    def types_by_name(self, name: str) -> list[Type]:
        """Every type with this name (base types first), in id order."""
        found = self._base.types_by_name(name) if self._base is not None else []
        for tid in self._own_ids(name):
            found.append(self.type_by_id(tid))
        return found

    @overload
    def type_by_name(self, name: str) -> Type: ...

    @overload
    def type_by_name(self, name: str, cls: type[T]) -> T: ...

    def type_by_name(self, name: str, cls: type[Type] | None = None) -> Type:
        """The one type with this name (and of class ``cls`` if given).

        BTFError when there is none, or more than one.
        """
        found = self.types_by_name(name)
        if cls is not None:
            found = [t for t in found if isinstance(t, cls)]
        what = f"{cls.__name__.lower()} {name}" if cls is not None else f"type {name}"
        if not found:
            raise BTFError(f"btf: no {what}")
        if len(found) > 1:
            raise BTFError(f"btf: {len(found)} types match {what}")
        return found[0]

    @property
    def _str_cache(self) -> dict[int, str]:
        """Offset -> string: for a parsed table of at most
        :data:`~.decode.PREFILL_STRINGS` bytes (an object's), every string that follows a
        nul, the table decoded in one pass on the first call (what marshalling and a
        persisted spec need; a parse itself looks up the few it reads, through
        :meth:`string`); for a larger one (the kernel's), the strings looked up so far."""
        if not self._strs_whole:
            whole = _decode.split_strings(self._strtab, self._str_start)
            whole.update(self._strs)  # offsets inside a string that string() was asked for
            self._strs, self._strs_whole = whole, True  # (a copy keeps the dict it shared)
        return self._strs

    def string(self, offset: int) -> str:
        """The string at ``offset`` in the string table (for .BTF.ext records)."""
        cached = self._strs.get(offset)
        if cached is not None:
            return cached
        if offset < self._str_start:
            if self._base is None:
                raise BTFError(f"btf: string offset {offset} out of range")
            return self._base.string(offset)
        rel = offset - self._str_start
        tab = self._strtab
        if rel >= len(tab):
            raise BTFError(f"btf: string offset {offset} out of range")
        end = tab.find(b"\0", rel)
        if end < 0:
            raise BTFError(f"btf: string at {offset} is not nul-terminated")
        text = tab[rel:end].decode("utf-8", "surrogateescape")
        self._strs[offset] = text
        return text

    # ---- marshalling

    def marshal(self, extra_strings: Iterable[str] = ()) -> tuple[bytes, dict[str, int]]:
        """Serialize to little-endian BTF for BPF_BTF_LOAD, keeping every id.

        The string table also holds ``extra_strings`` (line_info file names and source
        lines). Returns the blob and the string → offset map. A split spec emits only its
        own types; its string offsets continue after the base's. A spec built with
        :meth:`add` gets a deduplicated table; a parsed one (of an object's size) keeps its
        table as parsed, with strings it lacks appended, and its types' records as parsed:
        only added types are encoded, and, after :meth:`changed` or in a :meth:`copy`,
        every decoded type.

        The result is cached per set of extra strings: a spec is treated as immutable once
        parsed (the ELF reader's DATASEC fix-ups happen before anything marshals it).
        :meth:`add` drops the cache; code that changes a type in place must call
        :meth:`changed` (or work on a :meth:`copy`), or the change is not marshalled. The
        returned dict is shared with the cache: do not modify it.
        """
        key = frozenset(extra_strings)
        cached = self._marshalled.get(key)
        if cached is None:
            cached = self._marshal(key)
            if len(self._marshalled) >= _MARSHAL_CACHE_SIZE:
                self._marshalled.clear()
            self._marshalled[key] = cached
        return cached

    def changed(self) -> None:
        """Forget cached :meth:`marshal` results: call after changing a type in place."""
        self._marshalled.clear()
        self._as_parsed = False

    def _marshal(self, extra_strings: Iterable[str]) -> tuple[bytes, dict[str, int]]:
        return _encode.marshal(self, extra_strings)

    # ---- internals

    def _next_id(self) -> int:
        return self._first + len(self._cache)

    def _str_end(self) -> int:
        return self._str_start + len(self._strtab)

    def _own_ids(self, name: str) -> list[int]:
        """Ids of own types named ``name``: from the index if built, else by searching the
        string table for the name and the records for its offset (no index needed)."""
        if self._names is not None:
            return self._names.get(name, [])
        hit = self._scan.get(name)
        if hit is None:
            hit = self._scan_name(name)
            self._scan[name] = hit
        return hit

    def _name_offsets(self) -> tuple[Sequence[int], Mapping[int, int], Mapping[int, int]]:
        """The name offset of every own record (in id order), and for each offset the first
        and the last record index that has it (built with C-speed bulk operations)."""
        noffs, pos = self._noffs, self._noffs_pos
        if noffs is None or pos is None:
            n = len(self._offs)
            if n == 0:
                noffs = ()
            elif n == 1:
                noffs = (self._words[self._offs[0]],)
            else:
                noffs = operator.itemgetter(*self._offs)(self._words)
            last = dict(zip(noffs, range(n), strict=True))
            first_ = dict(zip(reversed(noffs), range(n - 1, -1, -1), strict=True))
            pos = (first_, last)
            self._noffs, self._noffs_pos = noffs, pos
        return noffs, pos[0], pos[1]

    def _scan_name(self, name: str) -> list[int]:
        first, cache = self._first, self._cache
        out: list[int] = []
        raw = name.encode("utf-8", "surrogateescape")
        if raw and b"\0" not in raw:
            targets: set[int] = set()
            needle = b"\0" + raw + b"\0"
            spec: Spec | None = self
            if self._name_hashes is not None:  # own names only (never split)
                hashes, hashed = self._name_hashes
                tab, start = self._strtab, self._str_start
                h = zlib.crc32(raw)
                j = bisect.bisect_left(hashes, h)
                while j < len(hashes) and hashes[j] == h:
                    if tab.startswith(raw + b"\0", hashed[j] - start):
                        targets.add(hashed[j])
                    j += 1
                spec = None
            while spec is not None:  # a split spec's names may point into its base's table
                tab, start = spec._strtab, spec._str_start
                if tab.startswith(raw + b"\0"):
                    targets.add(start)
                pos = tab.find(needle)
                while pos >= 0:
                    targets.add(start + pos + 1)
                    pos = tab.find(needle, pos + 1)
                spec = spec._base
            if targets:
                noffs, lo, hi = self._name_offsets()
                for target in targets:
                    i = lo.get(target)
                    if i is None:
                        continue  # a member name, not a type name
                    end = hi[target]
                    while True:
                        t = cache[i]
                        if t is None or t.name == name:
                            out.append(first + i)
                        if i == end:
                            break
                        i = noffs.index(target, i + 1, end + 1)
        for i in range(len(self._offs), len(cache)):  # added after parsing
            t = cache[i]
            if t is not None and t.name == name:
                out.append(first + i)
        out.sort()
        return out

    def _name_index(self) -> dict[str, list[int]]:
        idx = self._names
        if idx is None:
            idx = {}
            words, string, first = self._words, self.string, self._first
            cache = self._cache
            # Group record ids by name offset first (cheap ints), then decode each distinct
            # name once: vmlinux has ~130k records but far fewer distinct names.
            by_off: dict[int, list[int]] = {}
            get = by_off.get
            for i, off in enumerate(self._offs):
                if cache[i] is not None:  # decoded (and maybe renamed)
                    by_off.setdefault(-1 - i, []).append(first + i)
                    continue
                name_off = words[off]
                if name_off:
                    ids = get(name_off)
                    if ids is None:
                        by_off[name_off] = [first + i]
                    else:
                        ids.append(first + i)
            tab, start = self._strtab, self._str_start
            text = tab.decode("ascii") if tab.isascii() else None
            find = text.find if text is not None else None
            for name_off, ids in by_off.items():
                if name_off < 0:
                    t = cache[ids[0] - first]
                    assert t is not None
                    if t.name:
                        idx.setdefault(t.name, []).extend(ids)
                    continue
                rel = name_off - start
                if text is not None and find is not None and 0 <= rel < len(text):
                    end = find("\0", rel)
                    name = text[rel:end] if end >= 0 else string(name_off)
                else:
                    name = string(name_off)
                have = idx.get(name)
                if have is None:
                    idx[name] = ids
                else:
                    have.extend(ids)
                    have.sort()
            for i in range(len(self._offs), len(cache)):
                t = cache[i]
                if t is not None and t.name:
                    idx.setdefault(t.name, []).append(first + i)
            self._names = idx
        return idx

    def _decode(self, type_ids: list[int]) -> None:
        """Decode own ``type_ids`` and every own type they reach, without recursion."""
        first, cache, nown = self._first, self._cache, len(self._offs)
        pending: list[tuple[Type, tuple[int, ...]]] = []
        stack = type_ids[::-1]
        try:
            while stack:
                tid = stack.pop()
                if cache[tid - first] is not None:
                    continue
                t, refs = _decode.inflate(self, tid)
                cache[tid - first] = t
                self._ids[t] = tid
                pending.append((t, refs))
                for r in refs:
                    if r >= first:
                        if r - first >= nown:
                            raise BTFError(f"btf: type {tid} refers to missing type {r}")
                        if cache[r - first] is None:
                            stack.append(r)
                    elif r and self._base is None:
                        raise BTFError(f"btf: type {tid} refers to missing type {r}")
            for t, refs in pending:
                if refs:
                    t._set_refs([self._resolve(r) for r in refs])
        except BaseException:
            for t, _ in pending:
                cache[self._ids.pop(t) - first] = None
            raise

    def _resolve(self, tid: int) -> Type:
        if tid == 0:
            return self._void
        if tid < self._first:
            assert self._base is not None
            return self._base.type_by_id(tid)
        t = self._cache[tid - self._first]
        assert t is not None
        return t


class RecordIndex:
    """A spec's record index (see :meth:`Spec.record_index`): the word offset and name
    offset of every record, and for each distinct name offset (``names``, ascending) the
    first and last record index with it; and the crc32 of each such name (``hashes``,
    ascending) with its offset (``hashed``)."""

    __slots__ = ("first", "hashed", "hashes", "last", "name_offsets", "names", "offsets")

    def __init__(
        self,
        offsets: array[int],
        name_offsets: array[int],
        names: array[int],
        first: array[int],
        last: array[int],
        hashes: array[int],
        hashed: array[int],
    ) -> None:
        self.offsets = offsets
        self.name_offsets = name_offsets
        self.names = names
        self.first = first
        self.last = last
        self.hashes = hashes
        self.hashed = hashed


class _Positions(Mapping[int, int]):
    """``names[i] -> values[i]`` over two arrays (``names`` ascending), looked up by
    bisection: what a persisted index gives without building a dict of 100k entries."""

    __slots__ = ("_names", "_values")

    def __init__(self, names: array[int], values: array[int]) -> None:
        self._names = names
        self._values = values

    def __getitem__(self, key: int) -> int:
        i = bisect.bisect_left(self._names, key)
        if i < len(self._names) and self._names[i] == key:
            return int(self._values[i])
        raise KeyError(key)

    def __iter__(self) -> Iterator[int]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def _index_fits(words: array[int], offs: Sequence[int], noffs: Sequence[int]) -> bool:
    """Whether a record index (from :meth:`Spec.record_index` of the same blob) plausibly
    fits ``words``: it starts at 0, its last record ends where the type section does, and
    sampled records carry the name offsets it says. Cheap: no pass over the records."""
    n = len(offs)
    if n == 0:
        return len(words) == 0
    if len(noffs) != n or offs[0] != 0 or offs[-1] + 3 > len(words):
        return False
    last = offs[-1]
    info = words[last + 1]
    kind = (info >> 24) & 0x1F
    if kind == 0 or kind >= len(_decode._FIXED_WORDS):
        return False
    size = 3 + _decode._FIXED_WORDS[kind] + _decode._VLEN_WORDS[kind] * (info & 0xFFFF)
    if last + size != len(words):
        return False
    step = max(1, n // 64)
    return all(words[offs[i]] == noffs[i] for i in range(0, n, step))
