"""The FL Learner: a site trains from its MMAR's config_train.json, exactly as ``clara-fl train`` would.

A FLARE adapter in the manner of FLARE's LearnerExecutor/Learner and MONAI's MonaiAlgo: DXO in,
one round, DXO out. Per round: load the global weights, validate them on local data (the server's
model selection needs this), train one :class:`~clara_fl.workflows.round.RoundSpec` (``local_epochs``
epochs or ``steps_aggregation`` iterations) through the same
:class:`~clara_fl.workflows.round.RoundRunner` in this process or, with ``nproc_per_site`` > 1, in
torchrun workers (:mod:`clara_fl.fl.site.worker`), and send back the weight difference with the
real number of steps. Abort is polled after every iteration.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import ReservedHeaderKey, Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.learner_spec import Learner
from nvflare.app_common.app_constant import AppConstants, ModelName, ValidateType

from clara_fl.config.errors import ConfigError, describe_failure
from clara_fl.config.mmar import LoadedConfig
from clara_fl.fl.site.local_algorithm import LocalAlgorithm
from clara_fl.fl.site.local_state import LOCAL_STATE_FILE, LocalState
from clara_fl.fl.site.worker import RoundRequest
from clara_fl.workflows.round import RoundRunner, RoundSpec

__all__ = ["ClaraLearner", "LOCAL_STATE_FILE"]


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
            validation and submit_model stay in this process.
        algorithm: the FL algorithm's site side (:mod:`clara_fl.fl.site.algorithms`; default FedAvg).
        algorithm_args: its arguments, as ``clara-fl job create --algorithm-arg`` checked them.
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
        self.site_algorithm = LocalAlgorithm()
        self.workflow: Any = None
        self._rounds: RoundRunner | None = None
        self._local_state: LocalState | None = None
        self._init_error: str | None = None

    @property
    def rounds(self) -> RoundRunner:
        """The round runner (built by :meth:`initialize`)."""
        if self._rounds is None:
            raise RuntimeError("the Learner has no trainer: initialize() did not succeed")
        return self._rounds

    @property
    def local_state(self) -> LocalState:
        """The site's accepted state on disk (set up by :meth:`initialize`)."""
        if self._local_state is None:
            raise RuntimeError("the Learner has no trainer: initialize() did not succeed")
        return self._local_state

    # -- set-up ----------------------------------------------------------------------------------

    def initialize(self, parts: dict, fl_ctx: FLContext) -> None:
        from clara_fl.config.mmar import load_config
        from clara_fl.fl.site.algorithms import local_algorithm
        from clara_fl.fl.site.context import site_context
        from clara_fl.fl.site.streaming import MetricsStreamer
        from clara_fl.workflows.train import TrainWorkflow

        try:
            self.site = site_context(fl_ctx, self.train_config)
            self.log_info(
                fl_ctx,
                f"building the trainer from {self.train_config} in {self.site.app_dir} "
                f"(code policy: {self.site.code_policy})",
            )
            if self.site.site_file:
                self.log_info(fl_ctx, f"site values from {self.site.site_file}: {sorted(self.site.environment)}")
            loaded = load_config(
                self.site.app_dir,
                self.train_config,
                self.environment,
                self.overrides,
                extra_environment=self.site.variables(),
            )
            loaded = self._without_checkpoint_loaders(loaded, fl_ctx)
            self.workflow = TrainWorkflow.build(loaded, code_policy=self.site.policy)
            self.site_algorithm = local_algorithm(self.algorithm, self.algorithm_args)
            if self.site_algorithm.modifies_training and self.nproc_per_site > 1:
                raise ConfigError(
                    f"{self.algorithm} cannot train in several processes per site",
                    path="components[clara_learner].args.nproc_per_site",
                )
            self.site_algorithm.setup(self.workflow)
        except ConfigError as e:
            # One clear line in the site log; every task then fails with an error code (the job goes on
            # while enough other sites are healthy).
            self._init_error = f"cannot build this site's trainer: {e}"
            self.log_error(fl_ctx, self._init_error)
            return
        self._rounds = RoundRunner(self.workflow.trainer, self.workflow.evaluator)
        writer = parts.get(self.analytic_sender_id)
        if writer is not None:
            MetricsStreamer(writer).attach(self.workflow.trainer, self.workflow.evaluator)
        self._local_state = LocalState(
            self.workflow, os.path.join(self.workflow.ckpt_dir, LOCAL_STATE_FILE), self.site_algorithm
        )
        if self.local_state.restore():
            self.log_info(
                fl_ctx, f"resumed local state from {self.local_state.path} (epoch {self.workflow.trainer.state.epoch})"
            )
        else:
            self.local_state.save()  # the point a refused first round rolls back to

    def _without_checkpoint_loaders(self, loaded: LoadedConfig, fl_ctx: FLContext) -> LoadedConfig:
        """A CheckpointLoader would overwrite the global weights at every round start: switched off in the
        config before it is built, as MONAI's FL client does."""
        from clara_fl.config.checkpoint_loaders import without_checkpoint_loaders

        config, disabled = without_checkpoint_loaders(loaded.config, ("train", "validate"))
        for path, load_path in disabled:
            self.log_info(fl_ctx, f"{path} CheckpointLoader ({load_path}) disabled: weights come from the server")
        return dataclasses.replace(loaded, config=config)

    # -- tasks -----------------------------------------------------------------------------------

    def train(self, data: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        from clara_fl.fl.site.weights import load_global_weights, network_weights, non_finite_keys, weight_diff

        if self._init_error:
            return self._failed(fl_ctx, self._init_error)
        if abort_signal.triggered:
            return make_reply(ReturnCode.TASK_ABORTED)
        try:
            dxo = from_shareable(data)
        except ValueError as e:
            self.log_error(fl_ctx, f"train task data is not a DXO: {e}")
            return make_reply(ReturnCode.BAD_TASK_DATA)
        global_weights = self._received_weights(dxo, fl_ctx)
        if global_weights is None:
            return make_reply(ReturnCode.BAD_TASK_DATA)
        network = self.workflow.network
        self.local_state.wait()  # the last round's state is on disk before the weights change
        try:
            load_global_weights(network, self.site_algorithm.weights_to_load(global_weights))
        except ValueError as e:
            self.log_error(fl_ctx, f"global model does not fit this site's network: {e}")
            return make_reply(ReturnCode.BAD_TASK_DATA)
        try:
            self.site_algorithm.before_round(self.workflow, global_weights, dxo.meta)
        except Exception as e:
            return self._failed(fl_ctx, f"{self.algorithm} before local training failed: {describe_failure(e)}")
        current_round = data.get_header(AppConstants.CURRENT_ROUND)
        spec = self.round_spec()
        self.log_info(fl_ctx, f"round {current_round}: training {spec.describe()}")
        try:
            if self.nproc_per_site > 1:
                to_load = dict(self.site_algorithm.weights_to_load(global_weights))  # FedBN: not the norm layers
                steps = self._run_distributed_round(spec, to_load, abort_signal, fl_ctx)
            else:
                result = self.rounds.run(spec, lambda: abort_signal.triggered)
                steps = result.steps
        except Exception as e:  # the site's data or code failed mid-training: report it, keep the site alive
            return self._failed(fl_ctx, f"local training failed: {describe_failure(e)}")
        if abort_signal.triggered:
            self.rounds.rewind_to_epoch_boundary()
            self.log_info(fl_ctx, f"round {current_round} aborted after {steps} iterations")
            return make_reply(ReturnCode.TASK_ABORTED)

        local = network_weights(network)
        bad = non_finite_keys(local)
        if bad:
            # no trace of the refused round in the optimizer state or the local model selection
            self.local_state.roll_back()
            return self._failed(
                fl_ctx,
                f"local training produced NaN/Inf in {len(bad)} tensors (e.g. {bad[0]}); not sending them, "
                "and going back to the state before this round",
            )
        try:
            meta = self.site_algorithm.after_round(self.workflow, global_weights, steps)
        except Exception as e:
            return self._failed(fl_ctx, f"{self.algorithm} after local training failed: {describe_failure(e)}")
        if self.nproc_per_site > 1:
            self.local_state.adopt(self._round_state_path())
        else:
            self.local_state.save()
        kind = DataKind.WEIGHT_DIFF if self.send_weight_diff else DataKind.WEIGHTS
        payload = weight_diff(local, global_weights) if self.send_weight_diff else local
        payload = dict(self.site_algorithm.weights_to_send(payload))
        self.log_info(fl_ctx, f"round {current_round}: {steps} iterations, sending {kind}")
        meta[MetaKey.NUM_STEPS_CURRENT_ROUND] = steps
        return DXO(data_kind=kind, data=payload, meta=meta).to_shareable()

    def validate(self, data: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        from clara_fl.fl.site.weights import load_global_weights, unwrap

        if self._init_error:
            return self._failed(fl_ctx, self._init_error)
        if self.workflow.evaluator is None:
            return make_reply(ReturnCode.EMPTY_RESULT)
        validate_type = data.get_header(AppConstants.VALIDATE_TYPE)
        try:
            weights = self._received_weights(from_shareable(data), fl_ctx)
        except ValueError as e:
            self.log_error(fl_ctx, f"validate task data is not a DXO: {e}")
            return make_reply(ReturnCode.BAD_TASK_DATA)
        if weights is None:
            return make_reply(ReturnCode.BAD_TASK_DATA)
        network = unwrap(self.workflow.network)
        self.local_state.wait()
        keep = (
            None
            if validate_type == ValidateType.BEFORE_TRAIN_VALIDATE
            else {k: v.clone() for k, v in network.state_dict().items()}
        )
        try:
            load_global_weights(network, self.site_algorithm.weights_to_load(weights))
            with self.rounds.abort_polling(lambda: abort_signal.triggered):
                metrics = self._evaluate_without_side_effects()
        except Exception as e:
            return self._failed(fl_ctx, f"local validation failed: {describe_failure(e)}")
        finally:
            if keep is not None:
                network.load_state_dict(keep)
        if abort_signal.triggered:
            return make_reply(ReturnCode.TASK_ABORTED)
        self.log_info(fl_ctx, f"{validate_type}: {metrics}")
        if validate_type == ValidateType.BEFORE_TRAIN_VALIDATE:
            # LearnerExecutor copies data[INITIAL_METRICS] into the train result's meta; it must be a
            # dict keyed by log_label, or FLARE's FedAvg drops every train result.
            return DXO(data_kind=DataKind.METRICS, data={MetaKey.INITIAL_METRICS: metrics}).to_shareable()
        return DXO(data_kind=DataKind.METRICS, data=metrics).to_shareable()

    def get_model_for_validation(self, model_name: str | None, fl_ctx: FLContext) -> Shareable:
        """The site's best local model (model.pt by key metric); ``final_model`` gives the last one."""
        from clara_fl.fl.site.weights import network_weights, non_finite_keys
        from clara_fl.runtime.checkpoint import load_checkpoint, model_state

        if self._init_error:
            return self._failed(fl_ctx, self._init_error)
        own = self.site_algorithm.model_for_validation(self.workflow)
        if own is not None:
            self.log_info(fl_ctx, f"submitting the {self.algorithm} model for '{model_name or ModelName.BEST_MODEL}'")
            return DXO(data_kind=DataKind.WEIGHTS, data=dict(own)).to_shareable()
        wanted = "final_model.pt" if model_name == ModelName.FINAL_MODEL else "model.pt"
        for candidate in dict.fromkeys([wanted, "model.pt", "final_model.pt"]):
            path = os.path.join(self.workflow.ckpt_dir, candidate)
            if os.path.isfile(path):
                try:
                    weights = {k: v.numpy() for k, v in model_state(load_checkpoint(path), path).items()}
                except ConfigError as e:
                    self.log_error(fl_ctx, str(e))
                    return make_reply(ReturnCode.EXECUTION_EXCEPTION)
                if non_finite_keys(weights):
                    self.log_warning(fl_ctx, f"{path} holds NaN/Inf weights (a refused round): not submitting it")
                    continue
                self.log_info(fl_ctx, f"submitting {path} for model '{model_name or ModelName.BEST_MODEL}'")
                return DXO(data_kind=DataKind.WEIGHTS, data=weights).to_shareable()
        self.log_warning(fl_ctx, "no local checkpoint yet: submitting the current network weights")
        return DXO(data_kind=DataKind.WEIGHTS, data=network_weights(self.workflow.network)).to_shareable()

    def _failed(self, fl_ctx: FLContext, message: str) -> Shareable:
        """Log ``message`` here and send it to the server with the error reply (FLARE's ``__error__`` header)."""
        self.log_error(fl_ctx, message)
        return make_reply(ReturnCode.EXECUTION_EXCEPTION, headers={ReservedHeaderKey.ERROR: message})

    def abort(self, fl_ctx: FLContext) -> None:
        """Best effort only: FLARE may not call it, which is why training polls the abort signal itself."""
        if self.workflow is not None:
            self.workflow.trainer.terminate()  # stops after the current iteration

    def finalize(self, fl_ctx: FLContext) -> None:
        if self._local_state is not None:
            self._local_state.wait()
        self.workflow = None

    # -- training rounds -------------------------------------------------------------------------

    def _received_weights(self, dxo: DXO, fl_ctx: FLContext) -> dict[str, Any] | None:
        from clara_fl.fl.site.weights import network_weights, shaped_like

        if dxo.data_kind == DataKind.WEIGHTS:
            return shaped_like(dxo.data, network_weights(self.workflow.network))
        if dxo.data_kind == DataKind.WEIGHT_DIFF:
            local = network_weights(self.workflow.network)
            return {k: local[k] + v for k, v in shaped_like(dxo.data, local).items() if k in local}
        self.log_error(fl_ctx, f"expected WEIGHTS or WEIGHT_DIFF, got {dxo.data_kind}")
        return None

    def round_spec(self) -> RoundSpec:
        return RoundSpec(local_epochs=self.local_epochs, steps=self.steps_aggregation)

    def _run_distributed_round(
        self, spec: RoundSpec, global_weights: dict[str, Any], abort_signal: Signal, fl_ctx: FLContext
    ) -> int:
        """Train the round in ``nproc_per_site`` DDP processes; returns the steps summed over ranks (0 when aborted).

        On abort the workers are stopped and the site's state stays at the last completed round.
        """
        from clara_fl.fl.site.worker import train_in_processes

        request = RoundRequest(
            mmar_root=self.site.app_dir,
            train_config=self.train_config,
            environment=self.environment,
            code_policy=self.site.code_policy,
            local_epochs=spec.local_epochs,
            steps_aggregation=spec.steps,
            state_path=self.local_state.path,
            new_state_path=self._round_state_path(),
            overrides=self.overrides,
            site_environment=self.site.variables(),
            data_roots=list(self.site.policy.data_roots or ()),
        )
        work = os.path.dirname(self._round_state_path())
        self.log_info(fl_ctx, f"training in {self.nproc_per_site} processes (log: {os.path.join(work, 'workers.log')})")
        steps = train_in_processes(request, global_weights, self.nproc_per_site, work, lambda: abort_signal.triggered)
        if steps is None:
            return 0
        self.workflow.load_training_state(request.new_state_path)  # keep this process's copy in step
        return steps

    def _evaluate_without_side_effects(self) -> dict[str, float]:
        """Run the evaluator on whatever the network holds, without touching local model selection or logs."""
        from monai.handlers import CheckpointSaver, MetricsSaver, TensorBoardStatsHandler

        from clara_fl.fl.site.streaming import MetricsStreamer
        from clara_fl.workflows.engine_hooks import handlers_muted
        from clara_fl.workflows.evaluate import scalar_metrics

        evaluator = self.workflow.evaluator
        best = (evaluator.state.best_metric, evaluator.state.best_metric_epoch)
        with handlers_muted(evaluator, (CheckpointSaver, TensorBoardStatsHandler, MetricsSaver, MetricsStreamer)):
            evaluator.run(max(1, self.workflow.trainer.state.epoch))
        evaluator.state.best_metric, evaluator.state.best_metric_epoch = best
        return scalar_metrics(evaluator.state.metrics)

    def _round_state_path(self) -> str:
        """Where the DDP workers leave the round's state; it becomes the local state once accepted."""
        return os.path.join(self.workflow.ckpt_dir, ".fl_round", "state.pt")
