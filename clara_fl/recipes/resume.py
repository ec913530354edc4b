"""``clara-fl job resume``: a continuation job for a job whose server died mid-run.

FLARE 2.9 does not restore a server job after a server restart (the job stays RUNNING with no
process). The server's persistor saved the global model, the rounds done and the best model so far
(:mod:`clara_fl.fl.server.run_state`); the continuation job is the original job folder with

* the rounds workflow, ``scatter_and_gather`` (ScatterAndGather) or ``fedavg`` (FLARE's FedAvg ModelController):
  ``start_round`` = the rounds done and ``num_rounds`` = the rounds left (both run rounds ``start_round`` to
  ``start_round + num_rounds - 1`` and give the persistor the same round numbers),
* ``persistor``: ``resume_from_job`` = the stranded job's id: the server reads the saved models from that job's
  folder in its workspace (so the command runs where that folder is, on the server; the models do not
  travel in the job, and the sites get the same job as before),
* ``model_selector``: ``saved_best_val_metric`` = the saved best, so a worse model does not replace the saved best.

Nothing here imports FLARE or torch; nothing is written before every input is checked.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from clara_fl.config.errors import ConfigError, UsageError
from clara_fl.config.jsonio import load_json
from clara_fl.fl.server.run_state import STATE_FILE, ServerRunState, is_job_id, read_run_state

__all__ = ["ResumePlan", "find_run_state", "plan_resume", "write_continuation_job"]

SERVER_CONFIG = os.path.join("config", "config_fed_server.json")
# the rounds workflows a continuation job can start at a later round: ScatterAndGather's and FedAvg's (ModelController)
ROUNDS_WORKFLOWS = ("scatter_and_gather", "fedavg")
# FLARE's Scaffold keeps its control variates in memory only: a continuation would start them at zero again
UNSAVED_STATE_WORKFLOWS = {"scaffold": "SCAFFOLD's control variates are not saved with the global model"}
PERSISTOR, SELECTOR = "persistor", "model_selector"
DEFAULT_START_ROUND, DEFAULT_NUM_ROUNDS = 0, 5  # ScatterAndGather's and FedAvg's defaults alike


class ResumePlan:
    """What a continuation job changes in the original job (see the module doc).

    Attributes:
        job: the original job folder; app: its app folder with the server config.
        run_folder: the folder holding the run state and the saved models; state: the run state.
        server_config: the original app's config_fed_server.json content.
        rounds_workflow: the id of its rounds workflow (one of :data:`ROUNDS_WORKFLOWS`).
    """

    def __init__(
        self,
        job: Path,
        app: Path,
        run_folder: Path,
        state: ServerRunState,
        server_config: dict,
        rounds_workflow: str = ROUNDS_WORKFLOWS[0],
    ) -> None:
        self.job, self.app, self.run_folder, self.state = job, app, run_folder, state
        self.server_config = server_config
        self.rounds_workflow = rounds_workflow

    def continued_server_config(self) -> dict[str, Any]:
        config = json.loads(json.dumps(self.server_config))
        _args(config, "workflows", self.rounds_workflow).update(
            start_round=self.state.rounds_done, num_rounds=self.state.rounds_left
        )
        _args(config, "components", PERSISTOR)["resume_from_job"] = self.state.job_id
        if self.state.best_metric is not None:
            selector = _find(config, "components", SELECTOR)
            if selector is not None:
                selector.setdefault("args", {})["saved_best_val_metric"] = self.state.best_metric
        return config


def _find(config: dict[str, Any], section: str, component_id: str) -> dict[str, Any] | None:
    entries = config.get(section)
    if not isinstance(entries, list):
        return None
    return next((e for e in entries if isinstance(e, dict) and e.get("id") == component_id), None)


def _args(config: dict[str, Any], section: str, component_id: str) -> dict[str, Any]:
    entry = _find(config, section, component_id)
    assert entry is not None  # plan_resume checked it
    return entry.setdefault("args", {})


def find_run_state(run: str | os.PathLike) -> Path:
    """The folder with the run state: ``run`` itself, or its ``app_server/`` (the server's job folder).

    Raises:
        UsageError: ``run`` (the command's ``RUN``) does not exist, or neither holds the state file.
    """
    run = Path(run)
    if run.is_file() and run.name == STATE_FILE:
        return run.parent
    for folder in (run, run / "app_server"):
        if (folder / STATE_FILE).is_file():
            return folder
    if not run.exists():
        raise UsageError("RUN", str(run), "server run folder not found")
    raise UsageError(
        "RUN", str(run), f"no {STATE_FILE} here or in app_server/: give the job's folder in the server's workspace"
    )


def _server_app(job: Path) -> Path:
    meta = job / "meta.json"
    if not meta.is_file():
        raise UsageError("JOB", str(job), "not a FLARE job folder (no meta.json)")
    apps = sorted(p.parent.parent for p in job.glob(f"*/{SERVER_CONFIG}"))
    if len(apps) != 1:
        raise UsageError("JOB", str(job), f"expected one app with {SERVER_CONFIG}, found {len(apps)}")
    return apps[0]


def plan_resume(job: str | os.PathLike, run: str | os.PathLike) -> ResumePlan:
    """Check the original job folder and the stranded run, and say what the continuation changes.

    Args:
        job: the job folder that was submitted.
        run: the job's folder in the server's workspace (``<server>/<job id>``), its ``app_server/``, or
            the state file.

    Raises:
        UsageError: ``job`` (the command's ``JOB``) is not a job folder with one server app, or ``run`` (``RUN``)
            is not a clara-fl server run.
        ConfigError: one line naming the file that is wrong: a job without ScatterAndGather's or FedAvg's rounds
            (a SCAFFOLD job included: its control variates are not saved) or without the persistor, a run of a job
            with other rounds, no round left, a saved model missing, or a run state of another job.
    """
    job = Path(job)
    if not job.is_dir():
        raise UsageError("JOB", str(job), "job folder not found")
    app = _server_app(job)
    config_file = str(app / SERVER_CONFIG)
    server_config = load_json(config_file, what="server config")
    if not isinstance(server_config, dict):
        raise ConfigError("expected a JSON object", file=config_file)
    rounds_workflow = _rounds_workflow(server_config, config_file)
    rounds = _find(server_config, "workflows", rounds_workflow)
    assert rounds is not None  # _rounds_workflow found it
    persistor = _find(server_config, "components", PERSISTOR)
    if persistor is None or not str(persistor.get("path", "")).endswith("ClaraModelPersistor"):
        raise ConfigError("expected the ClaraModelPersistor", file=config_file, path=f"components[{PERSISTOR}]")
    run_folder = find_run_state(run)
    state = read_run_state(run_folder)
    args = rounds.get("args", {})
    for name in ("start_round", "num_rounds"):
        if name in args and (isinstance(args[name], bool) or not isinstance(args[name], int)):
            raise ConfigError(
                f"expected an integer, got {args[name]!r}",
                file=config_file,
                path=f"workflows[{rounds_workflow}].args.{name}",
            )
    planned = args.get("start_round", DEFAULT_START_ROUND) + args.get("num_rounds", DEFAULT_NUM_ROUNDS)
    if planned != state.total_rounds:
        raise ConfigError(
            f"the job plans {planned} rounds but the run planned {state.total_rounds}: not this run's job",
            file=config_file,
            path=f"workflows[{rounds_workflow}].args.num_rounds",
        )
    if state.rounds_left == 0:
        raise ConfigError(
            f"all {state.total_rounds} rounds of job {state.job_id} are done: nothing to resume",
            file=str(run_folder / STATE_FILE),
        )
    for saved in (state.global_model, state.best_model):
        if saved is not None and not (run_folder / saved).is_file():
            raise ConfigError(f"the saved model {saved} is missing", file=str(run_folder))
    if not is_job_id(state.job_id) or run_folder.resolve().parent.name != state.job_id:
        raise ConfigError(
            f"the run state is of job {state.job_id}, not of the job folder it is in: give the job's folder in the "
            "server's workspace",
            file=str(run_folder / STATE_FILE),
        )
    return ResumePlan(job, app, run_folder, state, server_config, rounds_workflow)


def _rounds_workflow(server_config: dict[str, Any], config_file: str) -> str:
    """The id of the job's rounds workflow that a continuation can start at a later round.

    Raises:
        ConfigError: the job has none, or its rounds keep state that is not saved (SCAFFOLD).
    """
    ids = [w.get("id") for w in server_config.get("workflows", []) if isinstance(w, dict)]
    for workflow_id, why in UNSAVED_STATE_WORKFLOWS.items():
        if workflow_id in ids:
            raise ConfigError(
                f"a '{workflow_id}' job does not resume: {why}, a continuation would not continue it",
                file=config_file,
                path=f"workflows[{workflow_id}]",
            )
    found = [w for w in ROUNDS_WORKFLOWS if w in ids]
    if not found:
        names = " or ".join(f"'{w}'" for w in ROUNDS_WORKFLOWS)
        raise ConfigError(
            f"no {names} workflow: only ScatterAndGather and FedAvg (ModelController) jobs resume", file=config_file
        )
    return found[0]


def write_continuation_job(plan: ResumePlan, output: str | os.PathLike, force: bool = False) -> Path:
    """Write the continuation job folder ``output`` (staged beside it, then moved into place).

    Raises:
        UsageError: ``output`` (the command's ``--output``) holds something and ``force`` is not set, is a file,
            or is the original job.
    """
    output = Path(output).resolve()
    if output == plan.job.resolve():
        raise UsageError("--output", str(output), "the continuation job must not replace the original job")
    if output.exists() and not output.is_dir():
        raise UsageError("--output", str(output), "the job folder to write is a file")
    if output.exists() and any(output.iterdir()) and not force:
        raise UsageError("--output", str(output), "job folder exists and is not empty (use --force to replace it)")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".clara_fl_resume_", dir=output.parent) as staging:
        staged = Path(staging) / "job"
        shutil.copytree(plan.job, staged, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        app = staged / plan.app.relative_to(plan.job)
        (app / SERVER_CONFIG).write_text(json.dumps(plan.continued_server_config(), indent=2) + "\n")
        meta_file = staged / "meta.json"
        meta = json.loads(meta_file.read_text())
        meta["name"] = f"{meta.get('name', plan.job.name)}_resumed_at_round_{plan.state.rounds_done}"
        meta_file.write_text(json.dumps(meta, indent=2) + "\n")
        if output.exists():
            shutil.rmtree(output)
        os.replace(staged, output)
    return output
