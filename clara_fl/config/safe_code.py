"""The restricted code policy: a closed set of expression forms, interpreted without ``eval``.

Config code (``"#expr"`` and ``"lambda x: ..."``) from a job a site did not write is parsed with
:mod:`ast` and compiled into a tree of small Python closures, one per accepted node. Nothing is
handed to ``eval``/``exec``; a node outside the grammar below is refused before anything runs.

Accepted forms (everything else is refused):

* literals: numbers, strings, ``True``/``False``/``None``; lists, tuples, sets, dicts of accepted forms;
* ``@name`` (a config component) and, inside a lambda, its own parameters; no other names;
* calls of allow-listed helpers by full name (``monai.handlers.from_engine(...)``,
  ``monai.handlers.stopping_fn_from_metric(...)``, ``monai.handlers.stopping_fn_from_loss(...)``);
* calls of a few builtins by name (``len``, ``min``, ``list`` ...), positional arguments only;
* calls of allow-listed methods on values of allow-listed types: ``.parameters()`` and friends on a
  ``torch.nn.Module``; reading and reducing methods (``.item()``, ``.argmax()`` ...) on tensors and
  arrays; ``.get()``/``.keys()``/``.values()``/``.items()`` on mappings;
* public attribute reads whose value is plain data (``@model.out_features``, ``x.shape``);
* ``torch`` dtypes (``torch.float32`` ...) as values;
* subscripts and slices, arithmetic, comparisons, ``and``/``or``/``not``, ``a if c else b``;
* one ``lambda`` with plain positional parameters, as the whole code string.

Why this cannot reach a module, a file or a command (the argument in full is in docs/fl.md):
the only callables the interpreter ever calls are the allow-listed helpers, builtins and
(type, method) pairs named here; every value flowing into a call, an operator or a subscript is
checked to be data (never a module, class, function or method), so no callable can be smuggled in
as an argument (``key=``, defaults) and called by allowed code; names resolve only to components
and lambda parameters (no module is in scope); attribute reads never start with ``_`` and must
yield plain data, so ``str.format`` and dunder traversal are unreachable.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import types
from collections.abc import Callable, Mapping
from functools import cache, partial
from typing import Any

from clara_fl.config.errors import ConfigError

__all__ = ["RESTRICTED_ADVICE", "RestrictedCode"]

RESTRICTED_ADVICE = (
    'a site that trusts this job can allow full Python in its local policy ("code_policy": "full", see docs/fl.md)'
)

REF_PREFIX = "_ref_"

HELPERS: dict[str, tuple[str, str]] = {
    "monai.handlers.from_engine": ("clara_fl.config.compat", "from_engine"),
    "monai.handlers.stopping_fn_from_loss": ("monai.handlers", "stopping_fn_from_loss"),
    "monai.handlers.stopping_fn_from_metric": ("monai.handlers", "stopping_fn_from_metric"),
    "_clara_from_engine": ("clara_fl.config.compat", "from_engine"),
}
DTYPES = frozenset(
    {"float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64", "uint8", "bool", "long", "float"}
)
BUILTINS = frozenset(
    {
        "len",
        "min",
        "max",
        "sum",
        "abs",
        "round",
        "list",
        "tuple",
        "dict",
        "set",
        "float",
        "int",
        "bool",
        "str",
        "sorted",
        "any",
        "all",
    }
)
MODULE_METHODS = frozenset(
    {
        "parameters",
        "named_parameters",
        "buffers",
        "named_buffers",
        "children",
        "named_children",
        "modules",
        "named_modules",
    }
)
ARRAY_METHODS = frozenset(
    {
        "item",
        "tolist",
        "float",
        "int",
        "long",
        "bool",
        "half",
        "double",
        "cpu",
        "detach",
        "clone",
        "numel",
        "size",
        "dim",
        "mean",
        "sum",
        "max",
        "min",
        "argmax",
        "argmin",
        "softmax",
        "sigmoid",
        "squeeze",
        "unsqueeze",
        "flatten",
        "view",
        "reshape",
        "permute",
        "transpose",
        "any",
        "all",
        "round",
        "abs",
        "astype",
        "copy",
    }
)
MAPPING_METHODS = frozenset({"get", "keys", "values", "items"})

MAX_REPEAT = 1_000_000  # 'x' * n and [0] * n beyond this are refused (memory)
MAX_EXPONENT = 256

_NOT_DATA = (
    types.ModuleType,
    type,
    types.CodeType,
    types.FrameType,
    types.TracebackType,
    property,
    staticmethod,
    classmethod,
    partial,
)
_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
    ast.Pow: lambda a, b: a**b,
    ast.MatMult: lambda a, b: a @ b,
}
_UNARY: dict[type, Callable[[Any], Any]] = {
    ast.USub: lambda a: -a,
    ast.UAdd: lambda a: +a,
    ast.Not: lambda a: not a,
    ast.Invert: lambda a: ~a,
}
_COMPARE: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: lambda a, b: a == b,
    ast.NotEq: lambda a, b: a != b,
    ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b,
    ast.Gt: lambda a, b: a > b,
    ast.GtE: lambda a, b: a >= b,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
    ast.Is: lambda a, b: a is b,
    ast.IsNot: lambda a, b: a is not b,
}

Scope = Mapping[str, Any]
Node = Callable[[Scope], Any]


class Refused(ConfigError):
    """Code outside the restricted policy's grammar, or a value it may not use."""


