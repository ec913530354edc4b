"""A site's part of an FL job without FLARE: train a round, validate, submit a model, from the MMAR's configs.

This is what runs a job's config code at a site, so it runs in the site's confined process
(:mod:`clara_fl.fl.site.site_process`); the FLARE adapters (:class:`~clara_fl.fl.site.learner.ClaraLearner`,
:class:`~clara_fl.fl.site.validator.ClaraValidator`) only turn FLARE's Shareables into the plain values this
module takes (numpy weights, a meta dict) and back. A task that fails raises :class:`SiteTaskFailed` with a
:class:`~clara_fl.fl.site.failure_report.SiteFailure`: the adapter logs its full line at the site and sends
the server only its public part.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clara_fl.config.errors import ConfigError
from clara_fl.config.restrictions import CodePolicy
from clara_fl.fl.site.failure_report import SiteFailure
from clara_fl.fl.site.local_algorithm import LocalAlgorithm
from clara_fl.fl.site.local_state import LOCAL_STATE_FILE, LocalState
from clara_fl.fl.site.worker import RoundRequest

__all__ = [
    "BAD_TASK_DATA",
    "SiteAppSettings",
    "ValidationSettings",
    "TrainingSettings",
    "SiteTaskFailed",
    "RoundOutcome",
    "LocalTraining",
    "LocalValidation",
    "derive_cross_validation_config",
    "never",
]

logger = logging.getLogger("clara_fl.fl.site")

WEIGHTS, WEIGHT_DIFF = "WEIGHTS", "WEIGHT_DIFF"  # FLARE's DataKind values
BEFORE_TRAIN_VALIDATE = "before_train_validate"  # FLARE's ValidateType.BEFORE_TRAIN_VALIDATE
FINAL_MODEL = "final_model"  # FLARE's ModelName.FINAL_MODEL
BAD_TASK_DATA = "BAD_TASK_DATA"  # FLARE's ReturnCode values
EXECUTION_EXCEPTION = "EXECUTION_EXCEPTION"


def never() -> bool:
    """A ``should_abort`` that never asks to abort."""
    return False


class SiteTaskFailed(Exception):
    """A task this site could not do, with what may be told about it (:class:`SiteFailure`).

    ``return_code`` is FLARE's return code for the reply: ``BAD_TASK_DATA`` when the server's data does not fit,
    else ``EXECUTION_EXCEPTION``.
    """

    def __init__(self, failure: SiteFailure, return_code: str = EXECUTION_EXCEPTION) -> None:
        super().__init__(failure.local_text())
        self.failure = failure
        self.return_code = return_code


@dataclass(frozen=True)
class SiteAppSettings:
    """Where the job's MMAR is and what the site adds to it (its site-file values, policy and data folders): what
    every task the confined process runs needs."""

    app_dir: str
    environment: str = "config/environment.json"
    overrides: dict[str, Any] = field(default_factory=dict)
    site_values: dict[str, Any] = field(default_factory=dict)
    code_policy: str = "restricted"
    data_roots: list[str] = field(default_factory=list)
    catalog: dict[str, Any] = field(default_factory=dict)

    @property
    def policy(self) -> CodePolicy:
        return CodePolicy(self.code_policy, tuple(self.data_roots), catalog=dict(self.catalog))


@dataclass(frozen=True)
class SiteSettings(SiteAppSettings):
    """The site's part with the job's algorithm: what training and cross-site validation share."""

    algorithm: str = "fedavg"
    algorithm_args: dict[str, Any] = field(default_factory=dict)
    #: the job's DP-SGD settings (DPSettings.as_args(); empty: no DP), :mod:`clara_fl.fl.site.dp`
    dp: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingSettings(SiteSettings):
    """What the Learner was configured with (its job arguments) on top of the site's settings."""

    train_config: str = "config/config_train.json"
    local_epochs: int = 1
    steps_aggregation: int = 0
    send_weight_diff: bool = True
    nproc_per_site: int = 1
    #: keep the better of the global and the personalized model for the site's own use (clara_fl.fl.site.keep_better)
    keep_better_model: bool = False


