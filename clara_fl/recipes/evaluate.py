"""Federated evaluation of given models from an MMAR: every site scores every model on its own validation data,
with no training round (``clara-fl evaluate``, :class:`ClaraFedEvalRecipe`).

The job is the cross-site evaluation of a training job without the training: the ``clara_fedavg_cse`` template's
CrossSiteModelEval, its results and failure reporting at the server, and its ClaraValidator at the sites (each
site's ``config_cross_validation.json``, or its validation config with the train network, in the site's confined
process, on the site's own data). The server's models are the given ones
(:class:`~clara_fl.fl.server.given_models.GivenModelLocator`), checked against the MMAR's network before the job
is written (:mod:`clara_fl.fl.jobs.model_check`) and carried in the job's app folder, so the job is whole for a
POC or production deployment.

    recipe = ClaraFedEvalRecipe("mmars/spleen_ct_seg", {"untrained": "a.pt", "trained": "b.pt"})
    recipe.execute(SimEnv(num_clients=2))   # or PocEnv(...), ProdEnv(startup_kit_location=...)
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nvflare.job_config.api import FedJob
from nvflare.recipe.spec import ExecEnv, Recipe

from clara_fl.config.errors import ConfigError, UsageError
from clara_fl.fl.jobs.model_check import GivenModel, checked_models, parse_model_options
from clara_fl.recipes.app_configs import find_template, merged_environment, read_conf
from clara_fl.recipes.fresh_sites import allow_clara_classes
from clara_fl.recipes.job_folder import job_name, write_job_folder
from clara_fl.recipes.job_model import VALIDATOR_ID, ClientApp, Component, FLJob, ServerApp

__all__ = [
    "EVALUATION_TEMPLATE",
    "MODELS_FOLDER",
    "ClaraFedEvalRecipe",
    "build_evaluation_job",
    "create_evaluation_job",
]

logger = logging.getLogger(__name__)

EVALUATION_TEMPLATE = "clara_fedavg_cse"  # its CrossSiteModelEval takes the server's models from a model locator
MODELS_FOLDER = "evaluated_models"  # in the app folder: the given models' weights
CROSS_SITE_WORKFLOW = "cross_site_model_eval"
SERVER_COMPONENTS = ("json_generator", "site_failure_reporter")
SITE_COMPONENTS = ("drop_out_on_abrupt_exit", "exit_on_abort")
LOCATOR_ID = "model_locator"
LOCATOR_PATH = "clara_fl.fl.server.given_models.GivenModelLocator"
DEFAULT_MIN_CLIENTS = 2


def model_file(name: str) -> str:
    """Where a given model's weights are in the job's app folder."""
    return f"{MODELS_FOLDER}/{name}.pt"


def build_evaluation_job(
    mmar: Path, names: list[str], overrides: Mapping[str, Any] | None = None, min_clients: int | None = None
) -> FLJob:
    """The evaluation job of ``mmar`` for the models ``names``: the evaluation template's cross-site parts only.

    Args:
        mmar: the MMAR root.
        names: the given models' names.
        overrides: values for the job's environment.json (the MMAR's variables).
        min_clients: sites the job needs to start (default 2).

    Raises:
        ConfigError: the evaluation template lacks one of its cross-site parts.
    """
    template = find_template(EVALUATION_TEMPLATE)
    server = ServerApp.from_config(read_conf(template / "config_fed_server.conf"))
    client = ClientApp.from_config(read_conf(template / "config_fed_client.conf"))
    workflow = server.workflow(CROSS_SITE_WORKFLOW)
    validator = next((e for e in client.executors if e.component.id == VALIDATOR_ID), None)
    kept = [c for c in server.components if c.id in SERVER_COMPONENTS]
    if workflow is None or validator is None or len(kept) != len(SERVER_COMPONENTS):
        raise ConfigError(
            f"the template lacks the cross-site evaluation parts ({CROSS_SITE_WORKFLOW}, {VALIDATOR_ID}, "
            f"{', '.join(SERVER_COMPONENTS)})",
            file=str(template),
        )
    # no submit_model task: the sites have no models of their own in this job
    workflow.args.update(model_locator_id=LOCATOR_ID, submit_model_task_name="")
    locator = Component(LOCATOR_PATH, {"models": {name: model_file(name) for name in names}}, LOCATOR_ID)
    server.workflows = [workflow]
    server.components = [locator, *kept]
    server.task_data_filters, server.task_result_filters = [], []  # the template's are for training results
    client.executors = [validator]
    client.components = [c for c in client.components if c.id in SITE_COMPONENTS]
    client.task_data_filters, client.task_result_filters = [], []
    return FLJob(
        server=server,
        client=client,
        min_clients=min_clients or DEFAULT_MIN_CLIENTS,
        algorithm="fedavg",
        algorithm_args={},
        he=False,
        template=EVALUATION_TEMPLATE,
        environment=merged_environment(mmar, dict(overrides or {})),
    )


def _save_models(weights: Mapping[str, Mapping[str, Any]], folder: Path) -> None:
    from clara_fl.runtime.checkpoint import save_atomic

    folder.mkdir(parents=True, exist_ok=True)
    for name, state in weights.items():
        save_atomic(dict(state), folder / f"{name}.pt")


def _require_mmar(mmar: str | os.PathLike) -> Path:
    root = Path(mmar).resolve()
    if not (root / "config" / "config_train.json").is_file():
        raise ConfigError("not an MMAR: config/config_train.json is missing", file=str(root))
    return root


def create_evaluation_job(
    mmar: str | os.PathLike,
    output: str | os.PathLike,
    models: list[GivenModel],
    overrides: Mapping[str, Any] | None = None,
    min_clients: int | None = None,
    force: bool = False,
) -> Path:
    """Write the evaluation job folder ``output`` (for ``nvflare job submit`` or the simulator) and return it.

    Every model is loaded weights-only and checked against the MMAR's network first; nothing is written before.

    Args:
        mmar: the MMAR root.
        output: the job folder to write.
        models: the models to evaluate (:func:`~clara_fl.fl.jobs.model_check.parse_model_options`).
        overrides: values for the job's environment.json.
        min_clients: sites the job needs to start (default 2).
        force: replace a non-empty ``output``.

    Raises:
        ConfigError: not an MMAR, or its network does not build.
        UsageError: a model that does not load weights-only or does not fit the MMAR's network, or ``output`` holds
            something and ``force`` is not set.
    """
    root = _require_mmar(mmar)
    output = Path(output).resolve()
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not force:
        raise UsageError("--output", str(output), "job folder exists and is not empty (use --force to replace it)")
    weights = checked_models(root, models, overrides)
    fl_job = build_evaluation_job(root, list(weights), overrides, min_clients)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".clara_fl_job_", dir=output.parent) as staging:
        job = Path(staging) / "job"
        write_job_folder(job, job_name(output.name), root, fl_job)
        _save_models(weights, job / "app" / MODELS_FOLDER)
        if output.exists():
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        os.replace(job, output)
    return output


class ClaraFedEvalRecipe(Recipe):
    """Federated evaluation of given models over a Clara MMAR: every site scores every model with its
    ``config_cross_validation.json`` on its own data, no training; the cross-site table as a training job's.

    Args:
        mmar: the MMAR root folder (config/config_train.json inside).
        models: each model's checkpoint file by name (the table's column; a letter, then letters, digits, ``_``).
        name: the job name (default: the MMAR folder's name with ``_eval``).
        min_clients: sites the job needs to start (default 2).
        overrides: values for the job's environment.json (the MMAR's variables).

    Raises:
        ConfigError: the folder is not an MMAR, or its network does not build.
        UsageError: a model name that is not safe, a file that does not load weights-only, or weights that do not
            fit the MMAR's network.
    """

    def __init__(
        self,
        mmar: str | os.PathLike,
        models: Mapping[str, str | os.PathLike],
        name: str | None = None,
        min_clients: int | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        # the training recipe's way of handing FedJob a job model and an MMAR's files
        from clara_fl.recipes.fedavg import add_components, add_mmar_files

        self.mmar = _require_mmar(mmar)
        given = parse_model_options([f"{n}={os.fspath(p)}" for n, p in models.items()])
        weights = checked_models(self.mmar, given, overrides)
        self.fl_job = build_evaluation_job(self.mmar, list(weights), overrides, min_clients)
        job = FedJob(name=job_name(name or f"{self.mmar.name}_eval"), min_clients=self.fl_job.min_clients)
        job.set_app_packages(["clara_fl"])  # installed at every site: never copied into the job's custom/
        self._staging = tempfile.TemporaryDirectory(prefix="clara_fl_eval_recipe_")
        staging = Path(self._staging.name)
        add_components(job, self.fl_job)
        add_mmar_files(job, self.mmar, self.fl_job.environment, staging / "mmar")
        _save_models(weights, staging / MODELS_FOLDER)
        job.add_file_to_server(
            str(staging / MODELS_FOLDER), dest_dir=os.path.join(os.pardir, MODELS_FOLDER), app_folder_type="config"
        )
        super().__init__(job)

    def process_env(self, env: ExecEnv) -> None:
        """Sites that ``env`` makes afresh get to build clara-fl's classes
        (:func:`clara_fl.recipes.fresh_sites.allow_clara_classes`)."""
        allow_clara_classes(self, env, Path(self._staging.name))
