"""SCAFFOLD at a site: control variates correct the local drift (Karimireddy et al., "SCAFFOLD: Stochastic
Controlled Averaging for Federated Learning", ICML 2020), with FLARE's
:class:`~nvflare.app_opt.pt.scaffold.PTScaffoldHelper`.

The server's control variate arrives in the DXO meta (``scaffold_c_global``, as FLARE's Scaffold controller
sends it); after every optimizer step the trainer's parameters are corrected by ``-lr * (c_global - c_local)``
(an ignite handler on the trainer); after the round the local control variate is updated and its change goes
back in the DXO meta (``scaffold_c_diff``). The local control variate is part of the site's local state.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine

from clara_fl.fl.site.local_algorithm import LocalAlgorithm, RoundWorkflow

__all__ = ["Scaffold"]


class Scaffold(LocalAlgorithm):
    """SCAFFOLD's site side on the trainer of a TrainWorkflow (no arguments)."""

    def __init__(self) -> None:
        from nvflare.app_opt.pt.scaffold import PTScaffoldHelper

        super().__init__()
        self.helper = PTScaffoldHelper()
        self.network: torch.nn.Module | None = None
        self.optimizer: Any = None
        self.reference: torch.nn.Module | None = None
        self._controls: tuple[dict[str, Any], dict[str, Any]] | None = None  # (c_global, c_local) of this round

    def setup(self, workflow: RoundWorkflow) -> None:
        from ignite.engine import Events

        from clara_fl.fl.site.weights import unwrap

        self.network = unwrap(workflow.network)
        self.optimizer = workflow.trainer.optimizer
        self.helper.init(self.network)
        self.reference = copy.deepcopy(self.network)
        self.reference.requires_grad_(False)
        workflow.trainer.add_event_handler(Events.ITERATION_COMPLETED, self._correct)

    def _learning_rate(self) -> float:
        from nvflare.app_opt.pt.scaffold import get_lr_values

        return float(get_lr_values(self.optimizer)[0])

    def _correct(self, engine: Engine) -> None:
        """After each optimizer step of an FL round: ``w -= lr * (c_global - c_local)``."""
        if self._controls is not None:
            self.helper.model_update(self.network, self._learning_rate(), *self._controls)

    def before_round(
        self, workflow: RoundWorkflow, global_weights: Mapping[str, np.ndarray], meta: Mapping[str, Any]
    ) -> None:
        from nvflare.app_common.app_constant import AlgorithmConstants

        if self.network is None or self.reference is None:
            raise RuntimeError("Scaffold.setup() was not called")
        controls = meta.get(AlgorithmConstants.SCAFFOLD_CTRL_GLOBAL)
        if not controls:
            raise ValueError(
                f"the server sent no '{AlgorithmConstants.SCAFFOLD_CTRL_GLOBAL}' in the task meta: "
                "the job's server must run FLARE's Scaffold controller (clara-fl job create --algorithm scaffold)"
            )
        self.helper.load_global_controls(controls)
        self._controls = self.helper.get_params()
        self.reference.load_state_dict(self.network.state_dict())

    def after_round(
        self, workflow: RoundWorkflow, global_weights: Mapping[str, np.ndarray], steps: int
    ) -> dict[str, Any]:
        from nvflare.app_common.app_constant import AlgorithmConstants

        if self._controls is None:
            raise RuntimeError("Scaffold.before_round() was not called")
        controls, self._controls = self._controls, None
        if steps <= 0:  # nothing learned: no change to the control variate, still the meta the server expects
            zeros = {k: np.zeros_like(v.numpy()) for k, v in self.helper.c_local.state_dict().items()}
            return {AlgorithmConstants.SCAFFOLD_CTRL_DIFF: zeros}
        self.helper.terms_update(self.network, self._learning_rate(), *controls, self.reference)
        return {AlgorithmConstants.SCAFFOLD_CTRL_DIFF: self.helper.get_delta_controls()}

    def state_dict(self) -> dict[str, Any]:
        if self.helper.c_local is None:
            return {}
        return {"c_local": {k: v.clone() for k, v in self.helper.c_local.state_dict().items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "c_local" in state and self.helper.c_local is not None:
            self.helper.c_local.load_state_dict({k: torch.as_tensor(v) for k, v in state["c_local"].items()})
