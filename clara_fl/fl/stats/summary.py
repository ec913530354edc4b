"""Clara's summary of a federated statistics result: per site and over all sites, and how the sites differ.

FLARE's result (``statistics/flare_stats.json`` on the server) is ``{feature: {statistic: {site or "Global":
{dataset: value}}}}``. :func:`summarize` turns it into ``{"sites": {site: {dataset: {feature: numbers}}},
"global": {dataset: {feature: numbers}}, "differences": [...]}`` where numbers are count, mean, stddev and the
quantiles read from the (privacy-filtered) histogram, and each difference row compares the sites' means and
standard deviations of one feature. Everything here came through the sites' privacy filters: no case names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from clara_fl.fl.stats.features import histogram_quantiles

__all__ = ["GLOBAL", "STATS_FILE", "summarize", "write_stats_file", "read_stats_file"]

GLOBAL = "Global"  # FLARE's StatisticsConstants.GLOBAL
STATS_FILE = "clara_fl_stats.json"


def _numbers(feature: Mapping[str, Any], owner: str, dataset: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for statistic in ("count", "mean", "stddev"):
        value = feature.get(statistic, {}).get(owner, {}).get(dataset)
        if value is not None:
            out[statistic] = value
    bins = feature.get("histogram", {}).get(owner, {}).get(dataset)
    if bins:
        out["quantiles"] = histogram_quantiles(bins)
    return out


def summarize(flare: Mapping[str, Any]) -> dict[str, Any]:
    """Clara's summary of FLARE's statistics result (see the module docstring)."""
    sites: dict[str, dict[str, dict[str, Any]]] = {}
    overall: dict[str, dict[str, Any]] = {}
    for feature, statistics in flare.items():
        for owner, datasets in statistics.get("count", {}).items():
            for dataset in datasets:
                numbers = _numbers(statistics, owner, dataset)
                target = overall if owner == GLOBAL else sites.setdefault(owner, {})
                target.setdefault(dataset, {})[feature] = numbers
    return {"sites": sites, "global": overall, "differences": _differences(sites, overall)}


def _differences(sites: Mapping[str, Any], overall: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for dataset, features in overall.items():
        for feature, total in features.items():
            means = {
                s: v[dataset][feature]["mean"]
                for s, v in sites.items()
                if "mean" in v.get(dataset, {}).get(feature, {})
            }
            if len(means) < 2:
                continue
            stddevs = {s: v[dataset][feature].get("stddev") for s, v in sites.items() if s in means}
            spread = max(means.values()) - min(means.values())
            scale = abs(float(total.get("mean", 0.0)))
            known = [float(v) for v in stddevs.values() if v is not None]
            rows.append(
                {
                    "dataset": dataset,
                    "feature": feature,
                    "means": means,
                    "stddevs": stddevs,
                    "spread": round(spread, 6),
                    "relative_spread": round(spread / scale, 6) if scale > 0 else None,
                    "stddev_ratio": round(max(known) / min(known), 6) if known and min(known) > 0 else None,
                }
            )
    return rows


def write_stats_file(path: str | os.PathLike, flare: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``{"flare": FLARE's result, "summary": summarize(...)}`` to ``path``; returns what was written."""
    from clara_fl.runtime.files import write_json_atomic

    content = {"flare": dict(flare), "summary": summarize(flare)}
    write_json_atomic(path, content)
    return content


def read_stats_file(path: str | os.PathLike) -> dict[str, Any]:
    """What :func:`write_stats_file` wrote."""
    with open(path, encoding="utf-8") as f:
        content: dict[str, Any] = json.load(f)
    return content
