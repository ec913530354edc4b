"""Finding and reading a run's results: cross-site matrix, TensorBoard curves, FLARE logs, MetricsSaver CSVs.

Three layouts are read:
- a simulator workspace (``clara-fl simulate -w WS``): ``WS/server/simulate_job/`` and ``WS/site-N/``;
- a job result downloaded from a POC or production deployment: ``<job_id>/workspace/`` with
  ``cross_site_val/``, ``tb_events/`` and ``log.txt``;
- a standalone MMAR after ``clara-fl train``/``validate``: events and ``train_stats.json`` in ``models/``,
  MetricsSaver's CSVs in ``eval/``.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from clara_fl.config.errors import ConfigError
from clara_fl.report.logs import LogEvent, parse_events

__all__ = [
    "CaseScores",
    "CrossSiteMatrix",
    "Curve",
    "RoundTiming",
    "RunDescription",
    "RunResults",
    "SiteRoundTiming",
    "collect",
    "job_rounds",
    "read_case_scores",
    "read_cross_site_matrix",
    "read_global_model_metrics",
    "read_round_timeline",
    "read_tensorboard_curves",
]

CROSS_SITE_RESULTS = "cross_val_results.json"
EVENTS_GLOB = "events.out.tfevents.*"
RAW_SUFFIX = "_raw.csv"
LOWER_IS_BETTER = ("loss", "distance", "hausdorff", "error", "surface")


@dataclass
class Curve:
    """One scalar tag of one site (or of a standalone run) against the step it was logged at."""

    tag: str
    steps: list[float]
    values: list[float]


@dataclass
class CrossSiteMatrix:
    """``cross_val_results.json``: rows data sites, columns model owners, each cell a dict of metrics or None.

    A cell is None when the owner's model was not validated at that site (a failed or missing task),
    or when FLARE recorded something other than metrics.
    """

    sites: list[str]
    owners: list[str]
    cells: dict[tuple[str, str], dict[str, float] | None]

    def value(self, site: str, owner: str, metric: str) -> float | None:
        metrics = self.cells.get((site, owner))
        return metrics.get(metric) if metrics else None

    def metrics(self) -> list[str]:
        names = {name for cell in self.cells.values() if cell for name in cell}
        return sorted(names)


@dataclass
class SiteRoundTiming:
    """When the server gave a site its train task and when the result came back (seconds from the job start)."""

    assigned: float | None = None
    returned: float | None = None


@dataclass
class RoundTiming:
    """One training round, from the server's log (seconds from the job start)."""

    round: int
    started: float
    finished: float | None = None
    aggregation_started: float | None = None
    aggregation_finished: float | None = None
    sites: dict[str, SiteRoundTiming] = field(default_factory=dict)

    def training_time(self, site: str) -> float | None:
        timing = self.sites.get(site)
        if timing is None or timing.assigned is None or timing.returned is None:
            return None
        return timing.returned - timing.assigned

    def waiting_time(self, site: str) -> float | None:
        """Idle time of a site in the round: before its task arrived and after its result, until aggregation."""
        timing = self.sites.get(site)
        end = self.aggregation_started if self.aggregation_started is not None else self.finished
        if timing is None or timing.assigned is None or timing.returned is None or end is None:
            return None
        return max(0.0, timing.assigned - self.started) + max(0.0, end - timing.returned)

    def aggregation_time(self) -> float | None:
        end = self.aggregation_finished if self.aggregation_finished is not None else self.finished
        if self.aggregation_started is None or end is None:
            return None
        return max(0.0, end - self.aggregation_started)

    def slowest_site(self) -> str | None:
        returned = {s: t.returned for s, t in self.sites.items() if t.returned is not None}
        return max(returned, key=returned.__getitem__) if returned else None


@dataclass
class CaseScores:
    """Per-case values of one metric from a MetricsSaver ``<metric>_raw.csv``."""

    metric: str
    site: str
    model: str
    cases: list[tuple[str, float]]
    source: Path

    @property
    def lower_is_better(self) -> bool:
        return any(word in self.metric.lower() for word in LOWER_IS_BETTER)


@dataclass
class RunDescription:
    """What ran: for the report's header."""

    kind: str  # "federated" or "standalone"
    path: Path
    mmar: str
    algorithm: str
    rounds: int | None
    sites: list[str]
    key_metric: str
    started: datetime | None
    epochs_per_round: int | None = None
    facts: dict[str, str] = field(default_factory=dict)


