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
from collections.abc import Callable
from typing import Any, ClassVar

from nvflare.apis.controller_spec import ClientTask, Task
from nvflare.apis.dxo import DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.abstract.model import ModelLearnable, make_model_learnable
from nvflare.app_common.app_constant import AppConstants, DefaultCheckpointFileName
from nvflare.app_common.app_event_type import AppEventType
from nvflare.app_common.utils.fl_model_utils import FLModelUtils
from nvflare.app_common.workflows.cross_site_eval import CrossSiteEval as _CrossSiteEval
from nvflare.app_common.workflows.cross_site_model_eval import CrossSiteModelEval as _CrossSiteModelEval
from nvflare.app_common.workflows.fedavg import FedAvg as _FedAvg
from nvflare.app_common.workflows.scaffold import Scaffold as _Scaffold
from nvflare.app_common.workflows.scatter_and_gather import ScatterAndGather as _ScatterAndGather

from clara_fl.fl.flare_internals.task_check_period import PollsAtItsTaskCheckPeriod
from clara_fl.fl.server.model_selection import FINAL_GLOBAL_MODEL_METRICS, FINAL_GLOBAL_MODEL_VALIDATED
from clara_fl.runtime import events as ev
from clara_fl.runtime.private_api import set_cross_site_server_models

__all__ = ["ScatterAndGather", "CrossSiteModelEval", "FedAvg", "CrossSiteEval", "Scaffold"]


