"""FLARE's server workflows, polling at the ``task_check_period`` they are given.

In FLARE 2.9, ``Controller.set_communicator`` sets ``communicator.task_check_period``, but
``WFCommServer`` polls with ``_task_check_period``, fixed at 0.2 s: the period a job configures
never takes effect, and each round waits on two such polls. These subclasses pass the period
through; the job templates use them. (Both attributes are private: see ``clara_fl.runtime.private_api``.)

``ScatterAndGather`` also has the sites validate the final global model after the last round, so
that the best global model is chosen among all of them (see :mod:`clara_fl.fl.server.model_selection`),
and says in the server log which sites a round went without and which site dropped out of the job
(see :mod:`clara_fl.fl.site.dropout`).
"""

from __future__ import annotations

import copy
from typing import Any

from nvflare.apis.controller_spec import ClientTask, Task
from nvflare.apis.dxo import DataKind, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType
from nvflare.app_common.workflows.cross_site_eval import CrossSiteEval as _CrossSiteEval
from nvflare.app_common.workflows.cross_site_model_eval import CrossSiteModelEval as _CrossSiteModelEval
from nvflare.app_common.workflows.fedavg import FedAvg as _FedAvg
from nvflare.app_common.workflows.scaffold import Scaffold as _Scaffold
from nvflare.app_common.workflows.scatter_and_gather import ScatterAndGather as _ScatterAndGather

from clara_fl.fl.server.model_selection import FINAL_GLOBAL_MODEL_METRICS, FINAL_GLOBAL_MODEL_VALIDATED

__all__ = ["ScatterAndGather", "CrossSiteModelEval", "FedAvg", "CrossSiteEval", "Scaffold"]


class _PollsAtItsTaskCheckPeriod:
    _task_check_period: float

    def set_communicator(self, communicator: Any) -> None:
        from clara_fl.runtime.private_api import controller_task_check_period, set_task_check_period

        super().set_communicator(communicator)  # type: ignore[misc]
        set_task_check_period(communicator, controller_task_check_period(self))


class ScatterAndGather(_PollsAtItsTaskCheckPeriod, _ScatterAndGather):
    """FLARE's ScatterAndGather (FedAvg rounds), polling every ``task_check_period`` seconds.

    After the last round, if ``final_validation_task_name`` is set, the final global model goes to
    every site in a task of that name (the job's client config gives it to the LearnerExecutor as
    its ``validate_task``, so the Learner validates it exactly as it validates each round's global
    model before training); the sites' metrics are fired with
    :data:`~clara_fl.fl.server.model_selection.FINAL_GLOBAL_MODEL_VALIDATED` for the model selector.

    Args:
        final_validation_task_name: the sites' task that validates a global model; empty: none.
        final_validation_timeout: seconds to wait for the sites' validation (0: no limit).
        *args, **kwargs: FLARE's ScatterAndGather arguments.
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


class CrossSiteModelEval(_PollsAtItsTaskCheckPeriod, _CrossSiteModelEval):
    """FLARE's CrossSiteModelEval, polling every ``task_check_period`` seconds."""


class FedAvg(_PollsAtItsTaskCheckPeriod, _FedAvg):
    """FLARE's FedAvg on the ModelController API, polling every ``task_check_period`` seconds."""


class CrossSiteEval(_PollsAtItsTaskCheckPeriod, _CrossSiteEval):
    """FLARE's CrossSiteEval on the ModelController API, polling every ``task_check_period`` seconds."""


class Scaffold(_PollsAtItsTaskCheckPeriod, _Scaffold):
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
