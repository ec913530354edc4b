"""Judging a privacy filter's settings before a job or a site policy is written.

FLARE's privacy filters accept settings under which they ruin training without a word (SVTPrivacy at its
own defaults releases only noise) or do nothing at all (ExcludeVars with no variables, PercentilePrivacy
with ``gamma`` <= 0). :func:`judge_privacy_filter` refuses such settings in one line that says why and what
to set, and otherwise returns one line saying what the filter will do to a site's updates.

Against a job's MMAR (:meth:`SiteUpdate.of_mmar`: the network's tensors, and the optimizer's step size) the
judgement is complete; for a site's own policy, which applies to every job, only what the settings alone
decide is judged, and the filters count what they release at run time
(:mod:`clara_fl.fl.site.privacy_filters`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from clara_fl.config.errors import ConfigError, UsageError
from clara_fl.fl.jobs.privacy import privacy_filter_name

__all__ = ["SiteUpdate", "judge_privacy_filter", "judge_result_filters"]

# Optimizers whose step on a weight is about the learning rate at most, whatever the gradient's scale
ADAPTIVE_OPTIMIZERS = {"adam", "adamw", "adamax", "nadam", "radam", "novograd", "rmsprop"}
CLIP_BELOW_STEP = 0.1  # a clip under this share of an adaptive optimizer's step removes the update
NOISE_OVER_CLIP = 10.0  # release noise over this multiple of the clip leaves only noise


@dataclass(frozen=True)
class SiteUpdate:
    """What a site's training update holds: the network's tensors (name: number of values), and the step
    size of its optimizer where the config states one.

    Args:
        tensors: the network's ``state_dict`` names and sizes, as the site sends them.
        optimizer: the optimizer's class name (``Adam``), or None.
        learning_rate: its ``lr``, or None.
    """

    tensors: Mapping[str, int]
    optimizer: str | None = None
    learning_rate: float | None = None

    @property
    def values(self) -> int:
        return sum(self.tensors.values())

    @property
    def adaptive_step(self) -> float | None:
        """The learning rate of an Adam-like optimizer (a bound on each weight's change per step), else None."""
        if self.optimizer and self.optimizer.lower() in ADAPTIVE_OPTIMIZERS and self.learning_rate:
            return self.learning_rate
        return None

    @classmethod
    def of_mmar(
        cls,
        mmar_root: str,
        train_config: str = "config/config_train.json",
        environment: str | None = "config/environment.json",
        overrides: Mapping[str, Any] | None = None,
    ) -> SiteUpdate:
        """Build the MMAR's network (restricted code policy, CPU) and read its optimizer.

        Raises:
            ConfigError: the network does not build.
        """
        from clara_fl.config.mmar import read_config
        from clara_fl.workflows.network import build_train_network

        network = build_train_network(mmar_root, train_config, environment, overrides)
        tensors = {name: int(value.numel()) for name, value in network.state_dict().items()}
        raw = read_config(mmar_root, train_config, environment, overrides)
        optimizer = raw.config.get("train", {}).get("optimizer") if isinstance(raw.config, dict) else None
        if not isinstance(optimizer, dict):
            return cls(tensors)
        optimizer = raw.variables.substitute(optimizer, "train.optimizer")
        name = optimizer.get("name") or optimizer.get("path")
        lr = optimizer.get("args", {}).get("lr") if isinstance(optimizer.get("args"), dict) else None
        return cls(
            tensors,
            optimizer=name.rpartition(".")[2] if isinstance(name, str) else None,
            learning_rate=float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) else None,
        )


def judge_result_filters(filters: list[dict[str, Any]], update: SiteUpdate | None, where: str) -> list[str]:
    """One line for each privacy filter among ``filters`` (FLARE config entries); others are passed over.

    Raises:
        UsageError: a filter that would release nothing, only noise, or leave the update as it is, where ``where``
            is a command-line option (``--privacy``); ConfigError where it is a JSON path.
    """
    lines = []
    for entry in filters:
        name = privacy_filter_name(entry)
        if name is not None:
            lines.append(judge_privacy_filter(name, entry.get("args") or {}, update, where))
    return lines


