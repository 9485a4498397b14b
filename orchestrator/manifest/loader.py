"""Manifests on disk -> a validated, frozen :class:`~orchestrator.manifest.model.DesiredState`.

Three passes, each collecting every problem rather than stopping at the first:

1. files: expand directories (recursive ``*.yaml``/``*.yml``, sorted, hidden entries such as
   Kubernetes' ``..data`` skipped), parse the YAML keeping line and column of every node;
2. per document: JSON Schema, then build the dataclasses with paths resolved against the
   manifest's own directory;
3. across collections and against the object files: names, programs, constants, maps,
   substitutions, cycles, attachment conflicts.

Nothing here needs root or touches the kernel. What only the live system can tell (an
interface or cgroup exists, a pinned map is really on bpffs after symlinks) is the
reconciler's plan-time business.
"""

from __future__ import annotations

import errno
import hashlib
import json
import mmap
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, cast

from orchestrator._gc import gc_paused
from orchestrator.ebpf import (
    ConstantError,
    MapIncompatibleError,
    MapType,
    SpecError,
)
from orchestrator.ebpf.errors import FileError, clip, quote
from orchestrator.ebpf.files import read_file, reason, stat_regular
from orchestrator.ebpf.suggestions import did_you_mean
from orchestrator.manifest import metrics as metric_rules
from orchestrator.manifest.builder import _Builder
from orchestrator.manifest.cache import ObjectStore
from orchestrator.manifest.cache import default as default_store
from orchestrator.manifest.checked import CheckedState
from orchestrator.manifest.document import Document, PathKey, render_path
from orchestrator.manifest.errors import ManifestError, ManifestProblem
from orchestrator.manifest.kernel_hooks import target_mismatch
from orchestrator.manifest.metrics import MetricValueError
from orchestrator.manifest.model import (
    API_VERSION,
    DEPRECATED_API_VERSIONS,
    KIND_COLLECTION,
    DesiredCollection,
    DesiredState,
    MapOptions,
    Source,
    TcTarget,
    XdpTarget,
)
from orchestrator.manifest.objects import ObjectError, ObjectInfo
from orchestrator.manifest.saved import SavedDocuments

if TYPE_CHECKING:  # a load served from the checked state parses no object
    from orchestrator.ebpf import CollectionSpec, MapSpec

# ---------------------------------------------------------------------------- files

SUFFIXES = (".yaml", ".yml")


def manifest_files(paths: Sequence[Path], problems: list[ManifestProblem]) -> list[Path]:
    """The manifest files named by ``paths``: files as given, directories searched
    recursively for ``*.yaml``/``*.yml`` in sorted order, skipping hidden names (this skips
    the ``..data``/``..2024_…`` directories of a Kubernetes ConfigMap mount, whose visible
    ``x.yaml`` symlinks are read instead). Each file is read once, even when reached twice.
    A ``*.yaml`` entry that is not a regular file (a FIFO, a socket, a device) is a problem,
    never opened; a dangling symlink is skipped (a ConfigMap swap leaves one briefly).
    """
    out: list[Path] = []
    seen: set[str] = set()
    visited_dirs: set[tuple[int, int]] = set()

    def add(path: Path, real: str | None = None) -> None:
        if real is None:
            real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            out.append(path)

    def walk(directory: Path) -> None:
        try:
            st = directory.stat()
            if (st.st_dev, st.st_ino) in visited_dirs:
                return  # a symlink loop, or the same directory twice
            visited_dirs.add((st.st_dev, st.st_ino))
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            problems.append(ManifestProblem(Source(directory), "", _oserror(err)))
            return
        # an entry that is no symlink resolves to its name in the resolved directory: one
        # realpath per directory, not one per file (each an lstat per path component)
        real_dir = os.path.realpath(directory)
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = directory / entry.name
            try:
                mode = _mode(entry)
            except OSError:  # a dangling symlink, or raced with a removal
                continue
            if stat.S_ISDIR(mode):
                walk(path)
            elif entry.name.endswith(SUFFIXES):
                if stat.S_ISREG(mode):
                    add(path, _real_name(entry, real_dir))
                else:
                    problems.append(_not_regular(path, mode))

    for given in paths:
        path = Path(os.path.abspath(given))
        if path.is_dir():
            walk(path)
        elif path.exists():
            add(path)
        else:
            problems.append(
                ManifestProblem(Source(path), "", "no such file or directory", "check the path")
            )
    return out


