"""The pure rules the planner applies: link kinds and pin names, load keys, which maps are
pinned, how an attachment's fields compare with its record, and the order of collections.
Nothing here makes a syscall or reads a file."""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import fields
from pathlib import Path

from orchestrator.manifest.model import (
    Attachment,
    CgroupTarget,
    DesiredCollection,
    DesiredState,
    NetnsTarget,
    OnIncompatible,
    RawTracepointTarget,
    Target,
    TcTarget,
    TracepointTarget,
    UprobeTarget,
    XdpTarget,
)
from orchestrator.reconcile.lines import FieldDiff
from orchestrator.reconcile.state import (
    ActualCollection,
    AttachmentRecord,
    CollectionFacts,
    CollectionRecord,
    MapShape,
    TargetValue,
)


def target_kind(target: Target) -> str:
    """The link kind of a target, as stored in the record."""
    if isinstance(target, XdpTarget):
        return "xdp"
    if isinstance(target, TcTarget):
        return "tc"
    if isinstance(target, CgroupTarget):
        return "cgroup"
    if isinstance(target, TracepointTarget):
        return "tracepoint"
    if isinstance(target, RawTracepointTarget):
        return "raw_tracepoint"
    if isinstance(target, UprobeTarget):
        return "uretprobe" if target.retprobe else "uprobe"
    if isinstance(target, NetnsTarget):
        return "netns"
    raise TypeError(f"unknown target {target!r}")


def link_pin_name(a: Attachment) -> str:
    """A stable file name for an attachment's link pin (no version, no generation)."""
    import hashlib

    digest = hashlib.sha256(a.target.key().encode()).hexdigest()[:12]
    return f"{a.program}-{target_kind(a.target)}-{digest}"


def describe_target(target: Target) -> str:
    if isinstance(target, XdpTarget):
        ns = f" in {target.netns}" if target.netns else ""
        return f"interface {target.interface}{ns}"
    if isinstance(target, TcTarget):
        ns = f" in {target.netns}" if target.netns else ""
        return f"interface {target.interface}{ns} ({target.direction.value})"
    if isinstance(target, CgroupTarget):
        return f"cgroup {target.path}"
    return target.key()


def load_key(d: DesiredCollection, object_sha256: str, *, legacy: bool = False) -> str:
    """What the loaded programs and maps of ``d`` depend on, as a digest: the object, the
    constants, the map options and the program binding (not labels, not attachments).

    ``pin`` is not part of it (pinning and unpinning a live map needs no reload), and
    neither are maps whose other options are all defaults (``m: {pin: true}`` is no map
    option). ``legacy``: the key as records written before that change hold it (``pin``
    and every named map included), so those collections are kept, not reloaded, the first
    time their pins are brought in line."""
    import hashlib

    maps = {
        name: ([mo.pin] if legacy else [])
        + [
            mo.preserve,
            mo.max_entries,
            mo.on_incompatible.value,
            None
            if mo.source_from is None
            else [mo.source_from.collection, mo.source_from.map, str(mo.source_from.pinned)],
        ]
        for name, mo in sorted(d.maps.items())
        if legacy
        or mo.preserve
        or mo.max_entries is not None
        or mo.on_incompatible is not OnIncompatible.FAIL
        or mo.source_from is not None
    }
    doc = [
        object_sha256,
        str(d.object_file),
        sorted((k, repr(v)) for k, v in d.constants.items()),
        maps,
        list(d.programs) if d.programs is not None else None,
    ]
    return hashlib.sha256(_SORTED_JSON.encode(doc).encode()).hexdigest()


# what json.dumps(doc, sort_keys=True) writes, without making an encoder for each call (a
# third of a load key's cost); a JSONEncoder keeps no state between calls
_SORTED_JSON = json.JSONEncoder(sort_keys=True)


def previous_link(
    d: DesiredCollection, old: Mapping[str, AttachmentRecord], key: str, kind: str
) -> AttachmentRecord | None:
    """For a new xdp or netns attachment: the recorded link of this collection on the same
    hook whose program is no longer attached there (the program was renamed or swapped).
    Such a hook takes one program, so that link is switched in place instead of attaching a
    second one (which the kernel refuses with EBUSY/EEXIST)."""
    if kind not in ("xdp", "netns"):
        return None
    hook = key.split("@", 1)[1]
    wanted = {a.key() for a in d.attach}
    for ra in old.values():
        if ra.key not in wanted and ra.key.split("@", 1)[1] == hook:
            return ra
    return None


def target_fields(target: Target) -> dict[str, TargetValue]:
    """Every field of a target as a JSON value (paths as text, enums by value, unset fields
    None): what the record keeps of an attachment and what a plan compares field by field."""
    out: dict[str, TargetValue] = {}
    for f in fields(target):
        value = getattr(target, f.name)
        if isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, Path):
            value = str(value)
        out[f.name] = value
    return out


