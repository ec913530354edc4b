"""A Clara component's ``name`` or ``path`` as a bundle ``_target_`` that MONAI alone can import.

MONAI's short-name locator scans only ``monai.*``, so every target is written as a full dotted path
(``torch.optim.Adam``, ``ignite.metrics.Accuracy``). Names that clara-fl serves with its own
components (Clara's checkpoint file names, crash-safe writers) map to MONAI's class plus the
arguments that give Clara's behaviour; names MONAI renamed map through :mod:`clara_fl.config.compat`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from clara_fl.config import compat
from clara_fl.config.errors import ConfigError, did_you_mean
from clara_fl.config.locator import SEARCH_MODULES, locate_path
from clara_fl.config.specs import ComponentSpec

__all__ = ["Target", "resolve_target", "IMAGE_META_BATCH_TRANSFORM"]

# MONAI's idiom for MetricsSaver's per-case file names (the name lives on the image MetaTensor).
IMAGE_META_BATCH_TRANSFORM = "$lambda x: [xx['image'].meta for xx in x]"


@dataclass(frozen=True)
class ClaraPeer:
    """The MONAI class that stands in for a clara-fl component, and the arguments that make it behave as Clara's."""

    target: str
    defaults: Mapping[str, Any] = field(default_factory=dict)


# clara_fl.components name -> MONAI peer (see clara_fl/components/ for why each exists).
CLARA_COMPONENTS: dict[str, ClaraPeer] = {
    "CheckpointSaver": ClaraPeer(
        "monai.handlers.CheckpointSaver", {"key_metric_filename": "model.pt", "final_filename": "final_model.pt"}
    ),
    "MetricsSaver": ClaraPeer("monai.handlers.MetricsSaver", {"batch_transform": IMAGE_META_BATCH_TRANSFORM}),
    "TensorBoardStatsHandler": ClaraPeer("monai.handlers.TensorBoardStatsHandler"),
    "TensorBoardImageHandler": ClaraPeer("monai.handlers.TensorBoardImageHandler"),
}


@dataclass(frozen=True)
class Target:
    """Where a component's class is, for the bundle and for argument translation."""

    dotted: str  # the bundle's _target_
    short_name: str  # the class name as the config wrote it (compat rules key on it)
    callable: Callable[..., Any]  # the class itself, for signature checks at export time
    defaults: Mapping[str, Any]  # arguments the bundle adds unless the config gives them
    byoc: bool = False  # the class lives in the MMAR's custom/ folder (the bundle's scripts/)


def _public_location(name: str) -> tuple[str, Callable[..., Any]] | None:
    for module_name in SEARCH_MODULES:
        found = getattr(importlib.import_module(module_name), name, None)
        if callable(found):
            return f"{module_name}.{name}", found
    return None


def _from_name(name: str) -> Target:
    removed = compat.removed_name_error(name)
    if removed:
        raise removed
    if name in CLARA_COMPONENTS:
        peer = CLARA_COMPONENTS[name]
        module_name, _, attr = peer.target.rpartition(".")
        return Target(peer.target, name, getattr(importlib.import_module(module_name), attr), peer.defaults)
    legacy = compat.LEGACY_NAMES.get(name)
    located = _public_location(legacy.replacement if legacy else name)
    if located is None:
        known = {n for m in SEARCH_MODULES for n in dir(importlib.import_module(m)) if n[:1].isupper()}
        raise ConfigError(f"unknown component name '{name}'{did_you_mean(name, known)}")
    dotted, target = located
    return Target(dotted, name, target, dict(legacy.defaults) if legacy else {})


def _from_path(dotted: str, custom_modules: frozenset[str]) -> Target:
    if dotted.startswith("clara_fl."):
        raise ConfigError(f"'{dotted}' is part of clara-fl and has no counterpart in a MONAI bundle")
    target = locate_path(dotted)
    top = dotted.split(".", 1)[0]
    return Target(dotted, dotted.rsplit(".", 1)[-1], target, {}, byoc=top in custom_modules)


def resolve_target(spec: ComponentSpec, custom_modules: frozenset[str]) -> Target:
    """The bundle target of a Clara component spec (its ``name`` or ``path``; the ``#alias`` is not part of it).

    Args:
        spec: the component as written in the Clara config.
        custom_modules: top-level module names found in the MMAR's ``custom/`` folder.

    Raises:
        ConfigError: an unknown name, a class MONAI removed, or a clara-fl path.
    """
    return _from_path(spec.path, custom_modules) if spec.path is not None else _from_name(spec.target)
