"""Surviving a server restart and a dead site (issue 15): the server's run state on disk, the
continuation job ``clara-fl job resume`` writes from it, and the site's drop-out exit code."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, FLMetaKey, ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType

from clara_fl.config.errors import ConfigError, UsageError
from clara_fl.fl.flare_internals.dropout import ABRUPT_EXIT_CODE, DropOutOnAbruptExit
from clara_fl.fl.server.persistor import ClaraModelPersistor
from clara_fl.fl.server.run_state import STATE_FILE, ServerRunState, read_run_state, write_run_state
from clara_fl.recipes.resume import plan_resume, write_continuation_job
from tests.conftest import SPLEEN_MMAR


def context(app_root: Path, job_id: str = "job-1", **props: Any) -> FLContext:
    fl_ctx = FLContext()
    workspace = SimpleNamespace(get_run_dir=lambda job: os.path.join(app_root, job))
    engine = SimpleNamespace(get_workspace=lambda: workspace, fire_event=lambda *args: None)
    fl_ctx.put(ReservedKey.ENGINE, engine, private=True, sticky=False)
    fl_ctx.put(ReservedKey.RUN_NUM, job_id, private=True, sticky=False)
    fl_ctx.set_prop(FLContextKey.APP_ROOT, str(app_root), private=True, sticky=False)
    for key, value in props.items():
        fl_ctx.set_prop(key, value, private=True, sticky=False)
    return fl_ctx


def persistor_in(folder: Path, **kwargs: Any) -> ClaraModelPersistor:
    """The persistor as _initialize leaves it: a network, and its model files in ``folder``."""
    persistor = ClaraModelPersistor(**kwargs)
    persistor.model = torch.nn.Linear(3, 1)
    persistor._ckpt_save_path = str(folder / "FL_global_model.pt")
    persistor._best_ckpt_save_path = str(folder / "best_FL_global_model.pt")
    return persistor


def save_round(persistor: ClaraModelPersistor, folder: Path, current_round: int, num_rounds: int = 4) -> None:
    learnable = persistor.load(context(folder))
    rounds = {
        AppConstants.CURRENT_ROUND: current_round,
        AppConstants.START_ROUND: 0,
        AppConstants.NUM_ROUNDS: num_rounds,
    }
    persistor.save(learnable, context(folder, **rounds))


def test_the_persistor_records_the_rounds_done_after_saving_each_global_model(tmp_path: Path) -> None:
    persistor = persistor_in(tmp_path)

    save_round(persistor, tmp_path, current_round=1)

    state = read_run_state(tmp_path)
    assert state == ServerRunState(job_id="job-1", rounds_done=2, total_rounds=4, global_model="FL_global_model.pt")
    assert "model" in torch.load(tmp_path / state.global_model, weights_only=True)


def test_the_run_state_never_names_a_round_whose_model_was_not_saved(tmp_path: Path, monkeypatch) -> None:
    persistor = persistor_in(tmp_path)
    save_round(persistor, tmp_path, current_round=0)

    def killed_while_writing(path: str) -> None:
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(persistor, "save_model_file", killed_while_writing)
    with pytest.raises(KeyboardInterrupt):
        save_round(persistor, tmp_path, current_round=1)

    assert read_run_state(tmp_path).rounds_done == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_the_persistor_records_the_best_global_model_with_its_round_and_metric(tmp_path: Path) -> None:
    persistor = persistor_in(tmp_path)
    save_round(persistor, tmp_path, current_round=1)
    best = {AppConstants.VALIDATION_RESULT: 0.62, AppConstants.CURRENT_ROUND: 2}

    persistor.handle_event(AppEventType.GLOBAL_BEST_MODEL_AVAILABLE, context(tmp_path, **best))

    state = read_run_state(tmp_path)
    assert (state.best_model, state.best_metric, state.best_round) == ("best_FL_global_model.pt", 0.62, 2)
    assert (tmp_path / "best_FL_global_model.pt").is_file()


def test_the_best_model_checkpoint_of_the_saved_global_model_is_a_link_that_keeps_it_after_the_next_save(
    tmp_path: Path,
) -> None:
    persistor = persistor_in(tmp_path)
    learnable = persistor.load(context(tmp_path))
    rounds = {AppConstants.CURRENT_ROUND: 0, AppConstants.START_ROUND: 0, AppConstants.NUM_ROUNDS: 4}
    persistor.save(learnable, context(tmp_path, **rounds))
    best = {AppConstants.GLOBAL_MODEL: learnable, AppConstants.VALIDATION_RESULT: 0.5, AppConstants.CURRENT_ROUND: 1}

    persistor.handle_event(AppEventType.GLOBAL_BEST_MODEL_AVAILABLE, context(tmp_path, **best))
    linked = os.path.samefile(tmp_path / "best_FL_global_model.pt", tmp_path / "FL_global_model.pt")
    persistor.handle_event(AppEventType.BEFORE_SHAREABLE_TO_LEARNABLE, context(tmp_path))
    learnable["weights"] = {k: v + 1.0 for k, v in learnable["weights"].items()}  # as FLARE's generators do
    persistor.save(learnable, context(tmp_path, **{**rounds, AppConstants.CURRENT_ROUND: 1}))

    assert linked
    best_weights = torch.load(tmp_path / "best_FL_global_model.pt", weights_only=True)["model"]
    global_weights = torch.load(tmp_path / "FL_global_model.pt", weights_only=True)["model"]
    assert torch.equal(global_weights["bias"], best_weights["bias"] + 1.0)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_best_model_other_than_the_saved_one_is_written_by_flares_persistor(tmp_path: Path) -> None:
    persistor = persistor_in(tmp_path)
    learnable = persistor.load(context(tmp_path))
    persistor.save(learnable, context(tmp_path))
    persistor.handle_event(AppEventType.BEFORE_SHAREABLE_TO_LEARNABLE, context(tmp_path))  # changed since saved
    best = {AppConstants.GLOBAL_MODEL: learnable, AppConstants.VALIDATION_RESULT: 0.5, AppConstants.CURRENT_ROUND: 1}

    persistor.handle_event(AppEventType.GLOBAL_BEST_MODEL_AVAILABLE, context(tmp_path, **best))

    assert (tmp_path / "best_FL_global_model.pt").is_file()
    assert not os.path.samefile(tmp_path / "best_FL_global_model.pt", tmp_path / "FL_global_model.pt")


def test_a_resumed_persistor_starts_from_the_saved_global_model_and_keeps_the_saved_best(tmp_path: Path) -> None:
    saved = tmp_path / "workspace" / "a1b2" / "app_server"  # the stranded job's app folder in the server workspace
    saved.mkdir(parents=True)
    trained = torch.nn.Linear(3, 1)
    torch.save({"model": trained.state_dict()}, saved / "FL_global_model.pt")
    torch.save({"model": trained.state_dict()}, saved / "best_FL_global_model.pt")
    write_run_state(saved, ServerRunState("a1b2", 2, 4, "FL_global_model.pt", "best_FL_global_model.pt", 0.5, 1))
    app = tmp_path / "workspace" / "c3d4" / "app_server"
    app.mkdir(parents=True)
    persistor = persistor_in(app, resume_from_job="a1b2")

    persistor._resume(context(app))
    learnable = persistor.load(context(app))

    assert torch.equal(torch.as_tensor(learnable["weights"]["weight"]), trained.weight.detach())
    assert (app / "best_FL_global_model.pt").is_file()
    save_round(persistor, app, current_round=2)
    assert (read_run_state(app).best_metric, read_run_state(app).best_round) == (0.5, 1)


def test_the_restricted_policy_lets_a_job_resume_only_a_job_id_not_a_path(tmp_path: Path) -> None:
    from clara_fl.fl.server.persistor import check_persistor_arguments

    check_persistor_arguments({"resume_from_job": ""}, str(tmp_path))  # the default: a job that does not resume
    check_persistor_arguments({"resume_from_job": "6994695f-c696-464b-992b-eced4339e8b9"}, str(tmp_path))
    with pytest.raises(ConfigError, match=r"components\[persistor\].args.resume_from_job: '../x' must be a job id"):
        check_persistor_arguments({"resume_from_job": "../x"}, str(tmp_path))


def test_the_model_selector_of_a_continuation_job_starts_from_the_saved_best() -> None:
    from clara_fl.fl.server.model_selection import GlobalModelSelector

    selector = GlobalModelSelector(key_metric="val_loss", negate_key_metric=True, saved_best_val_metric=-0.3)

    assert (selector.best_val_metric, selector.best_raw_val_metric) == (-0.3, 0.3)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rounds_done": "2"}, "rounds_done: expected int, got '2'"),
        ({"rounds_done": 5}, "rounds_done: expected 0 <= rounds_done <= total_rounds (4)"),
        ({"global_model": "../x.pt"}, "global_model: expected a file name beside the state file"),
        ({"best_metric": float("nan")}, "best_metric: expected a finite number"),
        ({"job_id": None}, "job_id: expected str, got None"),
    ],
)
def test_a_bad_run_state_is_one_line_naming_the_field(tmp_path: Path, change: dict, message: str) -> None:
    data = {"job_id": "j", "rounds_done": 2, "total_rounds": 4, "global_model": "FL_global_model.pt", **change}
    (tmp_path / STATE_FILE).write_text(json.dumps(data))

    with pytest.raises(ConfigError) as raised:
        read_run_state(tmp_path)

    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_the_site_records_the_drop_out_exit_code_for_the_run_and_removes_it_at_a_normal_end(tmp_path: Path) -> None:
    (tmp_path / "job-1").mkdir()
    component, fl_ctx = DropOutOnAbruptExit(), context(tmp_path)
    rc_file = tmp_path / "job-1" / FLMetaKey.PROCESS_RC_FILE

    component.handle_event(EventType.START_RUN, fl_ctx)
    recorded = rc_file.read_text()
    component.handle_event(EventType.END_RUN, fl_ctx)

    assert recorded == str(ABRUPT_EXIT_CODE) and not rc_file.exists()


def test_a_run_that_ends_removes_the_launch_record_so_a_client_restart_does_not_rejoin_it(tmp_path: Path) -> None:
    from clara_fl.fl.flare_internals.rejoin import LaunchRecord, read_launch, record_launch

    run_dir = tmp_path / "job-1"
    run_dir.mkdir()
    record_launch(str(run_dir), LaunchRecord("job-1", "token", "signature"))
    component, fl_ctx = DropOutOnAbruptExit(), context(tmp_path)

    component.handle_event(EventType.START_RUN, fl_ctx)
    kept_while_running = read_launch(str(run_dir))
    component.handle_event(EventType.END_RUN, fl_ctx)

    assert kept_while_running is not None and read_launch(str(run_dir)) is None


def test_a_run_stopped_because_the_client_died_keeps_the_launch_record_for_the_rejoin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clara_fl.fl.flare_internals.rejoin import LaunchRecord, read_launch, record_launch

    run_dir = tmp_path / "job-1"
    run_dir.mkdir()
    record_launch(str(run_dir), LaunchRecord("job-1", "token", "signature"))
    component, fl_ctx = DropOutOnAbruptExit(), context(tmp_path)
    component.handle_event(EventType.START_RUN, fl_ctx)

    monkeypatch.setattr(os, "getppid", lambda: 1)  # the client died: the job process was re-parented
    component.handle_event(EventType.END_RUN, fl_ctx)

    assert read_launch(str(run_dir)) == LaunchRecord("job-1", "token", "signature")


# ---- clara-fl job resume -------------------------------------------------------------------------------------


# each template's rounds workflow: the default's (FLARE's FedAvg ModelController) and ScatterAndGather's
ROUNDS_WORKFLOW = {"clara_fedavg_cse_mc": "fedavg", "clara_fedavg_cse": "scatter_and_gather"}


def spleen_job(folder: Path, template: str | None = None) -> Path:
    from clara_fl.recipes.job_folder import create_job

    return create_job(SPLEEN_MMAR, folder / "spleen", template, num_rounds=4, min_clients=2)


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-round job on the default template."""
    return spleen_job(tmp_path_factory.mktemp("jobs"))


