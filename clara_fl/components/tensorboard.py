"""TensorBoard handlers that open their event file when training starts, not when the config is built.

Building a config must write nothing: a config error found later would otherwise leave stray event files.
"""

from __future__ import annotations

from typing import Any

from monai.handlers import TensorBoardImageHandler as MonaiTensorBoardImageHandler
from monai.handlers import TensorBoardStatsHandler as MonaiTensorBoardStatsHandler

from clara_fl.components.signatures import with_base_signature

__all__ = ["LazySummaryWriter", "TensorBoardStatsHandler", "TensorBoardImageHandler"]


class LazySummaryWriter:
    """A SummaryWriter created on first use."""

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self._writer: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=self.log_dir)
        return getattr(self._writer, name)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


LEARNING_RATE_TAG = "learning_rate"


@with_base_signature
class TensorBoardStatsHandler(MonaiTensorBoardStatsHandler):
    """MONAI's TensorBoardStatsHandler, opening its event file lazily; on a trainer it also writes the
    optimizer's learning rate every epoch (``learning_rate``, ``learning_rate/group_N`` for more groups)."""

    def __init__(self, summary_writer: Any = None, log_dir: str = "./runs", **kwargs: Any) -> None:
        self.event_writer = summary_writer or LazySummaryWriter(log_dir)
        super().__init__(summary_writer=self.event_writer, log_dir=log_dir, **kwargs)
        self.internal_writer = summary_writer is None

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        super().attach(engine)
        # MONAI attaches handlers before a trainer sets its optimizer: look for it when the epoch ends
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write_learning_rate)

    def write_learning_rate(self, engine: Any) -> None:
        optimizer = getattr(engine, "optimizer", None)
        if optimizer is None:  # an evaluator
            return
        groups = optimizer.param_groups
        for index, group in enumerate(groups):
            tag = LEARNING_RATE_TAG if len(groups) == 1 else f"{LEARNING_RATE_TAG}/group_{index}"
            self.event_writer.add_scalar(tag, float(group["lr"]), engine.state.epoch)
        self.event_writer.flush()


@with_base_signature
class TensorBoardImageHandler(MonaiTensorBoardImageHandler):
    def __init__(self, summary_writer: Any = None, log_dir: str = "./runs", **kwargs: Any) -> None:
        super().__init__(summary_writer=summary_writer or LazySummaryWriter(log_dir), log_dir=log_dir, **kwargs)
        self.internal_writer = summary_writer is None
