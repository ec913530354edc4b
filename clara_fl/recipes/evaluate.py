"""Federated evaluation of given models from an MMAR: every site scores every model on its own validation data,
with no training round (``clara-fl evaluate``, :class:`ClaraFedEvalRecipe`).

The job is the cross-site evaluation of a training job without the training: the ``clara_fedavg_cse`` template's
CrossSiteModelEval, its results and failure reporting at the server, and its ClaraValidator at the sites (each
site's ``config_cross_validation.json``, or its validation config with the train network, in the site's confined
process, on the site's own data). The server's models are the given ones
(:class:`~clara_fl.fl.server.given_models.GivenModelLocator`), checked against the MMAR's network before the job
is written (:mod:`clara_fl.fl.jobs.model_check`) and carried in the server's own app, so the job is whole for a
POC or production deployment while the sites' app holds only the MMAR: FLARE sends each site only the app deployed
to it, in one message, and a site over FLARE's ``http`` scheme takes messages of at most 4 MiB. The sites are
therefore named in the job (FLARE refuses ``@ALL`` beside another app). With ``site_models`` each site also submits
its own model (:mod:`clara_fl.fl.site.own_model`), scored by every site as the server's are.

    recipe = ClaraFedEvalRecipe("mmars/spleen_ct_seg", {"untrained": "a.pt", "trained": "b.pt"})
    recipe.execute(SimEnv(num_clients=2))   # or PocEnv(...); ProdEnv needs sites=["hospital-a", ...]
"""

from __future__ import annotations

import logging
import os
import re
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
from clara_fl.recipes.app_folder import stage_mmar_files
from clara_fl.recipes.fresh_sites import allow_clara_classes
from clara_fl.recipes.job_folder import job_name, server_app_name, write_job_folder
from clara_fl.recipes.job_model import VALIDATOR_ID, ClientApp, Component, Executor, FLJob, ServerApp

__all__ = [
    "EVALUATION_TEMPLATE",
    "MODELS_FOLDER",
    "ClaraFedEvalRecipe",
    "build_evaluation_job",
    "create_evaluation_job",
    "default_sites",
    "parse_sites",
]

logger = logging.getLogger(__name__)

EVALUATION_TEMPLATE = "clara_fedavg_cse"  # its CrossSiteModelEval takes the server's models from a model locator
MODELS_FOLDER = "evaluated_models"  # in the app folder: the given models' weights
CROSS_SITE_WORKFLOW = "cross_site_model_eval"
SERVER_COMPONENTS = ("json_generator", "site_failure_reporter")
SITE_COMPONENTS = ("drop_out_on_abrupt_exit", "exit_on_abort")
LOCATOR_ID = "model_locator"
LOCATOR_PATH = "clara_fl.fl.server.given_models.GivenModelLocator"
SUBMIT_MODEL_TASK = "submit_model"
OWN_MODEL_ID = "own_model_submitter"
OWN_MODEL_PATH = "clara_fl.fl.site.own_model.OwnModelSubmitter"
DEFAULT_MIN_CLIENTS = 2
SITE_NAME = re.compile(r"[A-Za-z0-9_-]+")  # FLARE's client names
RESERVED_SITE_NAMES = ("server",)


def default_sites(n: int) -> list[str]:
    """``site-1`` .. ``site-N``: the names FLARE's simulator and ``nvflare poc prepare`` give N sites."""
    return [f"site-{i}" for i in range(1, n + 1)]


def parse_sites(sites: list[str] | str, option: str = "--sites") -> list[str]:
    """The sites a job is deployed to, checked: FLARE client names, each once, not ``server``.

    Args:
        sites: the names, or one text of names joined by commas.
        option: the option or argument named in an error.

    Raises:
        UsageError: no name, a name FLARE would refuse, ``server``, or a name given twice.
    """
    names = [n.strip() for n in sites.split(",")] if isinstance(sites, str) else [str(n) for n in sites]
    text = ",".join(names)
    if not names or names == [""]:
        raise UsageError(option, text, "expected site names joined by commas, e.g. site-1,site-2")
    for name in names:
        if not SITE_NAME.fullmatch(name) or name in RESERVED_SITE_NAMES:
            raise UsageError(option, text, f"'{name}' is not a site name (letters, digits, '-' and '_'; not server)")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UsageError(option, text, f"the site {repeated[0]} is given twice")
    return names


