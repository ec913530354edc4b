"""Readers for the files a run leaves: cross_val_results.json, TensorBoard events, the run's event files (FLARE
logs where it has none), MetricsSaver CSVs."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from clara_fl.config.errors import ConfigError
from clara_fl.fl.jobs.privacy import PRIVACY_RELEASES_FILE
from clara_fl.report.logs import LogEvent, as_events, parse_events
from clara_fl.report.records import (
    CaseScores,
    CrossSiteMatrix,
    Curve,
    KeptModel,
    PrivacyRelease,
    RoundTiming,
    SiteRoundTiming,
)
from clara_fl.runtime import events as ev
from clara_fl.runtime.events import Event, read_events

__all__ = [
    "EVENTS_GLOB",
    "RAW_SUFFIX",
    "case_scores_under",
    "global_model_metrics",
    "kept_models",
    "log_events",
    "read_case_scores",
    "read_cross_site_matrix",
    "read_global_model_metrics",
    "read_privacy_releases",
    "read_round_timeline",
    "read_tensorboard_curves",
    "round_timeline",
    "run_events",
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


# -- run events (and, for runs without event files, logs) --------------------------------------------


def log_events(log: Path | None) -> list[LogEvent]:
    """The recognised lines of a FLARE log (the fallback for runs without event files)."""
    if log is None or not log.is_file():
        return []
    with open(log, encoding="utf-8", errors="replace") as f:
        return list(parse_events(f))


def run_events(events_file: Path | None, log: Path | None, key_metric: str = "val_mean_dice") -> list[Event]:
    """What one process (the server, a site) recorded: its events file, or where it has none (a job from an older
    run), its log read as events. An events file that cannot be read only costs the report what it would show.

    Args:
        key_metric: the metric of the server log's ``validation metric V from client S`` lines.
    """
    if events_file is not None and events_file.is_file():
        try:
            return read_events(events_file)
        except OSError:
            return []
    return as_events(log_events(log), key_metric)


def round_timeline(events: Sequence[Event]) -> list[RoundTiming]:
    """Per training round, from the server's events: its start and end, each site's train task (sent, returned),
    the aggregation.

    A round without a ``round_finished`` (FLARE's ModelController workflows record none) ends where the next one
    starts or where training finishes. A task event that names its round belongs to that round, else to the
    round under way.
    """
    if not events:
        return []
    origin = events[0].time
    rounds: list[RoundTiming] = []
    by_number: dict[int, RoundTiming] = {}
    current: RoundTiming | None = None
    for event in events:
        at = event.time - origin
        if event.kind in (ev.ROUND_STARTED, ev.TRAINING_FINISHED) and current is not None and current.finished is None:
            current.finished = at
        if event.kind == ev.ROUND_STARTED:
            current = RoundTiming(round=event.round or 0, started=at)
            rounds.append(current)
            by_number[current.round] = current
            continue
        timing = by_number.get(event.round) if event.round is not None else None
        if timing is None:
            if current is None or current.finished is not None:
                continue
            timing = current
        if event.kind in (ev.TASK_SENT, ev.TASK_RESULT) and event.text("task") == "train":
            site = timing.sites.setdefault(event.site or "?", SiteRoundTiming())
            if event.kind == ev.TASK_SENT:
                site.assigned = at
            else:
                site.returned = at
        elif event.kind == ev.AGGREGATION_STARTED and timing.aggregation_started is None:
            timing.aggregation_started = at
        elif event.kind == ev.AGGREGATION_FINISHED:
            timing.aggregation_finished = at
        elif event.kind == ev.ROUND_FINISHED:
            timing.finished = at
    return rounds


def global_model_metrics(
    site_events: Mapping[str, Sequence[Event]], server_events: Sequence[Event]
) -> dict[str, dict[int, dict[str, float]]]:
    """The global model's metrics at each site before local training, per round.

    A site's own events have every metric it validated; for a site whose own records are not at hand (a job
    downloaded from the server), the server's ``site_metric`` events give the metrics the site sent with its result.
    """
    found: dict[str, dict[int, dict[str, float]]] = {}
    for site, events in site_events.items():
        for event in events:
            if event.kind == ev.GLOBAL_MODEL_VALIDATED and event.round is not None and event.numbers():
                found.setdefault(site, {})[event.round] = event.numbers()
    for event in server_events:
        if event.kind != ev.SITE_METRIC or not event.site or event.round is None or event.site in site_events:
            continue
        if event.numbers():
            found.setdefault(event.site, {}).setdefault(event.round, event.numbers())
    return found


def kept_models(site_events: Mapping[str, Sequence[Event]]) -> list[KeptModel]:
    """Each site's ``keep_better_model`` choices (``site_model_kept`` events), by round then site."""
    found = []
    for site, events in site_events.items():
        for event in events:
            numbers = event.numbers()
            if event.kind != ev.SITE_MODEL_KEPT or not {"global", "personalized", "kept_score"} <= set(numbers):
                continue
            found.append(
                KeptModel(
                    site=site,
                    round=event.round,
                    metric=event.text("metric") or "",
                    global_score=numbers["global"],
                    personal_score=numbers["personalized"],
                    winner=event.text("winner") or "",
                    kept=bool(numbers.get("kept")),
                    kept_score=numbers["kept_score"],
                )
            )
    return sorted(found, key=lambda k: (k.round if k.round is not None else -1, k.site))


def read_round_timeline(server_log: str | os.PathLike) -> list[RoundTiming]:
    """:func:`round_timeline` from a server's log.txt (a run without event files)."""
    return round_timeline(as_events(log_events(Path(server_log)), ""))


def read_global_model_metrics(
    site_logs: dict[str, Path], server_log: Path | None = None, key_metric: str = "val_mean_dice"
) -> dict[str, dict[int, dict[str, float]]]:
    """:func:`global_model_metrics` from the sites' and the server's log.txt (a run without event files): our
    Learner's ``before_train_validate: {...}`` lines, else the server's IntimeModelSelector lines (``validation
    metric V from client S``), which give the key metric from round 1 on."""
    sites = {site: as_events(log_events(log), key_metric) for site, log in site_logs.items()}
    return global_model_metrics(sites, as_events(log_events(server_log), key_metric))


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


def dp_epsilon_spent(site_events: Mapping[str, Sequence[Event]]) -> dict[str, dict[int, float]]:
    """Each DP-SGD site's spent epsilon after each round, from its ``site_training_done`` events (``dp_epsilon``)."""
    found: dict[str, dict[int, float]] = {}
    for site, events in site_events.items():
        for event in events:
            value = event.numbers().get("dp_epsilon") if event.kind == ev.SITE_TRAINING_DONE else None
            if value is not None and event.round is not None:
                found.setdefault(site, {})[event.round] = value
    return found