SERVER_MODEL_PREFIX = "SRV_"
"""A server model's owner name in cross-site evaluation (CrossSiteModelEval's: ``SRV_FL_global_model.pt``)."""

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
                self._record(fl_ctx, _ROUND_EVENTS[event_type], ev.round_number(current, self._recorded_round))
        elif event_type == EventType.AFTER_TASK_DATA_FILTER:
            data = fl_ctx.get_prop(FLContextKey.TASK_DATA)
            current = data.get_header(AppConstants.CURRENT_ROUND) if isinstance(data, Shareable) else None
            task = str(fl_ctx.get_prop(FLContextKey.TASK_NAME) or "?")
            self._record(fl_ctx, ev.TASK_SENT, ev.round_number(current), _peer(fl_ctx), {"task": task})
        elif event_type == EventType.BEFORE_TASK_RESULT_FILTER:
            self._record_result(fl_ctx)

    def _round_started(self, fl_ctx: FLContext, current: Any) -> None:
        number = ev.round_number(current)
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
        self._record(fl_ctx, ev.TASK_RESULT, ev.round_number(current), site, {"task": task, "return_code": code})
        if isinstance(metrics, dict):
            numbers = {
                str(k): float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
            if numbers:
                self._record(fl_ctx, ev.SITE_METRIC, ev.round_number(current, self._recorded_round), site, numbers)

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


def _set_prop(fl_ctx: FLContext, key: str, value: Any) -> None:
    """Set a property as the workflow set it before (FLContext refuses to change whether it is sticky): FedAvg's
    round is not sticky, ScatterAndGather's is."""
    detail = fl_ctx.get_prop_detail(key)
    private, sticky = (detail["private"], detail["sticky"]) if detail else (True, True)
    fl_ctx.set_prop(key, value, private=private, sticky=sticky)


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


class _ReportsRoundContributors:
    """The round log (the sites a round aggregated, or the ones it went without) and the drop-out report (one line
    when a site's job process is gone, one when it is back).

    A contribution is a result the workflow took in (at :attr:`_contribution_event`, where :meth:`_accepted` says
    so); the round is logged at :attr:`_round_done_event`. The workflow says which sites the round was sent to, how
    many it needs and its number.
    """

    _round_done_event: ClassVar[str] = AppEventType.ROUND_DONE
    _contribution_event: ClassVar[str] = AppEventType.BEFORE_CONTRIBUTION_ACCEPT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._round_contributors: set[str] = set()
        self._dropped_sites: set[str] = set()

    def _round_sites(self) -> set[str]:
        raise NotImplementedError

    def _least_sites(self) -> int:
        raise NotImplementedError

    def _round_number(self) -> Any:
        raise NotImplementedError

    def _accepted(self, fl_ctx: FLContext) -> bool:
        """Whether the result of the :attr:`_contribution_event` counts (ScatterAndGather fires it for those only)."""
        return True

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        super().handle_event(event_type, fl_ctx)  # type: ignore[misc]
        if event_type == AppEventType.ROUND_STARTED:
            self._round_contributors = set()
        elif event_type == self._contribution_event:
            if self._accepted(fl_ctx):
                self._round_contributors.add(_peer(fl_ctx))
        elif event_type == self._round_done_event:
            self._log_round_contributors(fl_ctx)
            self._round_contributors = set()
        elif event_type == EventType.CLIENT_DISCONNECTED:
            # each workflow's communicator watches the sites and fires this: say it once
            site = fl_ctx.get_prop(FLContextKey.DISCONNECTED_CLIENT_NAME)
            if site in self._dropped_sites:
                return
            self._dropped_sites.add(site)
            self.log_warning(  # type: ignore[attr-defined]
                fl_ctx,
                f"{site} dropped out of the job: its job process is gone (its client reported the job missing and "
                f"the site sent nothing during FLARE's dead-client grace period); the rounds go on with the other "
                f"sites while at least {self._least_sites()} are left",
            )
        elif event_type == EventType.CLIENT_RECONNECTED:
            site = fl_ctx.get_prop(FLContextKey.RECONNECTED_CLIENT_NAME)
            self._dropped_sites.discard(site)
            self.log_info(  # type: ignore[attr-defined]
                fl_ctx, f"{site} is back in the job; it gets the current global model in the next round"
            )

    def _log_round_contributors(self, fl_ctx: FLContext) -> None:
        missing = sorted(self._round_sites() - self._round_contributors)
        number, count = self._round_number(), len(self._round_contributors)
        if not missing:
            contributors = ", ".join(sorted(self._round_contributors))
            self.log_info(fl_ctx, f"round {number} aggregated {count} sites: {contributors}")  # type: ignore[attr-defined]
        else:
            self.log_warning(  # type: ignore[attr-defined]
                fl_ctx,
                f"round {number} aggregated {count} sites without {', '.join(missing)} (no result in time: dropped, "
                f"or slower than the first {self._least_sites()})",
            )


class _ValidatesFinalGlobalModel:
    """After the last round, the sites validate the final global model in a ``final_validation_task_name`` task (the
    job's client config gives it to the LearnerExecutor as its ``validate_task``, so the Learner validates it exactly
    as it validates each round's global model before training); their metrics are fired with
    :data:`~clara_fl.fl.server.model_selection.FINAL_GLOBAL_MODEL_VALIDATED` for the model selector, which makes it
    the best global model if it is (a candidate FLARE's selectors never score)."""

    def __init__(
        self, *args: Any, final_validation_task_name: str = "", final_validation_timeout: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.final_validation_task_name = final_validation_task_name
        self.final_validation_timeout = final_validation_timeout

    def validate_final_global_model(
        self,
        data: Shareable,
        global_model: ModelLearnable,
        after_round: int,
        min_responses: int,
        wait_time_after_min_received: int,
        abort_signal: Signal,
        fl_ctx: FLContext,
    ) -> None:
        """Send ``data`` (the final global model) to every site to validate, and fire the sites' metrics.

        Args:
            data: the task data: the final global model's weights, with the round headers.
            global_model: the same model, as the persistor saves it (if it is the best).
            after_round: the round whose start would have validated this model (the best model's round).
            min_responses: the validations to wait for.
            wait_time_after_min_received: seconds to wait for the other sites after ``min_responses``.
            abort_signal: the job's abort signal.
            fl_ctx: the workflow's FLContext.
        """
        metrics_by_site: dict[str, dict[str, Any]] = {}

        def collect(client_task: ClientTask, fl_ctx: FLContext) -> None:
            site, result = client_task.client.name, client_task.result
            client_task.result = None
            if result.get_return_code(ReturnCode.OK) != ReturnCode.OK:
                code = result.get_return_code()
                self.log_warning(fl_ctx, f"{site} could not validate the final global model: {code}")  # type: ignore[attr-defined]
                return
            try:
                dxo = from_shareable(result)
            except ValueError as e:
                self.log_warning(fl_ctx, f"{site}'s validation of the final global model is not a DXO: {e}")  # type: ignore[attr-defined]
                return
            if dxo.data_kind == DataKind.METRICS and isinstance(dxo.data, dict):
                metrics_by_site[site] = dxo.data

        self.log_info(  # type: ignore[attr-defined]
            fl_ctx, f"the sites validate the final global model ('{self.final_validation_task_name}' task)"
        )
        task = Task(
            name=self.final_validation_task_name,
            data=data,
            props={},
            timeout=self.final_validation_timeout,
            result_received_cb=collect,
        )
        self.broadcast_and_wait(  # type: ignore[attr-defined]
            task=task,
            min_responses=min_responses,
            wait_time_after_min_received=wait_time_after_min_received,
            fl_ctx=fl_ctx,
            abort_signal=abort_signal,
        )
        if abort_signal.triggered:
            return
        # The selector compares at CURRENT_ROUND and the persistor saves GLOBAL_MODEL if it is the best.
        _set_prop(fl_ctx, AppConstants.CURRENT_ROUND, after_round)
        _set_prop(fl_ctx, AppConstants.GLOBAL_MODEL, global_model)
        fl_ctx.set_prop(FINAL_GLOBAL_MODEL_METRICS, metrics_by_site, private=True, sticky=False)
        self.fire_event(FINAL_GLOBAL_MODEL_VALIDATED, fl_ctx)  # type: ignore[attr-defined]


class ScatterAndGather(
    _RecordsRunEvents,
    _ReportsRoundContributors,
    _ValidatesFinalGlobalModel,
    _PollsAtItsTaskCheckPeriod,
    _ScatterAndGather,
):
    """FLARE's ScatterAndGather (FedAvg rounds), polling every ``task_check_period`` seconds.

    After the last round, if ``final_validation_task_name`` is set, the sites validate the final global model, a
    candidate for the best global model (:class:`_ValidatesFinalGlobalModel`). The server log names the sites each
    round aggregated, or went without, and the site that dropped out of the job. Besides FLARE's arguments it
    takes ``final_validation_task_name`` (the sites' task that validates a global model; empty: none) and
    ``final_validation_timeout`` (seconds to wait for the sites' validation; 0: no limit).

    Args:
        *args: FLARE's ScatterAndGather positional arguments.
        **kwargs: FLARE's ScatterAndGather keyword arguments.
    """

    def _round_sites(self) -> set[str]:
        return {client.name for client in self._engine.get_clients()} if self._engine else set()

    def _least_sites(self) -> int:
        return int(self._min_clients)

    def _round_number(self) -> Any:
        return self._current_round

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        super().control_flow(abort_signal, fl_ctx)
        all_rounds_done = self._num_rounds > 0 and self._current_round == self._start_round + self._num_rounds
        if self.final_validation_task_name and all_rounds_done and not abort_signal.triggered:
            data = self.shareable_gen.learnable_to_shareable(self._global_weights, fl_ctx)
            data.set_header(AppConstants.CURRENT_ROUND, self._current_round)
            data.set_header(AppConstants.NUM_ROUNDS, self._num_rounds)
            self.validate_final_global_model(
                data,
                self._global_weights,
                self._current_round,
                self._min_clients,
                self._wait_time_after_min_received,
                abort_signal,
                fl_ctx,
            )


class CrossSiteModelEval(_RecordsRunEvents, _PollsAtItsTaskCheckPeriod, _CrossSiteModelEval):
    """FLARE's CrossSiteModelEval, polling every ``task_check_period`` seconds."""

    _trains = False


class _RoundsOfTheSites(_ReportsRoundContributors, _ValidatesFinalGlobalModel):
    """What clara-fl's ScatterAndGather gives, on a FLARE FedAvg-family ModelController (``BaseFedAvg``: ``run``
    samples the round's sites, sends them the model, aggregates their results weighted by the steps each ran, and
    calls ``update_model`` and ``save_model``).

    * ``num_clients = 0`` sends each round's model to every site (FLARE samples ``num_clients`` sites otherwise), and
      the round ends once ``min_clients`` results are in and ``wait_time_after_min_received`` seconds more have
      passed, or every site answered (FLARE's controllers wait for every site they sampled).
    * The round log and the drop-out report (:class:`_ReportsRoundContributors`), logged after each aggregation; a
      round's contributors are the results it aggregated (not a site's error reply).
    * The sites validate the final global model after the last round (:class:`_ValidatesFinalGlobalModel`).
    * ``START_ROUND`` is set for the run as ScatterAndGather sets it, so the persistor's run state
      (:mod:`clara_fl.fl.server.run_state`) records a continuation job's rounds as the whole job's.
    """

    _round_done_event = AppEventType.AFTER_AGGREGATION
    # a ModelController fires BEFORE_CONTRIBUTION_ACCEPT for every result, a site's error reply too
    _contribution_event = AppEventType.AFTER_CONTRIBUTION_ACCEPT

    def __init__(
        self, *args: Any, min_clients: int | None = None, wait_time_after_min_received: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.min_clients = min_clients
        self.wait_time_after_min_received = wait_time_after_min_received
        self.final_global_model: FLModel | None = None
        self._final_round: int | None = None
        self._round_targets: set[str] = set()

    def sample_clients(self, num_clients: int | None = None) -> list[str]:
        clients: list[str] = super().sample_clients(num_clients or None)  # type: ignore[misc]
        self._round_targets = set(clients)
        return clients

    def send_model(
        self,
        task_name: str = AppConstants.TASK_TRAIN,
        data: FLModel | None = None,
        targets: list[str] | None = None,
        min_responses: int | None = None,
        timeout: int = 0,
        callback: Callable[[FLModel], Any] | None = None,
    ) -> None:
        self.broadcast_model(  # type: ignore[attr-defined]
            data=data,
            task_name=task_name,
            targets=targets,
            timeout=timeout,
            blocking=False,
            callback=callback,
            **self._round_wait(task_name, min_responses),
        )

    def send_model_and_wait(
        self,
        task_name: str = AppConstants.TASK_TRAIN,
        data: FLModel | None = None,
        targets: list[str] | None = None,
        min_responses: int | None = None,
        timeout: int = 0,
    ) -> list[FLModel]:
        results: list[FLModel] = self.broadcast_model(  # type: ignore[attr-defined]
            data=data,
            task_name=task_name,
            targets=targets,
            timeout=timeout,
            **self._round_wait(task_name, min_responses),
        )
        return results

    def save_model(self, model: Any) -> None:
        # FLARE's ModelController replaces self.fl_ctx with each task result's context, which lacks the run's
        # NUM_ROUNDS and CURRENT_ROUND (set on the run's context, not sticky): the persistor's run state needs them,
        # or a killed server's job could not be resumed.
        fl_ctx = self.fl_ctx  # type: ignore[attr-defined]
        if fl_ctx is not None:  # None only before the workflow runs
            _set_prop(fl_ctx, AppConstants.CURRENT_ROUND, self.current_round)  # type: ignore[attr-defined]
            _set_prop(fl_ctx, AppConstants.NUM_ROUNDS, self.num_rounds)  # type: ignore[attr-defined]
            _set_prop(fl_ctx, AppConstants.START_ROUND, self.start_round)  # type: ignore[attr-defined]
        super().save_model(model)  # type: ignore[misc]

    def _round_wait(self, task_name: str, min_responses: int | None) -> dict[str, Any]:
        """A training round's task ends ``wait_time_after_min_received`` seconds after ``min_clients`` results."""
        if task_name != getattr(self, "task_name", AppConstants.TASK_TRAIN) or min_responses is not None:
            return {"min_responses": min_responses}
        return {"min_responses": self.min_clients, "wait_time_after_min_received": self.wait_time_after_min_received}

    def update_model(self, model: FLModel, aggr_result: FLModel) -> FLModel:
        updated: FLModel = super().update_model(model, aggr_result)  # type: ignore[misc]
        self.final_global_model, self._final_round = updated, self.current_round  # type: ignore[attr-defined]
        return updated

    def _round_sites(self) -> set[str]:
        return self._round_targets

    def _accepted(self, fl_ctx: FLContext) -> bool:
        return bool(fl_ctx.get_prop(AppConstants.AGGREGATION_ACCEPTED))

    def _least_sites(self) -> int:
        return self.min_clients or len(self._round_targets)

    def _round_number(self) -> Any:
        return self.current_round  # type: ignore[attr-defined]

    def run(self) -> None:
        # The persistor's run state counts the job's rounds from START_ROUND, which ScatterAndGather sets and FLARE's
        # FedAvg and Scaffold do not: without it a continuation job (start_round > 0) would record its rounds left
        # as the job's total, and `clara-fl job resume` could not continue it again.
        _set_prop(self.fl_ctx, AppConstants.START_ROUND, self.start_round)  # type: ignore[attr-defined]
        super().run()  # type: ignore[misc]
        last_round = self.start_round + self.num_rounds - 1  # type: ignore[attr-defined]
        model = self.final_global_model
        if not self.final_validation_task_name or model is None or self._final_round != last_round:
            return
        if self.abort_signal.triggered:  # type: ignore[attr-defined]
            return
        after_round = last_round + 1
        weights = FLModel(params_type=ParamsType.FULL, params=model.params, current_round=after_round)
        weights.total_rounds = self.num_rounds  # type: ignore[attr-defined]
        data = FLModelUtils.to_shareable(weights)
        self.validate_final_global_model(
            data,
            make_model_learnable(weights=model.params, meta_props=model.meta),
            after_round,
            self.min_clients or 0,
            self.wait_time_after_min_received,
            self.abort_signal,  # type: ignore[attr-defined]
            self.fl_ctx,  # type: ignore[attr-defined]
        )


class FedAvg(_RecordsRoundsOfItsTasks, _RoundsOfTheSites, _PollsAtItsTaskCheckPeriod, _FedAvg):
    """FLARE's FedAvg on the ModelController API, polling every ``task_check_period`` seconds, with what
    clara-fl's ScatterAndGather gives (:class:`_RoundsOfTheSites`): FLARE's FedAvg weighs each site's result by
    the steps it ran (``NUM_STEPS_CURRENT_ROUND``), as the ScatterAndGather template's aggregator does.

    Besides FLARE's arguments it takes ``final_validation_task_name`` (the sites' task that validates a global
    model; empty: none) and ``final_validation_timeout`` (seconds to wait for the sites' validation; 0: no limit).

    Args:
        min_clients: the results a round needs; None: every site it was sent to.
        wait_time_after_min_received: seconds to wait for the other sites once ``min_clients`` results are in.
        *args: FLARE's FedAvg positional arguments.
        **kwargs: FLARE's FedAvg keyword arguments (``num_clients = 0``: every site).
    """


class CrossSiteEval(_RecordsRoundsOfItsTasks, _PollsAtItsTaskCheckPeriod, _CrossSiteEval):
    """FLARE's CrossSiteEval on the ModelController API, polling every ``task_check_period`` seconds.

    The server's models go to the sites under the names CrossSiteModelEval gives them (``SRV_FL_global_model.pt``,
    ``SRV_best_FL_global_model.pt``), so ``cross_val_results.json`` names them as the ScatterAndGather template's does;
    a server model the persistor does not have (no best global model yet), or cannot load, is left out with one
    line in the server log (FLARE's CrossSiteEval would send the model before it under its name).

    Args:
        server_models: the persistor's models the sites validate (its file names).
        *args: FLARE's CrossSiteEval positional arguments.
        **kwargs: FLARE's CrossSiteEval keyword arguments.
    """

    _trains = False

    def __init__(
        self,
        *args: Any,
        server_models: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        self.server_models = list(server_models or [DefaultCheckpointFileName.GLOBAL_MODEL])
        super().__init__(*args, server_models=list(self.server_models), **kwargs)

    def run(self) -> None:
        inventory = self.persistor.get_model_inventory(self.fl_ctx) if self.persistor else None
        if inventory is not None:
            missing = [name for name in self.server_models if name not in inventory]
            if missing:
                self.info(f"the server has no {', '.join(missing)}: the sites validate the others")
            loadable = [name for name in self.server_models if name in inventory and self._loads(name)]
            set_cross_site_server_models(self, loadable)
        super().run()

    def _loads(self, name: str) -> bool:
        try:
            self.persistor.get_model(name, self.fl_ctx)
        except Exception as error:  # noqa: BLE001 - any failure to load leaves this model out, as a missing one
            self.error(f"the server cannot load {name} ({type(error).__name__}): the sites validate the others")
            return False
        return True

    def send_model(
        self,
        task_name: str = AppConstants.TASK_TRAIN,
        data: FLModel | None = None,
        targets: list[str] | None = None,
        min_responses: int | None = None,
        timeout: int = 0,
        callback: Callable[[FLModel], Any] | None = None,
    ) -> None:
        owner = data.meta.get(AppConstants.MODEL_OWNER) if data is not None else None
        if task_name == AppConstants.TASK_VALIDATION and owner in self.server_models and data is not None:
            data.meta[AppConstants.MODEL_OWNER] = SERVER_MODEL_PREFIX + str(owner)
        super().send_model(task_name, data, targets, min_responses, timeout, callback)


class Scaffold(_RecordsRoundsOfItsTasks, _RoundsOfTheSites, _PollsAtItsTaskCheckPeriod, _Scaffold):
    """FLARE's SCAFFOLD controller on the ModelController API, polling every ``task_check_period`` seconds, with
    what clara-fl's ScatterAndGather gives (:class:`_RoundsOfTheSites`; arguments as :class:`FedAvg`'s).

    The global model is saved without the control variates FLARE's Scaffold keeps in its meta: numpy arrays in
    the saved meta make the model file unreadable with ``torch.load(weights_only=True)``, so cross-site evaluation
    could not load it. That holds for the global model (:meth:`save_model`) and for the best one, which the
    persistor saves from the run's ``GLOBAL_MODEL`` property, after a round or after the final validation
    (:meth:`update_model`).
    """

    def update_model(self, model: FLModel, aggr_result: FLModel) -> FLModel:
        updated = super().update_model(model, aggr_result)
        stripped = copy.copy(updated)
        stripped.meta = _without_controls(updated.meta)
        self.final_global_model = stripped
        learnable = make_model_learnable(weights=updated.params, meta_props=stripped.meta)
        self.fl_ctx.set_prop(AppConstants.GLOBAL_MODEL, learnable, private=True, sticky=True)
        return updated

    def save_model(self, model: Any) -> None:
        saved = copy.copy(model)
        saved.meta = _without_controls(model.meta)
        super().save_model(saved)


def _without_controls(meta: dict[str, Any] | None) -> dict[str, Any]:
    """A SCAFFOLD model's meta without its control variates."""
    from nvflare.app_common.app_constant import AlgorithmConstants

    controls = (AlgorithmConstants.SCAFFOLD_CTRL_GLOBAL, AlgorithmConstants.SCAFFOLD_CTRL_DIFF)
    return {k: v for k, v in (meta or {}).items() if k not in controls}
