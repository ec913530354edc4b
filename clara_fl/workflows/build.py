"""Check, then build, every component of a loaded config in a prepared runtime."""

from __future__ import annotations

import json
import logging
from typing import Any

from clara_fl.config.errors import ConfigError, located_failure
from clara_fl.config.mmar import LoadedConfig
from clara_fl.config.resolver import BuildContext, ConfigResolver
from clara_fl.config.restrictions import CodePolicy, Restrictions
from clara_fl.config.variables import as_bool, config_globals
from clara_fl.runtime.device import RuntimeSettings, prepare_runtime
from clara_fl.workflows.failures import FailureLocator
from clara_fl.workflows.runtime import ClaraRuntime, with_runtime

__all__ = ["build_components", "check_config", "require"]

logger = logging.getLogger(__name__)


def build_components(
    loaded: LoadedConfig, context: BuildContext | None = None, code_policy: str | CodePolicy = "full"
) -> tuple[ConfigResolver, BuildContext, FailureLocator]:
    """Dry-run the whole config (fast, writes nothing), then build it; returns the resolver holding the components,
    the context and the locator that names the config item behind a failure of one of them.

    Args:
        loaded: the config with its variables filled in.
        context: the runtime to build in (default: prepared from the config's variables).
        code_policy: ``"full"`` (the user's own MMAR: code runs as Python) or ``"restricted"`` (a config from
            outside: closed code grammar, catalogued classes only, every argument judged, writes inside the
            MMAR), or a :class:`CodePolicy` that also names the site's data folders and catalog.

    Raises:
        ConfigError: anything the config asks for that is wrong or that the policy refuses, before anything is built.
    """
    from clara_fl.config.expressions import evaluator_for

    policy = CodePolicy.of(code_policy)
    settings = RuntimeSettings.from_variables(loaded.variables)
    context = with_runtime(context or prepare_runtime(settings, loaded.mmar_root))
    context.evaluator = evaluator_for(policy.name)
    if policy.name == "restricted":
        context.restrictions = Restrictions(
            loaded.mmar_root, policy.data_roots, context.runtime.search_modules, policy.catalog
        )
        context.restrictions.check_variables(loaded.variables.as_dict(), loaded.variables.file)
    if as_bool(loaded.variables.get("print_conf")):
        print(json.dumps(loaded.config, indent=2))
    check_config(loaded, context)
    resolver = ConfigResolver(loaded.config, loaded.display_file, context, set(config_globals(loaded.config)))
    # before building: a component failing while others build (a dataset caching its cases) is named too
    locator = FailureLocator(resolver)
    if isinstance(context.runtime, ClaraRuntime):
        context.runtime.locator = locator
    try:
        resolver.build_all()
    except ConfigError as e:
        _name_failed_build(e, locator)
        raise
    _log_network_summary(resolver)
    return resolver, context, locator


def _name_failed_build(error: ConfigError, locator: FailureLocator) -> None:
    """A component that failed to build because another, built before it, failed inside its construction (a
    dataset's transform on a case while the dataset caches): the build error names that one and the case, as
    run-time failures do, rather than MONAI's message, which names only an object's address."""
    cause = error.__cause__
    if error.component is None or cause is None:
        return
    locator.mark(cause)
    located = located_failure(cause)
    if located is None:
        return
    if locator.file:
        located = located.removeprefix(f"{locator.file}: ")
    error.message = f"building {error.component} failed: {located}"
    error.args = (error.message,)


def check_config(loaded: LoadedConfig, context: BuildContext) -> None:
    """Everything that can be checked without building: names, arguments, references, aliases,
    variables, code (under ``context.evaluator``'s policy) and data files. Writes nothing."""
    RuntimeSettings.from_variables(loaded.variables)
    with_runtime(context)
    if loaded.clara40:  # before the MMAR's custom/ code is imported: names it may import from MONAI 0.5-0.8
        from clara_fl.components.legacy_monai import install_legacy_names

        install_legacy_names()
        context.clara40 = True
    ConfigResolver(
        loaded.config, loaded.display_file, context, set(config_globals(loaded.config)), dry_run=True
    ).build_all()


def require(resolver: ConfigResolver, name: str, section: str) -> Any:
    """A component the workflow cannot run without."""
    where = f"{section}.{name}" if section else name
    if name not in resolver.sections.get(section, {}):
        raise ConfigError(f"missing '{where}': the config must define it", file=resolver.file, path=where)
    value = resolver.get(name, section)
    if value is None:
        raise ConfigError(f"'{where}' is disabled, but the workflow needs it", file=resolver.file, path=where)
    return value


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
            type(network).__name__,
            f"{total:,}",
            f"{trainable:,}",
            built.get("input_size"),
        )
