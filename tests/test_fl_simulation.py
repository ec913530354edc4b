"""End to end in FLARE's simulator: a 2-site FedAvg of the spleen MMAR, then cross-site validation, on the default
job template (clara_fedavg_cse_mc: FLARE's FedAvg and CrossSiteEval ModelControllers).

These are the slow tests of the FL face (real simulator processes); the Learner's behaviours are
specified in test_fl_learner.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clara_fl.apps.simulate import run_simulator
from clara_fl.fl.jobs.results import find_cross_site_results, load_cross_site_results
from clara_fl.recipes.job_folder import create_job
from tests.conftest import SPLEEN_MMAR

pytestmark = pytest.mark.e2e

SITES = ["site-1", "site-2"]
# Small enough for 2 cores, large enough to learn: 32^3 volumes, 16^3 crops, lr 1e-3.
JOB_SETTINGS = {"roi_size": [16, 16, 16], "num_workers": 0, "num_interval_per_valid": 3, "learning_rate": 0.001}


@pytest.fixture(scope="module")
def fl_data(tmp_path_factory: pytest.TempPathFactory):
    from clara_fl.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("fl_data"), cases=12, sites=2, shape=(32, 32, 32))


@pytest.fixture(scope="module")
def site_file(fl_data, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One site file for all simulated sites: the job names no data, {SITE_NAME} picks each site's datalist."""
    path = tmp_path_factory.mktemp("sites") / "clara_fl_site.json"
    path.write_text(
        json.dumps(
            {
                "environment": {
                    "DATA_ROOT": str(fl_data.root),
                    "DATASET_JSON": str(fl_data.root / "dataset_{SITE_NAME}.json"),
                }
            }
        )
    )
    return path


def simulate(
    tmp: Path,
    site_file: Path,
    template: str | None = None,
    rounds: int = 3,
    threads: int = 2,
    local_epochs: int = 3,
    clients: int = 2,
    nproc_per_site: int | None = None,
    steps_aggregation: int = 0,
    min_clients: int = 2,
):
    job = create_job(
        SPLEEN_MMAR,
        tmp / "job",
        template,
        num_rounds=rounds,
        local_epochs=local_epochs,
        min_clients=min_clients,
        overrides=JOB_SETTINGS,
        nproc_per_site=nproc_per_site,
    )
    if steps_aggregation:
        client_config = job / "app" / "config" / "config_fed_client.json"
        client = json.loads(client_config.read_text())
        learner = next(c for c in client["components"] if c["id"] == "clara_learner")
        learner["args"]["steps_aggregation"] = steps_aggregation
        client_config.write_text(json.dumps(client, indent=2))
    workspace = tmp / "ws"
    with open(tmp / "simulator.log", "w") as log:
        code = run_simulator(str(job), str(workspace), clients, threads, str(site_file), stdout=log)
    assert code == 0, (tmp / "simulator.log").read_text()[-3000:]
    results = find_cross_site_results(workspace)
    assert results is not None
    return job, workspace, load_cross_site_results(results)


def untrained_dice(job: Path, site_file: Path, site: str) -> float:
    """val_mean_dice of the server's initial model (built exactly as ClaraModelPersistor builds it) at ``site``."""
    from clara_fl.config.mmar import load_config
    from clara_fl.fl.site.context import read_site_file
    from clara_fl.fl.site.weights import load_global_weights, network_weights
    from clara_fl.workflows.evaluate import EvaluateWorkflow
    from clara_fl.workflows.network import build_train_network

    app = str(job / "app")
    initial = network_weights(build_train_network(app, extra_environment={"SITE_NAME": "server"}))
    site_env = {**read_site_file(str(site_file))["environment"], "SITE_NAME": site}
    loaded = load_config(
        app,
        "config/config_cross_validation.json",
        extra_environment=site_env,
        overrides={"MMAR_EVAL_OUTPUT_PATH": str(job / "baseline" / site)},
    )
    workflow = EvaluateWorkflow.build(loaded)
    load_global_weights(workflow.network, initial)
    return workflow.run(progress=False)["val_mean_dice"]


