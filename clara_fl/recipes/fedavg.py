"""ClaraFedAvgRecipe: a FLARE 2.9 Job Recipe that federates a Clara MMAR with FedAvg and cross-site evaluation.

    recipe = ClaraFedAvgRecipe("mmars/spleen_ct_seg", num_rounds=3, min_clients=2, local_epochs=5)
    recipe.execute(SimEnv(num_clients=2))   # or PocEnv(...), ProdEnv(startup_kit_location=...)
    recipe.export("jobs")                   # a job folder for ``nvflare job submit``

The job's app folder is the MMAR (config/, custom/ with BYOC code, docs/), never its data or models.
"""

from __future__ import annotations

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
from clara_fl.fl.jobs.he_context import require_tenseal
from clara_fl.recipes.app_configs import (
    DEFAULT_TEMPLATE,
    AppConfigs,
    FedAvgSettings,
    build_app_configs,
    merged_environment,
)
from clara_fl.recipes.app_folder import stage_mmar_files
from clara_fl.recipes.job_folder import job_name, job_settings
from clara_fl.runtime.private_api import export_every_given_arg

__all__ = ["ClaraFedAvgRecipe", "instantiate", "job_name"]

logger = logging.getLogger(__name__)

POC_CUSTOM_NOTE = """This folder holds no code. It makes the job BYOC, so the freshly provisioned POC sites of a
PocEnv (whose class allow-list is FLARE's default, without clara-fl's classes) build its components.
Real sites allow clara-fl's classes through `clara-fl site setup` and need no such folder.
"""


def instantiate(spec: Mapping[str, Any]) -> Any:
    """The object a FLARE config entry ``{"path": ..., "args": {...}}`` describes, set to export every given arg.

    FedJob writes an object's constructor arguments back from its attributes and leaves out values equal to
    the defaults; :func:`~clara_fl.runtime.private_api.export_every_given_arg` keeps the ones the template states.
    """
    from nvflare.fuel.utils.class_utils import get_component_init_parameters

    module, _, name = str(spec["path"]).rpartition(".")
    args = dict(spec.get("args", {}))
    obj = getattr(importlib.import_module(module), name)(**args)
    parameters, attributes = get_component_init_parameters(obj), vars(obj)
    lost = [k for k in args if k not in parameters or (k not in attributes and f"_{k}" not in attributes)]
    if lost:  # FedJob would export the job without them
        raise ConfigError(f"{spec['path']}: argument(s) {', '.join(lost)} cannot be carried into a FLARE 2.9 job")
    export_every_given_arg(obj, tuple(args))
    for key, value in args.items():
        # FedJob exports the attribute, not the argument: one the constructor turned into an object (ExcludeVars
        # compiles its exclude_vars string into a re.Pattern) would be written as {"path": "re.Pattern"}. The object
        # only describes the job, so it keeps the value as the config gave it.
        attribute = key if key in attributes else f"_{key}"
        if not isinstance(attributes[attribute], (type(None), bool, int, float, str, list, dict, tuple)):
            setattr(obj, attribute, value)
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
        template: the job template the configs come from (clara_fedavg_cse: ScatterAndGather;
            clara_fedavg_cse_mc: FLARE's FedAvg ModelController).
        settings: all of the above at once (explicit arguments win); None reads them from the MMAR's own Clara FL
            configs (config/config_fed_server.json, config_fed_client.json) when it has them.

    Raises:
        ConfigError: the folder is not an MMAR, the template is unknown, an algorithm or its arguments are
            unknown, or a component cannot be built (an HE job without TenSEAL installed: ``pip install clara-fl[he]``).
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
        template: str = DEFAULT_TEMPLATE,
        settings: FedAvgSettings | None = None,
        algorithm: str | None = None,
        algorithm_args: Mapping[str, Any] | None = None,
        he: bool | None = None,
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
        )
        if self.settings.he:
            require_tenseal()  # FLARE's HE components import it: one line, not an ImportError
        self.app_configs: AppConfigs = build_app_configs(self.mmar, self.settings, template)
        for line in self.app_configs.privacy:
            logger.info("privacy: %s", line)
        job = FedJob(name=job_name(name or self.mmar.name), min_clients=self.app_configs.min_clients)
        job.set_app_packages(["clara_fl"])  # installed at every site: never copied into the job's custom/
        self._staging = tempfile.TemporaryDirectory(prefix="clara_fl_recipe_")
        _add_app_configs(job, self.app_configs)
        environment = merged_environment(self.mmar, self.app_configs.overrides)
        _add_mmar_files(job, self.mmar, environment, Path(self._staging.name))
        super().__init__(job)
        self._byoc_marked = False

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

        if isinstance(env, SimEnv):
            from clara_fl.fl.jobs.allow_list import write_simulator_policy

            write_simulator_policy(os.path.join(env.workspace_root, self.name))
            if self.settings.he:
                from clara_fl.fl.jobs.he_context import write_simulator_he_contexts

                write_simulator_he_contexts(os.path.join(env.workspace_root, self.name))
        elif isinstance(env, PocEnv) and self.settings.he and not env.use_he:
            raise ConfigError("an HE job needs its TenSEAL contexts provisioned: PocEnv(..., use_he=True)")
        if isinstance(env, PocEnv) and not self._byoc_marked:
            note = Path(self._staging.name) / "poc_custom" / "README.md"
            note.parent.mkdir(parents=True, exist_ok=True)
            note.write_text(POC_CUSTOM_NOTE)
            self._job.add_file_to_server(str(note.parent), app_folder_type="custom")
            self._job.add_file_to_clients(str(note.parent), app_folder_type="custom")
            self._byoc_marked = True