@dataclass(frozen=True)
class ValidationSettings(SiteSettings):
    """What the cross-site Validator was configured with on top of the site's settings."""

    validation_config: str = "config/config_cross_validation.json"
    fallback_validation_config: str = "config/config_validation.json"
    train_config: str = "config/config_train.json"


@dataclass(frozen=True)
class RoundOutcome:
    """A round's result: the weights (or their difference) to send, with FLARE's meta; or an aborted round."""

    data_kind: str
    weights: dict[str, np.ndarray]
    meta: dict[str, Any]
    steps: int
    aborted: bool = False
    #: the round's keep_better_model choice (KeptChoice.fields(): numbers and the winner), stays at the site
    kept: dict[str, Any] | None = None


def _failure(stage: str, error: BaseException, settings: SiteSettings, workflow: Any = None) -> SiteTaskFailed:
    if workflow is not None:  # the config item of the site's TrainWorkflow that failed, for the site's report
        workflow.locator.mark(error)
    return SiteTaskFailed(SiteFailure.from_exception(stage, error, settings.app_dir))


def _private(inner: LocalAlgorithm, settings: SiteSettings, spec: Any) -> LocalAlgorithm:
    """The job's algorithm trained with DP-SGD (:class:`~clara_fl.fl.site.dp.PrivateTraining`).

    Raises:
        ConfigError: bad ``dp`` settings, or DP-SGD with several processes per site.
    """
    from clara_fl.fl.dp_settings import DPSettings
    from clara_fl.fl.site.dp import PrivateTraining

    dp = DPSettings.from_args(settings.dp, "components[clara_learner].args.dp")
    if isinstance(settings, TrainingSettings) and settings.nproc_per_site > 1:
        raise ConfigError(
            "DP-SGD trains in the Learner's process: nproc_per_site must be 1",
            path="components[clara_learner].args.nproc_per_site",
        )
    return PrivateTraining(inner, dp, spec)


