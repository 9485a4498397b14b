"""The seam between the daemon and the declarative layer.

The daemon only needs three things: turn manifest paths into a validated desired state,
apply a desired state, and remove everything (``--detach-on-exit``). :class:`Backend` is
that protocol; :class:`DeclarativeBackend` implements it with
:func:`orchestrator.manifest.load_manifests` and :class:`orchestrator.reconcile.Reconciler`.
Tests of the debounce and notification logic inject a fake; kernel tests use the real one.

Validation happens entirely before the kernel is touched: ``load_manifests`` checks the
schema and the semantics and parses every referenced object file (cached by size, mtime and
inode, so an unchanged object is not parsed again). An object that does not parse (for
example half-written by ``make``) is treated exactly like an invalid manifest:
:class:`InvalidStateError`, and the last good state stays live.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from orchestrator.manifest.model import DesiredState
from orchestrator.service.errors import ServiceError

if TYPE_CHECKING:
    from orchestrator.manifest.cache import ObjectStore
    from orchestrator.reconcile import Reconciler

_log = logging.getLogger(__name__)


class InvalidStateError(ServiceError):
    """The manifests or an object file they reference are invalid; nothing was applied.
    ``problems`` holds one line per problem, each starting with ``file:line:col``."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems) or (message,)


class ApplyFailedError(ServiceError):
    """Applying failed; the reconciler rolled back, so the previous state is still live.
    ``rejected``: the verifier rejected a program."""

    def __init__(self, message: str, *, rejected: bool = False) -> None:
        super().__init__(message)
        self.rejected = rejected


@dataclass(frozen=True, slots=True)
class ApplySummary:
    """What one apply did, for ``STATUS=`` and the logs."""

    collections: int  # collections declared (and now applied)
    changed: int  # collections created, updated, replaced or removed by this apply

    def __str__(self) -> str:
        noun = "collection" if self.collections == 1 else "collections"
        return f"{self.collections} {noun} applied, {self.changed} changed"


class Backend(Protocol):
    def load(self, paths: Sequence[Path]) -> DesiredState:
        """Validate manifests (and objects); raise :class:`InvalidStateError`."""
        ...

    def apply(self, desired: DesiredState, prune: bool) -> ApplySummary:
        """Make the kernel match ``desired``; raise :class:`ApplyFailedError`."""
        ...

    def destroy_all(self) -> None:
        """Remove every owned collection (``--detach-on-exit``)."""
        ...


class DeclarativeBackend:
    """The real backend: manifest loader + reconciler on one bpffs root and state dir,
    both reading through ``store`` (a new :class:`ObjectStore` if None)."""

    def __init__(self, bpffs_root: Path, state_dir: Path, store: ObjectStore | None = None) -> None:
        from orchestrator.manifest.cache import ObjectStore
        from orchestrator.reconcile import Reconciler

        self._store = ObjectStore() if store is None else store
        self._reconciler: Reconciler = Reconciler(
            bpffs_root=bpffs_root, state_dir=state_dir, store=self._store
        )

    def load(self, paths: Sequence[Path]) -> DesiredState:
        from orchestrator.manifest import load_manifests
        from orchestrator.manifest.errors import ManifestError

        try:
            desired = load_manifests(list(paths), store=self._store)
        except ManifestError as err:
            problems = [str(p) for p in err.problems]
            raise InvalidStateError(_summary("invalid manifest", problems), problems) from err
        for warning in desired.warnings:
            _log.warning("%s", warning)
        return desired

    @property
    def reconciler(self) -> Reconciler:
        return self._reconciler

    def apply(self, desired: DesiredState, prune: bool) -> ApplySummary:
        from orchestrator.reconcile import Op, ReconcileError

        try:
            result = self._reconciler.apply(desired, prune=prune)
        except ReconcileError as err:
            raise ApplyFailedError(
                f"apply failed: {_first_line(err)}", rejected=_rejected(err)
            ) from err
        for warning in result.warnings:
            _log.warning("%s", warning)
        changed = (
            {c.collection for c in result.plan.changes if c.op is not Op.NOOP}
            if result.applied
            else set()
        )
        return ApplySummary(collections=len(desired.collections), changed=len(changed))

    def destroy_all(self) -> None:
        from orchestrator.reconcile import ReconcileError

        try:
            self._reconciler.destroy(None)
        except ReconcileError as err:
            raise ApplyFailedError(f"detach on exit failed: {_first_line(err)}") from err


def _rejected(err: BaseException) -> bool:
    """Whether the verifier's rejection is behind an error."""
    from orchestrator.ebpf import VerifierError

    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, VerifierError):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def _first_line(err: Exception) -> str:
    """Plan errors list their problems on the following lines: keep them on one line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return "; ".join(lines)


def _summary(what: str, problems: Sequence[str]) -> str:
    text = f"{what}: {problems[0]}" if problems else what
    if len(problems) > 1:
        text += f" (and {len(problems) - 1} more)"
    return text
