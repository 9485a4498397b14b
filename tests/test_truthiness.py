"""No code takes the truth value of a kernel handle, a spec or a collection.

An empty map was once falsy (``Map`` had a ``__len__``), so ``replacement or default``
silently created a private map instead of sharing an empty one. ``Map`` has no ``__len__``
any more, but the habit is the bug: a handle is compared with ``is None``. This test walks
the syntax tree of every module in ``orchestrator/``, ``tests/`` and ``benchmarks/`` and
flags any truth test (``if x``, ``x or y``, ``not x``, ``while x``, ``assert x``, ``bool(x)``,
a comprehension's ``if x``) of an expression whose declared type is one of the handle-like
classes below, or an element looked up in a container of them (``maps.get(name) or …``).
Types come from annotations: function parameters, annotated assignments and class-level
fields (by attribute name, across the tree).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TREES = ("orchestrator", "tests", "benchmarks")

# Classes whose truth value must never be taken: kernel handles, specs, collections.
HANDLES = frozenset(
    {
        "Map",
        "Program",
        "Link",
        "Handle",
        "FD",
        "Collection",
        "RingBufReader",
        "StructOpsLink",
        "MapSpec",
        "ProgramSpec",
        "CollectionSpec",
        "Instructions",
        "Spec",  # btf.Spec has a __len__ (its type count)
        "DesiredCollection",
        "MapOptions",
    }
)
_CONTAINERS = frozenset({"dict", "Mapping", "MutableMapping", "OrderedDict", "list", "Sequence"})


def _tail(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.strip().rsplit(".", 1)[-1]
    return None


def _parse_annotation(node: ast.expr) -> ast.expr:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        try:
            return ast.parse(node.value, mode="eval").body
        except SyntaxError:
            return node
    return node


def classify(annotation: ast.expr | None) -> str | None:
    """ "handle" for a handle (or handle | None), "container" for a mapping or list whose
    elements are handles, else None."""
    if annotation is None:
        return None
    node = _parse_annotation(annotation)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        parts = [classify(node.left), classify(node.right)]
        if "handle" in parts:
            return "handle"
        return "container" if "container" in parts else None
    if isinstance(node, ast.Subscript):
        base = _tail(node.value)
        if base == "Optional":
            return classify(node.slice)
        if base in _CONTAINERS:
            args = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            return "container" if classify(args[-1]) == "handle" else None
        return None
    name = _tail(node)
    if name in HANDLES:
        return "handle"
    return None


def _fields(trees: list[ast.Module]) -> dict[str, str]:
    """Attribute name -> kind, from class-level annotations and ``self.x: T = …``; and
    ``name()`` -> kind for functions and methods by their return annotation."""
    out: dict[str, str] = {}
    returns: dict[str, set[str | None]] = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                returns.setdefault(node.name, set()).add(classify(node.returns))
            if isinstance(node, ast.ClassDef):
                for stmt in node.body:
                    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                        kind = classify(stmt.annotation)
                        if kind is not None:
                            out.setdefault(stmt.target.id, kind)
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Attribute):
                kind = classify(node.annotation)
                if kind is not None:
                    out.setdefault(node.target.attr, kind)
    for name, kinds in returns.items():
        if len(kinds) == 1 and None not in kinds:  # every function of that name agrees
            out[name + "()"] = kinds.pop()  # type: ignore[assignment]
    return out


class _Checker(ast.NodeVisitor):
    def __init__(self, path: str, fields: dict[str, str]) -> None:
        self.path = path
        self.fields = fields
        self.scopes: list[dict[str, str]] = [{}]
        self.found: list[str] = []
        self._seen: set[tuple[int, int]] = set()

    # ---- types of expressions

    def kind(self, node: ast.expr) -> str | None:
        if isinstance(node, ast.Name):
            for scope in reversed(self.scopes):
                if node.id in scope:
                    return scope[node.id]
            return None
        if isinstance(node, ast.Attribute):
            return self.fields.get(node.attr)
        if isinstance(node, ast.Subscript) and self.kind(node.value) == "container":
            return "handle"
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("get", "pop")
            and self.kind(node.func.value) == "container"
        ):
            return "handle"
        if isinstance(node, ast.Call):
            func = _tail(node.func)
            if func in HANDLES:
                return "handle"  # a constructor
            if (
                isinstance(node.func, ast.Attribute)
                and _tail(node.func.value) in HANDLES
                and (func or "").startswith(("from_", "create", "load", "clone"))
            ):
                return "handle"  # Map.from_pin(...), Program.load(...)
            receiver = node.func.value if isinstance(node.func, ast.Attribute) else None
            if func is not None and (
                receiver is None
                or (isinstance(receiver, ast.Name) and receiver.id in ("self", "cls", "_sys"))
            ):
                return self.fields.get(func + "()")  # by the return annotation
        if isinstance(node, ast.NamedExpr):
            return self.kind(node.value)
        return None

    def bind(self, target: ast.expr, kind: str | None) -> None:
        if isinstance(target, ast.Name):
            if kind is None:
                self.scopes[-1].pop(target.id, None)
            else:
                self.scopes[-1][target.id] = kind

    def element(self, it: ast.expr) -> str | None:
        """The kind of the elements of ``it`` (``c``, ``c.values()``)."""
        if isinstance(it, ast.Call) and isinstance(it.func, ast.Attribute):
            if it.func.attr == "values" and self.kind(it.func.value) == "container":
                return "handle"
            return None
        return "handle" if self.kind(it) == "container" else None

    def truth(self, node: ast.expr) -> None:
        if isinstance(node, ast.BoolOp):
            for v in node.values:
                self.truth(v)
            return
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            self.truth(node.operand)
            return
        where = (node.lineno, node.col_offset)
        if self.kind(node) == "handle" and where not in self._seen:
            self._seen.add(where)
            self.found.append(f"{self.path}:{node.lineno}:{node.col_offset}: {ast.unparse(node)}")

    # ---- scopes

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        scope: dict[str, str] = {}
        a = node.args
        for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
            if arg is not None:
                kind = classify(arg.annotation)
                if kind is not None:
                    scope[arg.arg] = kind
        self.scopes.append(scope)
        self.generic_visit(node)
        self.scopes.pop()

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function
    visit_Lambda = _function

    def visit_Assign(self, node: ast.Assign) -> None:
        self.generic_visit(node)
        kind = self.kind(node.value)
        for target in node.targets:
            self.bind(target, kind)

    def visit_For(self, node: ast.For) -> None:
        self.visit(node.iter)
        it = node.iter
        if (
            isinstance(node.target, ast.Tuple)
            and len(node.target.elts) == 2
            and isinstance(it, ast.Call)
            and isinstance(it.func, ast.Attribute)
            and it.func.attr == "items"
            and self.kind(it.func.value) == "container"
        ):
            self.bind(node.target.elts[1], "handle")
        else:
            self.bind(node.target, self.element(it))
        for stmt in [*node.body, *node.orelse]:
            self.visit(stmt)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if isinstance(node.target, ast.Name):
            kind = classify(node.annotation)
            if kind is not None:
                self.scopes[-1][node.target.id] = kind
        self.generic_visit(node)

    # ---- truth contexts

    def visit_If(self, node: ast.If) -> None:
        self.truth(node.test)
        self.generic_visit(node)

    def visit_While(self, node: ast.While) -> None:
        self.truth(node.test)
        self.generic_visit(node)

    def visit_IfExp(self, node: ast.IfExp) -> None:
        self.truth(node.test)
        self.generic_visit(node)

    def visit_Assert(self, node: ast.Assert) -> None:
        self.truth(node.test)
        self.generic_visit(node)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        for v in node.values[:-1]:  # the last operand is only returned, not tested
            self.truth(v)
        self.generic_visit(node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> None:
        if isinstance(node.op, ast.Not):
            self.truth(node.operand)
        self.generic_visit(node)

    def visit_comprehension(self, node: ast.comprehension) -> None:
        for cond in node.ifs:
            self.truth(cond)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Name) and node.func.id == "bool" and len(node.args) == 1:
            self.truth(node.args[0])
        self.generic_visit(node)


def check_source(text: str, path: str, fields: dict[str, str] | None = None) -> list[str]:
    tree = ast.parse(text, path)
    checker = _Checker(path, fields if fields is not None else _fields([tree]))
    checker.visit(tree)
    return checker.found


def _files() -> Iterator[Path]:
    for top in TREES:
        yield from sorted((REPO / top).rglob("*.py"))


def test_the_checker_finds_what_it_is_for() -> None:
    """The checker flags the bug that started this (and its kin), and not the fixes."""
    bad = """