def stranded_run(workspace: Path, rounds_done: int = 2, total_rounds: int = 4, best: bool = True) -> Path:
    """Job a1b2's folder in the server's workspace as a killed server leaves it: app_server/ with the models
    and the run state."""
    app = workspace / "a1b2" / "app_server"
    app.mkdir(parents=True)
    torch.save({"model": {"w": torch.ones(2)}}, app / "FL_global_model.pt")
    if best:
        torch.save({"model": {"w": torch.zeros(2)}}, app / "best_FL_global_model.pt")
    best_fields = ("best_FL_global_model.pt", 0.7, 1) if best else (None, None, None)
    write_run_state(app, ServerRunState("a1b2", rounds_done, total_rounds, "FL_global_model.pt", *best_fields))
    return app.parent


def server_config(job_folder: Path) -> dict[str, Any]:
    return json.loads((job_folder / "app" / "config" / "config_fed_server.json").read_text())


def component(config: dict[str, Any], section: str, component_id: str) -> dict[str, Any]:
    return next(c for c in config[section] if c["id"] == component_id)


@pytest.mark.parametrize("template", list(ROUNDS_WORKFLOW))
def test_the_continuation_job_runs_the_rounds_left_from_the_saved_models(tmp_path: Path, template: str) -> None:
    job = spleen_job(tmp_path / "jobs", template)
    run = stranded_run(tmp_path / "server")

    continuation = write_continuation_job(plan_resume(job, run), tmp_path / "continued")

    config = server_config(continuation)
    rounds = component(config, "workflows", ROUNDS_WORKFLOW[template])["args"]
    assert (rounds["start_round"], rounds["num_rounds"]) == (2, 2)
    assert component(config, "components", "persistor")["args"]["resume_from_job"] == "a1b2"
    assert component(config, "components", "model_selector")["args"]["saved_best_val_metric"] == 0.7
    # the models stay on the server: the job has the same files as the original
    assert sorted(p.name for p in (continuation / "app").iterdir()) == sorted(p.name for p in (job / "app").iterdir())
    assert json.loads((continuation / "meta.json").read_text())["name"].endswith("_resumed_at_round_2")
    # everything else is the original job
    original = server_config(job)
    assert [c["id"] for c in config["components"]] == [c["id"] for c in original["components"]]
    assert (continuation / "app" / "config" / "config_fed_client.json").read_text() == (
        job / "app" / "config" / "config_fed_client.json"
    ).read_text()


