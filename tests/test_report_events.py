"""``clara-fl report`` and the ``simulate`` progress line read the run's event files, not the wording of its logs.

The readers on hand-made events first; then a 2-round, 2-site run driven through the real writers (clara-fl's
Learner and ScatterAndGather, fed the events FLARE fires) with every log message reworded: the report and the
progress line come out as they do with FLARE's and clara-fl's own wording.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey, ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants, ValidateType
from nvflare.app_common.app_event_type import AppEventType

from clara_fl.fl.server.controllers import ScatterAndGather
from clara_fl.fl.site import learner as learner_module
from clara_fl.fl.site.learner import ClaraLearner
from clara_fl.report.collect import collect
from clara_fl.report.progress import LogFollower, SimulationProgress, simulator_server_events
from clara_fl.report.readers import global_model_metrics, round_timeline
from clara_fl.runtime import events as ev
from tests.conftest import site_ctx

SITES = ("site-1", "site-2")
ROUNDS = 2


def event(kind: str, at: float, round: int | None = None, site: str | None = None, **fields: Any) -> ev.Event:
    return ev.Event(kind, 1_000.0 + at, round, site, fields)


# -- readers ---------------------------------------------------------------------------------------


def test_round_timeline_from_events_splits_each_round_into_training_waiting_and_aggregation() -> None:
    events = [
        event(ev.TRAINING_STARTED, 0.0),
        event(ev.ROUND_STARTED, 0.0, 0),
        event(ev.TASK_SENT, 1.0, 0, "site-1", task="train"),
        event(ev.TASK_SENT, 2.0, 0, "site-2", task="train"),
        event(ev.TASK_RESULT, 7.0, 0, "site-1", task="train", return_code="OK"),
        event(ev.TASK_RESULT, 12.0, 0, "site-2", task="train", return_code="OK"),
        event(ev.AGGREGATION_STARTED, 12.5, 0),
        event(ev.AGGREGATION_FINISHED, 13.0, 0),
        event(ev.ROUND_FINISHED, 13.1, 0),
    ]

    (timing,) = round_timeline(events)

    assert timing.training_time("site-1") == pytest.approx(6.0)
    assert timing.training_time("site-2") == pytest.approx(10.0)
    assert timing.waiting_time("site-1") == pytest.approx(1.0 + 5.5)
    assert timing.aggregation_time() == pytest.approx(0.5)


def test_a_round_without_a_finished_event_ends_where_the_next_round_starts_or_training_finishes() -> None:
    """FLARE's ModelController workflows fire no ROUND_DONE."""
    events = [
        event(ev.ROUND_STARTED, 0.0, 0),
        event(ev.TASK_SENT, 1.0, 0, "site-1", task="train"),
        event(ev.TASK_RESULT, 4.0, 0, "site-1", task="train"),
        event(ev.ROUND_STARTED, 5.0, 1),
        event(ev.TRAINING_FINISHED, 9.0),
    ]

    first, second = round_timeline(events)

    assert first.finished == pytest.approx(5.0) and second.finished == pytest.approx(9.0)


def test_a_late_result_that_names_its_round_counts_in_that_round() -> None:
    events = [
        event(ev.ROUND_STARTED, 0.0, 0),
        event(ev.TASK_SENT, 1.0, 0, "site-1", task="train"),
        event(ev.TASK_SENT, 1.0, 0, "site-2", task="train"),
        event(ev.TASK_RESULT, 3.0, 0, "site-1", task="train"),
        event(ev.ROUND_FINISHED, 4.0, 0),
        event(ev.ROUND_STARTED, 5.0, 1),
        event(ev.TASK_RESULT, 6.0, 0, "site-2", task="train"),
    ]

    first, second = round_timeline(events)

    assert first.training_time("site-2") == pytest.approx(5.0) and "site-2" not in second.sites


