"""Finds clara-fl's reach-ins into other libraries' private names, statically (``ast``), for tests/test_private_api.py.

Three kinds:

* ``foreign``: ``obj._name`` (or ``getattr``/``setattr``/``hasattr``/``delattr`` with such a name, constant or built
  from a string that starts with ``_``) on anything but the method's own ``self``, where no clara_fl class or
  module defines ``_name``: another library's object.
* ``inherited``: ``self._name`` (or ``super()._name``, or ``getattr(self, ...)`` with a computed name that can
  start with ``_``) in a class with a base from another library, where neither the class nor its clara_fl bases
  define ``_name``, or where the library base defines it too: the library parent's private state or method, read,
  overwritten (``self._name = v``) or overridden (``def _name``).
* ``private module``: an import of ``nvflare.private`` (or a string naming one of its modules).

A class *defines* a name with a method, a class-level assignment with a value, or an assignment to ``self._name``
in one of its methods. What a library base defines is read from the installed library (its classes' ``vars()`` and
the ``self._name`` assignments in their source), so a subclass that assigns or overrides its parent's private
name is found although it "defines" it. Annotations are not code and are skipped; so are the few underscore names
that Python documents as public (``os._exit``, the namedtuple API).
"""

from __future__ import annotations

import ast
import functools
import gc
import importlib
import inspect
import textwrap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

__all__ = ["ReachIn", "find_reach_ins"]

PRIVATE_MODULE_PREFIX = "nvflare.private"
# underscore names the Python documentation gives as public API
DOCUMENTED_ON_MODULE = {("os", "_exit")}
DOCUMENTED_ANYWHERE = {"_fields", "_replace", "_asdict", "_make", "_field_defaults"}
# bases that carry no state of their own: a class with only these is not "a subclass of a library class"
STATELESS_BASES = {"builtins.object", "abc.ABC", "typing.Generic", "typing.Protocol"}
ATTRIBUTE_FUNCTIONS = {"getattr", "setattr", "hasattr", "delattr"}


@dataclass(frozen=True)
class ReachIn:
    """One reach-in: the file (relative to clara_fl/), its line, the private name (or module) and its kind."""

    file: str
    line: int
    name: str
    kind: str
    code: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.kind} {self.name} ({self.code})"


@dataclass
class _Class:
    module: str
    node: ast.ClassDef
    bases: list[str]  # dotted names, resolved through the module's imports
    defines: set[str] = field(default_factory=set)


def _parse(source: str, filename: str) -> ast.Module:
    # gc off while parsing: CPython gh-106905 (see tests/test_layers.py's parse)
    enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(source, filename)
    finally:
        if enabled:
            gc.enable()


def _module_name(file: str) -> str:
    parts = ["clara_fl", *file.removesuffix(".py").split("/")]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _walk(node: ast.AST, into_classes: bool = False) -> Iterator[ast.AST]:
    """``ast.walk`` that skips annotations (not code) and, unless ``into_classes``, nested classes (checked as
    classes of their own)."""
    todo: list[ast.AST] = [node]
    while todo:
        current = todo.pop()
        yield current
        for name, value in ast.iter_fields(current):
            if name in ("annotation", "returns"):
                continue
            children = value if isinstance(value, list) else [value]
            for child in children:
                if isinstance(child, ast.AST) and (into_classes or not isinstance(child, ast.ClassDef)):
                    todo.append(child)


