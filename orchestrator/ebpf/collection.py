"""Loading a :class:`CollectionSpec` into the kernel.

Loading is lazy and all-or-nothing: a map is created the first time something needs it (a
program that refers to it, a prog array or map of maps that holds it, or the caller), a
program when it is asked for or sits in a prog array; if anything fails, every fd created so
far is closed and every pin created so far removed. The spec is only read, never changed;
what a load works out from it is kept in its load plans (:mod:`orchestrator.ebpf.loadplan`)
for the next load of the same, unchanged spec.

Order matters in two places:
- ``.rodata`` maps are written and frozen before any program that reads them is verified:
  the verifier only treats a map's contents as constants (and prunes dead branches) when the
  map is frozen and ``BPF_F_RDONLY_PROG`` (kernel commit 591fe9888d78, "bpf: add program side
  {rd, wr}only support for maps");
- prog arrays and maps of maps are filled after the programs and maps they hold exist.
"""

from __future__ import annotations

import array
import contextlib
import dataclasses
import errno
import functools
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar, cast

from orchestrator.ebpf import _sys
from orchestrator.ebpf import btf as _btf
from orchestrator.ebpf import externs as _externs
from orchestrator.ebpf import features as _features
from orchestrator.ebpf._sys import FD, AttachType, Closing, MapFlags, MapType, ProgType
from orchestrator.ebpf.asm import CALL, INSN_SIZE, LD_IMM64, Reference, RefKind
from orchestrator.ebpf.btf import core as _core
from orchestrator.ebpf.btf import ext as _btf_ext
from orchestrator.ebpf.btf import kernel as _kernel_btf
from orchestrator.ebpf.errors import (
    AttachTargetError,
    COREError,
    CORERelocationError,
    Error,
    KconfigError,
    MapIncompatibleError,
    NotFoundError,
    NotSupportedError,
    PermissionDeniedError,
    SpecError,
    SyscallError,
    UnresolvedReferenceError,
    VerifierError,
)
from orchestrator.ebpf.link import struct_ops as _struct_ops
from orchestrator.ebpf.loadplan import (
    BTFPlan,
    InnerPlan,
    MapPlan,
    PinPlan,
    ProgramPlan,
    held_map,
    line_infos,
    pin_seen,
)
from orchestrator.ebpf.maps import Map, create_attr, create_fd
from orchestrator.ebpf.programs import LoadRequest, LogOptions, Program, load_attr
from orchestrator.ebpf.spec import CollectionSpec, MapSpec, PinType, ProgramSpec
from orchestrator.ebpf.suggestions import hint

T = TypeVar("T")

_IMM = struct.Struct("<i")  # an instruction's imm field
_EXTERN, _MAP = RefKind.EXTERN, RefKind.MAP
_SRC_MAP_FD = _sys.BPF_PSEUDO_MAP_FD << 4
_SRC_MAP_VALUE = _sys.BPF_PSEUDO_MAP_VALUE << 4
# compared once per map or program loaded (naming an enum member costs a class lookup)
_BY_NAME, _STRUCT_OPS = PinType.BY_NAME, ProgType.STRUCT_OPS


@dataclass
class CollectionOptions:
    """How to load a collection.

    ``map_replacements``: existing maps to use instead of creating the named ones (each is
    checked for compatibility and dup'ed; the caller keeps its own reference). A replacement
    is used as it is, whatever its type and however many entries it holds (none included):
    its entries are neither read nor written, not even the object's initial contents.
    ``pin_path``: the bpffs directory for maps with ``pinning = LIBBPF_PIN_BY_NAME``.
    ``log_level``/``log_size``: ask the verifier for a log even on success (0: only on failure).
    ``kernel_btf``: a BTF file to apply CO-RE relocations against instead of the running
    kernel's ``/sys/kernel/btf/vmlinux`` (tests, or objects built for another kernel).
    Attach targets, ``__ksym`` variables and kfuncs always use the running kernel's BTF,
    since the kernel checks those ids.
    ``kconfig_path``: a kernel config to read ``__kconfig`` externs from instead of
    ``/proc/config.gz`` or ``/boot/config-$(uname -r)``.
    ``btf_cache``: loaded BTF to share with the other loads given the same cache (see
    :class:`BTFCache`); None: the load loads its object's BTF itself.
    """

    map_replacements: Mapping[str, Map] = field(default_factory=dict)
    pin_path: str | os.PathLike[str] | None = None
    log_level: int = 0
    log_size: int = 0
    log_disabled: bool = False
    kernel_btf: str | os.PathLike[str] | None = None
    kconfig_path: str | os.PathLike[str] | None = None
    btf_cache: BTFCache | None = None


class BTFCache(Closing):
    """Kernel BTF objects shared by the loads given this cache (``CollectionOptions
    .btf_cache``), by the bytes handed to the kernel: collections loaded from one object
    (with their own constants, say) share one BTF object instead of loading the same blob
    once each. What a load creates holds its own reference to the BTF; the cache holds one
    fd per blob until :meth:`close` (its owner closes it once those loads are done). Not for
    use by two threads at once."""

    __slots__ = ("_fds",)

    def __init__(self) -> None:
        self._fds: dict[bytes, FD] = {}

    def __len__(self) -> int:
        return len(self._fds)

    def get(self, data: bytes) -> FD | None:
        return self._fds.get(data)

    def add(self, data: bytes, fd: FD) -> None:
        self._fds[data] = fd

    def close(self) -> None:
        fds = list(self._fds.values())
        self._fds.clear()
        for fd in fds:
            fd.close()


