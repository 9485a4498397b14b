"""A model-based test of the declarative layer: random sequences of manifest edits, applies,
faults, foreign objects and destroys, each followed by checks against the kernel.

The machine (:class:`ModelMachine`, a hypothesis ``RuleBasedStateMachine``) keeps a model of
what the manifests on disk say (``desired``) and what should be live (``applied``). Every rule
changes the manifests in a temporary directory, or runs the real thing on them:
``load_manifests`` + :class:`Reconciler` in process, or the ``bpforch`` CLI as a subprocess
(also one killed with SIGKILL at a step of the apply), against a private bpffs root and state
dir, with attachments on a veth pair and a cgroup the run creates.

After every step, :meth:`ModelMachine.check` compares the kernel (not the record) with the
model:

- every map substituted with ``from:`` has exactly one map id in every program that uses it
  (``BPF_OBJ_GET_INFO_BY_FD`` map ids of the pinned programs);
- a preserved map keeps its id and its contents; a kept collection keeps its ids; a map with a
  new id is empty;
- the pins under the root are exactly what the manifests ask for (and nothing at the top of
  the root but collection directories and the foreign objects planted there);
- every attachment's link is live, on its hook, running the collection's current program;
- after an apply, plan is a no-op and status reports every collection Ready with no drift;
- nothing leaked: no file descriptors in this process, and no program, map or link this run
  ever saw (or that carries this run's ``run_tag`` constant) is alive unless the model says
  it should be; after destroy, nothing of ours is left;
- foreign objects are untouched: pins in and outside the root keep their ids and contents, a
  foreign XDP program attached through netlink stays attached.

Everything runs without pytest too (``benchmarks/state_machine.py`` runs it longer).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from orchestrator import ebpf
from orchestrator.ebpf import Map, Program
from orchestrator.ebpf import _sys as bpfsys
from orchestrator.ebpf import inspect as ebpf_inspect
from orchestrator.ebpf import link as ebpf_links
from orchestrator.ebpf.errors import SyscallError
from orchestrator.manifest import ManifestError, load_manifests
from orchestrator.reconcile import ApplyError, Failpoints, PlanError, Reconciler
from orchestrator.reconcile.owner import MARK_PIN, OWNER_PIN
from tests.failpoints import OnStep
from tests.netns import Cgroup, NetNS, VethPair

ROOT = Path(__file__).resolve().parent.parent.parent
OBJECT = ROOT / "bpf" / "model.o"
BPFFS = Path("/sys/fs/bpf")

COLLS = ("ca", "cb", "cc")
MAPS = ("m_array", "m_hash", "m_lru", "m_percpu", "m_ringbuf", "m_perf", "m_progs", "m_queue")
DEFAULT_MAX = {
    "m_array": 4,
    "m_hash": 16,
    "m_lru": 16,
    "m_percpu": 16,
    "m_ringbuf": 4096,
    "m_perf": 4,
    "m_progs": 4,
    "m_queue": 8,
}
ALT_MAX = {
    "m_array": 8,
    "m_hash": 32,
    "m_lru": 32,
    "m_percpu": 32,
    "m_ringbuf": 8192,
    "m_perf": 8,
    "m_progs": 8,
    "m_queue": 16,
}
KEYED = ("m_array", "m_hash", "m_lru", "m_percpu")
PROGRAMS = ("model_tail", "model_xdp", "model_tc", "model_cg")
ATTACH_KINDS = ("xdp", "tc", "cg")
FAULT_STEPS = ("load", "verify", "pin", "attach", "switch", "commit", "record", "release")
CRASH_STEPS = ("load", "verify", "pin", "attach", "switch", "commit", "record", "release")


# ---------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class MapOpt:
    """A map's options in a manifest. ``src``: None, ``"pinned"`` (the run's foreign pinned
    map of that name) or the name of another collection (``from: {collection}``)."""

    pin: bool = False
    preserve: bool = False
    max_entries: int | None = None
    recreate: bool = False
    src: str | None = None

    def document(self, foreign: Path, name: str) -> str:
        if self.src == "pinned":
            return f"{{from: {{pinned: {foreign / name}}}}}"
        if self.src is not None:
            return f"{{from: {{collection: {self.src}}}}}"
        parts = []
        if self.pin:
            parts.append("pin: true")
        if self.preserve:
            parts.append("preserve: true")
        if self.max_entries is not None:
            parts.append(f"max_entries: {self.max_entries}")
        if self.recreate:
            parts.append("on_incompatible: recreate")
        return "{" + ", ".join(parts) + "}"


DEFAULT_OPT = MapOpt()


@dataclass(frozen=True)
class Coll:
    """One collection's manifest: the ``version`` constant, non-default map options, and
    which of the run's hooks it attaches to (xdp, tc, cg)."""

    version: int = 1
    maps: tuple[tuple[str, MapOpt], ...] = ()
    attach: frozenset[str] = frozenset()
    xdp_mode: str = "generic"  # ca's XDP target (the veth end) also takes native

    def opt(self, m: str) -> MapOpt:
        return dict(self.maps).get(m, DEFAULT_OPT)

    def with_opt(self, m: str, opt: MapOpt) -> Coll:
        d = dict(self.maps)
        if opt == DEFAULT_OPT:
            d.pop(m, None)
        else:
            d[m] = opt
        return replace(self, maps=tuple(sorted(d.items())))

    def load_inputs(self) -> tuple[object, ...]:
        """What reloading depends on: not attachments, not ``pin`` (pinning and unpinning
        a live map reloads nothing)."""
        opts = ((m, replace(o, pin=False)) for m, o in self.maps)
        return (self.version, tuple((m, o) for m, o in opts if o != DEFAULT_OPT))

    def max_of(self, m: str) -> int:
        o = self.opt(m)
        return o.max_entries if o.max_entries is not None else DEFAULT_MAX[m]


def source_of(state: dict[str, Coll], c: str, m: str) -> tuple[str, str] | None:
    """The map that (c, m) ends up using: (collection, m) of the owning collection, or
    ("pinned:", m) for the foreign pinned map; None if the chain leads to an undeclared
    collection (or loops)."""
    seen = set()
    while True:
        if (c, m) in seen or c not in state:
            return None
        seen.add((c, m))
        o = state[c].opt(m)
        if o.src is None:
            return (c, m)
        if o.src == "pinned":
            return ("pinned:", m)
        c = o.src


