"""Moving weights between a torch network and FLARE's numpy dicts without surprises."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from clara_fl.runtime.distributed import unwrap

__all__ = ["unwrap", "network_weights", "load_global_weights", "weight_diff", "non_finite_keys"]

logger = logging.getLogger(__name__)


def network_weights(network: torch.nn.Module) -> dict[str, np.ndarray]:
    """The state_dict as numpy arrays on the CPU (copies: later training must not change what was sent)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in unwrap(network).state_dict().items()}


def load_global_weights(network: torch.nn.Module, weights: Mapping[str, Any]) -> tuple[int, int, int]:
    """Load the weights the network knows; returns (loaded, missing, extra) key counts.

    Missing keys keep their local values and extra keys are ignored, so a server model with an
    extra buffer, or a site with an extra head, still trains; the counts are logged.
    """
    local = unwrap(network).state_dict()
    update = {}
    for key, value in weights.items():
        if key in local:
            tensor = torch.as_tensor(value)
            if tensor.shape != local[key].shape:
                raise ValueError(f"global weight '{key}' has shape {tuple(tensor.shape)}, the site network {tuple(local[key].shape)}")
            update[key] = tensor
    missing = len(set(local) - set(update))
    extra = len(set(weights) - set(local))
    if missing or extra:
        logger.warning("global weights: %d loaded, %d missing (kept local), %d extra (ignored)", len(update), missing, extra)
    unwrap(network).load_state_dict(update, strict=False)
    return len(update), missing, extra


def weight_diff(after: Mapping[str, np.ndarray], before: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``after - before`` for every key the server sent (the WEIGHT_DIFF FLARE aggregates)."""
    return {k: after[k] - np.asarray(before[k], dtype=after[k].dtype) for k in after if k in before}


def non_finite_keys(weights: Mapping[str, np.ndarray]) -> list[str]:
    """Keys whose values hold NaN or Inf (integer buffers are always finite)."""
    return [k for k, v in weights.items() if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all()]
