"""Finding a run's results and reading them into :class:`~clara_fl.report.records.RunResults`.

Three layouts are read:
- a simulator workspace (``clara-fl simulate -w WS``): ``WS/server/simulate_job/`` and ``WS/site-N/``;
- a job result downloaded from a POC or production deployment: ``<job_id>/workspace/`` with
  ``cross_site_val/``, ``tb_events/``, ``app_server/`` and ``log.txt``;
- a standalone MMAR after ``clara-fl train``/``validate``: events and ``train_stats.json`` in ``models/``,
  MetricsSaver's CSVs in ``eval/``.

An MMAR's own TensorBoard events (standalone, and each site's in a federated run) are read where its
``config_train.json`` has its TensorBoard handlers write them (their ``log_dir``, variables substituted, e.g.
``{MMAR_CKPT_DIR}/tb_train``), else from every folder under ``models/`` that holds event files.

A federated run's timeline and global-model metrics come from the event files the server workflow and the sites
write into their app folders (:mod:`clara_fl.runtime.events`); a process without one (a job from an older run)
is read from its ``log.txt`` instead.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from clara_fl.config.errors import ConfigError
from clara_fl.config.mmar import DEFAULT_ENVIRONMENT, read_config, resolve_in_mmar
from clara_fl.config.variables import as_bool
from clara_fl.fl.jobs.results import SpentBudgets
from clara_fl.report.readers import (
    EVENTS_GLOB,
    case_scores_under,
    dp_epsilon_spent,
    global_model_metrics,
    kept_models,
    read_cross_site_matrix,
    read_privacy_releases,
    read_tensorboard_curves,
    round_timeline,
    run_events,
)
from clara_fl.report.records import Curve, RunDescription, RunResults
from clara_fl.runtime.events import SERVER_EVENTS_FILE, SITE_EVENTS_FILE, Event

__all__ = ["collect", "job_rounds", "spent_budgets"]

CROSS_SITE_RESULTS = "cross_val_results.json"
# algorithms whose sites submit another model than their best local one (as clara_fl.fl.jobs.results says)
SITE_MODELS = {"ditto": "personalized"}
TRAIN_CONFIG = "config/config_train.json"
# the handlers of a Clara config that write TensorBoard events into their log_dir (MONAI's and clara-fl's)
TENSORBOARD_HANDLERS = ("TensorBoardStatsHandler", "TensorBoardImageHandler")


# -- the run as a whole --------------------------------------------------------------------------


@dataclass
class _Layout:
    """Where a federated run's pieces are."""

    server_job: Path  # holds cross_site_val/, tb_events/, app_server/ (or app/)
    server_log: Path | None
    server_events: Path | None  # the server workflow's events file in its app folder
    site_apps: dict[str, Path]  # site -> its app folder (models/, eval/, its events file)
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
        site = app.name[len("app_") :]
        if site == "server" or app.parent.parent.name == "server":
            continue
        site_apps[site] = app
        if (app.parent.parent / "log.txt").is_file():
            site_logs[site] = app.parent.parent / "log.txt"
    server_events = next(
        (app / SERVER_EVENTS_FILE for app in _server_apps(server_job) if (app / SERVER_EVENTS_FILE).is_file()), None
    )
    return _Layout(server_job, server_log, server_events, site_apps, site_logs)


def _server_apps(server_job: Path) -> list[Path]:
    return [server_job / "app_server", server_job / "app", *sorted(server_job.glob("app_*"))]


def _looks_like_server_job(folder: Path) -> bool:
    return folder.is_dir() and any((folder / name).exists() for name in ("cross_site_val", "tb_events", "app_server"))


