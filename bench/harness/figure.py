"""What a figure is to the suite: its number, its title and the function that measures it, given the run's
context (settings, data, scratch folder, log), where figures that share runs find them made once."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

from bench.harness.records import Record
from bench.harness.settings import Settings

T = TypeVar("T")


@dataclasses.dataclass
class Context:
    """One suite run as the figures see it."""

    settings: Settings
    data: Path  # the cached synthetic data (identical sites)
    work: Path  # scratch folder, emptied at the start of the run
    log: Callable[[str], None]
    quick: bool = False  # ``--quick`` given (whatever else was changed)
    _shared: dict[str, Any] = dataclasses.field(default_factory=dict)

    def shared(self, key: str, make: Callable[[Context], T]) -> T:
        """``make(self)``, called once per run for ``key``: the runs several figures read (figures 1-3, 4-5)."""
        if key not in self._shared:
            self._shared[key] = make(self)
        return cast(T, self._shared[key])


@dataclasses.dataclass(frozen=True)
class Figure:
    """A figure of the suite: ``--figures NUMBER`` runs ``measure``, whose records go into the table and JSON."""

    number: str
    title: str
    measure: Callable[[Context], list[Record]]
