"""Evaluating Clara code strings: ``"#expr"`` expressions and ``"lambda ..."`` functions.

``@name`` inside code refers to a config component, as everywhere else in a config.

Two policies: :class:`ExpressionEvaluator` runs full Python (what Clara did, right for a user
running their own MMAR); :class:`RestrictedEvaluator` first checks the code's syntax tree and runs
only a small safe subset (the default at FL sites, where the config arrives from outside).
"""

from __future__ import annotations

import ast
import builtins
import re
from collections.abc import Callable
from typing import Any

from clara_fl.config.compat import translate_expression
from clara_fl.config.errors import ConfigError

__all__ = ["ExpressionEvaluator", "RestrictedEvaluator", "references_in", "evaluator_for"]

REFERENCE = re.compile(r"@([A-Za-z_][A-Za-z0-9_]*)")
REF_PREFIX = "_ref_"


def references_in(code: str) -> list[str]:
    """Names referred to as ``@name`` in a code string."""
    return REFERENCE.findall(code)


def _source(code: str) -> str:
    return translate_expression(code[1:] if code.startswith("#") else code).strip()


class ExpressionEvaluator:
    """Full-Python evaluation of config code, with ``monai``, ``torch`` and ``numpy`` in scope."""

    policy = "full"

    def namespace(self) -> dict[str, Any]:
        import monai
        import numpy
        import torch

        from clara_fl.config.compat import from_engine

        return {"monai": monai, "torch": torch, "np": numpy, "numpy": numpy, "_clara_from_engine": from_engine}

    def check(self, code: str) -> None:
        """Raise a ConfigError if ``code`` may not run under this policy (here: if it is not valid Python)."""
        self._compile(REFERENCE.sub(rf"{REF_PREFIX}\1", _source(code)))

    def evaluate(self, code: str, resolve: Callable[[str], Any]) -> Any:
        """Evaluate ``code``; ``resolve(name)`` supplies the component behind each ``@name``."""
        self.check(code)
        refs: dict[str, Any] = {}

        def bind(match: re.Match) -> str:
            name = match.group(1)
            refs[f"{REF_PREFIX}{name}"] = resolve(name)
            return f"{REF_PREFIX}{name}"

        compiled = self._compile(REFERENCE.sub(bind, _source(code)))
        try:
            return eval(compiled, {**self.globals(), **refs})  # noqa: S307 - checked by self.check first
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError(f"evaluating '{code}' failed: {type(e).__name__}: {e}") from None

    def globals(self) -> dict[str, Any]:
        return self.namespace()

    @staticmethod
    def _compile(text: str) -> Any:
        try:
            return compile(text, "<config expression>", "eval")
        except SyntaxError as e:
            raise ConfigError(f"invalid Python expression '{text}': {e.msg}") from None


# What restricted config code may call or read, by full dotted path.
SAFE_HELPERS = frozenset(
    {
        "monai.handlers.from_engine",
        "monai.handlers.stopping_fn_from_loss",
        "monai.handlers.stopping_fn_from_metric",
        "_clara_from_engine",
    }
)
SAFE_CONSTANTS = frozenset({f"torch.{t}" for t in ("float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64", "uint8", "bool")})
SAFE_BUILTINS = frozenset(
    {"len", "min", "max", "sum", "abs", "round", "range", "list", "tuple", "dict", "set", "float", "int", "bool", "str", "zip", "enumerate", "sorted", "any", "all", "isinstance"}
)
# Methods restricted code may call on components and data: reading, reshaping and reducing, no I/O.
SAFE_METHODS = frozenset(
    {
        "parameters", "named_parameters", "children", "modules",
        "item", "float", "int", "long", "bool", "cpu", "detach", "clone", "numel", "size", "dim",
        "mean", "sum", "max", "min", "argmax", "argmin", "softmax", "sigmoid", "squeeze", "unsqueeze",
        "flatten", "view", "reshape", "permute", "transpose", "get", "keys", "values", "items",
    }
)
MODULE_ROOTS = frozenset({"monai", "torch", "np", "numpy"})
_ALLOWED_NODES = (
    ast.Expression, ast.Constant, ast.Name, ast.Load, ast.Store, ast.Attribute, ast.Call, ast.keyword, ast.Lambda,
    ast.arguments, ast.arg, ast.List, ast.Tuple, ast.Dict, ast.Set, ast.Subscript, ast.Slice, ast.BinOp, ast.UnaryOp,
    ast.BoolOp, ast.Compare, ast.IfExp, ast.ListComp, ast.GeneratorExp, ast.DictComp, ast.SetComp, ast.comprehension,
    ast.operator, ast.unaryop, ast.boolop, ast.cmpop, ast.Starred,
)