def test_fedavg_global_model_beats_the_untrained_model_at_every_site(fedavg_simulation) -> None:
    # the session's 3-round 3-epoch FedAvg (conftest.py; the report and newcomer tests read it too)
    job, workspace, site_file = fedavg_simulation.job, fedavg_simulation.workspace, fedavg_simulation.site_file
    results_file = find_cross_site_results(workspace)
    assert results_file is not None
    results = load_cross_site_results(results_file)

    owners = {"SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt", *SITES}
    assert set(results) == set(SITES)
    for site in SITES:
        assert set(results[site]) == owners
        assert set(results[site]["SRV_FL_global_model.pt"]) == {"val_mean_dice", "val_acc"}
        baseline = untrained_dice(job, site_file, site)
        trained = results[site]["SRV_FL_global_model.pt"]["val_mean_dice"]
        assert trained > baseline + 0.15, f"{site}: global model {trained:.3f} vs untrained {baseline:.3f}"

    server = workspace / "server" / "simulate_job"
    assert (server / "app_server" / "FL_global_model.pt").is_file()
    assert (server / "app_server" / "best_FL_global_model.pt").is_file()
    for site in SITES:
        app = workspace / site / "simulate_job" / f"app_{site}"
        assert (app / "models" / "model.pt").is_file() and (app / "models" / "final_model.pt").is_file()
        assert list((app / "models").glob("events.out.tfevents.*"))
        assert (app / "eval" / "cross_site_val" / "SRV_FL_global_model.pt" / "metrics.csv").is_file()
        # the sites' curves reached the server's TensorBoard
        assert list((server / "tb_events" / site).glob("events.out.tfevents.*"))


def test_one_thread_rebuilds_the_learner_per_task_and_gives_the_same_result_shape(
    tmp_path: Path, site_file: Path
) -> None:
    _, workspace, results = simulate(tmp_path, site_file, rounds=1, threads=1, local_epochs=1)

    assert set(results) == set(SITES)
    for site in SITES:
        assert set(results[site]) == {"SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt", *SITES}
        assert (workspace / site / "simulate_job" / f"app_{site}" / "models" / "fl_local_state.pt").is_file()


def test_a_failing_site_does_not_stop_the_job_while_min_clients_are_healthy(tmp_path: Path, site_file: Path) -> None:
    """site-3 has no datalist: it reports one clear error per task, the other two carry the job."""
    _, workspace, results = simulate(tmp_path, site_file, rounds=2, threads=3, local_epochs=1, clients=3)

    for site in SITES:
        assert {"SRV_FL_global_model.pt", *SITES} <= set(results[site])
        assert all("val_mean_dice" in metrics for metrics in results[site].values())
    assert "site-3" not in results or not any("val_mean_dice" in m for m in results["site-3"].values())
    site3_log = (workspace / "site-3" / "log.txt").read_text()
    assert "cannot build this site's trainer" in site3_log and "dataset_site-3.json" in site3_log


def test_sites_that_train_with_two_processes_each(tmp_path: Path, site_file: Path) -> None:
    # one round: the test below runs a second round in two processes (and asserts on it)
    _, workspace, results = simulate(tmp_path, site_file, rounds=1, local_epochs=1, nproc_per_site=2)

    assert set(results) == set(SITES)
    for site in SITES:
        assert {"SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt", *SITES} <= set(results[site])
        workers_log = (
            workspace / site / "simulate_job" / f"app_{site}" / "models" / ".fl_round" / "workers.log"
        ).read_text()
        assert "rank 1 of 2 joined" in workers_log
    # one update per site per round, counting both processes' iterations: site-1 has 5 training cases,
    # so 2 ranks x 2 iterations (3 cases each at batch size 2, padded to equal shards) = 4
    output = (tmp_path / "simulator.log").read_text()
    assert (
        "round 0: 4 iterations" in output or "round 0: 4 iterations" in (workspace / "site-1" / "log.txt").read_text()
    )