def test_global_model_metrics_come_from_the_sites_events_and_else_from_the_servers() -> None:
    site_1 = [
        event(ev.GLOBAL_MODEL_VALIDATED, 1.0, 0, "site-1", val_mean_dice=0.1, val_acc=0.5),
        event(ev.GLOBAL_MODEL_VALIDATED, 5.0, 1, "site-1", val_mean_dice=0.4, val_acc=0.9),
    ]
    server = [
        event(ev.SITE_METRIC, 6.0, 1, "site-2", val_mean_dice=0.3),
        event(ev.SITE_METRIC, 6.5, 1, "site-1", val_mean_dice=0.0),  # site-1's own records win
    ]

    found = global_model_metrics({"site-1": site_1}, server)

    assert found["site-1"] == {0: {"val_mean_dice": 0.1, "val_acc": 0.5}, 1: {"val_mean_dice": 0.4, "val_acc": 0.9}}
    assert found["site-2"] == {1: {"val_mean_dice": 0.3}}


def test_progress_line_follows_the_servers_events_file(tmp_path: Path) -> None:
    log, events_file = tmp_path / "log.txt", tmp_path / "server_events.jsonl"
    log_follower, events_follower = LogFollower(str(log)), LogFollower(str(events_file))
    progress = SimulationProgress(total_rounds=3, total_sites=2)
    writer = ev.EventLog(events_file)
    writer.write(ev.ROUND_STARTED, 0)
    writer.write(ev.TASK_RESULT, 0, "site-2", {"task": "train", "return_code": "OK"})

    steps = progress.follow(log_follower, events_follower)

    assert steps == ["round 1 of 3: 0 of 2 sites done", "round 1 of 3: 1 of 2 sites done"]
    writer.write(ev.TASK_SENT, None, "site-1", {"task": "submit_model"})
    assert progress.follow(log_follower, events_follower) == ["cross-site validation: 0 results so far"]


def test_progress_line_reads_the_log_until_the_events_file_appears_then_only_the_events(tmp_path: Path) -> None:
    log, events_file = tmp_path / "log.txt", tmp_path / "server_events.jsonl"
    log_follower, events_follower = LogFollower(str(log)), LogFollower(str(events_file))
    progress = SimulationProgress(total_rounds=3, total_sites=2)
    log.write_text("2026-12-02 10:00:00,000 - ScatterAndGather - INFO - Round 0 started.\n")
    assert progress.follow(log_follower, events_follower) == ["round 1 of 3: 0 of 2 sites done"]
    writer = ev.EventLog(events_file)
    writer.write(ev.ROUND_STARTED, 0)
    writer.write(ev.TASK_RESULT, 0, "site-1", {"task": "train"})
    with open(log, "a") as f:  # a result the log says and the events do not: no longer read
        f.write("2026-12-02 10:00:01,000 - ServerRunner - INFO - got result from client site-2 for task: name=train\n")

    steps = progress.follow(log_follower, events_follower)

    assert steps == ["round 1 of 3: 1 of 2 sites done"] and progress.trained == {"site-1"}


def test_a_process_without_an_events_file_is_read_from_its_log(tmp_path: Path) -> None:
    """A job downloaded from an older run: log.txt and no events file."""
    workspace = tmp_path / "0a1b" / "workspace"
    (workspace / "app_server").mkdir(parents=True)
    (workspace / "log.txt").write_text(
        "2026-12-02 10:00:00,000 - ScatterAndGather - INFO - Round 0 started.\n"
        "2026-12-02 10:00:01,000 - ServerRunner - INFO - assigned task to client site-1: name=train, id=1\n"
        "2026-12-02 10:00:04,000 - ServerRunner - INFO - got result from client site-1 for task: name=train, id=1\n"
        "2026-12-02 10:00:05,000 - ScatterAndGather - INFO - Round 0 finished.\n"
    )

    results = collect(tmp_path / "0a1b")

    (timing,) = results.timeline
    assert timing.training_time("site-1") == pytest.approx(3.0)
    assert results.description.started == datetime(2026, 12, 2, 10, 0, 0)


def test_a_process_with_an_events_file_is_not_read_from_its_log(tmp_path: Path) -> None:
    workspace = tmp_path / "0a1b" / "workspace"
    (workspace / "app_server").mkdir(parents=True)
    (workspace / "log.txt").write_text("2026-12-02 10:00:00,000 - ScatterAndGather - INFO - Round 7 started.\n")
    ev.EventLog(workspace / "app_server" / ev.SERVER_EVENTS_FILE).write(ev.ROUND_STARTED, 0)

    results = collect(tmp_path / "0a1b")

    assert [t.round for t in results.timeline] == [0]


