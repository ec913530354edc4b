"""Both server templates give the same: the sites validate the final global model, the best global model is the
one with the best key metric (the final one included), the round log names each round's contributors, and a site
that does not return in a round is named in one line.

The fast tests drive each template's rounds workflow (``clara_fedavg_cse_mc``, the default: the FedAvg ModelController;
``clara_fedavg_cse``: ScatterAndGather with its aggregator) with the template's own server components (persistor, model
selector), built from its config_fed_server.conf, and sites that answer each task at once as their LearnerExecutor
would. The e2e tests run each template for real in FLARE's simulator.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from nvflare.apis.client import Client
from nvflare.apis.controller_spec import ClientTask, Task
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants

from clara_fl.recipes.job_folder import _read_conf

TEMPLATES = Path(__file__).resolve().parents[1] / "job_templates"
BOTH = ["clara_fedavg_cse", "clara_fedavg_cse_mc"]
KEY = "val_mean_dice"
# the components the rounds need; the others serve cross-site evaluation and TensorBoard
ROUND_COMPONENTS = ("persistor", "shareable_generator", "aggregator", "model_selector")


class OneWeight(torch.nn.Module):
    """A global model of one number, ``w``: the sites add to it, and their key metric is a function of it."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))


@dataclass
class Site:
    """A site as its LearnerExecutor answers: a train result adds ``diff`` to ``w`` after ``steps`` steps and carries
    the key metric of the model it received (``initial_metrics``); a ``validate_global_model`` result carries it."""

    name: str
    metric: Callable[[float], float]
    diff: float = 1.0
    steps: int = 1
    skips_rounds: set[int] = field(default_factory=set)
    fails_rounds: set[int] = field(default_factory=set)
    received: list[tuple[str, float]] = field(default_factory=list)

    def answer(self, task: str, data: Shareable) -> Shareable | None:
        current_round = data.get_header(AppConstants.CURRENT_ROUND)
        w = float(np.asarray(from_shareable(data).data["w"]).reshape(-1)[0])
        self.received.append((task, w))
        if task == "train" and current_round in self.skips_rounds:
            return None
        if task == "train" and current_round in self.fails_rounds:  # as the LearnerExecutor replies to an exception
            failed = make_reply(ReturnCode.EXECUTION_EXCEPTION)
            failed.set_header(AppConstants.CURRENT_ROUND, current_round)
            failed.set_cookie_jar(data.get_cookie_jar())
            return failed
        if task == "train":
            meta = {MetaKey.NUM_STEPS_CURRENT_ROUND: self.steps, MetaKey.INITIAL_METRICS: {KEY: self.metric(w)}}
            dxo = DXO(DataKind.WEIGHT_DIFF, {"w": np.array([self.diff], dtype=np.float32)}, meta=meta)
        else:
            dxo = DXO(DataKind.METRICS, {KEY: self.metric(w)})
        result = dxo.to_shareable()
        result.set_header(AppConstants.CURRENT_ROUND, current_round)
        result.set_cookie_jar(data.get_cookie_jar())  # FLARE's client runner returns the task's cookies
        return result


class InstantSites:
    """The workflow's communicator: every task reaches its sites at once and their answers come back at once."""

    def __init__(self, sites: dict[str, Site]) -> None:
        self.sites = sites
        self.controller: Any = None
        self.task_check_period = 0.01

    def broadcast_and_wait(self, task: Task, fl_ctx: FLContext, targets: Any = None, *args: Any, **kwargs: Any) -> None:
        self.broadcast(task, fl_ctx, targets)

    def broadcast(self, task: Task, fl_ctx: FLContext, targets: Any = None, *args: Any, **kwargs: Any) -> None:
        names = [t.name if isinstance(t, Client) else t for t in targets] if targets else list(self.sites)
        for name in names:
            client_task = ClientTask(Client(name, None), task)
            if task.before_task_sent_cb is not None:
                task.before_task_sent_cb(client_task=client_task, fl_ctx=fl_ctx)
            result = self.sites[name].answer(task.name, task.data)
            if result is None:
                continue
            result.set_peer_props({ReservedKey.IDENTITY_NAME: name})  # as FLARE's messaging stamps it
            peer = FLContext()
            peer.put(ReservedKey.IDENTITY_NAME, name, private=False, sticky=False)
            peer.set_prop(FLContextKey.SHAREABLE, result, private=False, sticky=False)
            fl_ctx.set_peer_context(peer)
            fl_ctx.set_prop(FLContextKey.TASK_NAME, task.name, private=True, sticky=False)
            client_task.result = result
            if task.result_received_cb is not None:
                task.result_received_cb(client_task=client_task, fl_ctx=fl_ctx)

    def get_num_standing_tasks(self) -> int:
        return 0