def test_a_scaffold_job_is_refused_in_one_line_since_its_control_variates_are_not_saved(tmp_path: Path) -> None:
    from clara_fl.recipes.job_folder import create_job

    scaffold = create_job(SPLEEN_MMAR, tmp_path / "scaffold", num_rounds=4, algorithm="scaffold")
    run = stranded_run(tmp_path / "server")

    with pytest.raises(ConfigError) as raised:
        plan_resume(scaffold, run)

    assert raised.value.path == "workflows[scaffold]" and "control variates are not saved" in raised.value.message
    assert "\n" not in str(raised.value)


def test_a_job_without_a_rounds_workflow_it_can_continue_is_refused_naming_both(job: Path, tmp_path: Path) -> None:
    other = tmp_path / "job"
    shutil.copytree(job, other)
    config = server_config(other)
    config["workflows"] = [w for w in config["workflows"] if w["id"] != "fedavg"]
    (other / "app" / "config" / "config_fed_server.json").write_text(json.dumps(config))

    with pytest.raises(ConfigError, match="no 'scatter_and_gather' or 'fedavg' workflow"):
        plan_resume(other, stranded_run(tmp_path / "server"))


def test_a_run_without_a_best_model_yet_leaves_the_selector_as_the_job_has_it(job: Path, tmp_path: Path) -> None:
    run = stranded_run(tmp_path / "server", best=False)

    continuation = write_continuation_job(plan_resume(job, run / "app_server"), tmp_path / "continued")

    assert "saved_best_val_metric" not in component(server_config(continuation), "components", "model_selector")["args"]


