"""Robust aggregation rules: what the server makes of the sites' updates when one of them may be bad.

Plain numpy (no nvflare, no torch), one function of the updates each; the FLARE adapters in
:mod:`clara_fl.fl.server.robust_aggregation` and the job side (``--aggregator``) use them. The definitions are the
accepted ones (Flower's FedMedian, FedTrimmedAvg, Krum and MultiKrum):

* ``median``: the coordinate-wise median of the updates (of an even number, the mean of the middle two);
* ``trimmed_mean:beta=B``: per coordinate, the ``floor(B*n)`` smallest and largest values are cut and the rest
  averaged;
* ``krum:f=F`` (Blanchard et al. 2017): each update's score is the sum of its squared distances to its ``n-F-2``
  nearest other updates (over all of its variables at once); the update with the smallest score is the result.
  Updates tied for the smallest score are averaged (unweighted) rather than one picked by the order the sites
  answered in: with 3 sites and F = 0 the two nearest updates always tie (each one's score is their distance);
* ``multikrum:f=F,m=M``: the mean of the ``M`` best-scored updates, weighted as FedAvg weighs them.

The first three ignore the updates' weights: a bad site could otherwise claim a large weight.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported where a rule runs: job create parses rules without it
    import numpy as np

__all__ = ["RULE_NAMES", "RobustResult", "RobustRule", "RuleError", "parse_rule"]

RULE_NAMES = ("median", "trimmed_mean", "krum", "multikrum")
_PARAMETERS: dict[str, tuple[str, ...]] = {
    "median": (),
    "trimmed_mean": ("beta",),
    "krum": ("f",),
    "multikrum": ("f", "m"),
}
_DEFAULTS: dict[str, float | int] = {"beta": 0.1, "f": 1}
EXAMPLES = "median, trimmed_mean:beta=0.1, krum:f=1, multikrum:f=1,m=2"


class RuleError(ValueError):
    """A rule that is not one, or one whose preconditions the number of updates does not meet (one line)."""


@dataclass(frozen=True)
class RobustResult:
    """What a rule made of the updates.

    Args:
        params: the aggregate, variable by variable, in the updates' dtypes.
        selected: the indices of the updates the result is made of, whole (Krum, MultiKrum); every index for the
            coordinate-wise rules, which take some of every update.
        scores: Krum's score of each update (smaller is more central); empty for the coordinate-wise rules.
        cut_share: for the coordinate-wise rules, the share of each update's coordinates that were cut and lay
            outside the values the result is made of (a value tied with a kept one counts as kept, so ties, such as
            coordinates no site changed, blame no site); empty for Krum and MultiKrum.
        cut_per_end: the values cut at each end of each coordinate (coordinate-wise rules).
    """

    params: dict[str, np.ndarray]
    selected: tuple[int, ...]
    scores: tuple[float, ...] = ()
    cut_share: tuple[float, ...] = ()
    cut_per_end: int = 0


@dataclass(frozen=True)
class RobustRule:
    """One robust aggregation rule and its parameters (see the module's docstring).

    Args:
        name: median, trimmed_mean, krum or multikrum.
        beta: trimmed_mean's fraction cut at each end, in (0, 0.5).
        f: Krum's and MultiKrum's number of bad updates tolerated (>= 0).
        m: MultiKrum's number of best-scored updates averaged (>= 1); 0: n - f, as Blanchard et al. suggest.
    """

    name: str
    beta: float = 0.0
    f: int = 0
    m: int = 0

    @property
    def spec(self) -> str:
        """The rule as ``--aggregator`` takes it: ``krum:f=1``."""
        values = {"beta": self.beta, "f": self.f, "m": self.m}
        arguments = ",".join(f"{p}={values[p]}" for p in _PARAMETERS[self.name] if p != "m" or self.m)
        return f"{self.name}:{arguments}" if arguments else self.name

    @property
    def uses_weights(self) -> bool:
        """Whether the result weighs the updates (by steps and aggregation weights): MultiKrum's mean only."""
        return self.name == "multikrum"

    def min_updates(self) -> int:
        """The fewest updates the rule is defined for."""
        if self.name in ("krum", "multikrum"):
            return max(2 * self.f + 3, self.m)
        return 1

    def check(self, n: int) -> None:
        """Refuse ``n`` updates the rule is not defined for.

        Raises:
            RuleError: Krum/MultiKrum with ``n <= 2f + 2`` (or MultiKrum with fewer than ``m``), trimmed_mean with
                ``2*floor(beta*n) >= n``, any rule with no update.
        """
        if n < 1:
            raise RuleError(f"{self.spec} has no update to aggregate")
        if self.name in ("krum", "multikrum") and n <= 2 * self.f + 2:
            raise RuleError(f"{self.spec} needs more than 2f+2 = {2 * self.f + 2} updates (n > 2f+2), got {n}")
        if self.name == "multikrum" and n < self.m:
            raise RuleError(f"{self.spec} averages m = {self.m} updates, got only {n}")
        if self.name == "trimmed_mean" and 2 * self.cut_per_end(n) >= n:
            raise RuleError(f"{self.spec} would cut all {n} updates (needs 2*floor(beta*n) < n)")

    def cut_per_end(self, n: int) -> int:
        """The values a coordinate-wise rule cuts at each end of a coordinate of ``n`` updates."""
        if self.name == "trimmed_mean":
            return math.floor(self.beta * n + 1e-12)
        if self.name == "median":
            return (n - 1) // 2
        return 0

    def combine(
        self, updates: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float] | None = None
    ) -> RobustResult:
        """The rule applied to ``updates`` (each a variable name -> array mapping, all with the same variables and
        shapes).

        Args:
            updates: the sites' updates (weights or weight differences, as they sent them).
            weights: each update's weight (MultiKrum's mean); None: equal.

        Raises:
            RuleError: the rule is not defined for this many updates (:meth:`check`), or the updates differ in
                their variables or shapes.
        """
        import numpy as np

        n = len(updates)
        self.check(n)
        _check_same_layout(updates)
        if self.name in ("median", "trimmed_mean"):
            return _coordinate_wise(updates, self.cut_per_end(n))
        scores = krum_scores(updates, self.f)
        order = np.argsort(scores, kind="stable")
        if self.name == "krum":
            # Updates tied for the best score are averaged, unweighted: picking one would be arbitrary
            best = tuple(int(i) for i in order if scores[i] == scores[order[0]])
            chosen_weights = [1.0] * len(best)
        else:
            best = tuple(int(i) for i in order[: self.m or n - self.f])
            chosen_weights = [1.0 if weights is None else float(weights[i]) for i in best]
        params = _weighted_mean([updates[i] for i in best], chosen_weights)
        return RobustResult(params=params, selected=best, scores=tuple(float(s) for s in scores))


