"""``clara-fl job create``: an MMAR becomes a complete FLARE job folder, without importing FLARE or torch.

The folder is written from the same job model :class:`~clara_fl.recipes.fedavg.ClaraFedAvgRecipe` hands
FedJob (:func:`~clara_fl.recipes.app_configs.build_job`), in the layout FedJob exports (meta.json, app/config,
app/docs, app/custom): building FedJob's component objects would import torch and FLARE just to write JSON.
tests/test_recipes.py checks both give the same job folder. (A job with a privacy filter builds the MMAR's
network, with torch, to judge the filter's settings against it.)
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from clara_fl.config.errors import ConfigError, UsageError
from clara_fl.recipes.app_configs import (
    FedAvgSettings,
    build_job,
    find_template,
    merge_settings,
    read_conf,
    validation_key_metric,
)
from clara_fl.recipes.app_folder import stage_mmar_files
from clara_fl.recipes.clara_configs import read_fl_configs
from clara_fl.recipes.job_model import FLJob
from clara_fl.resources import templates_dir

logger = logging.getLogger(__name__)

__all__ = [
    "TEMPLATES_DIR",
    "create_job",
    "deploy_map",
    "find_template",
    "job_apps",
    "job_name",
    "job_settings",
    "server_app_name",
    "validation_key_metric",
    "write_job_folder",
]

TEMPLATES_DIR = templates_dir()
_read_conf = read_conf  # tests read templates through this name
APP_NAME = "app"
SERVER_APP_NAME = "app_server"  # with named sites (FLJob.sites): the server's app and the sites' app
SITES_APP_NAME = "app_sites"


def job_name(text: str) -> str:
    """``text`` in FLARE's job-name grammar: a letter or digit, then letters, digits, '.', '_' and '-'."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip("._-")
    return name or "clara_fl_job"


def job_settings(mmar: Path, settings: FedAvgSettings | None = None, **values: Any) -> FedAvgSettings:
    """A job's settings: ``settings``, or (None) those the MMAR's own Clara FL configs ask for, with the given
    non-None ``values`` on top (``privacy_filters`` and ``overrides`` add to the settings' own; see
    :func:`~clara_fl.recipes.app_configs.merge_settings`).

    Raises:
        ConfigError: an MMAR's FL config that cannot be carried into a FLARE 2.9 job.
    """
    if settings is None:
        imported = read_fl_configs(mmar)
        settings = imported.settings if imported is not None else FedAvgSettings()
    return merge_settings(settings, **values)


def create_job(
    mmar: str | os.PathLike,
    output: str | os.PathLike,
    template: str | None = None,
    num_rounds: int | None = None,
    local_epochs: int | None = None,
    min_clients: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    force: bool = False,
    nproc_per_site: int | None = None,
    settings: FedAvgSettings | None = None,
    algorithm: str | None = None,
    algorithm_args: Mapping[str, Any] | None = None,
    privacy_filters: list[dict[str, Any]] | None = None,
    he: bool | None = None,
    he_layers: list[str] | str | None = None,
    say: Callable[[str], None] | None = None,
) -> Path:
    """Write the job folder ``output`` for ``mmar`` and return it.

    Args:
        template: the job template (``--template``); None: the one the algorithm and options need
            (:func:`~clara_fl.recipes.app_configs.choose_template`).
        settings: the job's settings; None reads them from the MMAR's own Clara FL configs (when it has
            them). The explicit arguments win over them.
        algorithm: the FL algorithm (``--algorithm``), with ``algorithm_args`` (``--algorithm-arg``).
        privacy_filters: client filters on the train result (``--privacy``), after the MMAR's own.
        he: homomorphic encryption (``--he``).
        he_layers: under ``he``, the tensors the sites encrypt (``--he-layers``: FLARE's ``encrypt_layers``, a list
            of names or a regular expression); None encrypts all.
        say: called with one line per privacy filter saying what it does to the sites' updates (judged
            against the MMAR's network before anything is written).

    Raises:
        ConfigError: not an MMAR, an unknown template or algorithm, a setting that cannot be carried into a
            FLARE 2.9 job, an HE job without TenSEAL installed, a privacy filter that releases nothing or leaves
            the update unchanged. Nothing is written then.
        UsageError: ``output`` holds something and ``force`` is not set.
    """
    mmar = Path(mmar).resolve()
    output = Path(output).resolve()
    if not (mmar / "config" / "config_train.json").is_file():
        raise ConfigError("not an MMAR: config/config_train.json is missing", file=str(mmar))
    if output.exists() and any(output.iterdir()) and not force:
        raise UsageError("--output", str(output), "job folder exists and is not empty (use --force to replace it)")
    settings = job_settings(
        mmar,
        settings,
        num_rounds=num_rounds,
        local_epochs=local_epochs,
        min_clients=min_clients,
        nproc_per_site=nproc_per_site,
        overrides=overrides,
        algorithm=algorithm,
        algorithm_args=dict(algorithm_args) if algorithm_args is not None else None,
        privacy_filters=privacy_filters,
        he=he,
        he_encrypt_layers=he_layers,
    )
    if settings.he:  # --he, or the MMAR's own Clara HE configs: FLARE's HE components import TenSEAL
        from clara_fl.fl.jobs.he_context import require_tenseal

        require_tenseal()
    fl_job = build_job(mmar, settings, template)
    for line in fl_job.privacy:
        (say or logger.info)(line)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".clara_fl_job_", dir=output.parent) as staging:
        job = Path(staging) / "job"
        write_job_folder(job, job_name(output.name), mmar, fl_job)
        if output.exists():
            shutil.rmtree(output)
        os.replace(job, output)
    return output


def job_apps(fl_job: FLJob) -> dict[str, tuple[str, ...]]:
    """The job's app folders, each with the sides (``server``, ``client``) whose config it holds: one app for
    everyone, or (``fl_job.sites``) the server's app and the sites' app."""
    if fl_job.sites is None:
        return {APP_NAME: ("server", "client")}
    return {SERVER_APP_NAME: ("server",), SITES_APP_NAME: ("client",)}


def server_app_name(fl_job: FLJob) -> str:
    """The app folder the server gets."""
    return next(app for app, sides in job_apps(fl_job).items() if "server" in sides)


def deploy_map(fl_job: FLJob) -> dict[str, list[str]]:
    """meta.json's ``deploy_map``: ``@ALL`` for one app, else the server's app to ``server`` and the sites' app to
    the named sites (FLARE refuses ``@ALL`` beside any other target)."""
    if fl_job.sites is None:
        return {APP_NAME: ["@ALL"]}
    return {SERVER_APP_NAME: ["server"], SITES_APP_NAME: list(fl_job.sites)}


def write_job_folder(job: Path, name: str, mmar: Path, fl_job: FLJob) -> None:
    """Write a FLARE job folder at ``job``: meta.json and the apps of :func:`job_apps`, each holding the MMAR's
    files and its sides' configs."""
    configs = {"server": fl_job.server.to_config(), "client": fl_job.client.to_config()}
    for app_name, sides in job_apps(fl_job).items():
        app = job / app_name
        stage_mmar_files(mmar, fl_job.environment, app)
        for side in sides:
            path = app / "config" / f"config_fed_{side}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(configs[side], indent=4) + "\n")
    meta = {"name": name, "resource_spec": {}, "min_clients": fl_job.min_clients, "deploy_map": deploy_map(fl_job)}
    (job / "meta.json").write_text(json.dumps(meta, indent=4) + "\n")
