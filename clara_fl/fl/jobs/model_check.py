"""The models a federated evaluation scores (``clara-fl evaluate --model NAME=PATH``), checked before any site
receives them.

Each file is loaded weights-only (:func:`~clara_fl.runtime.checkpoint.load_checkpoint`: a pickle payload is
refused, nothing of it runs), a Clara checkpoint's ``{"model": state_dict, ...}`` or a bare state_dict, and must
fit the MMAR's own network (``train.model`` of config_train.json, built under the restricted policy) exactly:
``load_state_dict(strict=True)``. The job carries the checked weights alone, as a plain state_dict.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clara_fl.config.errors import ConfigError, UsageError

__all__ = [
    "MODEL_OPTION",
    "GivenModel",
    "check_against_network",
    "checked_models",
    "load_given_model",
    "parse_model_options",
]

MODEL_OPTION = "--model"
NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
SHOWN_KEYS = 3  # mismatched keys named in the one-line error


@dataclass(frozen=True)
class GivenModel:
    """A model to evaluate: its ``name`` (the column of the cross-site table) and its file."""

    name: str
    path: Path

    @property
    def option(self) -> str:
        """The option as it was written: ``NAME=PATH``."""
        return f"{self.name}={self.path}"


def parse_model_options(values: Iterable[str], option: str = MODEL_OPTION) -> list[GivenModel]:
    """``NAME=PATH`` values, each naming an existing file under a safe, unique name.

    Args:
        values: the option's values, in the order given.
        option: the option's name in errors.

    Raises:
        UsageError: no value, a value without ``=``, a name that is not a letter followed by letters, digits and
            ``_`` (64 at most), a name given twice, or a path that is not a file.
    """
    models: list[GivenModel] = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not path:
            raise UsageError(option, value, "expected NAME=PATH, e.g. trained=models/model.pt")
        if not NAME_PATTERN.fullmatch(name):
            raise UsageError(
                option, value, f"the name '{name}' must be a letter followed by letters, digits or '_' (64 at most)"
            )
        if any(m.name == name for m in models):
            raise UsageError(option, value, f"the name '{name}' is given twice: each model needs its own name")
        if not Path(path).is_file():
            raise UsageError(option, value, f"{path} is not a file")
        models.append(GivenModel(name, Path(path)))
    if not models:
        raise UsageError(option, None, "expected at least one model to evaluate: --model NAME=PATH")
    return models


def load_given_model(model: GivenModel) -> dict[str, Any]:
    """The weights in ``model``'s file, loaded weights-only (a Clara checkpoint's ``model`` or a bare state_dict;
    a DDP ``module.`` prefix dropped).

    Raises:
        UsageError: the file cannot be read, holds anything beyond tensors and plain data (it would run code when
            unpickled), or holds no network weights.
    """
    from clara_fl.runtime.checkpoint import load_checkpoint, model_state, strip_ddp_prefix

    try:
        state = model_state(load_checkpoint(model.path), str(model.path))
    except ConfigError as e:
        raise UsageError(MODEL_OPTION, model.option, e.message) from e
    tensors = {k: v for k, v in state.items() if hasattr(v, "shape")}
    if len(tensors) != len(state):
        raise UsageError(MODEL_OPTION, model.option, "the model's weights hold values that are not tensors")
    return strip_ddp_prefix(tensors)


def check_against_network(
    models: Mapping[str, Mapping[str, Any]],
    files: Mapping[str, str],
    network: Any,
    network_source: str = "config/config_train.json train.model",
) -> None:
    """Every model's weights fit ``network`` exactly, as ``load_state_dict(strict=True)`` requires.

    Args:
        models: each model's weights by name.
        files: each model's file by name, for the error.
        network: the MMAR's network (its weights are replaced).
        network_source: where the network comes from, for the error.

    Raises:
        UsageError: one line naming the model, its file and its first mismatched keys (missing, unexpected, or of
            another shape).
    """
    expected = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    for name, weights in models.items():
        given = {k: tuple(v.shape) for k, v in weights.items()}
        problems = _mismatches(expected, given)
        if not problems:
            try:  # what the sites will do with it
                network.load_state_dict(dict(weights), strict=True)
            except RuntimeError as e:
                problems = [str(e).splitlines()[0]]
        if problems:
            raise UsageError(
                MODEL_OPTION,
                f"{name}={files.get(name, '?')}",
                f"the weights do not fit the MMAR's network ({network_source}): {'; '.join(problems)}",
            )


def _mismatches(expected: Mapping[str, tuple[int, ...]], given: Mapping[str, tuple[int, ...]]) -> list[str]:
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [f"{k} {list(given[k])} vs {list(v)}" for k, v in expected.items() if k in given and given[k] != v]
    problems = []
    for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("other shapes", shapes)):
        if keys:
            more = f" (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else ""
            problems.append(f"{what} {', '.join(keys[:SHOWN_KEYS])}{more}")
    return problems


def checked_models(
    mmar: str | Path, models: list[GivenModel], overrides: Mapping[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """Each model's weights by name, every one loaded weights-only and fitting the MMAR's network, which is built
    from ``train.model`` of its config_train.json under the restricted policy.

    Args:
        mmar: the MMAR root.
        models: the models (:func:`parse_model_options`).
        overrides: values on top of the MMAR's environment.json (as the job's).

    Raises:
        ConfigError: the MMAR's network does not build.
        UsageError: a model that does not load weights-only or does not fit the network.
    """
    from clara_fl.workflows.network import build_train_network

    weights = {model.name: load_given_model(model) for model in models}
    network = build_train_network(str(mmar), overrides=dict(overrides or {}))
    check_against_network(weights, {m.name: str(m.path) for m in models}, network)
    return weights
