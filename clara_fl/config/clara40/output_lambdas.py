"""Clara 4.0 ``output_transform`` lambdas written for batched engine output, as ``from_engine`` expressions.

MONAI 0.5 engines kept a batch as one dict (``engine.state.output["loss"]``); since MONAI 0.6 the output
is decollated into a list of per-item dicts, so ``lambda x: x['loss']`` fails with a bare TypeError.
``monai.handlers.from_engine`` reads the same keys from the list. The rewrite is to a string the
restricted code grammar accepts, so it adds no way to run code.
"""

from __future__ import annotations

import ast

__all__ = ["rewrite_batched_lambda", "BATCH_LEVEL_KEYS"]

# Keys whose value is one number per batch, repeated in every decollated item: take the first.
BATCH_LEVEL_KEYS = frozenset({"loss"})


def _keys_read(body: ast.expr, param: str) -> list[str] | None:
    """``["pred", "label"]`` for ``x['pred']`` / ``(x['pred'], x['label'])``; None for any other form."""
    items = body.elts if isinstance(body, (ast.Tuple, ast.List)) else [body]
    keys = []
    for item in items:
        if not (
            isinstance(item, ast.Subscript)
            and isinstance(item.value, ast.Name)
            and item.value.id == param
            and isinstance(item.slice, ast.Constant)
            and isinstance(item.slice.value, str)
        ):
            return None
        keys.append(item.slice.value)
    return keys or None


def rewrite_batched_lambda(code: str) -> str | None:
    """The ``#monai.handlers.from_engine(...)`` form of a batched-output lambda, or None if ``code`` is not one.

    Args:
        code: a config code string such as ``"lambda x: x['loss']"``.
    """
    try:
        tree = ast.parse(code.strip(), mode="eval")
    except SyntaxError:
        return None
    node = tree.body
    if not isinstance(node, ast.Lambda) or len(node.args.args) != 1 or node.args.vararg or node.args.kwarg:
        return None
    keys = _keys_read(node.body, node.args.args[0].arg)
    if keys is None:
        return None
    first = ", first=True" if all(k in BATCH_LEVEL_KEYS for k in keys) else ""
    return f"#monai.handlers.from_engine({keys!r}{first})"
