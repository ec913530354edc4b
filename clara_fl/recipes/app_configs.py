"""A job for an MMAR as the typed model of :mod:`clara_fl.recipes.job_model`: a job template's apps with the
asked-for settings applied.

This is the one place settings become the job: ``clara-fl job create`` writes the model's configs, the recipe
hands FedJob its components, and the templates stay usable by ``nvflare job create`` as they are.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clara_fl.config.errors import ConfigError, UsageError
from clara_fl.config.jsonio import load_json
from clara_fl.config.resolver import component_label
from clara_fl.config.variables import as_bool
from clara_fl.fl.algorithms import algorithm_named
from clara_fl.fl.dp_settings import DPSettings
from clara_fl.recipes.algorithms import apply_algorithm, check_algorithm_under_he
from clara_fl.recipes.dp import apply_dp, check_dp
from clara_fl.recipes.he import apply_homomorphic_encryption
from clara_fl.recipes.job_model import LEARNER_ID, MODEL_SELECTOR_ID, ClientApp, Component, FLJob, ServerApp
from clara_fl.recipes.robust_aggregation import apply_robust_aggregation
from clara_fl.resources import templates_dir

__all__ = [
    "DEFAULT_TEMPLATE",
    "SCATTER_AND_GATHER_TEMPLATE",
    "FedAvgSettings",
    "build_job",
    "choose_template",
    "find_template",
    "merge_settings",
    "merged_environment",
    "read_conf",
    "returned_metrics",
    "validation_key_metric",
]

logger = logging.getLogger(__name__)

# FLARE's ModelController family (FedAvg, CrossSiteEval): the job's template unless the algorithm or options need
DEFAULT_TEMPLATE = "clara_fedavg_cse_mc"
# FLARE's ScatterAndGather with its shareable generator and aggregator: FedOpt, HE, the aggregator's settings
SCATTER_AND_GATHER_TEMPLATE = "clara_fedavg_cse"
CROSS_SITE_WORKFLOWS = ("cross_site_model_eval", "cross_site_eval")
CROSS_SITE_COMPONENTS = ("model_locator", "json_generator")
VALIDATE_TASK = "validate"
TRAIN_CONFIG = "config/config_train.json"
MODEL_SELECTOR_CLASSES = ("IntimeModelSelector", "GlobalModelSelector")


@dataclass
class FedAvgSettings:
    """What a Clara FedAvg job asks for; None keeps the template's value."""

    num_rounds: int | None = None
    min_clients: int | None = None
    local_epochs: int | None = None
    steps_aggregation: int | None = None
    nproc_per_site: int | None = None
    cross_site_eval: bool = True
    start_round: int | None = None
    wait_after_min_clients: int | None = None
    heart_beat_timeout: int | None = None
    aggregation_weights: dict[str, float] | None = None
    exclude_vars: str | None = None  # the aggregator's: variables left out of aggregation
    # the persistor's (PTFileModelPersistor exclude_vars): variables left out of the global model the server sends
    persistor_exclude_vars: str | None = None
    # client filters on the train result, each {"path": ..., "args": {...}} (privacy: PercentilePrivacy, ...)
    result_filters: list[dict[str, Any]] = field(default_factory=list)
    data_filters: list[dict[str, Any]] = field(default_factory=list)
    # values for the job's environment.json (the MMAR's variables, e.g. roi_size)
    overrides: dict[str, Any] = field(default_factory=dict)
    # the FL algorithm (clara_fl.recipes.algorithms) and its arguments (--algorithm-arg)
    algorithm: str = "fedavg"
    algorithm_args: dict[str, Any] = field(default_factory=dict)
    # the best-model selector's key metric named by the MMAR's own config_fed_server.json, and where
    # ("FILE: JSON path"); None: the MMAR's validation key metric
    model_selector_key: str | None = None
    model_selector_key_source: str | None = None
    # homomorphic encryption with FLARE's HE components (clara_fl.recipes.he; needs clara-fl[he] to run)
    he: bool = False
    # under he: the layers the sites encrypt (HEModelEncryptor encrypt_layers: names or a regular expression;
    # None encrypts all). The sites always weigh (the server only adds): a Clara config's choice of the server
    # weighing only decides which aggregation_weights count (clara_configs)
    he_encrypt_layers: list[str] | str | None = None
    # a robust aggregation rule in place of the weighted mean (--aggregator: median, trimmed_mean:beta=B, krum:f=F,
    # multikrum:f=F,m=M; clara_fl.recipes.robust_aggregation); None: the weighted mean
    aggregator: str | None = None
    # DP-SGD at the sites (--dp; clara_fl.recipes.dp): the budget for the whole job and the clipping norm
    dp: DPSettings | None = None


