"""Components whose Clara behaviour differs from MONAI's; their short names take precedence in configs."""

from clara_fl.components.checkpoint_saver import CheckpointSaver
from clara_fl.components.metrics_saver import MetricsSaver
from clara_fl.components.tensorboard import TensorBoardImageHandler, TensorBoardStatsHandler

__all__ = ["CheckpointSaver", "MetricsSaver", "TensorBoardStatsHandler", "TensorBoardImageHandler"]