class Server:
    """A template's rounds workflow with its round components, on one FLContext, with events to every component."""

    def __init__(
        self,
        template: str,
        app_dir: Path,
        sites: Iterable[Site],
        component_args: dict[str, dict[str, Any]] | None = None,
        **workflow_args: Any,
    ) -> None:
        config = _read_conf(TEMPLATES / template / "config_fed_server.conf")
        rounds = config["workflows"][0]
        self.sites = {site.name: site for site in sites}
        extra = component_args or {}
        self.components = {
            c["id"]: _build(c, extra.get(c["id"], {})) for c in config["components"] if c["id"] in ROUND_COMPONENTS
        }
        self.components["persistor"].model = OneWeight()  # instead of the MMAR's network
        self.workflow = _build(rounds, {**workflow_args, "task_check_period": 0.01})
        self.workflow.communicator = InstantSites(self.sites)
        self.app_dir = app_dir
        self.fl_ctx = FLContext()
        workspace = SimpleNamespace(
            get_app_dir=lambda job_id: str(app_dir),
            get_run_dir=lambda job_id: str(app_dir.parent),
            get_root_dir=lambda: str(app_dir.parent),
        )
        engine = SimpleNamespace(
            get_clients=lambda: [Client(name, None) for name in self.sites],
            get_component=self.components.get,
            fire_event=self.fire_event,
            get_workspace=lambda: workspace,
            new_context=lambda: self.fl_ctx,
            persist_components=lambda fl_ctx, completed: None,
        )
        self.fl_ctx.set_prop(ReservedKey.ENGINE, engine, private=True, sticky=False)
        self.fl_ctx.set_prop(FLContextKey.APP_ROOT, str(app_dir), private=True, sticky=True)
        self.fl_ctx.set_prop(FLContextKey.CURRENT_JOB_ID, "job-1", private=False, sticky=True)

    def fire_event(self, event_type: str, fl_ctx: FLContext) -> None:
        for component in [*self.components.values(), self.workflow]:
            component.handle_event(event_type, fl_ctx)

    def run(self) -> None:
        self.fire_event(EventType.START_RUN, self.fl_ctx)
        self.workflow.initialize(self.fl_ctx)  # as FLARE's server runner: it starts the controller
        self.workflow.control_flow(Signal(), self.fl_ctx)
        self.workflow.stop_controller(self.fl_ctx)

    def saved_w(self, file_name: str) -> float:
        saved = torch.load(self.app_dir / file_name, weights_only=True)
        return float(saved["model"]["w"].reshape(-1)[0])


