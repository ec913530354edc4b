"""Cross-site validation: every site scores every submitted model on its own validation data.

Built from the MMAR's config_cross_validation.json (config_validation.json whose ``model`` is the
train config's network component). Works with CrossSiteModelEval (model owner in the task header)
and with the newer CrossSiteEval (model owner in the DXO meta).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import ReservedHeaderKey, Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants

from clara_fl.config.errors import ConfigError, describe_failure

__all__ = ["ClaraValidator", "derive_cross_validation_config"]


def derive_cross_validation_config(mmar_root: str, validation_config: str, train_config: str) -> dict[str, Any]:
    """config_validation.json with ``model`` replaced by the train network and its CheckpointLoaders removed."""
    from clara_fl.config.jsonio import load_json
    from clara_fl.config.mmar import resolve_in_mmar
    from clara_fl.workflows.network import train_model_spec

    config = load_json(resolve_in_mmar(mmar_root, validation_config))
    if not isinstance(config, dict):
        raise ConfigError("a config must be a JSON object", file=validation_config)
    config["model"] = train_model_spec(mmar_root, train_config)
    config["handlers"] = [
        h for h in config.get("handlers", []) if not (isinstance(h, dict) and h.get("name") == "CheckpointLoader")
    ]
    return config


class ClaraValidator(Executor):
    """Executor for the ``validate`` task: load the received weights, validate locally, return METRICS.

    With an FL algorithm that keeps layers local (FedBN's norm layers), every model is validated with this
    site's own values of those layers, taken from the site's local state (``fl_local_state.pt``).

    Args:
        algorithm: the job's FL algorithm (the Learner's ``algorithm``), ``algorithm_args`` its arguments.
    """

    def __init__(
        self,
        validation_config: str = "config/config_cross_validation.json",
        fallback_validation_config: str = "config/config_validation.json",
        train_config: str = "config/config_train.json",
        environment: str = "config/environment.json",
        validate_task_name: str = AppConstants.TASK_VALIDATION,
        overrides: dict[str, Any] | None = None,
        algorithm: str = "fedavg",
        algorithm_args: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.algorithm = algorithm
        self.algorithm_args = dict(algorithm_args or {})
        self.validation_config = validation_config
        self.fallback_validation_config = fallback_validation_config
        self.train_config = train_config
        self.environment = environment
        self.validate_task_name = validate_task_name
        self.overrides = dict(overrides or {})

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        if task_name != self.validate_task_name:
            return make_reply(ReturnCode.TASK_UNKNOWN)
        try:
            dxo = from_shareable(shareable)
        except ValueError as e:
            self.log_error(fl_ctx, f"validate task data is not a DXO: {e}")
            return make_reply(ReturnCode.BAD_TASK_DATA)
        if dxo.data_kind != DataKind.WEIGHTS:
            self.log_error(fl_ctx, f"cross-site validation expects WEIGHTS, got {dxo.data_kind}")
            return make_reply(ReturnCode.BAD_TASK_DATA)
        owner = (
            shareable.get_header(AppConstants.MODEL_OWNER)
            or dxo.get_meta_prop(AppConstants.MODEL_OWNER)
            or "unknown_model"
        )
        try:
            metrics = self._validate(owner, dxo.data, fl_ctx, abort_signal)
        except Exception as e:  # bad config or data at this site: one clear line, an error code, the job goes on
            message = f"cross-site validation of '{owner}' failed: {describe_failure(e)}"
            self.log_error(fl_ctx, message)
            return make_reply(ReturnCode.EXECUTION_EXCEPTION, headers={ReservedHeaderKey.ERROR: message})
        if abort_signal.triggered:
            return make_reply(ReturnCode.TASK_ABORTED)
        self.log_info(fl_ctx, f"validated model '{owner}' on local data: {metrics}")
        return DXO(data_kind=DataKind.METRICS, data=metrics).to_shareable()

    def _validate(
        self, owner: str, weights: dict[str, Any], fl_ctx: FLContext, abort_signal: Signal
    ) -> dict[str, float]:
        from ignite.engine import Events

        from clara_fl.config.checkpoint_loaders import without_checkpoint_loaders
        from clara_fl.config.mmar import load_config
        from clara_fl.fl.site.context import site_context
        from clara_fl.fl.site.weights import network_weights, shaped_like
        from clara_fl.workflows.evaluate import EvaluateWorkflow

        site = site_context(fl_ctx, self.train_config)
        config = None
        if not os.path.isfile(os.path.join(site.app_dir, self.validation_config)):
            self.log_info(
                fl_ctx,
                f"{self.validation_config} not in the MMAR: validating with {self.fallback_validation_config} "
                f"and the network of {self.train_config}",
            )
            config = derive_cross_validation_config(site.app_dir, self.fallback_validation_config, self.train_config)
        # Each model's per-case metrics go to their own folder: eval/cross_site_val/<model owner>/.
        safe_owner = re.sub(r"[^A-Za-z0-9_.-]", "_", owner)
        overrides = {
            **self.overrides,
            "MMAR_EVAL_OUTPUT_PATH": os.path.join(site.app_dir, "eval", "cross_site_val", safe_owner),
        }
        loaded = load_config(
            site.app_dir, self.validation_config, self.environment, overrides, site.variables(), config=config
        )
        # the weights come from the server: a CheckpointLoader in the config would overwrite them
        loaded = dataclasses.replace(loaded, config=without_checkpoint_loaders(loaded.config, ("",))[0])
        workflow = EvaluateWorkflow.build(loaded, code_policy=site.policy)
        self._load(workflow.network, shaped_like(weights, network_weights(workflow.network)), loaded, fl_ctx)

        def poll_abort(engine: Any) -> None:
            if abort_signal.triggered:
                engine.terminate()

        workflow.evaluator.add_event_handler(Events.ITERATION_COMPLETED, poll_abort)
        return workflow.run(progress=False)

    def _load(self, network: Any, weights: dict[str, Any], loaded: Any, fl_ctx: FLContext) -> None:
        """Load ``weights``, except the layers the site's FL algorithm keeps local: those come from its local state."""
        from clara_fl.fl.site.algorithms import local_algorithm
        from clara_fl.fl.site.local_state import LOCAL_STATE_FILE
        from clara_fl.fl.site.weights import load_global_weights
        from clara_fl.runtime.checkpoint import load_checkpoint, model_state

        site_algorithm = local_algorithm(self.algorithm, self.algorithm_args)
        site_algorithm.setup_network(network)
        to_load = site_algorithm.weights_to_load(weights)
        kept = [k for k in weights if k not in to_load]
        if kept:
            ckpt_dir = str(loaded.variables.get("MMAR_CKPT_DIR") or "models")
            path = os.path.join(loaded.mmar_root, ckpt_dir, LOCAL_STATE_FILE)
            if os.path.isfile(path):
                own = model_state(load_checkpoint(path), path)
                load_global_weights(network, {k: own[k] for k in kept if k in own})
                self.log_info(fl_ctx, f"{self.algorithm}: {len(kept)} tensors from this site's {path}")
            else:
                self.log_warning(fl_ctx, f"{self.algorithm}: no {path} yet, validating the model's own local layers")
                to_load = weights
        load_global_weights(network, to_load)