class LocalTraining:
    """The site's trainer across the rounds of one job: built once, its state kept on disk between rounds.

    Args:
        settings: the MMAR and the Learner's settings.
        metrics_writer: gets ``add_scalar(tag, value, global_step=)`` for each training curve point (the
            analytics stream to the server), optional.
    """

    def __init__(self, settings: TrainingSettings, metrics_writer: Any = None) -> None:
        from clara_fl.workflows.round import RoundSpec

        self.settings = settings
        self.spec = RoundSpec(settings.local_epochs, settings.steps_aggregation)  # refuses a round of nothing
        self.metrics_writer = metrics_writer
        self.workflow: Any = None
        self.site_algorithm = LocalAlgorithm()
        self._rounds: Any = None
        self._local_state: LocalState | None = None

    # -- set-up ----------------------------------------------------------------------------------

    def build(self) -> None:
        """Build the trainer from the train config and resume the site's local state.

        Raises:
            SiteTaskFailed: the MMAR does not build at this site.
        """
        from clara_fl.config.checkpoint_loaders import without_checkpoint_loaders
        from clara_fl.config.mmar import load_config
        from clara_fl.fl.site.algorithms import local_algorithm
        from clara_fl.fl.site.streaming import MetricsStreamer
        from clara_fl.workflows.round import RoundRunner
        from clara_fl.workflows.train import TrainWorkflow

        s = self.settings
        try:
            loaded = load_config(s.app_dir, s.train_config, s.environment, s.overrides, extra_environment=s.site_values)
            # A CheckpointLoader would overwrite the global weights at every round start: switched off in the
            # config before it is built, as MONAI's FL client does.
            config, disabled = without_checkpoint_loaders(loaded.config, ("train", "validate"))
            for path, load_path in disabled:
                logger.info("%s CheckpointLoader (%s) disabled: weights come from the server", path, load_path)
            self.workflow = TrainWorkflow.build(dataclasses.replace(loaded, config=config), code_policy=s.policy)
            self.site_algorithm = local_algorithm(s.algorithm, s.algorithm_args)
            if s.dp:
                self.site_algorithm = _private(self.site_algorithm, s, self.spec)
            if self.site_algorithm.modifies_training and s.nproc_per_site > 1:
                raise ConfigError(
                    f"{s.algorithm} cannot train in several processes per site",
                    path="components[clara_learner].args.nproc_per_site",
                )
            self.site_algorithm.setup(self.workflow)
        except ConfigError as e:
            raise _failure("build", e, s) from e
        self._rounds = RoundRunner(self.workflow.trainer, self.workflow.evaluator)
        if self.metrics_writer is not None:
            MetricsStreamer(self.metrics_writer).attach(self.workflow.trainer, self.workflow.evaluator)
        self._local_state = LocalState(
            self.workflow, os.path.join(self.workflow.ckpt_dir, LOCAL_STATE_FILE), self.site_algorithm
        )
        if self.local_state.restore():
            logger.info(
                "resumed local state from %s (epoch %d)", self.local_state.path, self.workflow.trainer.state.epoch
            )
        else:
            self.local_state.save()  # the point a refused first round rolls back to

    @property
    def rounds(self) -> Any:
        """The :class:`~clara_fl.workflows.round.RoundRunner` (built by :meth:`build`)."""
        if self._rounds is None:
            raise RuntimeError("the site has no trainer: build() did not succeed")
        return self._rounds

    @property
    def local_state(self) -> LocalState:
        """The site's accepted state on disk (set up by :meth:`build`)."""
        if self._local_state is None:
            raise RuntimeError("the site has no trainer: build() did not succeed")
        return self._local_state

    # -- tasks -----------------------------------------------------------------------------------

    def train(
        self,
        data_kind: str,
        data: Mapping[str, Any],
        meta: Mapping[str, Any],
        should_abort: Callable[[], bool] = never,
    ) -> RoundOutcome:
        """One round from the server's weights (``data_kind`` WEIGHTS or WEIGHT_DIFF, with the task's ``meta``).

        Raises:
            SiteTaskFailed: the data does not fit, or local training failed or diverged.
        """
        from clara_fl.fl.site.weights import load_global_weights, network_weights, non_finite_keys, weight_diff

        s = self.settings
        global_weights = self._received_weights(data_kind, data, "train")
        network = self.workflow.network
        self.local_state.wait()  # the last round's state is on disk before the weights change
        try:
            load_global_weights(network, self.site_algorithm.weights_to_load(global_weights))
        except ValueError as e:
            raise SiteTaskFailed(
                SiteFailure.refusal("train", "model_mismatch", f"global model does not fit this site's network: {e}"),
                BAD_TASK_DATA,
            ) from e
        try:
            self.site_algorithm.before_round(self.workflow, global_weights, meta)
        except Exception as e:
            raise _failure("before_round", e, s, self.workflow) from e
        try:
            if s.nproc_per_site > 1:
                to_load = dict(self.site_algorithm.weights_to_load(global_weights))  # FedBN: not the norm layers
                steps = self._run_distributed_round(to_load, should_abort)
            else:
                steps = self.rounds.run(self.spec, should_abort).steps
        except Exception as e:  # the site's data or code failed mid-training: report it, keep the site alive
            raise _failure("train", e, s, self.workflow) from e
        if should_abort():
            self.rounds.rewind_to_epoch_boundary()
            return RoundOutcome(data_kind, {}, {}, steps, aborted=True)

        local = network_weights(network)
        bad = non_finite_keys(local)
        if bad:
            # no trace of the refused round in the optimizer state or the local model selection
            self.local_state.roll_back()
            raise SiteTaskFailed(
                SiteFailure.refusal(
                    "train",
                    "non_finite_weights",
                    f"local training produced NaN/Inf in {len(bad)} tensors (e.g. {bad[0]}); not sending them, "
                    "and going back to the state before this round",
                )
            )
        try:
            out_meta = self.site_algorithm.after_round(self.workflow, global_weights, steps)
        except Exception as e:
            raise _failure("after_round", e, s, self.workflow) from e
        if s.nproc_per_site > 1:
            self.local_state.adopt(self._round_state_path())
        else:
            self.local_state.save()
        kind = WEIGHT_DIFF if s.send_weight_diff else WEIGHTS
        payload = weight_diff(local, global_weights) if s.send_weight_diff else local
        kept = self._keep_better(global_weights) if s.keep_better_model else None
        return RoundOutcome(kind, dict(self.site_algorithm.weights_to_send(payload)), out_meta, steps, kept=kept)

    def validate(
        self, data_kind: str, data: Mapping[str, Any], validate_type: str, should_abort: Callable[[], bool] = never
    ) -> dict[str, float] | None:
        """The trainer's evaluator on the received weights, leaving local model selection alone; None when
        the site has no evaluator.

        Before a round (``before_train_validate``) the weights stay loaded, as training starts from them;
        otherwise the network gets its own weights back.

        Raises:
            SiteTaskFailed: the data does not fit, or validation failed.
        """
        from clara_fl.fl.site.weights import load_global_weights, unwrap

        if self.workflow.evaluator is None:
            return None
        weights = self._received_weights(data_kind, data, "validate")
        network = unwrap(self.workflow.network)
        self.local_state.wait()
        keep = (
            None if validate_type == BEFORE_TRAIN_VALIDATE else {k: v.clone() for k, v in network.state_dict().items()}
        )
        try:
            load_global_weights(network, self.site_algorithm.weights_to_load(weights))
            with self.rounds.abort_polling(should_abort):
                return self._evaluate_without_side_effects()
        except Exception as e:
            raise _failure("validate", e, self.settings, self.workflow) from e
        finally:
            if keep is not None:
                network.load_state_dict(keep)

    def keep_better_with(
        self, data_kind: str, data: Mapping[str, Any], metrics: Mapping[str, float] | None = None
    ) -> dict[str, Any] | None:
        """The keep_better_model step with a global model received outside a round: the final global model, which
        the site validates after the last round and which no round's step ever saw (each round compares the global
        model it started from). The site's event fields, or None where the site keeps no model.

        Args:
            data_kind: the received model's kind.
            data: the received model.
            metrics: what :meth:`validate` just measured for it (the same evaluator on the same weights), so it is
                not validated twice; None: validated here.

        Raises:
            SiteTaskFailed: the data does not fit the network.
        """
        if not self.settings.keep_better_model or self.workflow.evaluator is None:
            return None
        return self._keep_better(self._received_weights(data_kind, data, "validate"), metrics)

    def model_for_validation(self, model_name: str | None) -> dict[str, np.ndarray]:
        """The site's best local model (model.pt by key metric); ``final_model`` gives the last one.

        Raises:
            SiteTaskFailed: a checkpoint does not load.
        """
        from clara_fl.fl.site.weights import network_weights, non_finite_keys
        from clara_fl.runtime.checkpoint import load_checkpoint, model_state

        own = self.site_algorithm.model_for_validation(self.workflow)
        if own is not None:
            logger.info("submitting the %s model for '%s'", self.settings.algorithm, model_name or "best_model")
            return dict(own)
        wanted = "final_model.pt" if model_name == FINAL_MODEL else "model.pt"
        for candidate in dict.fromkeys([wanted, "model.pt", "final_model.pt"]):
            path = os.path.join(self.workflow.ckpt_dir, candidate)
            if os.path.isfile(path):
                try:
                    weights = {k: v.numpy() for k, v in model_state(load_checkpoint(path), path).items()}
                except ConfigError as e:
                    raise _failure("submit_model", e, self.settings) from e
                if non_finite_keys(weights):
                    logger.warning("%s holds NaN/Inf weights (a refused round): not submitting it", path)
                    continue
                logger.info("submitting %s for model '%s'", path, model_name or "best_model")
                return weights
        logger.warning("no local checkpoint yet: submitting the current network weights")
        return network_weights(self.workflow.network)

    def abort(self) -> None:
        """Stop training after the current iteration."""
        if self.workflow is not None:
            self.workflow.trainer.terminate()

    def close(self) -> None:
        if self._local_state is not None:
            self._local_state.wait()
        self.workflow = None

    # -- helpers ---------------------------------------------------------------------------------

    def _received_weights(self, data_kind: str, data: Mapping[str, Any], stage: str) -> dict[str, Any]:
        from clara_fl.fl.site.weights import network_weights, shaped_like

        if data_kind == WEIGHTS:
            return shaped_like(data, network_weights(self.workflow.network))
        if data_kind == WEIGHT_DIFF:
            local = network_weights(self.workflow.network)
            return {k: local[k] + v for k, v in shaped_like(data, local).items() if k in local}
        raise SiteTaskFailed(
            SiteFailure.refusal(stage, "bad_task_data", f"expected WEIGHTS or WEIGHT_DIFF, got {data_kind}"),
            BAD_TASK_DATA,
        )

    def _run_distributed_round(self, global_weights: dict[str, Any], should_abort: Callable[[], bool]) -> int:
        """Train the round in ``nproc_per_site`` DDP processes; returns the steps summed over ranks (0 when aborted).

        On abort the workers are stopped and the site's state stays at the last completed round.
        """
        from clara_fl.fl.site.worker import train_in_processes

        s = self.settings
        request = RoundRequest(
            mmar_root=s.app_dir,
            train_config=s.train_config,
            environment=s.environment,
            code_policy=s.code_policy,
            local_epochs=self.spec.local_epochs,
            steps_aggregation=self.spec.steps,
            state_path=self.local_state.path,
            new_state_path=self._round_state_path(),
            overrides=s.overrides,
            site_environment=s.site_values,
            data_roots=list(s.data_roots),
        )
        work = os.path.dirname(self._round_state_path())
        logger.info("training in %d processes (log: %s)", s.nproc_per_site, os.path.join(work, "workers.log"))
        steps = train_in_processes(request, global_weights, s.nproc_per_site, work, should_abort)
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

    def _keep_better(
        self, global_weights: Mapping[str, Any], global_metrics: Mapping[str, float] | None = None
    ) -> dict[str, Any] | None:
        """The site's keep_better_model step; a failure of it is the site's own (logged), never the round's."""
        from clara_fl.fl.site.keep_better import keep_better_after_round
        from clara_fl.runtime.random_state import random_states_kept

        try:
            # the site's choice of its own model must not change the training that follows (what it sends)
            with random_states_kept():
                choice = keep_better_after_round(self, global_weights, global_metrics)
        except Exception as e:
            failure = SiteFailure.from_exception("keep_better", e, self.settings.app_dir)
            logger.warning("keep_better_model: could not compare the models: %s", failure.local_text())
            return None
        return choice.fields() if choice is not None else None

    def _round_state_path(self) -> str:
        """Where the DDP workers leave the round's state; it becomes the local state once accepted."""
        return os.path.join(self.workflow.ckpt_dir, ".fl_round", "state.pt")


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


