"""Reading a run's cross-site validation results and printing them as a table."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["find_cross_site_results", "load_cross_site_results", "format_cross_site_table", "site_model_label"]

RESULTS_NAME = "cross_val_results.json"
CLIENT_CONFIG_NAME = "config_fed_client.json"
# algorithms whose sites submit another model than their best local one for cross-site validation
SITE_MODEL_LABELS = {"ditto": "personalized"}


def find_cross_site_results(workspace: str | os.PathLike) -> Path | None:
    """The newest non-empty cross_val_results.json under a simulator workspace or downloaded job."""
    found = sorted(Path(workspace).rglob(RESULTS_NAME), key=lambda p: p.stat().st_mtime)
    non_empty = [p for p in found if p.stat().st_size > 2]
    candidates = non_empty or found
    return candidates[-1] if candidates else None


def load_cross_site_results(path: str | os.PathLike) -> dict[str, dict[str, dict[str, Any]]]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def site_model_label(run: str | os.PathLike) -> str | None:
    """What the sites' models in a run's cross-site table are ("personalized" for Ditto); None: their best
    local models. Read from the site Learner's ``algorithm`` in the run's (or job's) config_fed_client.json."""
    for config in sorted(Path(run).rglob(CLIENT_CONFIG_NAME)):
        try:
            client = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        for component in client.get("components", []) if isinstance(client, dict) else []:
            algorithm = component.get("args", {}).get("algorithm") if isinstance(component, dict) else None
            if algorithm:
                return SITE_MODEL_LABELS.get(str(algorithm))
    return None


def _owner_order(owner: str) -> tuple[int, str]:
    """Server models ("SRV_FL_global_model.pt", or "FL_global_model.pt" under CrossSiteEval) first."""
    return (0 if owner.startswith("SRV_") or owner.endswith(".pt") else 1, owner)


def format_cross_site_table(
    results: Mapping[str, Mapping[str, Mapping[str, Any]]],
    metric: str = "val_mean_dice",
    site_label: str | None = None,
) -> str:
    """Rows: data site; columns: model owner (server models first, sites' models named ``site (site_label)``
    when given); cells: ``metric``."""
    owners = sorted({owner for row in results.values() for owner in row}, key=_owner_order)
    names = [
        o.replace(".pt", "") if _owner_order(o)[0] == 0 or not site_label else f"{o} ({site_label})" for o in owners
    ]
    headers = ["data site \\ model", *names]
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