def _shown(value: TargetValue) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def field_changes(ra: AttachmentRecord, target: Target) -> list[str]:
    """The fields of ``target`` that differ from what ``ra`` recorded, as "xdp mode
    generic -> native" (nothing for records that kept no fields)."""
    if ra.target is None:
        return []
    kind = "xdp" if isinstance(target, XdpTarget) else ra.kind
    new = target_fields(target)
    return [
        f"{kind} {name} {_shown(ra.target.get(name))} -> {_shown(value)}"
        for name, value in new.items()
        if ra.target.get(name) != value
    ]


def field_diffs(ra: AttachmentRecord, target: Target) -> tuple[FieldDiff, ...]:
    """:func:`field_changes` as values: each option of ``target`` that differs from what
    ``ra`` recorded (``mode: generic → native``)."""
    if ra.target is None:
        return ()
    return tuple(
        FieldDiff(name, ra.target.get(name), value)
        for name, value in target_fields(target).items()
        if ra.target.get(name) != value
    )


def _netns_name(value: TargetValue) -> str:
    text = str(value)
    for base in ("/var/run/netns/", "/run/netns/"):
        if text.startswith(base) and "/" not in text[len(base) :]:
            return text[len(base) :]
    return text


def attachment_title(program: str, kind: str, target: Mapping[str, TargetValue] | None) -> str:
    """An attachment as a plan line names it: ``xdp_count → xdp veth0 (netns blue)``,
    shorter than its key. ``kind``: the record's link kind; ``target``: the target's fields
    (:func:`target_fields`; None: unknown, the key is shown instead)."""
    if target is None:
        return ""
    t = target
    ns = f" (netns {_netns_name(t['netns'])})" if t.get("netns") else ""
    if kind == "xdp":
        hook = f"xdp {t.get('interface')}{ns}"
    elif kind == "tc":
        hook = f"tc {t.get('interface')} {t.get('direction')}{ns}"
    elif kind == "cgroup":
        hook = f"cgroup {t.get('path')} {t.get('attach')}"
    elif kind == "tracepoint":
        hook = f"tracepoint {t.get('group')}/{t.get('name')}"
    elif kind == "raw_tracepoint":
        hook = f"raw_tracepoint {t.get('name')}"
    elif kind in ("uprobe", "uretprobe"):
        where = f"{t.get('symbol')}+{t.get('offset')}" if t.get("symbol") else f"{t.get('offset')}"
        pid = f" (pid {t['pid']})" if t.get("pid") else ""
        hook = f"{kind} {t.get('path')}:{where}{pid}"
    elif kind == "netns":
        hook = f"netns {_netns_name(t['netns'])}" if t.get("netns") else "netns (own)"
    else:
        return ""
    return f"{program} → {hook}"


def title_of(a: Attachment) -> str:
    return attachment_title(a.program, target_kind(a.target), target_fields(a.target))


def collection_diffs(
    d: DesiredCollection, rec: CollectionRecord, facts: CollectionFacts | None
) -> tuple[FieldDiff, ...]:
    """What changes in a collection as a whole, old → new: its object (file and digest),
    each constant whose value differs (the live generation's, read back from the kernel,
    against what will be loaded) and each label. Maps, programs and attachments say their
    own changes on their lines."""
    out: list[FieldDiff] = []
    if rec.object_file != str(d.object_file):
        out.append(FieldDiff("object file", rec.object_file, str(d.object_file)))
    sha = facts.object_sha256 if facts is not None else ""
    if sha and rec.object_sha256 and sha != rec.object_sha256:
        out.append(FieldDiff("object", f"sha256:{rec.object_sha256}", f"sha256:{sha}"))
    new = facts.constants if facts is not None else None
    old = facts.live_constants if facts is not None else None
    if new is not None and old is not None:
        for name in sorted(set(new) | set(old)):
            if new.get(name) != old.get(name):
                out.append(FieldDiff(f"constant {name}", old.get(name), new.get(name)))
    if rec.labels is not None:
        for key in sorted(set(rec.labels) | set(d.labels)):
            if rec.labels.get(key) != d.labels.get(key):
                out.append(FieldDiff(f"label {key}", rec.labels.get(key), d.labels.get(key)))
    return tuple(out)