def rejections(desired: dict[str, Coll], applied: dict[str, Coll]) -> list[str]:
    """Why validate or plan must refuse ``desired`` (empty: it must apply)."""
    out = []
    for c, coll in desired.items():
        for m, o in coll.maps:
            if o.src is None or o.src == "pinned":
                continue
            root = source_of(desired, c, m)
            if root is None:
                out.append(f"{c}.{m}: from an undeclared collection (or a cycle)")
            elif root[0] != "pinned:" and desired[root[0]].max_of(m) != DEFAULT_MAX[m]:
                out.append(f"{c}.{m}: source {root} has another max_entries")
        if coll.opt("m_progs").preserve:
            out.append(f"{c}.m_progs: a prog array refuses preserve")
        old = applied.get(c)
        if old is None:
            continue
        for m in MAPS:
            o = coll.opt(m)
            if o.src is not None or not o.preserve or o.recreate:
                continue
            if old.opt(m).src is None and old.max_of(m) != coll.max_of(m):
                out.append(f"{c}.{m}: preserved map changes max_entries")
    return out


def collection_strategy() -> st.SearchStrategy[Coll]:
    opt = st.builds(
        MapOpt,
        pin=st.booleans(),
        preserve=st.booleans(),
        max_entries=st.sampled_from([None, None, 0]),  # 0: the alternative size (see below)
        recreate=st.booleans(),
    )

    def build(version: int, opts: dict[str, MapOpt], attach: frozenset[str]) -> Coll:
        c = Coll(version=version, attach=attach)
        for m, o in opts.items():
            if o.max_entries == 0:
                o = replace(o, max_entries=ALT_MAX[m])
            c = c.with_opt(m, o)
        return c

    return st.builds(
        build,
        st.integers(1, 3),
        st.dictionaries(st.sampled_from(MAPS), opt, max_size=3),
        st.frozensets(st.sampled_from(ATTACH_KINDS)),
    )


# ---------------------------------------------------------------------------- the kernel


def prog_alive(i: int) -> bool:
    return ebpf_inspect.program_exists(i)


def map_alive(i: int) -> bool:
    # never by opening it: polling a dying prog array that way leaks it in the kernel
    return ebpf_inspect.map_exists(i)


def link_alive(i: int) -> bool:
    return ebpf_inspect.link_exists(i)


def pinned_id(path: Path, kind: str) -> int | None:
    """The id of the object pinned at ``path`` (never following a symlink there)."""
    if path.is_symlink() or not os.path.lexists(path):
        return None
    try:
        fd = bpfsys.obj_get(os.fspath(path))
    except SyscallError:
        return None
    with fd:
        if kind == "prog":
            return int(bpfsys.prog_info(fd).id)
        if kind == "map":
            return int(bpfsys.map_info(fd).id)
        return int(bpfsys.link_info(fd).id)


# what each program uses: a program's maps never change and ids are never reused, so each
# program's maps are opened once, when the program is first seen (normally right after the
# apply that made it, its prog array still pinned). Polling them by opening again while the
# collection is torn down would open a prog array after its last pin went, and on this
# kernel that can leak it (see ebpf.inspect.map_exists)
_PROG_MAPS: dict[int, dict[str, int]] = {}


def prog_maps(prog_id: int) -> dict[str, int]:
    """Map name -> map id of every map a live program uses."""
    known = _PROG_MAPS.get(prog_id)
    if known is not None:
        if not prog_alive(prog_id):
            raise SyscallError("prog get fd by id", errno.ENOENT)
        return dict(known)
    out: dict[str, int] = {}
    with bpfsys.fd_by_id(bpfsys.Cmd.PROG_GET_FD_BY_ID, prog_id) as fd:
        _info, _x, ids = bpfsys.prog_xlated(fd)
    for mid in ids:
        with bpfsys.fd_by_id(bpfsys.Cmd.MAP_GET_FD_BY_ID, mid) as mfd:
            name = bpfsys.map_info(mfd).name.decode()
        out[name] = mid
    _PROG_MAPS[prog_id] = out
    return dict(out)


def rodata_of(prog_id: int) -> tuple[int, int] | None:
    """(version, run_tag) read from a model program's frozen .rodata, None if it has none."""
    try:
        maps = prog_maps(prog_id)
    except SyscallError:
        return None
    mid = next((i for n, i in maps.items() if n.endswith("rodata")), None)
    if mid is None:
        return None
    try:
        with Map.from_id(mid) as m:
            raw = m.lookup(0)
    except ebpf.Error:
        return None
    assert isinstance(raw, bytes) and len(raw) >= 8
    return int.from_bytes(raw[:4], "little"), int.from_bytes(raw[4:8], "little")


def tagged_programs(run_tag: int, since_ns: int) -> set[int]:
    """Every live program in the kernel that carries this run's ``run_tag``. Programs loaded
    before the run started (``since_ns``, boot time) are not looked into: other runs' maps
    are none of this run's business (see :data:`_PROG_MAPS`)."""
    out = set()
    for pid in bpfsys.iter_ids(bpfsys.Cmd.PROG_GET_NEXT_ID):
        try:
            with bpfsys.fd_by_id(bpfsys.Cmd.PROG_GET_FD_BY_ID, pid) as fd:
                info = bpfsys.prog_info(fd)
        except SyscallError:
            continue
        if info.name.decode().startswith("model_") and int(info.load_time) >= since_ns:
            ro = rodata_of(pid)
            if ro is not None and ro[1] == run_tag:
                out.add(pid)
    return out


def links_of(prog_ids: set[int]) -> set[int]:
    """Every live link whose program is one of ``prog_ids``."""
    out = set()
    for lid in bpfsys.iter_ids(bpfsys.Cmd.LINK_GET_NEXT_ID):
        try:
            with bpfsys.fd_by_id(bpfsys.Cmd.LINK_GET_FD_BY_ID, lid) as fd:
                info = bpfsys.link_info(fd)
        except SyscallError:
            continue
        if int(info.prog_id) in prog_ids:
            out.add(lid)
    return out


