"""The train workflow: config_train.json built into a MONAI trainer with its evaluator."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from clara_fl.config.mmar import LoadedConfig
from clara_fl.config.resolver import BuildContext, ConfigResolver
from clara_fl.config.restrictions import CodePolicy
from clara_fl.runtime.files import remove_stale_temp_files, write_json_atomic
from clara_fl.workflows.build import build_components, require
from clara_fl.workflows.failures import FailureLocator

__all__ = ["TrainWorkflow", "TrainStats", "RESUME_STATE_FILE", "TrainerProgress", "trainer_progress"]

# Everything --resume needs, written atomically into MMAR_CKPT_DIR after every epoch
# (TrainWorkflow.save_state_every_epoch).
RESUME_STATE_FILE = "train_state.pt"

logger = logging.getLogger(__name__)


@dataclass
class TrainStats:
    """What ``--write_train_stats`` records in ``MMAR_CKPT_DIR/train_stats.json``."""

    epochs_completed: int = 0
    total_iterations: int = 0
    world_size: int = 1
    key_metric_name: str | None = None
    best_key_metric: float | None = None
    best_key_metric_epoch: int | None = None
    total_time_s: float = 0.0
    resumed_from_epoch: int | None = None


class TrainWorkflow:
    """A built training config: ``trainer``, ``evaluator``, ``network``; :meth:`run` trains to ``epochs``.

    ``locator`` names the config item behind a failure of its components; :meth:`run` attaches it to the
    exception, and whoever runs the engines another way marks the exceptions with it.
    """

    def __init__(
        self, loaded: LoadedConfig, resolver: ConfigResolver, context: BuildContext, locator: FailureLocator
    ) -> None:
        self.loaded = loaded
        self.resolver = resolver
        self.context = context
        self.locator = locator
        self.trainer = require(resolver, "trainer", "train")
        self.network = require(resolver, "model", "train")
        self.evaluator = (
            resolver.get("evaluator", "validate") if "evaluator" in resolver.sections.get("validate", {}) else None
        )
        self.stats = TrainStats(world_size=context.world_size)
        if context.world_size > 1:
            from clara_fl.runtime.distributed import sync_buffers_every_epoch, wrap_for_training

            self.trainer.network = wrap_for_training(self.network, context.device)
            sync_buffers_every_epoch(self.trainer, self.network)
        self._iterations_this_run = 0
        self._state_writer: Any = None
        self._attach_stats()

    @classmethod
    def build(
        cls, loaded: LoadedConfig, context: BuildContext | None = None, code_policy: str | CodePolicy = "full"
    ) -> TrainWorkflow:
        return cls(loaded, *build_components(loaded, context, code_policy))

    @property
    def ckpt_dir(self) -> str:
        return str(self.loaded.variables.get("MMAR_CKPT_DIR") or os.path.join(self.loaded.mmar_root, "models"))

    @property
    def key_metric_name(self) -> str | None:
        engine = self.evaluator or self.trainer
        return getattr(engine.state, "key_metric_name", None)

    # -- training state: standalone --resume and FL learners rebuilt per task ---------------------

    def _checkpoint_savers(self) -> list[Any]:
        from monai.handlers import CheckpointSaver

        found: list[Any] = []
        for section in ("train", "validate"):
            if "handlers" in self.resolver.sections.get(section, {}):
                found += [h for h in self.resolver.get("handlers", section) or [] if isinstance(h, CheckpointSaver)]
        return found

    def _lr_scheduler(self) -> Any:
        scheduler = (
            self.resolver.get("lr_scheduler", "train") if "lr_scheduler" in self.resolver.sections["train"] else None
        )
        return scheduler if hasattr(scheduler, "state_dict") else None

    def state_objects(self) -> dict[str, Any]:
        """What the training state holds, by name: objects with ``state_dict()`` / ``load_state_dict()``.

        This is the ``to_save`` / ``to_load`` mapping of ignite's :class:`~ignite.handlers.Checkpoint`: the
        trainer's progress (``Engine.state_dict``), network, optimizer, LR scheduler, the evaluator's best
        metric and each MONAI CheckpointSaver's key-metric bookkeeping (which file is the best model).
        """
        from clara_fl.runtime.distributed import unwrap
        from clara_fl.runtime.private_api import key_metric_checkpoint

        objects: dict[str, Any] = {
            "trainer": TrainerProgress(self.trainer),
            "model": unwrap(self.network),
            "optimizer": self.trainer.optimizer,
        }
        scheduler = self._lr_scheduler()
        if scheduler is not None:
            objects["lr_scheduler"] = scheduler
        if self.evaluator is not None:
            objects["evaluator"] = BestMetric(self.evaluator)
        for index, saver in enumerate(self._checkpoint_savers()):
            if key_metric_checkpoint(saver) is not None:
                objects[f"checkpoint_saver_{index}"] = KeyMetricSaverState(saver)
        return objects

    def training_state(self) -> dict[str, Any]:
        """Every state object's ``state_dict()`` (live tensors, not copies), plus a summary for people and tools.

        The summary (``epoch``, ``iteration``, ``best_metric``, ``best_metric_epoch``) is only read, never restored.
        """
        state = {name: obj.state_dict() for name, obj in self.state_objects().items()}
        state["epoch"], state["iteration"] = int(self.trainer.state.epoch), int(self.trainer.state.iteration)
        if "evaluator" in state:
            state.update(state["evaluator"])
        return state

    def restore_training_state(self, state: dict[str, Any]) -> None:
        """Load a :meth:`training_state` into the built objects with ignite's ``Checkpoint.load_objects``."""
        from ignite.handlers import Checkpoint

        objects = self.state_objects()
        Checkpoint.load_objects({name: obj for name, obj in objects.items() if name in state}, _upgrade(state))

    def save_training_state(self, path: str) -> None:
        from clara_fl.runtime.checkpoint import save_atomic

        if self.context.rank == 0:
            save_atomic(self.training_state(), path)

    def load_training_state(self, path: str) -> dict[str, Any] | None:
        """Restore from ``path`` if it exists; returns the state (None when there was none)."""
        from clara_fl.runtime.checkpoint import load_checkpoint

        if not os.path.isfile(path):
            return None
        state = load_checkpoint(path)
        self.restore_training_state(state)
        return state

    def save_state_every_epoch(self) -> None:
        """Write RESUME_STATE_FILE after every epoch, once the epoch's own handlers (validation, checkpoints) ran.

        The state is copied to the CPU on the training thread at EPOCH_COMPLETED (a consistent snapshot)
        and written crash-safely on a background thread; at most one write is pending, so a kill at any
        moment loses at most the epoch in progress. The last write finishes before :meth:`run` returns.
        """
        from ignite.engine import Events

        from clara_fl.runtime.checkpoint import BackgroundCheckpointWriter

        if self.context.rank != 0:
            return
        self._state_writer = BackgroundCheckpointWriter(os.path.join(self.ckpt_dir, RESUME_STATE_FILE))
        self.trainer.add_event_handler(
            Events.EPOCH_COMPLETED, lambda _: self._state_writer.submit(self.training_state())
        )

    def resume(self) -> int | None:
        """Continue from MMAR_CKPT_DIR/train_state.pt; returns the epoch resumed from (None: nothing to resume).

        Weights come from the saved state, so a fine-tuning CheckpointLoader is detached.
        """
        from clara_fl.workflows.engine_hooks import detach_checkpoint_loaders

        state = self.load_training_state(os.path.join(self.ckpt_dir, RESUME_STATE_FILE))
        if state is None:
            return None
        if "handlers" in self.resolver.sections["train"]:
            detach_checkpoint_loaders(self.trainer, self.resolver.get("handlers", "train"))
        self.stats.resumed_from_epoch = int(self.trainer.state.epoch)
        return self.stats.resumed_from_epoch

    @property
    def finished(self) -> bool:
        return int(self.trainer.state.epoch) >= int(self.trainer.state.max_epochs or 0)

    def _attach_stats(self) -> None:
        from ignite.engine import Events

        def count(_: Any) -> None:
            self._iterations_this_run += 1

        self.trainer.add_event_handler(Events.ITERATION_COMPLETED, count)

    def run(self, write_stats: bool = False, progress: bool | None = None) -> TrainStats:
        """Train until the configured ``max_epochs``; returns (and optionally writes) the run's statistics."""
        if progress if progress is not None else _interactive():
            _attach_progress_bar(self.trainer)
        if self.context.rank == 0:
            for name in remove_stale_temp_files(self.ckpt_dir):
                logger.info("removed %s, a partial write left by an interrupted run", name)
        start = time.perf_counter()
        try:
            with self.locator.naming_failures():
                self.trainer.run()
        finally:
            if self._state_writer is not None:
                self._state_writer.flush()
        self.stats.total_time_s = round(time.perf_counter() - start, 3)
        self.stats.total_iterations = self._iterations_this_run
        return self.record_stats(write=write_stats)

    def record_stats(self, write: bool = False) -> TrainStats:
        """Fill the statistics from the engines' state and, with ``write``, save ``train_stats.json``.

        :meth:`run` calls it; a ``--resume`` of a run that had already finished calls it alone, so a run
        killed between its last epoch and its statistics still leaves them.
        """
        self.stats.epochs_completed = int(self.trainer.state.epoch)
        engine = (
            self.evaluator
            if self.evaluator is not None and self.evaluator.state.best_metric_epoch >= 0
            else self.trainer
        )
        self.stats.key_metric_name = getattr(engine.state, "key_metric_name", None)
        if engine.state.best_metric_epoch >= 0:
            self.stats.best_key_metric = float(engine.state.best_metric)
            self.stats.best_key_metric_epoch = int(engine.state.best_metric_epoch)
        if write and self.context.rank == 0:
            write_json_atomic(os.path.join(self.ckpt_dir, "train_stats.json"), asdict(self.stats))
        return self.stats


