"""The report's pictures, drawn with matplotlib's Agg backend into PNG bytes of a known pixel size."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from clara_fl.report.records import CaseScores, CrossSiteMatrix, Curve, RoundTiming

__all__ = [
    "Picture",
    "case_distribution_figure",
    "cross_site_figure",
    "curves_figure",
    "global_model_figure",
    "round_timeline_figure",
]

DPI = 100
COLORS = {"training": "#4C72B0", "waiting": "#C8C8C8", "aggregation": "#DD8452"}


@dataclass(frozen=True)
class Picture:
    """A PNG image: file name, what it shows, its size in pixels and its bytes."""

    name: str
    title: str
    width: int
    height: int
    png: bytes


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _render(figure: Any, name: str, title: str) -> Picture:
    """PNG bytes of exactly figsize x DPI pixels (no tight bounding box, which would change the size)."""
    plt = _pyplot()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    width, height = (round(v * DPI) for v in figure.get_size_inches())
    plt.close(figure)
    return Picture(name=name, title=title, width=width, height=height, png=buffer.getvalue())


def _short(owner: str) -> str:
    return owner[: -len(".pt")] if owner.endswith(".pt") else owner


def cross_site_figure(matrix: CrossSiteMatrix, metric: str, lower_is_better: bool = False) -> Picture:
    """Heatmap: rows data sites, columns model owners, each cell's value printed; failed cells hatched."""
    import numpy as np

    plt = _pyplot()
    values = np.array(
        [[_nan_if_none(matrix.value(s, o, metric)) for o in matrix.owners] for s in matrix.sites], dtype=float
    )
    width = max(6.0, 1.7 * len(matrix.owners) + 3.0)
    height = max(3.0, 0.8 * len(matrix.sites) + 2.4)
    figure, axes = plt.subplots(figsize=(width, height), layout="constrained")
    cmap = plt.get_cmap("viridis_r" if lower_is_better else "viridis").with_extremes(bad="#EEEEEE")
    finite = values[np.isfinite(values)]
    image = axes.imshow(
        np.ma.masked_invalid(values),
        cmap=cmap,
        aspect="auto",
        vmin=float(finite.min()) if finite.size else 0.0,
        vmax=float(finite.max()) if finite.size else 1.0,
    )
    middle = float(finite.mean()) if finite.size else 0.0
    for row in range(len(matrix.sites)):
        for column in range(len(matrix.owners)):
            value = values[row, column]
            if math.isnan(value):
                cell = plt.Rectangle((column - 0.5, row - 0.5), 1, 1, fill=False, hatch="xx", edgecolor="#B03030")
                axes.add_patch(cell)
                axes.text(
                    column,
                    row,
                    "failed",
                    ha="center",
                    va="center",
                    color="#B03030",
                    fontweight="bold",
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 2},
                )
            else:
                dark = (value < middle) != lower_is_better
                axes.text(column, row, f"{value:.3f}", ha="center", va="center", color="white" if dark else "black")
    axes.set_xticks(
        range(len(matrix.owners)), [_short(matrix.owner_name(o)) for o in matrix.owners], rotation=20, ha="right"
    )
    axes.set_yticks(range(len(matrix.sites)), matrix.sites)
    axes.set_xlabel("model (owner)")
    axes.set_ylabel("data site")
    axes.set_title(f"cross-site validation: {metric}")
    figure.colorbar(image, ax=axes, label=metric)
    return _render(figure, "cross_site", f"Cross-site validation ({metric})")


