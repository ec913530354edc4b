"""Clara's MetricsSaver with crash-safe files: each report appears whole or not at all."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any

from monai.handlers import MetricsSaver as MonaiMetricsSaver

__all__ = ["MetricsSaver", "image_metadata"]

FILENAME_KEY = "filename_or_obj"


def image_metadata(batch: Any) -> list[dict[str, Any]]:
    """One ``{"filename_or_obj": name}`` per case of a collated batch, read from the image's MetaTensor.

    MONAI's default ``batch_transform`` returns the batch itself, whose items have no
    ``filename_or_obj`` key, so every per-case row would read ``None``; since MONAI 0.9 the name
    lives on the image tensor's ``meta`` instead.
    """
    items = batch if isinstance(batch, list) else [batch]
    names: list[Any] = []
    for item in items:
        tensor = _image_tensor(item)
        value = getattr(tensor, "meta", {}).get(FILENAME_KEY) if tensor is not None else None
        count = len(tensor) if tensor is not None and isinstance(batch, dict) and tensor.ndim > 0 else 1
        if isinstance(value, (list, tuple)):
            names.extend(value)
        else:
            names.extend([value] * count)
    return [{FILENAME_KEY: name} for name in names]


def _image_tensor(item: Any) -> Any:
    """The batch's "image" MetaTensor, or its first MetaTensor when there is no "image" key."""
    if not isinstance(item, dict):
        return None
    if hasattr(item.get("image"), "meta"):
        return item["image"]
    return next((value for value in item.values() if hasattr(value, "meta")), None)


class MetricsSaver(MonaiMetricsSaver):
    """:class:`monai.handlers.MetricsSaver` writing into a hidden folder beside ``save_dir``, then
    renaming each file into place (a rename within one file system is atomic).

    Without a ``batch_transform`` the per-case rows are named from the image's metadata
    (:func:`image_metadata`), not ``None``.
    """

    def __init__(self, save_dir: str, batch_transform: Callable | None = None, **kwargs: Any) -> None:
        super().__init__(save_dir=save_dir, batch_transform=batch_transform or image_metadata, **kwargs)

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