def judge_privacy_filter(name: str, args: Mapping[str, Any], update: SiteUpdate | None, where: str) -> str:
    """What the privacy filter ``name`` with ``args`` does to a site's update, in one line.

    Args:
        name: ``PercentilePrivacy``, ``SVTPrivacy`` or ``ExcludeVars``.
        args: its arguments, clara-fl's defaults included (:func:`~clara_fl.fl.jobs.privacy.privacy_filter`).
        update: the job's network and optimizer; None for a site policy, judged on its settings alone.
        where: the option or JSON path named in an error (``--privacy``).

    Raises:
        UsageError: the settings release nothing, only noise, or leave the update unchanged, where ``where`` is a
            command-line option (``--privacy``); ConfigError where it is a JSON path.
    """
    judges = {"PercentilePrivacy": _percentile, "SVTPrivacy": _svt, "ExcludeVars": _exclude_vars}
    return f"{name}: {judges[name](args, update, where)}"


def _refuse(where: str, name: str, why: str) -> ConfigError | UsageError:
    if where.startswith("-"):  # the filter came from the command line
        return UsageError(where, None, f"{name} {why}")
    return ConfigError(f"{name} {why}", path=where)


# FLARE 2.9's own defaults, for a filter entry written without clara-fl (a job template, a site's privacy.json)
FLARE_DEFAULTS: dict[str, float] = {"percentile": 10, "gamma": 0.01, "fraction": 0.1, "epsilon": 0.1, "noise_var": 0.1}
FLARE_SVT_GAMMA = 1e-5


def _number(args: Mapping[str, Any], key: str, name: str = "") -> float:
    if key in args:
        return float(args[key])
    return FLARE_SVT_GAMMA if (name, key) == ("SVTPrivacy", "gamma") else float(FLARE_DEFAULTS[key])


def _clip_against_step(name: str, gamma: float, update: SiteUpdate | None, where: str) -> str:
    """Refuse a per-step clip far under an adaptive optimizer's step; else say how they compare."""
    step = update.adaptive_step if update is not None else None
    if step is None:
        return f"clipped to +-{gamma:g} per step"
    if gamma < CLIP_BELOW_STEP * step:
        raise _refuse(
            where,
            name,
            f"clips each weight's change to +-{gamma:g} per step, under a tenth of the optimizer's step "
            f"({update.optimizer if update else ''} lr {step:g}): every update is cut to almost nothing and "
            f"the global model does not learn; set gamma to at least {step:g}",
        )
    return (
        f"clipped to +-{gamma:g} per step ({gamma / step:.3g} x the {update.optimizer if update else ''} lr {step:g})"
    )


def _percentile(args: Mapping[str, Any], update: SiteUpdate | None, where: str) -> str:
    name = "PercentilePrivacy"
    percentile, gamma = _number(args, "percentile"), _number(args, "gamma")
    if gamma <= 0 or not 0 <= percentile <= 100:
        raise _refuse(
            where,
            name,
            f"with gamma {gamma:g} and percentile {percentile:g} sends every update unchanged (FLARE's filter "
            "does nothing unless gamma > 0 and 0 <= percentile <= 100); set gamma > 0 and a percentile below 100",
        )
    kept = 1.0 - percentile / 100.0
    if percentile >= 100 or (update is not None and update.values * kept < 1):
        raise _refuse(
            where,
            name,
            f"with percentile {percentile:g} zeroes every change: nothing is released; set a percentile "
            "below 100 (clara-fl's default is 10)",
        )
    clip = _clip_against_step(name, gamma, update, where)
    of = f" of {update.values:,} values" if update is not None else ""
    return (
        f"sends the changes above the {percentile:g}th percentile of their size (about {kept:.0%}{of}), "
        f"each {clip}; the others are sent as 0"
    )