def _imports(nodes: list[ast.AST], module: str, is_package: bool) -> dict[str, str]:
    """Local name -> dotted name of what it is bound to, for every import in the module (``nodes``: all its nodes)."""
    package = module if is_package else module.rpartition(".")[0]
    found: dict[str, str] = {}
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    found[alias.asname] = alias.name
                else:
                    found[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                found[alias.asname or alias.name] = f"{base}.{alias.name}"
    return found


def _dotted(expr: ast.expr, imports: Mapping[str, str], module: str, local: set[str]) -> str:
    if isinstance(expr, ast.Name):
        if expr.id in imports:
            return imports[expr.id]
        return f"{module}.{expr.id}" if expr.id in local else f"builtins.{expr.id}"
    if isinstance(expr, ast.Attribute):
        return f"{_dotted(expr.value, imports, module, local)}.{expr.attr}"
    if isinstance(expr, ast.Subscript):  # Generic[T], list[int]
        return _dotted(expr.value, imports, module, local)
    return ast.unparse(expr)


def _self_targets(target: ast.expr, self_name: str) -> Iterator[str]:
    if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == self_name:
        yield target.attr
    elif isinstance(target, (ast.Tuple, ast.List)):
        for element in target.elts:
            yield from _self_targets(element, self_name)
    elif isinstance(target, ast.Starred):
        yield from _self_targets(target.value, self_name)


def _methods(node: ast.ClassDef) -> Iterator[tuple[ast.FunctionDef | ast.AsyncFunctionDef, str | None]]:
    """Each method with the name of its instance parameter (None for a staticmethod)."""
    for item in node.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in item.decorator_list)
            params = item.args.posonlyargs + item.args.args
            yield item, (None if static or not params else params[0].arg)


def _own_definitions(node: ast.ClassDef) -> set[str]:
    defined: set[str] = set()
    for item in node.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(item.name)
        elif isinstance(item, ast.Assign):
            defined |= {t.id for t in item.targets if isinstance(t, ast.Name)}
        elif isinstance(item, ast.AnnAssign) and item.value is not None and isinstance(item.target, ast.Name):
            defined.add(item.target.id)
    for method, self_name in _methods(node):
        if self_name is None:
            continue
        for sub in _walk(method):
            if isinstance(sub, ast.Assign):
                for target in sub.targets:
                    defined |= set(_self_targets(target, self_name))
            elif isinstance(sub, ast.AnnAssign) and sub.value is not None:
                defined |= set(_self_targets(sub.target, self_name))
            elif isinstance(sub, (ast.For, ast.AsyncFor, ast.comprehension)):
                defined |= set(_self_targets(sub.target, self_name))
            elif isinstance(sub, ast.withitem) and sub.optional_vars is not None:
                defined |= set(_self_targets(sub.optional_vars, self_name))
            elif _is_attribute_call(sub, "setattr"):
                name = _constant_name(sub.args[1])  # type: ignore[attr-defined]
                if name and isinstance(sub.args[0], ast.Name) and sub.args[0].id == self_name:  # type: ignore[attr-defined]
                    defined.add(name)
    return defined


def _is_attribute_call(node: ast.AST, *names: str) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in (names or ATTRIBUTE_FUNCTIONS)
        and len(node.args) >= 2
    )


def _constant_name(expr: ast.expr) -> str | None:
    return expr.value if isinstance(expr, ast.Constant) and isinstance(expr.value, str) else None


def _may_start_with_underscore(expr: ast.expr, assigned: Mapping[str, list[ast.expr]], depth: int = 0) -> bool:
    """Whether a computed attribute name can start with ``_``: ``"_" + x``, ``f"_{x}"``, a variable set to one."""
    if depth > 5:
        return False
    if isinstance(expr, ast.Constant):
        return isinstance(expr.value, str) and expr.value.startswith("_")
    if isinstance(expr, ast.JoinedStr):
        return bool(expr.values) and _may_start_with_underscore(expr.values[0], assigned, depth + 1)
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
        return _may_start_with_underscore(expr.left, assigned, depth + 1)
    if isinstance(expr, ast.IfExp):
        return any(_may_start_with_underscore(e, assigned, depth + 1) for e in (expr.body, expr.orelse))
    if isinstance(expr, ast.Name):
        return any(_may_start_with_underscore(e, assigned, depth + 1) for e in assigned.get(expr.id, ()))
    return False


def _assignments(scope: ast.AST) -> dict[str, list[ast.expr]]:
    found: dict[str, list[ast.expr]] = {}
    for node in _walk(scope):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found.setdefault(target.id, []).append(node.value)
    return found


