"""Streaming a site's training curves to the FL server (FLARE TBWriter -> server TBAnalyticsReceiver)."""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["MetricsStreamer"]

logger = logging.getLogger(__name__)


class MetricsStreamer:
    """An ignite handler pair: after each train epoch send loss and train metrics, after each
    validation send the validation metrics, all at the trainer's global epoch."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def attach(self, trainer: Any, evaluator: Any | None = None) -> None:
        from ignite.engine import Events

        trainer.add_event_handler(Events.EPOCH_COMPLETED, self.trainer_epoch_completed)
        if evaluator is not None:
            evaluator.add_event_handler(Events.EPOCH_COMPLETED, self.evaluator_epoch_completed)

    def trainer_epoch_completed(self, engine: Any) -> None:
        from monai.handlers import from_engine

        from clara_fl.workflows.evaluate import scalar_metrics

        values = scalar_metrics(engine.state.metrics)
        output = engine.state.output
        if output:
            loss = from_engine(["loss"], first=True)(output)
            values["train_loss"] = float(loss[0] if isinstance(loss, tuple) else loss)
        self._send(values, engine.state.epoch)

    def evaluator_epoch_completed(self, engine: Any) -> None:
        from clara_fl.workflows.evaluate import scalar_metrics

        self._send(scalar_metrics(engine.state.metrics), engine.state.epoch)

    def _send(self, values: dict[str, float], step: int) -> None:
        from clara_fl.runtime.private_api import analytics_sender

        if analytics_sender(self.writer) is None:
            return  # the writer was built after the run started (simulator -t 1): nothing to send through
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, global_step=int(step))
