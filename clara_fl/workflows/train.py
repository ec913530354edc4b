"""The train workflow: config_train.json built into a MONAI trainer with its evaluator."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from clara_fl.config.mmar import LoadedConfig
from clara_fl.config.resolver import BuildContext, ConfigResolver
from clara_fl.runtime.files import write_json_atomic
from clara_fl.workflows.build import build_components, require

__all__ = ["TrainWorkflow", "TrainStats"]

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


class TrainWorkflow:
    """A built training config: ``trainer``, ``evaluator``, ``network``; :meth:`run` trains to ``epochs``."""

    def __init__(self, loaded: LoadedConfig, resolver: ConfigResolver, context: BuildContext) -> None:
        self.loaded = loaded
        self.resolver = resolver
        self.context = context
        self.trainer = require(resolver, "trainer", "train")
        self.network = require(resolver, "model", "train")
        self.evaluator = resolver.get("evaluator", "validate") if "evaluator" in resolver.sections.get("validate", {}) else None
        self.stats = TrainStats(world_size=int(os.environ.get("WORLD_SIZE", "1")))
        self._iterations_this_run = 0
        self._attach_stats()

    @classmethod
    def build(cls, loaded: LoadedConfig, context: BuildContext | None = None) -> TrainWorkflow:
        resolver, context = build_components(loaded, context)
        return cls(loaded, resolver, context)

    @property
    def ckpt_dir(self) -> str:
        return str(self.loaded.variables.get("MMAR_CKPT_DIR") or os.path.join(self.loaded.mmar_root, "models"))

    @property
    def key_metric_name(self) -> str | None:
        engine = self.evaluator or self.trainer
        return getattr(engine.state, "key_metric_name", None)

    def _attach_stats(self) -> None:
        from ignite.engine import Events

        def count(_: Any) -> None:
            self._iterations_this_run += 1

        self.trainer.add_event_handler(Events.ITERATION_COMPLETED, count)

    def run(self, write_stats: bool = False, progress: bool | None = None) -> TrainStats:
        """Train until the configured ``max_epochs``; returns (and optionally writes) the run's statistics."""
        if progress if progress is not None else _interactive():
            _attach_progress_bar(self.trainer)
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