def model_file(name: str) -> str:
    """Where a given model's weights are in the job's app folder."""
    return f"{MODELS_FOLDER}/{name}.pt"


def build_evaluation_job(
    mmar: Path,
    names: list[str],
    overrides: Mapping[str, Any] | None = None,
    min_clients: int | None = None,
    sites: list[str] | None = None,
    site_models: bool = False,
) -> FLJob:
    """The evaluation job of ``mmar`` for the models ``names``: the evaluation template's cross-site parts only.

    Args:
        mmar: the MMAR root.
        names: the given models' names.
        overrides: values for the job's environment.json (the MMAR's variables).
        min_clients: sites the job needs to start (default 2, or fewer when fewer sites are named).
        sites: the sites the job goes to (:func:`parse_sites`); the models stay in the server's app. None: one app
            for everyone (FLARE's ``@ALL``), for a caller that places the apps itself.
        site_models: every site also submits its own model (:class:`~clara_fl.fl.site.own_model.OwnModelSubmitter`).

    Raises:
        ConfigError: the evaluation template lacks one of its cross-site parts.
        UsageError: ``min_clients`` is more than the sites named.
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
    if sites is not None and min_clients is not None and min_clients > len(sites):
        raise UsageError("--min-clients", str(min_clients), f"more than the {len(sites)} site(s) the job goes to")
    # without site models there is no submit_model task: the sites have no models of their own in this job
    workflow.args.update(model_locator_id=LOCATOR_ID, submit_model_task_name=SUBMIT_MODEL_TASK if site_models else "")
    locator = Component(LOCATOR_PATH, {"models": {name: model_file(name) for name in names}}, LOCATOR_ID)
    server.workflows = [workflow]
    server.components = [locator, *kept]
    server.task_data_filters, server.task_result_filters = [], []  # the template's are for training results
    client.executors = [validator]
    if site_models:
        submitter = Component(OWN_MODEL_PATH, {"submit_model_task_name": SUBMIT_MODEL_TASK}, OWN_MODEL_ID)
        client.executors.append(Executor([SUBMIT_MODEL_TASK], submitter))
    client.components = [c for c in client.components if c.id in SITE_COMPONENTS]
    client.task_data_filters, client.task_result_filters = [], []
    default_min = DEFAULT_MIN_CLIENTS if sites is None else min(DEFAULT_MIN_CLIENTS, len(sites))
    return FLJob(
        server=server,
        client=client,
        min_clients=min_clients or default_min,
        algorithm="fedavg",
        algorithm_args={},
        he=False,
        template=EVALUATION_TEMPLATE,
        environment=merged_environment(mmar, dict(overrides or {})),
        sites=list(sites) if sites is not None else None,
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
    sites: list[str] | None = None,
    site_models: bool = False,
) -> Path:
    """Write the evaluation job folder ``output`` (for ``nvflare job submit`` or the simulator) and return it.

    Every model is loaded weights-only and checked against the MMAR's network first; nothing is written before.
    The job has two apps: ``app_server`` (the server's config and the models) deployed to the server, ``app_sites``
    (the MMAR and the sites' config) deployed to ``sites``.

    Args:
        mmar: the MMAR root.
        output: the job folder to write.
        models: the models to evaluate (:func:`~clara_fl.fl.jobs.model_check.parse_model_options`).
        overrides: values for the job's environment.json.
        min_clients: sites the job needs to start (default 2, or fewer when fewer sites are named).
        force: replace a non-empty ``output``.
        sites: the sites the job goes to (:func:`parse_sites`; default ``site-1``, ``site-2``).
        site_models: every site also submits its own model for every site to score.

    Raises:
        ConfigError: not an MMAR, or its network does not build.
        UsageError: a model that does not load weights-only or does not fit the MMAR's network, a bad site name,
            ``min_clients`` above the sites named, or ``output`` holds something and ``force`` is not set.
    """
    root = _require_mmar(mmar)
    output = Path(output).resolve()
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not force:
        raise UsageError("--output", str(output), "job folder exists and is not empty (use --force to replace it)")
    sites = parse_sites(sites if sites is not None else default_sites(DEFAULT_MIN_CLIENTS))
    weights = checked_models(root, models, overrides)
    fl_job = build_evaluation_job(root, list(weights), overrides, min_clients, sites, site_models)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".clara_fl_job_", dir=output.parent) as staging:
        job = Path(staging) / "job"
        write_job_folder(job, job_name(output.name), root, fl_job)
        _save_models(weights, job / server_app_name(fl_job) / MODELS_FOLDER)
        if output.exists():
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        os.replace(job, output)
    return output


class ClaraFedEvalRecipe(Recipe):
    """Federated evaluation of given models over a Clara MMAR: every site scores every model with its
    ``config_cross_validation.json`` on its own data, no training; the cross-site table as a training job's.

    The models go in the server's app only; the sites' app (one per site, as FedJob writes per-site apps) holds
    the MMAR, so the job names its sites.

    Args:
        mmar: the MMAR root folder (config/config_train.json inside).
        models: each model's checkpoint file by name (the table's column; a letter, then letters, digits, ``_``).
        name: the job name (default: the MMAR folder's name with ``_eval``).
        min_clients: sites the job needs to start (default 2, or fewer when fewer sites are named).
        overrides: values for the job's environment.json (the MMAR's variables).
        sites: the sites the job goes to. None: those of the SimEnv or PocEnv it runs in (their ``clients``, else
            ``site-1`` .. ``site-N`` of their ``num_clients``); a ProdEnv's, or an export without an environment,
            must be named.
        site_models: every site also submits its own model (its site file's ``own_model``, else the newest
            ``models/model.pt`` a training job left in its workspace), scored by every site.

    Raises:
        ConfigError: the folder is not an MMAR, or its network does not build.
        UsageError: a model name that is not safe, a file that does not load weights-only, weights that do not
            fit the MMAR's network, or a bad site name.
    """

    def __init__(
        self,
        mmar: str | os.PathLike,
        models: Mapping[str, str | os.PathLike],
        name: str | None = None,
        min_clients: int | None = None,
        overrides: Mapping[str, Any] | None = None,
        sites: list[str] | None = None,
        site_models: bool = False,
    ) -> None:
        self.mmar = _require_mmar(mmar)
        self.sites = parse_sites(sites, "sites") if sites is not None else None
        given = parse_model_options([f"{n}={os.fspath(p)}" for n, p in models.items()])
        weights = checked_models(self.mmar, given, overrides)
        self.fl_job = build_evaluation_job(self.mmar, list(weights), overrides, min_clients, self.sites, site_models)
        self.fl_job.sites = None  # until the sites' apps are placed (here, or from the environment)
        job = FedJob(name=job_name(name or f"{self.mmar.name}_eval"), min_clients=self.fl_job.min_clients)
        job.set_app_packages(["clara_fl"])  # installed at every site: never copied into the job's custom/
        self._fed_job = job
        self._staging = tempfile.TemporaryDirectory(prefix="clara_fl_eval_recipe_")
        staging = Path(self._staging.name)
        self._mmar_folders = stage_mmar_files(self.mmar, self.fl_job.environment, staging / "mmar")
        _place_server(job, self.fl_job)
        self._add_mmar_files("server")
        _save_models(weights, staging / MODELS_FOLDER)
        job.add_file_to_server(
            str(staging / MODELS_FOLDER), dest_dir=os.path.join(os.pardir, MODELS_FOLDER), app_folder_type="config"
        )
        super().__init__(job)
        if self.sites is not None:
            self._place_sites(self.sites)

    def process_env(self, env: ExecEnv) -> None:
        """The sites' apps go to ``env``'s sites when none were named; sites that ``env`` makes afresh get to
        build clara-fl's classes (:func:`clara_fl.recipes.fresh_sites.allow_clara_classes`).

        Raises:
            UsageError: the sites are not named and ``env`` does not know them, or a SimEnv's sites differ from
                the named ones.
        """
        from nvflare.recipe.sim_env import SimEnv

        if self.fl_job.sites is None:
            self._place_sites(_env_sites(env))
        sites = list(self.fl_job.sites or [])
        if isinstance(env, SimEnv):
            # a SimEnv given num_clients would hand FedJob a count beside the job's named sites, which it refuses
            if env.clients is None and env.num_clients == len(sites):
                env.clients = sites
            if sorted(env.clients or []) != sorted(sites):
                raise UsageError("sites", ",".join(sites), f"the SimEnv simulates other sites ({_env_names(env)})")
        allow_clara_classes(self, env, Path(self._staging.name))

    def export(
        self,
        job_dir: str,
        server_exec_params: dict | None = None,
        client_exec_params: dict | None = None,
        env: ExecEnv | None = None,
    ) -> None:
        """FLARE's export; the job's sites come from ``sites`` or from ``env``.

        Args:
            job_dir: the folder the job folder is written into.
            server_exec_params: execution params for the server.
            client_exec_params: execution params for the sites.
            env: the environment the job will run in.

        Raises:
            UsageError: neither ``sites`` nor ``env`` names the sites.
        """
        if self.fl_job.sites is None and env is None:
            raise UsageError("sites", None, "an exported evaluation job names its sites: give sites=[...] or env=")
        super().export(job_dir, server_exec_params, client_exec_params, env)

    def _place_sites(self, sites: list[str]) -> None:
        from nvflare.apis.job_def import ALL_SITES

        from clara_fl.recipes.fedavg import instantiate

        if ALL_SITES in self._fed_job.clients:
            raise UsageError("sites", None, "name the sites when the recipe is made: client parts were added before")
        if self.fl_job.min_clients > len(sites):
            problem = f"fewer than the {self.fl_job.min_clients} sites the job needs (min_clients)"
            raise UsageError("sites", ",".join(sites), problem)
        client = self.fl_job.client
        for site in sites:
            for component in client.components:
                self._fed_job.to(instantiate(component), site, id=component.id)
            for executor in client.executors:
                component = executor.component
                self._fed_job.to(instantiate(component), site, tasks=executor.tasks, id=component.id)
            self._add_mmar_files(site)
        self.fl_job.sites = list(sites)

    def _add_mmar_files(self, target: str) -> None:
        """The MMAR's config/, docs/ and (when it holds code) custom/ in ``target``'s app."""
        staged = Path(self._staging.name) / "mmar"
        self._fed_job.add_file_to(str(staged / "config"), target, app_folder_type="config")
        if "docs" in self._mmar_folders:
            self._fed_job.add_file_to(
                str(staged / "docs"), target, dest_dir=os.path.join(os.pardir, "docs"), app_folder_type="config"
            )
        if "custom" in self._mmar_folders:
            self._fed_job.add_file_to(str(staged / "custom"), target, app_folder_type="custom")


def _place_server(job: FedJob, fl_job: FLJob) -> None:
    from clara_fl.recipes.fedavg import instantiate

    for workflow in fl_job.server.workflows:
        job.to_server(instantiate(workflow), id=workflow.id)
    for component in fl_job.server.components:
        job.to_server(instantiate(component), id=component.id)
    if fl_job.server.settings:
        job.to_server({"server": dict(fl_job.server.settings)})


def _env_names(env: ExecEnv) -> str:
    clients = getattr(env, "clients", None)
    return ",".join(clients) if clients else f"{getattr(env, 'num_clients', 0)} unnamed"


def _env_sites(env: ExecEnv) -> list[str]:
    """The sites a SimEnv or PocEnv runs: its ``clients``, else ``site-1`` .. ``site-N`` (as both name them)."""
    from nvflare.recipe.poc_env import PocEnv
    from nvflare.recipe.sim_env import SimEnv

    if not isinstance(env, (SimEnv, PocEnv)):
        raise UsageError("sites", None, f"a {type(env).__name__}'s sites are not known here: name them (sites=[...])")
    return parse_sites(env.clients, "sites") if env.clients else default_sites(env.num_clients)