def _mode(entry: os.DirEntry[str]) -> int:
    """The file type of ``entry`` after symlinks, like the read will see it: from the
    listing for a directory or regular file (no stat), by a stat for anything else."""
    if not entry.is_symlink():
        if entry.is_file(follow_symlinks=False):
            return stat.S_IFREG
        if entry.is_dir(follow_symlinks=False):
            return stat.S_IFDIR
    return entry.stat().st_mode  # follows symlinks


def _real_name(entry: os.DirEntry[str], real_dir: str) -> str | None:
    """The resolved path of ``entry`` in the resolved ``real_dir`` if it is no symlink
    (known from the listing), else None (resolve the path itself)."""
    try:
        return None if entry.is_symlink() else os.path.join(real_dir, entry.name)
    except OSError:
        return None


def _oserror(err: OSError) -> str:
    return reason(err)


def _not_regular(path: Path, mode: int) -> ManifestProblem:
    try:
        stat_regular(path)
    except OSError as err:
        return ManifestProblem(Source(path), "", _oserror(err), "only regular files are read")
    what = f"not a regular file (mode {mode:#o})"  # pragma: no cover
    return ManifestProblem(Source(path), "", what)  # pragma: no cover


# ---------------------------------------------------------------------------- building


@dataclass(slots=True)
class _Entry:
    """A collection as built from one document, with the document for locating problems."""

    coll: DesiredCollection
    doc: Document
    # per object sha256: the problems found checking the collection against that object
    # (shared with the file cache: an unchanged manifest and object are not checked again)
    checked: dict[str, list[ManifestProblem]]
    info: ObjectInfo | None = None  # the parsed object, when it could be read


@dataclass(slots=True)
class ParsedFile:
    """What parsing, the schema and building found in one manifest file (kept in the
    :class:`~orchestrator.manifest.cache.ObjectStore` by the sha256 of its bytes)."""

    problems: list[ManifestProblem]
    built: list[tuple[DesiredCollection, Document, dict[str, list[ManifestProblem]]]]
    invalid: list[str]  # names of collections whose documents are invalid
    warnings: list[ManifestProblem] = field(default_factory=list)


MANIFEST_MAX = 4 << 20  # bytes of one manifest file
_CHECKED_MAX = 8  # object versions whose check results a cached document remembers


def _cost(size: int, result: ParsedFile) -> int:
    """An estimate of the memory a parsed file holds, erring high: its values as Python
    objects (a few times the text) and, per YAML node, its path and position in two
    indexes (a tuple key and a tuple value each)."""
    nodes = sum(len(doc.values) + len(doc.keys) for _, doc, _ in result.built)
    return 4096 + 8 * size + 400 * nodes + 300 * len(result.problems)


def _read_manifest(file: Path) -> tuple[bytes, bytes] | ManifestProblem:
    """The bytes of a manifest file and their sha256, or the problem reading it."""
    try:
        data = read_file(file, limit=MANIFEST_MAX, what="a manifest")
    except OSError as err:
        hint = ""
        if isinstance(err, FileError):
            hint = (
                "split it into several files"
                if err.errno == errno.EFBIG
                else "only regular files are read"
            )
        return ManifestProblem(Source(file), "", _oserror(err), hint)
    return data, hashlib.sha256(data).digest()


def _load_file(
    file: Path,
    problems: list[ManifestProblem],
    store: ObjectStore,
    saved: SavedDocuments | None = None,
    read: tuple[bytes, bytes] | ManifestProblem | None = None,
) -> ParsedFile:
    """Parse, schema-check and build every document of a file (kept in ``store`` by the
    sha256 of its bytes: one version per file, so a rewritten file replaces its entry and
    a changed file can never hit a stale one). ``saved``: the documents persisted by an
    earlier command, restored instead of parsed and checked (see
    :mod:`orchestrator.manifest.saved`). ``read``: what :func:`_read_manifest` gave, if
    the file was read already."""
    got = _read_manifest(file) if read is None else read
    if isinstance(got, ManifestProblem):
        problems.append(got)
        return ParsedFile([], [], [])
    data, digest = got
    key = str(file)
    cached = store.manifests.get(key)
    hit = cached[1] if cached is not None and cached[0] == digest else None
    if hit is None:
        found: list[ManifestProblem] = []
        built: list[tuple[DesiredCollection, Document, dict[str, list[ManifestProblem]]]] = []
        invalid: list[str] = []
        warned: list[ManifestProblem] = []
        restored = None if saved is None else saved.get(file)
        if restored is not None:  # parsed and passed the schema before
            for doc in restored:
                if _header_ok(doc, found, warned):
                    built.append((_Builder(doc, found).build(), doc, {}))
        else:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as err:
                problems.append(ManifestProblem(Source(file), "", f"not UTF-8 text: {err.reason}"))
                return ParsedFile([], [], [])
            _parse(file, text, found, built, invalid, warned)
        hit = ParsedFile(found, built, invalid, warned)
        store.manifests.put(key, (digest, hit), _cost(len(data), hit))
    if saved is not None and not hit.problems:
        saved.keep(file, [doc for _, doc, _ in hit.built])
    problems.extend(hit.problems)
    return hit


