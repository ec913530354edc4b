"""A site whose data or config is broken: its reason reaches the server in one line, and the cross-site table
marks its cells as failed instead of leaving them out."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from clara_fl.fl.jobs.results import CrossSiteFailures, format_cross_site_table, load_cross_site_failures

RESULTS = {
    "site-1": {"SRV_FL_global_model.pt": {"val_mean_dice": 0.5}, "site-1": {"val_mean_dice": 0.25}},
    "site-2": {"SRV_FL_global_model.pt": {"val_mean_dice": 0.75}, "site-1": {"val_mean_dice": 0.125}},
}
NO_DATALIST = "cannot build this site's trainer: dataset_site-3.json: no such file"


def server_ctx(run_dir: Path, site: str):
    """An FLContext as the server runner gives a component: engine, job id and the submitting site's peer context."""
    from nvflare.apis.fl_constant import ReservedKey
    from nvflare.apis.fl_context import FLContext

    workspace = SimpleNamespace(get_run_dir=lambda job_id: str(run_dir / job_id))
    engine = SimpleNamespace(get_workspace=lambda: workspace, fire_event=lambda *args, **kwargs: None)
    peer = FLContext()
    peer.set_prop(ReservedKey.IDENTITY_NAME, site, private=False, sticky=False)
    ctx = FLContext()
    ctx.set_prop(ReservedKey.ENGINE, engine, private=True, sticky=False)
    ctx.set_prop(ReservedKey.RUN_NUM, "job", private=True, sticky=False)
    ctx.set_peer_context(peer)
    return ctx


def failed_reply(message: object):
    from nvflare.apis.fl_constant import ReturnCode
    from nvflare.apis.shareable import ReservedHeaderKey, make_reply

    return make_reply(ReturnCode.EXECUTION_EXCEPTION, headers={ReservedHeaderKey.ERROR: message})


def cannot_build(fl_site, tmp_path: Path, caplog: pytest.LogCaptureFixture, **site_options: object):
    """The error reply of a site whose datalist lies outside its data folders, what the site logged, and the log
    events its components fired (what FLARE's InfoCollector keeps for the admin command ``show_errors``)."""
    from nvflare.apis.fl_constant import FLContextKey, ReservedKey
    from nvflare.apis.shareable import Shareable
    from nvflare.apis.signal import Signal

    from clara_fl.fl.site.learner import ClaraLearner
    from tests.conftest import site_ctx

    app, workspace = fl_site
    site_file = workspace / "local" / "clara_fl_site.json"
    site_file.write_text(json.dumps({**json.loads(site_file.read_text()), **site_options}))
    missing = tmp_path / "ZZ-Hospital-Radiology-Archive" / "dataset.json"
    fired: list[str] = []

    def ctx():
        context = site_ctx(app, workspace)
        engine = SimpleNamespace(
            get_workspace=context.get_engine().get_workspace,
            fire_event=lambda event, fl_ctx: fired.append(repr(fl_ctx.get_prop(FLContextKey.EVENT_DATA))),
        )
        context.set_prop(ReservedKey.ENGINE, engine, private=True, sticky=False)
        return context

    learner = ClaraLearner(overrides={"DATASET_JSON": str(missing)})
    with caplog.at_level(logging.ERROR):
        learner.initialize({}, ctx())
        reply = learner.train(Shareable(), ctx(), Signal())
    return reply, str(missing), caplog.text, fired