# One LogOptions per setting, shared by the loads that ask for it (it is frozen).
_log_options = functools.lru_cache(maxsize=64)(LogOptions)


def _inner_template(spec: MapSpec) -> MapSpec | None:
    """The inner map template of a map of maps, None for any other map; a template without
    a type is refused."""
    template = spec.inner_map
    if template is not None and template.type == MapType.UNSPEC:
        raise SpecError(f"map {spec.name}: inner map definition has no type")
    return template


def _trampoline(spec: ProgramSpec) -> bool:
    """Whether a program attaches through a BPF trampoline (fentry/fexit/lsm/freplace)."""
    if spec.type in (ProgType.LSM, ProgType.EXT):
        return True
    return spec.type == ProgType.TRACING and spec.attach_type in (
        AttachType.TRACE_FENTRY,
        AttachType.TRACE_FEXIT,
        AttachType.MODIFY_RETURN,
    )


class _Loader:
    """Creates what a collection needs on demand and remembers it for cleanup."""

    # Until first needed (class defaults: a load of a spec without CO-RE or kernel symbols
    # sets none of these but the BTF's three).
    _btf_loaded = False
    _btf_fd: FD | None = None
    _btf_shared = False  # _btf_fd is a BTFCache's
    _kallsyms: dict[str, int] | None = None
    _core_cache: dict[int, list[tuple[_btf.Spec, int]]] | None = None

    def __init__(self, spec: CollectionSpec, options: CollectionOptions) -> None:
        self.spec = spec
        # Only read (a spec the cache served is not copied to be loaded; see _shared).
        shared = spec._shared()
        # Reading the spec cache's own maps and programs, which never change: a plan made
        # for one of those objects fits it without a comparison (see loadplan).
        self._cached = shared is not spec
        self.spec_maps: dict[str, MapSpec] = shared._maps
        self.spec_programs: dict[str, ProgramSpec] = shared._programs
        self.spec_externs = shared._externs
        self.options = options
        # The maps to use instead of creating them: the options' over the spec's.
        replacements = options.map_replacements
        if len(spec.map_replacements):
            replacements = {**spec.map_replacements, **replacements}
        self._replacements = replacements
        self.maps: dict[str, Map] = {}
        self.programs: dict[str, Program] = {}
        self.new_pins: list[str] = []
        self._pending: list[str] = []  # maps whose fd-valued contents are not written yet
        self._btf_strings: dict[str, int] = {}
        self._loading: set[str] = set()
        self._poisoned: dict[str, dict[int, str]] = {}  # program → insn → relocation
        self._map_plans = spec._plans.maps
        self._program_plans = spec._plans.programs
        self._map_prototypes = spec._plans.map_prototypes
        self._pin_plans = spec._plans.pins
        self._log = _log_options(options.log_level, options.log_size, options.log_disabled)

    # ------------------------------------------------------------------ kernel BTF

    def _core_target(self) -> _core.Target:
        kb = _kernel_btf.load(self.options.kernel_btf)
        return _core.Target(kb.vmlinux, tuple(kb.modules.values()))

    def _kernel(self, what: str) -> _kernel_btf.KernelBTF:
        try:
            return _kernel_btf.load()
        except Error as err:
            raise NotSupportedError(f"{what}: {err}") from err

    # ------------------------------------------------------------------ BTF

    def _btf(self) -> tuple[FD | None, dict[str, int]]:
        """Load the object's BTF once. If the kernel refuses it, load without BTF (maps
        lose typed keys, programs lose func/line info, nothing else changes)."""
        if not self._btf_loaded:
            self._btf_loaded = True
            spec = self.spec.btf
            if spec is not None:
                programs = self.spec_programs
                plan = self.spec._plans.btf
                if plan is None or not plan.fits(spec, programs, self._cached):
                    infos = line_infos(programs)
                    extra: frozenset[str] = frozenset().union(
                        *(_btf_ext.line_strings(i) for i in infos)
                    )
                    data, strings = spec.marshal(extra)  # cached per spec
                    plan = BTFPlan(
                        spec,
                        infos,
                        extra,
                        data,
                        strings,
                        _sys.cbytes(data),
                        programs if self._cached else None,
                    )
                    self.spec._plans.btf = plan
                cache = self.options.btf_cache
                fd = cache.get(plan.data) if cache is not None else None
                if fd is not None:
                    self._btf_shared = True  # the cache's: never closed here
                else:
                    fd, _err, _log = _sys.btf_load(plan.data, plan.buffer)
                    if fd is not None and cache is not None:
                        cache.add(plan.data, fd)
                        self._btf_shared = True
                self._btf_fd, self._btf_strings = fd, plan.strings
        return self._btf_fd, self._btf_strings

    def _btf_ids(self, spec: MapSpec) -> tuple[int, int]:
        if spec.btf is None or spec.btf is not self.spec.btf:
            return 0, 0
        b = spec.btf
        value_type = spec._type_id("btf_value_type", b)
        if value_type is not None:
            return 0, value_type
        return spec._type_id("key", b) or 0, spec._type_id("value", b) or 0

    # ------------------------------------------------------------------ maps

    def map(self, name: str) -> Map:
        m = self.maps.get(name)
        if m is not None:
            return m
        spec = self.spec_maps.get(name)
        if spec is None:
            raise SpecError(f"map {name}: not in collection{hint(name, sorted(self.spec_maps))}")

        # ``is None``, never truthiness: a replacement is used whatever it holds (an empty
        # map, a ring buffer); nothing here reads its entries.
        replacement = self._replacements.get(name)
        if replacement is not None:
            try:
                replacement.check_compatible_with(spec)
            except MapIncompatibleError as err:
                raise MapIncompatibleError(name, f"replacement: {err}") from err
            m = replacement.clone()
            if m.key_type is None:
                m.key_type = spec.key
            if m.value_type is None:
                m.value_type = spec.value
            self.maps[name] = m
            return m

        pin: str | None = None
        if spec.pinning == _BY_NAME:
            if self.options.pin_path is None:
                raise SpecError(
                    f"map {name}: pinned by name, but no pin path given "
                    "(set CollectionOptions.pin_path to a directory on bpffs)"
                )
            pin = os.path.join(os.fspath(self.options.pin_path), spec.name)
            existing = self._open_pin(spec, pin)
            if existing is not None:
                self.maps[name] = existing
                return existing

        if spec.struct_ops is not None:
            what = f"map {name}"
            kernel = _struct_ops.kernel_types(spec.struct_ops, self._kernel(what), what)
            btf_fd, _ = self._btf()
            m = _struct_ops.create_map(spec, kernel, btf_fd)
            self.maps[name] = m
            return m

        planned: MapPlan | None = None
        reused = False  # planned was made by an earlier load
        kconfig = spec.section == ".kconfig" and bool(self.spec_externs)
        if not kconfig and (spec.inner_map is None or spec.inner_map.inner_map is None):
            if not self._btf_loaded:
                self._btf()  # loaded before the map is created, as from a spec
            planned = self._map_plans.get(name)
            reused = planned is not None and planned.holds(spec, self.spec.btf, self._cached)
            if not reused:
                planned = self._planned_map(spec, planned)
            elif self._cached and planned is not None and planned.made_for is not spec:
                planned = self._map_plans[name] = dataclasses.replace(planned, made_for=spec)
        if planned is not None:
            attr = _sys.MapCreateAttr.from_buffer_copy(planned.attr)
            inner = planned.inner
            inner_fd: FD | None = None
            if inner is not None:  # a map of maps: its inner map template first
                assert spec.inner_map is not None
                inner_attr = _sys.MapCreateAttr.from_buffer_copy(inner.attr)
                inner_fd = create_fd(spec.inner_map, inner_attr, self._btf_fd, inner.has_ids)
                attr.inner_map_fd = inner_fd.raw
            try:
                kept = self._map_prototypes.get(name)
                if kept is not None and kept[0] is planned:
                    m = Map._from_prototype(spec, attr, self._btf_fd, planned.has_ids, kept[1])
                else:
                    m = Map._create_attr(
                        spec,
                        attr,
                        self._btf_fd,
                        planned.has_ids,
                        planned.max_entries,
                        planned.flags,
                    )
                    if reused:  # a plan in use again: its maps copy this one's attributes
                        self._map_prototypes[name] = (planned, m._prototype())
            finally:
                if inner_fd is not None:
                    inner_fd.close()  # the outer map keeps only the template's shape
            self.maps[name] = m
            if planned.writes:
                m._populate_planned(planned.writes)
            pending = planned.pending
        else:
            m = self._create_map(spec)
            self.maps[name] = m
            entries, pending = _initial_contents(spec)
            if kconfig:
                entries = [(0, self._kconfig_contents(spec))]
            if entries:
                m.populate(entries)
        if pending:
            self._pending.append(name)
        if spec.freeze:
            m.freeze()
        if pin is not None:
            m.pin(pin)
            self.new_pins.append(pin)
        return m

    def _create_map(self, spec: MapSpec) -> Map:
        """BPF_MAP_CREATE from ``spec`` (with its inner map's template for a map of maps)."""
        inner: Map | None = None
        template = _inner_template(spec)
        if template is not None:
            btf_fd, _ = self._btf()
            inner = Map.create(template, btf_fd=btf_fd, btf_ids=self._btf_ids(template))
        try:
            btf_fd, _ = self._btf()
            return Map.create(
                spec,
                inner_map=inner,
                btf_fd=btf_fd,
                btf_ids=self._btf_ids(spec),
                extra_flags=_extra_flags(spec),
            )
        finally:
            if inner is not None:
                inner.close()  # the outer map keeps only the template's shape

    def _planned_map(self, spec: MapSpec, plan: MapPlan | None) -> MapPlan | None:
        """The plan to create ``spec`` with when the one kept (``plan``, if any) does not
        hold it as it is now: ``plan`` refitted, or a new one (None if its contents need more
        than bytes: typed keys or values). The collection's BTF is loaded."""
        plans = self._map_plans
        btf_ids = self._btf_ids(spec)
        made_for = spec if self._cached else None
        if plan is not None and plan.fits(spec, self.spec.btf, btf_ids):
            # e.g. a type decoded since
            plan = dataclasses.replace(plan, held=held_map(spec), made_for=made_for)
            plans[spec.name] = plan
            return plan
        inner: InnerPlan | None = None
        template = _inner_template(spec)
        if template is not None:
            inner_attr = create_attr(template, template.flags, btf_ids=self._btf_ids(template))
            inner = InnerPlan(
                bytes(inner_attr),
                bool(inner_attr.btf_key_type_id or inner_attr.btf_value_type_id),
                held_map(template),
            )
        entries, pending = _initial_contents(spec)
        writes: list[bytes] = []
        buffers: list[array.array[int]] = []
        for key, value in entries:
            if not isinstance(key, bytes):
                return None  # written through the map's key type (Map.update)
            kbuf, vbuf = _sys.cbytes(key), _sys.cbytes(value)
            buffers += (kbuf, vbuf)
            writes.append(bytes(_sys.MapElemAttr(key=_sys.address(kbuf), value=_sys.address(vbuf))))
        flags = spec.flags | _extra_flags(spec)
        attr = create_attr(spec, flags, btf_ids=btf_ids)
        plan = MapPlan(
            self.spec.btf,
            btf_ids,
            bytes(attr),
            bool(attr.btf_key_type_id or attr.btf_value_type_id),
            attr.max_entries,
            flags,
            tuple(writes),
            pending,
            held_map(spec),
            tuple(buffers),
            made_for,
            inner,
        )
        plans[spec.name] = plan
        return plan

    def _open_pin(self, spec: MapSpec, path: str) -> Map | None:
        """The map pinned at ``path`` checked against ``spec`` (None if there is none), as
        ``Map.from_pin`` opens it; the check and the map's attributes are taken from the
        load plans' entry when it saw the same (see :func:`pin_seen`)."""
        try:
            fd = Map._get_pin(path)
        except NotFoundError:
            return None
        try:
            info = _sys.map_info(fd)
        except BaseException as err:
            fd.close()
            if isinstance(err, SyscallError):
                raise err.replace(subject=f"map pin {path}", path=path) from err
            raise
        seen = pin_seen(spec, info)
        kept = self._pin_plans.get(spec.name)
        if kept is not None and kept.seen == seen:
            existing = Map._from_pin_prototype(fd, info, path, kept.prototype)
        else:
            existing = Map._from_info(fd, None, info)
            existing._adopt_pin(path)
            try:
                existing.check_compatible_with(spec)
            except MapIncompatibleError as err:
                existing.close()
                raise MapIncompatibleError(
                    spec.name,
                    f"pinned map at {path} is incompatible: {err} "
                    "(remove the pin or change the definition)",
                ) from err
            existing.name = spec.name
            self._pin_plans[spec.name] = PinPlan(seen, existing._pin_prototype())
        existing.key_type = spec.key
        existing.value_type = spec.value
        return existing

    # ------------------------------------------------------------------ programs

    def program(self, name: str) -> Program:
        p = self.programs.get(name)
        if p is not None:
            return p
        spec = self.spec_programs.get(name)
        if spec is None:
            raise SpecError(
                f"program {name}: not in collection{hint(name, sorted(self.spec_programs))}"
            )
        if name in self._loading:
            raise SpecError(f"program {name}: depends on itself while loading")
        self._loading.add(name)
        log = self._log
        try:
            try:
                planned = self._program_plans.get(name)
                if planned is None or not planned.fits(spec, self.spec.btf, self._cached):
                    planned = self._planned_program(spec)
                elif self._cached and planned.made_for is not spec:  # matched by comparison
                    planned = dataclasses.replace(planned, made_for=spec)
                    self._program_plans[name] = planned
                if planned is not None:
                    p = self._load_planned(spec, planned, log)
                else:
                    p = Program.load(self._request(spec), log)
            except VerifierError as err:
                core = self._poison_error(name, err)
                if core is err:
                    raise
                raise core from err
            except SyscallError as err:
                if err.errno == errno.EPERM and _trampoline(spec):
                    raise PermissionDeniedError(
                        "load",
                        err.errno,
                        subject=f"program {name}",
                        hint="this kernel refuses fentry/fexit/fmod_ret/lsm/freplace programs: "
                        "BPF trampolines are unavailable or forbidden; use a kprobe or "
                        "tracepoint instead",
                    ) from err
                raise
        finally:
            self._loading.discard(name)
        if spec.type == _STRUCT_OPS:
            p.attach_type = None  # it was a member index, not an attach type
        self.programs[name] = p
        return p

    def _planned_program(self, spec: ProgramSpec) -> ProgramPlan | None:
        """A new plan to load ``spec`` with (the one kept, if any, does not fit it), or None
        for a program that needs more than its maps' fds at load time (CO-RE, externs, an
        attach target in the kernel's btf, struct_ops) or cannot load."""
        plans = self._program_plans
        if (
            spec.unresolved
            or not spec.known_section
            or spec.core_relos
            or spec.type == ProgType.STRUCT_OPS
            or _attach_btf_name(spec) is not None
        ):
            return None
        references = spec.instructions.references
        if any(ref.kind is _EXTERN for ref in references.values()):
            return None
        btf_fd, _ = self._btf()
        b = spec.btf
        if (
            btf_fd is None
            and b is self.spec.btf
            and b is not None
            and (spec.func_infos or len(spec.held_line_infos()))
        ):
            return None  # the collection's BTF did not load: no plan for this load
        raw = bytearray(spec.instructions.raw)
        patches = _point_at_maps(raw, references)
        req = self._load_request(spec, bytes(raw), 0, spec.attach_type)
        attr, buffers = load_attr(req)
        plan = ProgramPlan(
            dict(spec.__dict__),
            self.spec.btf,
            req.instructions,
            tuple((name, tuple(offsets)) for name, offsets in patches.items()),
            bytes(attr),
            req.btf_fd is not None,
            tuple(buffers),
            spec if self._cached else None,
        )
        plans[spec.name] = plan
        return plan

    def _load_planned(self, spec: ProgramSpec, plan: ProgramPlan, log: LogOptions) -> Program:
        """Load a program as ``plan`` says: its instructions with the maps' fds written in
        (creating maps as they are first referred to, as from a spec)."""
        insns = _sys.cbytes(plan.insns)
        self._write_map_fds(insns, plan.patches)
        attr = _sys.ProgLoadAttr.from_buffer_copy(plan.attr)
        attr.insns = _sys.address(insns)
        if plan.with_btf:
            btf_fd = self._btf_fd if self._btf_loaded else self._btf()[0]
            if btf_fd is None:  # the plan was made with a BTF fd; this load has none
                return Program.load(self._request(spec), log)
            attr.prog_btf_fd = btf_fd.raw
        return Program._load_attr(
            attr, spec.name, spec.type, spec.attach_type, spec.held_line_infos(), log
        )

    def _request(self, spec: ProgramSpec) -> LoadRequest:
        if spec.unresolved:
            first = spec.unresolved[0]
            more = len(spec.unresolved) - 1
            raise UnresolvedReferenceError(
                f"program {spec.name}: {first}" + (f" (and {more} more)" if more else ""),
                spec.name,
                first.insn,
                first.symbol,
            )
        if not spec.known_section:
            raise NotSupportedError(
                f"program {spec.name}: section {spec.section!r} names no known program type "
                "(use a libbpf section name such as xdp, tc, tracepoint/GROUP/NAME)"
            )
        raw = bytearray(spec.instructions.raw)
        if spec.core_relos:
            self._relocate_core(spec, raw)
        references = spec.instructions.references
        loaded = self.maps
        for idx, ref in references.items():  # in the order referred to, as a plan's maps
            if ref.kind is _EXTERN:
                self._resolve_extern(spec, raw, idx, ref.name)
            elif ref.name not in loaded:
                self.map(ref.name)
        self._write_map_fds(raw, _point_at_maps(raw, references).items())
        self._btf()  # loaded before the attach target is looked up (for a program without maps)
        attach_btf_id = self._attach_btf_id(spec)
        attach_type = spec.attach_type
        if spec.type == ProgType.STRUCT_OPS:
            attach_btf_id, member = self._struct_ops_target(spec)
            attach_type = cast(AttachType, member)  # expected_attach_type: a member index
        return self._load_request(spec, bytes(raw), attach_btf_id, attach_type)

    def _load_request(
        self, spec: ProgramSpec, insns: bytes, attach_btf_id: int, attach_type: AttachType | None
    ) -> LoadRequest:
        """What BPF_PROG_LOAD needs for ``spec`` with its instructions ``insns``: func and
        line info (with the BTF fd) when the collection's BTF loaded and is the program's."""
        btf_fd, strings = self._btf()
        func_info = line_info = b""
        nfunc = nline = 0
        lines = spec.held_line_infos()  # built only if a load fails (for its message)
        if btf_fd is not None and spec.btf is self.spec.btf and spec.btf is not None:
            if spec.func_infos:
                func_info = _btf_ext.encoded_func_infos(spec.func_infos, spec.btf)
                nfunc = len(spec.func_infos)
            if len(lines):
                line_info = _btf_ext.encoded_line_infos(lines, strings)
                nline = len(lines)
        return LoadRequest(
            name=spec.name,
            type=spec.type,
            attach_btf_id=attach_btf_id,
            instructions=insns,
            license=spec.license,
            attach_type=attach_type,
            kernel_version=spec.kernel_version,
            flags=int(spec.flags),
            btf_fd=btf_fd if nfunc or nline else None,
            func_info=func_info,
            func_info_count=nfunc,
            line_info=line_info,
            line_info_count=nline,
            line_infos=lines,
        )

    def _write_map_fds(
        self, insns: bytearray | array.array[int], patches: Iterable[tuple[str, Iterable[int]]]
    ) -> None:
        """Write each map's fd into ``insns`` at the offsets ``patches`` gives for it
        (creating maps not made yet, in the order given)."""
        loaded = self.maps
        for map_name, offsets in patches:
            m = loaded.get(map_name)  # most references are to maps made already
            if m is None:
                m = self.map(map_name)
            fd = m._fd.raw  # (not through the fd property: once per map per program)
            for off in offsets:
                _IMM.pack_into(insns, off, fd)

    def _relocate_core(self, spec: ProgramSpec, raw: bytearray) -> None:
        if spec.btf is None:
            raise SpecError(f"program {spec.name}: co-re relocations without btf")
        if self._core_cache is None:
            self._core_cache = {}
        try:
            results = _core.apply_relocations(
                raw, spec.core_relos, spec.btf, self._core_target(), self._core_cache
            )
        except COREError as err:
            raise COREError(f"program {spec.name}: {err}") from err
        poisoned = {r.relo.insn: _core.describe_relo(r.relo) for r in results if r.poison}
        if poisoned:
            self._poisoned[spec.name] = poisoned

    def _poison_error(self, name: str, err: VerifierError) -> VerifierError:
        """Name the relocation when the verifier failed on a poisoned instruction."""
        poisoned = self._poisoned.get(name)
        if not poisoned:
            return err
        idx = _core.poisoned_in_log(err.log)
        relo = poisoned.get(idx) if idx is not None else None
        if relo is None:
            return err
        return CORERelocationError(
            f"instruction {idx}: co-re relocation {relo} cannot be satisfied "
            "by the kernel's btf and the instruction is reachable (guard it with "
            "bpf_core_field_exists() or bpf_core_type_exists())",
            err.errno,
            err.log,
            name,
            relo,
            line_infos=err.line_infos,
            truncated=err.truncated,
        )

    def _resolve_extern(self, spec: ProgramSpec, raw: bytearray, idx: int, name: str) -> None:
        ext = self.spec_externs.get(name)
        what = f"program {spec.name}: extern {name}"
        if ext is None:
            raise SpecError(f"{what}: not declared __ksym or __kconfig")
        pos = idx * INSN_SIZE
        op = raw[pos]
        if ext.kind is _externs.ExternKind.KFUNC:
            if op not in (CALL, LD_IMM64):
                raise SpecError(f"{what}: a kfunc can only be called or have its address taken")
            found = self._kernel(what).find(name, _btf.Kind.FUNC)
            if found is None:
                if not ext.weak:
                    raise AttachTargetError(
                        f"{what}: no kfunc {name} in the kernel's btf (declare it __weak to "
                        "load anyway and check bpf_ksym_exists())"
                    )
                if op == CALL:
                    # off 0, imm 0: an unresolved weak kfunc, fine while unreachable
                    raw[pos + 1] = (raw[pos + 1] & 0x0F) | (_sys.BPF_PSEUDO_KFUNC_CALL << 4)
                    raw[pos + 2 : pos + 8] = bytes(6)
                else:  # bpf_ksym_exists(): the address is 0
                    raw[pos + 4 : pos + 8] = bytes(4)
                    raw[pos + 12 : pos + 16] = bytes(4)
                return
            mod, kspec, kid = found
            if mod != "vmlinux":
                raise NotSupportedError(f"{what}: kfuncs in modules ({mod}) are not supported")
            kfunc = kspec.type_by_id(kid)
            assert isinstance(ext.type, _btf.Func) and isinstance(kfunc, _btf.Func)
            if not _core.types_compat(ext.type.type, kfunc.type):
                raise AttachTargetError(
                    f"{what}: prototype {_btf.describe(ext.type.type)} is incompatible with "
                    f"the kernel's {_btf.describe(kfunc.type)}"
                )
            if op == CALL:
                raw[pos + 1] = (raw[pos + 1] & 0x0F) | (_sys.BPF_PSEUDO_KFUNC_CALL << 4)
                raw[pos + 2 : pos + 4] = (0).to_bytes(2, "little")
            else:
                raw[pos + 1] = (raw[pos + 1] & 0x0F) | (_sys.BPF_PSEUDO_BTF_ID << 4)
                raw[pos + 12 : pos + 16] = bytes(4)
            raw[pos + 4 : pos + 8] = kid.to_bytes(4, "little")
            return
        if op != LD_IMM64:
            raise SpecError(f"{what}: a kernel symbol can only be loaded with ld_imm64")
        if ext.kind is _externs.ExternKind.KSYM and ext.typed:
            found = self._kernel(what).find(name, _btf.Kind.VAR)
            if found is not None:
                mod, kspec, kid = found
                if mod != "vmlinux":
                    raise NotSupportedError(f"{what}: variables in modules ({mod}) unsupported")
                kvar = kspec.type_by_id(kid)
                assert isinstance(kvar, _btf.Var)
                local_t = _btf.skip_qualifiers(ext.type)
                if not _core.types_compat(local_t, _btf.skip_qualifiers(kvar.type)):
                    raise AttachTargetError(
                        f"{what}: type {_btf.describe(ext.type)} is incompatible with the "
                        f"kernel's {_btf.describe(kvar.type)}"
                    )
                raw[pos + 1] = (raw[pos + 1] & 0x0F) | (_sys.BPF_PSEUDO_BTF_ID << 4)
                raw[pos + 4 : pos + 8] = kid.to_bytes(4, "little")
                raw[pos + 12 : pos + 16] = bytes(4)
                return
            if not ext.weak:
                raise AttachTargetError(
                    f"{what}: no variable {name} in the kernel's btf (declare it __weak)"
                )
            addr = 0
        elif ext.kind is _externs.ExternKind.KSYM:
            if self._kallsyms is None:
                try:
                    self._kallsyms = _externs.kallsyms()
                except OSError as err:
                    raise NotSupportedError(f"{what}: /proc/kallsyms: {err}") from err
            found_addr = self._kallsyms.get(name)
            if found_addr is None:
                if not ext.weak:
                    raise AttachTargetError(
                        f"{what}: no symbol {name} in /proc/kallsyms (declare it __weak)"
                    )
                found_addr = 0
            addr = found_addr
        else:
            raise SpecError(f"{what}: kconfig extern left unresolved")
        raw[pos + 4 : pos + 8] = (addr & 0xFFFFFFFF).to_bytes(4, "little")
        raw[pos + 12 : pos + 16] = (addr >> 32).to_bytes(4, "little")

    def _kconfig_contents(self, spec: MapSpec) -> bytes:
        config: dict[str, str] | None = None
        if any(
            e.kind is _externs.ExternKind.KCONFIG and e.name.startswith("CONFIG_")
            for e in self.spec_externs.values()
        ):
            path = self.options.kconfig_path
            try:
                config = _externs.read_kconfig(os.fspath(path) if path is not None else None)
            except KconfigError:
                if not all(
                    e.weak
                    for e in self.spec_externs.values()
                    if e.kind is _externs.ExternKind.KCONFIG and e.name.startswith("CONFIG_")
                ):
                    raise
        features = {
            "LINUX_KERNEL_VERSION": _externs.kernel_version_code(),
            "LINUX_HAS_BPF_COOKIE": 1,
        }
        if "LINUX_HAS_SYSCALL_WRAPPER" in self.spec_externs:  # costs a /proc/kallsyms scan
            features["LINUX_HAS_SYSCALL_WRAPPER"] = int(_features.syscall_wrapper())
        try:
            return _externs.kconfig_values(self.spec_externs, spec.value_size, config, features)
        except KconfigError as err:
            raise KconfigError(f"map {spec.name}: {err}") from err

    def _struct_ops_target(self, spec: ProgramSpec) -> tuple[int, int]:
        """(kernel struct id, member index) of the struct_ops member ``spec`` implements."""
        for mname, ms in self.spec_maps.items():
            ops = ms.struct_ops
            if ops is None:
                continue
            for member, prog in ops.funcs.items():
                if prog == spec.name:
                    what = f"program {spec.name}"
                    kernel = _struct_ops.kernel_types(ops, self._kernel(what), f"map {mname}")
                    return kernel.type_id, kernel.member_index(member)
        raise SpecError(
            f"program {spec.name}: struct_ops program used by no struct_ops map "
            '(reference it from a variable in SEC(".struct_ops"))'
        )

    def _attach_btf_id(self, spec: ProgramSpec) -> int:
        """The kernel BTF id of the attach target, for program types that need one."""
        target = _attach_btf_name(spec)
        if target is None:
            return 0
        name, kind = target
        what = f"program {spec.name}: attach target {spec.attach_to or '(none)'}"
        if not spec.attach_to:
            raise AttachTargetError(f"{what}: section {spec.section!r} names no target")
        found = self._kernel(what).find(name, kind)
        if found is None:
            raise AttachTargetError(
                f"{what}: the kernel's btf has no {kind.name.lower()} named {name!r} (is it "
                "missing or inlined on this kernel?)"
            )
        mod, _kspec, kid = found
        if mod != "vmlinux":
            raise NotSupportedError(f"{what}: targets in modules ({mod}) are not supported")
        return kid

    # ------------------------------------------------------------------ finishing

    def finalize(self) -> None:
        """Fill prog arrays and maps of maps, loading what they hold if needed."""
        while self._pending:
            name = self._pending.pop(0)
            spec = self.spec_maps[name]
            m = self.maps[name]
            entries: list[tuple[object, object]] = []
            for entry in spec.contents:
                if not isinstance(entry.value, str):
                    continue
                if spec.type == MapType.PROG_ARRAY:
                    fd = self.program(entry.value).fd.raw
                else:
                    fd = self.map(entry.value).fd.raw
                key = (
                    entry.key
                    if isinstance(entry.key, bytes)
                    else int(entry.key).to_bytes(spec.key_size, "little")
                )
                entries.append((key, fd.to_bytes(4, "little")))
            m.populate(entries)

    def close_btf(self) -> None:
        if self._btf_fd is not None and not self._btf_shared:
            self._btf_fd.close()
        self._btf_fd = None

    def cleanup(self) -> None:
        """Undo everything: remove new pins and close every fd we made."""
        for path in reversed(self.new_pins):
            with contextlib.suppress(OSError):
                os.unlink(path)
        self.new_pins.clear()
        for p in self.programs.values():
            p.close()
        for m in self.maps.values():
            m.close()
        self.close_btf()


