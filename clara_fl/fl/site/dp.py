"""DP-SGD at a site with Opacus, on the MMAR's own trainer, with the privacy budget accounted over the whole job.

After the MMAR's trainer is built, :class:`PrivateTraining` (wrapping the job's :class:`LocalAlgorithm`) makes the
network compatible the way Opacus documents (BatchNorm replaced by GroupNorm, in place, the GroupNorm taking over
the BatchNorm's affine parameters so the optimizer, the evaluator and the checkpoints keep pointing at the network's
parameters) and hands the trainer's network, optimizer and data loader to Opacus's ``PrivacyEngine.make_private``
without wrapping the network (``wrap_model=False``: Opacus's hooks sit on the network itself, so its state_dict keys
stay those the server and the other sites use). The trainer then trains with Opacus's optimizer (per-sample
clipping, Gaussian noise) and data loader (Poisson sampling). The noise multiplier is the one Opacus computes for the
job's budget over the job's whole training (rounds x steps per round, RDP accountant).

The accountant's history is part of the site's local state, so epsilon accumulates over the job even when FLARE
rebuilds the Learner; before each round the site checks that the round would not take it past its budget, and
refuses the round (one line in its log, the failure's kind to the server) when it would.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from clara_fl.config.errors import ConfigError
from clara_fl.fl.dp_settings import DPSettings
from clara_fl.fl.site.local_algorithm import LocalAlgorithm, RoundWorkflow

if TYPE_CHECKING:
    import torch

    from clara_fl.workflows.round import RoundSpec

__all__ = [
    "ACCOUNTANT",
    "DP_EPSILON_KEY",
    "DPBudgetSpent",
    "PrivateTraining",
    "epsilon_spent",
    "make_dp_compatible",
    "require_opacus",
]

logger = logging.getLogger("clara_fl.fl.site")

ACCOUNTANT = "rdp"  # Opacus's RDP accountant: for the noise multiplier and for the epsilon spent
DP_EPSILON_KEY = "dp_epsilon"  # the site's spent epsilon in its train result's meta (a number)
NETWORK_PATH = "train.model"


class DPBudgetSpent(Exception):
    """A round would take the site's spent epsilon past the job's budget: the site trains no more for this job."""


def require_opacus() -> Any:
    """The opacus module.

    Raises:
        ConfigError: opacus is not installed (one line naming the extra).
    """
    try:
        import opacus
    except ImportError:
        raise ConfigError("DP-SGD needs Opacus at this site: pip install clara-fl[dp]", path="dp") from None
    return opacus


def make_dp_compatible(network: torch.nn.Module, where: str = NETWORK_PATH) -> list[str]:
    """Make ``network`` trainable by Opacus in place; returns one line per kind of layer replaced.

    BatchNorm layers become GroupNorm (Opacus's documented fix, its own fixer), each GroupNorm taking over the
    BatchNorm's affine parameters (same shapes, same objects); any other layer Opacus refuses is refused here.

    Raises:
        ConfigError: a layer Opacus cannot train with DP-SGD and has no documented fix for, naming it.
    """
    require_opacus()
    import torch
    from opacus.validators import ModuleValidator

    batch_norms = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm)
    replaced: Counter[str] = Counter()
    groups: dict[str, set[int]] = {}
    for name, module in list(network.named_modules()):
        if not name or not isinstance(module, batch_norms):
            continue
        fixer = ModuleValidator.FIXERS[type(module)]
        with _quiet_opacus():
            fixed = fixer(module)
        if module.affine:
            fixed.weight, fixed.bias = module.weight, module.bias  # the optimizer keeps its parameters
        else:
            fixed.to(next(iter(module.buffers())).device)
        network.set_submodule(name, fixed)
        replaced[type(module).__name__] += 1
        groups.setdefault(type(module).__name__, set()).add(int(fixed.num_groups))
    for name, module in network.named_modules():
        validator = ModuleValidator.VALIDATORS.get(type(module))
        if validator is None or not any(p.requires_grad for p in module.parameters(recurse=False)):
            continue
        errors = validator(module)
        if errors:
            reason = str(errors[0]).split(". ")[0].strip().rstrip(".")
            raise ConfigError(
                f"layer '{name or type(module).__name__}' ({type(module).__name__}) cannot train with DP-SGD: {reason}",
                path=where,
            )
    return [
        f"DP-SGD: {count} {kind} layer(s) of {where} replaced by GroupNorm "
        f"({'/'.join(str(g) for g in sorted(groups[kind]))} groups), as Opacus documents"
        for kind, count in sorted(replaced.items())
    ]


def epsilon_spent(history: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon at ``delta`` after ``history`` (Opacus accountant history: (noise multiplier, sample rate, steps))."""
    require_opacus()
    from opacus.accountants import create_accountant

    accountant = create_accountant(ACCOUNTANT)
    accountant.history = list(history)
    return float(accountant.get_epsilon(delta)) if history else 0.0


class PrivateTraining(LocalAlgorithm):
    """The job's algorithm at the site (``inner``), trained with DP-SGD.

    Args:
        inner: the job's algorithm at the site (FedAvg, FedProx, ...).
        dp: the job's DP settings.
        spec: the site's round (epochs or steps per round).
    """

    def __init__(self, inner: LocalAlgorithm, dp: DPSettings, spec: RoundSpec) -> None:
        super().__init__(**inner.args)
        self.inner = inner
        self.dp = dp
        self.spec = spec
        self.modifies_training = True  # Opacus's optimizer and loader live in the Learner's process
        self.noise_multiplier = 0.0
        self.sample_rate = 0.0
        self.steps_per_round = 0
        self.history: list[tuple[float, float, int]] = []  # the accountant's, kept across rounds
        self._accountant: Any = None

    # -- set-up ----------------------------------------------------------------------------------

    def setup(self, workflow: RoundWorkflow) -> None:
        """Fix the network, set the inner algorithm up, then hand the trainer's parts to Opacus.

        Raises:
            ConfigError: a layer Opacus cannot train, AMP on a GPU, or opacus missing.
        """
        import torch

        from clara_fl.fl.site.weights import unwrap

        require_opacus()
        from opacus import PrivacyEngine
        from opacus.accountants.utils import get_noise_multiplier

        trainer = workflow.trainer
        network = unwrap(workflow.network)
        if getattr(trainer, "amp", False) and getattr(trainer.state.device, "type", "cpu") == "cuda":
            raise ConfigError("DP-SGD does not run with AMP (Opacus clips unscaled per-sample gradients)", path="amp")
        for line in make_dp_compatible(network):
            logger.info(line)
        self.inner.setup(workflow)
        loader = trainer.data_loader
        if not isinstance(loader, torch.utils.data.DataLoader):
            raise ConfigError(
                "DP-SGD needs the trainer's data loader to be a torch DataLoader", path="train.dataloader"
            )
        batches = len(loader)
        self.sample_rate = 1.0 / batches
        self.steps_per_round = self.spec.steps or self.spec.local_epochs * batches
        planned = self.steps_per_round * self.dp.rounds
        self.noise_multiplier = float(
            get_noise_multiplier(
                target_epsilon=self.dp.epsilon,
                target_delta=self.dp.delta,
                sample_rate=self.sample_rate,
                steps=planned,
                accountant=ACCOUNTANT,
            )
        )
        network.train()  # Opacus validates a network in training mode
        with _quiet_opacus():
            engine = PrivacyEngine(accountant=ACCOUNTANT)
            _, optimizer, private_loader = engine.make_private(
                module=network,
                optimizer=trainer.optimizer,
                data_loader=loader,
                noise_multiplier=self.noise_multiplier,
                max_grad_norm=self.dp.max_grad_norm,
                poisson_sampling=True,
                wrap_model=False,
                # Poisson sampling may draw no sample; a normalization layer cannot take an empty batch, so Opacus
                # puts one random (data-free) sample there: the step is still clipped, noised and accounted
                rand_on_empty=True,
            )
        self._accountant = engine.accountant
        self._accountant.history = self.history
        accounting = optimizer.step_hook
        proximal = self._proximal_gradient()

        def step_hook(dp_optimizer: Any) -> None:
            accounting(dp_optimizer)
            if proximal is not None:
                proximal(network)

        optimizer.attach_step_hook(step_hook)
        trainer.optimizer = optimizer
        trainer.data_loader = private_loader
        logger.info(
            "%s; noise multiplier %.4f, sample rate %.4f, %d steps per round (%s accountant)",
            self.dp.describe(),
            self.noise_multiplier,
            self.sample_rate,
            self.steps_per_round,
            ACCOUNTANT.upper(),
        )

    def _proximal_gradient(self) -> Any:
        """FedProx's proximal term is data-independent: its gradient ``mu * (w - w_global)`` is added after Opacus's
        clipping and noise (Opacus replaces the gradient the loss's backward left with the noised per-sample one)."""
        from clara_fl.fl.site.fedprox import FedProx

        inner = self.inner
        if not isinstance(inner, FedProx):
            return None
        mu = float(inner.args["mu"])

        def add(network: torch.nn.Module) -> None:
            import torch

            if inner.reference is None or mu == 0:
                return
            with torch.no_grad():
                for p, r in zip(network.parameters(), inner.reference.parameters(), strict=True):
                    if p.grad is not None:
                        p.grad.add_(p - r, alpha=mu)

        return add

    def setup_network(self, network: torch.nn.Module) -> None:
        for line in make_dp_compatible(network):
            logger.info(line)
        self.inner.setup_network(network)

    # -- rounds ----------------------------------------------------------------------------------

    def epsilon(self) -> float:
        """The epsilon the site has spent so far in this job (at the job's delta)."""
        return epsilon_spent(self.history, self.dp.delta)

    def before_round(
        self, workflow: RoundWorkflow, global_weights: Mapping[str, np.ndarray], meta: Mapping[str, Any]
    ) -> None:
        """Refuse the round when it would take the spent epsilon past the budget.

        Raises:
            DPBudgetSpent: the round would exceed the budget.
        """
        projected = epsilon_spent(
            [*self.history, (self.noise_multiplier, self.sample_rate, self.steps_per_round)], self.dp.delta
        )
        if projected > self.dp.epsilon:
            raise DPBudgetSpent(
                f"privacy budget spent: epsilon {self.epsilon():.3f} of {self.dp.epsilon:g} (delta {self.dp.delta:g}) "
                f"used, and another round would reach {projected:.3f}; this site trains no more for this job"
            )
        self.inner.before_round(workflow, global_weights, meta)

    def after_round(
        self, workflow: RoundWorkflow, global_weights: Mapping[str, np.ndarray], steps: int
    ) -> dict[str, Any]:
        out = dict(self.inner.after_round(workflow, global_weights, steps))
        spent = self.epsilon()
        logger.info(
            "DP-SGD: epsilon %.4f spent of %g (delta %g) after %d private steps",
            spent,
            self.dp.epsilon,
            self.dp.delta,
            sum(int(h[2]) for h in self.history),
        )
        out[DP_EPSILON_KEY] = spent
        return out

    # -- the rest is the inner algorithm's ---------------------------------------------------------

    def weights_to_load(self, global_weights: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        return self.inner.weights_to_load(global_weights)

    def weights_to_send(self, weights: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        return self.inner.weights_to_send(weights)

    def model_for_validation(self, workflow: RoundWorkflow) -> Mapping[str, np.ndarray] | None:
        return self.inner.model_for_validation(workflow)

    def state_dict(self) -> dict[str, Any]:
        history = [[float(n), float(q), int(s)] for n, q, s in self.history]
        return {"inner": self.inner.state_dict(), "dp_history": history}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.inner.load_state_dict(state.get("inner", {}))
        # the same list object the accountant appends to
        self.history[:] = [(float(n), float(q), int(s)) for n, q, s in state.get("dp_history", [])]


@contextmanager
def _quiet_opacus() -> Iterator[None]:
    """Opacus warns that its secure RNG is off on every engine it builds; the site logs its own settings."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        yield
