"""``clara-fl job create``: an MMAR plus a job template become a complete FLARE job folder.

The job's app folder is the MMAR (config/, custom/, docs/), never its data or trained models; the
FLARE configs are rendered from the template with the round, epoch and client counts asked for.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clara_fl.config.errors import ConfigError
from clara_fl.config.jsonio import load_json

__all__ = ["TEMPLATES_DIR", "create_job", "find_template", "validation_key_metric"]

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "job_templates"
DEFAULT_TEMPLATE = "clara_fedavg_cse"
MMAR_FOLDERS = ("config", "custom", "docs")


def find_template(template: str) -> Path:
    """A template folder: a path, or a name under the repository's job_templates/."""
    candidate = Path(template)
    if not candidate.is_dir():
        candidate = TEMPLATES_DIR / template
    if not (candidate / "config_fed_client.conf").is_file() or not (candidate / "config_fed_server.conf").is_file():
        known = sorted(p.name for p in TEMPLATES_DIR.iterdir() if p.is_dir()) if TEMPLATES_DIR.is_dir() else []
        raise ConfigError(f"job template '{template}' not found (known: {', '.join(known) or 'none'})", path="--template")
    return candidate


def _read_conf(path: Path) -> dict[str, Any]:
    from pyhocon import ConfigFactory, HOCONConverter

    return json.loads(HOCONConverter.to_json(ConfigFactory.parse_file(str(path))))


def validation_key_metric(mmar: Path, train_config: str = "config/config_train.json") -> str | None:
    """The log_label of the MMAR's validation key metric: what the server selects the best model by."""
    config = load_json(mmar / train_config)
    metric = config.get("validate", {}).get("key_metric") if isinstance(config, dict) else None
    if isinstance(metric, dict):
        return str(metric.get("log_label") or metric.get("name"))
    return None


def _components(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = {c["id"]: c for c in config.get("components", [])}
    found.update({w["id"]: w for w in config.get("workflows", [])})
    found.update({e["executor"]["id"]: e["executor"] for e in config.get("executors", [])})
    return found


def _set_args(config: dict[str, Any], component_id: str, **values: Any) -> None:
    component = _components(config).get(component_id)
    if component is not None:
        component.setdefault("args", {}).update({k: v for k, v in values.items() if v is not None})


def create_job(
    mmar: str | os.PathLike,
    output: str | os.PathLike,
    template: str = DEFAULT_TEMPLATE,
    num_rounds: int | None = None,
    local_epochs: int | None = None,
    min_clients: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    force: bool = False,
    nproc_per_site: int | None = None,
) -> Path:
    """Write the job folder ``output`` for ``mmar`` and return it."""
    mmar, output = Path(mmar).resolve(), Path(output).resolve()
    if not (mmar / "config" / "config_train.json").is_file():
        raise ConfigError("not an MMAR: config/config_train.json is missing", file=str(mmar))
    if output.exists() and any(output.iterdir()):
        if not force:
            raise ConfigError("job folder exists and is not empty (use --force to replace it)", file=str(output))
        shutil.rmtree(output)
    template_dir = find_template(template)
    client = _read_conf(template_dir / "config_fed_client.conf")
    server = _read_conf(template_dir / "config_fed_server.conf")
    meta = _read_conf(template_dir / "meta.conf") if (template_dir / "meta.conf").is_file() else {}

    _set_args(server, "scatter_and_gather", num_rounds=num_rounds, min_clients=min_clients)
    _set_args(server, "fedavg", num_rounds=num_rounds, num_clients=min_clients)
    _set_args(client, "clara_learner", local_epochs=local_epochs, nproc_per_site=nproc_per_site)
    if nproc_per_site and nproc_per_site > 1:
        overrides = {**(overrides or {}), "multi_gpu": True}
    key_metric = validation_key_metric(mmar)
    if key_metric:
        _set_args(server, "model_selector", key_metric=key_metric)

    app = output / "app"
    for folder in MMAR_FOLDERS:
        source = mmar / folder
        if not source.is_dir():
            continue
        if folder == "custom" and not any(source.rglob("*.py")):
            continue  # no BYOC code, no custom/: the job stays under the sites' class allow-list
        shutil.copytree(source, app / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if overrides:
        env_path = app / "config" / "environment.json"
        environment = load_json(env_path, what="environment file") if env_path.is_file() else {}
        environment.update(overrides)
        env_path.write_text(json.dumps(environment, indent=2) + "\n")
    (app / "config" / "config_fed_client.json").write_text(json.dumps(client, indent=2) + "\n")
    (app / "config" / "config_fed_server.json").write_text(json.dumps(server, indent=2) + "\n")
    meta = {
        "name": output.name,
        "resource_spec": meta.get("resource_spec", {}),
        "deploy_map": {"app": ["@ALL"]},
        "min_clients": min_clients if min_clients is not None else meta.get("min_clients", 2),
    }
    (output / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return output