def changed_parts(
    d: DesiredCollection,
    rec: CollectionRecord,
    facts: CollectionFacts | None,
    diffs: tuple[FieldDiff, ...],
) -> str:
    """What changed in a collection whose digest changed, in a few words: the fields of
    ``diffs`` (:func:`collection_diffs`), then each map whose options or size changed, the
    program binding and the attachments ("changed: constant version, map counters"). The
    manifest's other fields (``sha256``, ``on_incompatible``) are recorded by digest only:
    "manifest changed" when nothing else did."""
    parts = [x.field for x in diffs]
    shapes = facts.maps if facts is not None else {}
    for mname, mo in sorted(d.maps.items()):
        mr = rec.maps.get(mname)
        if mr is None:
            continue
        sf = mo.source_from
        src = source_key(sf.collection, sf.map or mname, sf.pinned) if sf is not None else ""
        shape = shapes.get(mname)
        if (
            mr.source != src
            or (not src and mr.preserve != mo.preserve)
            or (shape is not None and shape.max_entries != mr.shape.max_entries)
        ):
            parts.append(f"map {mname}")
    if d.programs is not None and set(d.programs) != set(rec.programs):
        parts.append("programs")
    old = rec.attachments
    if {a.key() for a in d.attach} != set(old) or any(
        a.key() in old and field_diffs(old[a.key()], a.target) for a in d.attach
    ):
        parts.append("attachments")
    if not parts:
        return "manifest changed"
    return "changed: " + ", ".join(parts)


def _xdp_mode_change(ra: AttachmentRecord, t: XdpTarget, actual: ActualCollection) -> str | None:
    """Why an XDP link must be attached anew for its mode, or None. The mode a link runs
    in is fixed when it is made; ``auto`` accepts whatever mode the kernel chose."""
    for x in actual.drift:
        if x.kind == "attachment" and x.name == ra.key and x.code == "mode":
            return f"repair drift: {x.message}"
    want = t.mode.value
    # the kernel's mode as observed when the link was made; else the declared one
    have = ra.mode or (ra.target or {}).get("mode")
    if want == "auto" or have is None or have == want:
        return None
    return f"xdp mode {have} -> {want}"


def _tc_position_change(ra: AttachmentRecord, t: TcTarget, actual: ActualCollection) -> str | None:
    """Why a tcx link must be placed anew, or None. Dropping before/after keeps the link
    where it is."""
    for x in actual.drift:
        if x.kind == "attachment" and x.name == ra.key and x.code == "order":
            return f"repair drift: {x.message}"
    if ra.target is None or (t.before is None and t.after is None):
        return None
    was = (ra.target.get("before"), ra.target.get("after"))
    if was == (t.before, t.after):
        return None
    old = f"before {was[0]}" if was[0] else f"after {was[1]}" if was[1] else "appended"
    new = f"before {t.before}" if t.before else f"after {t.after}"
    return f"tc position {old} -> {new}"


def reattached(d: DesiredCollection, actual: ActualCollection | None) -> dict[str, str]:
    """Attachment key -> why its live link is replaced by a new link on the same hook: an
    XDP mode (the kernel cannot change it in place), a tcx position (a link cannot move),
    or a tcx link placed relative to one that is itself attached anew."""
    if actual is None:
        return {}
    old = actual.record.attachments

    def gone(key: str) -> bool:
        return key not in old or actual.drifted(
            "attachment", key, "missing", "replaced", "detached"
        )

    out: dict[str, str] = {}
    for a in d.attach:
        key = a.key()
        ra = old.get(key)
        if ra is None and isinstance(a.target, XdpTarget):
            ra = previous_link(d, old, key, "xdp")
        if ra is None or gone(ra.key):
            continue
        why = None
        if isinstance(a.target, XdpTarget):
            why = _xdp_mode_change(ra, a.target, actual)
        elif isinstance(a.target, TcTarget):
            why = _tc_position_change(ra, a.target, actual)
        if why is not None:
            out[key] = why
    changed = True
    while changed:
        changed = False
        for a in d.attach:
            t = a.target
            if not isinstance(t, TcTarget):
                continue
            anchor = t.before or t.after
            if anchor is None or a.key() in out or gone(a.key()):
                continue
            if f"{anchor}@{t.key()}" in out or gone(f"{anchor}@{t.key()}"):
                rel = "before" if t.before else "after"
                out[a.key()] = f"{anchor} is attached anew, so this link is placed {rel} it again"
                changed = True
    return out


def xdp_reattach(ra: AttachmentRecord, a: Attachment) -> str:
    assert isinstance(a.target, XdpTarget)
    return (
        f"re-attach: link {ra.link_id} is detached, then {a.program} is attached in "
        f"{a.target.mode.value} mode by a new link (an XDP link's mode is fixed: the "
        "interface runs no XDP program for a moment)"
    )


def tc_reattach(ra: AttachmentRecord, a: Attachment) -> str:
    assert isinstance(a.target, TcTarget)
    t = a.target
    where = f"before {t.before}" if t.before else f"after {t.after}" if t.after else "last"
    return (
        f"make-before-break: {a.program} is attached {where} by a new link, then link "
        f"{ra.link_id} is detached (a tcx link cannot move: a new program instance runs "
        "beside the old one for a moment)"
    )