def _nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def curves_figure(
    curves: Mapping[str, Mapping[str, Curve]],
    name: str,
    title: str,
    epochs_per_round: int | None = None,
    best_epoch: int | None = None,
    key_metric: str | None = None,
) -> Picture:
    """One panel per tag, one line per site; dashed lines at round boundaries, a dotted one at the best epoch."""
    plt = _pyplot()
    tags = sorted({tag for site_curves in curves.values() for tag in site_curves}, key=_tag_order)
    columns = min(2, max(1, len(tags)))
    rows = max(1, math.ceil(len(tags) / columns))
    figure, grid = plt.subplots(rows, columns, figsize=(6.0 * columns, 3.6 * rows), layout="constrained", squeeze=False)
    for index, tag in enumerate(tags):
        axes = grid[index // columns][index % columns]
        last = 0.0
        for site in sorted(curves):
            curve = curves[site].get(tag)
            if curve is None or not curve.steps:
                continue
            marker = "o" if len(curve.steps) <= 30 else None
            axes.plot(curve.steps, curve.values, marker=marker, markersize=3, label=site)
            last = max(last, max(curve.steps))
        if epochs_per_round:
            for boundary in range(epochs_per_round, int(last), epochs_per_round):
                axes.axvline(boundary + 0.5, color="#999999", linestyle="--", linewidth=0.8)
        if best_epoch is not None and tag == key_metric:
            axes.axvline(best_epoch, color="#B03030", linestyle=":", label=f"best epoch {best_epoch}")
        axes.set_title(tag)
        axes.set_xlabel("epoch" + (f" (rounds of {epochs_per_round})" if epochs_per_round else ""))
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    for index in range(len(tags), rows * columns):
        grid[index // columns][index % columns].set_visible(False)
    figure.suptitle(title)
    return _render(figure, name, title)


def _tag_order(tag: str) -> tuple[int, str]:
    """Losses first, then training metrics, then validation metrics."""
    return (0 if "loss" in tag else 1 if tag.startswith("train") else 2, tag)


def global_model_figure(global_model: Mapping[str, Mapping[int, Mapping[str, float]]], metric: str) -> Picture:
    """The global model's key metric at each site before local training, per round."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7.0, 3.8), layout="constrained")
    for site in sorted(global_model):
        rounds = sorted(r for r, values in global_model[site].items() if metric in values)
        axes.plot(rounds, [global_model[site][r][metric] for r in rounds], marker="o", label=site)
    axes.set_xlabel("round (the global model as it arrives, before local training)")
    axes.set_ylabel(metric)
    axes.set_title(f"global model per round: {metric} at each site")
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return _render(figure, "global_model", f"Global model per round ({metric})")


def round_timeline_figure(timeline: Sequence[RoundTiming], sites: Sequence[str]) -> Picture:
    """Per round and site: waiting for the task, local training, waiting for the others; the server's aggregation."""
    plt = _pyplot()
    rows = [*sites, "server"]
    figure, axes = plt.subplots(figsize=(10.0, max(2.6, 0.6 * len(rows) + 1.6)), layout="constrained")
    for timing in timeline:
        end = timing.aggregation_started if timing.aggregation_started is not None else timing.finished
        for row, site in enumerate(sites):
            task = timing.sites.get(site)
            if task is None or task.assigned is None or task.returned is None:
                continue
            band = (row - 0.3, 0.6)
            axes.broken_barh([(timing.started, task.assigned - timing.started)], band, color=COLORS["waiting"])
            axes.broken_barh([(task.assigned, task.returned - task.assigned)], band, color=COLORS["training"])
            if end is not None and end > task.returned:
                axes.broken_barh([(task.returned, end - task.returned)], band, color=COLORS["waiting"])
        aggregation = timing.aggregation_time()
        if aggregation is not None and timing.aggregation_started is not None:
            bar = (timing.aggregation_started, max(aggregation, 0.05))  # visible even when it took milliseconds
            axes.broken_barh([bar], (len(sites) - 0.3, 0.6), color=COLORS["aggregation"])
        axes.axvline(timing.started, color="#666666", linewidth=0.8)
        axes.text(timing.started, len(rows) - 0.45, f" round {timing.round}", fontsize="small", va="bottom")
    axes.set_yticks(range(len(rows)), rows)
    axes.set_ylim(-0.6, len(rows) - 0.1)
    axes.set_xlabel("seconds from the first round's start")
    axes.set_title("round timeline")
    handles = [plt.Rectangle((0, 0), 1, 1, color=color) for color in COLORS.values()]
    labels = ["local training", "waiting", "aggregation"]
    axes.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    return _render(figure, "round_timeline", "Round timeline")


def case_distribution_figure(scores: Sequence[CaseScores], metric: str) -> Picture:
    """Per (site, model): the per-case values of ``metric`` as a box with every case as a dot."""
    plt = _pyplot()
    groups = [s for s in scores if s.metric == metric and s.cases]
    labels = [f"{_short(s.model)} @ {s.site}" if s.site != "local" else _short(s.model) for s in groups]
    figure, axes = plt.subplots(figsize=(8.0, max(2.6, 0.45 * len(groups) + 1.6)), layout="constrained")
    data = [[value for _, value in s.cases] for s in groups]
    axes.boxplot(data, vert=False, widths=0.5, showfliers=False)
    for index, values in enumerate(data, start=1):
        jitter = [index + 0.12 * math.sin(7.3 * k) for k in range(len(values))]
        axes.scatter(values, jitter, s=12, color="#4C72B0", alpha=0.8, zorder=3)
    axes.set_yticks(range(1, len(groups) + 1), labels)
    axes.invert_yaxis()  # the first group on top, as in the table below the picture
    axes.set_xlabel(metric)
    axes.set_title(f"per-case {metric}")
    axes.grid(axis="x", alpha=0.3)
    return _render(figure, f"cases_{_file_part(metric)}", f"Per-case {metric}")


def _file_part(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)