def _add_app_configs(job: FedJob, configs: AppConfigs) -> None:
    server, client = configs.server, configs.client
    flare_log = logging.getLogger("nvflare")
    level = flare_log.level
    flare_log.setLevel(logging.WARNING)  # components log their settings when built; here they are only described
    try:
        for workflow in server.get("workflows", []):
            job.to_server(instantiate(workflow), id=workflow["id"])
        for component in server.get("components", []):
            job.to_server(instantiate(component), id=component["id"])
        for kind, key in ((FilterType.TASK_DATA, "task_data_filters"), (FilterType.TASK_RESULT, "task_result_filters")):
            for group in server.get(key, []):
                for spec in group["filters"]:
                    job.to_server(instantiate(spec), filter_type=kind, tasks=group["tasks"])
        for component in client.get("components", []):
            job.to_clients(instantiate(component), id=component["id"])
        for entry in client.get("executors", []):
            job.to_clients(instantiate(entry["executor"]), tasks=entry["tasks"], id=entry["executor"].get("id"))
        for kind, key in ((FilterType.TASK_DATA, "task_data_filters"), (FilterType.TASK_RESULT, "task_result_filters")):
            for group in client.get(key, []):
                for spec in group["filters"]:
                    job.to_clients(instantiate(spec), filter_type=kind, tasks=group["tasks"])
    except (ImportError, AttributeError, TypeError, ValueError) as e:
        raise ConfigError(f"cannot build the job's FLARE components: {e}") from e
    finally:
        flare_log.setLevel(level)
    top_level = {
        k: v
        for k, v in server.items()
        if k not in ("format_version", "workflows", "components", "task_data_filters", "task_result_filters")
    }
    if top_level:  # e.g. "server": {"heart_beat_timeout": ..., "task_request_interval": ...}
        job.to_server(top_level)


def _add_mmar_files(job: FedJob, mmar: Path, environment: dict[str, Any] | None, staging: Path) -> None:
    """The MMAR's config/, docs/ and (when it holds code) custom/ go into the app, through a filtered copy."""
    copied = stage_mmar_files(mmar, environment, staging)
    for target in ("server", "clients"):
        add = job.add_file_to_server if target == "server" else job.add_file_to_clients
        add(str(staging / "config"), app_folder_type="config")
        if "docs" in copied:
            add(str(staging / "docs"), dest_dir=os.path.join(os.pardir, "docs"), app_folder_type="config")
        if "custom" in copied:
            add(str(staging / "custom"), app_folder_type="custom")