def parse_rule(text: str) -> RobustRule:
    """``median``, ``trimmed_mean:beta=0.1``, ``krum:f=1``, ``multikrum:f=1,m=2`` as a rule; parameters not given
    take their defaults (beta 0.1, f 1; MultiKrum without m averages n - f updates).

    Raises:
        RuleError: an unknown rule or parameter, a value of the wrong type or out of range.
    """
    name, _, rest = text.strip().partition(":")
    name = name.strip()
    if name not in _PARAMETERS:
        raise RuleError(f"unknown aggregation rule '{name}' (valid: {EXAMPLES})")
    given: dict[str, str] = {}
    for pair in (p for p in rest.split(",") if p.strip()):
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep:
            raise RuleError(f"{name}: expected NAME=VALUE, got '{pair.strip()}'")
        if key not in _PARAMETERS[name]:
            takes = ", ".join(_PARAMETERS[name]) or "no parameters"
            raise RuleError(f"{name} takes {takes}, not '{key}'")
        given[key] = value.strip()
    values = {
        key: _number(name, key, given[key]) if key in given else _DEFAULTS.get(key, 0) for key in _PARAMETERS[name]
    }
    return RobustRule(
        name=name, beta=float(values.get("beta", 0.0)), f=int(values.get("f", 0)), m=int(values.get("m", 0))
    )


