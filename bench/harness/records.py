"""A figure's record (what ``latest.json`` keeps of it) and the table the suite prints."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any


@dataclasses.dataclass
class Record:
    """One figure: what was compared with what, the median over pairs, and its goal."""

    figure: str
    measure: str
    baseline: str
    kind: str  # "ratio", "delta", "value", "dice" or "skipped"
    value: float | None
    unit: str
    goal: str
    met: bool | None  # None: no goal (informational) or skipped
    samples: list[Any] = dataclasses.field(default_factory=list)
    note: str = ""
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)

    def shown_value(self) -> str:
        if self.value is None or self.kind == "dice":
            return self.note or "-"
        if self.kind == "delta":
            return f"{self.value:+.2f} {self.unit}".strip()
        if self.kind == "ratio":
            return f"{self.value:.3f}"
        return f"{self.value:.2f} {self.unit}".strip()


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def table(records: Sequence[Record]) -> str:
    """One row per record: figure, baseline, value, goal and whether it was met (long cells cut with ``…``)."""
    rows = [("figure", "clara-fl vs baseline", "value", "goal", "met")]
    for r in records:
        met = "n/a" if r.met is None else ("yes" if r.met else "NO")
        rows.append((r.figure, r.baseline, r.shown_value(), r.goal, met))
    widths = [min(max(len(row[i]) for row in rows), 60 if i == 1 else 200) for i in range(5)]

    def fmt(row: Sequence[str]) -> str:
        cells = [(c if len(c) <= widths[i] else c[: widths[i] - 1] + "…").ljust(widths[i]) for i, c in enumerate(row)]
        return "  ".join(cells).rstrip()

    lines = [fmt(rows[0]), fmt(["-" * w for w in widths])] + [fmt(row) for row in rows[1:]]
    return "\n".join(lines)
