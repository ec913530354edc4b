"""Readers for the files a run leaves: cross_val_results.json, TensorBoard events, FLARE logs, MetricsSaver CSVs."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from clara_fl.config.errors import ConfigError
from clara_fl.fl.jobs.privacy import PRIVACY_RELEASES_FILE
from clara_fl.report.logs import LogEvent, parse_events
from clara_fl.report.records import (
    CaseScores,
    CrossSiteMatrix,
    Curve,
    PrivacyRelease,
    RoundTiming,
    SiteRoundTiming,
)

__all__ = [
    "EVENTS_GLOB",
    "RAW_SUFFIX",
    "case_scores_under",
    "log_events",
    "read_case_scores",
    "read_cross_site_matrix",
    "read_global_model_metrics",
    "read_privacy_releases",
    "read_round_timeline",
    "read_tensorboard_curves",
]

EVENTS_GLOB = "events.out.tfevents.*"
RAW_SUFFIX = "_raw.csv"


# -- cross-site results --------------------------------------------------------------------------


def read_cross_site_matrix(path: str | os.PathLike) -> CrossSiteMatrix:
    """Read ``cross_val_results.json``; every (site, owner) pair seen anywhere becomes a cell, and so does every
    pair a site failed (``cross_val_failures.json`` beside it), with the site's reason.

    Raises:
        ConfigError: the file is not JSON or not ``{site: {owner: ...}}``.
    """
    from clara_fl.fl.jobs.results import load_cross_site_failures

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        failures = load_cross_site_failures(path)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read cross-site results: {e}", file=str(path)) from None
    if not isinstance(data, dict) or not all(isinstance(row, dict) for row in data.values()):
        raise ConfigError("expected {data site: {model owner: metrics}}", file=str(path))
    sites = sorted(set(data) | failures.sites())
    owners = sorted({owner for row in data.values() for owner in row} | failures.owners(), key=_owner_order)
    cells: dict[tuple[str, str], dict[str, float] | None] = {}
    reasons: dict[tuple[str, str], str] = {}
    for site in sites:
        for owner in owners:
            raw = data.get(site, {}).get(owner)
            metrics = {k: float(v) for k, v in raw.items() if _is_number(v)} if isinstance(raw, dict) else {}
            cells[(site, owner)] = metrics or None
            reason = failures.reason(site, owner)
            if not metrics and reason:
                reasons[(site, owner)] = reason
    return CrossSiteMatrix(sites, owners, cells, reasons)


def _owner_order(owner: str) -> tuple[int, str]:
    """Server models first (``SRV_...`` under CrossSiteModelEval, ``FL_global_model.pt`` under CrossSiteEval)."""
    return (0 if owner.startswith("SRV_") or owner.endswith(".pt") else 1, owner)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# -- TensorBoard ---------------------------------------------------------------------------------


def read_tensorboard_curves(folder: str | os.PathLike) -> dict[str, Curve]:
    """Every scalar tag in the event files directly inside ``folder`` (all files, in the order written)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves: dict[str, Curve] = {}
    for events_file in sorted(Path(folder).glob(EVENTS_GLOB), key=lambda p: p.name):
        accumulator = EventAccumulator(str(events_file), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags().get("scalars", []):
            curve = curves.setdefault(tag, Curve(tag, [], []))
            for event in accumulator.Scalars(tag):
                curve.steps.append(float(event.step))
                curve.values.append(float(event.value))
    for curve in curves.values():
        order = sorted(range(len(curve.steps)), key=curve.steps.__getitem__)
        curve.steps = [curve.steps[i] for i in order]
        curve.values = [curve.values[i] for i in order]
    return curves


# -- logs ----------------------------------------------------------------------------------------


def log_events(log: Path | None) -> list[LogEvent]:
    if log is None or not log.is_file():
        return []
    with open(log, encoding="utf-8", errors="replace") as f:
        return list(parse_events(f))


def read_round_timeline(server_log: str | os.PathLike) -> list[RoundTiming]:
    """Per training round: its start and end, each site's train task (assigned, returned), the aggregation.

    FLARE's ModelController FedAvg logs no "Round N finished" and aggregates each result as it comes:
    its rounds end where the next one starts (or where training finishes) and have no aggregation step.
    """
    events = log_events(Path(server_log))
    if not events:
        return []
    origin = events[0].time
    rounds: list[RoundTiming] = []
    current: RoundTiming | None = None
    for event in events:
        at = event.time - origin
        if event.kind in ("round_started", "training_finished") and current is not None and current.finished is None:
            current.finished = at
        if event.kind == "round_started":
            current = RoundTiming(round=event.round or 0, started=at)
            rounds.append(current)
        elif current is None or current.finished is not None:
            continue
        elif event.kind == "task_assigned" and event.task == "train":
            current.sites.setdefault(event.site or "?", SiteRoundTiming()).assigned = at
        elif event.kind == "task_result" and event.task == "train":
            current.sites.setdefault(event.site or "?", SiteRoundTiming()).returned = at
        elif event.kind == "aggregation_started" and current.aggregation_started is None:
            current.aggregation_started = at
        elif event.kind == "aggregation_finished":
            current.aggregation_finished = at
        elif event.kind == "round_finished":
            current.finished = at
    return rounds


def read_global_model_metrics(
    site_logs: dict[str, Path], server_log: Path | None = None, key_metric: str = "val_mean_dice"
) -> dict[str, dict[int, dict[str, float]]]:
    """The global model's metrics at each site before local training, per round.

    A site's own log has every metric (our Learner logs ``before_train_validate: {...}`` just before
    ``round N: training``); where no site log is at hand, the server log's IntimeModelSelector lines
    (``validation metric V from client S``) give the key metric from round 1 on.
    """
    found: dict[str, dict[int, dict[str, float]]] = {}
    for site, log in site_logs.items():
        pending: dict[str, float] | None = None
        for event in log_events(log):
            if event.kind == "before_train_validate":
                pending = event.metrics
            elif event.kind == "site_round_training" and pending is not None and event.round is not None:
                found.setdefault(site, {})[event.round] = pending
                pending = None
    current_round: int | None = None
    for event in log_events(server_log):
        if event.kind == "round_started":
            current_round = event.round
        elif event.kind == "site_metric" and current_round is not None and event.site and event.value is not None:
            if event.site not in site_logs:
                found.setdefault(event.site, {}).setdefault(current_round, {key_metric: event.value})
    return found


# -- MetricsSaver CSVs ---------------------------------------------------------------------------


def read_case_scores(raw_csv: str | os.PathLike, site: str, model: str) -> CaseScores:
    """A MetricsSaver ``<metric>_raw.csv``: ``filename,class0,...,mean`` per case; the ``mean`` column is used.

    A case named ``None`` (a MetricsSaver without ``batch_transform`` before clara-fl named cases
    from the image metadata) becomes ``case N`` in file order.

    Raises:
        ConfigError: the file has no rows or no numeric column.
    """
    path = Path(raw_csv)
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter=_delimiter(path)))
    if len(rows) < 2 or len(rows[0]) < 2:
        raise ConfigError("expected a header and one row per case", file=str(path))
    header = rows[0]
    column = header.index("mean") if "mean" in header else len(header) - 1
    cases: list[tuple[str, float]] = []
    for number, row in enumerate(rows[1:], start=1):
        if len(row) <= column:
            continue
        try:
            value = float(row[column])
        except ValueError:
            continue
        cases.append((_case_name(row[0], number), value))
    metric = path.name[: -len(RAW_SUFFIX)]
    return CaseScores(metric=metric, site=site, model=model, cases=cases, source=path)


