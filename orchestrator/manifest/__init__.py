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

from typing import TYPE_CHECKING

from orchestrator import _lazy

if TYPE_CHECKING:
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
        EntriesMode,
        MapEntry,
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
    "EntriesMode",
    "ManifestError",
    "ManifestProblem",
    "MapEntry",
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

_EXPORTS = {
    "API_GROUP": "orchestrator.manifest.model:API_GROUP",
    "API_VERSION": "orchestrator.manifest.model:API_VERSION",
    "Attachment": "orchestrator.manifest.model:Attachment",
    "CgroupTarget": "orchestrator.manifest.model:CgroupTarget",
    "DEPRECATED_API_VERSIONS": "orchestrator.manifest.model:DEPRECATED_API_VERSIONS",
    "DesiredCollection": "orchestrator.manifest.model:DesiredCollection",
    "DesiredState": "orchestrator.manifest.model:DesiredState",
    "Direction": "orchestrator.manifest.model:Direction",
    "EntriesMode": "orchestrator.manifest.model:EntriesMode",
    "KIND_COLLECTION": "orchestrator.manifest.model:KIND_COLLECTION",
    "ManifestError": "orchestrator.manifest.errors:ManifestError",
    "ManifestProblem": "orchestrator.manifest.errors:ManifestProblem",
    "MapEntry": "orchestrator.manifest.model:MapEntry",
    "MapFrom": "orchestrator.manifest.model:MapFrom",
    "MapOptions": "orchestrator.manifest.model:MapOptions",
    "NetnsTarget": "orchestrator.manifest.model:NetnsTarget",
    "ObjectError": "orchestrator.manifest.objects:ObjectError",
    "ObjectInfo": "orchestrator.manifest.objects:ObjectInfo",
    "ObjectSnapshot": "orchestrator.manifest.cache:ObjectSnapshot",
    "ObjectStore": "orchestrator.manifest.cache:ObjectStore",
    "OnIncompatible": "orchestrator.manifest.model:OnIncompatible",
    "RawTracepointTarget": "orchestrator.manifest.model:RawTracepointTarget",
    "Source": "orchestrator.manifest.model:Source",
    "Target": "orchestrator.manifest.model:Target",
    "TcTarget": "orchestrator.manifest.model:TcTarget",
    "TracepointTarget": "orchestrator.manifest.model:TracepointTarget",
    "UprobeTarget": "orchestrator.manifest.model:UprobeTarget",
    "XdpMode": "orchestrator.manifest.model:XdpMode",
    "XdpTarget": "orchestrator.manifest.model:XdpTarget",
    "crd": "orchestrator.manifest.schema:crd",
    "digest": "orchestrator.manifest.loader:digest",
    "load_manifests": "orchestrator.manifest.loader:load_manifests",
    "manifest_files": "orchestrator.manifest.loader:manifest_files",
    "object_info": "orchestrator.manifest.cache:object_info",
    "object_spec": "orchestrator.manifest.cache:object_spec",
    "schema": "orchestrator.manifest.schema:schema",
}

_lazy.install(__name__, _EXPORTS)