# -- a run through the real writers, its log messages reworded ------------------------------------


class FakeSite:
    """The site's confined process, answering each task at once: a fixed update and fixed metrics per round."""

    def __init__(self, site: str) -> None:
        self.site = site
        self.round = 0

    def call(self, method: str, params: dict[str, Any], payload: Any = None, *args: Any, **kwargs: Any) -> Any:
        if method == "cross_validate":
            return {"metrics": {"val_mean_dice": 0.7}}, None
        if method == "validate":
            return {"metrics": {"val_mean_dice": 0.1 * (self.round + 1), "val_acc": 0.5 + 0.1 * self.round}}, None
        if method == "train":
            self.round += 1
            return {"steps": 4, "data_kind": "WEIGHT_DIFF"}, {"weights": {"w": np.ones(2)}, "meta": {}}
        return {}, None

    def stop(self) -> None:
        pass


def reword(message: str) -> str:
    """Every word of a message changed: no pattern written for the original wording finds anything in it."""
    return "said: " + " ".join(word[::-1].upper() for word in message.split())


def flare_context(app_dir: Path, peer: str | None = None, **props: Any) -> FLContext:
    workspace = SimpleNamespace(get_app_dir=lambda job_id: str(app_dir))
    ctx = FLContext()
    engine = SimpleNamespace(get_workspace=lambda: workspace, fire_event=lambda *args: None)
    ctx.set_prop(ReservedKey.ENGINE, engine, private=True, sticky=False)
    ctx.set_prop(ReservedKey.RUN_NUM, "simulate_job", private=True, sticky=False)
    for key, value in props.items():
        ctx.set_prop(key, value, private=True, sticky=False)
    if peer is not None:
        peer_ctx = FLContext()
        peer_ctx.put(ReservedKey.IDENTITY_NAME, peer, private=False, sticky=False)
        ctx.set_peer_context(peer_ctx)
    return ctx


def write_log(records: list[logging.LogRecord], path: Path) -> None:
    """The captured records as FLARE writes log.txt."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for record in records:
            stamp = datetime.fromtimestamp(record.created).strftime("%Y-%m-%d %H:%M:%S")
            f.write(f"{stamp},{int(record.msecs):03d} - {record.name} - INFO - {record.getMessage()}\n")


def run_two_rounds(workspace: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two rounds of two sites, as FLARE would drive clara-fl's ScatterAndGather and Learners, each component
    logging what it (or FLARE for it) logs; the server's and the sites' log.txt are written from what was logged."""
    server_app = workspace / "server" / "simulate_job" / "app_server"
    server_app.mkdir(parents=True)
    learners, fakes = {}, {}
    for site in SITES:
        app = workspace / site / "simulate_job" / f"app_{site}"
        (app / "config").mkdir(parents=True)
        (app / "config" / "config_train.json").write_text("{}")
        fakes[site] = FakeSite(site)
        monkeypatch.setattr(learner_module, "site_backend", lambda spec, fake=fakes[site]: fake)
        learners[site] = ClaraLearner()
        learners[site].initialize({}, site_ctx(app, workspace / site, site))
    workflow = ScatterAndGather(min_clients=2, num_rounds=ROUNDS)
    workflow._engine = SimpleNamespace(get_clients=lambda: [SimpleNamespace(name=s) for s in SITES])
    workflow.record_run_events(flare_context(server_app))
    site_records: dict[str, list[logging.LogRecord]] = {site: [] for site in SITES}
    server_records: list[logging.LogRecord] = []

    def server_says(message: str, event_type: str, **props: Any) -> None:
        caplog.clear()
        workflow.log_info(flare_context(server_app), message)
        workflow.handle_event(event_type, flare_context(server_app, props.pop("peer", None), **props))
        server_records.extend(caplog.records)

    for number in range(ROUNDS):
        workflow._current_round = number
        server_says(f"Round {number} started.", AppEventType.ROUND_STARTED, **{AppConstants.CURRENT_ROUND: number})
        for task_id, site in enumerate(SITES):
            task = Shareable()
            task.set_header(AppConstants.CURRENT_ROUND, number)
            props = {FLContextKey.TASK_NAME: "train", FLContextKey.TASK_DATA: task, "peer": site}
            server_says(
                f"assigned task to client {site}: name=train, id={task_id}", EventType.AFTER_TASK_DATA_FILTER, **props
            )
        for task_id, site in enumerate(SITES):
            result = train_at(learners[site], workspace / site, site, number, caplog, site_records[site])
            props = {FLContextKey.TASK_NAME: "train", FLContextKey.TASK_RESULT: result, "peer": site}
            server_says(
                f"got result from client {site} for task: name=train, id={task_id}",
                EventType.BEFORE_TASK_RESULT_FILTER,
                **props,
            )
            workflow.handle_event(AppEventType.BEFORE_CONTRIBUTION_ACCEPT, flare_context(server_app, site))
        server_says("Start aggregation.", AppEventType.BEFORE_AGGREGATION)
        server_says("End aggregation.", AppEventType.AFTER_AGGREGATION)
        server_says(f"Round {number} finished.", AppEventType.ROUND_DONE)
    write_log(server_records, workspace / "server" / "log.txt")
    for site in SITES:
        write_log(site_records[site], workspace / site / "log.txt")