def topo_order(deps: Mapping[str, Iterable[str]]) -> tuple[list[str], list[str]]:
    """Names ordered so that each comes after what it depends on (ties by name), and the
    names caught in a cycle (appended last)."""
    remaining = {n: {d for d in ds if d in deps and d != n} for n, ds in deps.items()}
    out: list[str] = []
    while remaining:
        ready = sorted(n for n, ds in remaining.items() if not ds)
        if not ready:
            cyclic = sorted(remaining)
            return out + cyclic, cyclic
        for n in ready:
            out.append(n)
            del remaining[n]
        for ds in remaining.values():
            ds.difference_update(ready)
    return out, []


def pin_file(name: str) -> str:
    """A map name as a bpffs file name (bpffs refuses dots)."""
    return name.replace(".", "_")


def source_key(collection: str | None, map_name: str, pinned: Path | None) -> str:
    if pinned is not None:
        return f"pinned:{pinned}"
    return f"collection/{collection}/{map_name}"


PROG_ARRAY = 3  # BPF_MAP_TYPE_PROG_ARRAY (plan imports nothing from the loader)


class PinRules:
    """Which maps of a desired state are pinned at ``maps/<name>`` (see :meth:`reason`).
    Built once per desired state: the index of ``from`` substitutions is made here, so a
    question costs a few dict lookups however many collections there are."""

    @classmethod
    def of(cls, desired: DesiredState) -> PinRules:
        """The rules of ``desired``, made once: the facts and the plan of one reconcile
        ask the same desired state (the last one asked is kept)."""
        global _LAST_PIN_RULES
        last = _LAST_PIN_RULES
        if last is not None and last.desired is desired:
            return last
        _LAST_PIN_RULES = rules = cls(desired)
        return rules

    def __init__(self, desired: DesiredState) -> None:
        self.desired = desired
        users: dict[tuple[str, str], list[str]] = {}
        for d in desired.collections.values():
            for mo in d.maps.values():
                sf = mo.source_from
                if sf is not None and sf.collection is not None:
                    users.setdefault((sf.collection, sf.map or mo.name), []).append(d.name)
        self.users = {k: sorted(v) for k, v in users.items()}
        # collection -> (the collection, the record, their changes): the facts and the
        # plan ask the same question of each unchanged collection; answered again for
        # another collection or record object of that name
        self._changes: dict[
            str, tuple[DesiredCollection, CollectionRecord, Mapping[str, str | None]]
        ] = {}

    def reason(self, coll: str, mname: str, shape: MapShape | None) -> str | None:
        """Why map ``mname`` (of shape ``shape``) of collection ``coll`` is pinned at
        ``maps/<name>``, or None if it is not (its programs hold it). A map is pinned when
        the manifest says ``pin: true``, and whatever it says when it is preserved (the next
        generation opens it there), when another collection substitutes it (``from``: that
        collection opens it there), when it is a prog array (the kernel empties a prog array
        when no pin or fd holds it, and the tail calls through it stop) or when its values
        hold timers (the kernel cancels them, and bpf_timer_init fails with EPERM, without a
        pin or fd). A substituted map is someone else's: never pinned by us."""
        d = self.desired.collections.get(coll)
        mo = d.maps.get(mname) if d is not None else None
        if mo is not None and mo.source_from is not None:
            return None
        if mo is not None and mo.preserve:
            return "preserve: true"
        if mo is not None and mo.pin:
            return "pin: true"
        if shape is not None and shape.type == PROG_ARRAY:
            return "a prog array is always pinned: the kernel empties it when nothing holds it"
        if shape is not None and shape.timers:
            return "its values hold timers: the kernel cancels them when nothing holds the map"
        users = self.users.get((coll, mname))
        if users is not None:
            return f"collection {', '.join(users)} uses it (from)"
        return None

    def changes(self, d: DesiredCollection, rec: CollectionRecord) -> Mapping[str, str | None]:
        """The recorded maps of ``d`` whose pin must be added (name -> why) or removed (name
        -> None); a pure function of the record and the manifests (both never changed once
        made), so computed once per collection and record."""
        known = self._changes.get(d.name)
        if known is not None and known[0] is d and known[1] is rec:
            return known[2]
        out: dict[str, str | None] = {}
        for mname, mr in rec.maps.items():
            if mr.source:
                continue
            why = self.reason(d.name, mname, mr.shape)
            if (why is not None) != bool(mr.pin):
                out[mname] = why
        self._changes[d.name] = (d, rec, out)
        return out


def pin_reason(desired: DesiredState, coll: str, mname: str, shape: MapShape | None) -> str | None:
    """:meth:`PinRules.reason` for one question (build a :class:`PinRules` for many)."""
    return PinRules.of(desired).reason(coll, mname, shape)


_LAST_PIN_RULES: PinRules | None = None
