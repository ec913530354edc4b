"""The report's data statistics section (``clara-fl stats``): per-site histograms side by side, the sites' differences.

Read from ``clara_fl_stats.json`` (:mod:`clara_fl.fl.stats.summary`) in the run's folder; a run without it has no
such section.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clara_fl.report.figures import Picture, _pyplot, _render

__all__ = ["StatsSection", "stats_section", "histograms_figure"]

GLOBAL = "Global"


@dataclass(frozen=True)
class StatsSection:
    """The pictures (one per feature with histograms) and the differences table of a statistics run."""

    pictures: list[Picture]
    differences: list[dict[str, Any]]
    sites: list[str]


def _find(path: str | os.PathLike) -> Path | None:
    from clara_fl.fl.stats.summary import STATS_FILE

    candidate = Path(path) / STATS_FILE
    return candidate if candidate.is_file() else None


def histograms_figure(feature: str, histograms: Mapping[str, Mapping[str, Any]]) -> Picture:
    """One panel per dataset, each site's histogram of ``feature`` as bars side by side in every bin."""
    plt = _pyplot()
    datasets = sorted({d for per_site in histograms.values() for d in per_site})
    sites = sorted(s for s in histograms if s != GLOBAL)
    figure, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.0), squeeze=False)
    for axis, dataset in zip(axes[0], datasets, strict=True):
        for k, site in enumerate(sites):
            bins = histograms[site].get(dataset) or []
            if not bins:
                continue
            total = sum(float(b[2]) for b in bins) or 1.0
            width = (float(bins[0][1]) - float(bins[0][0])) / (len(sites) + 1)
            lefts = [float(b[0]) + width * (k + 0.5) for b in bins]
            axis.bar(lefts, [float(b[2]) / total for b in bins], width=width, label=site, align="edge")
        axis.set_title(f"{feature} ({dataset})", fontsize=9)
        axis.set_ylabel("share", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.legend(fontsize=7)
    figure.tight_layout()
    return _render(figure, f"stats_{feature}", f"{feature}: each site's histogram (share of its count)")


def stats_section(path: str | os.PathLike) -> StatsSection | None:
    """The section for the run at ``path``, or None when it has no statistics file."""
    from clara_fl.fl.stats.summary import read_stats_file

    found = _find(path)
    if found is None:
        return None
    content = read_stats_file(found)
    pictures = []
    for feature, statistics in sorted(content.get("flare", {}).items()):
        histograms = statistics.get("histogram") or {}
        if any(bins for s, per in histograms.items() if s != GLOBAL for bins in per.values()):
            pictures.append(histograms_figure(feature, histograms))
    summary = content.get("summary", {})
    return StatsSection(pictures, list(summary.get("differences", [])), sorted(summary.get("sites", {})))


def stats_markup(section: StatsSection | None, picture: Any) -> Any:
    """The section's HTML (escaped), or nothing; ``picture`` renders a Picture as the report's other pictures."""
    from markupsafe import Markup, escape

    if section is None:
        return Markup("")
    head = "".join(f"<th>{escape(s)}</th>" for s in section.sites)
    rows = []
    for r in section.differences:
        means = "".join(f"<td>{_number(r['means'].get(s))}</td>" for s in section.sites)
        relative = "-" if r.get("relative_spread") is None else f"{100 * r['relative_spread']:.1f}%"
        ratio = "-" if r.get("stddev_ratio") is None else f"{r['stddev_ratio']:.2f}"
        rows.append(
            f"<tr><td>{escape(r['dataset'])}</td><td>{escape(r['feature'])}</td>{means}"
            f"<td>{relative}</td><td>{ratio}</td></tr>"
        )
    table = (
        f"<table><tr><th>dataset</th><th>feature</th>{head}<th>relative spread of means</th>"
        f"<th>largest/smallest stddev</th></tr>{''.join(rows)}</table>"
    )
    figures = "".join(str(picture(p)) for p in section.pictures)
    return Markup(
        "<h2>Data statistics</h2><p>Each site's data as read through the MMAR's loader (clara-fl stats), after the "
        f"sites' privacy filters. Means per site:</p>{table}{figures}"
    )


def _number(value: Any) -> str:
    return "-" if value is None else f"{float(value):.4g}"
