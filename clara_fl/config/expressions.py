"""Evaluating Clara code strings: ``"#expr"`` expressions and ``"lambda ..."`` functions.

``@name`` inside code refers to a config component, as everywhere else in a config.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from clara_fl.config.compat import translate_expression
from clara_fl.config.errors import ConfigError

__all__ = ["ExpressionEvaluator", "references_in"]

REFERENCE = re.compile(r"@([A-Za-z_][A-Za-z0-9_]*)")


def references_in(code: str) -> list[str]:
    """Names referred to as ``@name`` in a code string."""
    return REFERENCE.findall(code)


def _source(code: str) -> str:
    return translate_expression(code[1:] if code.startswith("#") else code).strip()


class ExpressionEvaluator:
    """Full-Python evaluation of config code, with ``monai``, ``torch`` and ``numpy`` in scope.

    This is what Clara did and what a user running their own MMAR expects.
    """

    def namespace(self) -> dict[str, Any]:
        import monai
        import numpy
        import torch

        from clara_fl.config.compat import from_engine

        return {"monai": monai, "torch": torch, "np": numpy, "numpy": numpy, "__clara_from_engine": from_engine}

    def check(self, code: str) -> None:
        """Raise a ConfigError if ``code`` is not a valid Python expression."""
        self._compile(REFERENCE.sub(r"__ref_\1", _source(code)))

    def evaluate(self, code: str, resolve: Callable[[str], Any]) -> Any:
        """Evaluate ``code``; ``resolve(name)`` supplies the component behind each ``@name``."""
        refs: dict[str, Any] = {}

        def bind(match: re.Match) -> str:
            name = match.group(1)
            refs[f"__ref_{name}"] = resolve(name)
            return f"__ref_{name}"

        text = REFERENCE.sub(bind, _source(code))
        compiled = self._compile(text)
        try:
            return eval(compiled, {**self.namespace(), **refs})  # noqa: S307 - config code is user code here
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError(f"evaluating '{code}' failed: {type(e).__name__}: {e}") from None

    @staticmethod
    def _compile(text: str) -> Any:
        try:
            return compile(text, "<config expression>", "eval")
        except SyntaxError as e:
            raise ConfigError(f"invalid Python expression '{text}': {e.msg}") from None