class LocalValidation:
    """Cross-site validation at a site: score a submitted model on the site's validation data.

    Built from the MMAR's config_cross_validation.json, or config_validation.json with the train config's
    network when the MMAR has none. With an FL algorithm that keeps layers local (FedBN's norm layers), every
    model is validated with this site's own values of those layers, taken from the site's local state.
    """

    def __init__(self, settings: ValidationSettings) -> None:
        self.settings = settings

    def validate(
        self, owner: str, weights: Mapping[str, Any], should_abort: Callable[[], bool] = never
    ) -> dict[str, float]:
        """Metrics of the model of ``owner`` (its weights) on this site's validation data.

        Raises:
            SiteTaskFailed: the validation config does not build, or validation failed.
        """
        try:
            return self._validate(owner, weights, should_abort)
        except SiteTaskFailed:
            raise
        except Exception as e:  # bad config or data at this site: one clear line, an error code, the job goes on
            raise _failure("cross_validate", e, self.settings) from e

    def _validate(self, owner: str, weights: Mapping[str, Any], should_abort: Callable[[], bool]) -> dict[str, float]:
        from ignite.engine import Events

        from clara_fl.config.checkpoint_loaders import without_checkpoint_loaders
        from clara_fl.config.mmar import load_config
        from clara_fl.fl.site.weights import network_weights, shaped_like
        from clara_fl.workflows.evaluate import EvaluateWorkflow

        s = self.settings
        config = None
        if not os.path.isfile(os.path.join(s.app_dir, s.validation_config)):
            logger.info(
                "%s not in the MMAR: validating with %s and the network of %s",
                s.validation_config,
                s.fallback_validation_config,
                s.train_config,
            )
            config = derive_cross_validation_config(s.app_dir, s.fallback_validation_config, s.train_config)
        # Each model's per-case metrics go to their own folder: eval/cross_site_val/<model owner>/.
        safe_owner = re.sub(r"[^A-Za-z0-9_.-]", "_", owner)
        overrides = {
            **s.overrides,
            "MMAR_EVAL_OUTPUT_PATH": os.path.join(s.app_dir, "eval", "cross_site_val", safe_owner),
        }
        loaded = load_config(s.app_dir, s.validation_config, s.environment, overrides, s.site_values, config=config)
        # the weights come from the server: a CheckpointLoader in the config would overwrite them
        loaded = dataclasses.replace(loaded, config=without_checkpoint_loaders(loaded.config, ("",))[0])
        workflow = EvaluateWorkflow.build(loaded, code_policy=s.policy)
        self._load(workflow.network, shaped_like(weights, network_weights(workflow.network)), loaded)

        def poll_abort(engine: Any) -> None:
            if should_abort():
                engine.terminate()

        workflow.evaluator.add_event_handler(Events.ITERATION_COMPLETED, poll_abort)
        return workflow.run(progress=False)

    def _load(self, network: Any, weights: dict[str, Any], loaded: Any) -> None:
        """Load ``weights``, except the layers the site's FL algorithm keeps local: those come from its local state."""
        from clara_fl.fl.site.algorithms import local_algorithm
        from clara_fl.fl.site.weights import load_global_weights
        from clara_fl.runtime.checkpoint import load_checkpoint, model_state

        s = self.settings
        site_algorithm = local_algorithm(s.algorithm, s.algorithm_args)
        if s.dp:  # the network the job trained: DP-compatible like the sites' and the server's
            from clara_fl.fl.site.dp import make_dp_compatible

            make_dp_compatible(network)
        site_algorithm.setup_network(network)
        to_load = site_algorithm.weights_to_load(weights)
        kept = [k for k in weights if k not in to_load]
        if kept:
            ckpt_dir = str(loaded.variables.get("MMAR_CKPT_DIR") or "models")
            path = os.path.join(loaded.mmar_root, ckpt_dir, LOCAL_STATE_FILE)
            if os.path.isfile(path):
                own = model_state(load_checkpoint(path), path)
                load_global_weights(network, {k: own[k] for k in kept if k in own})
                logger.info("%s: %d tensors from this site's %s", s.algorithm, len(kept), path)
            else:
                logger.warning("%s: no %s yet, validating the model's own local layers", s.algorithm, path)
                to_load = weights
        load_global_weights(network, to_load)
