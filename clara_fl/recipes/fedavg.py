"""ClaraFedAvgRecipe: a FLARE 2.9 Job Recipe that federates a Clara MMAR with FedAvg and cross-site evaluation.

    recipe = ClaraFedAvgRecipe("mmars/spleen_ct_seg", num_rounds=3, min_clients=2, local_epochs=5)
    recipe.execute(SimEnv(num_clients=2))   # or PocEnv(...), ProdEnv(startup_kit_location=...)
    recipe.export("jobs")                   # a job folder for ``nvflare job submit``

The job's app folder is the MMAR (config/, custom/ with BYOC code, docs/), never its data or models.
"""

from __future__ import annotations

import copy
import importlib
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nvflare.job_config.api import FedJob
from nvflare.job_config.defs import FilterType
from nvflare.recipe.spec import ExecEnv, Recipe

from clara_fl.config.errors import ConfigError
from clara_fl.fl.algorithms.optimizer_notes import optimizer_note
from clara_fl.fl.dp_settings import DPSettings
from clara_fl.fl.jobs.he_context import require_tenseal
from clara_fl.recipes.app_configs import FedAvgSettings, build_job
from clara_fl.recipes.app_folder import stage_mmar_files
from clara_fl.recipes.dp import coerce_dp
from clara_fl.recipes.fresh_sites import allow_clara_classes
from clara_fl.recipes.he import check_he_layers_for_mmar
from clara_fl.recipes.job_folder import job_name, job_settings
from clara_fl.recipes.job_model import Component, FLJob, TaskFilters

__all__ = ["ClaraFedAvgRecipe", "instantiate", "job_name"]

logger = logging.getLogger(__name__)

PLAIN_VALUES = (type(None), bool, int, float, str, list, dict, tuple)


def instantiate(component: Component) -> Any:
    """The FLARE object a component of the job model describes, holding its arguments as FedJob exports them.

    FedJob writes an object's constructor arguments back from its attributes (those equal to the constructor's
    defaults left out: the job means the same without them).

    Raises:
        ConfigError: the class cannot be built from the arguments, or keeps one where FedJob cannot find it.
    """
    from nvflare.fuel.utils.class_utils import get_component_init_parameters

    module, _, name = component.path.rpartition(".")
    args = copy.deepcopy(component.args)
    try:
        obj = getattr(importlib.import_module(module), name)(**args)
    except (ImportError, AttributeError, TypeError, ValueError) as e:
        raise ConfigError(f"cannot build the job's FLARE component {component.path}: {e}") from e
    parameters, attributes = get_component_init_parameters(obj), vars(obj)
    lost = [k for k in args if k not in parameters or (k not in attributes and f"_{k}" not in attributes)]
    if lost:  # FedJob would export the job without them
        raise ConfigError(f"{component.path}: argument(s) {', '.join(lost)} cannot be carried into a FLARE 2.9 job")
    for key, value in args.items():
        # FedJob exports the attribute, not the argument: one the constructor turned into an object would be
        # written as that object's class. The object only describes the job, so it keeps the value as given.
        if key in attributes and not isinstance(attributes[key], PLAIN_VALUES):
            setattr(obj, key, value)
        elif key not in attributes and not isinstance(attributes[f"_{key}"], PLAIN_VALUES):
            raise ConfigError(f"{component.path}: argument {key} cannot be carried into a FLARE 2.9 job")
    return obj


