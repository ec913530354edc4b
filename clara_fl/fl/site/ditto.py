"""Ditto at a site: a personalized model, trained each round beside the global model with a pull towards it.

After the site's usual round of the global model (what it sends), the personalized model trains on the same
training data with the MMAR's own batch preparation, inferer and loss, plus FLARE's Ditto prox term
``lambda/2 * ||w_personal - w_global||^2`` (:class:`nvflare.app_opt.pt.ditto.PTDittoHelper`). It is never
sent: it lives in the site's local state (with its optimizer) and in ``models/personalized_model.pt``, and it
is what the site submits for cross-site validation, so the table shows the global model and each site's
personalized model.

The budget is the round's: unless ``personal_epochs`` is given, the personalized model trains exactly as many
iterations as the site's training of the global model ran in that round (``--local-epochs`` epochs, or
``steps_aggregation`` iterations), so it gets what every other algorithm gets.

Where it starts (``personal_start``): by default each round's personal training starts from the round's global model
(local fine-tuning with the prox pull, so the personal model never lags what the federation learned); with
``first_round`` it starts from the global model once and trains on from its own, as FLARE's Ditto and the Ditto
paper do. On short runs of sites that differ, ``first_round``'s personal model stayed far behind the global model
(``bench/personalization.py``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from monai.engines import SupervisedTrainer
from nvflare.apis.signal import Signal
from nvflare.app_opt.pt.ditto import PTDittoHelper

from clara_fl.config.errors import ConfigError
from clara_fl.fl.site.local_algorithm import LocalAlgorithm, RoundWorkflow

__all__ = ["Ditto", "TrainerDittoHelper"]

logger = logging.getLogger(__name__)

TRAINER_PARTS = ("prepare_batch", "inferer", "loss_function", "data_loader", "optimizer")
#: where each round's personal training starts: the round's global model (local fine-tuning pulled towards it), or
#: the site's personalized model of the last round (FLARE's and the Ditto paper's, from the global model only once)
EVERY_ROUND, FIRST_ROUND = "every_round", "first_round"
PERSONAL_STARTS = (EVERY_ROUND, FIRST_ROUND)


class TrainerDittoHelper(PTDittoHelper):
    """FLARE's Ditto helper whose personal training runs the MMAR trainer's own steps on the personal model.

    Args:
        trainer: the site's MONAI SupervisedTrainer (its data loader, batch preparation, inferer and loss).
        model: the personalized network.
        ditto_lambda: the weight of the prox term towards the global model.
        model_epochs: epochs of personal training per round; None: as many iterations as :meth:`local_train` is
            given (the round's).
        app_dir: the folder personalized_model.pt is written to (the MMAR's models folder).
    """

    def __init__(
        self,
        trainer: SupervisedTrainer,
        model: torch.nn.Module,
        ditto_lambda: float,
        model_epochs: int | None,
        app_dir: str,
    ) -> None:
        optimizer = trainer.optimizer
        device = trainer.state.device or torch.device("cpu")
        super().__init__(
            criterion=trainer.loss_function,
            model=model,
            optimizer=type(optimizer)(model.parameters(), **optimizer.defaults),
            device=torch.device(device),
            app_dir=app_dir,
            ditto_lambda=ditto_lambda,
            model_epochs=model_epochs or 0,
        )
        self.personal_epochs = model_epochs
        self.trainer = trainer
        #: the last :meth:`local_train`'s mean loss and mean prox term per iteration (the site's log, the bench)
        self.round_losses: dict[str, float] = {}

    def local_train(
        self,
        train_loader: Any,
        model_global: torch.nn.Module,
        abort_signal: Signal,
        writer: Any,
        round_steps: int = 0,
    ) -> int:
        """``model_epochs`` epochs of the personal model, or (``model_epochs`` None) ``round_steps`` iterations
        (passes over ``train_loader`` as long as needed); returns the iterations run."""
        if self.personal_epochs is None:
            passes = -(-round_steps // max(1, len(train_loader))) if round_steps > 0 else 0
            limit = round_steps
        else:
            passes, limit = self.personal_epochs, 0
        trainer = self.trainer
        self.model.train()
        steps, loss_sum, prox_sum = 0, 0.0, 0.0
        for _ in range(passes):
            for batch in train_loader:
                if abort_signal.triggered or (limit and steps >= limit):
                    return self._finished(steps, loss_sum, prox_sum)
                prepared = trainer.prepare_batch(batch, self.device, trainer.non_blocking, **trainer.to_kwargs)
                inputs, targets = prepared[0], prepared[1]
                args, kwargs = (prepared[2], prepared[3]) if len(prepared) == 4 else ((), {})
                self.optimizer.zero_grad()
                prediction = trainer.inferer(inputs, self.model, *args, **kwargs)
                loss = self.criterion(prediction, targets).mean()
                prox = self.prox_criterion(self.model, model_global)
                (loss + prox).backward()
                self.optimizer.step()
                steps += 1
                loss_sum, prox_sum = loss_sum + float(loss.detach()), prox_sum + float(prox.detach())
            self.epoch_global += 1
        return self._finished(steps, loss_sum, prox_sum)

    def _finished(self, steps: int, loss_sum: float, prox_sum: float) -> int:
        if steps:
            self.round_losses = {"loss": loss_sum / steps, "prox": prox_sum / steps}
        return steps


class Ditto(LocalAlgorithm):
    """Ditto's site side.

    Args:
        args: ``lambda``, the weight of the prox term towards the global model (FLARE's ``ditto_lambda``), and
            ``personal_epochs``, epochs of personal training per round; absent or None: as many iterations as the
            round's training of the global model ran; ``personal_start``, ``every_round`` (default: each round's
            personal training starts from the round's global model) or ``first_round`` (from the global model once,
            then from the last round's personal model) (``lambda`` is a Python keyword, so they arrive as keywords
            of a mapping, checked by the algorithm's parameters in :mod:`clara_fl.fl.algorithms`).

    Raises:
        ConfigError: ``personal_start`` is neither ``every_round`` nor ``first_round``.
    """

    def __init__(self, **args: float | str | None) -> None:
        super().__init__(**args)
        self.ditto_lambda = float(args["lambda"])  # type: ignore[arg-type]
        epochs = args.get("personal_epochs")
        self.personal_epochs = None if epochs is None else int(epochs)
        self.personal_start = str(args.get("personal_start") or EVERY_ROUND)
        if self.personal_start not in PERSONAL_STARTS:
            raise ConfigError(
                f"personal_start must be one of {', '.join(PERSONAL_STARTS)}, got {self.personal_start!r}",
                path="algorithm_args.personal_start",
            )
        self.helper: TrainerDittoHelper | None = None
        self.reference: torch.nn.Module | None = None
        self.started = False
        self._pending: dict[str, Any] = {}

    def setup(self, workflow: RoundWorkflow) -> None:
        """Build the personal and reference networks beside the site's network.

        Raises:
            ConfigError: the MMAR's trainer lacks a data loader, batch preparation, inferer, loss or optimizer.
        """
        from clara_fl.fl.site.weights import unwrap

        trainer = workflow.trainer
        missing = [part for part in TRAINER_PARTS if getattr(trainer, part, None) is None]
        if missing:
            raise ConfigError(
                f"ditto needs a supervised trainer; {type(trainer).__name__} has no {', '.join(missing)}",
                path="train.trainer",
            )
        network = unwrap(workflow.network)
        try:
            self.helper = TrainerDittoHelper(
                trainer, copy.deepcopy(network), self.ditto_lambda, self.personal_epochs, workflow.ckpt_dir
            )
        except ValueError as e:  # PTDittoHelper checks the loss and optimizer types
            raise ConfigError(f"ditto: {e}", path="train") from e
        self.reference = copy.deepcopy(network).requires_grad_(False)
        if self._pending:
            self.load_state_dict(self._pending)

    def before_round(
        self, workflow: RoundWorkflow, global_weights: Mapping[str, np.ndarray], meta: Mapping[str, Any]
    ) -> None:
        from clara_fl.fl.site.weights import load_global_weights

        assert self.helper is not None and self.reference is not None
        load_global_weights(self.reference, global_weights)
        if self.personal_start == EVERY_ROUND:
            # fine-tuning: the personal model restarts from the round's global model (its optimizer state kept, as
            # the site's trainer keeps its own when the global weights are loaded)
            self.helper.model.load_state_dict(self.reference.state_dict())
            self.started = True
        elif not self.started:
            # the first round: personalized_model.pt of an earlier run of this job, else the global model
            self.helper.load_model(self.reference.state_dict())
            self.started = True

    def after_round(
        self, workflow: RoundWorkflow, global_weights: Mapping[str, np.ndarray], steps: int
    ) -> dict[str, Any]:
        assert self.helper is not None and self.reference is not None
        personal_steps = self.helper.local_train(
            self.helper.trainer.data_loader, self.reference, Signal(), None, round_steps=steps
        )
        self.helper.save_model()
        budget = "the round's" if self.personal_epochs is None else f"{self.personal_epochs} epoch(s)"
        losses = self.helper.round_losses
        logger.info(
            f"ditto: personalized model trained {personal_steps} iterations ({budget}; lambda {self.ditto_lambda}; "
            f"mean loss {losses.get('loss', float('nan')):.4f}, prox term {losses.get('prox', float('nan')):.4f}), "
            f"saved to {self.helper.model_file_path}"
        )
        return {"ditto_personal_steps": personal_steps}

    @property
    def round_losses(self) -> dict[str, float]:
        """The last round's mean loss and prox term per iteration of personal training (empty before one)."""
        return dict(self.helper.round_losses) if self.helper is not None else {}

    def model_for_validation(self, workflow: RoundWorkflow) -> Mapping[str, np.ndarray] | None:
        """The personalized model, once it exists."""
        if not self.started or self.helper is None:
            return None
        return {k: v.detach().cpu().numpy().copy() for k, v in self.helper.model.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        if not self.started or self.helper is None:
            return {}
        return {
            "personal_model": self.helper.model.state_dict(),
            "personal_optimizer": self.helper.optimizer.state_dict(),
            "personal_epochs_done": self.helper.epoch_global,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        if self.helper is None:  # restored before setup: applied by setup
            self._pending = dict(state)
            return
        self.helper.model.load_state_dict(state["personal_model"])
        self.helper.optimizer.load_state_dict(state["personal_optimizer"])
        self.helper.epoch_global = int(state["personal_epochs_done"])
        self.started = True
        self._pending = {}