def find_template(template: str) -> Path:
    """A template folder: a path, or a name under the shipped job_templates/.

    Raises:
        UsageError: neither names a template folder (``--template``).
    """
    candidate = Path(template)
    shipped = templates_dir()
    if not candidate.is_dir():
        candidate = shipped / template
    if not (candidate / "config_fed_client.conf").is_file() or not (candidate / "config_fed_server.conf").is_file():
        known = sorted(p.name for p in shipped.iterdir() if p.is_dir()) if shipped.is_dir() else []
        known_names = ", ".join(known) or "none"
        raise UsageError("--template", template, f"job template '{template}' not found (known: {known_names})")
    return candidate


def read_conf(path: Path) -> dict[str, Any]:
    """A HOCON (.conf) file as plain JSON data."""
    from pyhocon import ConfigFactory, HOCONConverter

    return json.loads(HOCONConverter.to_json(ConfigFactory.parse_file(str(path))))


def _validate_metrics(config: Any) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The validate section's key metric component and its other metric components (``config`` is the MMAR's
    config_train.json): ``key_metric`` and ``additional_metrics``, or Clara 4.0's ``metrics`` list (the one with
    ``is_key_metric``, else the first, is key).
    """
    validate = config.get("validate") if isinstance(config, dict) else None
    if not isinstance(validate, dict):
        return None, []
    if isinstance(validate.get("metrics"), list):
        specs = [m for m in validate["metrics"] if isinstance(m, dict)]
        flagged = [m for m in specs if as_bool(m.get("is_key_metric", False))]
        key = flagged[0] if flagged else (specs[0] if specs else None)
        return key, [m for m in specs if m is not key]
    key = validate.get("key_metric")
    additional = validate.get("additional_metrics")
    others = [m for m in additional if isinstance(m, dict)] if isinstance(additional, list) else []
    enabled = lambda spec: not as_bool(spec.get("disabled", False))  # noqa: E731
    return (key if isinstance(key, dict) and enabled(key) else None), [m for m in others if enabled(m)]


def _key_metric(config: Any) -> str | None:
    key, _ = _validate_metrics(config)
    return component_label(key) if key is not None else None


def _returned_metrics(config: Any) -> list[str]:
    key, others = _validate_metrics(config)
    return list(dict.fromkeys(component_label(spec) for spec in ([key] if key else []) + others))


def validation_key_metric(mmar: Path, train_config: str = TRAIN_CONFIG) -> str | None:
    """The log_label of the MMAR's validation key metric: what the server selects the best model by."""
    return _key_metric(load_json(mmar / train_config))


def returned_metrics(mmar: Path, train_config: str = TRAIN_CONFIG) -> list[str]:
    """The metric names the sites send back from validation: the validate section's key and additional metrics."""
    return _returned_metrics(load_json(mmar / train_config))


def _set_args(component: Component | None, **values: Any) -> set[str]:
    """Set the given (non-None) arguments of a component; returns the names set (none without the component)."""
    given = {k: v for k, v in values.items() if v is not None}
    if component is None:
        return set()
    component.args.update(given)
    return set(given)


