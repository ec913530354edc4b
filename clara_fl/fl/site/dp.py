"""DP-SGD at a site with Opacus, on the MMAR's own trainer, with the privacy budget accounted per case over the job.

After the MMAR's trainer is built, :class:`PrivateTraining` (wrapping the job's :class:`LocalAlgorithm`) makes the
network compatible the way Opacus documents (BatchNorm replaced by GroupNorm, in place, the GroupNorm taking over
the BatchNorm's affine parameters so the optimizer, the evaluator and the checkpoints keep pointing at the network's
parameters) and hands the trainer's network, optimizer and data loader to Opacus's ``PrivacyEngine.make_private``
without wrapping the network (``wrap_model=False``: Opacus's hooks sit on the network itself, so its state_dict keys
stay those the server and the other sites use). The trainer then trains with Opacus's optimizer (per-row clipping,
Gaussian noise) and data loader (Poisson sampling).

**The guarantee is per case.** Opacus's Poisson sampler draws the loader's items, the cases of the MMAR's training
datalist, but it clips each row of the batch the network sees, and a multi-sample transform (the spleen MMAR's
``RandCropByPosNegLabeld`` with ``num_samples: 4``) makes one item several rows (MONAI's ``list_data_collate``
flattens an item's list of samples). A case drawn with k rows moves the clipped sum by up to k x ``max_grad_norm``:
its sensitivity is k x C while the noise's standard deviation is sigma x C, so the noise multiplier per case is
sigma / k. The site therefore computes the per-case multiplier Opacus's ``get_noise_multiplier`` gives for the job's
budget over the job's whole training (rounds x steps per round, RDP accountant), trains with k times it, and
accounts every step at the per-case multiplier: the epsilon it reports is the per-case guarantee, and equals Opacus's
accountant for per-case settings. Its cost is k times the noise of a one-row-per-case loader.

k is measured, not read from a config key: it is the number of rows the first item of the training dataset gives
(a list of samples: its length; anything else: one, as ``list_data_collate`` counts them). MONAI's
``MultiSampleTrait`` cannot tell it: it also marks transforms that yield one sample (``FgBgToIndicesd``,
``ClassesToIndicesd``) and ones whose count depends on the image (``GridSplitd``, ``SplitDimd``, ``GridPatchd``
without ``num_patches``), and BYOC transforms declare nothing. Loading that item costs one case at set-up (a
``CacheDataset`` has it cached; Opacus loads the same item itself to build its loader). A guard on the loader's
collate function (:class:`RowsPerCaseGuard`, installed before Opacus builds its loader, which keeps the original
loader's ``collate_fn``) counts the rows of every item of every batch and refuses, in one line naming the train data
loader's config path, a batch in which an item gives more rows than k, before the step on that batch runs: a case is
never silently under-accounted.

The accountant's history (per-case multipliers) and k are part of the site's local state, so epsilon accumulates
over the job even when FLARE rebuilds the Learner; before each round the site checks that the round would not take
it past its budget, and refuses the round (one line in its log, the failure's kind to the server) when it would.
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
    "RowsPerCaseGuard",
    "batch_rows",
    "epsilon_spent",
    "item_rows",
    "make_dp_compatible",
    "require_opacus",
]

logger = logging.getLogger("clara_fl.fl.site")

ACCOUNTANT = "rdp"  # Opacus's RDP accountant: for the noise multiplier and for the epsilon spent
DP_EPSILON_KEY = "dp_epsilon"  # the site's spent epsilon in its train result's meta (a number)
NETWORK_PATH = "train.model"
LOADER_PATH = "train.dataloader"
#: how the local state marks an accountant history kept in per-case noise multipliers (older states: per row)
PER_CASE = "per_case"


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


def item_rows(item: Any) -> int:
    """The batch rows one loader item becomes under MONAI's ``list_data_collate``: a list (a multi-sample
    transform's samples) its length, anything else (a dict, a tuple of one sample's parts) one."""
    return len(item) if isinstance(item, list) else 1


def batch_rows(batch: Any) -> int | None:
    """The rows of a collated batch: the leading size of its first tensor; None where it holds no tensor."""
    import torch

    pending = [batch]
    while pending:
        current = pending.pop(0)
        if isinstance(current, torch.Tensor):
            return int(current.shape[0]) if current.dim() > 0 else None
        if isinstance(current, Mapping):
            pending[:0] = list(current.values())
        elif isinstance(current, (list, tuple)):
            pending[:0] = list(current)
    return None


Location = tuple[str | None, str, str]  # config file, JSON path, class name


class RowsPerCaseGuard:
    """A data loader's collate function that refuses a batch in which one item (a case) gives more rows than the
    ``rows_per_case`` the DP noise was calibrated for, or whose rows it cannot count, before the batch reaches the
    network; otherwise the wrapped ``collate_fn``'s batch.

    In a loader worker the refusal carries the loader's config item as a note line
    (:func:`~clara_fl.workflows.failures.location_note`), which the worker's traceback text takes to the main
    process, where the site's failure locator names it.

    Args:
        collate_fn: the loader's collate function.
        rows_per_case: the most rows one item may give.
        location: the train data loader's config file, JSON path and class name; None where unknown.
    """

    def __init__(self, collate_fn: Any, rows_per_case: int, location: Location | None = None) -> None:
        self.collate_fn = collate_fn
        self.rows_per_case = rows_per_case
        self.location = location

    def __call__(self, items: list[Any]) -> Any:
        rows = [item_rows(item) for item in items]
        if max(rows, default=0) > self.rows_per_case:
            raise self._refusal(
                f"a case gave {max(rows)} batch rows, more than the {self.rows_per_case} per case the DP-SGD noise "
                "was calibrated for (measured on the first case at set-up): make every case give the same number "
                "of samples (the train transforms' num_samples / num_patches)"
            )
        batch = self.collate_fn(items)
        collated = batch_rows(batch)
        if collated != sum(rows):
            raise self._refusal(
                f"cannot count the rows each case gives: {len(items)} cases of {sum(rows)} rows collated into "
                f"{collated} rows; DP-SGD needs MONAI's list_data_collate (or a collate with one row per sample)"
            )
        return batch

    def _refusal(self, message: str) -> ConfigError:
        import torch.utils.data

        from clara_fl.workflows.failures import location_note

        if self.location is None:
            return ConfigError(f"DP-SGD: {message}", path=LOADER_PATH)
        if torch.utils.data.get_worker_info() is not None:
            # a worker's exception reaches the main process as the text of its traceback: the note on a line of
            # its own after the message (exception notes are Python 3.11+)
            return ConfigError(f"DP-SGD: {message}\n{location_note(self.location, None)}")
        file, path, component = self.location
        return ConfigError(f"DP-SGD: {message}", file=file, path=path, component=component)


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
        self.rows_per_case = 0  # k: the most batch rows one case gives (measured at set-up)
        self.case_noise_multiplier = 0.0  # the noise per case, what the budget is accounted at
        self.noise_multiplier = 0.0  # Opacus's, per row: rows_per_case x the per-case one
        self.sample_rate = 0.0
        self.steps_per_round = 0
        self.history: list[tuple[float, float, int]] = []  # the accountant's (per-case multipliers), across rounds
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
        self.case_noise_multiplier = float(
            get_noise_multiplier(
                target_epsilon=self.dp.epsilon,
                target_delta=self.dp.delta,
                sample_rate=self.sample_rate,
                steps=planned,
                accountant=ACCOUNTANT,
            )
        )
        locator = getattr(workflow, "locator", None)  # a TrainWorkflow's: names the loader's config item
        location = locator.item(loader) if locator is not None else None
        self.rows_per_case = max(1, item_rows(loader.dataset[0]))
        self.noise_multiplier = self.rows_per_case * self.case_noise_multiplier
        # Opacus's loader keeps the original loader's collate function: the guard goes there before it is built
        loader.collate_fn = RowsPerCaseGuard(loader.collate_fn, self.rows_per_case, location)
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
        proximal = self._proximal_gradient()

        def step_hook(dp_optimizer: Any) -> None:
            # in place of Opacus's hook, which accounts the per-row multiplier: the per-case one
            self._accountant.step(
                noise_multiplier=self.case_noise_multiplier,
                sample_rate=self.sample_rate * dp_optimizer.accumulated_iterations,
            )
            if proximal is not None:
                proximal(network)

        optimizer.attach_step_hook(step_hook)
        trainer.optimizer = optimizer
        trainer.data_loader = private_loader
        logger.info(
            "DP at the case level: %d rows per case (%s), noise multiplier %.4f per row = %d x %.4f per case, "
            "sample rate %.4f, %d steps per round (%s accountant); %s",
            self.rows_per_case,
            f"{location[0]}: {location[1]}" if location else LOADER_PATH,
            self.noise_multiplier,
            self.rows_per_case,
            self.case_noise_multiplier,
            self.sample_rate,
            self.steps_per_round,
            ACCOUNTANT.upper(),
            self.dp.describe(),
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
            [*self.history, (self.case_noise_multiplier, self.sample_rate, self.steps_per_round)], self.dp.delta
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
        return {
            "inner": self.inner.state_dict(),
            "dp_history": history,
            "dp_accounting": PER_CASE,
            "dp_rows_per_case": self.rows_per_case,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """The inner algorithm's state and the accountant's history (after :meth:`setup`, which measures k).

        A history saved before the accounting was per case holds per-row multipliers: it is converted with the
        rows per case this site measures now (its MMAR's), so a resumed job never under-accounts its past rounds.
        """
        self.inner.load_state_dict(state.get("inner", {}))
        history = [(float(n), float(q), int(s)) for n, q, s in state.get("dp_history", [])]
        saved_rows = state.get("dp_rows_per_case")
        if history and state.get("dp_accounting") != PER_CASE:
            rows = max(1, self.rows_per_case)
            history = [(n / rows, q, s) for n, q, s in history]
            logger.warning(
                "DP-SGD: the saved privacy accounting was per batch row; re-accounted per case at %d rows per case",
                rows,
            )
        elif saved_rows is not None and int(saved_rows) != self.rows_per_case:
            logger.info(
                "DP-SGD: the saved rounds ran at %d rows per case, this one at %d (each accounted per case)",
                int(saved_rows),
                self.rows_per_case,
            )
        self.history[:] = history  # the same list object the accountant appends to


@contextmanager
def _quiet_opacus() -> Iterator[None]:
    """Opacus warns that its secure RNG is off on every engine it builds; the site logs its own settings."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        yield