def _refuse(why: str, code: str) -> Refused:
    return Refused(f"code refused by the site's restricted policy: {why} in '{code}'; {RESTRICTED_ADVICE}")


@cache
def _helper(dotted: str) -> Callable:
    import importlib

    module, attr = HELPERS[dotted]
    return getattr(importlib.import_module(module), attr)


def _is_plain(value: Any) -> bool:
    """Numbers, strings, None, dtypes and devices, and tuples/lists of them: what attribute reads may yield."""
    import torch

    if value is None or isinstance(value, (bool, int, float, complex, str, torch.dtype, torch.device)):
        return True
    if isinstance(value, (tuple, list)):  # torch.Size is a tuple
        return all(_is_plain(v) for v in value)
    return False


class _Compiler:
    """Compiles one parsed code string into closures; raises :class:`Refused` at the first foreign node."""

    def __init__(self, code: str) -> None:
        self.code = code

    def refuse(self, why: str) -> Refused:
        return _refuse(why, self.code)

    # -- values --------------------------------------------------------------------------------------

    def data(self, value: Any) -> Any:
        """``value`` if it is data; modules, classes, functions and methods never flow on."""
        if isinstance(value, _NOT_DATA) or inspect.isroutine(value):
            raise self.refuse(f"a value of type {type(value).__name__} may not be used")
        return value

    def repeat_ok(self, left: Any, right: Any) -> None:
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, (str, bytes, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_REPEAT:
                raise self.refuse(f"a sequence repeated to more than {MAX_REPEAT} items")

    # -- nodes ---------------------------------------------------------------------------------------

    def top(self, tree: ast.Expression) -> Node:
        body = tree.body
        if isinstance(body, ast.Lambda):
            return self.lambda_(body)
        if isinstance(body, ast.Call):  # a helper may return a function, as the whole expression
            return self.call(body, top=True)
        return self.node(body, frozenset())

    def lambda_(self, node: ast.Lambda) -> Node:
        args = node.args
        if args.vararg or args.kwarg or args.kwonlyargs or args.defaults or args.kw_defaults or args.posonlyargs:
            raise self.refuse("a lambda may only have plain positional parameters")
        params = tuple(a.arg for a in args.args)
        for p in params:
            if p.startswith("_"):
                raise self.refuse(f"the lambda parameter name '{p}'")
        body = self.node(node.body, frozenset(params))

        def function(*values: Any) -> Any:
            if len(values) != len(params):
                raise TypeError(f"config lambda takes {len(params)} argument(s), got {len(values)}")
            return body(dict(zip(params, values, strict=True)))

        return lambda scope: function

    def node(self, node: ast.AST, params: frozenset[str]) -> Node:
        handler = getattr(self, f"n_{type(node).__name__}", None)
        if handler is None:
            raise self.refuse(f"{type(node).__name__} is not allowed")
        return handler(node, params)

    def nodes(self, items: list[ast.expr], params: frozenset[str]) -> list[Node]:
        for item in items:
            if isinstance(item, ast.Starred):
                raise self.refuse("unpacking with *")
        return [self.node(item, params) for item in items]

    def n_Constant(self, node: ast.Constant, params: frozenset[str]) -> Node:
        value = node.value
        if not (value is None or isinstance(value, (bool, int, float, complex, str))):
            raise self.refuse(f"the constant {value!r}")
        return lambda scope: value

    def n_Name(self, node: ast.Name, params: frozenset[str]) -> Node:
        name = node.id
        if name in params or name.startswith(REF_PREFIX):
            return lambda scope: scope[name]
        raise self.refuse(f"the name '{name}'")

    def n_List(self, node: ast.List, params: frozenset[str]) -> Node:
        parts = self.nodes(node.elts, params)
        return lambda scope: [self.data(p(scope)) for p in parts]

    def n_Tuple(self, node: ast.Tuple, params: frozenset[str]) -> Node:
        parts = self.nodes(node.elts, params)
        return lambda scope: tuple(self.data(p(scope)) for p in parts)

    def n_Set(self, node: ast.Set, params: frozenset[str]) -> Node:
        parts = self.nodes(node.elts, params)
        return lambda scope: {self.data(p(scope)) for p in parts}

    def n_Dict(self, node: ast.Dict, params: frozenset[str]) -> Node:
        if any(k is None for k in node.keys):
            raise self.refuse("unpacking with **")
        keys = self.nodes([k for k in node.keys if k is not None], params)
        values = self.nodes(node.values, params)
        return lambda scope: {self.data(k(scope)): self.data(v(scope)) for k, v in zip(keys, values, strict=True)}

    def n_BinOp(self, node: ast.BinOp, params: frozenset[str]) -> Node:
        op = _BINARY.get(type(node.op))
        if op is None:
            raise self.refuse(f"the operator {type(node.op).__name__}")
        left, right = self.node(node.left, params), self.node(node.right, params)
        kind = type(node.op)

        def run(scope: Scope) -> Any:
            a, b = self.data(left(scope)), self.data(right(scope))
            if kind is ast.Mod and isinstance(a, (str, bytes)):
                raise self.refuse("string formatting with %")
            if kind is ast.Mult:
                self.repeat_ok(a, b)
            if kind is ast.Pow and isinstance(b, (int, float)) and abs(b) > MAX_EXPONENT:
                raise self.refuse(f"an exponent above {MAX_EXPONENT}")
            return op(a, b)

        return run

    def n_UnaryOp(self, node: ast.UnaryOp, params: frozenset[str]) -> Node:
        op, operand = _UNARY[type(node.op)], self.node(node.operand, params)
        return lambda scope: op(self.data(operand(scope)))

    def n_BoolOp(self, node: ast.BoolOp, params: frozenset[str]) -> Node:
        parts = self.nodes(node.values, params)
        is_and = isinstance(node.op, ast.And)

        def run(scope: Scope) -> Any:
            value = None
            for part in parts:
                value = self.data(part(scope))
                if bool(value) is not is_and:
                    return value
            return value

        return run

    def n_Compare(self, node: ast.Compare, params: frozenset[str]) -> Node:
        left = self.node(node.left, params)
        ops = [_COMPARE[type(op)] for op in node.ops]
        rights = self.nodes(node.comparators, params)

        def run(scope: Scope) -> Any:
            a = self.data(left(scope))
            for op, right in zip(ops, rights, strict=True):
                b = self.data(right(scope))
                if not op(a, b):
                    return False
                a = b
            return True

        return run

    def n_IfExp(self, node: ast.IfExp, params: frozenset[str]) -> Node:
        test, body, orelse = (self.node(n, params) for n in (node.test, node.body, node.orelse))
        return lambda scope: self.data(body(scope)) if self.data(test(scope)) else self.data(orelse(scope))

    def n_Subscript(self, node: ast.Subscript, params: frozenset[str]) -> Node:
        value, index = self.node(node.value, params), self.node(node.slice, params)
        return lambda scope: self.data(self.data(value(scope))[self.data(index(scope))])

    def n_Slice(self, node: ast.Slice, params: frozenset[str]) -> Node:
        parts = [self.node(p, params) if p is not None else None for p in (node.lower, node.upper, node.step)]
        return lambda scope: slice(*(self.data(p(scope)) if p is not None else None for p in parts))

    def n_Attribute(self, node: ast.Attribute, params: frozenset[str]) -> Node:
        dotted = _dotted(node)
        if dotted is not None and dotted.split(".")[0] in ("torch", "monai", "numpy", "np"):
            if dotted.startswith("torch.") and dotted[len("torch.") :] in DTYPES:
                import torch

                dtype = getattr(torch, dotted[len("torch.") :])
                return lambda scope: dtype
            raise self.refuse(f"'{dotted}' is not an allowed value")
        attr = node.attr
        if attr.startswith("_"):
            raise self.refuse(f"the attribute '{attr}'")
        value = self.node(node.value, params)

        def run(scope: Scope) -> Any:
            found = getattr(self.data(value(scope)), attr)
            if not _is_plain(found):
                raise self.refuse(f"reading '.{attr}' (it is not plain data: {type(found).__name__})")
            return found

        return run

    def n_Call(self, node: ast.Call, params: frozenset[str]) -> Node:
        return self.call(node, params=params)

    def call(self, node: ast.Call, params: frozenset[str] = frozenset(), top: bool = False) -> Node:
        func = node.func
        args = self.nodes(node.args, params)
        if any(k.arg is None for k in node.keywords):
            raise self.refuse("unpacking with **")
        keywords = {k.arg: self.node(k.value, params) for k in node.keywords if k.arg is not None}
        dotted = _dotted(func)

        def arguments(scope: Scope) -> tuple[list[Any], dict[str, Any]]:
            return [self.data(a(scope)) for a in args], {k: self.data(v(scope)) for k, v in keywords.items()}

        if dotted in HELPERS:
            if not top:
                raise self.refuse(f"'{dotted}' may only be the whole expression")

            def run_helper(scope: Scope) -> Any:
                positional, named = arguments(scope)
                return _helper(dotted)(*positional, **named)

            return run_helper
        if isinstance(func, ast.Name) and func.id in BUILTINS and func.id not in params:
            if keywords:
                raise self.refuse(f"keyword arguments to '{func.id}'")
            builtin = getattr(builtins, func.id)
            return lambda scope: self.data(builtin(*arguments(scope)[0]))
        if isinstance(func, ast.Attribute) and not (
            dotted and dotted.split(".")[0] in ("torch", "monai", "numpy", "np")
        ):
            return self.method_call(func, params, arguments)
        raise self.refuse(f"calling '{dotted or ast.unparse(func)}'")

    def method_call(
        self, func: ast.Attribute, params: frozenset[str], arguments: Callable[[Scope], tuple[list, dict]]
    ) -> Node:
        method = func.attr
        if method not in MODULE_METHODS | ARRAY_METHODS | MAPPING_METHODS:
            raise self.refuse(f"calling the method '{method}'")
        receiver = self.node(func.value, params)

        def run(scope: Scope) -> Any:
            target = self.data(receiver(scope))
            if method not in _methods_for(target):
                raise self.refuse(f"calling '.{method}()' on a {type(target).__name__}")
            positional, named = arguments(scope)
            return self.data(getattr(target, method)(*positional, **named))

        return run


def _methods_for(value: Any) -> frozenset[str]:
    import numpy
    import torch

    if isinstance(value, torch.nn.Module):
        return MODULE_METHODS
    if isinstance(value, (torch.Tensor, numpy.ndarray, numpy.generic)):
        return ARRAY_METHODS
    if isinstance(value, Mapping):
        return MAPPING_METHODS
    return frozenset()


def _dotted(node: ast.AST) -> str | None:
    """``monai.handlers.from_engine`` for an attribute chain rooted at a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


class RestrictedCode:
    """A code string compiled under the restricted policy; :meth:`run` evaluates it."""

    def __init__(self, code: str, text: str) -> None:
        try:
            tree = ast.parse(text, mode="eval")
        except SyntaxError as e:
            raise ConfigError(f"invalid Python expression '{text}': {e.msg}") from e
        self.code = code
        self._root = _Compiler(code).top(tree)

    def run(self, refs: Mapping[str, Any]) -> Any:
        """Evaluate with ``refs`` (``_ref_<name>`` -> component) in scope."""
        return self._root(refs)
