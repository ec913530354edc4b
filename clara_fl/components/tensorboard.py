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


@with_base_signature
class TensorBoardStatsHandler(MonaiTensorBoardStatsHandler):
    def __init__(self, summary_writer: Any = None, log_dir: str = "./runs", **kwargs: Any) -> None:
        super().__init__(summary_writer=summary_writer or LazySummaryWriter(log_dir), log_dir=log_dir, **kwargs)
        self.internal_writer = summary_writer is None


@with_base_signature
class TensorBoardImageHandler(MonaiTensorBoardImageHandler):
    def __init__(self, summary_writer: Any = None, log_dir: str = "./runs", **kwargs: Any) -> None:
        super().__init__(summary_writer=summary_writer or LazySummaryWriter(log_dir), log_dir=log_dir, **kwargs)
        self.internal_writer = summary_writer is None