def read_contents(map_id: int, name: str) -> object:
    """The contents of one of our maps, in the model's terms: a dict for keyed maps, the
    list of queued values, the number of unread ring buffer bytes; None for the rest."""
    with Map.from_id(map_id) as m:
        if name in KEYED:
            items: dict[int, object] = {}
            for k, v in m.items():
                k, v = _int(k), _int(v)
                if isinstance(v, list):  # per-CPU: the model writes one value on every CPU
                    assert len(set(v)) == 1, v
                    v = v[0]
                if name == "m_array" and v == 0:
                    continue  # array slots always exist: zero means empty
                items[k] = v
            return items
        if name == "m_queue":
            values = []
            while True:
                try:
                    raw = m.pop()
                except ebpf.KeyNotFoundError:
                    break
                assert isinstance(raw, bytes)
                values.append(int.from_bytes(raw, "little"))
            for v in values:  # put them back: reading must not change the map
                m.push(v.to_bytes(8, "little"))
            return values
        if name == "m_ringbuf":
            with ebpf.RingBufReader(m) as rd:
                return rd.available()
    return None


def _int(v: object) -> object:
    """Maps opened without BTF give raw bytes: little-endian integers here."""
    if isinstance(v, bytes):
        return int.from_bytes(v, "little")
    if isinstance(v, list):
        return [_int(x) for x in v]
    return v


def describe_maps(ids: set[int]) -> list[str]:
    """``id name`` of each live map in ``ids`` (for a leak message)."""
    out = []
    for i in sorted(ids):
        try:
            with bpfsys.fd_by_id(bpfsys.Cmd.MAP_GET_FD_BY_ID, i) as fd:
                out.append(f"{i} {bpfsys.map_info(fd).name.decode()}")
        except SyscallError:
            out.append(f"{i} (gone)")
    return out


def empty_contents(name: str) -> object:
    if name in KEYED:
        return {}
    if name == "m_queue":
        return []
    if name == "m_ringbuf":
        return 0
    return None


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def settle(fn: Callable[[], bool], timeout: float = 3.0) -> bool:
    """Objects are freed after an RCU grace period (and links in a work item): poll."""
    deadline = time.monotonic() + timeout
    while True:
        if fn():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


# ---------------------------------------------------------------------------- the world


@dataclass
class World:
    """What lives as long as a test (shared by the machine's examples): the veth pair, the
    cgroup, and counters of what was explored."""

    veth: VethPair
    cgroup: Cgroup
    examples: int = 0
    steps: int = 0
    applies: int = 0
    rejected: int = 0
    faults: int = 0
    kills: int = 0
    cli_runs: int = 0
    destroys: int = 0
    rules: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        rules = ", ".join(f"{k} {v}" for k, v in sorted(self.rules.items()))
        return (
            f"{self.examples} examples, {self.steps} steps ({self.applies} applies, "
            f"{self.rejected} rejected as predicted, {self.faults} injected failures, "
            f"{self.kills} kill -9, {self.cli_runs} CLI runs, {self.destroys} destroys); "
            f"rules: {rules}"
        )


WORLD: World | None = None


@contextlib.contextmanager
def world() -> Iterator[World]:
    """The veth pair and cgroup for a run of the machine (removed afterwards)."""
    from tests.netns import netns_pair, temp_cgroup

    global WORLD
    with netns_pair() as pair, temp_cgroup() as cg:
        WORLD = World(pair, cg)
        try:
            yield WORLD
        finally:
            WORLD = None


def _raise_at(step: str, fired: list[str]) -> Callable[[str], None]:
    def hook(subject: str) -> None:
        if not fired:
            fired.append(subject)
            raise RuntimeError(f"injected failure at {step}")

    return hook