def _parse(
    file: Path,
    text: str,
    found: list[ManifestProblem],
    built: list[tuple[DesiredCollection, Document, dict[str, list[ManifestProblem]]]],
    invalid: list[str],
    warned: list[ManifestProblem],
) -> None:
    """Parse ``text`` and check it against the schema (PyYAML and the schema are imported
    here, when a file is parsed at all)."""
    from orchestrator.manifest.parsing import parse_documents
    from orchestrator.manifest.schema import check

    for doc in parse_documents(file, text, found):
        if not _header_ok(doc, found, warned):
            continue
        bad = check(doc)
        if bad:
            found.extend(bad)
            meta = cast(dict[str, object], doc.value).get("metadata")
            name = meta.get("name") if isinstance(meta, dict) else None
            if isinstance(name, str):
                invalid.append(name)
            continue
        built.append((_Builder(doc, found).build(), doc, {}))


def _got(value: object) -> str:
    """How a problem names ``value`` (the schema's wording; imported with it, on a problem)."""
    from orchestrator.manifest.schema import _got as got

    return got(value)


def _header_ok(
    doc: Document, problems: list[ManifestProblem], warnings: list[ManifestProblem]
) -> bool:
    """A document that is not a bpforch Collection gets one problem, not a schema flood;
    a deprecated apiVersion a warning."""
    v = doc.value
    if not isinstance(v, dict):
        problems.append(
            ManifestProblem(
                doc.at(()),
                "",
                f"a manifest must be a mapping, got {_got(v)}",
                f"start with apiVersion: {API_VERSION}",
            )
        )
        return False
    api, kind = v.get("apiVersion"), v.get("kind")
    if api in DEPRECATED_API_VERSIONS:
        warnings.append(
            ManifestProblem(
                doc.at(("apiVersion",)),
                "apiVersion",
                f"{api} is deprecated",
                f"write apiVersion: {API_VERSION}; it means the same",
            )
        )
    elif api is not None and api != API_VERSION:
        problems.append(
            ManifestProblem(
                doc.at(("apiVersion",)),
                "apiVersion",
                f"unknown apiVersion {_got(api)}",
                f"this bpforch reads {API_VERSION}",
            )
        )
        return False
    if kind is not None and kind != KIND_COLLECTION:
        problems.append(
            ManifestProblem(
                doc.at(("kind",)),
                "kind",
                f"unknown kind {_got(kind)}",
                f"{API_VERSION} has kind {KIND_COLLECTION}",
            )
        )
        return False
    return True


# ---------------------------------------------------------------------------- checks


