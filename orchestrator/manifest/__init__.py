"""Manifests: YAML documents -> validated, frozen desired state."""

from __future__ import annotations
