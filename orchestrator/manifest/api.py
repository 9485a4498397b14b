"""The API group, version and kind of manifests (a module of its own: the service
configuration's schema names them without importing the manifest model)."""

from __future__ import annotations

# A Kubernetes API group must contain a dot, so that the same documents can be custom
# resources (``bpforch schema crd``). ``bpforch/v1`` was the first spelling: it is read as
# a deprecated alias, with a warning.
API_GROUP = "bpforch.dev"
API_VERSION = f"{API_GROUP}/v1"
DEPRECATED_API_VERSIONS = ("bpforch/v1",)
KIND_COLLECTION = "Collection"
