"""Every private attribute of torch, ignite, MONAI or FLARE, and every ``nvflare.private`` module, that clara-fl
touches outside :mod:`clara_fl.fl.flare_internals`, in one place, with the reason.

Code elsewhere calls the accessor functions below, never the attribute itself, except the modules an entry names
in ``used_in``; tests/test_private_api.py pins each entry against the installed library, so an upgrade that
renames or removes one fails there, naming the attribute, instead of deep inside a training run, and fails on
any reach-in into another library's private names that is not listed here. When a library grows a public way to
do the same, replace the accessor's body and drop the entry. Patches that change FLARE's behaviour through its
internals live in :mod:`clara_fl.fl.flare_internals`, each behind a FLARE version check and a site switch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "PRIVATE_ATTRIBUTES",
    "PRIVATE_MODULES",
    "PrivateAttribute",
    "PrivateModule",
    "event_handler_lists",
    "key_metric_checkpoint",
    "saver_checkpoints",
    "analytics_sender",
    "controller_task_check_period",
    "set_cross_site_server_models",
    "set_task_check_period",
    "communicator_task_check_period",
]


@dataclass(frozen=True)
class PrivateAttribute:
    """One private attribute: where it lives, its name, and why no public API does instead."""

    library: str
    owner: str  # dotted path of the class (its instances hold the attribute)
    attribute: str
    reason: str
    # modules (relative to clara_fl/) that subclass the owner and use the attribute as their own: an
    # override or the parent's state, where an accessor would add nothing; everyone else calls an accessor
    used_in: tuple[str, ...] = ()
    # the owner's method that assigns the attribute, for one not set by the constructor (pinned by its source)
    set_in: str = ""


@dataclass(frozen=True)
class PrivateModule:
    """A module of a library's private package that clara-fl uses, where, and why no public module does instead."""

    library: str
    module: str
    reason: str
    used_in: tuple[str, ...]


PRIVATE_ATTRIBUTES: tuple[PrivateAttribute, ...] = (
    PrivateAttribute(
        "pytorch-ignite",
        "ignite.engine.Engine",
        "_event_handlers",
        "ignite has no public way to list an engine's handlers; FL validation mutes the evaluator's "
        "CheckpointSaver/TensorBoard/MetricsSaver handlers for one run and restores them in order.",
    ),
    PrivateAttribute(
        "monai",
        "monai.handlers.CheckpointSaver",
        "_key_metric_checkpoint",
        "MONAI's CheckpointSaver has load_state_dict() but no state_dict(): the best-model bookkeeping "
        "(which model.pt is best) is saved for --resume and FL local state from this ignite Checkpoint.",
    ),
    PrivateAttribute(
        "monai",
        "monai.handlers.CheckpointSaver",
        "_final_checkpoint",
        "Clara's fixed file names (final_model.pt) and crash-safe writes need the ignite Checkpoint's "
        "save_handler replaced; MONAI builds the Checkpoint objects itself and exposes none of them.",
    ),
    PrivateAttribute(
        "monai",
        "monai.handlers.CheckpointSaver",
        "_interval_checkpoint",
        "as _final_checkpoint, for interval checkpoints.",
    ),
    PrivateAttribute(
        "nvflare",
        "nvflare.app_opt.pt.file_model_persistor.PTFileModelPersistor",
        "_initialize",
        "the persistor builds its model in _initialize (on START_RUN); the MMAR's network can only be "
        "built then (the app folder is known from the FLContext), so ClaraModelPersistor overrides it.",
        used_in=("fl/server/persistor.py",),
    ),
    *(
        PrivateAttribute(
            "nvflare",
            "nvflare.app_opt.pt.file_model_persistor.PTFileModelPersistor",
            name,
            "the paths the persistor saves the global and the best global model to (set in _initialize from the "
            "job's arguments, no public accessor): ClaraModelPersistor writes the run state beside them and copies "
            "a resumed job's best model there.",
            used_in=("fl/server/persistor.py",),
            set_in="_initialize",
        )
        for name in ("_ckpt_save_path", "_best_ckpt_save_path")
    ),
    PrivateAttribute(
        "nvflare",
        "nvflare.app_common.tracking.log_writer.LogWriter",
        "sender",
        "a LogWriter built after the run started (simulator -t 1) has no sender and raises on every "
        "add_scalar; its absence is the only sign (no public 'is ready').",
    ),
    PrivateAttribute(
        "nvflare",
        "nvflare.apis.impl.wf_comm_server.WFCommServer",
        "_task_check_period",
        "FLARE 2.9 sets communicator.task_check_period but WFCommServer polls _task_check_period "
        "(fixed 0.2 s), so a job's configured period never takes effect.",
    ),
    PrivateAttribute(
        "nvflare",
        "nvflare.apis.impl.controller.Controller",
        "_task_check_period",
        "the period the job configured (a controller keeps its constructor argument only there); "
        "read to pass it on to the communicator.",
    ),
    PrivateAttribute(
        "nvflare",
        "nvflare.app_opt.he.cross_site_model_eval.HECrossSiteModelEval",
        "_load_validation_content",
        "FLARE 2.9 deep-copies a broadcast task's data, which an encrypted model under the server's context "
        "refuses, so its HE cross-site evaluation never sends a model; the override serializes the loaded "
        "model, and this method is the only place a loaded model passes before it is sent.",
        used_in=("fl/server/he.py",),
    ),
    PrivateAttribute(
        "nvflare",
        "nvflare.apis.impl.controller.Controller",
        "_engine",
        "the server engine a workflow keeps from initialize(); clara_fl's ScatterAndGather asks it for the job's "
        "sites when a round ends, to name the sites the round went without.",
        used_in=("fl/server/controllers.py",),
        set_in="initialize",
    ),
    PrivateAttribute(
        "nvflare",
        "nvflare.app_common.workflows.cross_site_eval.CrossSiteEval",
        "_server_models",
        "CrossSiteEval keeps the server models it validates only here, and sends the model before a missing one "
        "under the missing one's name; clara_fl's subclass sets it, before run(), to the models the persistor has "
        "(set_cross_site_server_models).",
    ),
    # ScatterAndGather's round state, read by clara_fl's subclass to send the final global model to the
    # sites for validation after the last round (issue 18: the best global model among all rounds).
    *(
        PrivateAttribute(
            "nvflare",
            "nvflare.app_common.workflows.scatter_and_gather.ScatterAndGather",
            name,
            "ScatterAndGather keeps its round state only in private attributes; the subclass that "
            "validates the final global model after the last round reads it.",
            used_in=("fl/server/controllers.py",),
        )
        for name in (
            "_num_rounds",
            "_current_round",
            "_start_round",
            "_global_weights",
            "_min_clients",
            "_wait_time_after_min_received",
        )
    ),
    *(
        PrivateAttribute(
            "nvflare",
            "nvflare.app_common.widgets.intime_model_selector.IntimeModelSelector",
            name,
            "IntimeModelSelector has no public hook to score a model outside a round's aggregation; the "
            "subclass that selects the best global model (final model included) calls its own steps.",
            used_in=("fl/server/model_selection.py",),
        )
        for name in ("_reset_stats", "_before_aggregate")
    ),
)