def test_a_learner_that_cannot_build_sends_the_kind_and_config_item_but_keeps_the_path(
    fl_site, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from nvflare.apis.fl_constant import ReturnCode
    from nvflare.apis.shareable import ReservedHeaderKey

    reply, missing, site_log, _ = cannot_build(fl_site, tmp_path, caplog)

    assert reply.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
    assert reply.get_header(ReservedHeaderKey.ERROR) == (
        "cannot build this site's trainer: ConfigError at config/config_train.json: train.dataset.data_list_file_path"
    )
    assert missing in site_log


def test_a_site_that_opts_in_sends_the_whole_line(fl_site, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from nvflare.apis.shareable import ReservedHeaderKey

    reply, missing, _, _ = cannot_build(fl_site, tmp_path, caplog, send_error_details=True)

    reason = reply.get_header(ReservedHeaderKey.ERROR)
    assert reason.startswith("cannot build this site's trainer: ConfigError at ") and missing in reason
    assert "\n" not in reason


def test_the_whole_line_stays_out_of_the_errors_flare_collects_for_show_errors(
    fl_site, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """FLARE keeps every error and warning a job's components log with ``fire_event`` (the default of ``log_error``
    and ``log_warning``) in the job's InfoCollector, and any admin with the ``view`` right (every role, by FLARE's
    default authorization.json) reads them from the site with ``show_errors JOB_ID client``."""
    _, missing, site_log, fired = cannot_build(fl_site, tmp_path, caplog)

    assert missing in site_log
    assert [event for event in fired if "ZZ-Hospital-Radiology-Archive" in event] == []


def test_the_server_logs_one_line_naming_the_site_the_task_and_its_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from nvflare.apis.event_type import EventType
    from nvflare.apis.fl_constant import FLContextKey

    from clara_fl.fl.server.site_failures import SiteFailureReporter

    reporter, ctx = SiteFailureReporter(), server_ctx(tmp_path, "site-3")
    ctx.set_prop(FLContextKey.TASK_NAME, "train", private=True, sticky=False)
    ctx.set_prop(FLContextKey.TASK_RESULT, failed_reply(NO_DATALIST), private=True, sticky=False)

    with caplog.at_level(logging.ERROR):
        reporter.handle_event(EventType.BEFORE_PROCESS_SUBMISSION, ctx)

    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert f"site-3 failed task 'train': EXECUTION_EXCEPTION: {NO_DATALIST}" in record.getMessage()


@pytest.mark.parametrize(
    "sent, kept",
    [
        (
            "local training failed:\n  Traceback ...\x1b[31m",
            "EXECUTION_EXCEPTION: local training failed: Traceback ... [31m",
        ),
        ({"text": "a dict"}, "EXECUTION_EXCEPTION"),
        ("x" * 5000, "EXECUTION_EXCEPTION: " + "x" * 997 + "..."),
    ],
    ids=["several lines", "not text", "too long"],
)
def test_the_server_takes_a_sites_reason_only_as_one_line_of_text(sent: object, kept: str) -> None:
    from clara_fl.fl.server.site_failures import failure_reason

    assert failure_reason(failed_reply(sent)) == kept


def test_the_server_records_failed_validations_and_submissions_beside_the_results(tmp_path: Path) -> None:
    from nvflare.app_common.app_constant import AppConstants
    from nvflare.app_common.app_event_type import AppEventType

    from clara_fl.fl.server.site_failures import SiteFailureReporter

    reporter = SiteFailureReporter()
    submit = server_ctx(tmp_path, "site-3")
    submit.set_prop(AppConstants.RECEIVED_MODEL, failed_reply(NO_DATALIST), private=True, sticky=False)
    submit.set_prop(AppConstants.RECEIVED_MODEL_OWNER, "site-3", private=True, sticky=False)
    validate = server_ctx(tmp_path, "site-3")
    validate.set_prop(AppConstants.VALIDATION_RESULT, failed_reply(NO_DATALIST), private=True, sticky=False)
    validate.set_prop(AppConstants.DATA_CLIENT, "site-3", private=True, sticky=False)
    validate.set_prop(AppConstants.MODEL_OWNER, "SRV_FL_global_model.pt", private=True, sticky=False)

    reporter.handle_event(AppEventType.RECEIVE_BEST_MODEL, submit)
    reporter.handle_event(AppEventType.VALIDATION_RESULT_RECEIVED, validate)

    failures = load_cross_site_failures(tmp_path / "job" / "cross_site_val" / "cross_val_results.json")
    reason = f"EXECUTION_EXCEPTION: {NO_DATALIST}"
    assert failures.validations == {"site-3": {"SRV_FL_global_model.pt": reason}}
    assert failures.models == {"site-3": reason}


def test_failed_cross_site_cells_are_recorded_from_the_results_the_model_controller_fires_no_event_for(
    tmp_path: Path,
) -> None:
    from nvflare.apis.event_type import EventType
    from nvflare.apis.fl_constant import FLContextKey
    from nvflare.app_common.app_constant import AppConstants

    from clara_fl.fl.server.site_failures import SiteFailureReporter

    reporter = SiteFailureReporter()
    submit = server_ctx(tmp_path, "site-3")
    submit.set_prop(FLContextKey.TASK_NAME, "submit_model", private=True, sticky=False)
    submit.set_prop(FLContextKey.TASK_RESULT, failed_reply(NO_DATALIST), private=True, sticky=False)
    validate = server_ctx(tmp_path, "site-3")
    validation_reply = failed_reply(NO_DATALIST)
    validation_reply.set_header(AppConstants.MODEL_OWNER, "site-1")  # as the Validator's failure reply names it
    validate.set_prop(FLContextKey.TASK_NAME, "validate", private=True, sticky=False)
    validate.set_prop(FLContextKey.TASK_RESULT, validation_reply, private=True, sticky=False)

    reporter.handle_event(EventType.BEFORE_PROCESS_SUBMISSION, submit)
    reporter.handle_event(EventType.BEFORE_PROCESS_SUBMISSION, validate)

    failures = load_cross_site_failures(tmp_path / "job" / "cross_site_val" / "cross_val_results.json")
    reason = f"EXECUTION_EXCEPTION: {NO_DATALIST}"
    assert failures.models == {"site-3": reason}
    assert failures.validations == {"site-3": {"site-1": reason}}


def test_the_cross_site_table_marks_a_failed_sites_row_and_column_as_failed() -> None:
    failures = CrossSiteFailures(
        validations={"site-3": {"SRV_FL_global_model.pt": "EXECUTION_EXCEPTION: no datalist"}},
        models={"site-3": "EXECUTION_EXCEPTION: no datalist"},
    )

    table = format_cross_site_table(RESULTS, "val_mean_dice", failures=failures).splitlines()

    header = table[1].split()
    assert header[-3:] == ["SRV_FL_global_model", "site-1", "site-3"]
    rows = {line.split()[0]: line.split()[1:] for line in table[3:6]}
    assert rows["site-1"] == ["0.5000", "0.2500", "failed"]
    assert rows["site-3"] == ["failed", "-", "failed"], "site-3 never validated site-1's model: no result, no failure"
    assert table[-1] == "failed: site-3: EXECUTION_EXCEPTION: no datalist"


def test_without_a_failure_record_a_missing_cell_stays_a_dash() -> None:
    results = {"site-1": RESULTS["site-1"], "site-2": {"SRV_FL_global_model.pt": {"val_mean_dice": 0.75}}}

    table = format_cross_site_table(results, "val_mean_dice").splitlines()

    assert table[-1].split() == ["site-2", "0.7500", "-"]


def test_the_report_matrix_has_a_failed_cell_with_its_reason(tmp_path: Path) -> None:
    from clara_fl.report.readers import read_cross_site_matrix

    folder = tmp_path / "cross_site_val"
    folder.mkdir()
    (folder / "cross_val_results.json").write_text(json.dumps(RESULTS))
    CrossSiteFailures(models={"site-3": "EXECUTION_EXCEPTION: no datalist"}).write(folder / "cross_val_failures.json")

    matrix = read_cross_site_matrix(folder / "cross_val_results.json")

    assert matrix.owners == ["SRV_FL_global_model.pt", "site-1", "site-3"]
    assert matrix.cells[("site-2", "site-3")] is None
    assert matrix.reasons[("site-2", "site-3")] == "EXECUTION_EXCEPTION: no datalist"
    assert ("site-2", "site-1") not in matrix.reasons


def test_the_report_shows_a_failed_sites_cells_as_failed_with_the_reason(tmp_path: Path) -> None:
    from clara_fl.report.build import write_report

    folder = tmp_path / "0a1b2c" / "workspace" / "cross_site_val"
    folder.mkdir(parents=True)
    (folder / "cross_val_results.json").write_text(json.dumps(RESULTS))
    CrossSiteFailures(models={"site-3": "EXECUTION_EXCEPTION: no datalist"}).write(folder / "cross_val_failures.json")

    written = write_report(tmp_path / "0a1b2c", tmp_path / "out")

    cross_site = written.html.read_text().split('id="cross-site"')[1].split("</section>")[0]
    assert "<th>site-3</th>" in cross_site
    assert cross_site.count('<td class="failed" title="EXECUTION_EXCEPTION: no datalist">failed</td>') == 2
