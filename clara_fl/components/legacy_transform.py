"""BYOC transforms written for MONAI 0.5-0.8, run on today's data items.

MONAI 0.5's ``LoadImaged`` produced numpy arrays plus an ``<key>_meta_dict`` entry per image; transforms
before ``ToTensord`` saw numpy. Today every image is a ``MetaTensor`` carrying its metadata. A Clara 4.0
config's custom transforms are wrapped in :class:`LegacyTransform` (by ``clara_fl.config.clara40``), which
hands them the item as they expected it and turns their result back into today's form:

* ``<key>_meta_dict`` entries are added for every MetaTensor (and removed again afterwards, with any change
  the transform made to them copied back onto the MetaTensor's metadata);
* with ``to_numpy`` (transforms placed before the first ToTensor/EnsureType), tensors become numpy arrays,
  and arrays the transform returns become MetaTensors again with the original metadata.

A Clara 4.1 config's custom transforms are not wrapped up front: :class:`NumpyEraFallback` (put around them when
the config is built) runs each on tensors, and only one that fails there the way numpy-era code fails is run
again, and from then on, as :class:`LegacyTransform` runs it (see :func:`numpy_era_failure` for the rule).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["LegacyTransform", "NumpyEraFallback", "numpy_era_failure"]

logger = logging.getLogger(__name__)

META_SUFFIX = "_meta_dict"
# Numpy's own messages when handed torch types, and torch's when handed numpy's keywords or arrays.
_NUMPY_WORDS = re.compile(r"\bnumpy\b|\bndarray\b|\bnp\.")
_TORCH_WORDS = re.compile(r"\btorch\b|Tensor\b")
_TORCH_DTYPE_FOR_NUMPY = re.compile(r"Cannot interpret 'torch\.")
_NUMPY_KEYWORDS_FOR_TORCH = re.compile(
    r"invalid combination of arguments - got \(.*\b(?:keepdims|ddof|axis|order|casting|decimals)="
)
_NO_ATTRIBUTE = re.compile(r"'(\w+)' object has no attribute '(\w+)'")


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
        return run_as_monai_05(self.transform, data, self.to_numpy)


def run_as_monai_05(transform: Callable[[Any], Any], data: Any, to_numpy: bool) -> Any:
    """``transform(data)`` with ``data`` as MONAI 0.5 made it (``*_meta_dict`` keys; numpy arrays with
    ``to_numpy``), its result turned back into today's form (MetaTensors with their metadata)."""
    import torch
    from monai.data import MetaTensor

    if not isinstance(data, Mapping):
        if not (to_numpy and isinstance(data, torch.Tensor)):
            return transform(data)
        return _as_today(transform(data.detach().cpu().numpy()), data)
    originals = {k: v for k, v in data.items() if isinstance(v, MetaTensor)}
    item = dict(data)
    added = {}
    for key, value in originals.items():
        if f"{key}{META_SUFFIX}" not in item:
            added[f"{key}{META_SUFFIX}"] = item[f"{key}{META_SUFFIX}"] = dict(value.meta)
        if to_numpy:
            item[key] = value.detach().cpu().numpy()
    result = transform(item)
    if not isinstance(result, Mapping):
        return result
    result = dict(result)
    for key, original in originals.items():
        meta_dict = result.pop(f"{key}{META_SUFFIX}", None) if f"{key}{META_SUFFIX}" in added else None
        value = result[key] = _as_today(result.get(key), original)
        if isinstance(value, MetaTensor) and isinstance(meta_dict, Mapping):
            value.meta.update(meta_dict)  # what the transform wrote into <key>_meta_dict
    return result


def _as_today(value: Any, original: Any) -> Any:
    """An array (or plain tensor) a transform returned for ``original``, as the MetaTensor (or tensor) it was,
    on its device, with its metadata and the invertible operations applied to it so far (Invertd needs them)."""
    import numpy as np
    import torch
    from monai.data import MetaTensor

    if isinstance(value, MetaTensor) or not isinstance(value, (np.ndarray, torch.Tensor)):
        return value
    if isinstance(value, np.ndarray):
        value = np.ascontiguousarray(value)  # flips and transposes give negative strides, which torch refuses
    tensor = torch.as_tensor(value, device=original.device)
    if not isinstance(original, MetaTensor):
        return tensor
    return MetaTensor(tensor, meta=dict(original.meta), applied_operations=list(original.applied_operations))