def _number(rule: str, key: str, text: str) -> float | int:
    if key == "beta":
        try:
            beta = float(text)
        except ValueError:
            beta = math.nan
        if not 0 < beta < 0.5:
            raise RuleError(f"{rule}: beta is the fraction cut at each end, a number > 0 and < 0.5, got '{text}'")
        return beta
    least = 0 if key == "f" else 1
    try:
        number = int(text)
    except ValueError:
        number = -1
    if number < least:
        raise RuleError(f"{rule}: {key} must be an integer >= {least}, got '{text}'")
    return number


def _check_same_layout(updates: Sequence[Mapping[str, np.ndarray]]) -> None:
    import numpy as np

    first = updates[0]
    for index, update in enumerate(updates[1:], start=1):
        if set(update) != set(first):
            raise RuleError(f"update {index} has other variables than update 0")
        for key, value in update.items():
            if np.shape(value) != np.shape(first[key]):
                raise RuleError(
                    f"update {index}'s {key} has shape {np.shape(value)}, update 0's {np.shape(first[key])}"
                )


def _as_dtype(value: np.ndarray, like: np.ndarray) -> np.ndarray:
    import numpy as np

    dtype = np.asarray(like).dtype
    if np.issubdtype(dtype, np.integer):
        value = np.rint(value)
    return np.asarray(value).astype(dtype, copy=False)


def _coordinate_wise(updates: Sequence[Mapping[str, np.ndarray]], cut: int) -> RobustResult:
    """Per coordinate: sort the updates' values, cut ``cut`` at each end, average the rest."""
    import numpy as np

    n = len(updates)
    cut_counts = np.zeros(n, dtype=np.int64)
    total = 0
    params: dict[str, np.ndarray] = {}
    for key in updates[0]:
        stacked = np.stack([np.asarray(u[key], dtype=np.float64).reshape(-1) for u in updates])
        order = np.argsort(stacked, axis=0, kind="stable")
        ordered = np.take_along_axis(stacked, order, axis=0)
        kept = ordered[cut : n - cut]
        params[key] = _as_dtype(kept.mean(axis=0).reshape(np.shape(updates[0][key])), updates[0][key])
        if cut:
            below = ordered[:cut] < kept[0]  # strictly outside what was kept: a tie blames nobody
            above = ordered[n - cut :] > kept[-1]
            cut_counts += np.bincount(order[:cut][below], minlength=n) + np.bincount(
                order[n - cut :][above], minlength=n
            )
        total += stacked.shape[1]
    share = tuple(float(c) / total if total else 0.0 for c in cut_counts)
    return RobustResult(params=params, selected=tuple(range(n)), cut_share=share, cut_per_end=cut)


def krum_scores(updates: Sequence[Mapping[str, np.ndarray]], f: int) -> np.ndarray:
    """Each update's Krum score: the sum of its squared distances to its ``n-f-2`` nearest other updates."""
    import numpy as np

    n = len(updates)
    squared = np.zeros((n, n), dtype=np.float64)
    for key in updates[0]:
        flat = np.stack([np.asarray(u[key], dtype=np.float64).reshape(-1) for u in updates])
        for i in range(n):
            squared[i] += np.sum((flat - flat[i]) ** 2, axis=1)
    nearest = n - f - 2
    scores = np.empty(n, dtype=np.float64)
    for i in range(n):
        others = np.delete(squared[i], i)
        scores[i] = np.sort(others)[:nearest].sum()
    return scores


def _weighted_mean(updates: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]) -> dict[str, np.ndarray]:
    import numpy as np

    total = float(sum(weights))
    if total <= 0:
        weights, total = [1.0] * len(updates), float(len(updates))
    result: dict[str, np.ndarray] = {}
    for key in updates[0]:
        acc = sum(w * np.asarray(u[key], dtype=np.float64) for u, w in zip(updates, weights, strict=True))
        result[key] = _as_dtype(np.asarray(acc) / total, updates[0][key])
    return result
