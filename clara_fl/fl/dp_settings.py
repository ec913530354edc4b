"""Differential privacy settings of a job (``--dp epsilon=E,delta=D,max_grad_norm=C``) and a site's DP policy.

Plain data only (no torch, no opacus): the job side (``clara-fl job create``, the recipe) parses and checks the
option; the site side (the Learner) reads the same settings from its arguments and holds them against its site
file's ``dp`` policy (``{"dp": {"required": true, "max_epsilon": 8}}``) before anything trains. DP-SGD itself runs
in :mod:`clara_fl.fl.site.dp`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from clara_fl.config.errors import ConfigError, UsageError

__all__ = ["DP_KEYS", "DPSettings", "SiteDPPolicy", "parse_dp_option", "site_dp_policy"]

#: what ``--dp`` takes, each a number
DP_KEYS = ("epsilon", "delta", "max_grad_norm")
SITE_POLICY_KEYS = ("required", "max_epsilon")


@dataclass(frozen=True)
class DPSettings:
    """DP-SGD at every site: the privacy budget (``epsilon`` at ``delta``, per case: one item of the MMAR's
    training datalist) for the whole job, the gradient clipping norm of each batch row (a case gives one row per
    sample its transforms make), and the rounds the noise is planned over (the job's number of rounds).

    Raises:
        ValueError: a value out of range (epsilon and max_grad_norm > 0, 0 < delta < 1, rounds >= 1).
    """

    epsilon: float
    delta: float
    max_grad_norm: float
    rounds: int = 1

    def __post_init__(self) -> None:
        problem = _problem(self.epsilon, self.delta, self.max_grad_norm)
        if problem:
            raise ValueError(problem)
        if not isinstance(self.rounds, int) or isinstance(self.rounds, bool) or self.rounds < 1:
            raise ValueError(f"rounds must be an integer >= 1, got {self.rounds!r}")

    def as_args(self) -> dict[str, Any]:
        """The Learner's and the Validator's ``dp`` argument."""
        return {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "max_grad_norm": self.max_grad_norm,
            "rounds": self.rounds,
        }

    def describe(self) -> str:
        return (
            f"DP-SGD: epsilon {self.epsilon:g} at delta {self.delta:g} per case over {self.rounds} round(s), "
            f"each batch row's gradient clipped to {self.max_grad_norm:g}"
        )

    @classmethod
    def from_args(cls, args: Any, where: str) -> DPSettings:
        """The settings a component's ``dp`` argument holds.

        Args:
            args: ``{"epsilon": E, "delta": D, "max_grad_norm": C, "rounds": N}``.
            where: the config path of the argument, for the error.

        Raises:
            ConfigError: not such a mapping, an unknown or missing key, or a value out of range.
        """
        if not isinstance(args, Mapping):
            raise ConfigError(f"must be an object with {', '.join(DP_KEYS)}, rounds", path=where)
        unknown = sorted(set(args) - {*DP_KEYS, "rounds"})
        if unknown:
            raise ConfigError(f"unknown key '{unknown[0]}' (valid: {', '.join(DP_KEYS)}, rounds)", path=where)
        missing = [k for k in DP_KEYS if k not in args]
        if missing:
            raise ConfigError(f"missing '{missing[0]}'", path=where)
        values = {k: args[k] for k in DP_KEYS}
        for key, value in values.items():
            if not _is_number(value):
                raise ConfigError(f"must be a number, got {value!r}", path=f"{where}.{key}")
        rounds = args.get("rounds", 1)
        try:
            return cls(rounds=rounds, **{k: float(v) for k, v in values.items()})
        except ValueError as e:
            raise ConfigError(str(e), path=where) from e


def parse_dp_option(text: str, option: str = "--dp") -> DPSettings:
    """``epsilon=E,delta=D,max_grad_norm=C`` as :class:`DPSettings` (one round; the job sets its rounds).

    Raises:
        UsageError: a missing, repeated or unknown key, a value that is not a number, or one out of range.
    """
    values: dict[str, float] = {}
    for part in text.split(","):
        name, sep, raw = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError(
                option, text, f"expected {'=..,'.join(DP_KEYS)}=.., e.g. epsilon=8,delta=1e-5,max_grad_norm=1"
            )
        if name not in DP_KEYS:
            raise UsageError(option, text, f"unknown key '{name}' (valid: {', '.join(DP_KEYS)})")
        if name in values:
            raise UsageError(option, text, f"'{name}' given twice")
        try:
            values[name] = float(raw)
        except ValueError:
            raise UsageError(option, text, f"{name} must be a number, got {raw.strip()!r}") from None
    missing = [k for k in DP_KEYS if k not in values]
    if missing:
        raise UsageError(option, text, f"missing '{missing[0]}' (needs {', '.join(DP_KEYS)})")
    problem = _problem(values["epsilon"], values["delta"], values["max_grad_norm"])
    if problem:
        raise UsageError(option, text, problem)
    return DPSettings(values["epsilon"], values["delta"], values["max_grad_norm"])


@dataclass(frozen=True)
class SiteDPPolicy:
    """What a site's site file asks of the jobs it trains: DP-SGD ``required``, and at most ``max_epsilon``."""

    required: bool = False
    max_epsilon: float | None = None

    def refusal(self, dp: DPSettings | None) -> str | None:
        """Why this site refuses a job with ``dp`` (None: no DP), in one line; None when it accepts it."""
        if dp is None:
            if self.required:
                return "this site requires differential privacy (site file dp.required) and the job has no --dp"
            return None
        if self.max_epsilon is not None and dp.epsilon > self.max_epsilon:
            return (
                f"the job asks for epsilon {dp.epsilon:g}, more than this site allows "
                f"(site file dp.max_epsilon {self.max_epsilon:g})"
            )
        return None


def site_dp_policy(content: Mapping[str, Any], site_file: str | None = None) -> SiteDPPolicy:
    """The ``dp`` object of a site file's content (none: no policy).

    Raises:
        ConfigError: ``dp`` is not an object, has an unknown key, or a value of the wrong type, naming the key.
    """
    where = site_file or "site file"
    policy = content.get("dp")
    if policy is None:
        return SiteDPPolicy()
    if not isinstance(policy, Mapping):
        raise ConfigError('must be an object, e.g. {"required": true, "max_epsilon": 8}', file=where, path="dp")
    unknown = sorted(set(policy) - set(SITE_POLICY_KEYS))
    if unknown:
        raise ConfigError(f"unknown key (valid: {', '.join(SITE_POLICY_KEYS)})", file=where, path=f"dp.{unknown[0]}")
    required = policy.get("required", False)
    if not isinstance(required, bool):
        raise ConfigError(f"must be true or false, got {required!r}", file=where, path="dp.required")
    max_epsilon = policy.get("max_epsilon")
    if max_epsilon is not None and not (_is_number(max_epsilon) and 0 < float(max_epsilon) < math.inf):
        raise ConfigError(f"must be a number > 0, got {max_epsilon!r}", file=where, path="dp.max_epsilon")
    return SiteDPPolicy(required, float(max_epsilon) if max_epsilon is not None else None)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _problem(epsilon: float, delta: float, max_grad_norm: float) -> str | None:
    if not (math.isfinite(epsilon) and epsilon > 0):
        return f"epsilon must be a finite number > 0, got {epsilon:g}"
    if not 0 < delta < 1:
        return f"delta must be between 0 and 1 (exclusive), got {delta:g}"
    if not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
        return f"max_grad_norm must be a finite number > 0, got {max_grad_norm:g}"
    return None