PRIVATE_MODULES: tuple[PrivateModule, ...] = (
    PrivateModule(
        "nvflare",
        "nvflare.private.fed.app.simulator.simulator",
        "the simulator's runner, started in a child process: FLARE's own SimEnv starts it "
        "(FedJobConfig.simulator_run), and the public `nvflare simulator` that wraps it is deprecated in FLARE 2.9.",
        used_in=("apps/simulate.py",),
    ),
)


def event_handler_lists(engine: Any) -> dict[Any, list[Any]]:
    """ignite ``Engine._event_handlers``: {event: [(handler, args, kwargs), ...]}, mutable in place."""
    return engine._event_handlers


def key_metric_checkpoint(saver: Any) -> Any:
    """MONAI ``CheckpointSaver._key_metric_checkpoint``: the ignite Checkpoint of the best model, or None."""
    return getattr(saver, "_key_metric_checkpoint", None)


def saver_checkpoints(saver: Any) -> dict[str, Any]:
    """MONAI CheckpointSaver's ignite Checkpoints by kind ("final", "key_metric", "interval").

    A kind the saver was not configured for is None."""
    return {
        "final": getattr(saver, "_final_checkpoint", None),
        "key_metric": getattr(saver, "_key_metric_checkpoint", None),
        "interval": getattr(saver, "_interval_checkpoint", None),
    }


def analytics_sender(writer: Any) -> Any:
    """FLARE ``LogWriter.sender`` (None until the writer saw START_RUN); True for writers without one."""
    return getattr(writer, "sender", True)


def set_task_check_period(communicator: Any, seconds: float) -> None:
    """Set FLARE ``WFCommServer._task_check_period`` where the communicator has it."""
    if hasattr(communicator, "_task_check_period"):
        communicator._task_check_period = seconds


def communicator_task_check_period(communicator: Any) -> float | None:
    """FLARE ``WFCommServer._task_check_period``: the period the communicator polls at; None where it has none."""
    period = getattr(communicator, "_task_check_period", None)
    return float(period) if isinstance(period, (int, float)) else None


def controller_task_check_period(controller: Any) -> float:
    """FLARE ``Controller._task_check_period``: the polling period the job configured."""
    return controller._task_check_period


def set_cross_site_server_models(controller: Any, names: list[str]) -> None:
    """Set FLARE ``CrossSiteEval._server_models``: the server's models its run() sends the sites to validate."""
    controller._server_models = list(names)
