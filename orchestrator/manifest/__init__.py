"""Manifests: YAML documents -> validated, frozen desired state.

```python
from orchestrator.manifest import ManifestError, load_manifests

try:
    state = load_manifests([Path("manifests/")])
except ManifestError as err:
    for problem in err.problems:      # ManifestProblem(source, field, message, hint)
        print(problem)                # file:line:col: spec.maps.x: message (hint)
```
"""

from __future__ import annotations

from orchestrator.manifest.cache import ObjectSnapshot, ObjectStore, object_info, object_spec
from orchestrator.manifest.errors import ManifestError, ManifestProblem
from orchestrator.manifest.loader import digest, load_manifests, manifest_files
from orchestrator.manifest.model import (
    API_GROUP,
    API_VERSION,
    DEPRECATED_API_VERSIONS,
    KIND_COLLECTION,
    Attachment,
    CgroupTarget,
    DesiredCollection,
    DesiredState,
    Direction,
    MapFrom,
    MapOptions,
    NetnsTarget,
    OnIncompatible,
    RawTracepointTarget,
    Source,
    Target,
    TcTarget,
    TracepointTarget,
    UprobeTarget,
    XdpMode,
    XdpTarget,
)
from orchestrator.manifest.objects import ObjectError, ObjectInfo
from orchestrator.manifest.schema import crd, schema

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "DEPRECATED_API_VERSIONS",
    "KIND_COLLECTION",
    "Attachment",
    "CgroupTarget",
    "DesiredCollection",
    "DesiredState",
    "Direction",
    "ManifestError",
    "ManifestProblem",
    "MapFrom",
    "MapOptions",
    "NetnsTarget",
    "ObjectError",
    "ObjectInfo",
    "ObjectSnapshot",
    "ObjectStore",
    "OnIncompatible",
    "RawTracepointTarget",
    "Source",
    "Target",
    "TcTarget",
    "TracepointTarget",
    "UprobeTarget",
    "XdpMode",
    "XdpTarget",
    "crd",
    "digest",
    "load_manifests",
    "manifest_files",
    "object_info",
    "object_spec",
    "schema",
]
