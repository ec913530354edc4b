"""Clara's CheckpointSaver: ``model.pt`` for the best key metric, ``final_model.pt``, crash-safe writes."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ignite.handlers import DiskSaver
from monai.handlers import CheckpointSaver as MonaiCheckpointSaver

from clara_fl.components.signatures import with_base_signature
from clara_fl.runtime.checkpoint import save_atomic
from clara_fl.runtime.private_api import saver_checkpoints

__all__ = ["CheckpointSaver", "AtomicDiskSaver"]


class AtomicDiskSaver(DiskSaver):
    """Writes each checkpoint to a temporary file and renames it, so readers only ever see whole files."""

    def __init__(self, dirname: str, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, atomic=True, create_dir=True, require_empty=False)
        self.filename = filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        save_atomic(dict(checkpoint), os.path.join(self.dirname, self.filename or filename))

    def remove(self, filename: str) -> None:
        path = os.path.join(self.dirname, self.filename or filename)
        if os.path.exists(path):
            os.remove(path)


@with_base_signature
class CheckpointSaver(MonaiCheckpointSaver):
    """:class:`monai.handlers.CheckpointSaver` with Clara's file names and atomic writes.

    Clara wrote the best key-metric model to ``model.pt`` and the last one to ``final_model.pt``;
    validation and FL look for those names.
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: dict,
        key_metric_filename: str | None = "model.pt",
        final_filename: str | None = "final_model.pt",
        key_metric_n_saved: int = 1,
        **kwargs: Any,
    ) -> None:
        if key_metric_n_saved > 1:
            key_metric_filename = None  # several best models need distinct names
        super().__init__(
            save_dir=save_dir,
            save_dict=save_dict,
            key_metric_filename=key_metric_filename,
            final_filename=final_filename,
            key_metric_n_saved=key_metric_n_saved,
            **kwargs,
        )
        fixed = {"final": final_filename, "key_metric": key_metric_filename, "interval": None}
        for kind, checkpoint in saver_checkpoints(self).items():
            if checkpoint is not None:  # MONAI builds these ignite Checkpoints and exposes none of them
                checkpoint.save_handler = AtomicDiskSaver(self.save_dir, fixed[kind])
