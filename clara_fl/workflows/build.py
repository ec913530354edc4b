"""Check, then build, every component of a loaded config in a prepared runtime."""

from __future__ import annotations

import json
import logging
from typing import Any

from clara_fl.config.errors import ConfigError
from clara_fl.config.mmar import LoadedConfig
from clara_fl.config.resolver import BuildContext, ConfigResolver
from clara_fl.config.variables import config_globals
from clara_fl.runtime.device import RuntimeSettings, prepare_runtime

__all__ = ["build_components", "check_config", "require"]

logger = logging.getLogger(__name__)


def build_components(
    loaded: LoadedConfig, context: BuildContext | None = None, code_policy: str = "full"
) -> tuple[ConfigResolver, BuildContext]:
    """Dry-run the whole config (fast, writes nothing), then build it; returns the resolver holding the components.

    ``code_policy`` decides how ``#expr``/``lambda`` strings run: ``"full"`` Python or ``"restricted"``.
    """
    from clara_fl.config.expressions import evaluator_for

    settings = RuntimeSettings.from_variables(loaded.variables)
    context = context or prepare_runtime(settings, loaded.mmar_root)
    context.evaluator = evaluator_for(code_policy)
    if _truthy(loaded.variables.get("print_conf")):
        print(json.dumps(loaded.config, indent=2))
    check_config(loaded, context)
    resolver = ConfigResolver(loaded.config, loaded.display_file, context, set(config_globals(loaded.config)))
    resolver.build_all()
    _log_network_summary(resolver)
    return resolver, context


def check_config(loaded: LoadedConfig, context: BuildContext) -> None:
    """Everything that can be checked without building: names, arguments, references, aliases,
    variables, code (under ``context.evaluator``'s policy) and data files. Writes nothing."""
    RuntimeSettings.from_variables(loaded.variables)
    ConfigResolver(loaded.config, loaded.display_file, context, set(config_globals(loaded.config)), dry_run=True).build_all()


def require(resolver: ConfigResolver, name: str, section: str) -> Any:
    """A component the workflow cannot run without."""
    where = f"{section}.{name}" if section else name
    if name not in resolver.sections.get(section, {}):
        raise ConfigError(f"missing '{where}': the config must define it", file=resolver.file, path=where)
    value = resolver.get(name, section)
    if value is None:
        raise ConfigError(f"'{where}' is disabled, but the workflow needs it", file=resolver.file, path=where)
    return value


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("true", "yes", "on", "1"))


def _log_network_summary(resolver: ConfigResolver) -> None:
    summary = resolver.sections.get("", {}).get("network_summary")
    if not isinstance(summary, dict):
        return
    built = resolver.get("network_summary", "")
    network = built.get("network") if isinstance(built, dict) else None
    if network is not None and hasattr(network, "parameters"):
        total = sum(p.numel() for p in network.parameters())
        trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
        logger.info(
            "network %s: %s parameters (%s trainable), input size %s",
            type(network).__name__, f"{total:,}", f"{trainable:,}", built.get("input_size"),
        )
