"""FLARE 2.9 Job Recipes for Clara MMARs: ``ClaraFedAvgRecipe(mmar, ...).execute(SimEnv(...))`` or ``.export(dir)``.

The recipe class is imported on first use: ``clara-fl job create`` and ``--help`` read the settings and
algorithm tables of this package without importing FLARE or torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clara_fl.recipes.app_configs import FedAvgSettings

if TYPE_CHECKING:
    from clara_fl.recipes.evaluate import ClaraFedEvalRecipe
    from clara_fl.recipes.fedavg import ClaraFedAvgRecipe
    from clara_fl.recipes.stats import ClaraFedStatsRecipe

__all__ = ["ClaraFedAvgRecipe", "ClaraFedEvalRecipe", "ClaraFedStatsRecipe", "FedAvgSettings"]


def __getattr__(name: str) -> Any:
    if name == "ClaraFedAvgRecipe":
        from clara_fl.recipes.fedavg import ClaraFedAvgRecipe

        return ClaraFedAvgRecipe
    if name == "ClaraFedEvalRecipe":
        from clara_fl.recipes.evaluate import ClaraFedEvalRecipe

        return ClaraFedEvalRecipe
    if name == "ClaraFedStatsRecipe":
        from clara_fl.recipes.stats import ClaraFedStatsRecipe

        return ClaraFedStatsRecipe
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
