"""The patches of FLARE's internals (clara_fl.fl.flare_internals) run only on the FLARE release they were written
for and where the site has not switched them off; otherwise each logs one line and FLARE's own behaviour runs.

The FLARE version is faked by setting ``nvflare.__version__``, which the gate reads; the switch is the site file's
``flare_patches``. Each patch's behaviour when on is specified in its own tests (test_server_resume.py,
test_site_rejoin.py, test_abort.py, test_fl_controllers.py).
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nvflare
import pytest
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, FLMetaKey, ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.impl.controller import Controller
from nvflare.apis.impl.wf_comm_server import WFCommServer
from nvflare.apis.job_launcher_spec import JobProcessArgs
from nvflare.apis.workspace import Workspace
from nvflare.app_common.job_launcher.process_launcher import ProcessJobLauncher

import clara_fl.fl.flare_internals as internals
from clara_fl.config.errors import ConfigError
from clara_fl.fl.flare_internals import abort, dropout, rejoin, stranded_jobs, task_check_period
from clara_fl.fl.flare_internals.gate import SWITCHES, SWITCHES_KEY, WRITTEN_FOR, FlarePatch, site_switches
from clara_fl.fl.site.context import SITE_CONFIG_ENV, SITE_FILE_NAME

NEWER_FLARE = "2.10.0"


@pytest.fixture(autouse=True)
def no_site_file_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SITE_CONFIG_ENV, raising=False)


def site(root: Path, switches: dict[str, Any] | None = None) -> Workspace:
    """A site workspace at ``root``; ``switches`` go into its site file's ``flare_patches``."""
    (root / "local").mkdir(parents=True, exist_ok=True)
    (root / "startup").mkdir(exist_ok=True)
    if switches is not None:
        content = {"environment": {}, SWITCHES_KEY: switches}
        (root / "local" / SITE_FILE_NAME).write_text(json.dumps(content))
    return Workspace(str(root), site_name="site-1")


def context(workspace: Workspace, engine: Any = None, **props: Any) -> FLContext:
    fl_ctx = FLContext()
    engine = engine or SimpleNamespace(get_workspace=lambda: workspace, fire_event=lambda *args: None)
    fl_ctx.put(ReservedKey.ENGINE, engine, private=True, sticky=False)
    fl_ctx.put(ReservedKey.RUN_NUM, "job-1", private=True, sticky=False)
    fl_ctx.set_prop(FLContextKey.WORKSPACE_OBJECT, workspace, private=True, sticky=False)
    for key, value in props.items():
        fl_ctx.set_prop(key, value, private=True, sticky=False)
    return fl_ctx


def off_lines(caplog: pytest.LogCaptureFixture, patch: FlarePatch) -> list[str]:
    return [r.getMessage() for r in caplog.records if f"FLARE patch '{patch.switch}' is off" in r.getMessage()]


# ---- each patch, off: the plain FLARE behaviour --------------------------------------------------------------


def dropout_run(workspace: Workspace) -> bool:
    """A run's START_RUN; whether the drop-out exit code was recorded for it."""
    run_dir = Path(workspace.get_run_dir("job-1"))
    run_dir.mkdir(parents=True, exist_ok=True)
    dropout.DropOutOnAbruptExit().handle_event(EventType.START_RUN, context(workspace))
    return (run_dir / FLMetaKey.PROCESS_RC_FILE).exists()