def _dotted(node: ast.AST) -> str | None:
    """``monai.handlers.from_engine`` for an Attribute chain rooted at a Name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


class _Checker(ast.NodeVisitor):
    """Walks an expression and raises ConfigError at the first construct outside the safe subset."""

    def __init__(self, code: str) -> None:
        self.code = code
        self.local_names: set[str] = set()

    def refuse(self, why: str) -> None:
        raise ConfigError(
            f"code refused by the site's restricted policy: {why} in '{self.code}'; a site that trusts this "
            "job can allow full Python in its local policy (\"code_policy\": \"full\", see docs/fl.md)"
        )

    def generic_visit(self, node: ast.AST) -> None:
        if not isinstance(node, _ALLOWED_NODES):
            self.refuse(f"{type(node).__name__} is not allowed")
        if isinstance(node, (ast.Lambda, ast.ListComp, ast.GeneratorExp, ast.DictComp, ast.SetComp)):
            self.local_names |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
            self.local_names |= {a.arg for a in ast.walk(node) if isinstance(a, ast.arg)}
        super().generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr.startswith("__"):
            self.refuse(f"the attribute '{node.attr}'")
        dotted = _dotted(node)
        if dotted and dotted.split(".")[0] in MODULE_ROOTS:
            if dotted not in SAFE_HELPERS | SAFE_CONSTANTS:
                self.refuse(f"'{dotted}' is not an allowed helper")
            return  # a whole allowed path such as monai.handlers.from_engine: its parts need no check
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        name = node.id
        if name.startswith("__"):
            self.refuse(f"the name '{name}'")
        allowed = name.startswith(REF_PREFIX) or name in self.local_names or name in SAFE_BUILTINS or name in SAFE_HELPERS
        if not allowed:
            self.refuse(f"the name '{name}'")

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        dotted = _dotted(func)
        if isinstance(func, ast.Name):
            if func.id not in SAFE_BUILTINS and func.id not in SAFE_HELPERS and func.id not in self.local_names:
                self.refuse(f"calling '{func.id}'")
        elif dotted and dotted.split(".")[0] in MODULE_ROOTS:
            if dotted not in SAFE_HELPERS:
                self.refuse(f"calling '{dotted}'")
        elif isinstance(func, ast.Attribute) and func.attr not in SAFE_METHODS:
            self.refuse(f"calling the method '{func.attr}'")
        self.generic_visit(node)



class RestrictedEvaluator(ExpressionEvaluator):
    """Config code limited to a safe subset: no imports, no dunder names or attributes, a few builtins,
    calls only to allow-listed helpers (``monai.handlers.from_engine``...) and read-only methods
    (``.parameters()``, ``.item()``...) of components and data. Checked before anything runs."""

    policy = "restricted"

    def check(self, code: str) -> None:
        text = REFERENCE.sub(rf"{REF_PREFIX}\1", _source(code))
        self._compile(text)
        _Checker(code).visit(ast.parse(text, mode="eval"))

    def globals(self) -> dict[str, Any]:
        safe_builtins = {name: getattr(builtins, name) for name in SAFE_BUILTINS}
        return {**self.namespace(), "__builtins__": safe_builtins}


def evaluator_for(policy: str) -> ExpressionEvaluator:
    """``"full"`` or ``"restricted"``."""
    if policy == "full":
        return ExpressionEvaluator()
    if policy == "restricted":
        return RestrictedEvaluator()
    raise ConfigError(f"code_policy must be 'full' or 'restricted', got '{policy}'")
