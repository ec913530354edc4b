"""FLARE's server workflows, polling at the ``task_check_period`` they are given.

In FLARE 2.9, ``Controller.set_communicator`` sets ``communicator.task_check_period``, but
``WFCommServer`` polls with ``_task_check_period``, fixed at 0.2 s: the period a job configures
never takes effect, and each round waits on two such polls. These subclasses pass the period
through (:mod:`clara_fl.fl.flare_internals.task_check_period`); the job templates use them.

``ScatterAndGather`` also has the sites validate the final global model after the last round, so
that the best global model is chosen among all of them (see :mod:`clara_fl.fl.server.model_selection`),
and says in the server log which sites a round went without and which site dropped out of the job
(see :mod:`clara_fl.fl.site.dropout`).

Every workflow here records the run's events (:mod:`clara_fl.runtime.events`) in ``server_events.jsonl`` in the
server's app folder while it is the workflow under way: rounds, the tasks sent and their results, aggregation, the
metrics each site sent with its result. ``clara-fl report`` and ``clara-fl simulate`` read these, not the log.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

from nvflare.apis.controller_spec import ClientTask, Task
from nvflare.apis.dxo import DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType
from nvflare.app_common.workflows.cross_site_eval import CrossSiteEval as _CrossSiteEval
from nvflare.app_common.workflows.cross_site_model_eval import CrossSiteModelEval as _CrossSiteModelEval
from nvflare.app_common.workflows.fedavg import FedAvg as _FedAvg
from nvflare.app_common.workflows.scaffold import Scaffold as _Scaffold
from nvflare.app_common.workflows.scatter_and_gather import ScatterAndGather as _ScatterAndGather

from clara_fl.fl.flare_internals.task_check_period import PollsAtItsTaskCheckPeriod
from clara_fl.fl.server.model_selection import FINAL_GLOBAL_MODEL_METRICS, FINAL_GLOBAL_MODEL_VALIDATED
from clara_fl.runtime import events as ev

__all__ = ["ScatterAndGather", "CrossSiteModelEval", "FedAvg", "CrossSiteEval", "Scaffold"]


# the pass-through of the period is a patch of FLARE's internals, gated by FLARE version and site switch
_PollsAtItsTaskCheckPeriod = PollsAtItsTaskCheckPeriod


# FLARE's events that are one run event each, with the round the workflow is in
_ROUND_EVENTS = {
    AppEventType.ROUND_STARTED: ev.ROUND_STARTED,
    AppEventType.BEFORE_AGGREGATION: ev.AGGREGATION_STARTED,
    AppEventType.AFTER_AGGREGATION: ev.AGGREGATION_FINISHED,
    AppEventType.ROUND_DONE: ev.ROUND_FINISHED,
}


class _RecordsRunEvents:
    """Records the run's events from ``start_controller`` to ``stop_controller``: every workflow sees every event
    FLARE fires, but only the one under way sends the sites tasks and gets their results."""

    _trains: ClassVar[bool] = True  # a training workflow: it records when training starts and finishes
    _run_events: ev.EventLog | None = None
    _recorded_round: int | None = None

    def start_controller(self, fl_ctx: FLContext) -> None:
        super().start_controller(fl_ctx)  # type: ignore[misc]
        self.record_run_events(fl_ctx)

    def record_run_events(self, fl_ctx: FLContext) -> None:
        """Record from now on, into the server's app folder."""
        app_dir = fl_ctx.get_engine().get_workspace().get_app_dir(fl_ctx.get_job_id())
        self._run_events = ev.event_log(app_dir, ev.SERVER_EVENTS_FILE)

    def stop_controller(self, fl_ctx: FLContext) -> None:
        self._run_events = None
        super().stop_controller(fl_ctx)  # type: ignore[misc]

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        if self._trains:
            self._record(fl_ctx, ev.TRAINING_STARTED)
        super().control_flow(abort_signal, fl_ctx)  # type: ignore[misc]
        if self._trains and not abort_signal.triggered:
            self._record(fl_ctx, ev.TRAINING_FINISHED)

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        super().handle_event(event_type, fl_ctx)  # type: ignore[misc]
        if self._run_events is None:
            return
        if event_type in _ROUND_EVENTS:
            current = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
            if event_type == AppEventType.ROUND_STARTED:
                self._round_started(fl_ctx, current)
            else:
                self._record(fl_ctx, _ROUND_EVENTS[event_type], _round(current, self._recorded_round))
        elif event_type == EventType.AFTER_TASK_DATA_FILTER:
            data = fl_ctx.get_prop(FLContextKey.TASK_DATA)
            current = data.get_header(AppConstants.CURRENT_ROUND) if isinstance(data, Shareable) else None
            task = str(fl_ctx.get_prop(FLContextKey.TASK_NAME) or "?")
            self._record(fl_ctx, ev.TASK_SENT, _round(current), _peer(fl_ctx), {"task": task})
        elif event_type == EventType.BEFORE_TASK_RESULT_FILTER:
            self._record_result(fl_ctx)

    def _round_started(self, fl_ctx: FLContext, current: Any) -> None:
        number = _round(current)
        if number is not None and number != self._recorded_round:
            self._recorded_round = number
            self._record(fl_ctx, ev.ROUND_STARTED, number)

    def _record_result(self, fl_ctx: FLContext) -> None:
        """The result's arrival and, where it carries them, the metrics the site measured on the round's global
        model before training (as FLARE's LearnerExecutor sends them: numbers only)."""
        result = fl_ctx.get_prop(FLContextKey.TASK_RESULT)
        site, task = _peer(fl_ctx), str(fl_ctx.get_prop(FLContextKey.TASK_NAME) or "?")
        if not isinstance(result, Shareable):
            self._record(fl_ctx, ev.TASK_RESULT, None, site, {"task": task})
            return
        metrics: Any = None
        current = result.get_header(AppConstants.CURRENT_ROUND)
        try:
            dxo = from_shareable(result)
            metrics = dxo.get_meta_prop(MetaKey.INITIAL_METRICS)
            current = dxo.get_meta_prop(AppConstants.CURRENT_ROUND, current)
        except ValueError:  # an error reply carries no DXO
            pass
        code = str(result.get_return_code(ReturnCode.OK))
        self._record(fl_ctx, ev.TASK_RESULT, _round(current), site, {"task": task, "return_code": code})
        if isinstance(metrics, dict):
            numbers = {
                str(k): float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
            if numbers:
                self._record(fl_ctx, ev.SITE_METRIC, _round(current, self._recorded_round), site, numbers)

    def _record(
        self,
        fl_ctx: FLContext,
        kind: str,
        round: int | None = None,
        site: str | None = None,
        fields: dict[str, Any] | None = None,
    ) -> None:
        """Write one event; a file that cannot be written ends the recording with one warning, never the job."""
        if self._run_events is None:
            return
        try:
            self._run_events.write(kind, round, site, fields)
        except OSError as e:
            self._run_events = None
            self.log_warning(fl_ctx, f"run events are no longer recorded: {e}")  # type: ignore[attr-defined]


def _round(value: Any, default: int | None = None) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else default


def _peer(fl_ctx: FLContext) -> str:
    peer = fl_ctx.get_peer_context()
    return str(peer.get_identity_name(default="?")) if peer is not None else "?"


class _RecordsRoundsOfItsTasks(_RecordsRunEvents):
    """A ModelController workflow: a round starts when a model of a new round goes out (FLARE's Scaffold fires
    no ROUND_STARTED)."""

    def set_fl_context(self, data: Any) -> None:
        super().set_fl_context(data)  # type: ignore[misc]
        if self._trains and data is not None and self._run_events is not None:
            self._round_started(self.fl_ctx, data.current_round)  # type: ignore[attr-defined]


class ScatterAndGather(_RecordsRunEvents, _PollsAtItsTaskCheckPeriod, _ScatterAndGather):
    """FLARE's ScatterAndGather (FedAvg rounds), polling every ``task_check_period`` seconds.

    After the last round, if ``final_validation_task_name`` is set, the final global model goes to
    every site in a task of that name (the job's client config gives it to the LearnerExecutor as
    its ``validate_task``, so the Learner validates it exactly as it validates each round's global
    model before training); the sites' metrics are fired with
    :data:`~clara_fl.fl.server.model_selection.FINAL_GLOBAL_MODEL_VALIDATED` for the model selector.

    Args:
        final_validation_task_name: the sites' task that validates a global model; empty: none.
        final_validation_timeout: seconds to wait for the sites' validation (0: no limit).
        *args: FLARE's ScatterAndGather positional arguments.
        **kwargs: FLARE's ScatterAndGather keyword arguments.
    """

    def __init__(
        self, *args: Any, final_validation_task_name: str = "", final_validation_timeout: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.final_validation_task_name = final_validation_task_name
        self.final_validation_timeout = final_validation_timeout
        self._round_contributors: set[str] = set()
        self._dropped_sites: set[str] = set()

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        super().handle_event(event_type, fl_ctx)
        if event_type == AppEventType.ROUND_STARTED:
            self._round_contributors = set()
        elif event_type == AppEventType.BEFORE_CONTRIBUTION_ACCEPT:
            self._round_contributors.add(fl_ctx.get_peer_context().get_identity_name(default="?"))
        elif event_type == AppEventType.ROUND_DONE:
            self._log_round_contributors(fl_ctx)
        elif event_type == EventType.CLIENT_DISCONNECTED:
            # each workflow's communicator watches the sites and fires this: say it once
            site = fl_ctx.get_prop(FLContextKey.DISCONNECTED_CLIENT_NAME)
            if site in self._dropped_sites:
                return
            self._dropped_sites.add(site)
            self.log_warning(
                fl_ctx,
                f"{site} dropped out of the job: its job process is gone (its client reported the job missing and "
                f"the site sent nothing during FLARE's dead-client grace period); the rounds go on with the other "
                f"sites while at least {self._min_clients} are left",
            )
        elif event_type == EventType.CLIENT_RECONNECTED:
            site = fl_ctx.get_prop(FLContextKey.RECONNECTED_CLIENT_NAME)
            self._dropped_sites.discard(site)
            self.log_info(fl_ctx, f"{site} is back in the job; it gets the current global model in the next round")

    def _log_round_contributors(self, fl_ctx: FLContext) -> None:
        sites = {client.name for client in self._engine.get_clients()} if self._engine else set()
        missing = sorted(sites - self._round_contributors)
        if not missing:
            contributors = ", ".join(sorted(self._round_contributors))
            self.log_info(
                fl_ctx, f"round {self._current_round} aggregated {len(self._round_contributors)} sites: {contributors}"
            )
        else:
            self.log_warning(
                fl_ctx,
                f"round {self._current_round} aggregated {len(self._round_contributors)} sites without "
                f"{', '.join(missing)} (no result in time: dropped, or slower than the first {self._min_clients})",
            )

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        super().control_flow(abort_signal, fl_ctx)
        all_rounds_done = self._num_rounds > 0 and self._current_round == self._start_round + self._num_rounds
        if self.final_validation_task_name and all_rounds_done and not abort_signal.triggered:
            self._validate_final_global_model(abort_signal, fl_ctx)

    def _validate_final_global_model(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        metrics_by_site: dict[str, dict[str, Any]] = {}

        def collect(client_task: ClientTask, fl_ctx: FLContext) -> None:
            site, result = client_task.client.name, client_task.result
            client_task.result = None
            if result.get_return_code(ReturnCode.OK) != ReturnCode.OK:
                code = result.get_return_code()
                self.log_warning(fl_ctx, f"{site} could not validate the final global model: {code}")
                return
            try:
                dxo = from_shareable(result)
            except ValueError as e:
                self.log_warning(fl_ctx, f"{site}'s validation of the final global model is not a DXO: {e}")
                return
            if dxo.data_kind == DataKind.METRICS and isinstance(dxo.data, dict):
                metrics_by_site[site] = dxo.data

        data = self.shareable_gen.learnable_to_shareable(self._global_weights, fl_ctx)
        data.set_header(AppConstants.CURRENT_ROUND, self._current_round)
        data.set_header(AppConstants.NUM_ROUNDS, self._num_rounds)
        self.log_info(fl_ctx, f"the sites validate the final global model ('{self.final_validation_task_name}' task)")
        task = Task(
            name=self.final_validation_task_name,
            data=data,
            props={},
            timeout=self.final_validation_timeout,
            result_received_cb=collect,
        )
        self.broadcast_and_wait(
            task=task,
            min_responses=self._min_clients,
            wait_time_after_min_received=self._wait_time_after_min_received,
            fl_ctx=fl_ctx,
            abort_signal=abort_signal,
        )
        if abort_signal.triggered:
            return
        # The selector compares at CURRENT_ROUND (the round whose start would have validated this
        # model) and the persistor saves GLOBAL_MODEL if it is the best.
        fl_ctx.set_prop(AppConstants.CURRENT_ROUND, self._current_round, private=True, sticky=True)
        fl_ctx.set_prop(AppConstants.GLOBAL_MODEL, self._global_weights, private=True, sticky=True)
        fl_ctx.set_prop(FINAL_GLOBAL_MODEL_METRICS, metrics_by_site, private=True, sticky=False)
        self.fire_event(FINAL_GLOBAL_MODEL_VALIDATED, fl_ctx)


class CrossSiteModelEval(_RecordsRunEvents, _PollsAtItsTaskCheckPeriod, _CrossSiteModelEval):
    """FLARE's CrossSiteModelEval, polling every ``task_check_period`` seconds."""

    _trains = False


class FedAvg(_RecordsRoundsOfItsTasks, _PollsAtItsTaskCheckPeriod, _FedAvg):
    """FLARE's FedAvg on the ModelController API, polling every ``task_check_period`` seconds."""


class CrossSiteEval(_RecordsRoundsOfItsTasks, _PollsAtItsTaskCheckPeriod, _CrossSiteEval):
    """FLARE's CrossSiteEval on the ModelController API, polling every ``task_check_period`` seconds."""

    _trains = False


class Scaffold(_RecordsRoundsOfItsTasks, _PollsAtItsTaskCheckPeriod, _Scaffold):
    """FLARE's SCAFFOLD controller on the ModelController API, polling every ``task_check_period`` seconds.

    The global model is saved without the control variates FLARE's Scaffold keeps in its meta: numpy arrays in
    the saved meta make the model file unreadable with ``torch.load(weights_only=True)``, so cross-site evaluation
    could not load it.
    """

    def save_model(self, model: Any) -> None:
        from nvflare.app_common.app_constant import AlgorithmConstants

        controls = (AlgorithmConstants.SCAFFOLD_CTRL_GLOBAL, AlgorithmConstants.SCAFFOLD_CTRL_DIFF)
        saved = copy.copy(model)
        saved.meta = {k: v for k, v in (model.meta or {}).items() if k not in controls}
        super().save_model(saved)
