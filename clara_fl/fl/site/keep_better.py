"""A site keeps, for its own use, the better of the global model and its own model (``keep_better_model``).

After each round the site scores, on its own validation data (the MMAR's evaluator, as the round's validation
does), the global model it received and its personalized model (Ditto's personal model; for any other algorithm
the site's model after its local training, which for FedBN holds the site's own norm layers). The better one, by
the evaluator's key metric (higher is better, as MONAI's CheckpointSaver keeps it), becomes the site's kept model
``models/site_best_model.pt`` when it beats the one kept in an earlier round. The final global model, which no
round started from, gets the same step when the site validates it after the last round
(:meth:`~clara_fl.fl.site.local_training.LocalTraining.keep_better_with`). What is recorded of it (the site's
events, ``clara-fl report``) is only the metric's name, the two scores and which model won: nothing identifying.

The kept model is the site's own: it is not sent to the server and not what the site submits for cross-site
validation.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np

__all__ = ["GLOBAL", "KEPT_MODEL_FILE", "PERSONALIZED", "KeepBetter", "KeptChoice", "keep_better_after_round"]

logger = logging.getLogger("clara_fl.fl.site")

KEPT_MODEL_FILE = "site_best_model.pt"
Winner = Literal["global", "personalized"]
GLOBAL: Final = "global"
PERSONALIZED: Final = "personalized"


@dataclass(frozen=True)
class KeptChoice:
    """One round's comparison at a site.

    Args:
        metric: the key metric's name.
        global_score: the global model's score on the site's validation data.
        personal_score: the personalized model's.
        winner: the better of the two (the global model on a tie).
        kept: whether the winner became the kept model (it beat the model kept before).
        kept_score: the kept model's score after this round.
    """

    metric: str
    global_score: float
    personal_score: float
    winner: Winner
    kept: bool
    kept_score: float

    def fields(self) -> dict[str, str | float | int]:
        """The choice as a site event's fields: the metric's name, numbers and the winner's kind only."""
        return {
            "metric": self.metric,
            "global": self.global_score,
            "personalized": self.personal_score,
            "winner": self.winner,
            "kept": int(self.kept),
            "kept_score": self.kept_score,
        }


class KeepBetter:
    """The site's kept model in ``path``: the better of two candidates each round, if it beats the kept one.

    Args:
        path: the kept model's file (``models/site_best_model.pt``); its score survives a restarted site.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def kept_score(self) -> float | None:
        """The score of the model kept in an earlier round (None: none kept yet)."""
        from clara_fl.runtime.checkpoint import load_checkpoint

        if not os.path.isfile(self.path):
            return None
        saved = load_checkpoint(self.path)
        score = saved.get("score") if isinstance(saved, Mapping) else None
        return float(score) if isinstance(score, (int, float)) else None

    def choose(
        self,
        metric: str,
        global_weights: Mapping[str, np.ndarray],
        personal_weights: Mapping[str, np.ndarray],
        score: Callable[[Mapping[str, np.ndarray]], float],
        global_score: float | None = None,
    ) -> KeptChoice:
        """Score both models with ``score`` and keep the better when it beats the kept one.

        Args:
            metric: the name of what ``score`` returns (the key metric).
            global_weights: the global model, as the site evaluates it.
            personal_weights: the site's personalized model.
            score: the key metric of weights on the site's validation data.
            global_score: the global model's score where the site has just measured it; None: scored here.
        """
        from clara_fl.runtime.checkpoint import save_atomic

        if global_score is None:
            global_score = score(global_weights)
        global_score, personal_score = float(global_score), float(score(personal_weights))
        winner: Winner = PERSONALIZED if personal_score > global_score else GLOBAL
        best = max(global_score, personal_score)
        before = self.kept_score()
        kept = before is None or best > before
        if kept:
            weights = personal_weights if winner == PERSONALIZED else global_weights
            save_atomic({"model": _tensors(weights), "score": best, "metric": metric, "source": winner}, self.path)
        return KeptChoice(metric, global_score, personal_score, winner, kept, best if kept else float(before or 0.0))


def _tensors(weights: Mapping[str, Any]) -> dict[str, Any]:
    import torch

    return {k: torch.as_tensor(np.asarray(v)).clone() for k, v in weights.items()}


def keep_better_after_round(
    training: Any, global_weights: Mapping[str, np.ndarray], global_metrics: Mapping[str, float] | None = None
) -> KeptChoice | None:
    """After a round of ``training`` (a :class:`~clara_fl.fl.site.local_training.LocalTraining`): compare the global
    model of the round with the site's personalized model and keep the better; None when the MMAR's evaluator
    has no key metric (nothing to compare by). ``global_metrics``: what the site's validation just measured for the
    global model as it uses it, which is then not validated again.
    """
    from clara_fl.fl.site.weights import network_weights

    workflow = training.workflow
    evaluator = workflow.evaluator
    metric = getattr(getattr(evaluator, "state", None), "key_metric_name", None)
    if evaluator is None or not metric:
        logger.warning("keep_better_model: the MMAR's evaluator has no key metric; nothing kept")
        return None
    own = network_weights(workflow.network)
    # the global model as this site uses it: the layers the algorithm keeps local (FedBN's norm layers) its own
    as_used = {**own, **training.site_algorithm.weights_to_load(global_weights)}
    personal = training.site_algorithm.model_for_validation(workflow) or own

    def score(weights: Mapping[str, np.ndarray]) -> float:
        metrics = training.validate("WEIGHTS", weights, "model_validate") or {}
        return float(metrics[metric])

    keeper = KeepBetter(os.path.join(workflow.ckpt_dir, KEPT_MODEL_FILE))
    known = (global_metrics or {}).get(metric)
    choice = keeper.choose(metric, as_used, personal, score, None if known is None else float(known))
    logger.info(
        "keep_better_model: %s global %.4f, personalized %.4f: the %s model is better%s",
        metric,
        choice.global_score,
        choice.personal_score,
        choice.winner,
        f", kept in {keeper.path}" if choice.kept else f" but not than the kept one ({choice.kept_score:.4f})",
    )
    return choice
