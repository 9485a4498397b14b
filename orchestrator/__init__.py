"""bpforch: a pure-Python eBPF loader and a declarative orchestrator built on it."""

from __future__ import annotations

__version__ = "0.1.0"
