"""Clara AutoML annotations in a training config run outside AutoML.

``search`` (a component's search space) only tells AutoML what to vary: outside AutoML the component runs
with the values its ``args`` give, so the key is removed with one INFO line. ``apply`` chooses between
alternative components and has no meaning without an AutoML controller, so it is refused.
"""

from __future__ import annotations

import logging
from typing import Any

from clara_fl.config.clara40.changes import Change
from clara_fl.config.errors import ConfigError, json_path

__all__ = ["drop_search_annotations"]

logger = logging.getLogger(__name__)
_reported: set[str] = set()  # one line per config file and process, however often it is read


def _walk(value: Any, path: str, changes: list[Change]) -> None:
    if isinstance(value, dict):
        if "apply" in value and ("name" in value or "path" in value or "search" in value or "targets" in value):
            raise ConfigError(
                "'apply' (a choice between alternative components) is an AutoML-only construct; it runs only under "
                "Clara AutoML: keep one alternative for a plain training run",
                path=json_path(path, "apply"),
            )
        if "search" in value and ("name" in value or "path" in value):
            value.pop("search")
            changes.append(Change(json_path(path, "search"), "AutoML search space ignored outside AutoML"))
        for key, item in value.items():
            _walk(item, json_path(path, key), changes)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _walk(item, json_path(path, index), changes)


def drop_search_annotations(config: dict[str, Any], file: str | None = None) -> list[Change]:
    """Remove AutoML ``search`` annotations from components, in place; returns what was removed.

    Raises:
        ConfigError: the config uses ``apply``, which needs AutoML.
    """
    changes: list[Change] = []
    try:
        _walk(config, "", changes)
    except ConfigError as e:
        raise e.located(file) from e.__cause__
    if changes and (file or "config") not in _reported:
        _reported.add(file or "config")
        logger.info(
            "%s: AutoML 'search' annotations ignored outside AutoML (%s)",
            file or "config",
            ", ".join(c.path for c in changes),
        )
    return changes