from orchestrator.ebpf import Map
class CollectionOptions:
    map_replacements: Mapping[str, Map]
class Loader:
    options: CollectionOptions
    def map(self, name: str, spare: Map | None, maps: dict[str, Map]) -> None:
        replacement = self.options.map_replacements.get(name) or None
        if spare:
            pass
        x = not maps.get(name)
        y = [m for m in maps.values() if maps[name]]
        m: Map = make()
        while m and spare:
            pass
        assert bool(m)
        for k, v in maps.items():
            if v:
                pass
        p = Map.from_pin("/x")
        q = p if p else None
"""
    found = check_source(bad, "bad.py")
    assert [f.split(": ", 1)[1] for f in found] == [
        "self.options.map_replacements.get(name)",
        "spare",
        "maps.get(name)",
        "maps[name]",
        "m",
        "spare",
        "m",
        "v",
        "p",
    ]
    good = """
class Loader:
    def map(self, name: str, spare: Map | None, maps: dict[str, Map]) -> None:
        replacement = maps.get(name)
        if replacement is None:
            replacement = spare
        if maps:  # a dict's emptiness is fine
            pass
        names = spare.name or "unnamed"  # a str
"""
    assert check_source(good, "good.py") == []


def test_no_truth_value_of_handles_in_the_tree() -> None:
    sources = {p: p.read_text() for p in _files()}
    trees = [ast.parse(t, str(p)) for p, t in sources.items()]
    fields = _fields(trees)
    assert fields.get("map_replacements") == "container"  # the types are really found
    found: list[str] = []
    for (path, _text), tree in zip(sources.items(), trees, strict=True):
        checker = _Checker(str(path.relative_to(REPO)), fields)
        checker.visit(tree)
        found.extend(checker.found)
    assert found == [], "truth value of a handle (compare with `is None`):\n" + "\n".join(found)


@pytest.mark.kernel
def test_an_empty_map_is_true(fd_guard: None) -> None:
    """Truthiness of a handle says nothing about its contents: an empty map is true, and
    counting its entries is explicit."""
    from orchestrator import ebpf
    from orchestrator.ebpf._sys import MapType
    from orchestrator.ebpf.spec import MapSpec

    spec = MapSpec("empty", MapType.HASH, 4, 4, 8)
    with ebpf.Map.create(spec) as m:
        assert bool(m) is True
        assert m.count_entries() == 0
        assert not hasattr(m, "__len__")
        m[1] = 2
        assert m.count_entries() == 1
