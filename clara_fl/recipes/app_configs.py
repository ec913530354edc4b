"""A job's FLARE app configs for an MMAR: a shipped job template with the asked-for settings applied.

This is the one place settings become config_fed_server/config_fed_client content; the recipe turns the
result into a FLARE FedJob, and the templates stay usable by ``nvflare job create`` as they are.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clara_fl.config.errors import ConfigError
from clara_fl.config.jsonio import load_json
from clara_fl.recipes.algorithms import configure_algorithm, template_for
from clara_fl.resources import templates_dir

__all__ = [
    "DEFAULT_TEMPLATE",
    "AppConfigs",
    "FedAvgSettings",
    "build_app_configs",
    "find_template",
    "read_conf",
    "validation_key_metric",
]

DEFAULT_TEMPLATE = "clara_fedavg_cse"
CROSS_SITE_WORKFLOWS = ("cross_site_model_eval", "cross_site_eval")
CROSS_SITE_COMPONENTS = ("model_locator", "json_generator")
VALIDATE_TASK = "validate"


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
    exclude_vars: str | None = None
    # client filters on the train result, each {"path": ..., "args": {...}} (privacy: PercentilePrivacy, ...)
    result_filters: list[dict[str, Any]] = field(default_factory=list)
    data_filters: list[dict[str, Any]] = field(default_factory=list)
    # values for the job's environment.json (the MMAR's variables, e.g. roi_size)
    overrides: dict[str, Any] = field(default_factory=dict)
    # the FL algorithm (clara_fl.recipes.algorithms) and its arguments (--algorithm-arg)
    algorithm: str = "fedavg"
    algorithm_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class AppConfigs:
    """The FLARE app configs of one job (as config_fed_*.json hold them) and its meta."""

    server: dict[str, Any]
    client: dict[str, Any]
    min_clients: int
    overrides: dict[str, Any]


def find_template(template: str) -> Path:
    """A template folder: a path, or a name under the shipped job_templates/.

    Raises:
        ConfigError: neither names a template folder.
    """
    candidate = Path(template)
    shipped = templates_dir()
    if not candidate.is_dir():
        candidate = shipped / template
    if not (candidate / "config_fed_client.conf").is_file() or not (candidate / "config_fed_server.conf").is_file():
        known = sorted(p.name for p in shipped.iterdir() if p.is_dir()) if shipped.is_dir() else []
        known_names = ", ".join(known) or "none"
        raise ConfigError(f"job template '{template}' not found (known: {known_names})", path="--template")
    return candidate


def read_conf(path: Path) -> dict[str, Any]:
    """A HOCON (.conf) file as plain JSON data."""
    from pyhocon import ConfigFactory, HOCONConverter

    return json.loads(HOCONConverter.to_json(ConfigFactory.parse_file(str(path))))


def validation_key_metric(mmar: Path, train_config: str = "config/config_train.json") -> str | None:
    """The log_label of the MMAR's validation key metric: what the server selects the best model by."""
    config = load_json(mmar / train_config)
    metric = config.get("validate", {}).get("key_metric") if isinstance(config, dict) else None
    if isinstance(metric, dict):
        return str(metric.get("log_label") or metric.get("name"))
    return None


def components_by_id(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every component, workflow and executor of an app config by id."""
    found = {c["id"]: c for c in config.get("components", [])}
    found.update({w["id"]: w for w in config.get("workflows", [])})
    found.update({e["executor"]["id"]: e["executor"] for e in config.get("executors", []) if "id" in e["executor"]})
    return found


def _set_args(config: dict[str, Any], component_id: str, **values: Any) -> set[str]:
    """Set the given (non-None) arguments of a component; returns the names set."""
    component = components_by_id(config).get(component_id)
    given = {k: v for k, v in values.items() if v is not None}
    if component is None:
        return set()
    component.setdefault("args", {}).update(given)
    return set(given)


def build_app_configs(mmar: Path, settings: FedAvgSettings, template: str = DEFAULT_TEMPLATE) -> AppConfigs:
    """The server and client app configs for ``mmar`` from ``template`` with ``settings`` applied.

    Raises:
        ConfigError: the template is unknown.
    """
    template_dir = find_template(template_for(settings.algorithm, template, DEFAULT_TEMPLATE))
    client = copy.deepcopy(read_conf(template_dir / "config_fed_client.conf"))
    server = copy.deepcopy(read_conf(template_dir / "config_fed_server.conf"))
    meta = read_conf(template_dir / "meta.conf") if (template_dir / "meta.conf").is_file() else {}

    s = settings
    taken = _set_args(
        server,
        "scatter_and_gather",
        num_rounds=s.num_rounds,
        min_clients=s.min_clients,
        start_round=s.start_round,
        wait_time_after_min_received=s.wait_after_min_clients,
    )
    taken |= _set_args(server, "fedavg", num_rounds=s.num_rounds, num_clients=s.min_clients, start_round=s.start_round)
    taken |= _set_args(server, "aggregator", aggregation_weights=s.aggregation_weights, exclude_vars=s.exclude_vars)
    wanted = {
        "wait_time_after_min_received": s.wait_after_min_clients,
        "aggregation_weights": s.aggregation_weights,
        "exclude_vars": s.exclude_vars,
    }
    for name, value in wanted.items():
        if value is not None and name not in taken:
            raise ConfigError(
                f"template '{template}' has no component that takes {name}; use {DEFAULT_TEMPLATE}", path="--template"
            )
    _set_args(
        client,
        "clara_learner",
        local_epochs=s.local_epochs,
        steps_aggregation=s.steps_aggregation,
        nproc_per_site=s.nproc_per_site,
    )
    if s.heart_beat_timeout is not None:
        server.setdefault("server", {})["heart_beat_timeout"] = s.heart_beat_timeout
    key_metric = validation_key_metric(mmar)
    if key_metric:
        _set_args(server, "model_selector", key_metric=key_metric)
    if not s.cross_site_eval:
        server["workflows"] = [w for w in server["workflows"] if w["id"] not in CROSS_SITE_WORKFLOWS]
        server["components"] = [c for c in server["components"] if c["id"] not in CROSS_SITE_COMPONENTS]
        client["executors"] = [e for e in client["executors"] if e["tasks"] != [VALIDATE_TASK]]
    if s.result_filters:
        client["task_result_filters"] = [
            *client.get("task_result_filters", []),
            {"tasks": ["train"], "filters": copy.deepcopy(s.result_filters)},
        ]
    if s.data_filters:
        client["task_data_filters"] = [
            *client.get("task_data_filters", []),
            {"tasks": ["train"], "filters": copy.deepcopy(s.data_filters)},
        ]
    configure_algorithm(server, client, s.algorithm, s.algorithm_args, s.nproc_per_site)
    overrides: dict[str, Any] = dict(s.overrides)
    if s.nproc_per_site and s.nproc_per_site > 1:
        overrides["multi_gpu"] = True
    min_clients = s.min_clients if s.min_clients is not None else int(meta.get("min_clients", 2))
    return AppConfigs(server=server, client=client, min_clients=min_clients, overrides=overrides)


def merged_environment(mmar: Path, overrides: Mapping[str, Any]) -> dict[str, Any] | None:
    """The MMAR's environment.json with ``overrides`` on top; None when there is nothing to change."""
    if not overrides:
        return None
    env_path = mmar / "config" / "environment.json"
    environment = load_json(env_path, what="environment file") if env_path.is_file() else {}
    return {**environment, **overrides}