def _extra_flags(spec: MapSpec) -> int:
    """Map flags the loader adds to ``spec``'s: BPF_F_MMAPABLE for a data section's map
    where the kernel has it."""
    if spec.is_data_section and _features.mmapable_arrays():
        return int(MapFlags.MMAPABLE)
    return 0


def _initial_contents(spec: MapSpec) -> tuple[list[tuple[object, bytes]], bool]:
    """``spec``'s contents to write when the map is created, as (key, value bytes) (an int
    key as bytes where the map has no key type), and whether any entries name a program
    or map (those are written by :meth:`_Loader.finalize`)."""
    entries: list[tuple[object, bytes]] = []
    pending = False
    for entry in spec.contents:
        if isinstance(entry.value, str):
            pending = True
            continue
        key: object = entry.key
        if isinstance(key, int) and spec.key_size in (1, 2, 4, 8) and spec.key is None:
            key = key.to_bytes(spec.key_size, "little")
        entries.append((key, bytes(entry.value)))
    return entries, pending


def _point_at_maps(raw: bytearray, references: Mapping[int, Reference]) -> dict[str, list[int]]:
    """Set the source register of each map reference in ``raw`` to say what its imm holds:
    a map's fd, or a map's fd and (the next slot's imm) an offset into its value (written
    here). Externs are left alone. Returns the offsets of the imms each map's fd goes to,
    by map, the map first referred to first."""
    patches: dict[str, list[int]] = {}
    for idx, ref in references.items():
        kind = ref.kind
        if kind is _EXTERN:
            continue
        pos = idx * INSN_SIZE
        if kind is _MAP:
            raw[pos + 1] = (raw[pos + 1] & 0x0F) | _SRC_MAP_FD
        else:
            raw[pos + 1] = (raw[pos + 1] & 0x0F) | _SRC_MAP_VALUE
            _IMM.pack_into(raw, pos + 12, ref.offset)
        patches.setdefault(ref.name, []).append(pos + 4)
    return patches