def _delimiter(path: Path) -> str:
    first = path.read_text(encoding="utf-8").split("\n", 1)[0]
    return "\t" if first.count("\t") > first.count(",") else ","


def _case_name(filename: str, number: int) -> str:
    if not filename or filename == "None":
        return f"case {number}"
    name = os.path.basename(filename)
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".dcm", ".png", ".jpg"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def case_scores_under(eval_dir: Path, site: str) -> list[CaseScores]:
    """``eval/<metric>_raw.csv`` (local validation) and ``eval/cross_site_val/<model>/<metric>_raw.csv``."""
    found: list[CaseScores] = []
    for raw in sorted(eval_dir.rglob(f"*{RAW_SUFFIX}")):
        relative = raw.parent.relative_to(eval_dir).parts
        model = relative[-1] if relative and relative[0] == "cross_site_val" else "local model"
        scores = read_case_scores(raw, site, model)
        if scores.cases:
            found.append(scores)
    return found


# -- privacy filters -----------------------------------------------------------------------------


def read_privacy_releases(app_dir: Path, site: str) -> list[PrivacyRelease]:
    """What a site's privacy filters released per round (:mod:`clara_fl.fl.site.privacy_filters`); a line
    that is not such a record (a write cut short) is skipped."""
    path = app_dir / PRIVACY_RELEASES_FILE
    if not path.is_file():
        return []
    releases = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            releases.append(
                PrivacyRelease(
                    site=site,
                    round=record.get("round"),
                    filter=str(record["filter"]),
                    released=int(record["released"]),
                    nonzero_before=int(record["nonzero_before"]),
                    direction_kept=float(record["direction_kept"]),
                    almost_nothing=bool(record.get("almost_nothing")),
                )
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return releases