def train_at(
    learner: ClaraLearner,
    site_root: Path,
    site: str,
    number: int,
    caplog: pytest.LogCaptureFixture,
    records: list[logging.LogRecord],
) -> Shareable:
    """The site's train task as FLARE's LearnerExecutor runs it: validate the global model, train, send the
    update with the validation's metrics in its meta."""
    ctx = site_ctx(site_root / "simulate_job" / f"app_{site}", site_root, site)
    task = DXO(data_kind=DataKind.WEIGHTS, data={"w": np.zeros(2)}).to_shareable()
    task.set_header(AppConstants.CURRENT_ROUND, number)
    caplog.clear()
    task.set_header(AppConstants.VALIDATE_TYPE, ValidateType.BEFORE_TRAIN_VALIDATE)
    validated = from_shareable(learner.validate(task, ctx, Signal()))
    result = learner.train(task, ctx, Signal())
    records.extend(caplog.records)
    dxo = from_shareable(result)
    dxo.set_meta_prop(MetaKey.INITIAL_METRICS, validated.data[MetaKey.INITIAL_METRICS])
    return dxo.to_shareable()


def what_the_report_shows(workspace: Path) -> tuple[list[Any], dict[str, dict[int, dict[str, float]]]]:
    """The round timeline (rounds, sites, which steps have times) and the global model's metrics."""
    results = collect(workspace)
    timeline = [
        (
            timing.round,
            sorted(timing.sites),
            all(timing.training_time(site) is not None for site in SITES),
            timing.aggregation_time() is not None,
            timing.finished is not None,
        )
        for timing in results.timeline
    ]
    return timeline, results.global_model


def progress_steps(workspace: Path, run: Any) -> list[str]:
    log = LogFollower(str(workspace / "server" / "log.txt"))
    events = LogFollower(simulator_server_events(workspace))
    progress = SimulationProgress(total_rounds=ROUNDS, total_sites=len(SITES))
    run()
    return progress.follow(log, events)


EXPECTED_TIMELINE = [(number, list(SITES), True, True, True) for number in range(ROUNDS)]
EXPECTED_GLOBAL_MODEL = {
    site: {0: {"val_mean_dice": 0.1, "val_acc": 0.5}, 1: {"val_mean_dice": 0.2, "val_acc": 0.6}} for site in SITES
}
EXPECTED_STEPS = [
    "round 1 of 2: 0 of 2 sites done",
    "round 1 of 2: 1 of 2 sites done",
    "round 1 of 2: 2 of 2 sites done",
    "round 2 of 2: 0 of 2 sites done",
    "round 2 of 2: 1 of 2 sites done",
    "round 2 of 2: 2 of 2 sites done",
]


