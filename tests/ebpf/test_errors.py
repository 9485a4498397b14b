from __future__ import annotations

import importlib
import pkgutil

from orchestrator import ebpf
from orchestrator.ebpf import errors


def test_every_loader_exception_class_lives_in_errors() -> None:
    # One taxonomy: callers find every class they may catch in orchestrator.ebpf.errors.
    # Private control-flow exceptions that never leave their module (_Poison) may stay.
    elsewhere = []
    for info in pkgutil.walk_packages(ebpf.__path__, prefix=f"{ebpf.__name__}."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (
                isinstance(obj, type)
                and issubclass(obj, BaseException)
                and obj.__module__ == module.__name__
                and module is not errors
                and not name.startswith("_")
            ):
                elsewhere.append(f"{module.__name__}.{name}")
    assert elsewhere == []
