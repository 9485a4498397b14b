"""The declarative engine: observe the kernel, plan a pure diff, apply it as a transaction.

```python
from orchestrator.manifest import load_manifests
from orchestrator.reconcile import Reconciler

r = Reconciler()                                   # /sys/fs/bpf/bpforch, /run/bpforch
p = r.plan(load_manifests([Path("manifests/")]))   # Plan: changes, problems, counts()
result = r.apply(load_manifests([Path("manifests/")]))
print(r.status().to_json())
```

Apply is all-or-nothing across the whole desired state: everything new is loaded and pinned
under a staging directory, attachments are switched (link update in place, or
make-before-break), then each collection directory is swapped into place atomically and the
record written. A failure before that restores the previous generation exactly. When only
labels or attachments change, the live programs and maps are kept and only links change.
``apply(dry_run=True)`` only plans; ``apply(dry_run="kernel")`` also loads everything
through the verifier and closes it again.

Layout: ``<bpffs_root>/<collection>/{maps,progs,links}/<name>`` (no version in any name),
the record in ``<state_dir>/state.json``. A root has one state directory (its ownership
marker ``<bpffs_root>/_owner`` names it; another one is refused) and applies are serialized
by an flock on the root itself. bpforch removes only what it can prove it created (the
record, or the ownership marker pinned in each tree); everything else under the root is
:class:`Foreign` and left alone (see :mod:`orchestrator.reconcile.owner`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator import _lazy

if TYPE_CHECKING:
    from orchestrator.reconcile.collection_status import (
        AttachmentStatus,
        CollectionStatus,
        MapStatus,
        ProgramStatus,
        Status,
    )
    from orchestrator.reconcile.defaults import DEFAULT_BPFFS_ROOT, DEFAULT_STATE_DIR
    from orchestrator.reconcile.errors import (
        ApplyError,
        PlanError,
        ReconcileError,
        RecordError,
        StateError,
    )
    from orchestrator.reconcile.failpoints import STEPS, Failpoints, NoFailpoints, Step
    from orchestrator.reconcile.plan import Change, Kind, Op, Plan, PlanProblem, plan, plan_destroy
    from orchestrator.reconcile.reconciler import ApplyResult, Reconciler
    from orchestrator.reconcile.state import (
        ActualCollection,
        ActualState,
        AttachmentRecord,
        CollectionFacts,
        CollectionRecord,
        Drift,
        Facts,
        Foreign,
        MapRecord,
        MapShape,
        Ownership,
        ProgramRecord,
        StateRecord,
        TargetFacts,
    )

__all__ = [
    "DEFAULT_BPFFS_ROOT",
    "DEFAULT_STATE_DIR",
    "STEPS",
    "ActualCollection",
    "ActualState",
    "ApplyError",
    "ApplyResult",
    "AttachmentRecord",
    "AttachmentStatus",
    "Change",
    "CollectionFacts",
    "CollectionRecord",
    "CollectionStatus",
    "Drift",
    "Facts",
    "Failpoints",
    "Foreign",
    "Kind",
    "MapRecord",
    "MapShape",
    "MapStatus",
    "NoFailpoints",
    "Op",
    "Ownership",
    "Plan",
    "PlanError",
    "PlanProblem",
    "ProgramRecord",
    "ProgramStatus",
    "ReconcileError",
    "Reconciler",
    "RecordError",
    "StateError",
    "StateRecord",
    "Status",
    "Step",
    "TargetFacts",
    "plan",
    "plan_destroy",
]

_EXPORTS = {
    "ActualCollection": "orchestrator.reconcile.state:ActualCollection",
    "ActualState": "orchestrator.reconcile.state:ActualState",
    "ApplyError": "orchestrator.reconcile.errors:ApplyError",
    "ApplyResult": "orchestrator.reconcile.reconciler:ApplyResult",
    "AttachmentRecord": "orchestrator.reconcile.state:AttachmentRecord",
    "AttachmentStatus": "orchestrator.reconcile.collection_status:AttachmentStatus",
    "Change": "orchestrator.reconcile.plan:Change",
    "CollectionFacts": "orchestrator.reconcile.state:CollectionFacts",
    "CollectionRecord": "orchestrator.reconcile.state:CollectionRecord",
    "CollectionStatus": "orchestrator.reconcile.collection_status:CollectionStatus",
    "DEFAULT_BPFFS_ROOT": "orchestrator.reconcile.defaults:DEFAULT_BPFFS_ROOT",
    "DEFAULT_STATE_DIR": "orchestrator.reconcile.defaults:DEFAULT_STATE_DIR",
    "Drift": "orchestrator.reconcile.state:Drift",
    "Facts": "orchestrator.reconcile.state:Facts",
    "Failpoints": "orchestrator.reconcile.failpoints:Failpoints",
    "Foreign": "orchestrator.reconcile.state:Foreign",
    "Kind": "orchestrator.reconcile.plan:Kind",
    "MapRecord": "orchestrator.reconcile.state:MapRecord",
    "MapShape": "orchestrator.reconcile.state:MapShape",
    "MapStatus": "orchestrator.reconcile.collection_status:MapStatus",
    "NoFailpoints": "orchestrator.reconcile.failpoints:NoFailpoints",
    "Op": "orchestrator.reconcile.plan:Op",
    "Ownership": "orchestrator.reconcile.state:Ownership",
    "Plan": "orchestrator.reconcile.plan:Plan",
    "PlanError": "orchestrator.reconcile.errors:PlanError",
    "PlanProblem": "orchestrator.reconcile.plan:PlanProblem",
    "ProgramRecord": "orchestrator.reconcile.state:ProgramRecord",
    "ProgramStatus": "orchestrator.reconcile.collection_status:ProgramStatus",
    "ReconcileError": "orchestrator.reconcile.errors:ReconcileError",
    "Reconciler": "orchestrator.reconcile.reconciler:Reconciler",
    "RecordError": "orchestrator.reconcile.errors:RecordError",
    "STEPS": "orchestrator.reconcile.failpoints:STEPS",
    "StateError": "orchestrator.reconcile.errors:StateError",
    "StateRecord": "orchestrator.reconcile.state:StateRecord",
    "Status": "orchestrator.reconcile.collection_status:Status",
    "Step": "orchestrator.reconcile.failpoints:Step",
    "TargetFacts": "orchestrator.reconcile.state:TargetFacts",
    "plan": "orchestrator.reconcile.plan:plan",
    "plan_destroy": "orchestrator.reconcile.plan:plan_destroy",
}

_lazy.install(__name__, _EXPORTS)
