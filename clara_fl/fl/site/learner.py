"""The FL Learner: a site trains from its MMAR's config_train.json, exactly as ``clara-fl train`` would.

A thin FLARE adapter in the manner of FLARE's LearnerExecutor/Learner and MONAI's MonaiAlgo: DXO in, one
round, DXO out. The job's config code never runs in FLARE's process: every task goes to the job's confined
process at this site (:mod:`clara_fl.fl.site.site_process`), where
:class:`~clara_fl.fl.site.local_training.LocalTraining` loads the global weights, trains one
:class:`~clara_fl.workflows.round.RoundSpec` (in that process or, with ``nproc_per_site`` > 1, in torchrun
workers it starts) and returns the weight difference with the real number of steps. Abort is polled after
every iteration. A failure is logged in full here and reaches the server only as its kind and config item
(:class:`~clara_fl.fl.site.failure_report.SiteFailure`), unless the site opts in to sending more.
"""

from __future__ import annotations

from typing import Any

from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import ReservedHeaderKey, Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.learner_spec import Learner
from nvflare.app_common.app_constant import AppConstants, ModelName, ValidateType

from clara_fl.config.errors import ConfigError
from clara_fl.fl.site.context import SiteContext
from clara_fl.fl.site.dp import DP_EPSILON_KEY
from clara_fl.fl.site.failure_report import SiteFailure
from clara_fl.fl.site.local_state import LOCAL_STATE_FILE
from clara_fl.fl.site.local_training import SiteTaskFailed, TrainingSettings
from clara_fl.fl.site.site_process import SiteBackend, SiteProcessSpec, open_site, settings_dict
from clara_fl.runtime import events as ev
from clara_fl.workflows.round import RoundSpec

__all__ = [
    "ClaraLearner",
    "LOCAL_STATE_FILE",
    "site_backend",
    "failure_reply",
    "plain_metrics",
    "bad_reply",
    "site_settings",
    "process_spec",
    "site_app_folder",
    "dp_refusal",
]


def site_backend(spec: SiteProcessSpec) -> SiteBackend:
    """Where this site's tasks run: the job's confined process (tests put this process in its place)."""
    return open_site(spec)


def failure_reply(
    component: FLComponent,
    fl_ctx: FLContext,
    failure: SiteFailure,
    send_details: bool,
    code: str = ReturnCode.EXECUTION_EXCEPTION,
) -> Shareable:
    """The reply to a failed task: the whole failure in the site's log only, its public part in the reply.

    FLARE keeps every ``log_error`` that fires its event for ``show_errors``, which any admin with the ``view``
    right reads: the whole line is logged without the event, the public part with it.
    """
    public = failure.public_text(send_details)
    component.log_error(fl_ctx, failure.local_text(), fire_event=False)
    component.log_error(fl_ctx, f"reported to the server: {public}")
    return make_reply(code, headers={ReservedHeaderKey.ERROR: public})


def site_settings(site: SiteContext) -> dict[str, Any]:
    """What a site adds to a job's settings for its confined process: its values, policy, data folders, catalog."""
    return {
        "app_dir": site.app_dir,
        "site_values": site.variables(),
        "code_policy": site.code_policy,
        "data_roots": list(site.policy.data_roots or ()),
        "catalog": dict(site.catalog),
    }


def dp_refusal(dp: dict[str, Any] | None, site_file: str | None) -> SiteFailure | None:
    """Why this site refuses the job's DP settings (its ``dp`` argument) under its site file's ``dp`` policy, or
    why those settings are malformed; None when it trains the job."""
    from clara_fl.fl.dp_settings import DPSettings, site_dp_policy
    from clara_fl.fl.site.context import read_site_file

    try:
        settings = DPSettings.from_args(dp, "components[clara_learner].args.dp") if dp is not None else None
        policy = site_dp_policy(read_site_file(site_file), site_file) if site_file else None
    except ConfigError as e:
        return SiteFailure.from_exception("build", e, None)
    line = policy.refusal(settings) if policy is not None else None
    return SiteFailure.refusal("build", "dp_policy", f"refused by this site's DP policy: {line}") if line else None


def site_app_folder(fl_ctx: FLContext) -> str:
    """The job's FLARE app folder at this site, where its events file goes."""
    return str(fl_ctx.get_engine().get_workspace().get_app_dir(fl_ctx.get_job_id()))


def process_spec(site: SiteContext, ddp: bool = False) -> SiteProcessSpec:
    """The confined process of this site's job: its folder, data folders and the site's confinement mode."""
    return SiteProcessSpec(site.app_dir, tuple(site.policy.data_roots or ()), site.confinement, ddp=ddp)