class _Checker:
    def __init__(
        self,
        entries: list[_Entry],
        problems: list[ManifestProblem],
        invalid: set[str],
        store: ObjectStore,
    ) -> None:
        self.entries = entries
        self.store = store
        self.problems = problems
        self.invalid = invalid  # declared, but with problems of their own: not looked into
        self.by_name: dict[str, _Entry] = {}

    def problem(
        self, e: _Entry, path: PathKey, message: str, hint: str = "", *, key: bool = False
    ) -> None:
        src = e.doc.key_at(path) if key else e.doc.at(path)
        self.problems.append(ManifestProblem(src, render_path(path), message, hint))

    def names(self) -> None:
        for e in self.entries:
            other = self.by_name.get(e.coll.name)
            if other is None:
                self.by_name[e.coll.name] = e
                continue
            path: PathKey = ("metadata", "name")
            self.problem(
                e,
                path,
                f"collection {e.coll.name} is declared twice (also at {other.doc.at(path)})",
                "collection names must be unique",
            )
            self.problem(
                other,
                path,
                f"collection {e.coll.name} is declared twice (also at {e.doc.at(path)})",
                "collection names must be unique",
            )

    def objects(self) -> None:
        objects = self.store.snapshot()  # each object file looked up once per load
        for e in self.entries:
            if "\0" in str(e.coll.object_file):
                continue  # reported by the builder
            try:
                e.info = objects.get(e.coll.object_file)
            except ObjectError as err:
                if isinstance(err.cause, FileNotFoundError):
                    message = f"cannot read object: {err}"
                    hint = "relative paths are relative to the manifest's directory"
                elif isinstance(err.cause, FileError):
                    message = f"cannot read object: {err}"
                    hint = "give the path of an eBPF object file"
                elif err.cause is not None:
                    message = f"cannot read object: {err}"
                    hint = ""
                else:
                    message = f"bad object: {err}"
                    hint = "is it an eBPF object built with clang -target bpf?"
                self.problem(e, ("spec", "object"), message, hint)
                continue
            if e.coll.sha256 is not None and e.coll.sha256 != e.info.sha256:
                self.problem(
                    e,
                    ("spec", "sha256"),
                    f"object {e.coll.object_file} has sha256 {e.info.sha256}",
                    "the object changed: rebuild it, or update sha256",
                )
            checked = e.checked.get(e.info.sha256)
            if checked is None:
                outer, self.problems = self.problems, []
                try:
                    self.contents(e, e.info.spec)
                finally:
                    checked, self.problems = self.problems, outer
                if len(e.checked) >= _CHECKED_MAX:  # an object rebuilt again and again
                    e.checked.clear()
                e.checked[e.info.sha256] = checked
            self.problems.extend(checked)

    def contents(self, e: _Entry, spec: CollectionSpec) -> None:
        c = e.coll
        progs = sorted(spec.programs)
        for i, name in enumerate(c.programs or ()):
            if name not in spec.programs:
                self.problem(
                    e,
                    ("spec", "programs", i),
                    f"object has no program {quote(name)}",
                    did_you_mean(name, progs),
                )
        self.loadable(e, spec)
        self.metric_maps(e, spec)
        if c.constants:
            consts = sorted(n for n, var in spec.variables.items() if var.constant)
            for name, value in c.constants.items():
                path: PathKey = ("spec", "constants", name)
                if name not in consts:
                    self.problem(
                        e,
                        path,
                        f"object has no constant {quote(name)}",
                        did_you_mean(name, consts),
                        key=True,
                    )
                    continue
                try:
                    spec.check_constants({name: value})
                except ConstantError as err:
                    self.problem(e, path, err.problem, "give a value that fits the variable's type")
        maps = sorted(spec.maps)
        for name, opts in c.maps.items():
            path = ("spec", "maps", name)
            mspec = spec.maps.get(name)
            if mspec is None:
                self.problem(
                    e, path, f"object has no map {quote(name)}", did_you_mean(name, maps), key=True
                )
                continue
            if opts.preserve and mspec.name.startswith(".rodata"):
                self.problem(
                    e,
                    (*path, "preserve"),
                    f"{name} holds the constants; it is rebuilt from the manifest",
                    "remove preserve",
                )
            elif opts.preserve and mspec.type in _GENERATION_BOUND:
                self.problem(
                    e,
                    (*path, "preserve"),
                    f"a {_GENERATION_BOUND[mspec.type]} belongs to one generation: each "
                    "generation fills its own from the object, and keeping the old one's "
                    "entries would mix generations",
                    "remove preserve",
                )
            if opts.pin_given and not opts.pin and mspec.type in _ALWAYS_PINNED:
                self.problem(
                    e,
                    (*path, "pin"),
                    f"a {_ALWAYS_PINNED[mspec.type]} is always pinned: the kernel empties it "
                    "when no pin or open fd holds it",
                    "remove pin: false",
                )
            elif opts.pin_given and not opts.pin and mspec.holds_timers:
                self.problem(
                    e,
                    (*path, "pin"),
                    "a map whose values hold timers is always pinned: the kernel cancels "
                    "them when no pin or open fd holds the map",
                    "remove pin: false",
                )
            if opts.max_entries is not None:
                self.max_entries(e, (*path, "max_entries"), mspec, opts.max_entries)
            if opts.entries is not None and opts.source_from is None:
                self.map_entries(e, spec, path, mspec, opts)
            if opts.source_from is not None:
                used = set().union(*(p.maps for p in spec.programs.values()))
                if name not in used:
                    self.problem(
                        e,
                        (*path, "from"),
                        f"map {name} is used by no program, so it cannot be substituted",
                        "remove the substitution",
                        key=True,
                    )
        bound = (
            set(c.programs)
            if c.programs is not None
            else {n for n, p in spec.programs.items() if p.autoload}
        )
        for i, a in enumerate(c.attach):
            path = ("spec", "attach", i, "program")
            prog = spec.programs.get(a.program)
            if prog is None:
                self.problem(
                    e,
                    path,
                    f"object has no program {quote(a.program)}",
                    did_you_mean(a.program, progs),
                )
                continue
            if a.program not in bound:
                self.problem(
                    e,
                    path,
                    f"program {quote(a.program)} is not loaded",
                    "add it to spec.programs"
                    if c.programs is not None
                    else "its section starts with '?': it loads only when listed in spec.programs",
                )
                continue
            bad = target_mismatch(prog, a.target)
            if bad is not None:
                self.problem(e, ("spec", "attach", i, a.kind), bad.reason, bad.hint, key=True)

    def loadable(self, e: _Entry, spec: CollectionSpec) -> None:
        """Programs to load that the object itself keeps from loading: a reference to a
        symbol no section defines (or another unresolvable relocation), an unknown section."""
        c = e.coll
        chosen = (
            list(c.programs)
            if c.programs is not None
            else [n for n, p in spec.programs.items() if p.autoload]
        )
        for i, name in enumerate(chosen):
            prog = spec.programs.get(name)
            if prog is None:
                continue
            if prog.unresolved:
                why = str(prog.unresolved[0])
            elif not prog.known_section:
                why = f"section '{prog.section}' names no known program type"
            else:
                continue
            if c.programs is not None:
                path: PathKey = ("spec", "programs", i)
                hint = "remove it from spec.programs, or fix the object"
            else:
                path = ("spec", "object")
                hint = "list the programs to load in spec.programs"
            self.problem(e, path, f"program '{name}' cannot be loaded: {why}", hint)

    def map_entries(
        self, e: _Entry, spec: CollectionSpec, path: PathKey, m: MapSpec, opts: MapOptions
    ) -> None:
        """Every declared entry's key and value fit the map's BTF types (names of the
        collection's programs in a prog array, of its maps in a map of maps), once each, and
        no more than the map holds."""
        from orchestrator.manifest import entries as entry_rules  # only where entries are

        assert opts.entries is not None
        why = entry_rules.map_problem(m)
        if why is not None:
            self.problem(e, (*path, "entries"), why, "remove entries", key=True)
            return
        c = e.coll
        programs = c.programs if c.programs is not None else spec.programs
        try:
            codec = entry_rules.codec(m, programs=programs, maps=spec.maps)
        except SpecError as err:  # pragma: no cover - no format is given
            self.problem(e, (*path, "entries"), str(err), key=True)
            return
        max_entries = opts.max_entries if opts.max_entries is not None else m.max_entries
        encoded = entry_rules.encode_entries(codec, opts.entries, max_entries)
        for p in encoded.problems:
            at: PathKey = (*path, "entries")
            if p.index is not None:
                at = (*at, p.index, p.field) if p.field is not None else (*at, p.index)
            self.problem(e, at, f"map {m.name}: {p.message}", p.hint, key=p.index is None)

    def max_entries(self, e: _Entry, path: PathKey, m: MapSpec, value: int) -> None:

        if m.is_data_section:
            self.problem(e, path, f"{m.name} is a data section; its size is fixed", "remove it")
        elif m.type == MapType.RINGBUF and (value % mmap.PAGESIZE or value & (value - 1)):
            self.problem(
                e,
                path,
                f"ring buffer size {value} is not a power of 2 multiple of the page size",
                "e.g. 262144",
            )

    def metric_maps(self, e: _Entry, spec: CollectionSpec) -> None:
        """Each declared metric reads a number from a map the object has: its key fits the
        key type, its field is a number in the value type, its keys can be labels."""
        maps = sorted(spec.maps)
        for i, m in enumerate(e.coll.metrics):
            path: PathKey = ("spec", "metrics", i)
            mspec = spec.maps.get(m.map)
            if mspec is None:
                self.problem(
                    e,
                    (*path, "map"),
                    f"object has no map {quote(m.map)}",
                    did_you_mean(m.map, maps),
                )
                continue
            if mspec.type not in metric_rules.READABLE:
                kind = mspec.type.name.lower() if isinstance(mspec.type, MapType) else mspec.type
                self.problem(
                    e,
                    (*path, "map"),
                    f"map {m.map} is a {kind} map, whose values cannot be read by key",
                    "read a hash, array or LRU map (per-CPU ones too)",
                )
                continue
            try:
                if m.key is not None:
                    mspec.encode_key(m.key)
            except SpecError as err:
                text = str(err).removeprefix(f"map {m.map}: key: ")
                self.problem(e, (*path, "key"), text, "give a key of the map's key type")
            try:
                metric_rules.number(mspec.decode_value(bytes(mspec.value_size)), m.value_path)
            except (MetricValueError, SpecError) as err:
                at = (*path, "field") if m.value_path else (*path, "map")
                hint = "name a number inside the value" if m.value_path else "add field: MEMBER"
                self.problem(e, at, f"map {m.map}: {err}", hint)
            if m.label is not None:
                try:
                    metric_rules.label_value(mspec.decode_key(bytes(mspec.key_size)), m.names)
                except (MetricValueError, SpecError) as err:
                    at = (*path, "names") if m.names is not None else (*path, "label")
                    self.problem(e, at, f"map {m.map}: {err}", "read one key with key: instead")

    def metric_names(self) -> None:
        """A metric name means one thing: collections that share one declare the same type
        and label (their series differ by the collection label)."""
        first: dict[str, tuple[_Entry, int]] = {}
        for e in self.entries:
            for i, m in enumerate(e.coll.metrics):
                seen = first.setdefault(m.name, (e, i))
                if seen == (e, i):
                    continue
                other = seen[0].coll.metrics[seen[1]]
                if (other.type, other.label) != (m.type, m.label):
                    where = seen[0].doc.at(("spec", "metrics", seen[1]))
                    self.problem(
                        e,
                        ("spec", "metrics", i, "name"),
                        f"metric {quote(m.name)} is a {other.type.value}"
                        + (f" with label {other.label}" if other.label else " without label")
                        + f" at {where}",
                        "the same name needs the same type and label in every collection",
                    )

    def attachments(self) -> None:
        """Identical attachments within a collection, tc ordering, one XDP per interface."""
        xdp: dict[str, tuple[_Entry, int]] = {}
        for e in self.entries:
            seen: dict[str, int] = {}
            for i, a in enumerate(e.coll.attach):
                path: PathKey = ("spec", "attach", i)
                key = a.key()
                if key in seen:
                    self.problem(
                        e,
                        path,
                        f"same attachment as spec.attach[{seen[key]}]",
                        "remove one of them",
                    )
                else:
                    seen[key] = i
                t = a.target
                if isinstance(t, XdpTarget):
                    xkey = f"{t.netns or ''}:{t.interface}"
                    prev = xdp.get(xkey)
                    if prev is None:
                        xdp[xkey] = (e, i)
                    elif not (prev[0] is e and e.coll.attach[prev[1]].key() == key):
                        where = prev[0].doc.at(("spec", "attach", prev[1]))
                        ns = f" in {t.netns}" if t.netns else ""
                        self.problem(
                            e,
                            (*path, "xdp", "interface"),
                            f"interface {t.interface}{ns} already has an XDP program "
                            f"(collection {prev[0].coll.name} at {where})",
                            "an interface takes one XDP program; chain them with tail calls",
                        )
                if isinstance(t, TcTarget):
                    for rel in ("before", "after"):
                        other = getattr(t, rel)
                        if other is None:
                            continue
                        if other == a.program:
                            self.problem(
                                e,
                                (*path, "tc", rel),
                                f"program {clip(other)} cannot be {rel} itself",
                            )
                            continue
                        peers = [
                            b.program
                            for b in e.coll.attach
                            if isinstance(b.target, TcTarget) and b.target.key() == t.key()
                        ]
                        if other not in peers:
                            self.problem(
                                e,
                                (*path, "tc", rel),
                                f"program {clip(other)} is not attached at the same hook "
                                f"(tc {t.direction.value} on {t.interface})",
                                did_you_mean(other, sorted(set(peers) - {a.program})),
                            )
            self.tc_order(e)

    def tc_order(self, e: _Entry) -> None:
        """before/after among the tc attachments of one hook must not go round in a circle
        (each is attached after the program it is placed relative to)."""
        anchors: dict[tuple[str, str], tuple[str, int]] = {}  # (hook, program) -> anchor
        for i, a in enumerate(e.coll.attach):
            t = a.target
            if isinstance(t, TcTarget) and (t.before or t.after):
                anchor = t.before or t.after or ""
                anchors.setdefault((t.key(), a.program), (anchor, i))
        reported: set[frozenset[str]] = set()
        for (hook, start), (_, index) in anchors.items():
            chain = [start]
            cur = start
            while (hook, cur) in anchors:
                cur = anchors[(hook, cur)][0]
                if cur == start and len(chain) > 1:
                    members = frozenset(chain)
                    if members not in reported:
                        reported.add(members)
                        t = e.coll.attach[index].target
                        rel = "before" if isinstance(t, TcTarget) and t.before else "after"
                        self.problem(
                            e,
                            ("spec", "attach", index, "tc", rel),
                            "tc ordering goes round in a circle: " + " -> ".join([*chain, start]),
                            "one program of the hook must be placed without before/after",
                        )
                    break
                if cur in chain:
                    break  # a circle not through start: reported from one of its members
                chain.append(cur)

    def substitutions(self) -> None:
        for e in self.entries:
            for name, opts in e.coll.maps.items():
                src = opts.source_from
                if src is None or src.collection is None:
                    continue
                path: PathKey = ("spec", "maps", name, "from", "collection")
                if src.collection == e.coll.name:
                    self.problem(
                        e, path, "a collection cannot substitute its own map", "name another one"
                    )
                    continue
                owner = self.by_name.get(src.collection)
                if owner is None and src.collection in self.invalid:
                    continue  # its own problems are reported
                if owner is None:
                    self.problem(
                        e,
                        path,
                        f"no collection named {quote(src.collection)}",
                        did_you_mean(src.collection, sorted(self.by_name)),
                    )
                    continue
                if owner.info is None or e.info is None:
                    continue  # the object problem is reported already
                map_name = src.map or name
                theirs = owner.info.spec.maps.get(map_name)
                mpath: PathKey = ("spec", "maps", name, "from", "map" if src.map else "collection")
                if theirs is None:
                    self.problem(
                        e,
                        mpath,
                        f"collection {owner.coll.name} has no map {quote(map_name)}",
                        did_you_mean(map_name, sorted(owner.info.spec.maps)),
                    )
                    continue
                mine = e.info.spec.maps.get(name)
                if mine is None:
                    continue  # reported as a missing map
                theirs_opts = owner.coll.maps.get(map_name)
                if theirs_opts is not None and theirs_opts.pin_given and not theirs_opts.pin:
                    self.problem(
                        owner,
                        ("spec", "maps", map_name, "pin"),
                        f"map {map_name} is pinned: collection {e.coll.name} uses it "
                        f"(from at {e.doc.key_at(('spec', 'maps', name, 'from'))})",
                        "remove pin: false; a map another collection uses is pinned",
                    )
                if theirs_opts is not None and theirs_opts.max_entries is not None:
                    theirs = replace(theirs, max_entries=theirs_opts.max_entries)
                try:
                    mine.compatible_with(theirs)
                except MapIncompatibleError as err:
                    why = err.problem
                    self.problem(
                        e,
                        ("spec", "maps", name, "from"),
                        f"incompatible with map {map_name} of {owner.coll.name}: {why}",
                        "both objects must declare the same map",
                        key=True,
                    )

    def cycles(self) -> None:
        graph = {
            name: sorted(d for d in e.coll.depends_on() if d in self.by_name and d != name)
            for name, e in self.by_name.items()
        }
        state: dict[str, int] = {}  # 1: on the stack, 2: done
        stack: list[str] = []
        reported: set[frozenset[str]] = set()

        def visit(n: str) -> None:
            state[n] = 1
            stack.append(n)
            for d in graph[n]:
                if state.get(d) == 1:
                    cycle = [*stack[stack.index(d) :], d]
                    members = frozenset(cycle)
                    if members not in reported:
                        reported.add(members)
                        self.cycle(cycle)
                elif d not in state:
                    visit(d)
            stack.pop()
            state[n] = 2

        for name in sorted(graph):
            if name not in state:
                visit(name)

    def cycle(self, cycle: list[str]) -> None:
        first = self.by_name[cycle[0]]
        nxt = cycle[1]
        map_name = next(
            n
            for n, m in sorted(first.coll.maps.items())
            if m.source_from is not None and m.source_from.collection == nxt
        )
        self.problem(
            first,
            ("spec", "maps", map_name, "from", "collection"),
            "dependency cycle: " + " -> ".join(cycle),
            "a collection must be created before the ones that use its maps",
        )


