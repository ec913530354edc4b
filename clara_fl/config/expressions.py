"""Evaluating Clara code strings: ``"#expr"`` expressions and ``"lambda ..."`` functions.

``@name`` inside code refers to a config component, as everywhere else in a config.

Two policies: :class:`ExpressionEvaluator` runs full Python (what Clara did, right for a user
running their own MMAR); :class:`RestrictedEvaluator` accepts only a closed set of expression forms
and interprets them without ``eval`` (the default at FL sites and with ``--safe``, where the config
arrives from outside).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from clara_fl.config.compat import translate_expression
from clara_fl.config.errors import ConfigError
from clara_fl.config.safe_code import REF_PREFIX, RestrictedCode

__all__ = ["ExpressionEvaluator", "RestrictedEvaluator", "references_in", "evaluator_for"]

REFERENCE = re.compile(r"@([A-Za-z_][A-Za-z0-9_]*)")


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
            raise ConfigError(f"evaluating '{code}' failed: {type(e).__name__}: {e}") from e

    def globals(self) -> dict[str, Any]:
        return self.namespace()

    @staticmethod
    def _compile(text: str) -> Any:
        try:
            return compile(text, "<config expression>", "eval")
        except SyntaxError as e:
            raise ConfigError(f"invalid Python expression '{text}': {e.msg}") from e


class RestrictedEvaluator(ExpressionEvaluator):
    """Config code under the restricted policy: a closed set of expression forms, compiled to closures
    and run without ``eval`` (see :mod:`clara_fl.config.safe_code`). Checked before anything runs."""

    policy = "restricted"

    def check(self, code: str) -> None:
        self._compile_restricted(code)

    def evaluate(self, code: str, resolve: Callable[[str], Any]) -> Any:
        compiled = self._compile_restricted(code)
        refs = {f"{REF_PREFIX}{name}": resolve(name) for name in dict.fromkeys(references_in(code))}
        try:
            return compiled.run(refs)
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError(f"evaluating '{code}' failed: {type(e).__name__}: {e}") from e

    @staticmethod
    def _compile_restricted(code: str) -> RestrictedCode:
        return RestrictedCode(code, REFERENCE.sub(rf"{REF_PREFIX}\1", _source(code)))


def evaluator_for(policy: str) -> ExpressionEvaluator:
    """The evaluator of a code policy: ``"full"`` or ``"restricted"``."""
    if policy == "full":
        return ExpressionEvaluator()
    if policy == "restricted":
        return RestrictedEvaluator()
    raise ConfigError(f"code_policy must be 'full' or 'restricted', got '{policy}'")
