"""Reading a run's cross-site validation results and printing them as a table.

FLARE's ``cross_val_results.json`` holds the cells that succeeded; clara-fl's server
(:class:`~clara_fl.fl.server.site_failures.SiteFailureReporter`) writes the ones that failed, with the
site's reason, to ``cross_val_failures.json`` beside it (:class:`CrossSiteFailures`). The table shows both, and
where the sites trained with DP-SGD, the privacy budget each had spent (:class:`SpentBudgets`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CrossSiteFailures",
    "SpentBudgets",
    "cross_site_table",
    "find_cross_site_results",
    "format_cross_site_table",
    "load_cross_site_failures",
    "load_cross_site_results",
    "site_model_label",
    "table_metric",
]

CROSS_SITE_DIR = "cross_site_val"
RESULTS_NAME = "cross_val_results.json"
CLIENT_CONFIG_NAME = "config_fed_client.json"
SERVER_CONFIG_NAME = "config_fed_server.json"
# algorithms whose sites submit another model than their best local one for cross-site validation
SITE_MODEL_LABELS = {"ditto": "personalized"}
FAILURES_NAME = "cross_val_failures.json"
FAILED = "failed"
EPSILON_COLUMN = "DP epsilon"


@dataclass
class CrossSiteFailures:
    """The cross-site cells that failed, with the site's reason: ``validations[data site][model owner]``, and
    ``models[owner]`` for a site that could not submit its model (its whole column failed)."""

    validations: dict[str, dict[str, str]] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)

    def reason(self, site: str, owner: str) -> str | None:
        """Why the cell (data ``site``, model ``owner``) has no result; None when it did not fail."""
        return self.validations.get(site, {}).get(owner) or self.models.get(owner)

    def sites(self) -> set[str]:
        return set(self.validations)

    def owners(self) -> set[str]:
        return {owner for row in self.validations.values() for owner in row} | set(self.models)

    def explained(self) -> list[str]:
        """One ``site: reason`` line per site that failed and distinct reason."""
        lines = {f"{site}: {reason}" for site, row in self.validations.items() for reason in row.values()}
        return sorted(lines | {f"{owner}: {reason}" for owner, reason in self.models.items()})

    def write(self, path: str | os.PathLike) -> None:
        from clara_fl.runtime.files import write_json_atomic

        os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
        write_json_atomic(path, {"validations": self.validations, "models": self.models})


@dataclass(frozen=True)
class SpentBudgets:
    """The DP-SGD privacy budget each site had spent on its training data after its last round: ``epsilon[site]``,
    at the job's ``delta`` (None: not known)."""

    epsilon: Mapping[str, float]
    delta: float | None = None

    def note(self) -> str:
        at = f" at delta {self.delta:g}" if self.delta is not None else ""
        return f"{EPSILON_COLUMN}: the privacy budget each site had spent after its last round of DP-SGD{at}"


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


def cross_site_table(
    run: str | os.PathLike, metric: str | None = None, *, budgets: SpentBudgets | None = None
) -> str | None:
    """The cross-site table of a run (a simulator workspace or a downloaded job) as text: ``metric`` (default:
    :func:`table_metric`), sites' models labelled as :func:`site_model_label` says, failed cells marked, each
    site's spent DP-SGD budget where ``budgets`` has one; None when the run holds no cross_val_results.json.

    Args:
        run: the simulator workspace or downloaded job.
        metric: the metric shown; None: :func:`table_metric`.
        budgets: the run's spent DP-SGD budgets (``clara_fl.report.collect.spent_budgets``); None: no column.
    """
    results = find_cross_site_results(run)
    if results is None:
        return None
    table = load_cross_site_results(results)
    return format_cross_site_table(
        table,
        metric or table_metric(run, table),
        site_model_label(run),
        failures=load_cross_site_failures(results),
        budgets=budgets,
    )


def table_metric(run: str | os.PathLike, results: Mapping[str, Mapping[str, Any]]) -> str:
    """The metric a run's cross-site table shows by default: the server's best-model selector key (the MMAR's
    validation key metric) from the run's config_fed_server.json, else the first metric in the results."""
    for config in sorted(Path(run).rglob(SERVER_CONFIG_NAME)):
        try:
            server = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        for component in server.get("components", []) if isinstance(server, dict) else []:
            key = component.get("args", {}).get("key_metric") if isinstance(component, dict) else None
            if isinstance(key, str) and key:
                return key
    for row in results.values():
        for cell in row.values():
            if isinstance(cell, Mapping) and cell:
                return str(next(iter(cell)))
    return "val_mean_dice"


def load_cross_site_failures(results_path: str | os.PathLike) -> CrossSiteFailures:
    """The failed cells recorded beside ``results_path`` (cross_val_results.json); none when there is no record."""
    path = Path(results_path).with_name(FAILURES_NAME)
    if not path.is_file():
        return CrossSiteFailures()
    data = json.loads(path.read_text(encoding="utf-8"))
    return CrossSiteFailures(validations=dict(data.get("validations", {})), models=dict(data.get("models", {})))


def _owner_order(owner: str) -> tuple[int, str]:
    """Server models ("SRV_FL_global_model.pt", or "FL_global_model.pt" under CrossSiteEval) first."""
    return (0 if owner.startswith("SRV_") or owner.endswith(".pt") else 1, owner)


def format_cross_site_table(
    results: Mapping[str, Mapping[str, Mapping[str, Any]]],
    metric: str = "val_mean_dice",
    site_label: str | None = None,
    *,
    failures: CrossSiteFailures | None = None,
    budgets: SpentBudgets | None = None,
) -> str:
    """Rows: data site; columns: model owner (server models first, sites' models named ``site (site_label)``
    when given); cells: ``metric``, ``failed`` where the site failed the cell (``failures``), ``-`` where
    there is no result and no recorded failure. Where any site trained with DP-SGD (``budgets``), a last column
    holds the epsilon each site had spent (``-`` for a site without), and a line under the table says what it is."""
    failures = failures or CrossSiteFailures()
    spent = dict(budgets.epsilon) if budgets is not None else {}
    sites = sorted(set(results) | failures.sites() | set(spent))
    owners = sorted({owner for row in results.values() for owner in row} | failures.owners(), key=_owner_order)
    names = [
        o.replace(".pt", "") if _owner_order(o)[0] == 0 or not site_label else f"{o} ({site_label})" for o in owners
    ]
    headers = ["data site \\ model", *names, *([EPSILON_COLUMN] if spent else [])]
    rows = []
    for site in sites:
        cells = [site]
        for owner in owners:
            cell = results.get(site, {}).get(owner)
            value = cell.get(metric) if isinstance(cell, Mapping) else None
            if isinstance(value, (int, float)):
                cells.append(f"{value:.4f}")
            else:
                cells.append(FAILED if failures.reason(site, owner) else "-")
        if spent:
            cells.append(f"{spent[site]:.3f}" if site in spent else "-")
        rows.append(cells)
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    lines = [f"{metric} (cross-site validation)", line(headers), line(["-" * w for w in widths]), *map(line, rows)]
    lines += [f"{FAILED}: {reason}" for reason in failures.explained()]
    if spent and budgets is not None:
        lines.append(budgets.note())
    return "\n".join(lines)