def _build(entry: dict[str, Any], extra: dict[str, Any]) -> Any:
    module, _, name = entry["path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**{**entry.get("args", {}), **extra})


def run_server(tmp_path: Path, template: str, sites: list[Site], num_rounds: int = 3, min_clients: int = 2) -> Server:
    # the rounds and the sites a round needs, as the job model sets them in either template
    rounds = {"num_rounds": num_rounds, "min_clients": min_clients, "wait_time_after_min_received": 0}
    server = Server(template, tmp_path / "app_server", sites, **rounds)
    (tmp_path / "app_server").mkdir()
    server.run()
    return server


def by_table(table: dict[float, float]) -> Callable[[float], float]:
    return lambda w: table[round(w, 3)]


@pytest.mark.parametrize("template", BOTH)
def test_the_sites_validate_the_final_global_model_after_the_last_round(tmp_path: Path, template: str) -> None:
    sites = [Site(name, by_table({0: 0.1, 1: 0.2, 2: 0.3, 3: 0.4})) for name in ("site-1", "site-2")]

    run_server(tmp_path, template, sites, num_rounds=3)

    for site in sites:
        assert site.received[-1] == ("validate_global_model", 3.0)


@pytest.mark.parametrize("template", BOTH)
def test_the_final_global_model_is_the_best_when_it_validates_best(tmp_path: Path, template: str) -> None:
    sites = [Site(name, by_table({0: 0.1, 1: 0.5, 2: 0.3, 3: 0.9})) for name in ("site-1", "site-2")]

    server = run_server(tmp_path, template, sites, num_rounds=3)

    assert server.saved_w("best_FL_global_model.pt") == 3.0


@pytest.mark.parametrize("template", BOTH)
def test_the_best_global_model_is_the_round_model_with_the_best_key_metric(tmp_path: Path, template: str) -> None:
    sites = [Site(name, by_table({0: 0.1, 1: 0.8, 2: 0.3, 3: 0.4})) for name in ("site-1", "site-2")]

    server = run_server(tmp_path, template, sites, num_rounds=3)

    assert server.saved_w("best_FL_global_model.pt") == 1.0
    assert server.saved_w("FL_global_model.pt") == 3.0


@pytest.mark.parametrize("template", BOTH)
def test_the_global_model_weighs_each_sites_update_by_the_steps_it_ran(tmp_path: Path, template: str) -> None:
    one_step = Site("site-1", by_table({0: 0.1, 3.25: 0.2}), diff=1.0, steps=1)
    three_steps = Site("site-2", by_table({0: 0.1, 3.25: 0.2}), diff=4.0, steps=3)

    server = run_server(tmp_path, template, [one_step, three_steps], num_rounds=1)

    assert server.saved_w("FL_global_model.pt") == pytest.approx((1.0 * 1 + 4.0 * 3) / 4)


@pytest.mark.parametrize("template", BOTH)
def test_the_round_log_names_the_sites_each_round_aggregated(
    tmp_path: Path, template: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    sites = [Site(name, by_table({0: 0.1, 1: 0.2, 2: 0.3})) for name in ("site-2", "site-1")]

    run_server(tmp_path, template, sites, num_rounds=2)

    for number in (0, 1):
        assert f"round {number} aggregated 2 sites: site-1, site-2" in caplog.text


@pytest.mark.parametrize("template", BOTH)
def test_a_site_that_does_not_return_in_a_round_is_named_in_one_line(
    tmp_path: Path, template: str, caplog: pytest.LogCaptureFixture
) -> None:
    metric = by_table({0: 0.1, 1: 0.2, 2: 0.3, 3: 0.4})
    sites = [Site("site-1", metric), Site("site-2", metric), Site("site-3", metric, skips_rounds={1})]

    run_server(tmp_path, template, sites, num_rounds=2, min_clients=2)

    lines = [r.getMessage() for r in caplog.records if "site-3" in r.getMessage() and "round 1" in r.getMessage()]
    assert len(lines) == 1 and "round 1 aggregated 2 sites without site-3" in lines[0], lines


def saved_run(workspace: Path, job_id: str, w: float, best_w: float, best_metric: float) -> None:
    """Job ``job_id``'s app folder in the server's workspace as a killed server left it after round 1 of 4."""
    from clara_fl.fl.server.run_state import ServerRunState, write_run_state

    app = workspace / job_id / "app_server"
    app.mkdir(parents=True)
    torch.save({"model": {"w": torch.tensor([w])}}, app / "FL_global_model.pt")
    torch.save({"model": {"w": torch.tensor([best_w])}}, app / "best_FL_global_model.pt")
    state = ServerRunState(job_id, 2, 4, "FL_global_model.pt", "best_FL_global_model.pt", best_metric, 1)
    write_run_state(app, state)


@pytest.mark.parametrize("template", BOTH)
def test_a_continuation_job_runs_the_rounds_left_from_the_saved_model_and_keeps_the_saved_best(
    tmp_path: Path, template: str
) -> None:
    from clara_fl.fl.server.run_state import read_run_state

    saved_run(tmp_path, "a1b2", w=5.0, best_w=9.0, best_metric=0.9)
    sites = [Site(name, by_table({5: 0.1, 6: 0.2, 7: 0.3})) for name in ("site-1", "site-2")]
    app = tmp_path / "c3d4" / "app_server"  # the continuation job's, beside the stranded one's
    app.mkdir(parents=True)
    # as `clara-fl job resume` writes the continuation of a 4-round job after 2 rounds
    continued = {"persistor": {"resume_from_job": "a1b2"}, "model_selector": {"saved_best_val_metric": 0.9}}
    rounds = {"start_round": 2, "num_rounds": 2, "min_clients": 2, "wait_time_after_min_received": 0}
    server = Server(template, app, sites, component_args=continued, **rounds)

    server.run()

    assert [w for task, w in sites[0].received if task == "train"] == [5.0, 6.0]
    state = read_run_state(app)
    assert (state.rounds_done, state.total_rounds) == (4, 4), "the whole job's rounds, not the rounds left"
    assert (state.best_metric, state.best_round) == (0.9, 1)
    assert server.saved_w("best_FL_global_model.pt") == 9.0 and server.saved_w("FL_global_model.pt") == 7.0


@pytest.mark.parametrize("template", BOTH)
def test_a_site_whose_round_fails_is_named_as_missing_from_the_round_in_one_line(
    tmp_path: Path, template: str, caplog: pytest.LogCaptureFixture
) -> None:
    metric = by_table({0: 0.1, 1: 0.2, 2: 0.3, 3: 0.4})
    sites = [Site("site-1", metric), Site("site-2", metric), Site("site-3", metric, fails_rounds={1})]

    run_server(tmp_path, template, sites, num_rounds=2, min_clients=2)

    round_lines = [r.getMessage() for r in caplog.records if "round 1 aggregated" in r.getMessage()]
    assert len(round_lines) == 1 and "round 1 aggregated 2 sites without site-3" in round_lines[0], round_lines


# --- end to end: each template in FLARE's simulator --------------------------------------------------------------


@pytest.fixture(scope="module")
def spleen_sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site file for two simulated spleen sites of synthetic data (as test_fl_simulation's)."""
    from clara_fl.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path_factory.mktemp("fl_data"), cases=12, sites=2, shape=(32, 32, 32))
    path = tmp_path_factory.mktemp("sites") / "clara_fl_site.json"
    environment = {"DATA_ROOT": str(data.root), "DATASET_JSON": str(data.root / "dataset_{SITE_NAME}.json")}
    path.write_text(json.dumps({"environment": environment}))
    return path


def assert_rounds_selection_and_cross_site(workspace: Path, results: dict[str, Any], rounds: int) -> None:
    """What both templates give a finished 2-site job: every round's contributors in the server log, the final
    model validated, the best model the best of the candidates, both models saved and validated at every site."""
    from clara_fl.runtime import events as ev

    server = workspace / "server"
    app = next(server.glob("**/app_server"))
    log = (server / "log.txt").read_text()
    assert "the sites validate the final global model" in log
    for number in range(rounds):
        assert f"round {number} aggregated 2 sites: site-1, site-2" in log
    assert (app / "FL_global_model.pt").is_file() and (app / "best_FL_global_model.pt").is_file()
    # the candidates: each round's model as the sites validated it at the next round's start, and the final model
    by_round: dict[int, list[float]] = {}
    for e in ev.read_events(app / ev.SERVER_EVENTS_FILE):
        if e.kind == ev.SITE_METRIC and e.round:  # round 0's is the initial model's: never a candidate
            by_round.setdefault(e.round, []).append(e.fields[KEY])
    candidates = [sum(values) / len(values) for values in by_round.values()] + [_final_dice(log)]
    assert _best_dice(log) == pytest.approx(max(candidates), abs=1e-4)
    assert set(results) == {"site-1", "site-2"}
    for site in ("site-1", "site-2"):
        assert set(results[site]) == {"SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt", "site-1", "site-2"}
        assert all(KEY in metrics for metrics in results[site].values())


@pytest.mark.e2e
def test_a_spleen_job_on_the_default_template_validates_selects_and_reports_its_rounds(
    fedavg_simulation: SimpleNamespace,
) -> None:
    from clara_fl.fl.jobs.results import find_cross_site_results, load_cross_site_results

    found = find_cross_site_results(fedavg_simulation.workspace)
    assert found is not None
    results = load_cross_site_results(found)

    assert_rounds_selection_and_cross_site(fedavg_simulation.workspace, results, rounds=3)


@pytest.mark.e2e
def test_a_spleen_job_on_the_scatter_and_gather_template_does_the_same(tmp_path: Path, spleen_sites: Path) -> None:
    from tests.test_fl_simulation import simulate

    _, workspace, results = simulate(tmp_path, spleen_sites, "clara_fedavg_cse", rounds=2, local_epochs=1)

    assert_rounds_selection_and_cross_site(workspace, results, rounds=2)


def _best_dice(log: str) -> float:
    """The selector's last new best (FLARE's IntimeModelSelector logs each one)."""
    return float(re.findall(r"new best validation metric at round \d+: ([0-9.]+)", log)[-1])


def _final_dice(log: str) -> float:
    """The final global model's key metric, as the selector logs it."""
    return float(re.findall(rf"final global model: {KEY} ([0-9.]+)", log)[-1])
