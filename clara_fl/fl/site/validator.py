"""Cross-site validation: every site scores every submitted model on its own validation data.

Built from the MMAR's config_cross_validation.json (config_validation.json whose ``model`` is the
train config's network component). Works with CrossSiteModelEval (model owner in the task header)
and with the newer CrossSiteEval (model owner in the DXO meta). A thin FLARE adapter: the validation
config is built and run in the job's confined process at this site
(:class:`~clara_fl.fl.site.local_training.LocalValidation` in :mod:`clara_fl.fl.site.site_process`). Each
model's metrics are recorded in the site's events file (:mod:`clara_fl.runtime.events`), with the model's owner.
"""

from __future__ import annotations

from typing import Any

from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants

from clara_fl.config.errors import ConfigError
from clara_fl.fl.site import learner
from clara_fl.fl.site.failure_report import SiteFailure
from clara_fl.fl.site.learner import (
    bad_reply,
    failure_reply,
    plain_metrics,
    process_spec,
    site_app_folder,
    site_settings,
)
from clara_fl.fl.site.local_training import SiteTaskFailed, ValidationSettings, derive_cross_validation_config
from clara_fl.fl.site.site_process import settings_dict
from clara_fl.runtime import events as ev

__all__ = ["ClaraValidator", "derive_cross_validation_config"]


class ClaraValidator(Executor):
    """Executor for the ``validate`` task: load the received weights, validate locally, return METRICS.

    With an FL algorithm that keeps layers local (FedBN's norm layers), every model is validated with this
    site's own values of those layers, taken from the site's local state (``fl_local_state.pt``).

    Args:
        algorithm: the job's FL algorithm (the Learner's ``algorithm``), ``algorithm_args`` its arguments.
        dp: the job's DP-SGD settings (the Learner's ``dp``): models are validated on the DP-compatible network.
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
        dp: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.dp = dict(dp) if dp else None
        self.algorithm = algorithm
        self.algorithm_args = dict(algorithm_args or {})
        self.validation_config = validation_config
        self.fallback_validation_config = fallback_validation_config
        self.train_config = train_config
        self.environment = environment
        self.validate_task_name = validate_task_name
        self.overrides = dict(overrides or {})
        self.send_error_details = False  # the site's opt-in, read from its site file with each task
        self._app_dir: str | None = None

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """At the end of the job (END_RUN): the job's confined process ends (the Learner ends it too)."""
        from clara_fl.fl.site.site_process import close_site

        if event_type == EventType.END_RUN and self._app_dir is not None:
            close_site(self._app_dir)

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
            metrics = self._validate(str(owner), dxo.data, fl_ctx, abort_signal)
        except SiteTaskFailed as e:  # bad config or data at this site: one clear line, an error code, the job goes on
            reply = failure_reply(self, fl_ctx, e.failure, self.send_error_details)
            reply.set_header(AppConstants.MODEL_OWNER, str(owner))  # the failed cell's model, for the server's record
            return reply
        if abort_signal.triggered:
            return make_reply(ReturnCode.TASK_ABORTED)
        self.log_info(fl_ctx, f"validated model '{owner}' on local data: {metrics}")
        self._record(fl_ctx, str(owner), metrics)
        return DXO(data_kind=DataKind.METRICS, data=metrics).to_shareable()

    def _record(self, fl_ctx: FLContext, owner: str, metrics: dict[str, float]) -> None:
        """The model's metrics in the site's events file; a file that cannot be written costs only the record."""
        try:
            events = ev.event_log(site_app_folder(fl_ctx), ev.SITE_EVENTS_FILE)
            events.write(ev.MODEL_VALIDATED, None, fl_ctx.get_identity_name(), {**metrics, "model": owner})
        except OSError as e:
            self.log_warning(fl_ctx, f"site events: the validation of '{owner}' is not recorded: {e}", fire_event=False)

    def _validate(
        self, owner: str, weights: dict[str, Any], fl_ctx: FLContext, abort_signal: Signal
    ) -> dict[str, float]:
        from clara_fl.fl.site.context import site_context

        try:
            site = site_context(fl_ctx, self.train_config)
        except ConfigError as e:
            failure = SiteFailure.from_exception("cross_validate", e, None)
            raise SiteTaskFailed(failure) from e
        self.send_error_details = site.send_error_details
        settings = ValidationSettings(
            **site_settings(site),
            environment=self.environment,
            overrides=self.overrides,
            algorithm=self.algorithm,
            algorithm_args=self.algorithm_args,
            dp=dict(self.dp or {}),
            validation_config=self.validation_config,
            fallback_validation_config=self.fallback_validation_config,
            train_config=self.train_config,
        )
        self._app_dir = site.app_dir
        result, _ = learner.site_backend(process_spec(site)).call(
            "cross_validate",
            {"settings": settings_dict(settings), "owner": owner},
            {"weights": weights},
            lambda: abort_signal.triggered,
        )
        try:
            return plain_metrics(result["metrics"])
        except (KeyError, TypeError, ValueError) as e:
            raise SiteTaskFailed(bad_reply("cross_validate", e)) from e