@dataclass
class RunResults:
    """Everything a report shows, read from one run."""

    description: RunDescription
    cross_site: CrossSiteMatrix | None
    curves: dict[str, dict[str, Curve]]  # site (or "local" for a standalone run) -> tag -> curve
    global_model: dict[str, dict[int, dict[str, float]]]  # site -> round -> metrics of the global model
    timeline: list[RoundTiming]
    case_scores: list[CaseScores]


# -- cross-site results --------------------------------------------------------------------------


def read_cross_site_matrix(path: str | os.PathLike) -> CrossSiteMatrix:
    """Read ``cross_val_results.json``; every (site, owner) pair seen anywhere becomes a cell.

    Raises:
        ConfigError: the file is not JSON or not ``{site: {owner: ...}}``.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read cross-site results: {e}", file=str(path)) from None
    if not isinstance(data, dict) or not all(isinstance(row, dict) for row in data.values()):
        raise ConfigError("expected {data site: {model owner: metrics}}", file=str(path))
    sites = sorted(data)
    owners = sorted({owner for row in data.values() for owner in row}, key=_owner_order)
    cells: dict[tuple[str, str], dict[str, float] | None] = {}
    for site in sites:
        for owner in owners:
            raw = data[site].get(owner)
            metrics = {k: float(v) for k, v in raw.items() if _is_number(v)} if isinstance(raw, dict) else {}
            cells[(site, owner)] = metrics or None
    return CrossSiteMatrix(sites, owners, cells)


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


def _events(log: Path | None) -> list[LogEvent]:
    if log is None or not log.is_file():
        return []
    with open(log, encoding="utf-8", errors="replace") as f:
        return list(parse_events(f))


def read_round_timeline(server_log: str | os.PathLike) -> list[RoundTiming]:
    """Per training round: its start and end, each site's train task (assigned, returned), the aggregation."""
    events = _events(Path(server_log))
    if not events:
        return []
    origin = events[0].time
    rounds: list[RoundTiming] = []
    current: RoundTiming | None = None
    for event in events:
        at = event.time - origin
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
        for event in _events(log):
            if event.kind == "before_train_validate":
                pending = event.metrics
            elif event.kind == "site_round_training" and pending is not None and event.round is not None:
                found.setdefault(site, {})[event.round] = pending
                pending = None
    current_round: int | None = None
    for event in _events(server_log):
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


def _case_scores_under(eval_dir: Path, site: str) -> list[CaseScores]:
    """``eval/<metric>_raw.csv`` (local validation) and ``eval/cross_site_val/<model>/<metric>_raw.csv``."""
    found: list[CaseScores] = []
    for raw in sorted(eval_dir.rglob(f"*{RAW_SUFFIX}")):
        relative = raw.parent.relative_to(eval_dir).parts
        model = relative[-1] if relative and relative[0] == "cross_site_val" else "local model"
        scores = read_case_scores(raw, site, model)
        if scores.cases:
            found.append(scores)
    return found


# -- the run as a whole --------------------------------------------------------------------------


@dataclass
class _Layout:
    """Where a federated run's pieces are."""

    server_job: Path  # holds cross_site_val/, tb_events/, app_server/ (or app/)
    server_log: Path | None
    site_apps: dict[str, Path]  # site -> its app folder (models/, eval/)
    site_logs: dict[str, Path]


def _find_layout(path: Path) -> _Layout | None:
    candidates = [path / "server" / "simulate_job", path / "workspace", path]
    candidates += sorted(path.glob("*/workspace")) + sorted(path.glob("server/*"))
    server_job = next((c for c in candidates if _looks_like_server_job(c)), None)
    if server_job is None:
        return None
    log_candidates = [server_job / "log.txt", server_job.parent / "log.txt"]
    server_log = next((p for p in log_candidates if p.is_file()), None)
    site_apps: dict[str, Path] = {}
    site_logs: dict[str, Path] = {}
    root = path if (path / "server").is_dir() else server_job.parent
    for app in sorted(root.glob(f"*/{server_job.name}/app_*")):
        site = app.name[len("app_"):]
        if site == "server" or app.parent.parent.name == "server":
            continue
        site_apps[site] = app
        if (app.parent.parent / "log.txt").is_file():
            site_logs[site] = app.parent.parent / "log.txt"
    return _Layout(server_job, server_log, site_apps, site_logs)


def _looks_like_server_job(folder: Path) -> bool:
    return folder.is_dir() and any((folder / name).exists() for name in ("cross_site_val", "tb_events", "app_server"))


