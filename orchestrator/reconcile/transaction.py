"""The apply transaction (stage → switch → commit | rollback). Work in progress."""

from __future__ import annotations

from pathlib import Path

from orchestrator.manifest.model import DesiredState
from orchestrator.reconcile.hooks import Hooks
from orchestrator.reconcile.plan import Plan
from orchestrator.reconcile.state import ActualState


class Transaction:
    def __init__(
        self,
        root: Path,
        state_dir: Path,
        hooks: Hooks,
        desired: DesiredState,
        actual: ActualState,
        plan: Plan,
    ) -> None:
        self.root, self.state_dir, self.hooks = root, state_dir, hooks
        self.desired, self.actual, self.plan = desired, actual, plan

    def run(self) -> tuple[dict[str, int], list[str]]:
        raise NotImplementedError("apply is not implemented yet")
