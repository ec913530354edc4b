"""A run's report: collect its results, draw the pictures, write ``report.html`` and the PNGs beside it."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from clara_fl.report.collect import collect
from clara_fl.report.figures import (
    Picture,
    case_distribution_figure,
    cross_site_figure,
    curves_figure,
    global_model_figure,
    round_timeline_figure,
)
from clara_fl.report.html import CasePicture, group_summaries, render_html, worst_cases
from clara_fl.report.records import RunResults, lower_is_better
from clara_fl.report.stats_section import stats_section
from clara_fl.runtime.files import atomic_write

__all__ = ["ReportFiles", "write_report", "REPORT_NAME"]

REPORT_NAME = "report.html"


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`write_report` wrote and how long it took."""

    html: Path
    pictures: list[Picture]
    seconds: float


def write_report(path: str | os.PathLike, output: str | os.PathLike | None = None) -> ReportFiles:
    """Write ``report.html`` and its PNGs for the run at ``path`` into ``output`` (default ``path/report``).

    Args:
        path: a simulator workspace, a downloaded job result or a standalone MMAR.
        output: the folder to write into; created if missing.

    Raises:
        ConfigError: ``path`` holds none of these runs.
    """
    start = time.perf_counter()
    results = collect(path)  # checks the input before anything is written
    pictures, case_pictures, missing = draw(results)
    out = Path(output) if output is not None else Path(path) / "report"
    out.mkdir(parents=True, exist_ok=True)
    statistics = stats_section(path)  # clara-fl stats: the sites' data statistics, when the run has them
    every_picture = [p for p in pictures.values() if p is not None] + [c.picture for c in case_pictures]
    every_picture += statistics.pictures if statistics is not None else []
    for picture in every_picture:
        (out / f"{picture.name}.png").write_bytes(picture.png)
    html = out / REPORT_NAME
    page = render_html(results, pictures, case_pictures, missing, statistics).encode("utf-8")
    atomic_write(html, lambda f: f.write(page))
    return ReportFiles(html=html, pictures=every_picture, seconds=time.perf_counter() - start)


def draw(results: RunResults) -> tuple[dict[str, Picture | None], list[CasePicture], list[str]]:
    """Every picture the results allow, and a line for each section that had nothing to show."""
    run = results.description
    key_metric = run.key_metric
    pictures: dict[str, Picture | None] = {}
    missing: list[str] = []
    federated = run.kind == "federated"
    if federated:
        if results.cross_site and results.cross_site.sites:
            metric = results.cross_site_metric()
            pictures["cross_site"] = cross_site_figure(results.cross_site, metric, lower_is_better(metric))
        else:
            missing.append("cross-site validation: no cross_val_results.json")
    if results.curves:
        if federated:
            pictures["curves"] = curves_figure(
                results.curves, "training_curves", "training curves per site", run.epochs_per_round
            )
        else:
            best = run.facts.get("best_key_metric_epoch")
            pictures["curves"] = curves_figure(
                results.curves,
                "training_curves",
                "training curves",
                best_epoch=int(best) if best and best.isdigit() else None,
                key_metric=key_metric,
            )
    else:
        missing.append("training curves: no TensorBoard events")
    if federated:
        if any(key_metric in values for rounds in results.global_model.values() for values in rounds.values()):
            pictures["global_model"] = global_model_figure(results.global_model, key_metric)
        else:
            missing.append("global model per round: no site or server events or log with before-training validation")
        if results.timeline:
            pictures["timeline"] = round_timeline_figure(results.timeline, run.sites)
        else:
            missing.append("round timeline: no server events or log.txt with round lines")
    case_pictures = []
    for metric in sorted({s.metric for s in results.case_scores}, key=lambda m: (m != key_metric, m)):
        case_pictures.append(
            CasePicture(
                metric,
                case_distribution_figure(results.case_scores, metric),
                group_summaries(results.case_scores, metric),
                worst_cases(results.case_scores, metric),
            )
        )
    if not case_pictures:
        missing.append("validation details: no MetricsSaver <metric>_raw.csv files")
    return pictures, case_pictures, missing