# Why these and nothing else: they are what code written for numpy arrays raises when MONAI 1.x hands it tensors
# (numpy's methods missing on tensors, numpy refusing torch's dtypes, torch refusing numpy's keywords or arrays),
# and running that code on numpy arrays is what MONAI 0.8 did, so the retry repeats a run that used to work. Any
# other failure is the transform's own: it is raised as it is, never hidden by a second run.
def numpy_era_failure(error: BaseException) -> bool:
    """Whether ``error`` is how code written for numpy arrays (MONAI 0.8 and earlier) fails on tensors: an
    AttributeError for an attribute numpy arrays or dtypes have and torch's lack (``.astype``, ``.copy()``,
    ``.dtype.kind``), or a TypeError naming numpy and torch together (``Cannot interpret 'torch.float32' as a data
    type``, ``can't assign a numpy.ndarray to a torch.FloatTensor``) or giving torch numpy's keywords
    (``keepdims=``, ``ddof=``)."""
    import numpy as np
    import torch

    if isinstance(error, AttributeError):
        name = error.name
        on_torch = isinstance(error.obj, (torch.Tensor, torch.dtype))
        if name is None or error.obj is None:  # raised by hand, or by code that caught and re-raised it
            match = _NO_ATTRIBUTE.search(str(error))
            if match is None:
                return False
            on_torch, name = match.group(1).endswith("Tensor") or match.group(1) == "dtype", match.group(2)
        numpy_only = hasattr(np.ndarray, name) or hasattr(np.dtype, name)
        return on_torch and numpy_only and not hasattr(torch.Tensor, name)
    if isinstance(error, TypeError):
        message = str(error)
        return bool(
            (_NUMPY_WORDS.search(message) and _TORCH_WORDS.search(message))
            or _TORCH_DTYPE_FOR_NUMPY.search(message)
            or _NUMPY_KEYWORDS_FOR_TORCH.search(message)
        )
    return False


def _numpy_for_tensor(data: Any, result: Any) -> str | None:
    """The key (or ``"its input"``) for which a transform handed tensors returned a numpy array, else None."""
    import numpy as np
    import torch

    if isinstance(data, Mapping) and isinstance(result, Mapping):
        for key, value in data.items():
            if isinstance(value, torch.Tensor) and isinstance(result.get(key), np.ndarray):
                return repr(key)
        return None
    return "its input" if isinstance(data, torch.Tensor) and isinstance(result, np.ndarray) else None


class _Switch:
    """Whether a transform runs as numpy-era code; one per transform and process, shared by its copies (MONAI
    copies thread-unsafe transforms while caching), so it switches, and says so, once."""

    def __init__(self, on: bool = False) -> None:
        self.on = on

    def __deepcopy__(self, memo: dict[int, Any]) -> _Switch:
        return self

    def __copy__(self) -> _Switch:
        return self


class NumpyEraFallback:
    """A custom transform of a Clara 4.1 config, run on tensors until it fails the way numpy-era code does
    (:func:`numpy_era_failure`, or it returns a numpy array for a tensor); then it runs once more, and from then on
    always, on numpy arrays as MONAI 0.8 gave them (:func:`run_as_monai_05`), and one INFO line names it.

    Everything but the call is the transform's own: attributes, ``isinstance`` (so MONAI still sees a random,
    invertible or thread-unsafe transform as one: caching, seeding and inverting work as before) and ``repr``.

    Args:
        transform: the custom transform.
        where: how to name it in the INFO line: config file, JSON path and class.
    """

    __slots__ = ("_transform", "_where", "_switch")

    def __init__(self, transform: Callable[..., Any], where: str, switch: _Switch | None = None) -> None:
        object.__setattr__(self, "_transform", transform)
        object.__setattr__(self, "_where", where)
        object.__setattr__(self, "_switch", switch or _Switch())

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return type(self._transform)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # copying and pickling protocols are this wrapper's (__reduce__)
            raise AttributeError(name)
        return getattr(self._transform, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._transform, name, value)

    def __repr__(self) -> str:
        return repr(self._transform)

    def __reduce__(self) -> tuple[Any, ...]:
        return (NumpyEraFallback, (self._transform, self._where, self._switch))

    @property
    def numpy_era(self) -> bool:
        """Whether the transform now runs on numpy arrays."""
        return self._switch.on

    def __call__(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        def call(item: Any) -> Any:
            return self._transform(item, *args, **kwargs)

        if self._switch.on:
            return run_as_monai_05(call, data, to_numpy=True)
        try:
            # a copy of the item: what a failing call changed in it must not reach the second run
            result = call(dict(data) if isinstance(data, Mapping) else data)
        except (AttributeError, TypeError) as e:
            if not numpy_era_failure(e):
                raise
            reason = f"{type(e).__name__}: {e}"
        else:
            returned = _numpy_for_tensor(data, result)
            if returned is None:
                return result
            reason = f"it returned a numpy array for {returned}, a tensor"
        self._switch.on = True
        logger.info(
            "%s: fails on tensors the way code written for MONAI 0.8 and earlier does (%s); it runs on numpy "
            "arrays, as MONAI 0.8 gave them, from now on (docs/clara40.md)",
            self._where,
            reason,
        )
        return run_as_monai_05(call, data, to_numpy=True)
