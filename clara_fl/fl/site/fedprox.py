"""FedProx at a site: the local loss gains ``mu/2 * ||w - w_global||^2`` (Li et al., "Federated Optimization in
Heterogeneous Networks", MLSys 2020), with FLARE's :class:`~nvflare.app_opt.pt.fedproxloss.PTFedProxLoss`.

The trainer's loss function is wrapped once; each round starts from a frozen copy of the global model the site
received.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from clara_fl.fl.site.local_algorithm import LocalAlgorithm, RoundWorkflow

__all__ = ["FedProx", "ProximalLoss"]


class ProximalLoss(torch.nn.Module):
    """``loss(pred, label) + proximal(network, reference)``: the MMAR's loss with FedProx's term added.

    Args:
        loss: the MMAR's loss function (the trainer's ``loss_function``).
        proximal: FLARE's PTFedProxLoss.
        network: the network being trained.
        reference: the frozen global model of the round.
    """

    def __init__(
        self, loss: Any, proximal: torch.nn.Module, network: torch.nn.Module, reference: torch.nn.Module
    ) -> None:
        super().__init__()
        self.loss = loss
        self.proximal = proximal
        # plain attributes, not submodules: the networks belong to the trainer, not to the loss
        self.__dict__["network"] = network
        self.__dict__["reference"] = reference

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.loss(*args, **kwargs) + self.proximal(self.network, self.reference)


class FedProx(LocalAlgorithm):
    """Adds FedProx's proximal term to the trainer's loss.

    Args:
        mu: the weight of the proximal term (>= 0).

    Raises:
        ValueError: ``mu`` is negative.
    """

    def __init__(self, mu: float) -> None:
        from nvflare.app_opt.pt.fedproxloss import PTFedProxLoss

        super().__init__(mu=mu)
        self.proximal = PTFedProxLoss(mu=float(mu))
        self.reference: torch.nn.Module | None = None

    def setup(self, workflow: RoundWorkflow) -> None:
        from clara_fl.fl.site.weights import unwrap

        network = unwrap(workflow.network)
        self.reference = copy.deepcopy(network)
        self.reference.requires_grad_(False)
        trainer = workflow.trainer
        trainer.loss_function = ProximalLoss(trainer.loss_function, self.proximal, network, self.reference)

    def before_round(
        self, workflow: RoundWorkflow, global_weights: Mapping[str, np.ndarray], meta: Mapping[str, Any]
    ) -> None:
        from clara_fl.fl.site.weights import unwrap

        if self.reference is None:
            raise RuntimeError("FedProx.setup() was not called")
        # the network now holds the global weights (and any local keys the server did not send)
        self.reference.load_state_dict(unwrap(workflow.network).state_dict())