class ClaraFedAvgRecipe(Recipe):
    """FedAvg over a Clara MMAR: ClaraLearner at the sites, the MMAR's model on the server, cross-site evaluation.

    Args:
        mmar: the MMAR root folder (config/config_train.json inside).
        name: the job name (default: the MMAR folder's name).
        num_rounds: FL rounds.
        min_clients: sites needed per round.
        local_epochs: local epochs per round at each site.
        steps_aggregation: send after this many iterations instead of whole epochs (0: epochs).
        nproc_per_site: DDP processes each site trains with (sets multi_gpu=True).
        cross_site_eval: evaluate every site's and the server's models on every site's data at the end.
        privacy_filters: client filters on the train result, FLARE config entries
            (``{"path": "nvflare.app_common.filters.percentile_privacy.PercentilePrivacy", "args": {...}}``).
        overrides: values for the job's environment.json (the MMAR's variables).
        algorithm: the FL algorithm (:data:`clara_fl.recipes.algorithms.ALGORITHMS`; default fedavg).
        algorithm_args: its arguments by name (checked; the others keep their defaults).
        he: homomorphic encryption with FLARE's HE components (clara_fl.recipes.he; needs ``clara-fl[he]``); a SimEnv
            gets the TenSEAL contexts written into its workspace.
        he_layers: under ``he``, the tensors the sites encrypt (FLARE's ``encrypt_layers``: a list of names or a
            regular expression); None (the default) encrypts all.
        aggregator: a robust aggregation rule in place of the weighted mean (``median``, ``trimmed_mean:beta=0.1``,
            ``krum:f=1``, ``multikrum:f=1,m=2``; :mod:`clara_fl.recipes.robust_aggregation`); None: the weighted mean.
        template: the job template the configs come from (clara_fedavg_cse_mc: FLARE's FedAvg ModelController;
            clara_fedavg_cse: ScatterAndGather); None: clara_fedavg_cse_mc, or clara_fedavg_cse when the algorithm
            (fedopt), ``he`` or the MMAR's aggregator settings need ScatterAndGather.
        dp: DP-SGD at every site (:class:`~clara_fl.fl.dp_settings.DPSettings`, or ``--dp``'s text
            ``epsilon=E,delta=D,max_grad_norm=C``); None: no DP. Needs ``clara-fl[dp]`` at the sites.
        settings: all of the above at once (explicit arguments win); None reads them from the MMAR's own Clara FL
            configs (config/config_fed_server.json, config_fed_client.json) when it has them.

    Raises:
        ConfigError: the folder is not an MMAR, or a component cannot be built.
        UsageError: the template is unknown, an algorithm or its arguments are unknown or out of range, an HE job
            without TenSEAL installed (``pip install clara-fl[he]``), ``he_layers`` that match no tensor, or an
            aggregator that is unknown or does not apply (SCAFFOLD, HE, fewer sites a round than the rule needs), or
            bad ``dp`` settings or an algorithm that cannot train with DP-SGD.
    """

    def __init__(
        self,
        mmar: str | os.PathLike,
        name: str | None = None,
        num_rounds: int | None = None,
        min_clients: int | None = None,
        local_epochs: int | None = None,
        steps_aggregation: int | None = None,
        nproc_per_site: int | None = None,
        cross_site_eval: bool | None = None,
        privacy_filters: list[dict[str, Any]] | None = None,
        overrides: Mapping[str, Any] | None = None,
        template: str | None = None,
        settings: FedAvgSettings | None = None,
        algorithm: str | None = None,
        algorithm_args: Mapping[str, Any] | None = None,
        he: bool | None = None,
        aggregator: str | None = None,
        he_layers: list[str] | str | None = None,
        dp: DPSettings | str | None = None,
    ) -> None:
        self.mmar = Path(mmar).resolve()
        if not (self.mmar / "config" / "config_train.json").is_file():
            raise ConfigError("not an MMAR: config/config_train.json is missing", file=str(self.mmar))
        self.settings = job_settings(
            self.mmar,
            settings,
            num_rounds=num_rounds,
            min_clients=min_clients,
            local_epochs=local_epochs,
            steps_aggregation=steps_aggregation,
            nproc_per_site=nproc_per_site,
            cross_site_eval=cross_site_eval,
            privacy_filters=privacy_filters,
            overrides=overrides,
            algorithm=algorithm,
            algorithm_args=dict(algorithm_args) if algorithm_args is not None else None,
            he=he,
            aggregator=aggregator,
            he_encrypt_layers=he_layers,
            dp=coerce_dp(dp),
        )
        if self.settings.he:
            require_tenseal()  # FLARE's HE components import it: one line, not an ImportError
            check_he_layers_for_mmar(self.mmar, self.settings.he_encrypt_layers, self.settings.overrides, "he_layers")
        self.fl_job: FLJob = build_job(self.mmar, self.settings, template)
        for line in self.fl_job.privacy:
            logger.info("privacy: %s", line)
        note = optimizer_note(self.settings.algorithm, self.mmar)
        if note:
            logger.warning(note)
        job = FedJob(name=job_name(name or self.mmar.name), min_clients=self.fl_job.min_clients)
        job.set_app_packages(["clara_fl"])  # installed at every site: never copied into the job's custom/
        self._staging = tempfile.TemporaryDirectory(prefix="clara_fl_recipe_")
        add_components(job, self.fl_job)
        add_mmar_files(job, self.mmar, self.fl_job.environment, Path(self._staging.name))
        super().__init__(job)

    def process_env(self, env: ExecEnv) -> None:
        """Sites that an environment makes afresh get to build clara-fl's classes (FLARE's default allow-list
        lacks the Learner): a simulation workspace gets clara-fl's allow-list; a PocEnv's freshly provisioned
        sites get the job as BYOC (an app/custom/ folder, which the POC admin may submit). A ProdEnv's sites
        are set up by their own staff (``clara-fl site setup``). An HE job needs its TenSEAL contexts: written into a
        SimEnv's workspace, provisioned by FLARE's HEBuilder for a PocEnv (``use_he=True``) or a real deployment.

        Raises:
            ConfigError: an HE job on a PocEnv that does not provision HE contexts.
        """
        from nvflare.recipe.poc_env import PocEnv
        from nvflare.recipe.sim_env import SimEnv

        allow_clara_classes(self, env, Path(self._staging.name))
        if isinstance(env, SimEnv):
            if self.settings.he:
                from clara_fl.fl.jobs.he_context import write_simulator_he_contexts

                write_simulator_he_contexts(os.path.join(env.workspace_root, self.name))
        elif isinstance(env, PocEnv) and self.settings.he and not env.use_he:
            raise ConfigError("an HE job needs its TenSEAL contexts provisioned: PocEnv(..., use_he=True)")


