"""Switching a config's CheckpointLoaders off before it is built, as MONAI's FL client does.

In FL the weights come from the server: a CheckpointLoader in the MMAR would overwrite them at every
round (train section) or before every cross-site validation (validate section / validation config).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any, TypeGuard

from clara_fl.config.errors import json_path
from clara_fl.config.specs import class_name, config_sections, is_component

__all__ = ["without_checkpoint_loaders"]

HANDLER_NAME = "CheckpointLoader"


def _is_checkpoint_loader(spec: Any) -> TypeGuard[dict[str, Any]]:
    return is_component(spec) and class_name(spec) == HANDLER_NAME


def without_checkpoint_loaders(
    config: dict[str, Any], sections: Iterable[str] = ("train", "validate", "")
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """A copy of ``config`` whose ``handlers`` CheckpointLoaders are disabled.

    Args:
        config: a variable-substituted config (train config with sections, or a flat validation config).
        sections: the sections to look in; ``""`` is the top level of a flat config.

    Returns:
        The new config and, for each loader switched off, its JSON path and ``load_path``.
    """
    config = copy.deepcopy(config)
    disabled: list[tuple[str, str]] = []
    wanted = set(sections)
    for section, content in config_sections(config).items():
        handlers = content.get("handlers")
        if section not in wanted or not isinstance(handlers, list):
            continue
        for index, spec in enumerate(handlers):
            if _is_checkpoint_loader(spec) and spec.get("disabled") is not True:
                spec["disabled"] = True
                load_path = spec.get("args", {}).get("load_path") if isinstance(spec.get("args"), dict) else None
                disabled.append((json_path(section, "handlers", index), str(load_path)))
    return config, disabled