@pytest.mark.parametrize("wording", ["original", "reworded"])
def test_report_and_progress_line_are_the_same_whatever_the_log_messages_say(
    wording: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO)
    if wording == "reworded":  # every FLComponent's messages: clara-fl's Learner and workflow, FLARE's for them
        for method in ("log_info", "log_warning", "log_error"):
            original = getattr(FLComponent, method)
            monkeypatch.setattr(
                FLComponent,
                method,
                lambda self, fl_ctx, msg, *a, _original=original, **k: _original(self, fl_ctx, reword(msg), *a, **k),
            )
    workspace = tmp_path / "ws"

    steps = progress_steps(workspace, lambda: run_two_rounds(workspace, caplog, monkeypatch))

    assert steps == EXPECTED_STEPS
    assert what_the_report_shows(workspace) == (EXPECTED_TIMELINE, EXPECTED_GLOBAL_MODEL)
    # without the event files, the logs alone give the same report with the original wording, nothing when reworded
    for events_file in workspace.rglob("*_events.jsonl"):
        events_file.unlink()
    from_logs = what_the_report_shows(workspace)
    assert from_logs == ((EXPECTED_TIMELINE, EXPECTED_GLOBAL_MODEL) if wording == "original" else ([], {}))


def test_a_sites_records_hold_only_numbers_and_flares_names(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """They may be collected into the report at the server: no case names, paths or exception text."""
    run_two_rounds(tmp_path / "ws", caplog, monkeypatch)

    records = ev.read_events(tmp_path / "ws" / "site-1" / "simulate_job" / "app_site-1" / ev.SITE_EVENTS_FILE)

    texts = {value for record in records for value in record.fields.values() if isinstance(value, str)}
    assert texts == {"WEIGHT_DIFF"}
    assert {record.site for record in records} == {"site-1"}
    assert [(r.kind, r.round) for r in records] == [
        (kind, number)
        for number in range(ROUNDS)
        for kind in (ev.GLOBAL_MODEL_VALIDATED, ev.SITE_TRAINING_STARTED, ev.SITE_TRAINING_DONE)
    ]


def test_the_validator_records_each_models_metrics_with_its_owner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clara_fl.fl.site.validator import ClaraValidator

    app = tmp_path / "site-1" / "simulate_job" / "app_site-1"
    (app / "config").mkdir(parents=True)
    (app / "config" / "config_train.json").write_text("{}")
    monkeypatch.setattr(learner_module, "site_backend", lambda spec: FakeSite("site-1"))
    model = DXO(data_kind=DataKind.WEIGHTS, data={"w": np.zeros(2)}).to_shareable()
    model.set_header(AppConstants.MODEL_OWNER, "site-2")

    reply = ClaraValidator().execute("validate", model, site_ctx(app, tmp_path / "site-1"), Signal())

    assert from_shareable(reply).data == {"val_mean_dice": 0.7}
    (record,) = ev.read_events(app / ev.SITE_EVENTS_FILE)
    assert (record.kind, record.site, record.text("model"), record.numbers()) == (
        ev.MODEL_VALIDATED,
        "site-1",
        "site-2",
        {"val_mean_dice": 0.7},
    )


@pytest.mark.parametrize("workflow_class", ["FedAvg", "Scaffold"])
def test_a_model_controller_workflow_records_a_round_when_a_model_of_a_new_round_goes_out(
    workflow_class: str, tmp_path: Path
) -> None:
    """FLARE's Scaffold fires no ROUND_STARTED; FedAvg fires it before sending the round's model: one record each."""
    from nvflare.app_common.abstract.fl_model import FLModel

    from clara_fl.fl.server import controllers

    workflow = getattr(controllers, workflow_class)(num_clients=2, num_rounds=2)
    ctx = flare_context(tmp_path)
    workflow.fl_ctx = ctx
    workflow.record_run_events(ctx)

    workflow.handle_event(AppEventType.ROUND_STARTED, flare_context(tmp_path, **{AppConstants.CURRENT_ROUND: 0}))
    workflow.set_fl_context(FLModel(params={}, current_round=0))
    workflow.set_fl_context(FLModel(params={}, current_round=1))

    rounds = [e.round for e in ev.read_events(tmp_path / ev.SERVER_EVENTS_FILE) if e.kind == ev.ROUND_STARTED]
    assert rounds == [0, 1]