class TrainerProgress:
    """The trainer's place in training through ignite's public ``Engine.state_dict()`` / ``load_state_dict()``.

    Loading keeps this run's ``max_epochs`` (``--resume`` with more ``epochs`` trains on) and this run's
    epoch length: a state saved by another number of DDP processes (an FL site's torchrun workers and its
    in-process learner) has another epoch length, and then only its finished epochs carry over.
    """

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        return dict(self.trainer.state_dict())

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        state = self.trainer.state
        epoch_length = int(state.epoch_length or len(self.trainer.data_loader))
        iteration, saved_length = int(saved["iteration"]), int(saved["epoch_length"] or epoch_length)
        if saved_length != epoch_length:
            iteration = iteration // saved_length * epoch_length
        max_epochs = max(int(state.max_epochs or 1), -(-iteration // epoch_length))
        self.trainer.load_state_dict({"iteration": iteration, "epoch_length": epoch_length, "max_epochs": max_epochs})


def trainer_progress(state: Mapping[str, Any]) -> tuple[int, int]:
    """(finished epochs, iterations) recorded in a saved training state."""
    trainer = state["trainer"]
    return int(trainer["iteration"]) // int(trainer["epoch_length"]), int(trainer["iteration"])


class BestMetric:
    """The evaluator's best key metric and its epoch (MONAI keeps them on ``engine.state``)."""

    def __init__(self, evaluator: Any) -> None:
        self.evaluator = evaluator

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_metric": float(self.evaluator.state.best_metric),
            "best_metric_epoch": int(self.evaluator.state.best_metric_epoch),
        }

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        self.evaluator.state.best_metric, self.evaluator.state.best_metric_epoch = (
            saved["best_metric"],
            saved["best_metric_epoch"],
        )


class KeyMetricSaverState:
    """A MONAI CheckpointSaver's best-model bookkeeping: MONAI loads it publicly but has no ``state_dict()``."""

    def __init__(self, saver: Any) -> None:
        self.saver = saver

    def state_dict(self) -> dict[str, Any]:
        from clara_fl.runtime.private_api import key_metric_checkpoint

        state = key_metric_checkpoint(self.saver).state_dict()
        # a metric computed in numpy (ROCAUC) is a numpy scalar priority, which torch.load(weights_only=True) refuses
        return {
            key: [(p.item() if hasattr(p, "item") else p, name) for p, name in value] if key == "_saved" else value
            for key, value in state.items()
        }

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        self.saver.load_state_dict(saved)


def _upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """A state written before the trainer's progress was an ``Engine.state_dict()`` (flat epoch/iteration keys)."""
    if "trainer" in state or "iteration" not in state:
        return state
    upgraded = dict(state)
    iteration = int(state["iteration"])
    upgraded["trainer"] = {
        "iteration": iteration,
        "epoch_length": None,
        "max_epochs": state.get("max_epochs"),
    }  # this run's length
    if "best_metric" in state:
        upgraded["evaluator"] = {"best_metric": state["best_metric"], "best_metric_epoch": state["best_metric_epoch"]}
    for index, saved in enumerate(state.get("savers", [])):
        if saved is not None:
            upgraded[f"checkpoint_saver_{index}"] = saved
    return upgraded


def _interactive() -> bool:
    import sys

    return sys.stderr.isatty()


def _attach_progress_bar(engine: Any) -> None:
    from ignite.handlers import ProgressBar

    ProgressBar(persist=False).attach(engine)