@functools.cache
def _library_private_names(dotted: str) -> frozenset[str]:
    """The private names another library's class ``dotted`` (or a class it inherits) defines; empty when it cannot
    be imported here."""
    module_name, _, name = dotted.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        return frozenset()
    if not inspect.isclass(cls):
        return frozenset()
    found: set[str] = set()
    for ancestor in cls.__mro__:
        if ancestor.__module__ == "builtins" or ancestor.__module__.startswith("clara_fl."):
            continue
        found |= {n for n in vars(ancestor) if _is_private(n)}
        try:
            source = textwrap.dedent(inspect.getsource(ancestor))
        except (OSError, TypeError):
            continue
        classes = [n for n in ast.walk(_parse(source, "<library>")) if isinstance(n, ast.ClassDef)]
        if classes:
            found |= {n for n in _own_definitions(classes[0]) if _is_private(n)}
    return frozenset(found)


class _Checker:
    def __init__(self, sources: Mapping[str, str]) -> None:
        self.trees = {file: _parse(text, file) for file, text in sources.items()}
        self.nodes = {file: list(ast.walk(tree)) for file, tree in self.trees.items()}
        self.classes: dict[str, _Class] = {}
        self.imports: dict[str, dict[str, str]] = {}
        self.clara_names: set[str] = set()  # private names some clara_fl class defines
        for file in self.trees:
            module = _module_name(file)
            imports = _imports(self.nodes[file], module, file.endswith("__init__.py"))
            self.imports[module] = imports
            class_nodes = [n for n in self.nodes[file] if isinstance(n, ast.ClassDef)]
            local = {n.name for n in class_nodes}
            for node in class_nodes:
                bases = [_dotted(b, imports, module, local) for b in node.bases]
                info = _Class(module, node, bases, _own_definitions(node))
                self.classes[f"{module}.{node.name}"] = info
                self.clara_names |= {n for n in info.defines if _is_private(n)}

    def _clara_class(self, dotted: str, depth: int = 0) -> _Class | None:
        """The clara_fl class ``dotted`` names, following re-exports; None for another library's class."""
        if dotted in self.classes:
            return self.classes[dotted]
        module, _, name = dotted.rpartition(".")
        if depth < 5 and name in self.imports.get(module, {}):
            return self._clara_class(self.imports[module][name], depth + 1)
        return None

    def _ancestry(self, info: _Class) -> tuple[set[str], set[str]]:
        """Names defined by the clara_fl bases of ``info`` (itself excluded), and the private names its bases from
        other libraries define (an empty set with a ``""`` in it marks a library base whose names are unknown)."""
        defined: set[str] = set()
        library: set[str] = set()
        todo, seen = list(info.bases), set()
        while todo:
            base = todo.pop()
            if base in seen:
                continue
            seen.add(base)
            clara = self._clara_class(base)
            if clara is not None:
                defined |= clara.defines
                todo += clara.bases
            elif base.startswith("clara_fl."):
                continue  # a clara_fl name this checker was not given: not another library's class
            elif base not in STATELESS_BASES:
                library |= {""} | _library_private_names(base)
        return defined, library

    def run(self) -> list[ReachIn]:
        found: list[ReachIn] = []
        for file, tree in self.trees.items():
            module = _module_name(file)
            found += self._private_modules(file)
            self_names: set[int] = set()  # id() of each Name node that is a method's own self
            for info in (c for c in self.classes.values() if c.module == module):
                found += self._inherited(file, info, self_names)
            found += self._foreign(file, tree, self_names)
        return sorted(set(found), key=lambda r: (r.file, r.line, r.name))

    def _inherited(self, file: str, info: _Class, self_names: set[int]) -> list[ReachIn]:
        found = []
        ancestors, library = self._ancestry(info)
        foreign_base = bool(library)
        defined = (info.defines | ancestors) - library

        def reach(node: ast.AST, name: str) -> None:
            found.append(ReachIn(file, node.lineno, name, "inherited", ast.unparse(node)))  # type: ignore[attr-defined]

        for item in info.node.body:  # overriding a library parent's private method
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and _is_private(item.name):
                if item.name in library and item.name not in ancestors:
                    found.append(ReachIn(file, item.lineno, item.name, "inherited", f"def {item.name}"))
        for method, self_name in _methods(info.node):
            if self_name is None:
                continue
            assignments: dict[str, list[ast.expr]] | None = None
            for node in _walk(method):
                name = None
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                    if node.value.id == self_name:
                        self_names.add(id(node.value))
                        name = node.attr
                elif isinstance(node, ast.Attribute) and _is_super_call(node.value):
                    if foreign_base and _is_private(node.attr) and node.attr not in ancestors:
                        reach(node, node.attr)
                    continue
                elif _is_attribute_call(node):
                    target, name_expr = node.args[0], node.args[1]  # type: ignore[attr-defined]
                    if isinstance(target, ast.Name) and target.id == self_name:
                        self_names.add(id(target))
                        name = _constant_name(name_expr)
                        if name is None and foreign_base:
                            if assignments is None:
                                assignments = _assignments(method)
                            if _may_start_with_underscore(name_expr, assignments):
                                reach(node, ast.unparse(name_expr))
                if foreign_base and name and _is_private(name) and name not in defined:
                    reach(node, name)
        return found

    def _foreign(self, file: str, tree: ast.Module, self_names: set[int]) -> list[ReachIn]:
        found = []
        imports = self.imports[_module_name(file)]
        for node in _walk(tree, into_classes=True):
            if isinstance(node, ast.Attribute):
                owner = node.value
                if id(owner) in self_names or _is_super_call(owner) or not _is_private(node.attr):
                    continue
                if _documented(owner, node.attr) or node.attr in self.clara_names:
                    continue
                if isinstance(owner, ast.Name) and imports.get(owner.id, "").startswith("clara_fl."):
                    continue  # a private function or variable of a clara_fl module
                found.append(ReachIn(file, node.lineno, node.attr, "foreign", ast.unparse(node)))
            elif _is_attribute_call(node):
                owner, name_expr = node.args[0], node.args[1]  # type: ignore[attr-defined]
                if id(owner) in self_names:
                    continue
                name = _constant_name(name_expr)
                if name is not None:
                    if _is_private(name) and name not in self.clara_names and not _documented(owner, name):
                        found.append(ReachIn(file, node.lineno, name, "foreign", ast.unparse(node)))  # type: ignore[attr-defined]
                elif _may_start_with_underscore(name_expr, self._assignments_around(file, node)):
                    shown = ast.unparse(name_expr)
                    found.append(ReachIn(file, node.lineno, shown, "foreign", ast.unparse(node)))  # type: ignore[attr-defined]
        return found

    def _assignments_around(self, file: str, node: ast.AST) -> dict[str, list[ast.expr]]:
        """The assignments in the outermost function around ``node`` (nested functions included)."""
        for scope in self.nodes[file]:  # breadth-first: outer functions come first
            if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(n is node for n in ast.walk(scope)):
                return _assignments(scope)
        return {}

    def _private_modules(self, file: str) -> list[ReachIn]:
        found = []
        docstrings = {id(n.value) for n in self.nodes[file] if isinstance(n, ast.Expr)}
        for node in self.nodes[file]:
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                names = [node.value]
            for name in names:
                if name == PRIVATE_MODULE_PREFIX or name.startswith(PRIVATE_MODULE_PREFIX + "."):
                    found.append(ReachIn(file, node.lineno, name, "private module", ast.unparse(node)))  # type: ignore[attr-defined]
        return found


def _is_super_call(expr: ast.expr) -> bool:
    return isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id == "super"


def _documented(owner: ast.expr, name: str) -> bool:
    return name in DOCUMENTED_ANYWHERE or (isinstance(owner, ast.Name) and (owner.id, name) in DOCUMENTED_ON_MODULE)


def find_reach_ins(sources: Mapping[str, str]) -> list[ReachIn]:
    """Every reach-in in ``sources`` ({path relative to clara_fl/: source text}), checked together: a name one of
    them defines is clara-fl's own."""
    return _Checker(sources).run()