def _server_config(server_job: Path) -> dict[str, Any]:
    for app in [server_job / "app_server", server_job / "app", *sorted(server_job.glob("app_*"))]:
        config = app / "config" / "config_fed_server.json"
        if config.is_file():
            return json.loads(config.read_text(encoding="utf-8"))
    return {}


def _client_config(layout: _Layout) -> dict[str, Any]:
    for app in [*layout.site_apps.values(), layout.server_job / "app_server", layout.server_job / "app"]:
        config = app / "config" / "config_fed_client.json"
        if config.is_file():
            return json.loads(config.read_text(encoding="utf-8"))
    return {}


def _class_name(component: dict[str, Any]) -> str:
    return str(component.get("path") or component.get("name") or "?").rsplit(".", 1)[-1]


def _describe_algorithm(server: dict[str, Any]) -> tuple[str, int | None, str | None]:
    """Workflows and aggregator in words, the number of rounds and the model selector's key metric."""
    workflows = server.get("workflows", [])
    components = server.get("components", [])
    names = [_class_name(w) for w in workflows]
    aggregator = next((_class_name(c) for c in components if "aggregat" in str(c.get("path", "")).lower()), None)
    if aggregator and names:
        names[0] = f"{names[0]} ({aggregator})"
    rounds = next((w.get("args", {}).get("num_rounds") for w in workflows if "num_rounds" in w.get("args", {})), None)
    key_metric = next((c.get("args", {}).get("key_metric") for c in components if "key_metric" in c.get("args", {})), None)
    return " + ".join(names) or "unknown", rounds, key_metric


