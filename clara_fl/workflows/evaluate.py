"""The evaluate workflow: config_validation.json / config_inference.json built into a MONAI evaluator."""

from __future__ import annotations

import numbers
from typing import Any

from clara_fl.config.mmar import LoadedConfig
from clara_fl.config.resolver import BuildContext, ConfigResolver
from clara_fl.config.restrictions import CodePolicy
from clara_fl.workflows.build import build_components, require
from clara_fl.workflows.failures import FailureLocator
from clara_fl.workflows.train import _attach_progress_bar, _interactive

__all__ = ["EvaluateWorkflow"]


class EvaluateWorkflow:
    """A built validation or inference config; :meth:`run` returns the metrics by log label.

    ``locator`` names the config item behind a failure of its components; :meth:`run` attaches it to the exception.
    """

    def __init__(
        self, loaded: LoadedConfig, resolver: ConfigResolver, context: BuildContext, locator: FailureLocator
    ) -> None:
        self.loaded = loaded
        self.resolver = resolver
        self.context = context
        self.locator = locator
        self.evaluator = require(resolver, "evaluator", "")
        self.network = self.evaluator.network

    @classmethod
    def build(
        cls, loaded: LoadedConfig, context: BuildContext | None = None, code_policy: str | CodePolicy = "full"
    ) -> EvaluateWorkflow:
        return cls(loaded, *build_components(loaded, context, code_policy))

    def run(self, progress: bool | None = None) -> dict[str, float]:
        if progress if progress is not None else _interactive():
            _attach_progress_bar(self.evaluator)
        with self.locator.naming_failures():
            self.evaluator.run()
        return scalar_metrics(self.evaluator.state.metrics)


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Metrics reduced to plain floats (tensor scalars included); non-scalar metrics are left out."""
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1:
            value = value.item()
        if isinstance(value, numbers.Real):
            out[name] = float(value)
    return out
