"""Reading a run's cross-site validation results and printing them as a table."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["find_cross_site_results", "load_cross_site_results", "format_cross_site_table"]

RESULTS_NAME = "cross_val_results.json"


def find_cross_site_results(workspace: str | os.PathLike) -> Path | None:
    """The newest non-empty cross_val_results.json under a simulator workspace or downloaded job."""
    found = sorted(Path(workspace).rglob(RESULTS_NAME), key=lambda p: p.stat().st_mtime)
    non_empty = [p for p in found if p.stat().st_size > 2]
    candidates = non_empty or found
    return candidates[-1] if candidates else None


def load_cross_site_results(path: str | os.PathLike) -> dict[str, dict[str, dict[str, Any]]]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _owner_order(owner: str) -> tuple[int, str]:
    """Server models ("SRV_FL_global_model.pt", or "FL_global_model.pt" under CrossSiteEval) first."""
    return (0 if owner.startswith("SRV_") or owner.endswith(".pt") else 1, owner)


def format_cross_site_table(
    results: Mapping[str, Mapping[str, Mapping[str, Any]]], metric: str = "val_mean_dice"
) -> str:
    """Rows: data site; columns: model owner (server models first); cells: ``metric``."""
    owners = sorted({owner for row in results.values() for owner in row}, key=_owner_order)
    headers = ["data site \\ model"] + [o.replace(".pt", "") for o in owners]
    rows = []
    for site in sorted(results):
        cells = [site]
        for owner in owners:
            value = results[site].get(owner, {}).get(metric) if isinstance(results[site].get(owner), Mapping) else None
            cells.append(f"{value:.4f}" if isinstance(value, (int, float)) else "-")
        rows.append(cells)
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    return "\n".join(
        [f"{metric} (cross-site validation)", line(headers), line(["-" * w for w in widths]), *map(line, rows)]
    )
