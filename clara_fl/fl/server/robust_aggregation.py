"""Robust aggregation (``--aggregator``) as FLARE aggregation on the server, for both job templates.

The rules are :mod:`clara_fl.fl.server.robust_rules`; here two thin adapters feed them the round's updates:

* :class:`RobustAggregator`, a FLARE ``Aggregator`` (``accept``/``aggregate``), the ScatterAndGather template's
  ``aggregator`` component in place of ``InTimeAccumulateWeightedAggregator``;
* :class:`RobustModelAggregator`, a FLARE ``ModelAggregator`` (``accept_model``/``aggregate_model``), given to the
  ModelController template's FedAvg as its ``aggregator`` argument.

Both apply the rule to what the sites send (WEIGHTS or WEIGHT_DIFF), variable by variable, after the checks that
come first: a NaN/Inf update never gets here (the server's ``RejectNonFiniteUpdates`` result filter refuses it), and
an update whose variables or shapes differ from the other sites' is refused before the rule runs. Each round the
server log says which rule aggregated which sites and which sites it left out or down-weighted (site names and Krum
scores only). A round with fewer updates than the rule needs leaves the global model unchanged, with an error line.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_constant import ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.aggregator import Aggregator
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.aggregators.model_aggregator import ModelAggregator
from nvflare.app_common.app_constant import AppConstants

from clara_fl.fl.server.robust_rules import RobustRule, RuleError, parse_rule

__all__ = ["RobustAggregator", "RobustModelAggregator", "RoundOfUpdates", "RoundOutcome"]


@dataclass
class RoundOutcome:
    """What a round's aggregation gives: the aggregate and the server log's lines about it.

    Args:
        params: the aggregate (variables matching ``exclude_vars`` left out: the global model keeps them).
        unchanged: the rule could not run; ``params`` is a zero difference (the global model stays as it was).
        info: lines for the log at info level.
        warnings: lines for the log at warning level (sites left out, updates refused).
        errors: lines for the log at error level (a round the rule could not aggregate).
    """

    params: dict[str, np.ndarray]
    unchanged: bool = False
    info: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class _Update:
    site: str
    params: dict[str, np.ndarray]
    weight: float


class RoundOfUpdates:
    """The updates of one round, as either adapter receives them, and the rule applied to them.

    Args:
        rule: the rule (``--aggregator``).
        exclude_vars: a regular expression; matching variables are left out of the aggregate (FLARE's aggregators'
            ``exclude_vars``).
        aggregation_weights: a weight per site, multiplied with its steps (used by MultiKrum's mean only).
    """

    def __init__(
        self, rule: RobustRule, exclude_vars: str | None = None, aggregation_weights: dict[str, float] | None = None
    ) -> None:
        self.rule = rule
        self._exclude = re.compile(exclude_vars) if exclude_vars else None
        self._aggregation_weights = dict(aggregation_weights or {})
        self._updates: list[_Update] = []
        self._lock = threading.Lock()

    def sites(self) -> list[str]:
        """The sites whose update this round holds, in the order they arrived."""
        with self._lock:
            return [u.site for u in self._updates]

    def add(self, site: str, params: Any, steps: Any) -> str | None:
        """Keep ``site``'s update; returns why it is refused instead (a second update of the site, no variables).

        Args:
            site: the site's name.
            params: its update, variable name -> array.
            steps: the training steps it reports (``NUM_STEPS_CURRENT_ROUND``; missing or invalid counts as 1).
        """
        if not isinstance(params, dict) or not params:
            return f"the update from {site} holds no variables"
        kept = {str(k): np.asarray(v) for k, v in params.items() if not (self._exclude and self._exclude.search(k))}
        with self._lock:
            if any(u.site == site for u in self._updates):
                return f"a second update from {site} in one round"
            weight = _steps(steps) * float(self._aggregation_weights.get(site, 1.0))
            self._updates.append(_Update(site, kept, weight))
        return None

    def reset(self) -> None:
        """Forget the round's updates."""
        with self._lock:
            self._updates = []

    def finish(self, round_number: Any) -> RoundOutcome:
        """The rule applied to the round's updates (then forgotten): refused layouts first, then the rule."""
        with self._lock:
            updates, self._updates = self._updates, []
        # By site name, not arrival order: the result must not depend on which site answered first (MultiKrum's ties
        # at its m-th score keep the first; sums run in one order).
        updates.sort(key=lambda u: u.site)
        spec = self.rule.spec
        if not updates:
            return RoundOutcome({}, unchanged=True, errors=[f"round {round_number}: {spec} got no update to aggregate"])
        updates, refused = _same_layout(updates)
        outcome = RoundOutcome({})
        for site in refused:
            outcome.warnings.append(
                f"round {round_number}: refused the update from {site}: its variables or shapes differ from the "
                f"other sites' ({len(updates)} of {len(updates) + len(refused)} agree)"
            )
        try:
            result = self.rule.combine([u.params for u in updates], [u.weight for u in updates])
        except RuleError as e:
            outcome.unchanged = True
            outcome.params = {k: np.zeros_like(v) for k, v in updates[0].params.items()}
            outcome.errors.append(f"round {round_number}: {e}: the global model is left unchanged this round")
            return outcome
        outcome.params = result.params
        names = [u.site for u in updates]
        if result.scores:
            chosen = [names[i] for i in result.selected]
            left_out = [name for name in names if name not in chosen]
            scores = ", ".join(f"{names[i]} {result.scores[i]:.4g}" for i in np.argsort(result.scores, kind="stable"))
            tied = " (tied for the best score: their mean)" if self.rule.name == "krum" and len(chosen) > 1 else ""
            outcome.info.append(
                f"round {round_number}: {spec} over {len(names)} sites selected {', '.join(chosen)}{tied} "
                f"(Krum scores, smaller is more central: {scores})"
            )
            if left_out:
                outcome.warnings.append(f"round {round_number}: {spec} left out {', '.join(left_out)}")
        else:
            shares = ", ".join(
                f"{names[i]} {result.cut_share[i]:.0%}"
                for i in np.argsort(-np.asarray(result.cut_share), kind="stable")
            )
            what = "coordinate-wise median" if self.rule.name == "median" else "coordinate-wise trimmed mean"
            outcome.info.append(
                f"round {round_number}: {spec} ({what}) of {len(names)} sites, cutting {result.cut_per_end} value(s) "
                f"at each end of every coordinate; down-weighted (share of its values cut): {shares}"
            )
            if result.cut_per_end == 0:
                outcome.warnings.append(
                    f"round {round_number}: {spec} cuts nothing with {len(names)} sites (beta*n < 1): the plain mean"
                )
        return outcome


def _steps(value: Any) -> float:
    try:
        steps = float(value)
    except (TypeError, ValueError):
        return 1.0
    return steps if np.isfinite(steps) and steps > 0 else 1.0


def _layout(update: _Update) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return tuple(sorted((k, tuple(np.shape(v))) for k, v in update.params.items()))


def _same_layout(updates: list[_Update]) -> tuple[list[_Update], list[str]]:
    """The updates with the most common variables and shapes (the first to arrive wins a tie), and the sites whose
    updates differ from them."""
    layouts = [_layout(u) for u in updates]
    counts = Counter(layouts)
    top = max(counts.values())
    reference = next(layout for layout in layouts if counts[layout] == top)
    kept = [u for u, layout in zip(updates, layouts, strict=True) if layout == reference]
    refused = [u.site for u, layout in zip(updates, layouts, strict=True) if layout != reference]
    return kept, refused


def _log_outcome(component: Aggregator, fl_ctx: FLContext | None, outcome: RoundOutcome) -> None:
    for line in outcome.info:
        component.log_info(fl_ctx, line)
    for line in outcome.warnings:
        component.log_warning(fl_ctx, line, fire_event=fl_ctx is not None)
    for line in outcome.errors:
        component.log_error(fl_ctx, line, fire_event=fl_ctx is not None)


class RobustAggregator(Aggregator):
    """A robust rule as the ScatterAndGather template's aggregator (in place of
    ``InTimeAccumulateWeightedAggregator``): takes the round's updates, applies the rule when the round ends.

    Args:
        rule: the rule, as ``--aggregator`` takes it (``median``, ``trimmed_mean:beta=0.1``, ``krum:f=1``,
            ``multikrum:f=1,m=2``).
        expected_data_kind: what the sites send, ``WEIGHT_DIFF`` or ``WEIGHTS``; the aggregate is of the same kind.
        exclude_vars: a regular expression; matching variables are left out of the aggregate.
        aggregation_weights: a weight per site, multiplied with its steps (MultiKrum's mean only).

    Raises:
        ValueError: an unknown rule or data kind.
    """

    def __init__(
        self,
        rule: str,
        expected_data_kind: str = DataKind.WEIGHT_DIFF,
        exclude_vars: str | None = None,
        aggregation_weights: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        if expected_data_kind not in (DataKind.WEIGHT_DIFF, DataKind.WEIGHTS):
            raise ValueError(f"expected_data_kind must be WEIGHT_DIFF or WEIGHTS, got {expected_data_kind!r}")
        self.rule = rule
        self.expected_data_kind = expected_data_kind
        self.exclude_vars = exclude_vars
        self.aggregation_weights = aggregation_weights
        self._round = RoundOfUpdates(parse_rule(rule), exclude_vars, aggregation_weights)

    def accept(self, shareable: Shareable, fl_ctx: FLContext) -> bool:
        """Keep a site's update for the round; refuse one of another kind, another round, or a second one."""
        site = str(shareable.get_peer_prop(key=ReservedKey.IDENTITY_NAME, default="?"))
        rc = shareable.get_return_code()
        if rc and rc != ReturnCode.OK:
            self.log_warning(fl_ctx, f"{site} returned {rc}: not aggregated")
            return False
        try:
            dxo = from_shareable(shareable)
        except ValueError:
            self.log_error(fl_ctx, f"the result from {site} is not a DXO: not aggregated")
            return False
        if dxo.data_kind != self.expected_data_kind:
            self.log_error(fl_ctx, f"{site} sent {dxo.data_kind}, expected {self.expected_data_kind}: not aggregated")
            return False
        current_round = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        contribution_round = shareable.get_cookie(AppConstants.CONTRIBUTION_ROUND)
        if contribution_round != current_round:
            self.log_warning(fl_ctx, f"{site}'s update is of round {contribution_round}, not {current_round}: dropped")
            return False
        refused = self._round.add(site, dxo.data, dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND))
        if refused is not None:
            self.log_warning(fl_ctx, f"refused {refused}")
            return False
        return True

    def aggregate(self, fl_ctx: FLContext) -> Shareable:
        """The rule applied to the round's updates, as a DXO of the kind the sites sent (a zero WEIGHT_DIFF when the
        rule could not run)."""
        outcome = self._round.finish(fl_ctx.get_prop(AppConstants.CURRENT_ROUND))
        _log_outcome(self, fl_ctx, outcome)
        kind = DataKind.WEIGHT_DIFF if outcome.unchanged else self.expected_data_kind
        return DXO(data_kind=kind, data=outcome.params).to_shareable()

    def reset(self, fl_ctx: FLContext) -> None:
        """Forget the round's updates."""
        self._round.reset()


class RobustModelAggregator(ModelAggregator):
    """A robust rule as the ``aggregator`` of FLARE's ModelController FedAvg (the ``clara_fedavg_cse_mc`` template):
    takes each site's result as FedAvg receives it, applies the rule when the round ends.

    Args:
        rule: the rule, as ``--aggregator`` takes it.
        exclude_vars: a regular expression; matching variables are left out of the aggregate.
        aggregation_weights: a weight per site, multiplied with its steps (MultiKrum's mean only).

    Raises:
        ValueError: an unknown rule.
    """

    def __init__(
        self, rule: str, exclude_vars: str | None = None, aggregation_weights: dict[str, float] | None = None
    ) -> None:
        super().__init__()
        self.rule = rule
        self.exclude_vars = exclude_vars
        self.aggregation_weights = aggregation_weights
        self._round = RoundOfUpdates(parse_rule(rule), exclude_vars, aggregation_weights)
        self._params_type: ParamsType | None = None
        self._current_round: Any = None

    def accept_model(self, model: FLModel) -> None:
        """Keep a site's result for the round (a second one from a site is refused, in the log)."""
        meta = model.meta or {}
        site = str(meta.get("client_name", "?"))
        if self._params_type is None:
            self._params_type = model.params_type
        elif model.params_type != self._params_type:
            self.warning(f"refused the update from {site}: {model.params_type}, the others sent {self._params_type}")
            return
        if model.current_round is not None:
            self._current_round = model.current_round
        elif self.fl_ctx is not None:
            self._current_round = self.fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        refused = self._round.add(site, model.params, meta.get(MetaKey.NUM_STEPS_CURRENT_ROUND))
        if refused is not None:
            self.warning(f"refused {refused}")

    def aggregate_model(self) -> FLModel:
        """The rule applied to the round's results (a zero difference when the rule could not run)."""
        outcome = self._round.finish(self._current_round)
        _log_outcome(self, self.fl_ctx, outcome)
        params_type = ParamsType.DIFF if outcome.unchanged else (self._params_type or ParamsType.DIFF)
        self._params_type = None
        return FLModel(params_type=params_type, params=outcome.params, current_round=self._current_round)

    def reset_stats(self) -> None:
        """Forget the round's results."""
        self._round.reset()
        self._params_type = None