def _svt(args: Mapping[str, Any], update: SiteUpdate | None, where: str) -> str:
    name = "SVTPrivacy"
    fraction, gamma = _number(args, "fraction"), _number(args, "gamma", name)
    epsilon, noise_var = _number(args, "epsilon"), _number(args, "noise_var")
    release_epsilon = args.get("epsilon_release")
    if fraction <= 0:
        raise _refuse(where, name, f"with fraction {fraction:g} releases nothing; set a fraction in (0, 1]")
    if gamma <= 0:
        raise _refuse(where, name, f"with gamma {gamma:g} clips every change to 0 and releases only noise")
    if epsilon <= 0 or (release_epsilon is None and noise_var <= 0):
        raise _refuse(where, name, "needs epsilon > 0 and noise_var > 0 (FLARE's filter fails on them at run time)")
    uploads = min(math.ceil(update.values * fraction), update.values) if update is not None else None
    if release_epsilon is not None:
        if float(release_epsilon) <= 0:
            raise _refuse(where, name, "needs epsilon_release > 0 (FLARE's filter fails on it at run time)")
        if uploads is None:
            noise = None  # the noise grows with the network's size: judged for each job at run time
        else:
            noise = 2.0 * gamma * uploads / float(release_epsilon)
    else:
        noise = 2.0 * gamma / noise_var
    if noise is not None and noise > NOISE_OVER_CLIP * gamma:
        raise _refuse(
            where,
            name,
            f"adds Laplace noise of scale {noise:g} per step to changes clipped to +-{gamma:g}, over "
            f"{NOISE_OVER_CLIP:g} times the largest change it carries: it releases only noise and the global "
            f"model does not learn; raise noise_var (or epsilon_release) or gamma (clara-fl's defaults: "
            f"gamma 0.01, noise_var 100)",
        )
    clip = _clip_against_step(name, gamma, update, where)
    share = f"{fraction * 100:g} % of the values"
    if update is not None and uploads:
        share += f" ({uploads:,} of {update.values:,})"
    noise_text = f"Laplace noise of scale {noise:g} per step" if noise is not None else "Laplace noise"
    return (
        f"sends {share} each round, chosen by the sparse vector technique (epsilon {epsilon:g}), each {clip}, "
        f"plus {noise_text}; the others are sent as 0"
    )


def _exclude_vars(args: Mapping[str, Any], update: SiteUpdate | None, where: str) -> str:
    name = "ExcludeVars"
    names = args.get("exclude_vars")
    if not names or not (
        isinstance(names, str) or (isinstance(names, list) and all(isinstance(n, str) for n in names))
    ):
        raise _refuse(
            where,
            name,
            "names no variables to keep at the site, so it sends everything; set exclude_vars to a regular "
            "expression or a list of the network's tensor names, e.g. exclude_vars=model\\.0\\.",
        )
    if isinstance(names, str):
        try:
            pattern = re.compile(names)
        except re.error as e:
            raise _refuse(where, name, f"exclude_vars is not a regular expression ({e})") from None
        matches = [t for t in (update.tensors if update else {}) if pattern.search(t)]
    else:
        matches = [t for t in names if update is not None and t in update.tensors]
    if update is None:
        return f"keeps the tensors matching {names!r} at the site and sends the others (matched at each job)"
    if not matches:
        example = next(iter(update.tensors), "")
        raise _refuse(
            where,
            name,
            f"exclude_vars {names!r} matches none of the network's {len(update.tensors)} tensors (e.g. "
            f"{example}), so it sends everything; name tensors of this network",
        )
    if len(matches) == len(update.tensors):
        raise _refuse(
            where,
            name,
            f"exclude_vars {names!r} matches all {len(update.tensors)} tensors of the network: nothing is "
            "sent and the global model does not learn; keep fewer at the site",
        )
    kept = sum(update.tensors[t] for t in matches)
    return (
        f"keeps {len(matches)} of {len(update.tensors)} tensors ({kept:,} of {update.values:,} values) at the "
        f"site and sends the other {len(update.tensors) - len(matches)}"
    )