def _json_object(path: Path) -> dict[str, Any]:
    """A JSON file's object; an unreadable file only costs the report the facts it would have given."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _server_config(server_job: Path) -> dict[str, Any]:
    for app in _server_apps(server_job):
        config = app / "config" / "config_fed_server.json"
        if config.is_file():
            return _json_object(config)
    return {}


def _client_config(layout: _Layout) -> dict[str, Any]:
    for app in [*layout.site_apps.values(), layout.server_job / "app_server", layout.server_job / "app"]:
        config = app / "config" / "config_fed_client.json"
        if config.is_file():
            return _json_object(config)
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
    selector: dict[str, Any] = next((c.get("args", {}) for c in components if "key_metric" in c.get("args", {})), {})
    key_metric = selector.get("key_metric")
    return " + ".join(names) or "unknown", rounds, key_metric


def job_rounds(job: str | os.PathLike) -> int | None:
    """The number of training rounds a job folder's server config asks for, when it says."""
    for config in sorted(Path(job).glob("*/config/config_fed_server.json")):
        _, rounds, _ = _describe_algorithm(_json_object(config))
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
    name = _json_object(server_job / "meta.json").get("name")
    if name:
        return str(name)
    return server_job.parent.name if server_job.name in ("workspace", "simulate_job") else server_job.name


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
    if cross_site:
        cross_site.site_models = SITE_MODELS.get(str(learner.get("algorithm")))

    curves: dict[str, dict[str, Curve]] = {}
    streamed = layout.server_job / "tb_events"
    site_names = set(layout.site_apps)
    if streamed.is_dir():
        site_names |= {p.name for p in streamed.iterdir() if p.is_dir()}
    for site in sorted(site_names):
        own = _read_curves(_event_folders(layout.site_apps[site])) if site in layout.site_apps else {}
        sent = read_tensorboard_curves(streamed / site) if (streamed / site).is_dir() else {}
        merged = {**own, **sent}  # the streamed curves are per epoch; a site's own train_loss is per iteration
        if merged:
            curves[site] = merged

    result_metrics = cross_site.metrics() if cross_site else []
    key_metric = selector_metric or (result_metrics[0] if result_metrics else "val_mean_dice")
    sites = sorted(site_names | set(cross_site.sites if cross_site else []))
    server_events = run_events(layout.server_events, layout.server_log, key_metric)
    timeline = round_timeline(server_events)
    site_events = _site_events(layout, key_metric)
    global_model = global_model_metrics(site_events, server_events)
    case_scores = [s for site, app in layout.site_apps.items() for s in case_scores_under(app / "eval", site)]
    privacy = [r for site, app in layout.site_apps.items() for r in read_privacy_releases(app, site)]
    privacy.sort(key=lambda r: (r.round if r.round is not None else -1, r.site))

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
        started=datetime.fromtimestamp(server_events[0].time) if server_events else None,
        epochs_per_round=int(epochs) if epochs else None,
        facts={"job": _job_name(layout.server_job), "results": str(results_file) if results_file else "none"},
    )
    kept = kept_models(site_events)
    results = RunResults(description, cross_site, curves, global_model, timeline, case_scores, privacy, kept)
    results.dp_epsilon = dp_epsilon_spent(site_events)
    return results


def _site_events(layout: _Layout, key_metric: str = "val_mean_dice") -> dict[str, list[Event]]:
    """What each site of the run recorded (its events file, else its log)."""
    return {
        site: run_events(app / SITE_EVENTS_FILE, layout.site_logs.get(site), key_metric)
        for site, app in layout.site_apps.items()
        if (app / SITE_EVENTS_FILE).is_file() or site in layout.site_logs
    }


def spent_budgets(path: str | os.PathLike) -> SpentBudgets | None:
    """The DP-SGD privacy budget each site of a federated run (a simulator workspace, a downloaded job) had spent
    after its last round, as the report reads it from the sites' events; None when no site ran DP-SGD or ``path``
    holds no federated run (a downloaded job has no site folders)."""
    root = Path(path).resolve()
    layout = _find_layout(root) if root.is_dir() else None
    if layout is None:
        return None
    spent = dp_epsilon_spent(_site_events(layout))
    if not spent:
        return None
    dp = _learner_args(_client_config(layout)).get("dp")
    delta = dp.get("delta") if isinstance(dp, dict) else None
    return SpentBudgets(
        {site: rounds[max(rounds)] for site, rounds in spent.items()},
        float(delta) if isinstance(delta, (int, float)) and not isinstance(delta, bool) else None,
    )


def _collect_standalone(root: Path) -> RunResults:
    env = _json_object(root / "config" / "environment.json")
    models = root / env.get("MMAR_CKPT_DIR", "models")
    eval_dir = root / env.get("MMAR_EVAL_OUTPUT_PATH", "eval")
    event_folders = _event_folders(root)
    curves = _read_curves(event_folders)
    stats = _json_object(models / "train_stats.json")
    _iterations_to_epochs(curves, stats)
    facts = {k: str(v) for k, v in stats.items() if v is not None}
    facts.update(_learning_rates(models))
    key_metric = str(stats.get("key_metric_name") or _key_metric(root) or "val_mean_dice")
    started = None
    events = [p for folder in event_folders for p in folder.glob(EVENTS_GLOB)]
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
    scores = case_scores_under(eval_dir, "local") if eval_dir.is_dir() else []
    return RunResults(description, None, {"local": curves} if curves else {}, {}, [], scores)