def add_components(job: FedJob, fl_job: FLJob) -> None:
    """One FLARE object per component of the job model, placed where the model has it."""
    server, client = fl_job.server, fl_job.client
    flare_log = logging.getLogger("nvflare")
    level = flare_log.level
    flare_log.setLevel(logging.WARNING)  # components log their settings when built; here they only describe
    try:
        for workflow in server.workflows:
            job.to_server(instantiate(workflow), id=workflow.id)
        for component in server.components:
            job.to_server(instantiate(component), id=component.id)
        for kind, chains in _filter_chains(server.task_data_filters, server.task_result_filters):
            for chain in chains:
                for spec in chain.filters:
                    job.to_server(instantiate(spec), filter_type=kind, tasks=chain.tasks)
        for component in client.components:
            job.to_clients(instantiate(component), id=component.id)
        for executor in client.executors:
            job.to_clients(instantiate(executor.component), tasks=executor.tasks, id=executor.component.id)
        for kind, chains in _filter_chains(client.task_data_filters, client.task_result_filters):
            for chain in chains:
                for spec in chain.filters:
                    job.to_clients(instantiate(spec), filter_type=kind, tasks=chain.tasks)
    finally:
        flare_log.setLevel(level)
    if server.settings:  # "server": {"heart_beat_timeout": ..., "task_request_interval": ...}
        job.to_server({"server": dict(server.settings)})


def _filter_chains(
    data: list[TaskFilters], result: list[TaskFilters]
) -> tuple[tuple[FilterType, list[TaskFilters]], ...]:
    return (FilterType.TASK_DATA, [c for c in data if c.tasks]), (
        FilterType.TASK_RESULT,
        [c for c in result if c.tasks],
    )


def add_mmar_files(job: FedJob, mmar: Path, environment: dict[str, Any] | None, staging: Path) -> None:
    """The MMAR's config/, docs/ and (when it holds code) custom/ go into the app, through a filtered copy."""
    copied = stage_mmar_files(mmar, environment, staging)
    for target in ("server", "clients"):
        add = job.add_file_to_server if target == "server" else job.add_file_to_clients
        add(str(staging / "config"), app_folder_type="config")
        if "docs" in copied:
            add(str(staging / "docs"), dest_dir=os.path.join(os.pardir, "docs"), app_folder_type="config")
        if "custom" in copied:
            add(str(staging / "custom"), app_folder_type="custom")
