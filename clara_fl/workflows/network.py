"""Building only the network of a train config (FL server, model export), without data or handlers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clara_fl.config.errors import ConfigError
from clara_fl.config.jsonio import load_json
from clara_fl.config.mmar import read_config, resolve_in_mmar
from clara_fl.config.resolver import BuildContext, ConfigResolver
from clara_fl.config.restrictions import CodePolicy, Restrictions
from clara_fl.workflows.runtime import with_runtime

__all__ = ["build_train_network", "train_model_spec"]


def train_model_spec(mmar_root: str, train_config: str) -> dict[str, Any]:
    """The raw ``train.model`` component of an MMAR's train config (variables not yet filled)."""
    path = resolve_in_mmar(mmar_root, train_config)
    return _model_of(load_json(path), path)


def _model_of(config: Any, file: str) -> dict[str, Any]:
    model = config.get("train", {}).get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict):
        raise ConfigError("no train.model component to build the network from", file=file, path="train.model")
    return model


def build_train_network(
    mmar_root: str,
    train_config: str = "config/config_train.json",
    environment: str | None = "config/environment.json",
    overrides: Mapping[str, Any] | None = None,
    extra_environment: Mapping[str, Any] | None = None,
    code_policy: str | CodePolicy = "restricted",
) -> Any:
    """The MMAR's ``train.model``, seeded like training, on the CPU (config code restricted by default).

    The network's component is checked whole (a dry run: under the restricted policy every class and every
    argument value is judged) before anything of it is built.

    Args:
        mmar_root: the MMAR folder.
        train_config: its train config, relative to ``mmar_root``.
        environment: its environment file.
        overrides: ``--set`` style values.
        extra_environment: a site's local values, between ``environment`` and ``overrides``.
        code_policy: ``"restricted"`` (default), ``"full"``, or a :class:`CodePolicy` with a site's catalog.

    Raises:
        ConfigError: the config lacks a network, or asks for something wrong or refused.
    """
    import torch

    from clara_fl.config.expressions import evaluator_for
    from clara_fl.runtime.device import RuntimeSettings

    raw = read_config(mmar_root, train_config, environment, overrides, extra_environment)
    model = raw.variables.substitute(_model_of(raw.config, raw.display_file), "train.model")
    settings = RuntimeSettings.from_variables(raw.variables)
    if settings.random_seed is not None:
        torch.manual_seed(settings.random_seed)
    policy = CodePolicy.of(code_policy)
    context = with_runtime(
        BuildContext(device=torch.device("cpu"), mmar_root=mmar_root, evaluator=evaluator_for(policy.name))
    )
    if policy.name == "restricted":
        context.restrictions = Restrictions(
            mmar_root, policy.data_roots, context.runtime.search_modules, policy.catalog
        )
    config = {"train": {"model": model}}
    ConfigResolver(config, file=train_config, context=context, dry_run=True).get("model", "train")
    return ConfigResolver(config, file=train_config, context=context).get("model", "train")
