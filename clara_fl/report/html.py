"""The report as one self-contained HTML file: a Jinja2 template with the pictures embedded as data URIs."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from clara_fl.report.figures import Picture
from clara_fl.report.records import CaseScores, RunResults

__all__ = ["CasePicture", "GroupSummary", "WorstCase", "group_summaries", "render_html", "worst_cases"]

TEMPLATE = "report.html.j2"
WORST_CASES = 5


@dataclass(frozen=True)
class WorstCase:
    case: str
    site: str
    model: str
    value: float


@dataclass(frozen=True)
class GroupSummary:
    """One (site, model) pair's per-case values of a metric, in numbers."""

    site: str
    model: str
    cases: int
    mean: float
    median: float
    worst: WorstCase


@dataclass(frozen=True)
class CasePicture:
    """A metric's per-case picture, a summary per (site, model) and the worst cases overall."""

    metric: str
    picture: Picture
    groups: list[GroupSummary]
    worst: list[WorstCase]


def worst_cases(scores: Sequence[CaseScores], metric: str, count: int = WORST_CASES) -> list[WorstCase]:
    """The ``count`` worst per-case values of ``metric`` over every site and model (lowest, or highest for losses)."""
    rows = [WorstCase(case, s.site, s.model, value) for s in scores if s.metric == metric for case, value in s.cases]
    lower_is_better = any(s.lower_is_better for s in scores if s.metric == metric)
    return sorted(rows, key=lambda r: r.value, reverse=lower_is_better)[:count]


def group_summaries(scores: Sequence[CaseScores], metric: str) -> list[GroupSummary]:
    """Count, mean, median and worst case of ``metric`` for every (site, model) pair that has cases."""
    import statistics

    found = []
    for s in scores:
        if s.metric != metric or not s.cases:
            continue
        values = [value for _, value in s.cases]
        pick = max if s.lower_is_better else min
        case, value = pick(s.cases, key=lambda c: c[1])
        worst = WorstCase(case, s.site, s.model, value)
        mean, median = statistics.fmean(values), statistics.median(values)
        found.append(GroupSummary(s.site, s.model, len(values), mean, median, worst))
    return found


def _versions() -> dict[str, str]:
    found = {}
    for label, package in (("clara-fl", "clara-fl"), ("NVIDIA FLARE", "nvflare"), ("MONAI", "monai")):
        try:
            found[label] = version(package)
        except PackageNotFoundError:
            found[label] = "not installed"
    return found


def _picture_markup(picture: Picture | None) -> Any:
    from markupsafe import Markup, escape

    if picture is None:
        return Markup("")
    data = base64.b64encode(picture.png).decode("ascii")
    return Markup(
        f'<figure><img src="data:image/png;base64,{data}" width="{picture.width}" height="{picture.height}" '
        f'alt="{escape(picture.title)}"><figcaption>{escape(picture.title)} ({picture.name}.png)</figcaption></figure>'
    )


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render_html(
    results: RunResults,
    pictures: Mapping[str, Picture | None],
    case_pictures: Sequence[CasePicture],
    missing: Sequence[str],
    statistics: Any = None,
) -> str:
    """The report page; every picture is inside it, nothing is fetched from anywhere.

    Args:
        statistics: the data statistics section (:func:`clara_fl.report.stats_section.stats_section`), if any.
    """
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    from clara_fl.report.stats_section import stats_markup

    environment = Environment(
        loader=PackageLoader("clara_fl.report", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    global_model = results.global_model
    template = environment.get_template(TEMPLATE)
    return template.render(
        run=results.description,
        made=datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
        versions=_versions(),
        cross_site=results.cross_site,
        cross_site_metric=results.cross_site_metric(),
        pictures={"cross_site": None, "curves": None, "global_model": None, "timeline": None, **pictures},
        curve_sites=sorted(results.curves),
        global_model=global_model,
        global_sites=sorted(global_model),
        global_rounds=sorted({r for rounds in global_model.values() for r in rounds}),
        timeline=results.timeline,
        case_pictures=case_pictures,
        case_sources=len(results.case_scores),
        privacy=results.privacy,
        kept_models=results.kept_models,
        dp_epsilon=results.dp_epsilon,
        last_epsilon=results.last_epsilon,
        missing=list(missing),
        statistics=stats_markup(statistics, _picture_markup),
        picture=_picture_markup,
        seconds=_seconds,
    )