def choose_template(settings: FedAvgSettings, template: str | None = None) -> str:
    """The job template: ``template`` when one is named, else the one the algorithm and the options need.

    :data:`SCATTER_AND_GATHER_TEMPLATE` when the algorithm's server part needs FLARE's ScatterAndGather (FedOpt's
    shareable generator), with ``he`` (FLARE's HE aggregator and generator) or when the settings are the
    aggregator's (``aggregation_weights``, ``exclude_vars``: an MMAR's own Clara FL config); one info line says why.
    Else the algorithm's own template, or :data:`DEFAULT_TEMPLATE`. A named template that cannot run the algorithm
    or take a setting is refused later, by what needs it.

    Args:
        settings: the job's settings (its algorithm, ``he`` and the aggregator's settings).
        template: the template the user named (``--template``); None: none named.

    Raises:
        UsageError: an unknown algorithm.
    """
    if template is not None:
        return template
    algorithm = algorithm_named(settings.algorithm)
    reason = None
    if algorithm.server.needs == "scatter_and_gather":
        reason = f"{algorithm.name}'s server part runs on FLARE's ScatterAndGather"
    elif settings.he:
        reason = "--he runs on FLARE's ScatterAndGather HE aggregator and shareable generator"
    elif algorithm.server.needs is None:
        given = [n for n in ("aggregation_weights", "exclude_vars") if getattr(settings, n) is not None]
        if given:
            reason = f"the job sets the ScatterAndGather aggregator's {' and '.join(given)}"
    if reason is not None:
        logger.info("job template %s: %s", SCATTER_AND_GATHER_TEMPLATE, reason)
        return SCATTER_AND_GATHER_TEMPLATE
    return algorithm.job_template or DEFAULT_TEMPLATE


def build_job(mmar: Path, settings: FedAvgSettings, template: str | None = None) -> FLJob:
    """The job for ``mmar`` from ``template`` with ``settings`` applied.

    Args:
        mmar: the MMAR root folder.
        settings: what the job asks for.
        template: a template name or folder (``--template``); None: the one :func:`choose_template` picks.

    Raises:
        ConfigError: the template is unknown or lacks what a setting needs, or the best-model selector's key
            metric is not one the sites return (config_train.json's validate metrics).
        UsageError: the algorithm cannot run under HE, or the named template cannot run the algorithm, or the robust
            aggregator (``aggregator``) does not apply to the algorithm, HE or the rounds' sites.
    """
    s = settings
    if s.he:
        check_algorithm_under_he(s.algorithm)
    if s.dp is not None:
        check_dp(s.algorithm, s.nproc_per_site)
    template_name = choose_template(s, template)
    template_dir = find_template(template_name)
    client = ClientApp.from_config(read_conf(template_dir / "config_fed_client.conf"))
    server = ServerApp.from_config(read_conf(template_dir / "config_fed_server.conf"))
    meta = read_conf(template_dir / "meta.conf") if (template_dir / "meta.conf").is_file() else {}
    train_config = load_json(mmar / TRAIN_CONFIG)

    taken = _set_args(
        server.workflow("scatter_and_gather"),
        num_rounds=s.num_rounds,
        min_clients=s.min_clients,
        start_round=s.start_round,
        wait_time_after_min_received=s.wait_after_min_clients,
    )
    taken |= _set_args(
        server.workflow("fedavg"),
        num_rounds=s.num_rounds,
        min_clients=s.min_clients,
        start_round=s.start_round,
        wait_time_after_min_received=s.wait_after_min_clients,
    )
    taken |= _set_args(server.aggregator, aggregation_weights=s.aggregation_weights, exclude_vars=s.exclude_vars)
    wanted = {
        "wait_time_after_min_received": s.wait_after_min_clients,
        "aggregation_weights": s.aggregation_weights,
        "exclude_vars": s.exclude_vars,
    }
    if s.persistor_exclude_vars is not None:
        taken |= {f"persistor {n}" for n in _set_args(server.persistor, exclude_vars=s.persistor_exclude_vars)}
        wanted["persistor exclude_vars"] = s.persistor_exclude_vars
    for name, value in wanted.items():
        if value is not None and name not in taken:
            raise ConfigError(
                f"template '{template_name}' has no component that takes {name}; use {SCATTER_AND_GATHER_TEMPLATE}",
                path="--template",
            )
    if s.aggregator is not None:  # before the privacy filters' judge builds the network
        apply_robust_aggregation(server, s.aggregator, s.algorithm, s.he, template_name)
    _set_args(
        client.component(LEARNER_ID),
        local_epochs=s.local_epochs,
        steps_aggregation=s.steps_aggregation,
        nproc_per_site=s.nproc_per_site,
    )
    if s.heart_beat_timeout is not None:
        server.settings["heart_beat_timeout"] = s.heart_beat_timeout
    key_metric = s.model_selector_key or _key_metric(train_config)
    if key_metric:
        _set_args(server.component(MODEL_SELECTOR_ID), key_metric=key_metric)
    _check_selector_key(server, _returned_metrics(train_config), s, template_dir)
    if not s.cross_site_eval:
        server.workflows = [w for w in server.workflows if w.id not in CROSS_SITE_WORKFLOWS]
        server.components = [c for c in server.components if c.id not in CROSS_SITE_COMPONENTS]
        client.executors = [e for e in client.executors if e.tasks != [VALIDATE_TASK]]
    privacy = judge_privacy_filters(mmar, s)
    if s.result_filters:
        client.add_task_filters("task_result_filters", ["train"], [Component.from_config(f) for f in s.result_filters])
    if s.data_filters:
        client.add_task_filters("task_data_filters", ["train"], [Component.from_config(f) for f in s.data_filters])
    algorithm_args = apply_algorithm(server, client, s.algorithm, s.algorithm_args, s.nproc_per_site)
    if s.dp is not None:
        logger.info("%s", apply_dp(server, client, s.dp, s.num_rounds).describe())
    if s.he:
        apply_homomorphic_encryption(server, client, template_name, encrypt_layers=s.he_encrypt_layers)
    overrides: dict[str, Any] = dict(s.overrides)
    if s.nproc_per_site and s.nproc_per_site > 1:
        overrides["multi_gpu"] = True
    return FLJob(
        server=server,
        client=client,
        min_clients=s.min_clients if s.min_clients is not None else int(meta.get("min_clients", 2)),
        algorithm=s.algorithm,
        algorithm_args=algorithm_args,
        he=s.he,
        template=template_name,
        environment=merged_environment(mmar, overrides),
        privacy=privacy,
        aggregator=s.aggregator,
    )