def _attach_btf_name(spec: ProgramSpec) -> tuple[str, _btf.Kind] | None:
    """The name and kind of the kernel BTF type a program attaches to, for the program
    types that need one."""
    at = spec.attach_type
    if spec.type == ProgType.TRACING:
        if at == AttachType.TRACE_RAW_TP:
            return f"btf_trace_{spec.attach_to}", _btf.Kind.TYPEDEF
        if at == AttachType.TRACE_ITER:
            return f"bpf_iter_{spec.attach_to}", _btf.Kind.FUNC
        if at in (AttachType.TRACE_FENTRY, AttachType.TRACE_FEXIT, AttachType.MODIFY_RETURN):
            return spec.attach_to, _btf.Kind.FUNC
    elif spec.type == ProgType.LSM and at == AttachType.LSM_MAC:
        return f"bpf_lsm_{spec.attach_to}", _btf.Kind.FUNC
    return None


class Collection(Closing):
    """The live maps and programs of a spec. Closing it closes them all; a program keeps
    running only while something (an fd, a pin, a link) holds it."""

    def __init__(self, spec: CollectionSpec, options: CollectionOptions | None = None) -> None:
        loader = _Loader(spec, options or CollectionOptions())
        try:
            for name in loader.spec_maps:
                loader.map(name)
            for name, prog in loader.spec_programs.items():
                if prog.autoload:
                    loader.program(name)
            loader.finalize()
        except BaseException:
            loader.cleanup()
            raise
        loader.close_btf()
        self.maps: dict[str, Map] = loader.maps
        self.programs: dict[str, Program] = loader.programs
        self.pins: list[str] = loader.new_pins
        self.spec = spec

    @classmethod
    def _from_loader(cls, loader: _Loader) -> Collection:
        self = cls.__new__(cls)
        self.maps, self.programs, self.pins, self.spec = (
            loader.maps,
            loader.programs,
            loader.new_pins,
            loader.spec,
        )
        return self

    def detach_map(self, name: str) -> Map:
        """Take ``name`` out of the collection: it survives :meth:`close`; you close it."""
        try:
            return self.maps.pop(name)
        except KeyError:
            raise SpecError(
                f"map {name}: not in collection{hint(name, sorted(self.maps))}"
            ) from None

    def detach_program(self, name: str) -> Program:
        try:
            return self.programs.pop(name)
        except KeyError:
            raise SpecError(
                f"program {name}: not in collection{hint(name, sorted(self.programs))}"
            ) from None

    def assign(self, target: T) -> T:
        """Move the objects bound in ``target`` (see :func:`bind`) out of the collection."""
        from orchestrator.ebpf.binding import assign_objects

        return assign_objects(self, target)

    def close(self) -> None:
        for p in self.programs.values():
            p.close()
        for m in self.maps.values():
            m.close()

    def __repr__(self) -> str:
        return f"Collection(maps={sorted(self.maps)}, programs={sorted(self.programs)})"


def load_collection(
    path: str | os.PathLike[str], options: CollectionOptions | None = None
) -> Collection:
    """Parse an object file and load everything in it."""
    return Collection(CollectionSpec.from_file(path), options)


def load_subset(
    spec: CollectionSpec,
    options: CollectionOptions | None,
    programs: Iterable[str],
    maps: Iterable[str],
) -> Collection:
    """Load only the named programs and maps (and what they depend on)."""
    loader = _Loader(spec, options or CollectionOptions())
    try:
        for name in maps:
            loader.map(name)
        for name in programs:
            loader.program(name)
        loader.finalize()
    except BaseException:
        loader.cleanup()
        raise
    loader.close_btf()
    return Collection._from_loader(loader)


__all__ = ["Collection", "CollectionOptions", "Error", "load_collection", "load_subset"]
