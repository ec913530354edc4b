"""Building only the network of a train config (FL server, model export), without data or handlers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clara_fl.config.errors import ConfigError
from clara_fl.config.jsonio import load_json
from clara_fl.config.mmar import add_custom_to_path, resolve_in_mmar
from clara_fl.config.resolver import BuildContext, ConfigResolver
from clara_fl.config.restrictions import CodePolicy, Restrictions
from clara_fl.config.variables import Variables
from clara_fl.workflows.runtime import with_runtime

__all__ = ["build_train_network", "train_model_spec"]


def train_model_spec(mmar_root: str, train_config: str) -> dict[str, Any]:
    """The raw ``train.model`` component of a train config (variables not yet filled)."""
    path = resolve_in_mmar(mmar_root, train_config)
    config = load_json(path)
    model = config.get("train", {}).get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict):
        raise ConfigError("no train.model component to build the network from", file=path, path="train.model")
    return model


def build_train_network(
    mmar_root: str,
    train_config: str = "config/config_train.json",
    environment: str | None = "config/environment.json",
    overrides: Mapping[str, Any] | None = None,
    extra_environment: Mapping[str, Any] | None = None,
    code_policy: str | CodePolicy = "restricted",
) -> Any:
    """The MMAR's ``train.model``, seeded like training, on the CPU (config code restricted by default)."""
    import torch

    from clara_fl.runtime.device import RuntimeSettings

    path = resolve_in_mmar(mmar_root, train_config)
    config = load_json(path)
    env = dict(load_json(resolve_in_mmar(mmar_root, environment), what="environment file")) if environment else {}
    env.update(extra_environment or {})
    variables = Variables.collect(config, env, overrides, mmar_root=mmar_root, file=train_config)
    model = variables.substitute(train_model_spec(mmar_root, train_config), "train.model")
    settings = RuntimeSettings.from_variables(variables)
    if settings.random_seed is not None:
        torch.manual_seed(settings.random_seed)
    add_custom_to_path(mmar_root)
    from clara_fl.config.expressions import evaluator_for

    policy = CodePolicy.of(code_policy)
    context = with_runtime(BuildContext(device=torch.device("cpu"), mmar_root=mmar_root, evaluator=evaluator_for(policy.name)))
    if policy.name == "restricted":
        context.restrictions = Restrictions(mmar_root, policy.data_roots, context.runtime.search_modules)
    return ConfigResolver({"train": {"model": model}}, file=train_config, context=context).get("model", "train")