# Map types whose entries are programs or maps of one generation (no preserve), and those
# that are pinned whatever the manifest says.
_GENERATION_BOUND = {
    MapType.PROG_ARRAY: "prog array",
    MapType.ARRAY_OF_MAPS: "map of maps",
    MapType.HASH_OF_MAPS: "map of maps",
    MapType.STRUCT_OPS: "struct_ops map",
}
_ALWAYS_PINNED = {MapType.PROG_ARRAY: "prog array"}


# ---------------------------------------------------------------------------- entry point


# The apiVersion the digests are computed with: the first one, so that the digests of
# collections applied before the apiVersion became bpforch.dev/v1 stay equal and upgrading
# bpforch (or a manifest's apiVersion) reloads nothing.
_DIGEST_API_VERSION = "bpforch/v1"


def digest(coll: DesiredCollection, object_sha256: str) -> str:
    """sha256 over the canonical JSON of the normalized document and the object's digest."""
    document = {**coll.document(), "apiVersion": _DIGEST_API_VERSION}
    # metrics say how bpforch reads maps, and entries what it writes into them, not what is
    # loaded: a change reloads nothing
    spec = cast(dict[str, object], document["spec"])
    maps = cast(dict[str, dict[str, object]], spec.get("maps", {}))
    document["spec"] = {k: v for k, v in spec.items() if k != "metrics"} | {
        "maps": {
            n: {k: v for k, v in m.items() if k not in ("entries", "entries_mode")}
            for n, m in maps.items()
        }
    }
    text = json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    h = hashlib.sha256()
    h.update(text.encode())
    h.update(b"\0")
    h.update(object_sha256.encode())
    return h.hexdigest()


