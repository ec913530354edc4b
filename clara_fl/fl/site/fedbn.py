"""FedBN at a site: the normalization layers stay local (Li et al., "FedBN: Federated Learning on Non-IID
Features via Local Batch Normalization", ICLR 2021).

The norm layers are found from the network's module types (BatchNorm, InstanceNorm, GroupNorm, LayerNorm and
their subclasses), never from key names: their parameters and running statistics are neither loaded from the
server nor sent to it. The server aggregates the keys it is sent (FLARE's weighted aggregation averages each
key over the sites that sent it) and keeps its initial values for the others.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from clara_fl.fl.site.local_algorithm import LocalAlgorithm, RoundWorkflow

__all__ = ["FedBN", "NORM_LAYER_TYPES", "norm_layer_keys"]

NORM_LAYER_TYPES: tuple[type[torch.nn.Module], ...] = (
    torch.nn.BatchNorm1d,
    torch.nn.BatchNorm2d,
    torch.nn.BatchNorm3d,
    torch.nn.SyncBatchNorm,
    torch.nn.InstanceNorm1d,
    torch.nn.InstanceNorm2d,
    torch.nn.InstanceNorm3d,
    torch.nn.GroupNorm,
    torch.nn.LayerNorm,
    *((torch.nn.RMSNorm,) if hasattr(torch.nn, "RMSNorm") else ()),
)


def norm_layer_keys(network: torch.nn.Module) -> frozenset[str]:
    """The state_dict keys (parameters and buffers) of every normalization layer in ``network``."""
    from clara_fl.fl.site.weights import unwrap

    keys: set[str] = set()
    for name, module in unwrap(network).named_modules():
        if isinstance(module, NORM_LAYER_TYPES):
            keys.update(f"{name}.{key}" if name else key for key in module.state_dict())
    return frozenset(keys)


class FedBN(LocalAlgorithm):
    """Keeps the site's normalization layers out of what it loads and what it sends.

    Training is FedAvg's, so it also runs with ``nproc_per_site`` > 1.
    """

    def __init__(self) -> None:
        super().__init__()
        self.local_keys: frozenset[str] = frozenset()

    def setup(self, workflow: RoundWorkflow) -> None:
        self.setup_network(workflow.network)

    def setup_network(self, network: torch.nn.Module) -> None:
        self.local_keys = norm_layer_keys(network)

    def weights_to_load(self, global_weights: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        return {k: v for k, v in global_weights.items() if k not in self.local_keys}

    def weights_to_send(self, weights: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        return {k: v for k, v in weights.items() if k not in self.local_keys}
