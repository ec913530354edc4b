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
from nvflare.apis.shareable import Shareable, make_reply
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
    """Executor for the ``validate`` task: load the received weights, validate locally, return METRICS."""

    def __init__(
        self,
        validation_config: str = "config/config_cross_validation.json",
        fallback_validation_config: str = "config/config_validation.json",
        train_config: str = "config/config_train.json",
        environment: str = "config/environment.json",
        validate_task_name: str = AppConstants.TASK_VALIDATION,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
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
            self.log_error(fl_ctx, f"cross-site validation of '{owner}' failed: {describe_failure(e)}")
            return make_reply(ReturnCode.EXECUTION_EXCEPTION)
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
        from clara_fl.fl.site.weights import load_global_weights, network_weights, shaped_like
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
        load_global_weights(workflow.network, shaped_like(weights, network_weights(workflow.network)))

        def poll_abort(engine: Any) -> None:
            if abort_signal.triggered:
                engine.terminate()

        workflow.evaluator.add_event_handler(Events.ITERATION_COMPLETED, poll_abort)
        return workflow.run(progress=False)
