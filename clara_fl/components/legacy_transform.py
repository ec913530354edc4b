"""BYOC transforms written for MONAI 0.5-0.8, run on today's data items (Clara 4.0 configs only).

MONAI 0.5's ``LoadImaged`` produced numpy arrays plus an ``<key>_meta_dict`` entry per image; transforms
before ``ToTensord`` saw numpy. Today every image is a ``MetaTensor`` carrying its metadata. A Clara 4.0
config's custom transforms are wrapped in :class:`LegacyTransform` (by ``clara_fl.config.clara40``), which
hands them the item as they expected it and turns their result back into today's form:

* ``<key>_meta_dict`` entries are added for every MetaTensor (and removed again afterwards, with any change
  the transform made to them copied back onto the MetaTensor's metadata);
* with ``to_numpy`` (transforms placed before the first ToTensor/EnsureType), tensors become numpy arrays,
  and arrays the transform returns become MetaTensors again with the original metadata.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["LegacyTransform"]

META_SUFFIX = "_meta_dict"


class LegacyTransform:
    """Run ``transform`` (a MONAI 0.5-0.8 era dictionary transform) on a MONAI 1.x data item.

    Args:
        transform: the custom transform.
        to_numpy: hand it numpy arrays instead of tensors (it sat before ToTensord in the config).
    """

    def __init__(self, transform: Callable[[Any], Any], to_numpy: bool = False) -> None:
        self.transform = transform
        self.to_numpy = to_numpy

    def __repr__(self) -> str:
        return f"LegacyTransform({self.transform!r})"

    def __call__(self, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return self.transform(data)
        from monai.data import MetaTensor

        metas = {k: v.meta for k, v in data.items() if isinstance(v, MetaTensor)}
        item = dict(data)
        added = {}
        for key, meta in metas.items():
            if f"{key}{META_SUFFIX}" not in item:
                added[f"{key}{META_SUFFIX}"] = item[f"{key}{META_SUFFIX}"] = dict(meta)
            if self.to_numpy:
                item[key] = item[key].detach().cpu().numpy()
        result = self.transform(item)
        if not isinstance(result, Mapping):
            return result
        return self._today(dict(result), metas, added)

    def _today(self, result: dict[str, Any], metas: dict[str, Any], added: dict[str, Any]) -> dict[str, Any]:
        import numpy as np
        import torch
        from monai.data import MetaTensor

        for key, meta in metas.items():
            meta_dict = result.pop(f"{key}{META_SUFFIX}", None) if f"{key}{META_SUFFIX}" in added else None
            value = result.get(key)
            if isinstance(value, np.ndarray) or (isinstance(value, torch.Tensor) and not isinstance(value, MetaTensor)):
                value = MetaTensor(torch.as_tensor(value), meta=dict(meta))
                result[key] = value
            if isinstance(value, MetaTensor) and isinstance(meta_dict, Mapping):
                value.meta.update(meta_dict)  # what the transform wrote into <key>_meta_dict
        return result
