"""One translation applied to a config: where (a JSON path) and what it did."""

from __future__ import annotations

import logging
from dataclasses import dataclass

__all__ = ["Change", "log_changes"]

logger = logging.getLogger("clara_fl.config.clara40")
_logged: set[tuple[str | None, Change]] = set()  # a config is read several times a run (checks, build, FL rounds)


@dataclass(frozen=True)
class Change:
    """A rewrite of one config item, e.g. ``train.optimizer.args.params: added "#@model.parameters()"``."""

    path: str
    what: str

    def __str__(self) -> str:
        return f"{self.path}: {self.what}"


def log_changes(changes: list[Change], file: str | None) -> None:
    """Log each change once per process at INFO, prefixed by the config file."""
    for change in dict.fromkeys(changes):
        if (file, change) in _logged:
            continue
        _logged.add((file, change))
        logger.info("%s%s", f"{file}: " if file else "", change)