def job_rounds(job: str | os.PathLike) -> int | None:
    """The number of training rounds a job folder's server config asks for, when it says."""
    for config in sorted(Path(job).glob("*/config/config_fed_server.json")):
        try:
            _, rounds, _ = _describe_algorithm(json.loads(config.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(rounds, int):
            return rounds
    return None


def _learner_args(client: dict[str, Any]) -> dict[str, Any]:
    for component in client.get("components", []):
        if "local_epochs" in component.get("args", {}):
            return component["args"]
    return {}


def _mmar_title(app: Path | None, fallback: str) -> str:
    readme = app / "docs" / "README.md" if app else None
    if readme and readme.is_file():
        first = readme.read_text(encoding="utf-8", errors="replace").lstrip().split("\n", 1)[0]
        if first.startswith("#"):
            return first.lstrip("# ").strip()
    return fallback


def _job_name(server_job: Path) -> str:
    meta = server_job / "meta.json"
    if meta.is_file():
        try:
            return str(json.loads(meta.read_text(encoding="utf-8")).get("name") or server_job.name)
        except json.JSONDecodeError:
            pass
    return server_job.parent.name if server_job.name in ("workspace", "simulate_job") else server_job.name


def _first_timestamp(log: Path | None) -> datetime | None:
    events = _events(log) if log else []
    return datetime.fromtimestamp(events[0].time) if events else None


def collect(path: str | os.PathLike) -> RunResults:
    """Read a simulator workspace, a downloaded job result or a standalone MMAR.

    Raises:
        ConfigError: ``path`` is none of these.
    """
    root = Path(path).resolve()
    if not root.is_dir():
        raise ConfigError("not a folder", file=str(path))
    layout = _find_layout(root)
    if layout is not None:
        return _collect_federated(root, layout)
    if (root / "config" / "config_train.json").is_file() or (root / "models").is_dir():
        return _collect_standalone(root)
    raise ConfigError(
        "expected a simulator workspace (server/simulate_job/), a downloaded job (<job_id>/workspace/) "
        "or an MMAR (config/config_train.json, models/)",
        file=str(path),
    )


def _collect_federated(root: Path, layout: _Layout) -> RunResults:
    server = _server_config(layout.server_job)
    algorithm, rounds, selector_metric = _describe_algorithm(server)
    learner = _learner_args(_client_config(layout))
    results_file = next(iter(sorted(layout.server_job.rglob(CROSS_SITE_RESULTS))), None)
    cross_site = read_cross_site_matrix(results_file) if results_file else None

    curves: dict[str, dict[str, Curve]] = {}
    streamed = layout.server_job / "tb_events"
    site_names = set(layout.site_apps) | ({p.name for p in streamed.iterdir() if p.is_dir()} if streamed.is_dir() else set())
    for site in sorted(site_names):
        own = read_tensorboard_curves(layout.site_apps[site] / "models") if site in layout.site_apps else {}
        sent = read_tensorboard_curves(streamed / site) if (streamed / site).is_dir() else {}
        merged = {**own, **sent}  # the streamed curves are per epoch; a site's own train_loss is per iteration
        if merged:
            curves[site] = merged

    key_metric = selector_metric or (cross_site.metrics()[0] if cross_site and cross_site.metrics() else "val_mean_dice")
    sites = sorted(site_names | set(cross_site.sites if cross_site else []))
    timeline = read_round_timeline(layout.server_log) if layout.server_log else []
    global_model = read_global_model_metrics(layout.site_logs, layout.server_log, key_metric)
    case_scores = [s for site, app in layout.site_apps.items() for s in _case_scores_under(app / "eval", site)]

    app = next(iter(layout.site_apps.values()), None) or next(iter(sorted(layout.server_job.glob("app*"))), None)
    epochs = learner.get("local_epochs") if not learner.get("steps_aggregation") else None
    description = RunDescription(
        kind="federated",
        path=root,
        mmar=_mmar_title(app, _job_name(layout.server_job)),
        algorithm=algorithm,
        rounds=rounds if rounds is not None else (len(timeline) or None),
        sites=sites,
        key_metric=key_metric,
        started=_first_timestamp(layout.server_log),
        epochs_per_round=int(epochs) if epochs else None,
        facts={"job": _job_name(layout.server_job), "results": str(results_file) if results_file else "none"},
    )
    return RunResults(description, cross_site, curves, global_model, timeline, case_scores)


def _collect_standalone(root: Path) -> RunResults:
    env = _environment(root)
    models = root / env.get("MMAR_CKPT_DIR", "models")
    eval_dir = root / env.get("MMAR_EVAL_OUTPUT_PATH", "eval")
    curves = read_tensorboard_curves(models) if models.is_dir() else {}
    stats = _train_stats(models / "train_stats.json")
    _iterations_to_epochs(curves, stats)
    facts = {k: str(v) for k, v in stats.items() if v is not None}
    facts.update(_learning_rates(models))
    key_metric = str(stats.get("key_metric_name") or _key_metric(root) or "val_mean_dice")
    started = None
    events = sorted(models.glob(EVENTS_GLOB)) if models.is_dir() else []
    if events:
        started = datetime.fromtimestamp(min(p.stat().st_mtime for p in events))
    description = RunDescription(
        kind="standalone",
        path=root,
        mmar=_mmar_title(root, root.name),
        algorithm="standalone training",
        rounds=None,
        sites=[],
        key_metric=key_metric,
        started=started,
        facts=facts,
    )
    scores = _case_scores_under(eval_dir, "local") if eval_dir.is_dir() else []
    return RunResults(description, None, {"local": curves} if curves else {}, {}, [], scores)


def _iterations_to_epochs(curves: dict[str, Curve], stats: dict[str, Any]) -> None:
    """Put per-iteration tags (TensorBoardStatsHandler's train_loss) on the epoch axis of the others."""
    epochs, iterations = stats.get("epochs_completed"), stats.get("total_iterations")
    if not epochs or not iterations:
        return
    per_epoch = iterations / epochs
    for curve in curves.values():
        if curve.steps and max(curve.steps) > epochs:
            curve.steps = [step / per_epoch for step in curve.steps]


def _environment(root: Path) -> dict[str, Any]:
    env = root / "config" / "environment.json"
    try:
        return json.loads(env.read_text(encoding="utf-8")) if env.is_file() else {}
    except json.JSONDecodeError:
        return {}


def _key_metric(root: Path) -> str | None:
    config = root / "config" / "config_train.json"
    try:
        metric = json.loads(config.read_text(encoding="utf-8")).get("validate", {}).get("key_metric", {})
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return metric.get("log_label") if isinstance(metric, dict) else None


def _train_stats(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {}
    return stats if isinstance(stats, dict) else {}


def _learning_rates(models: Path) -> dict[str, str]:
    """Start and end learning rate from the final checkpoint's optimizer state (TensorBoard has no lr tag)."""
    for name in ("final_model.pt", "model.pt"):
        path = models / name
        if not path.is_file():
            continue
        import torch

        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # an unreadable checkpoint only costs the report its learning-rate line
            continue
        groups = checkpoint.get("optimizer", {}).get("param_groups", []) if isinstance(checkpoint, dict) else []
        if groups:
            first = groups[0]
            return {"learning_rate_start": f"{first.get('initial_lr', first.get('lr'))}", "learning_rate_end": f"{first.get('lr')}"}
    return {}
