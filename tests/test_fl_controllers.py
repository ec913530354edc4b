"""The server workflows the job templates use: FLARE's, polling at the period the job gives them."""

from __future__ import annotations

from pathlib import Path

import pytest
from nvflare.apis.impl.wf_comm_server import WFCommServer

from clara_fl.fl.server.controllers import CrossSiteEval, CrossSiteModelEval, FedAvg, ScatterAndGather
from clara_fl.recipes.job_folder import _read_conf

TEMPLATES = Path(__file__).resolve().parents[1] / "job_templates"


@pytest.mark.parametrize("workflow", [ScatterAndGather, CrossSiteModelEval, FedAvg, CrossSiteEval])
def test_the_server_polls_its_tasks_at_the_configured_task_check_period(workflow: type) -> None:
    communicator = WFCommServer()

    workflow(task_check_period=0.05).set_communicator(communicator)

    assert communicator._task_check_period == 0.05  # FLARE 2.9 alone leaves it at 0.2 s


@pytest.mark.parametrize("template", ["clara_fedavg_cse", "clara_fedavg_cse_mc"])
def test_every_template_workflow_polls_at_a_short_period(template: str) -> None:
    server = _read_conf(TEMPLATES / template / "config_fed_server.conf")

    for workflow in server["workflows"]:
        assert workflow["path"].startswith("clara_fl.fl.server.controllers."), workflow["id"]
        assert workflow["args"]["task_check_period"] <= 0.1, workflow["id"]


def _sag_with_sites(*sites: str) -> ScatterAndGather:
    from types import SimpleNamespace

    workflow = ScatterAndGather(min_clients=2, num_rounds=4)
    workflow._engine = SimpleNamespace(get_clients=lambda: [SimpleNamespace(name=s) for s in sites])
    workflow._current_round = 3
    return workflow


def _round_with_results_from(workflow: ScatterAndGather, *sites: str) -> None:
    from nvflare.apis.fl_constant import ReservedKey
    from nvflare.apis.fl_context import FLContext
    from nvflare.app_common.app_event_type import AppEventType

    workflow.handle_event(AppEventType.ROUND_STARTED, FLContext())
    for site in sites:
        fl_ctx, peer = FLContext(), FLContext()
        peer.put(ReservedKey.IDENTITY_NAME, site, private=False, sticky=False)
        fl_ctx.set_peer_context(peer)
        workflow.handle_event(AppEventType.BEFORE_CONTRIBUTION_ACCEPT, fl_ctx)
    workflow.handle_event(AppEventType.ROUND_DONE, FLContext())


def test_the_server_names_the_sites_a_round_went_without(caplog: pytest.LogCaptureFixture) -> None:
    workflow = _sag_with_sites("site-1", "site-2", "site-3")

    _round_with_results_from(workflow, "site-1", "site-2")

    assert "round 3 aggregated 2 sites without site-3" in caplog.text


def test_the_server_says_when_a_round_aggregated_every_site(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.INFO)
    workflow = _sag_with_sites("site-1", "site-2", "site-3")

    _round_with_results_from(workflow, "site-3", "site-1", "site-2")

    assert "round 3 aggregated 3 sites: site-1, site-2, site-3" in caplog.text and "without" not in caplog.text


def test_the_server_says_once_which_site_dropped_out_of_the_job_and_why(caplog: pytest.LogCaptureFixture) -> None:
    from nvflare.apis.event_type import EventType
    from nvflare.apis.fl_constant import FLContextKey
    from nvflare.apis.fl_context import FLContext

    workflow = _sag_with_sites("site-1", "site-2", "site-3")
    fl_ctx = FLContext()
    fl_ctx.set_prop(FLContextKey.DISCONNECTED_CLIENT_NAME, "site-3", private=True, sticky=False)

    for _ in range(2):  # every workflow's communicator fires it
        workflow.handle_event(EventType.CLIENT_DISCONNECTED, fl_ctx)

    dropped = [r.getMessage() for r in caplog.records if "site-3 dropped out of the job" in r.getMessage()]
    assert len(dropped) == 1 and "its job process is gone" in dropped[0] and "at least 2" in dropped[0]


class _Persistor:
    """A persistor whose inventory lists the global and best models, of which the best one cannot be loaded."""

    def get_model_inventory(self, fl_ctx: object) -> dict[str, object]:
        return {"FL_global_model.pt": object(), "best_FL_global_model.pt": object()}

    def get_model(self, name: str, fl_ctx: object) -> object:
        if name == "best_FL_global_model.pt":
            raise RuntimeError("PytorchStreamReader failed reading zip archive")
        return object()


def test_cross_site_evaluation_leaves_out_a_server_model_that_fails_to_load(monkeypatch: pytest.MonkeyPatch) -> None:
    from nvflare.apis.fl_context import FLContext
    from nvflare.app_common.workflows.cross_site_eval import CrossSiteEval as FlareCrossSiteEval

    validated: list[list[str]] = []
    monkeypatch.setattr(FlareCrossSiteEval, "run", lambda self: validated.append(list(self._server_models)))
    workflow = CrossSiteEval(server_models=["FL_global_model.pt", "best_FL_global_model.pt"])
    workflow.persistor = _Persistor()
    workflow.fl_ctx = FLContext()

    workflow.run()

    assert validated == [["FL_global_model.pt"]]  # FLARE alone would send the global model again as the best one


def test_the_model_controller_saves_the_global_model_with_the_runs_rounds_in_the_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from nvflare.apis.fl_context import FLContext
    from nvflare.app_common.app_constant import AppConstants
    from nvflare.app_common.workflows.fedavg import FedAvg as FlareFedAvg

    seen: dict[str, object] = {}
    keys = (AppConstants.CURRENT_ROUND, AppConstants.NUM_ROUNDS, AppConstants.START_ROUND)
    monkeypatch.setattr(
        FlareFedAvg, "save_model", lambda self, model: seen.update({k: self.fl_ctx.get_prop(k) for k in keys})
    )
    workflow = FedAvg(num_rounds=4, start_round=2)
    workflow.current_round = 3
    workflow.fl_ctx = FLContext()  # as FLARE leaves it: the last task result's context, without the run's rounds

    workflow.save_model(None)

    assert seen == {AppConstants.CURRENT_ROUND: 3, AppConstants.NUM_ROUNDS: 4, AppConstants.START_ROUND: 2}
