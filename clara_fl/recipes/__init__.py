"""FLARE 2.9 Job Recipes for Clara MMARs: ``ClaraFedAvgRecipe(mmar, ...).execute(SimEnv(...))`` or ``.export(dir)``."""

from clara_fl.recipes.app_configs import FedAvgSettings
from clara_fl.recipes.fedavg import ClaraFedAvgRecipe

__all__ = ["ClaraFedAvgRecipe", "FedAvgSettings"]