def judge_privacy_filters(mmar: Path, settings: FedAvgSettings) -> list[str]:
    """One line for each privacy filter on the train result, judged against the MMAR's network (built here,
    restricted policy, only when there is such a filter).

    Raises:
        ConfigError: a filter whose settings release nothing, only noise, or leave the update unchanged.
    """
    from clara_fl.fl.jobs.privacy import privacy_filter_name
    from clara_fl.fl.jobs.privacy_check import SiteUpdate, judge_result_filters

    if not any(privacy_filter_name(entry) for entry in settings.result_filters):
        return []
    update = SiteUpdate.of_mmar(str(mmar), overrides=settings.overrides)
    return judge_result_filters(settings.result_filters, update, "--privacy")


def merge_settings(
    base: FedAvgSettings,
    privacy_filters: list[dict[str, Any]] | None = None,
    overrides: Mapping[str, Any] | None = None,
    **values: Any,
) -> FedAvgSettings:
    """``base`` with the given (non-None) ``values`` on top; privacy filters and overrides are added to its own."""
    merged = dataclasses.replace(base, **{k: v for k, v in values.items() if v is not None})
    if privacy_filters:
        merged.result_filters = [*merged.result_filters, *privacy_filters]
    if overrides:
        merged.overrides = {**merged.overrides, **overrides}
    return merged


def _check_selector_key(server: ServerApp, returned: list[str], settings: FedAvgSettings, template_dir: Path) -> None:
    """Refuse a best-model selector whose key metric the sites never send (``returned``): FLARE's selector would
    only warn at every round and never save a best global model."""
    for index, component in enumerate(server.components):
        if component.id != MODEL_SELECTOR_ID and component.class_name not in MODEL_SELECTOR_CLASSES:
            continue
        key = component.args.get("key_metric")
        if key is None or key in returned:
            continue
        if settings.model_selector_key is not None and settings.model_selector_key_source:
            file, _, path = settings.model_selector_key_source.partition(": ")
        else:
            file, path = str(template_dir / "config_fed_server.conf"), f"components[{index}].args.key_metric"
        sent = ", ".join(returned) if returned else "none: config/config_train.json has no validate metrics"
        raise ConfigError(
            f"the best-model selector's key metric '{key}' is not a metric the sites return ({sent}); "
            "the best global model would never be chosen",
            file=file,
            path=path,
        )


def merged_environment(mmar: Path, overrides: Mapping[str, Any]) -> dict[str, Any] | None:
    """The MMAR's environment.json with ``overrides`` on top; None when there is nothing to change."""
    if not overrides:
        return None
    env_path = mmar / "config" / "environment.json"
    environment = load_json(env_path, what="environment file") if env_path.is_file() else {}
    return {**environment, **overrides}
