"""Label selectors (``--selector``): which collections plan, apply, status and destroy act on,
by their labels, as kubectl's equality-based selectors choose objects.

A selector is a list of requirements, all of which must hold: ``key=value`` (or
``key==value``), ``key!=value`` (the label is not set, or set to another value), ``key``
(the label is set) and ``!key`` (it is not). Requirements are separated by commas; a
repeated ``--selector`` adds its requirements to the others. Keys and values follow the
rules of Kubernetes labels (a key: an optional DNS-subdomain prefix and ``/``, then a name of
at most 63 letters, digits, ``-``, ``_`` and ``.``, beginning and ending alphanumeric; a
value: the same as a name, or empty).

An applied collection is selected by the labels it was applied with (the record keeps them);
one recorded before labels were kept has none known, and no selector selects it.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from orchestrator.manifest.model import DesiredState
from orchestrator.reconcile.errors import ReconcileError
from orchestrator.reconcile.state import ActualState

_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_PREFIX = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_KEY = re.compile(rf"({_PREFIX}/)?{_NAME}")
_VALUE = re.compile(rf"({_NAME})?")
_TERM = re.compile(
    r"\s*(?P<neg>!)?\s*(?P<key>[^=!\s]*)\s*(?:(?P<op>==|!=|=)\s*(?P<value>\S*?))?\s*"
)


class SelectorError(ReconcileError):
    """A selector that can't be parsed: names the requirement and what is wrong."""


class Test(enum.Enum):
    EQUALS = "="
    NOT_EQUALS = "!="
    EXISTS = ""
    NOT_EXISTS = "!"


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    test: Test
    value: str = ""

    def matches(self, labels: Mapping[str, str]) -> bool:
        have = labels.get(self.key)
        if self.test is Test.EQUALS:
            return have == self.value
        if self.test is Test.NOT_EQUALS:
            return have != self.value
        if self.test is Test.EXISTS:
            return have is not None
        return have is None

    def __str__(self) -> str:
        if self.test is Test.EXISTS:
            return self.key
        if self.test is Test.NOT_EXISTS:
            return f"!{self.key}"
        return f"{self.key}{self.test.value}{self.value}"


@dataclass(frozen=True, slots=True)
class Selector:
    """Every requirement must hold. Parse one with :meth:`parse`."""

    requirements: tuple[Requirement, ...]

    @classmethod
    def parse(cls, texts: Iterable[str]) -> Selector:
        """The selector of one or more ``--selector`` arguments; :class:`SelectorError` for
        the first requirement that is not one."""
        out: list[Requirement] = []
        for text in texts:
            for term in text.split(","):
                out.append(_requirement(term, text))
        if len(out) == 0:
            raise SelectorError("selector: empty (give key=value, key!=value, key or !key)")
        return cls(tuple(out))

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        """Whether ``labels`` satisfy every requirement; None (not known) never does."""
        if labels is None:
            return False
        return all(r.matches(labels) for r in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


def _requirement(term: str, text: str) -> Requirement:
    where = f"selector {text!r}"
    if not term.strip():
        raise SelectorError(
            f"{where}: an empty requirement (requirements are separated by single commas)"
        )
    m = _TERM.fullmatch(term)
    if m is None:
        raise SelectorError(
            f"{where}: {term.strip()!r} is not a requirement (write key=value, key!=value, "
            "key or !key)"
        )
    key, op, value, neg = m["key"], m["op"], m["value"] or "", bool(m["neg"])
    if not key:
        raise SelectorError(f"{where}: {term.strip()!r} has no label key (write key=value)")
    if not _KEY.fullmatch(key) or len(key) > 253 + 1 + 63:
        raise SelectorError(
            f"{where}: {key!r} is not a label key (letters, digits, '-', '_' and '.', at most "
            "63, beginning and ending with a letter or digit, after an optional prefix/)"
        )
    if neg and op is not None:
        raise SelectorError(
            f"{where}: {term.strip()!r}: '!' only goes before a bare key (write key!=value)"
        )
    if op is None:
        return Requirement(key, Test.NOT_EXISTS if neg else Test.EXISTS)
    if not _VALUE.fullmatch(value):
        raise SelectorError(
            f"{where}: {value!r} is not a label value (letters, digits, '-', '_' and '.', at "
            "most 63, beginning and ending with a letter or digit, or empty)"
        )
    return Requirement(key, Test.NOT_EQUALS if op == "!=" else Test.EQUALS, value)


def stranded(
    selector: Selector,
    selected: AbstractSet[str],
    desired: DesiredState,
    actual: ActualState,
    gone: AbstractSet[str],
    recreated: AbstractSet[tuple[str, str]],
) -> list[tuple[str, str]]:
    """(collection, problem) for each collection the ``selector`` leaves out that would
    lose a map it takes (``from``) from a ``selected`` one: pruned (``gone``), or
    ``recreated`` under it (it would keep the old map). Declared collections are read
    from their manifests, recorded ones that are not declared from their records."""
    users: list[tuple[str, str, str, str]] = []  # (user, its map, source, source map)
    for name, d in desired.collections.items():
        if name in selected:
            continue
        for mname, mo in d.maps.items():
            sf = mo.source_from
            if sf is not None and sf.collection is not None:
                users.append((name, mname, sf.collection, sf.map or mname))
    for name, ac in actual.collections.items():
        if name in desired.collections or name in gone:
            continue
        for mname, mr in ac.record.maps.items():
            if mr.source.startswith("collection/"):
                _, src, smap = mr.source.split("/", 2)
                users.append((name, mname, src, smap))
    out: list[tuple[str, str]] = []
    for user, mname, src, smap in sorted(users):
        if src in gone:
            out.append(
                (
                    src,
                    f"pruned, but collection {user} uses its map {smap} (map {mname}) and the "
                    f"selector {selector} leaves {user} out (select {user} too, or destroy it "
                    "first)",
                )
            )
        elif src in selected and (src, smap) in recreated:
            out.append(
                (
                    src,
                    f"map {smap} is recreated, but collection {user} uses it (map {mname}) and "
                    f"the selector {selector} leaves {user} out: it would keep the old map "
                    f"(select {user} too)",
                )
            )
    return out


__all__ = ["Requirement", "Selector", "SelectorError", "Test", "stranded"]