def plain_metrics(metrics: Any) -> dict[str, float]:
    """A confined process's metrics as ``{name: float}``.

    Raises:
        TypeError, ValueError: anything else.
    """
    return {str(k): float(v) for k, v in dict(metrics).items()}


def bad_reply(stage: str, error: Exception) -> SiteFailure:
    """The failure of a task whose reply from the confined process is not what this side sends."""
    detail = f"the site's confined process sent a malformed reply ({type(error).__name__}: {error})"
    return SiteFailure.refusal(stage, "bad_reply", detail)


class ClaraLearner(Learner):
    """Serves FLARE's ``train``, ``validate`` and ``submit_model`` tasks from an MMAR (the job's app folder).

    Args:
        train_config: the MMAR's train config, relative to the app folder.
        environment: the MMAR's environment file; site values from the site file sit above it.
        local_epochs: epochs per round (ignored when ``steps_aggregation`` > 0).
        steps_aggregation: iterations per round, when > 0.
        send_weight_diff: send WEIGHT_DIFF (default) or full WEIGHTS; must match the server's aggregator.
        analytic_sender_id: component that streams metrics to the server (FLARE TBWriter), optional.
        overrides: variables set by the job (``clara-fl job create --set``), above everything else.
        nproc_per_site: train each round in this many DDP processes (``torchrun --standalone``);
            validation and submit_model stay in the job's confined process.
        algorithm: the FL algorithm's site side (:mod:`clara_fl.fl.site.algorithms`; default FedAvg).
        algorithm_args: its arguments, as ``clara-fl job create --algorithm-arg`` checked them.
        dp: DP-SGD at this site (``clara-fl job create --dp``: epsilon, delta, max_grad_norm, rounds); None: no DP.
            The site file's ``dp`` policy may require it or cap its epsilon.
        keep_better_model: after each round, keep the better (on the site's validation data) of the global and
            the site's personalized model as ``models/site_best_model.pt`` (:mod:`clara_fl.fl.site.keep_better`);
            the site file's ``keep_better_model`` decides where it is given.
    """

    def __init__(
        self,
        train_config: str = "config/config_train.json",
        environment: str = "config/environment.json",
        local_epochs: int = 1,
        steps_aggregation: int = 0,
        send_weight_diff: bool = True,
        analytic_sender_id: str = "analytic_sender",
        overrides: dict[str, Any] | None = None,
        nproc_per_site: int = 1,
        algorithm: str = "fedavg",
        algorithm_args: dict[str, Any] | None = None,
        dp: dict[str, Any] | None = None,
        keep_better_model: bool = False,
    ) -> None:
        super().__init__()
        RoundSpec(local_epochs, steps_aggregation)  # refuses a round of nothing
        self.train_config = train_config
        self.environment = environment
        self.local_epochs = local_epochs
        self.steps_aggregation = steps_aggregation
        self.send_weight_diff = send_weight_diff
        self.analytic_sender_id = analytic_sender_id
        self.overrides = dict(overrides or {})
        self.nproc_per_site = max(1, int(nproc_per_site))
        self.algorithm = algorithm
        self.algorithm_args = dict(algorithm_args or {})
        self.dp = dict(dp) if dp else None
        self.keep_better_model = bool(keep_better_model)
        self.backend: SiteBackend | None = None
        self.send_error_details = False
        self._writer: Any = None
        self._events: ev.EventLog | None = None  # the site's run events (clara_fl.runtime.events)
        #: why initialize() could not build the site's trainer (every task then fails with it), else None
        self.init_failure: SiteFailure | None = None

    # -- set-up ----------------------------------------------------------------------------------

    def initialize(self, parts: dict, fl_ctx: FLContext) -> None:
        from clara_fl.fl.site.context import site_context

        self._writer = parts.get(self.analytic_sender_id)
        try:
            site = site_context(fl_ctx, self.train_config)
        except ConfigError as e:
            self._init_failed(fl_ctx, SiteFailure.from_exception("build", e, None))
            return
        self.site = site
        self.send_error_details = site.send_error_details
        # FLARE's app folder (the MMAR may be in its custom/), written from this process: the confined one may not
        self._events = ev.event_log(site_app_folder(fl_ctx), ev.SITE_EVENTS_FILE)
        self.log_info(
            fl_ctx,
            f"building the trainer from {self.train_config} in {site.app_dir} "
            f"(code policy: {site.code_policy}, confinement: {site.confinement})",
        )
        if site.site_file:
            self.log_info(fl_ctx, f"site values from {site.site_file}: {sorted(site.environment)}")
        refusal = dp_refusal(self.dp, site.site_file)
        if refusal is not None:
            self._init_failed(fl_ctx, refusal)
            return
        settings = TrainingSettings(
            **site_settings(site),
            environment=self.environment,
            overrides=self.overrides,
            algorithm=self.algorithm,
            algorithm_args=self.algorithm_args,
            dp=dict(self.dp or {}),
            keep_better_model=self.keep_better_model if site.keep_better_model is None else site.keep_better_model,
            train_config=self.train_config,
            local_epochs=self.local_epochs,
            steps_aggregation=self.steps_aggregation,
            send_weight_diff=self.send_weight_diff,
            nproc_per_site=self.nproc_per_site,
        )
        try:
            self.backend = site_backend(process_spec(site, ddp=self.nproc_per_site > 1))
            self.backend.call(
                "init_training",
                {"settings": settings_dict(settings), "stream_metrics": self._writer is not None},
                on_metric=self._stream_metric,
            )
        except SiteTaskFailed as e:
            # One clear line in the site log; every task then fails with an error code (the job goes on
            # while enough other sites are healthy).
            self._init_failed(fl_ctx, e.failure)

    def _init_failed(self, fl_ctx: FLContext, failure: SiteFailure) -> None:
        self.init_failure = failure
        self.log_error(fl_ctx, failure.local_text(), fire_event=False)

    # -- tasks -----------------------------------------------------------------------------------

    def train(self, data: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        if self.init_failure is not None:
            return self._failed(fl_ctx, self.init_failure)
        if abort_signal.triggered:
            return make_reply(ReturnCode.TASK_ABORTED)
        try:
            dxo = from_shareable(data)
        except ValueError as e:
            self.log_error(fl_ctx, f"train task data is not a DXO: {e}")
            return make_reply(ReturnCode.BAD_TASK_DATA)
        current_round = data.get_header(AppConstants.CURRENT_ROUND)
        self.log_info(fl_ctx, f"round {current_round}: training {self.round_spec().describe()}")
        self._record(fl_ctx, ev.SITE_TRAINING_STARTED, current_round)
        try:
            result, out = self._site.call(
                "train",
                {"data_kind": dxo.data_kind},
                {"data": dxo.data, "meta": dxo.meta},
                lambda: abort_signal.triggered,
                self._stream_metric,
            )
        except SiteTaskFailed as e:
            return self._failed(fl_ctx, e.failure, e.return_code)
        try:
            steps = int(result["steps"])
            if result.get("aborted") or abort_signal.triggered:
                self.log_info(fl_ctx, f"round {current_round} aborted after {steps} iterations")
                return make_reply(ReturnCode.TASK_ABORTED)
            kind = str(result["data_kind"])
            if kind not in (DataKind.WEIGHTS, DataKind.WEIGHT_DIFF):
                raise ValueError(f"data kind {kind!r}")
            weights, meta = dict(out["weights"]), dict(out["meta"])
        except (KeyError, TypeError, ValueError) as e:
            return self._failed(fl_ctx, bad_reply("train", e))
        self.log_info(fl_ctx, f"round {current_round}: {steps} iterations, sending {kind}")
        done: dict[str, Any] = {"steps": steps, "data_kind": kind}
        epsilon = meta.get(DP_EPSILON_KEY)
        if self.dp is not None and isinstance(epsilon, (int, float)):
            epsilon = meta[DP_EPSILON_KEY] = float(epsilon)  # a number only goes to the server
            self.log_info(
                fl_ctx,
                f"round {current_round}: DP-SGD epsilon spent {epsilon:.4f} of {self.dp['epsilon']:g} "
                f"(delta {self.dp['delta']:g})",
            )
            done[DP_EPSILON_KEY] = epsilon
            self._stream_metric(DP_EPSILON_KEY, epsilon, ev.round_number(current_round, 0) or 0)
        self._record(fl_ctx, ev.SITE_TRAINING_DONE, current_round, done)
        if isinstance(result.get("kept"), dict):  # keep_better_model: its metric's name, numbers and the winner
            self._record(fl_ctx, ev.SITE_MODEL_KEPT, current_round, dict(result["kept"]))
        meta[MetaKey.NUM_STEPS_CURRENT_ROUND] = steps
        # the round, for the result filters: FLARE clears the task's data before they run, and its LearnerExecutor
        # rebuilds the result from the DXO (a header would be lost)
        meta[AppConstants.CURRENT_ROUND] = current_round
        return DXO(data_kind=kind, data=weights, meta=meta).to_shareable()

    def validate(self, data: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        if self.init_failure is not None:
            return self._failed(fl_ctx, self.init_failure)
        validate_type = data.get_header(AppConstants.VALIDATE_TYPE)
        try:
            dxo = from_shareable(data)
        except ValueError as e:
            self.log_error(fl_ctx, f"validate task data is not a DXO: {e}")
            return make_reply(ReturnCode.BAD_TASK_DATA)
        try:
            # MODEL_VALIDATE is LearnerExecutor's validate task: the server's final global model, after the last
            # round (cross-site validation has its own validator), which the site's kept model may take
            final_global = validate_type == ValidateType.MODEL_VALIDATE
            result, _ = self._site.call(
                "validate",
                {"data_kind": dxo.data_kind, "validate_type": str(validate_type), "offer_to_kept": final_global},
                {"data": dxo.data},
                lambda: abort_signal.triggered,
            )
        except SiteTaskFailed as e:
            return self._failed(fl_ctx, e.failure, e.return_code)
        if result.get("metrics") is None:
            return make_reply(ReturnCode.EMPTY_RESULT)
        if abort_signal.triggered:
            return make_reply(ReturnCode.TASK_ABORTED)
        try:
            metrics = plain_metrics(result["metrics"])
        except (TypeError, ValueError) as e:
            return self._failed(fl_ctx, bad_reply("validate", e))
        self.log_info(fl_ctx, f"{validate_type}: {metrics}")
        if isinstance(result.get("kept"), dict):  # keep_better_model with the final global model
            self._record(fl_ctx, ev.SITE_MODEL_KEPT, data.get_header(AppConstants.CURRENT_ROUND), dict(result["kept"]))
        if validate_type == ValidateType.BEFORE_TRAIN_VALIDATE:
            self._record(fl_ctx, ev.GLOBAL_MODEL_VALIDATED, data.get_header(AppConstants.CURRENT_ROUND), metrics)
            # LearnerExecutor copies data[INITIAL_METRICS] into the train result's meta; it must be a
            # dict keyed by log_label, or FLARE's FedAvg drops every train result.
            return DXO(data_kind=DataKind.METRICS, data={MetaKey.INITIAL_METRICS: metrics}).to_shareable()
        return DXO(data_kind=DataKind.METRICS, data=metrics).to_shareable()

    def get_model_for_validation(self, model_name: str | None, fl_ctx: FLContext) -> Shareable:
        """The site's best local model (model.pt by key metric); ``final_model`` gives the last one."""
        if self.init_failure is not None:
            return self._failed(fl_ctx, self.init_failure)
        try:
            _, out = self._site.call("submit_model", {"model_name": model_name or ModelName.BEST_MODEL})
        except SiteTaskFailed as e:
            return self._failed(fl_ctx, e.failure, e.return_code)
        try:
            weights = dict(out["weights"])
        except (KeyError, TypeError, ValueError) as e:
            return self._failed(fl_ctx, bad_reply("submit_model", e))
        return DXO(data_kind=DataKind.WEIGHTS, data=weights).to_shareable()

    def _failed(self, fl_ctx: FLContext, failure: SiteFailure, code: str = ReturnCode.EXECUTION_EXCEPTION) -> Shareable:
        return failure_reply(self, fl_ctx, failure, self.send_error_details, code)

    def abort(self, fl_ctx: FLContext) -> None:
        """Best effort only: FLARE may not call it; training polls the abort signal itself."""

    def finalize(self, fl_ctx: FLContext) -> None:
        """At the end of the job (END_RUN): the job's confined process ends."""
        from clara_fl.fl.site.site_process import close_site

        if self.backend is not None:
            self.backend.stop()
            close_site(self.site.app_dir)
            self.backend = None

    # -- helpers ---------------------------------------------------------------------------------

    @property
    def _site(self) -> SiteBackend:
        if self.backend is None:
            raise RuntimeError("the Learner has no site process: initialize() did not succeed")
        return self.backend

    def _record(self, fl_ctx: FLContext, kind: str, current_round: Any, fields: dict[str, Any] | None = None) -> None:
        """One event in the site's events file (numbers and FLARE's names only: it may reach the server's report);
        a file that cannot be written ends the recording with a warning in the site's log, never the task."""
        if self._events is None:
            return
        try:
            self._events.write(kind, ev.round_number(current_round), fl_ctx.get_identity_name(), fields)
        except OSError as e:
            self._events = None
            self.log_warning(fl_ctx, f"site events are no longer recorded: {e}", fire_event=False)

    def _stream_metric(self, tag: str, value: float, step: int) -> None:
        from clara_fl.runtime.private_api import analytics_sender

        if self._writer is None or analytics_sender(self._writer) is None:
            return  # the writer was built after the run started (simulator -t 1): nothing to send through
        self._writer.add_scalar(tag, value, global_step=step)

    def round_spec(self) -> RoundSpec:
        return RoundSpec(local_epochs=self.local_epochs, steps=self.steps_aggregation)