def load_manifests(
    paths: Sequence[Path], *, check_objects: bool = True, store: ObjectStore | None = None
) -> DesiredState:
    """Read, validate and check manifests; the desired state, or :class:`ManifestError` with
    every problem found (file:line:col, field path, message and hint).

    ``paths`` are files or directories (see :func:`manifest_files`). With ``check_objects``
    False the object files are not read: nothing that needs them is checked (programs,
    constants, maps, substitution compatibility, attachment types, sha256) and every
    ``digest`` is empty. Files and objects are read through ``store`` (the
    :data:`~orchestrator.manifest.cache.default` store if None): pass the reconciler's. Needs
    no privileges.
    """
    with gc_paused():  # a bounded burst of objects that stay alive (see orchestrator._gc)
        return _load_manifests(paths, check_objects, default_store if store is None else store)


def _load_manifests(paths: Sequence[Path], check_objects: bool, store: ObjectStore) -> DesiredState:
    problems: list[ManifestProblem] = []
    files = manifest_files(paths, problems)
    entries: list[_Entry] = []
    invalid: set[str] = set()
    warnings: list[ManifestProblem] = []
    # every file read first: the persisted documents are keyed by all of their digests
    read = {file: _read_manifest(file) for file in files}
    saved = checked = None
    if store.manifests_disk is not None:
        ok = [(f, r[1]) for f, r in read.items() if not isinstance(r, ManifestProblem)]
        if check_objects and not problems and len(ok) == len(read):
            checked = CheckedState(store.manifests_disk, ok)
            restored = checked.get(store)
            if restored is not None:  # built and checked before (see manifest.checked)
                return DesiredState(
                    collections=MappingProxyType({c.name: c for c in restored}),
                    files=tuple(files),
                )
        saved = SavedDocuments(store.manifests_disk, ok)
    for file in files:
        result = _load_file(file, problems, store, saved, read.pop(file))  # bytes let go
        entries.extend(_Entry(coll, doc, checked) for coll, doc, checked in result.built)
        invalid.update(result.invalid)
        warnings.extend(result.warnings)
    checker = _Checker(entries, problems, invalid, store)
    checker.names()
    if check_objects:
        checker.objects()
    checker.attachments()
    checker.metric_names()
    checker.substitutions()
    checker.cycles()
    if saved is not None:
        saved.save()
    if problems:
        raise ManifestError(problems)
    collections = {}
    for e in entries:
        d = digest(e.coll, e.info.sha256) if e.info is not None else ""
        collections[e.coll.name] = replace(e.coll, digest=d)
    if checked is not None and not warnings:
        checked.save(
            list(collections.values()),
            {e.coll.object_file: e.info.sha256 for e in entries if e.info is not None},
        )
    return DesiredState(
        collections=MappingProxyType(collections),
        files=tuple(files),
        warnings=tuple(sorted(warnings, key=ManifestProblem.sort_key)),
    )