@pytest.mark.parametrize(
    ("make_run", "message"),
    [
        (lambda p: stranded_run(p, rounds_done=4), "all 4 rounds of job a1b2 are done: nothing to resume"),
        (lambda p: stranded_run(p, total_rounds=6), "the job plans 4 rounds but the run planned 6: not this run's job"),
        (
            lambda p: (stranded_run(p), (p / "a1b2").rename(p / "other"))[0].parent / "other",
            "the run state is of job a1b2, not of the job folder it is in",
        ),
        (
            lambda p: (stranded_run(p), (p / "a1b2" / "app_server" / "best_FL_global_model.pt").unlink())[0],
            "the saved model best_FL_global_model.pt is missing",
        ),
    ],
)
def test_a_bad_run_folder_is_one_line_and_nothing_is_written(
    job: Path, tmp_path: Path, make_run: Any, message: str
) -> None:
    run = make_run(tmp_path / "run")

    with pytest.raises(ConfigError) as raised:
        plan_resume(job, run)

    assert message in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("make_run", "expected"),
    [
        (lambda p: p.mkdir() or p, "no clara_fl_server_state.json here or in app_server/"),
        (lambda p: p, "server run folder not found"),
    ],
    ids=["no_run_state", "missing"],
)
def test_a_run_argument_that_is_no_server_run_is_a_usage_error_naming_run(
    job: Path, tmp_path: Path, make_run: Any, expected: str
) -> None:
    run = make_run(tmp_path / "run")

    with pytest.raises(UsageError) as raised:
        plan_resume(job, run)

    assert (raised.value.option, raised.value.value) == ("RUN", str(run))
    assert raised.value.expected.startswith(expected)


