"""Package attributes imported on first use (PEP 562), so that ``bpforch --help`` or
``bpforch validate`` does not import the loader's syscall layer, the daemon or the watcher.

A package lists its public names once as imports under ``if TYPE_CHECKING:`` (what type
checkers and readers see) and once in a table ``name -> "module:attr"`` (``"module"`` alone
for a submodule) that :func:`install` serves at run time; ``tests/test_imports.py`` checks
that the two agree. ``from orchestrator.reconcile import Reconciler`` then imports
``orchestrator.reconcile.reconciler`` at that moment, and nothing else.

A name that is also a submodule's name (``orchestrator.reconcile.plan`` the function and the
module) keeps meaning the name: importing the submodule does not rebind it, as it did not
when the package imported everything eagerly.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Mapping


class _Package(types.ModuleType):
    """A package whose exported names win over its submodules of the same name."""

    _lazy_exports: Mapping[str, str]

    def __getattr__(self, name: str) -> object:
        exports = self.__dict__.get("_lazy_exports", {})
        target = exports.get(name)
        if target is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        module_name, _, attr = target.partition(":")
        module = importlib.import_module(module_name)
        value: object = getattr(module, attr) if attr else module
        self.__dict__[name] = value  # found once; later lookups are plain attribute reads
        return value

    def __setattr__(self, name: str, value: object) -> None:
        exports = self.__dict__.get("_lazy_exports", {})
        target = exports.get(name)
        if isinstance(value, types.ModuleType) and target is not None and ":" in target:
            return  # the import system binding the submodule over the exported name
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(self.__dict__) | set(self.__dict__.get("_lazy_exports", {})))


def install(package: str, exports: Mapping[str, str]) -> None:
    """Serve ``exports`` (``name -> "module:attr"`` or ``"module"``) as attributes of
    ``package``, each imported on first use."""
    module = sys.modules[package]
    module.__dict__["_lazy_exports"] = dict(exports)
    module.__class__ = _Package
