"""What an algorithm assumes of the MMAR's optimizer, said once when the job is made (``clara-fl job create``,
the recipe).

SCAFFOLD's site correction (FLARE's ``PTScaffoldHelper``) adds ``c - c_i`` to each step as if it were part of the
gradient of plain SGD, and updates the control variate from the local learning rate and step count: with an
adaptive optimizer (Adam: both shipped MMARs) the correction does not match the step the optimizer took. The
MMAR's optimizer is read from ``config_train.json`` through the config engine's component grammar
(:func:`~clara_fl.config.specs.parse_component`), never by searching the text.
"""

from __future__ import annotations

import os
from pathlib import Path

from clara_fl.config.errors import ConfigError
from clara_fl.config.jsonio import load_json
from clara_fl.config.specs import parse_component
from clara_fl.fl.algorithms.catalog import algorithm_named

__all__ = ["OPTIMIZER_PATH", "SGD_CLASS", "mmar_optimizer", "optimizer_note"]

OPTIMIZER_PATH = "train.optimizer"
SGD_CLASS = "SGD"


def mmar_optimizer(mmar: str | os.PathLike, train_config: str = "config/config_train.json") -> str | None:
    """The class name of the MMAR's ``train.optimizer`` (``"Adam"``), or None when the config has none.

    Raises:
        ConfigError: the train config is not JSON, or its optimizer is not a well-formed component.
    """
    config = load_json(Path(mmar) / train_config)
    train = config.get("train") if isinstance(config, dict) else None
    spec = parse_component(train.get("optimizer") if isinstance(train, dict) else None, OPTIMIZER_PATH)
    return spec.class_name if spec is not None else None


def optimizer_note(
    algorithm: str, mmar: str | os.PathLike, train_config: str = "config/config_train.json"
) -> str | None:
    """One line when ``algorithm`` assumes SGD and the MMAR trains with another optimizer, else None.

    Raises:
        UsageError: an unknown algorithm.
        ConfigError: the train config is not JSON, or its optimizer is not a well-formed component.
    """
    if not algorithm_named(algorithm).assumes_sgd:
        return None
    try:
        optimizer = mmar_optimizer(mmar, train_config)
    except ConfigError as e:
        raise e.located(train_config) from None
    if optimizer is None or optimizer == SGD_CLASS:
        return None
    return (
        f"{algorithm} assumes the sites train with plain SGD (its correction c - c_i is added to the gradient and "
        f"the control variates are updated from the local lr and step count), but {train_config} "
        f'{OPTIMIZER_PATH} is {optimizer}: set {OPTIMIZER_PATH} to {{"name": "SGD", "args": {{"params": '
        f'"#@model.parameters()", "lr": ...}}}} (typically a 10x larger lr than {optimizer}\'s) for its correction '
        "to hold"
    )
