"""FedOpt at the server: FLARE's FedOpt shareable generator on the MMAR's network, BatchNorm buffers averaged.

FLARE's :class:`PTFedOptModelShareableGenerator` treats the averaged weight difference as a gradient for a
server optimizer over the network's parameters and averages everything else (BatchNorm running statistics,
``num_batches_tracked``; FLARE issue 1718). Around it, this class:

* takes the network from the job's persistor (the MMAR's ``train.model``, built once on the server) rather
  than a model component the job would have to name;
* builds the optimizer and LR scheduler itself, from a closed set of choices: FLARE's ``build_component``
  would need ``torch.optim`` classes on every server's class allow-list;
* loads the current global model into the server network before each step, so the step starts from the
  global weights even when the persistor started from a checkpoint, and keys a site did not send keep
  the global value, not the server network's stale one;
* returns copies (FLARE returns the network's own tensors as numpy views, which the next step would
  change under the persisted global model) and keeps integer buffers integers.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.learnable import Learnable
from nvflare.app_common.abstract.model import ModelLearnableKey
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_opt.pt.fedopt import PTFedOptModelShareableGenerator

__all__ = ["FEDOPT_OPTIMIZERS", "FedOptShareableGenerator"]

FEDOPT_OPTIMIZERS = {"sgd": "torch.optim.SGD", "adam": "torch.optim.Adam"}
COSINE_SCHEDULER = "torch.optim.lr_scheduler.CosineAnnealingLR"


class FedOptShareableGenerator(PTFedOptModelShareableGenerator):
    """The server's FedOpt step on the global model of the job's persistor.

    Args:
        server_optimizer: ``sgd`` or ``adam``.
        lr: the server learning rate (1.0 with SGD and no momentum is FedAvg).
        momentum: SGD's momentum (unused by Adam).
        cosine_rounds: when set, a cosine LR schedule from ``lr`` to 0 over that many rounds.
        persistor_id: the component whose ``model`` is the global network (ClaraModelPersistor).
        server_device: where the server step runs.

    Raises:
        ValueError: a server_optimizer other than sgd or adam.
    """

    def __init__(
        self,
        server_optimizer: str = "sgd",
        lr: float = 1.0,
        momentum: float = 0.0,
        cosine_rounds: int | None = None,
        persistor_id: str = "persistor",
        server_device: str = "cpu",
    ) -> None:
        if server_optimizer not in FEDOPT_OPTIMIZERS:
            valid = ", ".join(FEDOPT_OPTIMIZERS)
            raise ValueError(f"FedOpt server_optimizer must be one of {valid}, got {server_optimizer!r}")
        optimizer_args: dict[str, Any] = {"lr": float(lr)}
        if server_optimizer == "sgd":
            optimizer_args["momentum"] = float(momentum)
        scheduler = {"path": COSINE_SCHEDULER, "args": {"T_max": int(cosine_rounds)}} if cosine_rounds else None
        super().__init__(
            optimizer_args={"path": FEDOPT_OPTIMIZERS[server_optimizer], "args": optimizer_args},
            lr_scheduler_args=scheduler,
            source_model=persistor_id,
            device=server_device,
        )
        # FedJob exports a component's arguments from attributes of the same names
        self.server_optimizer = server_optimizer
        self.lr = lr
        self.momentum = momentum
        self.cosine_rounds = cosine_rounds
        self.persistor_id = persistor_id
        self.server_device = server_device

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        # The persistor builds its network at START_RUN too, in an order we do not control: set up on first use.
        if event_type != EventType.START_RUN:
            super().handle_event(event_type, fl_ctx)

    def _set_up(self, fl_ctx: FLContext) -> bool:
        """The server network (a copy of the persistor's), its optimizer and LR scheduler; False after a panic."""
        persistor = fl_ctx.get_engine().get_component(self.persistor_id)
        network = getattr(persistor, "model", None)
        if not isinstance(network, torch.nn.Module):
            self.system_panic(f"FedOpt needs the global network from component '{self.persistor_id}'", fl_ctx)
            return False
        self.device = torch.device(self.server_device or "cpu")
        self.model = copy.deepcopy(network).to(self.device)
        path, args = self.optimizer_args["path"], self.optimizer_args.get("args", {})
        self.optimizer_name = path
        optimizer_class = torch.optim.SGD if path == FEDOPT_OPTIMIZERS["sgd"] else torch.optim.Adam
        self.optimizer = optimizer_class(self.model.parameters(), **args)
        if self.lr_scheduler_args is not None:
            self.lr_scheduler_name = self.lr_scheduler_args["path"]
            self.lr_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                self.optimizer, **self.lr_scheduler_args["args"]
            )
        return True

    def _load_global(self, weights: Mapping[str, Any]) -> None:
        """Copy the current global model into the server network (parameters and buffers)."""
        state = self.model.state_dict()
        with torch.no_grad():
            for key, value in weights.items():
                if key in state and tuple(np.shape(value)) == tuple(state[key].shape):
                    state[key].copy_(torch.as_tensor(np.asarray(value)))

    def server_update(self, model_diff: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], list[str]]:
        state, updated = super().server_update(model_diff)
        return {key: value.detach().clone() for key, value in state.items()}, updated

    def shareable_to_learnable(self, shareable: Shareable, fl_ctx: FLContext) -> Learnable:
        if self.optimizer is None and not self._set_up(fl_ctx):
            return Learnable()
        base = fl_ctx.get_prop(AppConstants.GLOBAL_MODEL)
        if base and base.get(ModelLearnableKey.WEIGHTS):
            self._load_global(base[ModelLearnableKey.WEIGHTS])
        learnable = super().shareable_to_learnable(shareable, fl_ctx)
        weights = learnable.get(ModelLearnableKey.WEIGHTS) if learnable else None
        if weights:
            self._keep_integer_buffers(weights)
        return learnable

    def _keep_integer_buffers(self, weights: dict[str, Any]) -> None:
        """Averaging turns ``num_batches_tracked`` into a float; round it back to the network's integer type."""
        for key, tensor in self.model.state_dict().items():
            if key in weights and not (tensor.is_floating_point() or tensor.is_complex()):
                value = weights[key]
                if isinstance(value, torch.Tensor):
                    weights[key] = torch.round(value.double()).to(tensor.dtype)
                else:
                    integer_type = torch.empty(0, dtype=tensor.dtype).numpy().dtype
                    weights[key] = np.rint(np.asarray(value, dtype=np.float64)).astype(integer_type)