def hostile_job(tmp_path: Path, marker: Path, where: str) -> Path:
    """A 1-round job whose config_train.json asks MONAI's LoadImage to 'read' with os.system (issue 24's first
    case): as a section item of ``train`` (built at the sites) or nested in ``train.model.args`` (built on the
    server too)."""
    job = create_job(
        SPLEEN_MMAR, tmp_path / "job", num_rounds=1, local_epochs=1, min_clients=2,
        overrides=JOB_SETTINGS,
    )  # fmt: skip
    payload = {"name": "LoadImage", "args": {"reader": "os.system", "command": f"id > {marker}"}}
    config_file = job / "app" / "config" / "config_train.json"
    config = json.loads(config_file.read_text())
    if where == "section item":
        config["train"]["pwn"] = payload
    else:
        config["train"]["model"]["args"]["act"] = payload
    config_file.write_text(json.dumps(config))
    return job


def test_a_job_that_runs_a_command_through_a_library_class_runs_nothing_at_any_simulated_site(
    tmp_path: Path, site_file: Path
) -> None:
    marker = tmp_path / "owned"
    job = hostile_job(tmp_path, marker, "section item")

    with open(tmp_path / "simulator.log", "w") as log:
        code = run_simulator(str(job), str(tmp_path / "ws"), 2, 2, str(site_file), stdout=log)

    assert code != 0  # no site can train: the job fails rather than run the command
    assert not marker.exists()
    for site in SITES:
        log_text = (tmp_path / "ws" / site / "log.txt").read_text()
        assert "train.pwn.args.reader: 'os.system' names a Python callable" in log_text


def test_a_job_that_runs_a_command_through_the_network_runs_nothing_on_the_server(
    tmp_path: Path, site_file: Path
) -> None:
    marker = tmp_path / "owned"
    job = hostile_job(tmp_path, marker, "network")

    with open(tmp_path / "simulator.log", "w") as log:
        code = run_simulator(str(job), str(tmp_path / "ws"), 2, 2, str(site_file), stdout=log)

    assert code != 0
    assert not marker.exists()
    server_log = (tmp_path / "ws" / "server" / "log.txt").read_text()
    assert "train.model.args.act.args.reader: 'os.system' names a Python callable" in server_log


def test_sites_that_train_with_two_processes_each_by_steps_end_rounds_like_the_in_process_learner(
    tmp_path: Path, site_file: Path
) -> None:
    """3 steps per rank per round on site-1's 2-iteration epochs (per rank): round 0 stops mid-epoch 2, round 1
    finishes it and epoch 3, whose EPOCH_COMPLETED handlers (validation every 3 epochs, model.pt) must run."""
    from clara_fl.fl.site.local_state import LOCAL_STATE_FILE
    from clara_fl.workflows.train import trainer_progress

    _, workspace, results = simulate(
        tmp_path, site_file, rounds=2, local_epochs=1, nproc_per_site=2, steps_aggregation=3
    )

    assert set(results) == set(SITES)
    site1 = workspace / "site-1" / "simulate_job" / "app_site-1"
    site1_log = (tmp_path / "simulator.log").read_text() + (workspace / "site-1" / "log.txt").read_text()
    assert "round 0: 6 iterations" in site1_log and "round 1: 6 iterations" in site1_log  # 2 ranks x 3 steps
    epoch, iteration = trainer_progress(torch.load(site1 / "models" / LOCAL_STATE_FILE, weights_only=True))
    assert (epoch, iteration) == (3, 6), "the round counted as whole epochs, per rank"
    assert (site1 / "models" / "model.pt").is_file(), "epoch 3's validation (EPOCH_COMPLETED) never ran in the workers"
