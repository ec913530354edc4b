"""A/B comparisons: the arms take turns going first, and a verdict is the median over the pairs."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def rotated(arms: Sequence[T], turn: int) -> list[T]:
    """``arms`` in the order of pair ``turn``: each arm goes first in turn (two arms alternate)."""
    start = turn % len(arms)
    return [*arms[start:], *arms[:start]]


def median(values: Sequence[float | None]) -> float | None:
    """The median of the values that are not None; None when there are none."""
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None
