"""The train workflow: config_train.json built into a MONAI trainer with its evaluator."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from clara_fl.config.mmar import LoadedConfig
from clara_fl.config.resolver import BuildContext, ConfigResolver
from clara_fl.runtime.files import remove_stale_temp_files, write_json_atomic
from clara_fl.workflows.build import build_components, require

__all__ = ["TrainWorkflow", "TrainStats", "RESUME_STATE_FILE", "RESUME_STATE_MIN_SECONDS"]

# Everything --resume needs, written atomically into MMAR_CKPT_DIR (see TrainWorkflow.save_state_every).
RESUME_STATE_FILE = "train_state.pt"
RESUME_STATE_MIN_SECONDS = 60.0

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
    """A built training config: ``trainer``, ``evaluator``, ``network``; :meth:`run` trains to ``epochs``."""

    def __init__(self, loaded: LoadedConfig, resolver: ConfigResolver, context: BuildContext) -> None:
        self.loaded = loaded
        self.resolver = resolver
        self.context = context
        self.trainer = require(resolver, "trainer", "train")
        self.network = require(resolver, "model", "train")
        self.evaluator = resolver.get("evaluator", "validate") if "evaluator" in resolver.sections.get("validate", {}) else None
        self.stats = TrainStats(world_size=context.world_size)
        if context.world_size > 1:
            from clara_fl.runtime.distributed import sync_buffers_every_epoch, wrap_for_training

            self.trainer.network = wrap_for_training(self.network, context.device)
            sync_buffers_every_epoch(self.trainer, self.network)
        self._iterations_this_run = 0
        self._attach_stats()

    @classmethod
    def build(cls, loaded: LoadedConfig, context: BuildContext | None = None, code_policy: str = "full") -> TrainWorkflow:
        resolver, context = build_components(loaded, context, code_policy)
        return cls(loaded, resolver, context)

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
        scheduler = self.resolver.get("lr_scheduler", "train") if "lr_scheduler" in self.resolver.sections["train"] else None
        return scheduler if hasattr(scheduler, "state_dict") else None

    def training_state(self) -> dict[str, Any]:
        """Network, optimizer, LR scheduler, epoch/iteration, best metric and best-model bookkeeping."""
        from clara_fl.runtime.distributed import unwrap

        trainer, evaluator = self.trainer, self.evaluator
        state: dict[str, Any] = {
            "model": unwrap(self.network).state_dict(),
            "optimizer": trainer.optimizer.state_dict(),
            "epoch": int(trainer.state.epoch),
            "iteration": int(trainer.state.iteration),
            "max_epochs": int(trainer.state.max_epochs or 0),
        }
        scheduler = self._lr_scheduler()
        if scheduler is not None:
            state["lr_scheduler"] = scheduler.state_dict()
        if evaluator is not None:
            state["best_metric"] = float(evaluator.state.best_metric)
            state["best_metric_epoch"] = int(evaluator.state.best_metric_epoch)
        state["savers"] = [s._key_metric_checkpoint.state_dict() if getattr(s, "_key_metric_checkpoint", None) else None for s in self._checkpoint_savers()]
        return state

    def restore_training_state(self, state: dict[str, Any]) -> None:
        from clara_fl.runtime.distributed import unwrap

        trainer, evaluator = self.trainer, self.evaluator
        if "model" in state:
            unwrap(self.network).load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.state.epoch, trainer.state.iteration = int(state["epoch"]), int(state["iteration"])
        scheduler = self._lr_scheduler()
        if scheduler is not None and "lr_scheduler" in state:
            scheduler.load_state_dict(state["lr_scheduler"])
        if evaluator is not None and "best_metric" in state:
            evaluator.state.best_metric, evaluator.state.best_metric_epoch = state["best_metric"], state["best_metric_epoch"]
        for saver, saved in zip(self._checkpoint_savers(), state.get("savers", [])):
            if saved is not None and getattr(saver, "_key_metric_checkpoint", None) is not None:
                saver._key_metric_checkpoint.load_state_dict(saved)

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

    def save_state_every(self, interval: int, min_seconds: float = RESUME_STATE_MIN_SECONDS) -> None:
        """Write RESUME_STATE_FILE every ``interval`` epochs, at most once per ``min_seconds``, and at the end.

        The state (network, optimizer moments, scheduler) is several times the model's size; writing
        it every epoch of a short epoch costs more than the epoch's checkpoints, while an interrupted
        run loses at most ``min_seconds`` of training.
        """
        from ignite.engine import Events

        path = os.path.join(self.ckpt_dir, RESUME_STATE_FILE)
        interval = max(1, int(interval))
        last_write = time.monotonic()

        def save(engine: Any) -> None:
            nonlocal last_write
            due = engine.state.epoch % interval == 0 and time.monotonic() - last_write >= min_seconds
            if due or engine.state.epoch >= (engine.state.max_epochs or 0):
                self.save_training_state(path)
                last_write = time.monotonic()

        self.trainer.add_event_handler(Events.EPOCH_COMPLETED, save)

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
        self.stats.resumed_from_epoch = int(state["epoch"])
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
        self.trainer.run()
        self.stats.total_time_s = round(time.perf_counter() - start, 3)
        self.stats.epochs_completed = int(self.trainer.state.epoch)
        self.stats.total_iterations = self._iterations_this_run
        engine = self.evaluator if self.evaluator is not None and self.evaluator.state.best_metric_epoch >= 0 else self.trainer
        self.stats.key_metric_name = getattr(engine.state, "key_metric_name", None)
        if engine.state.best_metric_epoch >= 0:
            self.stats.best_key_metric = float(engine.state.best_metric)
            self.stats.best_key_metric_epoch = int(engine.state.best_metric_epoch)
        if write_stats and self.context.rank == 0:
            write_json_atomic(os.path.join(self.ckpt_dir, "train_stats.json"), asdict(self.stats))
        return self.stats


def _interactive() -> bool:
    import sys

    return sys.stderr.isatty()


def _attach_progress_bar(engine: Any) -> None:
    from ignite.handlers import ProgressBar

    ProgressBar(persist=False).attach(engine)