def abort_run(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> bool:
    """An aborted run to its END_RUN; whether the job process would have been ended by the patch."""
    exits: list[int] = []
    monkeypatch.setattr(abort.os, "_exit", exits.append)
    monkeypatch.setattr(abort.logging, "shutdown", lambda: None)  # would close pytest's log capture
    monkeypatch.setattr(abort.threading, "Thread", lambda target, **_: SimpleNamespace(start=target))
    component = abort.ExitPromptlyOnAbort(grace_s=0)
    fl_ctx = context(workspace, **{FLContextKey.RUN_ABORT_REQUESTED: True})
    for event in (EventType.START_RUN, EventType.ABORT_TASK, EventType.END_RUN):
        component.handle_event(event, fl_ctx)
    return exits == [0]


def rejoin_launch_then_restart(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> bool:
    """A job launched, its process died, the client restarted; whether the job was recorded and started again."""
    launched: list[str] = []
    monkeypatch.setattr(ProcessJobLauncher, "launch_job", lambda _, meta, fl_ctx: launched.append(meta["job_id"]))
    run_dir = Path(workspace.get_run_dir("job-1"))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "meta.json").write_text(json.dumps({"job_id": "job-1"}))
    args = {JobProcessArgs.AUTH_TOKEN: ("-t", "token"), JobProcessArgs.TOKEN_SIGNATURE: ("-ts", "signature")}
    launch = context(workspace, **{FLContextKey.JOB_PROCESS_ARGS: args})
    launcher = rejoin.RejoiningJobLauncher()  # one client process: it decides, and says so, once
    launcher.launch_job({"job_id": "job-1"}, launch)

    def start_app(job_id: str, job_meta: dict) -> str:  # the client engine's: its START_JOB path launches the job
        launched.append(job_id)
        return "started"

    rejoined = launcher.rejoin_died_jobs(context(workspace, SimpleNamespace(start_app=start_app)))
    return (run_dir / rejoin.RECORD_NAME).exists() or rejoined != [] or launched != ["job-1"]


def stranded_server_start(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> bool:
    """A server start with a job the store still has RUNNING; whether the job was ended."""
    ended: list[Any] = []
    engine = SimpleNamespace(
        get_component=lambda name: SimpleNamespace(get_jobs_by_status=lambda *_: [SimpleNamespace(job_id="a1")]),
        job_runner=SimpleNamespace(update_abnormal_finished_jobs=lambda **kwargs: ended.append(kwargs)),
        run_processes={},
        get_workspace=lambda: workspace,
        fire_event=lambda *args: None,
    )
    stranded_jobs.EndStrandedJobs().handle_event(EventType.SYSTEM_START, context(workspace, engine))
    return ended != []


class _Workflow(task_check_period.PollsAtItsTaskCheckPeriod, Controller):
    def start_controller(self, fl_ctx: FLContext) -> None:
        pass

    def stop_controller(self, fl_ctx: FLContext) -> None:
        pass

    def control_flow(self, abort_signal: Any, fl_ctx: FLContext) -> None:
        pass

    def process_result_of_unknown_task(self, *args: Any) -> None:
        pass


def workflow_start(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> bool:
    """A workflow given task_check_period 0.05 set up and started; whether its communicator polls at 0.05 s."""
    communicator = WFCommServer()
    workflow = _Workflow(task_check_period=0.05)
    workflow.set_communicator(communicator)
    workflow.initialize(context(workspace))
    return communicator._task_check_period == 0.05


PATCHED: dict[str, tuple[FlarePatch, Callable[..., bool]]] = {
    "dropout": (dropout.PATCH, lambda workspace, _: dropout_run(workspace)),
    "abort": (abort.PATCH, abort_run),
    "rejoin": (rejoin.PATCH, rejoin_launch_then_restart),
    "stranded_jobs": (stranded_jobs.PATCH, stranded_server_start),
    "task_check_period": (task_check_period.PATCH, workflow_start),
}


@pytest.mark.parametrize("name", sorted(PATCHED))
def test_on_the_flare_release_it_was_written_for_a_patch_runs_and_logs_no_off_line(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    patch, scenario = PATCHED[name]

    patched = scenario(site(tmp_path), monkeypatch)

    assert patched and off_lines(caplog, patch) == []


@pytest.mark.parametrize("name", sorted(PATCHED))
def test_on_a_newer_flare_a_patch_logs_one_line_and_flare_behaves_as_without_it(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    patch, scenario = PATCHED[name]
    monkeypatch.setattr(nvflare, "__version__", NEWER_FLARE)

    patched = scenario(site(tmp_path), monkeypatch)

    lines = off_lines(caplog, patch)
    assert not patched
    assert len(lines) == 1 and f"this is FLARE {NEWER_FLARE}" in lines[0] and "not going to" in lines[0]


@pytest.mark.parametrize("name", sorted(PATCHED))
def test_a_site_that_switches_a_patch_off_gets_one_line_and_flares_behaviour(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.INFO)
    patch, scenario = PATCHED[name]

    patched = scenario(site(tmp_path, {patch.switch: False}), monkeypatch)

    lines = off_lines(caplog, patch)
    assert not patched
    assert len(lines) == 1 and f"{SWITCHES_KEY}.{patch.switch} is false" in lines[0]


def test_an_older_flare_turns_a_patch_off_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nvflare, "__version__", "2.8.3")

    assert not dropout_run(site(tmp_path))


def test_a_drop_out_record_flare_never_saw_is_not_removed_by_a_patch_that_is_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = site(tmp_path)
    monkeypatch.setattr(nvflare, "__version__", NEWER_FLARE)
    component, fl_ctx = dropout.DropOutOnAbruptExit(), context(workspace)
    rc_file = Path(workspace.get_run_dir("job-1")) / FLMetaKey.PROCESS_RC_FILE
    rc_file.parent.mkdir(parents=True)
    component.handle_event(EventType.START_RUN, fl_ctx)
    rc_file.write_text("3")  # FLARE's own code, written by the job process

    component.handle_event(EventType.END_RUN, fl_ctx)

    assert rc_file.read_text() == "3"


# ---- the site switches ------------------------------------------------------------------------------------------


def test_every_patch_in_the_package_has_its_own_switch_and_a_flare_range() -> None:
    modules = [
        importlib.import_module(f"{internals.__name__}.{m.name}") for m in pkgutil.iter_modules(internals.__path__)
    ]
    patches = [m.PATCH for m in modules if isinstance(getattr(m, "PATCH", None), FlarePatch)]

    assert sorted(p.switch for p in patches) == sorted(SWITCHES)
    assert all(p.written_for == WRITTEN_FOR for p in patches)


def test_the_written_for_range_covers_the_installed_flare() -> None:
    assert all(p.written_for_this_flare() for p, _ in PATCHED.values()), nvflare.__version__


def test_a_site_without_a_site_file_has_every_patch_on() -> None:
    assert site_switches(None) == dict.fromkeys(SWITCHES, True)


@pytest.mark.parametrize(
    ("switches", "path", "message"),
    [
        ({"rejoin": False}, f"{SWITCHES_KEY}.rejoin", "unknown FLARE patch 'rejoin'"),
        ({"end_stranded_jobs": "no"}, f"{SWITCHES_KEY}.end_stranded_jobs", "must be true or false, got 'no'"),
        (["end_stranded_jobs"], SWITCHES_KEY, "must be an object of switches"),
    ],
    ids=["unknown-switch", "not-a-bool", "not-an-object"],
)
def test_a_bad_switch_is_one_line_naming_the_site_file_and_the_key(
    switches: Any, path: str, message: str, tmp_path: Path
) -> None:
    site(tmp_path, switches)
    site_file = str(tmp_path / "local" / SITE_FILE_NAME)

    with pytest.raises(ConfigError) as raised:
        site_switches(site_file)

    assert raised.value.file == site_file and raised.value.path == path and message in str(raised.value)


def test_a_site_file_with_a_bad_switch_turns_the_patch_off_with_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    workspace = site(tmp_path, {dropout.PATCH.switch: "off"})

    patched = dropout_run(workspace)

    lines = off_lines(caplog, dropout.PATCH)
    assert not patched and len(lines) == 1 and "the site file is not usable" in lines[0]


def test_the_site_file_named_by_the_environment_switches_patches_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({SWITCHES_KEY: {dropout.PATCH.switch: False}}))
    monkeypatch.setenv(SITE_CONFIG_ENV, str(elsewhere))

    assert not dropout_run(site(tmp_path / "workspace"))


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("clara_fl.fl.site.dropout.DropOutOnAbruptExit", dropout.DropOutOnAbruptExit),
        ("clara_fl.fl.site.abort.ExitPromptlyOnAbort", abort.ExitPromptlyOnAbort),
        ("clara_fl.fl.site.rejoin.RejoiningJobLauncher", rejoin.RejoiningJobLauncher),
        ("clara_fl.fl.server.stranded_jobs.EndStrandedJobs", stranded_jobs.EndStrandedJobs),
    ],
)
def test_the_paths_job_configs_and_site_kits_name_still_build_the_gated_components(old: str, new: type) -> None:
    module, _, name = old.rpartition(".")

    assert getattr(importlib.import_module(module), name) is new


def test_the_workflows_of_the_job_templates_are_gated_by_the_task_check_period_patch() -> None:
    from clara_fl.fl.server.controllers import CrossSiteEval, CrossSiteModelEval, FedAvg, ScatterAndGather

    workflows = (ScatterAndGather, CrossSiteModelEval, FedAvg, CrossSiteEval)
    assert all(issubclass(w, task_check_period.PollsAtItsTaskCheckPeriod) for w in workflows)


def test_a_process_whose_context_names_no_workspace_has_every_patch_on() -> None:
    fl_ctx = FLContext()  # no engine, no workspace: no site file to read

    assert dropout.PATCH.why_off(fl_ctx) is None
