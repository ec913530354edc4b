"""What an FL algorithm does at a site around one round of local training.

The Learner stays a thin FLARE adapter: it asks its :class:`LocalAlgorithm` which of the received weights to
load, lets it prepare the trainer before the round, and asks it what to add to the result it sends. The base
class is FedAvg: it loads everything, changes nothing and adds nothing. FedProx, SCAFFOLD, Ditto and FedBN
override the steps they need, built on FLARE's own helpers (``nvflare.app_opt.pt``). Which class a job's
``algorithm`` names, and its arguments, come from :mod:`clara_fl.fl.algorithms`.

A hook sees the site's training through :class:`RoundWorkflow`: the network, the MMAR's trainer (a MONAI
SupervisedTrainer, an ignite Engine: its optimizer, loss, inferer, batch preparation, data loader, device and
event handlers) and the folder the site's models go to; nothing else of the workflow.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch
    from monai.engines import SupervisedTrainer

    from clara_fl.workflows.train import TrainWorkflow

__all__ = ["LocalAlgorithm", "RoundWorkflow"]


class RoundWorkflow(Protocol):
    """What an algorithm's hooks may touch of a site's training workflow."""

    @property
    def network(self) -> torch.nn.Module:
        """The network being trained (DDP-wrapped when the site trains in several processes)."""

    @property
    def trainer(self) -> SupervisedTrainer:
        """The MMAR's trainer: its ``optimizer``, ``loss_function``, ``inferer``, ``prepare_batch``,
        ``data_loader``, ``state.device`` and ignite event handlers."""

    @property
    def ckpt_dir(self) -> str:
        """The folder the site's models are written to (the MMAR's models folder)."""


if TYPE_CHECKING:

    def _a_train_workflow_is_a_round_workflow(workflow: TrainWorkflow) -> RoundWorkflow:
        return workflow  # mypy checks TrainWorkflow against the protocol here


class LocalAlgorithm:
    """FedAvg at a site; subclasses add what their algorithm needs.

    Args:
        args: the algorithm's checked arguments (``algorithm_args`` of the Learner).
    """

    #: True when the algorithm changes local training itself (a loss term, a gradient correction, a second
    #: model): it then needs the training in the Learner's process, not in ``nproc_per_site`` torchrun workers.
    #: Set from the algorithm's ``supports_nproc_per_site`` (:func:`clara_fl.fl.site.algorithms.local_algorithm`).
    modifies_training = False

    def __init__(self, **args: Any) -> None:
        self.args = dict(args)

    def setup(self, workflow: RoundWorkflow) -> None:
        """Once, after the site's TrainWorkflow is built: wrap the loss, attach engine event handlers, ..."""

    def setup_network(self, network: torch.nn.Module) -> None:
        """Where a site builds only a network, no trainer (the cross-site validator): learn what the algorithm
        needs of it to choose :meth:`weights_to_load` (FedBN's norm layers)."""

    def weights_to_load(self, global_weights: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        """Of the server's weights, those the site loads into its network (FedBN keeps its norm layers)."""
        return global_weights

    def before_round(
        self, workflow: RoundWorkflow, global_weights: Mapping[str, np.ndarray], meta: Mapping[str, Any]
    ) -> None:
        """After the global weights are loaded, before local training; ``meta`` is the received DXO's meta."""

    def after_round(
        self, workflow: RoundWorkflow, global_weights: Mapping[str, np.ndarray], steps: int
    ) -> dict[str, Any]:
        """After local training (``steps`` iterations); returns what to add to the sent DXO's meta."""
        return {}

    def weights_to_send(self, weights: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        """Of the site's weights (or weight difference), those it sends (FedBN keeps its norm layers)."""
        return weights

    def model_for_validation(self, workflow: RoundWorkflow) -> Mapping[str, np.ndarray] | None:
        """The weights the site submits for cross-site validation instead of its best local model (Ditto's
        personalized model); None keeps the default."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """What the algorithm keeps between rounds (SCAFFOLD's control variate, Ditto's personal model), saved
        with the site's local state so a restarted site resumes it."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