def _event_folders(mmar: Path) -> list[Path]:
    """The folders an MMAR's TensorBoard events are in: the log_dir of each TensorBoard handler of its train
    config that holds event files, else every folder under its models/ that does."""
    configured = [folder for folder in _handler_log_dirs(mmar) if any(folder.glob(EVENTS_GLOB))]
    if configured:
        return configured
    env = _json_object(mmar / DEFAULT_ENVIRONMENT)
    models = mmar / str(env.get("MMAR_CKPT_DIR") or "models")
    return sorted({p.parent for p in models.rglob(EVENTS_GLOB)}) if models.is_dir() else []


def _handler_log_dirs(mmar: Path) -> list[Path]:
    """The log_dir of every enabled TensorBoard handler in the MMAR's train config, with its variables
    substituted as a run substitutes them; a config that does not read only costs the report this lookup."""
    if not (mmar / TRAIN_CONFIG).is_file():
        return []
    environment = DEFAULT_ENVIRONMENT if (mmar / DEFAULT_ENVIRONMENT).is_file() else None
    try:
        raw = read_config(mmar, TRAIN_CONFIG, environment)
    except ConfigError:
        return []
    folders: list[Path] = []
    for path, handler in _components(raw.config, ""):
        args = handler.get("args")
        if _class_name(handler) not in TENSORBOARD_HANDLERS or not isinstance(args, dict) or "log_dir" not in args:
            continue
        try:
            if as_bool(raw.variables.substitute(handler.get("disabled", False), f"{path}.disabled")):
                continue
            log_dir = raw.variables.substitute(args["log_dir"], f"{path}.args.log_dir")
        except ConfigError:
            continue
        if isinstance(log_dir, str) and log_dir:
            folders.append(Path(resolve_in_mmar(str(mmar), log_dir)).resolve())
    return list(dict.fromkeys(folders))


def _components(value: Any, path: str) -> list[tuple[str, dict[str, Any]]]:
    """Every object with a ``name`` or ``path`` in a config, with its JSON path."""
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(value, dict):
        if isinstance(value.get("name") or value.get("path"), str):
            found.append((path, value))
        for key, item in value.items():
            found += _components(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _components(item, f"{path}[{index}]")
    return found


def _read_curves(folders: list[Path]) -> dict[str, Curve]:
    """The scalar curves of several event folders; a tag written to more than one is one curve, by step."""
    curves: dict[str, Curve] = {}
    for folder in folders:
        for tag, curve in read_tensorboard_curves(folder).items():
            merged = curves.setdefault(tag, Curve(tag, [], []))
            pairs = [*zip(merged.steps, merged.values, strict=True), *zip(curve.steps, curve.values, strict=True)]
            points = sorted(pairs, key=lambda p: p[0])
            merged.steps, merged.values = [p[0] for p in points], [p[1] for p in points]
    return curves


def _iterations_to_epochs(curves: dict[str, Curve], stats: dict[str, Any]) -> None:
    """Put per-iteration tags (TensorBoardStatsHandler's train_loss) on the epoch axis of the others."""
    epochs, iterations = stats.get("epochs_completed"), stats.get("total_iterations")
    if not epochs or not iterations:
        return
    per_epoch = iterations / epochs
    for curve in curves.values():
        if curve.steps and max(curve.steps) > epochs:
            curve.steps = [step / per_epoch for step in curve.steps]


def _key_metric(root: Path) -> str | None:
    validate = _json_object(root / "config" / "config_train.json").get("validate")
    metric = validate.get("key_metric") if isinstance(validate, dict) else None
    return metric.get("log_label") if isinstance(metric, dict) else None


def _learning_rates(models: Path) -> dict[str, str]:
    """Start and end learning rate from the final checkpoint's optimizer state (the curve is the
    ``learning_rate`` tag that clara-fl's TensorBoardStatsHandler writes on the trainer)."""
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
            start, end = first.get("initial_lr", first.get("lr")), first.get("lr")
            return {"learning_rate_start": f"{start}", "learning_rate_end": f"{end}"}
    return {}
