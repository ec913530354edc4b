"""Moving weights between a torch network and FLARE's numpy dicts without surprises."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from clara_fl.runtime.distributed import unwrap

__all__ = ["unwrap", "network_weights", "load_global_weights", "weight_diff", "non_finite_keys", "shaped_like"]

logger = logging.getLogger(__name__)


def network_weights(network: torch.nn.Module) -> dict[str, np.ndarray]:
    """The state_dict as numpy arrays on the CPU (copies: later training must not change what was sent)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in unwrap(network).state_dict().items()}


def load_global_weights(network: torch.nn.Module, weights: Mapping[str, Any]) -> tuple[int, int, int]:
    """Load the weights the network knows (FLARE's ``feed_vars``); returns (loaded, missing, extra) key counts.

    Missing keys keep their local values and extra keys are ignored, so a server model with an
    extra buffer, or a site with an extra head, still trains; the counts are logged.

    Raises:
        ValueError: a weight's shape differs from the network's, or no key matches at all; nothing is loaded.
    """
    from nvflare.app_opt.pt.utils import feed_vars

    model = unwrap(network)
    try:
        assigned, state = feed_vars(model, weights)
    except RuntimeError as e:  # FLARE's report names the keys and shapes
        raise ValueError(f"global weights do not fit the site network: {e}") from e
    extra = len(set(weights) - set(state))
    missing = len(state) - len(assigned)
    if missing or extra:
        logger.warning(
            "global weights: %d loaded, %d missing (kept local), %d extra (ignored)", len(assigned), missing, extra
        )
    model.load_state_dict(state)
    return len(assigned), missing, extra


def shaped_like(weights: Mapping[str, Any], reference: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """``weights`` with each flat value that has as many elements as the reference's tensor reshaped to it and cast
    to its dtype: FLARE's HE decryption hands back every tensor as a flat list of floats."""
    shaped: dict[str, Any] = {}
    for key, value in weights.items():
        target = reference.get(key)
        if target is not None and np.ndim(value) == 1 and np.shape(target) != np.shape(value):
            array = np.asarray(value)
            if array.size == target.size:
                if np.issubdtype(target.dtype, np.integer):
                    array = np.rint(array)  # a step counter decrypts as 2.9999...
                value = array.reshape(target.shape).astype(target.dtype)
        shaped[key] = value
    return shaped


def weight_diff(after: Mapping[str, np.ndarray], before: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``after - before`` for every key the server sent (the WEIGHT_DIFF FLARE aggregates)."""
    return {k: after[k] - np.asarray(before[k], dtype=after[k].dtype) for k in after if k in before}


def non_finite_keys(weights: Mapping[str, np.ndarray]) -> list[str]:
    """Keys whose values hold NaN or Inf (integer buffers are always finite)."""
    return [k for k, v in weights.items() if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all()]