def test_the_resume_command_refuses_a_folder_that_is_not_a_job_with_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from clara_fl.cli import main

    run = stranded_run(tmp_path / "run")
    (tmp_path / "not_a_job").mkdir()

    code = main(["job", "resume", str(tmp_path / "not_a_job"), str(run), "-o", str(tmp_path / "out")])

    err = capsys.readouterr().err.strip()
    assert err == f"clara-fl job: error: JOB {tmp_path / 'not_a_job'}: not a FLARE job folder (no meta.json)"
    assert code == 2
    assert not (tmp_path / "out").exists()


def test_the_resume_command_writes_the_job_and_says_how_to_end_the_stranded_one(
    job: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from clara_fl.cli import main

    run = stranded_run(tmp_path / "run")

    code = main(["job", "resume", str(job), str(run), "-o", str(tmp_path / "out")])

    out = capsys.readouterr().out
    assert code == 0 and (tmp_path / "out" / "meta.json").is_file()
    assert "rounds 2-3 of 4" in out and "nvflare job abort a1b2" in out


def test_the_resume_command_does_not_replace_an_existing_folder_without_force(job: Path, tmp_path: Path) -> None:
    run = stranded_run(tmp_path / "run")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")

    with pytest.raises(UsageError, match="use --force"):
        write_continuation_job(plan_resume(job, run), tmp_path / "out")

    assert (tmp_path / "out" / "keep.txt").is_file()


# ---- jobs a server restart stranded --------------------------------------------------------------------------


class _JobStore:
    """FLARE's job manager as far as the server start needs it: jobs by status, and status changes."""

    def __init__(self, statuses: dict[str, str]) -> None:
        self.statuses = statuses

    def get_jobs_by_status(self, wanted: list, fl_ctx: FLContext) -> list:
        values = {getattr(w, "value", w) for w in wanted}
        return [SimpleNamespace(job_id=j) for j, status in self.statuses.items() if status in values]

    def set_status(self, job_id: str, status: Any, fl_ctx: FLContext) -> None:
        self.statuses[job_id] = getattr(status, "value", status)


def _started_server(tmp_path: Path, statuses: dict[str, str]) -> tuple[FLContext, _JobStore]:
    from nvflare.apis.fl_constant import SystemComponents
    from nvflare.private.fed.server.job_runner import JobRunner

    store = _JobStore(statuses)
    engine = SimpleNamespace(
        get_component=lambda name: store if name == SystemComponents.JOB_MANAGER else None,
        job_runner=JobRunner(str(tmp_path)),
        run_processes={},
        fire_event=lambda event_type, fl_ctx: None,
        get_workspace=lambda: SimpleNamespace(get_run_dir=lambda job: str(tmp_path / job)),
    )
    fl_ctx = FLContext()
    fl_ctx.put(ReservedKey.ENGINE, engine, private=True, sticky=False)
    return fl_ctx, store


def test_the_server_start_ends_the_jobs_a_restart_stranded_and_says_how_to_resume(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from clara_fl.fl.flare_internals.stranded_jobs import EndStrandedJobs

    fl_ctx, store = _started_server(tmp_path, {"a1": "RUNNING", "b2": "FINISHED:COMPLETED", "c3": "SUBMITTED"})

    EndStrandedJobs().handle_event(EventType.SYSTEM_START, fl_ctx)

    assert store.statuses == {"a1": "FINISHED:ABNORMAL", "b2": "FINISHED:COMPLETED", "c3": "SUBMITTED"}
    assert "job a1 was running when the server stopped: ended as FINISHED:ABNORMAL" in caplog.text
    assert f"clara-fl job resume JOB_FOLDER {tmp_path / 'a1'}" in caplog.text