class ModelMachine(RuleBasedStateMachine):
    """See the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        assert WORLD is not None, "run inside model.world()"
        self.w = WORLD
        self.w.examples += 1
        tag = uuid.uuid4().hex[:10]
        self.run_tag = int(tag[:7], 16) | 1
        self.started_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        self.base = BPFFS / f"bpforch-test-{os.getpid()}-{tag}"
        self.base.mkdir()
        self.root = self.base / "root"
        self.foreign_dir = self.base / "foreign"
        self.tmp = Path(f"/tmp/bpforch-model-{os.getpid()}-{tag}")
        self.manifests = self.tmp / "manifests"
        self.state_dir = self.tmp / "state"
        self.manifests.mkdir(parents=True)
        self.desired: dict[str, Coll] = {}
        self.applied: dict[str, Coll] = {}
        self.pin_users: set[tuple[str, str]] = set()  # maps other collections use (`from`)
        # what the kernel showed at the last check, for the next one
        self.map_ids: dict[tuple[str, str], int] = {}  # (collection, map) -> id (own maps)
        self.prog_ids: dict[tuple[str, str], int] = {}
        self.contents: dict[int, object] = {}  # map id -> contents the model expects
        self.seen_progs: set[int] = set()
        self.seen_maps: set[int] = set()
        self.seen_links: set[int] = set()
        # foreign objects: path -> (kind, id); maps also keep their contents
        self.foreign_pins: dict[Path, tuple[str, int]] = {}
        self.foreign_maps: dict[str, Map] = {}  # name -> the pinned map `from: pinned` uses
        self.foreign_objs: list[object] = []  # fds to close at teardown
        self.foreign_xdp: int | None = None  # prog id attached by netlink to veth.b
        self.foreign_top: set[str] = set()  # names at the top of the root that aren't ours
        self.symlinks: dict[Path, str] = {}
        # set when a failure may have left the previous generation half released
        self.expect_reload_anywhere = False
        self._make_foreign_maps()

    # ------------------------------------------------------------------ setup / teardown

    def _make_foreign_maps(self) -> None:
        """One foreign map of every type, pinned outside the root: the `from: pinned`
        sources. Keyed ones get an entry, so that reading them shows they are untouched."""
        spec = ebpf.CollectionSpec.from_file(OBJECT)
        self.foreign_dir.mkdir()
        for name in MAPS:
            ms = spec.maps[name].copy()  # the same name: programs' map ids are read by name
            m = Map.create(ms)
            self.foreign_objs.append(m)
            path = self.foreign_dir / name
            m.pin(path)
            if name in KEYED:
                m.update(1, [77] * bpfsys.possible_cpus() if name == "m_percpu" else 77)
                self.contents[m.id] = {1: 77}
            elif name == "m_queue":
                m.push((77).to_bytes(8, "little"))
                self.contents[m.id] = [77]
            else:
                self.contents[m.id] = empty_contents(name)
            self.foreign_maps[name] = m
            self.foreign_pins[path] = ("map", m.id)

    def teardown(self) -> None:
        try:
            if self.applied or self.root.exists():
                with contextlib.suppress(Exception):
                    Reconciler(bpffs_root=self.root, state_dir=self.state_dir).destroy()
        finally:
            if self.foreign_xdp is not None:
                with contextlib.suppress(Exception):
                    ebpf_links.set_xdp_netlink(
                        self.w.veth.b.name, None, "generic", netns=self.w.veth.b.ns.path
                    )
            for obj in reversed(self.foreign_objs):
                obj.close()  # type: ignore[attr-defined]
            shutil.rmtree(self.base, ignore_errors=True)
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ------------------------------------------------------------------ manifests

    def xdp_hook(self, c: str) -> tuple[str, NetNS]:
        """Where collection ``c`` attaches XDP (one interface each: two XDP programs on one
        interface are refused at validation)."""
        v = self.w.veth
        return {"ca": (v.a.name, v.a.ns), "cb": ("lo", v.a.ns), "cc": ("lo", v.b.ns)}[c]

    def xdp_target(self, c: str, mode: str) -> str:
        iface, ns = self.xdp_hook(c)
        return f"{{interface: {iface}, netns: {ns.path}, mode: {mode}}}"

    def render(self, c: str, coll: Coll) -> str:
        v = self.w.veth
        lines = [
            "apiVersion: bpforch/v1",
            "kind: Collection",
            f"metadata: {{name: {c}}}",
            "spec:",
            f"  object: {OBJECT}",
            f"  constants: {{version: {coll.version}, run_tag: {self.run_tag}}}",
        ]
        if coll.maps:
            lines.append("  maps:")
            for m, o in coll.maps:
                lines.append(f"    {m}: {o.document(self.foreign_dir, m)}")
        if coll.attach:
            lines.append("  attach:")
            if "xdp" in coll.attach:
                lines.append(
                    f"    - {{program: model_xdp, xdp: {self.xdp_target(c, coll.xdp_mode)}}}"
                )
            if "tc" in coll.attach:
                lines.append(
                    f"    - {{program: model_tc, tc: {{interface: {v.a.name}, "
                    f"netns: {v.a.ns.path}, direction: ingress}}}}"
                )
            if "cg" in coll.attach:
                lines.append(
                    f"    - {{program: model_cg, cgroup: {{path: {self.w.cgroup.path}, "
                    "attach: egress}}"
                )
        return "\n".join(lines) + "\n"

    def write_desired(self) -> None:
        for c in COLLS:
            path = self.manifests / f"{c}.yaml"
            if c in self.desired:
                path.write_text(self.render(c, self.desired[c]))
            elif path.exists():
                path.unlink()

    def reconciler(self, failpoints: Failpoints | None = None) -> Reconciler:
        return Reconciler(bpffs_root=self.root, state_dir=self.state_dir, failpoints=failpoints)

    def count(self, rule: str) -> None:
        self.w.steps += rule != "start"  # the set-up is not a step
        self.w.rules[rule] = self.w.rules.get(rule, 0) + 1

    # ------------------------------------------------------------------ model transitions

    def next_applied(self, prune: bool) -> dict[str, Coll]:
        new = dict(self.desired)
        if not prune:
            for c, coll in self.applied.items():
                new.setdefault(c, coll)
        return new

    def expected_after(self, old: dict[str, Coll], new: dict[str, Coll], *, crash: bool) -> None:
        """Move the remembered ids to what ``new`` must show, given that ``old`` was live:
        ids that must stay are kept, the others forgotten (a new id is then expected)."""
        same_map: dict[tuple[str, str], int] = {}
        same_prog: dict[tuple[str, str], int] = {}
        recreated: set[tuple[str, str]] = set()
        order = sorted(new, key=lambda c: (self._depth(new, c), c))
        for c in order:
            coll = new[c]
            before = old.get(c)
            reload = before is None or before.load_inputs() != coll.load_inputs() or crash
            for m in MAPS:
                root = source_of(new, c, m)
                if root is not None and root != (c, m) and root in recreated and before is not None:
                    reload = True
            # a collection that is no longer declared (and not pruned) is left alone
            if c not in self.desired:
                reload = False
            for m in MAPS:
                o = coll.opt(m)
                key = (c, m)
                if o.src is not None:
                    continue
                had = before is not None and before.opt(m).src is None and key in self.map_ids
                keep = had and (
                    (
                        o.preserve
                        and (not o.recreate or before is None or before.max_of(m) == coll.max_of(m))
                    )
                    or not reload
                )
                if keep:
                    same_map[key] = self.map_ids[key]
                else:
                    recreated.add(key)
            if not reload and before is not None:
                for p in PROGRAMS:
                    if (c, p) in self.prog_ids:
                        same_prog[(c, p)] = self.prog_ids[(c, p)]
        self.map_ids = same_map
        self.prog_ids = same_prog

    @staticmethod
    def _depth(state: dict[str, Coll], c: str) -> int:
        d = 0
        for _m, o in state[c].maps:
            if o.src is not None and o.src != "pinned" and o.src in state and o.src != c:
                d = max(
                    d, 1 + ModelMachine._depth({k: v for k, v in state.items() if k != c}, o.src)
                )
        return d

    # ------------------------------------------------------------------ rules: edits

    @initialize()
    def start(self) -> None:
        self.count("start")

    @rule(c=st.sampled_from(COLLS), coll=collection_strategy())
    def set_collection(self, c: str, coll: Coll) -> None:
        """Write (or rewrite) a collection's manifest."""
        self.count("set_collection")
        self.desired[c] = coll
        self.write_desired()

    @precondition(lambda self: len(self.desired) > 0)
    @rule(data=st.data())
    def remove_collection(self, data: st.DataObject) -> None:
        self.count("remove_collection")
        c = data.draw(st.sampled_from(sorted(self.desired)))
        del self.desired[c]
        self.write_desired()

    @precondition(lambda self: len(self.desired) > 0)
    @rule(
        data=st.data(),
        m=st.sampled_from(MAPS),
        how=st.sampled_from(["pin", "preserve", "max_entries", "recreate", "from", "default"]),
    )
    def edit_map(self, data: st.DataObject, m: str, how: str) -> None:
        """Change one option of one map."""
        self.count("edit_map")
        c = data.draw(st.sampled_from(sorted(self.desired)))
        coll = self.desired[c]
        o = coll.opt(m)
        if o.src is not None and how != "from":
            o = DEFAULT_OPT
        if how == "pin":
            o = replace(o, pin=not o.pin)
        elif how == "preserve":
            o = replace(o, preserve=not o.preserve)
        elif how == "max_entries":
            o = replace(o, max_entries=None if o.max_entries else ALT_MAX[m])
        elif how == "recreate":
            o = replace(o, recreate=not o.recreate)
        elif how == "from":
            # a collection earlier in COLLS (no cycles by construction), or the foreign pin
            choices = ["pinned", *COLLS[: COLLS.index(c)]]
            o = MapOpt(src=data.draw(st.sampled_from(choices)))
        else:
            o = DEFAULT_OPT
        self.desired[c] = coll.with_opt(m, o)
        self.write_desired()

    @precondition(lambda self: len(self.desired) > 0)
    @rule(data=st.data(), version=st.integers(1, 3))
    def set_version(self, data: st.DataObject, version: int) -> None:
        self.count("set_version")
        c = data.draw(st.sampled_from(sorted(self.desired)))
        self.desired[c] = replace(self.desired[c], version=version)
        self.write_desired()

    @precondition(lambda self: "ca" in self.desired)
    @rule(mode=st.sampled_from(["generic", "native"]))
    def set_xdp_mode(self, mode: str) -> None:
        """Switch ca's XDP attachment between generic and native (the veth driver has
        both): a re-attach, never reported as converged."""
        self.count("set_xdp_mode")
        self.desired["ca"] = replace(self.desired["ca"], xdp_mode=mode)
        self.write_desired()

    @precondition(lambda self: len(self.desired) > 0)
    @rule(data=st.data(), kind=st.sampled_from(ATTACH_KINDS))
    def toggle_attachment(self, data: st.DataObject, kind: str) -> None:
        self.count("toggle_attachment")
        c = data.draw(st.sampled_from(sorted(self.desired)))
        coll = self.desired[c]
        self.desired[c] = replace(coll, attach=coll.attach ^ {kind})
        self.write_desired()

    # ------------------------------------------------------------------ rules: applies

    def _predicted(self, prune: bool) -> tuple[list[str], dict[str, Coll]]:
        return rejections(self.desired, self.applied), self.next_applied(prune)

    def _accepted(self, new: dict[str, Coll], *, crash: bool = False) -> None:
        self.expected_after(self.applied, new, crash=crash)
        self.applied = new
        self.pin_users = {
            (o.src, m)
            for c, coll in new.items()
            if c in self.desired
            for m, o in coll.maps
            if o.src is not None and o.src != "pinned"
        }
        self.w.applies += 1

    @precondition(lambda self: len(self.desired) > 0 or len(self.applied) > 0)
    @rule(prune=st.booleans())
    def apply(self, prune: bool) -> None:
        """load_manifests + Reconciler.apply in this process."""
        self.count("apply")
        why, new = self._predicted(prune)
        fds = self._fds()
        try:
            desired = load_manifests([self.manifests])
            self.reconciler().apply(desired, prune=prune)
        except (ManifestError, PlanError) as err:
            assert why, f"apply refused what the model accepts: {err}"
            self.w.rejected += 1
        else:
            assert not why, f"apply accepted what must be refused: {why}"
            self._accepted(new)
            self.check_converged()
        self._check_fds(fds)

    @precondition(lambda self: len(self.desired) > 0 or len(self.applied) > 0)
    @rule(prune=st.booleans())
    def apply_cli(self, prune: bool) -> None:
        """`bpforch apply` as a subprocess."""
        self.count("apply_cli")
        why, new = self._predicted(prune)
        proc = self.cli("apply", str(self.manifests), *(["--prune"] if prune else []))
        if why:
            assert proc.returncode == 1, (why, proc.returncode, proc.stdout, proc.stderr)
            self.w.rejected += 1
            return
        assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
        self._accepted(new)
        self.check_converged(cli=True)

    @precondition(lambda self: len(self.desired) > 0 or len(self.applied) > 0)
    @rule(step=st.sampled_from(FAULT_STEPS))
    def apply_with_failure(self, step: str) -> None:
        """An apply whose step ``step`` fails (an injected failpoint): everything is rolled back
        (release: the apply is committed, the leftovers go with the next apply)."""
        self.count("apply_with_failure")
        why, new = self._predicted(False)
        fired: list[str] = []
        fds = self._fds()
        try:
            desired = load_manifests([self.manifests])
            self.reconciler(OnStep(**{step: _raise_at(step, fired)})).apply(desired)
        except (ManifestError, PlanError) as err:
            assert why, f"apply refused what the model accepts: {err}"
            self.w.rejected += 1
        except ApplyError as err:
            assert fired and not why, f"apply failed without a fault: {err}"
            assert step != "release", err
            assert "previous generation is live" in str(err), err
            self.w.faults += 1
        else:
            assert not why, f"apply accepted what must be refused: {why}"
            assert not fired or step == "release", (step, fired)
            self._accepted(new)
            if fired:
                self.w.faults += 1
                # the old generation is still pinned under the staging directory: the next
                # apply (a no-op for the kernel objects) removes it
                self.reconciler().apply(load_manifests([self.manifests]))
            self.check_converged()
        self._check_fds(fds)

    @precondition(lambda self: len(self.desired) > 0 or len(self.applied) > 0)
    @rule(step=st.sampled_from(CRASH_STEPS), nth=st.integers(1, 2))
    def apply_killed(self, step: str, nth: int) -> None:
        """`bpforch apply` killed with SIGKILL at the nth time it reaches ``step``; then an
        apply in this process must converge."""
        self.count("apply_killed")
        why, new = self._predicted(False)
        proc = self.cli("apply", str(self.manifests), killed_at=f"{step}:{nth}")
        if why:
            assert proc.returncode == 1, (why, proc.returncode, proc.stderr)
            self.w.rejected += 1
            return
        assert proc.returncode in (0, -9), (proc.returncode, proc.stdout, proc.stderr)
        crashed = proc.returncode == -9
        if crashed:
            self.w.kills += 1
            self.reconciler().apply(load_manifests([self.manifests]))
        self._accepted(new, crash=crashed)
        self.check_converged()

    @precondition(lambda self: len(self.applied) > 0)
    @rule(data=st.data())
    def destroy_one(self, data: st.DataObject) -> None:
        """Destroy one collection (refused while another applied collection uses its maps)."""
        self.count("destroy_one")
        c = data.draw(st.sampled_from(sorted(self.applied)))
        users = [
            u
            for u, coll in self.applied.items()
            if u != c and any(o.src == c for _m, o in coll.maps)
        ]
        fds = self._fds()
        try:
            self.reconciler().destroy([c])
        except PlanError as err:
            assert users, f"destroy {c} refused: {err}"
            self.w.rejected += 1
        else:
            assert not users, f"destroy {c} accepted while {users} use its maps"
            self.w.destroys += 1
            del self.applied[c]
            self.map_ids = {k: v for k, v in self.map_ids.items() if k[0] != c}
            self.prog_ids = {k: v for k, v in self.prog_ids.items() if k[0] != c}
        self._check_fds(fds)

    @precondition(lambda self: len(self.applied) > 0)
    @rule()
    def destroy_all_cli(self) -> None:
        """`bpforch destroy --all`: nothing of ours is left afterwards."""
        self.count("destroy_all_cli")
        proc = self.cli("destroy", "--all")
        assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
        self.w.destroys += 1
        self.applied = {}
        self.map_ids.clear()
        self.prog_ids.clear()
        self.check_nothing_of_ours_left()

    # ------------------------------------------------------------------ rules: contents

    @precondition(lambda self: len(self.applied) > 0)
    @rule(data=st.data(), m=st.sampled_from(KEYED), key=st.integers(0, 3), value=st.integers(1, 9))
    def write_entry(self, data: st.DataObject, m: str, key: int, value: int) -> None:
        """Write an entry into a live map, through the map a collection's programs use."""
        self.count("write_entry")
        c = data.draw(st.sampled_from(sorted(self.applied)))
        mid = self.map_used_by(c, m)
        with Map.from_id(mid) as live:
            live.update(key, [value] * bpfsys.possible_cpus() if m == "m_percpu" else value)
        expect = self.contents.setdefault(mid, {})
        assert isinstance(expect, dict)
        expect[key] = value

    @precondition(lambda self: len(self.applied) > 0)
    @rule(data=st.data(), action=st.sampled_from([1, 4, 5]))
    def run_program(self, data: st.DataObject, action: int) -> None:
        """Run a collection's XDP program once (BPF_PROG_TEST_RUN): 1 writes a ring buffer
        record, 4 pushes to the queue, 5 counts in the keyed maps."""
        self.count("run_program")
        c = data.draw(st.sampled_from(sorted(self.applied)))
        with Program.from_pin(self.root / c / "progs" / "model_xdp") as prog:
            ret = prog.test_run(bytes([action]) + bytes(63))
        assert ret.retval == 2  # XDP_PASS
        version = self.applied[c].version
        if action == 1:
            mid = self.map_used_by(c, "m_ringbuf")
            self.contents[mid] = int(self.contents.get(mid, 0) or 0) + 16  # type: ignore[call-overload]
        elif action == 4:
            mid = self.map_used_by(c, "m_queue")
            q = self.contents.setdefault(mid, [])
            assert isinstance(q, list)
            if len(q) >= self._max_now(c, "m_queue"):
                q.pop(0)  # BPF_EXIST on a full queue replaces the oldest value
            q.append(version | (self.run_tag << 32))
        else:
            percpu = self.contents.get(self.map_used_by(c, "m_percpu"), {})
            assert isinstance(percpu, dict)
            for m in ("m_array", "m_lru", "m_hash"):
                mid = self.map_used_by(c, m)
                d = self.contents.setdefault(mid, {})
                assert isinstance(d, dict)
                if m == "m_array":
                    d[0] = int(d.get(0, 0)) + 1  # type: ignore[call-overload]
                elif m == "m_lru":
                    d[0] = 1
                else:
                    d[0] = percpu.get(0, 1)

    def _max_now(self, c: str, m: str) -> int:
        root = source_of(self.applied, c, m)
        if root is None or root[0] == "pinned:":
            return DEFAULT_MAX[m]
        return self.applied[root[0]].max_of(m)

    def map_used_by(self, c: str, m: str) -> int:
        """The id of the map ``m`` that collection ``c``'s XDP program uses (from the
        kernel); the checks make sure it is the one the model expects."""
        pid = pinned_id(self.root / c / "progs" / "model_xdp", "prog")
        assert pid is not None, f"{c}: model_xdp is not pinned"
        return prog_maps(pid)[m]

    # ------------------------------------------------------------------ rules: foreign objects

    @precondition(lambda self: "fpin" not in self.foreign_top)
    @rule()
    def plant_foreign_pin(self) -> None:
        """A map pinned by someone else directly in the root."""
        self.count("plant_foreign_pin")
        self.root.mkdir(exist_ok=True)
        m = Map.create(
            ebpf.MapSpec(
                name="fpin", type=ebpf.MapType.ARRAY, key_size=4, value_size=8, max_entries=1
            )
        )
        self.foreign_objs.append(m)
        path = self.root / "fpin"
        m.pin(path)
        self.foreign_pins[path] = ("map", m.id)
        self.foreign_top.add("fpin")

    def _victim(self, name: str) -> Path:
        """A foreign directory on bpffs (outside the root) holding a pinned map."""
        victim = self.base / name
        victim.mkdir()
        m = Map.create(
            ebpf.MapSpec(
                name="victim", type=ebpf.MapType.ARRAY, key_size=4, value_size=8, max_entries=1
            )
        )
        self.foreign_objs.append(m)
        m.pin(victim / "victim")
        self.foreign_pins[victim / "victim"] = ("map", m.id)
        return victim

    @precondition(lambda self: "_staging-evil" not in self.foreign_top)
    @rule(name=st.sampled_from(["_staging-evil", "cx"]))
    def plant_symlink(self, name: str) -> None:
        """A symlink in the owned root to a foreign directory: named like a staging
        leftover, or like a collection nobody declared."""
        self.count("plant_symlink")
        if name in self.foreign_top:
            return
        self.root.mkdir(exist_ok=True)
        victim = self._victim(f"victim-{name.strip('_')}")
        os.symlink(victim, self.root / name)
        self.foreign_top.add(name)

    @precondition(lambda self: "lookalike" not in self.foreign_top)
    @rule()
    def plant_lookalike(self) -> None:
        """A directory in the root that looks like a collection ({maps,progs,links}) but
        that bpforch never made, holding someone else's pinned map."""
        self.count("plant_lookalike")
        self.root.mkdir(exist_ok=True)
        look = self.root / "lookalike"
        look.mkdir()
        for sub in ("maps", "progs", "links"):
            (look / sub).mkdir()
        m = Map.create(
            ebpf.MapSpec(
                name="lookalike", type=ebpf.MapType.ARRAY, key_size=4, value_size=8, max_entries=1
            )
        )
        self.foreign_objs.append(m)
        m.pin(look / "maps" / "m")
        self.foreign_pins[look / "maps" / "m"] = ("map", m.id)
        self.foreign_top.add("lookalike")

    @precondition(lambda self: self.foreign_xdp is None)
    @rule()
    def plant_foreign_xdp(self) -> None:
        """An XDP program another tool attached through netlink (on the peer end)."""
        self.count("plant_foreign_xdp")
        coll = ebpf.load_collection(ROOT / "bpf" / "xdp_counter.o")
        self.foreign_objs.append(coll)
        b = self.w.veth.b
        ebpf_links.set_xdp_netlink(b.name, coll.programs["xdp_count"], "generic", netns=b.ns.path)
        self.foreign_xdp = coll.programs["xdp_count"].id

    # ------------------------------------------------------------------ the CLI

    def cli(self, *args: str, killed_at: str | None = None) -> subprocess.CompletedProcess[str]:
        """``bpforch ARGS`` in a subprocess; with ``killed_at`` (``STEP:N``) through the
        test-only entry point that SIGKILLs it there (tests/failpoints.py)."""
        self.w.cli_runs += 1
        entry = ["orchestrator"] if killed_at is None else ["tests.failpoints", killed_at]
        return subprocess.run(
            [
                sys.executable,
                "-m",
                *entry,
                *args,
                "--bpffs-root",
                str(self.root),
                "--state-dir",
                str(self.state_dir),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    # ------------------------------------------------------------------ checks

    @staticmethod
    def _fds() -> set[int]:
        gc.collect()
        return open_fds()

    @staticmethod
    def _check_fds(before: set[int]) -> None:
        gc.collect()
        leaked = {fd for fd in open_fds() - before if os.path.exists(f"/proc/self/fd/{fd}")}
        assert not leaked, "leaked fds: " + ", ".join(
            f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}" for fd in sorted(leaked)
        )

    def check_converged(self, *, cli: bool = False) -> None:
        """Right after a successful apply: plan is a no-op, status has no drift."""
        r = self.reconciler()
        p = r.plan(load_manifests([self.manifests]))
        assert not p.has_changes and not p.problems, f"plan after apply is not a no-op:\n{p}"
        st_ = r.status()
        assert {c.name for c in st_.collections} == set(self.applied), st_
        for c in st_.collections:
            assert c.condition == "Ready" and not c.drift, (c.name, c.condition, c.drift)
        if cli:
            proc = self.cli("plan", str(self.manifests))
            assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)

    @invariant()
    def check(self) -> None:
        """The kernel against the model (see the module docstring)."""
        expected_progs: set[int] = set()
        expected_maps: set[int] = {m.id for m in self.foreign_maps.values()}
        expected_maps |= {i for k, i in self.foreign_pins.values() if k == "map"}
        expected_links: set[int] = set()
        new_map_ids: dict[tuple[str, str], int] = {}
        new_prog_ids: dict[tuple[str, str], int] = {}
        used: dict[tuple[str, str], set[int]] = {}  # source map -> ids programs use
        # top of the root: collection directories and foreign objects only
        # (and the root's ownership marker while bpforch owns anything there)
        if self.root.exists():
            top = set(os.listdir(self.root))
            want = set(self.applied) | self.foreign_top
            if self.applied or OWNER_PIN in top:
                want.add(OWNER_PIN)
                mid = pinned_id(self.root / OWNER_PIN, "map")
                assert mid is not None, "the root's ownership marker is not a map"
                expected_maps.add(mid)
            assert top == want, f"root holds {sorted(top)}, expected {sorted(want)}"
        for c, coll in self.applied.items():
            cdir = self.root / c
            assert not cdir.is_symlink() and cdir.is_dir(), cdir
            entries = set(os.listdir(cdir))
            assert entries - {"links"} == {"maps", "progs", MARK_PIN}, (c, sorted(entries))
            mark = pinned_id(cdir / MARK_PIN, "map")
            assert mark is not None, f"{c}: no ownership marker"
            expected_maps.add(mark)
            progs = sorted(os.listdir(cdir / "progs"))
            assert progs == sorted(PROGRAMS), (c, progs)
            for p in PROGRAMS:
                pid = pinned_id(cdir / "progs" / p, "prog")
                assert pid is not None
                expected_progs.add(pid)
                new_prog_ids[(c, p)] = pid
                old = self.prog_ids.get((c, p))
                if old is not None:
                    assert pid == old, f"{c}/{p}: program reloaded ({old} -> {pid}) but kept"
                maps = prog_maps(pid)
                for m, mid in maps.items():
                    expected_maps.add(mid)
                    if m in MAPS:
                        src = source_of(self.applied, c, m)
                        if src is not None and (c in self.desired or src == (c, m)):
                            used.setdefault(src, set()).add(mid)
                ro = rodata_of(pid)
                assert ro == (coll.version, self.run_tag), (c, p, ro, coll.version)
            # maps: pins exactly as asked, ids as the model predicts
            pinned = set(os.listdir(cdir / "maps")) if (cdir / "maps").is_dir() else set()
            want_pins = set()
            for m in MAPS:
                o = coll.opt(m)
                if o.src is not None:
                    continue
                # pinned when asked, and where a pin keeps the map right: preserved, used by
                # another collection (as of the last apply), a prog array
                if o.pin or o.preserve or (c, m) in self.pin_users or m == "m_progs":
                    want_pins.add(m)
            assert pinned == want_pins, f"{c}: map pins {sorted(pinned)}, want {sorted(want_pins)}"
            for m in pinned:
                mid = pinned_id(cdir / "maps" / m, "map")
                assert mid is not None
                expected_maps.add(mid)
            for m in MAPS:
                if coll.opt(m).src is not None:
                    continue
                ids = {prog_maps(new_prog_ids[(c, p)]).get(m) for p in PROGRAMS} - {None}
                assert len(ids) == 1, f"{c}.{m}: programs use map ids {ids}"
                mid = ids.pop()
                assert mid is not None
                if m in pinned:
                    assert pinned_id(cdir / "maps" / m, "map") == mid, (c, m)
                old = self.map_ids.get((c, m))
                if old is not None:
                    assert mid == old, f"{c}.{m}: map id {old} -> {mid}, the model keeps it"
                new_map_ids[(c, m)] = mid
                if mid not in self.contents:
                    self.contents[mid] = empty_contents(m)
            # attachments: one live link per hook, running this generation's program
            links_dir = cdir / "links"
            lpins = sorted(os.listdir(links_dir)) if links_dir.is_dir() else []
            assert len(lpins) == len(coll.attach), (c, lpins, coll.attach)
            for name in lpins:
                lid = pinned_id(links_dir / name, "link")
                assert lid is not None
                expected_links.add(lid)
                with bpfsys.fd_by_id(bpfsys.Cmd.LINK_GET_FD_BY_ID, lid) as fd:
                    info = bpfsys.link_info(fd)
                prog = name.split("-", 1)[0]
                assert int(info.prog_id) == new_prog_ids[(c, prog)], (c, name, info.prog_id)
                assert int(info.union[0]) != 0, f"{c}: link {lid} is detached"
            if "xdp" in coll.attach:
                iface, ns = self.xdp_hook(c)
                held = ebpf_links.xdp_attached(iface, ns.path)
                assert held is not None and held.prog_id == new_prog_ids[(c, "model_xdp")], held
                assert held.mode == coll.xdp_mode and held.link_id is not None, (c, held)
        # a shared map: one id in every program that uses it, the source's own
        for src, ids in used.items():
            assert len(ids) == 1, f"map {src}: programs use {len(ids)} different maps {sorted(ids)}"
            mid = next(iter(ids))
            if src[0] == "pinned:":
                assert mid == self.foreign_maps[src[1]].id, (src, mid)
            elif src in new_map_ids:
                assert mid == new_map_ids[src], (src, mid, new_map_ids[src])
        # contents of every map we know, ours and foreign
        for mid, want in list(self.contents.items()):
            if not map_alive(mid):
                del self.contents[mid]
                continue
            name = next(
                (m for (c, m), i in new_map_ids.items() if i == mid),
                next((m for m, fm in self.foreign_maps.items() if fm.id == mid), None),
            )
            if name is None:
                continue
            got = read_contents(mid, name)
            assert got == want, f"map {name} (id {mid}): contents {got!r}, expected {want!r}"
        self.map_ids = new_map_ids
        self.prog_ids = new_prog_ids
        # foreign objects are untouched
        for path, (kind, oid) in self.foreign_pins.items():
            assert pinned_id(path, kind) == oid, f"foreign pin {path} lost (id {oid})"
        if self.foreign_xdp is not None:
            b = self.w.veth.b
            held = ebpf_links.xdp_attached(b.name, b.ns.path)
            assert held is not None and held.prog_id == self.foreign_xdp, held
            assert held.link_id is None
        # nothing leaked: counted by id
        tagged = tagged_programs(self.run_tag, self.started_ns)
        self.seen_progs |= tagged | expected_progs
        self.seen_maps |= expected_maps
        self.seen_links |= expected_links | links_of(tagged)
        foreign_ids = {i for _k, i in self.foreign_pins.values()} | {
            m.id for m in self.foreign_maps.values()
        }

        def no_leaks() -> bool:
            return (
                {i for i in self.seen_progs if prog_alive(i)} == expected_progs
                and {i for i in self.seen_maps - foreign_ids if map_alive(i)} <= expected_maps
                and {i for i in self.seen_links if link_alive(i)} == expected_links
                and tagged_programs(self.run_tag, self.started_ns) == expected_progs
            )

        # a program's maps are put after an RCU grace period and a work item: on a loaded
        # machine that can take seconds, so wait long before calling it a leak
        if not settle(no_leaks, timeout=15.0):
            progs = {i for i in self.seen_progs if prog_alive(i)}
            progs |= tagged_programs(self.run_tag, self.started_ns)
            maps = {i for i in self.seen_maps - foreign_ids if map_alive(i)}
            links = {i for i in self.seen_links if link_alive(i)}
            raise AssertionError(
                f"leaked: programs {sorted(progs - expected_progs)}, "
                f"maps {describe_maps(maps - expected_maps)}, "
                f"links {sorted(links - expected_links)} "
                f"(missing: programs {sorted(expected_progs - progs)}, "
                f"links {sorted(expected_links - links)})"
            )

    def check_nothing_of_ours_left(self) -> None:
        """After destroy --all: no collection directory, and no program, map or link of
        ours alive (foreign objects are checked by the invariant)."""
        if self.root.exists():
            assert set(os.listdir(self.root)) == self.foreign_top, os.listdir(self.root)
        st_ = self.reconciler().status()
        assert not st_.collections, st_
