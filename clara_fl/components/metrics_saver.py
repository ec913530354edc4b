"""Clara's MetricsSaver with crash-safe files: each report appears whole or not at all."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from monai.handlers import MetricsSaver as MonaiMetricsSaver

__all__ = ["MetricsSaver"]


class MetricsSaver(MonaiMetricsSaver):
    """:class:`monai.handlers.MetricsSaver` writing into a hidden folder beside ``save_dir``, then
    renaming each file into place (a rename within one file system is atomic)."""

    def __call__(self, engine: Any) -> None:
        final_dir = self.save_dir
        os.makedirs(final_dir, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".metrics-", dir=final_dir) as staging:
            self.save_dir = staging
            try:
                super().__call__(engine)
            finally:
                self.save_dir = final_dir
            for name in os.listdir(staging):
                os.replace(os.path.join(staging, name), os.path.join(final_dir, name))
