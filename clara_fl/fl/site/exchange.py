"""Tensors between a site's FLARE process and its confined process, as files that never unpickle code.

Weights and FL meta (SCAFFOLD's control variates, Ditto's model) cross as one ``torch.save`` file of nested
dicts, lists, tensors and plain values; numpy arrays travel as tensors and come back as numpy arrays. The
reader always loads with ``weights_only=True``: the confined process runs a job's code, so what it writes is
untrusted, and PyTorch's weights-only unpickler builds tensors and containers only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["write_payload", "read_payload"]

_NUMPY = "__clara_fl_numpy__"  # marks a tensor that was a numpy array, so it comes back as one


def _to_torch(value: Any) -> Any:
    import torch

    if isinstance(value, (np.ndarray, np.generic)):
        # a numpy scalar (the difference of two 0-d arrays) comes back as a 0-d array: FLARE's filters ravel it
        array = np.asarray(value)  # np.ascontiguousarray would make a 0-d array 1-d
        return {_NUMPY: torch.from_numpy(array if array.flags.c_contiguous else array.copy(order="C"))}
    if isinstance(value, Mapping):
        return {str(k): _to_torch(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_torch(v) for v in value]
    return value


def _from_torch(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {_NUMPY}:
            return value[_NUMPY].numpy()
        return {k: _from_torch(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_torch(v) for v in value]
    return value


def write_payload(path: str, payload: Any) -> None:
    """Write ``payload`` (dicts, lists, numpy arrays, tensors, numbers, strings) to ``path``.

    No fsync: the file lives only until the other process has read it, and the message naming it is sent
    after it is written.
    """
    import torch

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    torch.save({"payload": _to_torch(payload)}, path)


def read_payload(path: str) -> Any:
    """What :func:`write_payload` wrote, loaded without unpickling anything but tensors and containers.

    Raises:
        pickle.UnpicklingError: the file holds anything else (a forged file from a job's code).
    """
    import torch

    content = torch.load(path, map_location="cpu", weights_only=True)
    return _from_torch(content["payload"])
