"""End to end in FLARE's simulator: one bad site of three, whose update a task-result filter scales by -10.

Plain FedAvg follows the bad site; the coordinate-wise median, the trimmed mean and Krum ignore it and score as the
2-honest-site FedAvg. The honest reference is the session's 2-site FedAvg (conftest.py ``fedavg_simulation``): its
sites hold exactly the data of sites 1 and 2 here, with the same job settings. The plain FedAvg run with the bad site
is made once for the module; each rule is one more 3-site simulation on the ModelController template (the bench,
bench/figures/fig11_robust.py, runs every rule, MultiKrum too, on the ScatterAndGather template).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from clara_fl.apps.simulate import run_simulator
from clara_fl.recipes.job_folder import create_job, job_settings
from clara_fl.recipes.job_model import ClientApp, Component
from tests.conftest import SPLEEN_MMAR
from tests.test_fl_simulation import JOB_SETTINGS

pytestmark = pytest.mark.e2e

HONEST = ("site-1", "site-2")
BAD_SITE = "site-3"
ATTACK = Path(__file__).with_name("robust_attack_filter.py")


def three_site_data(folder: Path) -> Path:
    """The reference's data (12 cases, 2 sites, seed 0) plus a third site training on site-1's cases; the site
    file naming each site's datalist."""
    from clara_fl.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(folder, cases=12, sites=2, shape=(32, 32, 32))
    shutil.copy(data.root / "dataset_site-1.json", data.root / f"dataset_{BAD_SITE}.json")
    site_file = data.root / "clara_fl_site.json"
    environment = {"DATA_ROOT": str(data.root), "DATASET_JSON": str(data.root / "dataset_{SITE_NAME}.json")}
    site_file.write_text(json.dumps({"environment": environment}))
    return site_file


@pytest.fixture(scope="module")
def three_sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return three_site_data(tmp_path_factory.mktemp("robust_data"))


def simulate_with_bad_site(
    tmp: Path,
    site_file: Path,
    aggregator: str | None,
    sites: int = 3,
    bad_site: str | None = BAD_SITE,
    template: str | None = None,
    rounds: int = 3,
    local_epochs: int = 3,
) -> Path:
    """The reference's spleen job (3 rounds of 3 epochs) on ``sites`` sites, ``bad_site``'s update scaled by -10 (a
    task-result filter in the job's custom/); the server's workspace folder."""
    settings = job_settings(SPLEEN_MMAR, None, aggregator=aggregator, cross_site_eval=False)
    job = create_job(
        SPLEEN_MMAR,
        tmp / "job",
        template,
        num_rounds=rounds,
        local_epochs=local_epochs,
        min_clients=sites,
        overrides=JOB_SETTINGS,
        settings=settings,
    )
    if bad_site is not None:
        custom = job / "app" / "custom"
        custom.mkdir(exist_ok=True)  # BYOC: the test filter is the job's code
        shutil.copy(ATTACK, custom / ATTACK.name)
        client_file = job / "app" / "config" / "config_fed_client.json"
        client = ClientApp.from_config(json.loads(client_file.read_text()))
        attack = Component("robust_attack_filter.ScaleSiteUpdate", {"sites": [bad_site], "factor": -10.0})
        client.add_task_filters("task_result_filters", ["train"], [attack])
        client_file.write_text(json.dumps(client.to_config(), indent=2))
    workspace = tmp / "ws"
    with open(tmp / "simulator.log", "w") as log:
        code = run_simulator(str(job), str(workspace), sites, sites, str(site_file), stdout=log)
    assert code == 0, (tmp / "simulator.log").read_text()[-3000:]
    return workspace / "server" / "simulate_job"


def global_model_dice(server: Path, job: Path, site_file: Path, site: str) -> float:
    """val_mean_dice of the server's final global model on ``site``'s validation data, evaluated as cross-site
    evaluation evaluates it (config_cross_validation.json)."""
    import torch

    from clara_fl.config.mmar import load_config
    from clara_fl.fl.site.context import read_site_file
    from clara_fl.fl.site.weights import load_global_weights
    from clara_fl.workflows.evaluate import EvaluateWorkflow

    saved = torch.load(server / "app_server" / "FL_global_model.pt", weights_only=True)
    weights = {k: v.numpy() for k, v in saved.get("model", saved).items()}
    site_env = {**read_site_file(str(site_file))["environment"], "SITE_NAME": site}
    loaded = load_config(
        str(job / "app"),
        "config/config_cross_validation.json",
        extra_environment=site_env,
        overrides={"MMAR_EVAL_OUTPUT_PATH": str(job / "eval_global" / site)},
    )
    workflow = EvaluateWorkflow.build(loaded)
    load_global_weights(workflow.network, weights)
    return float(workflow.run(progress=False)["val_mean_dice"])


def mean_over_honest_sites(server: Path, job: Path, site_file: Path) -> float:
    return sum(global_model_dice(server, job, site_file, s) for s in HONEST) / len(HONEST)


@pytest.fixture(scope="module")
def honest_dice(fedavg_simulation) -> float:
    """The 2-honest-site FedAvg global model's val_mean_dice, averaged over the two sites (its cross-site table)."""
    from clara_fl.fl.jobs.results import find_cross_site_results, load_cross_site_results

    reference_file = find_cross_site_results(fedavg_simulation.workspace)
    assert reference_file is not None
    reference = load_cross_site_results(reference_file)
    return sum(reference[s]["SRV_FL_global_model.pt"]["val_mean_dice"] for s in HONEST) / len(HONEST)


@pytest.fixture(scope="module")
def fedavg_with_bad_site(tmp_path_factory: pytest.TempPathFactory, three_sites: Path) -> float:
    """Plain FedAvg over the 3 sites, site-3 bad: the global model's val_mean_dice over the honest sites."""
    tmp = tmp_path_factory.mktemp("robust_fedavg")
    server = simulate_with_bad_site(tmp, three_sites, None)
    return mean_over_honest_sites(server, tmp / "job", three_sites)


def test_plain_fedavg_follows_the_bad_site_far_below_the_honest_sites_model(
    honest_dice: float, fedavg_with_bad_site: float
) -> None:
    assert fedavg_with_bad_site < honest_dice - 0.3, f"FedAvg with the bad site {fedavg_with_bad_site:.3f}"


# Per rule, what the server log says in the last round (0-based round 2) about the bad site: the coordinate-wise rules
# name the sites by the share of their values cut, the most cut first; Krum names the sites it selected and, as a
# warning, the sites it left out. Krum with 3 sites allows only f = 0 (its precondition is n > 2f+2: f = 1 needs 5):
# each update is scored by its squared distance to its one nearest other, so the two honest updates, nearest to
# each other, tie for the best score (their distance) and are averaged; the bad one scores higher. trimmed_mean's
# beta = 0.34, the smallest of two decimals that cuts one value at each end of 3 (floor(beta*3) = 1), keeps what the
# median keeps.
RULE_LOG_LINES = {
    "median": [
        r"round 2: median \(coordinate-wise median\) of 3 sites",
        rf"down-weighted \(share of its values cut\): {BAD_SITE} ",
    ],
    "trimmed_mean:beta=0.34": [
        r"round 2: trimmed_mean:beta=0\.34 \(coordinate-wise trimmed mean\) of 3 sites, cutting 1 value",
        rf"down-weighted \(share of its values cut\): {BAD_SITE} ",
    ],
    "krum:f=0": [
        r"round 2: krum:f=0 over 3 sites selected site-1, site-2 \(tied for the best score: their mean\)",
        rf"round 2: krum:f=0 left out {BAD_SITE}\b",
    ],
}


@pytest.mark.parametrize("rule", list(RULE_LOG_LINES))
def test_a_robust_rule_ignores_the_bad_site_and_scores_as_the_honest_sites_fedavg(
    tmp_path: Path, three_sites: Path, honest_dice: float, rule: str
) -> None:
    started = time.monotonic()

    server = simulate_with_bad_site(tmp_path, three_sites, rule)
    dice = mean_over_honest_sites(server, tmp_path / "job", three_sites)

    print(f"{rule}: {dice:.3f} vs honest 2-site FedAvg {honest_dice:.3f}, {time.monotonic() - started:.0f} s")
    assert abs(dice - honest_dice) <= 0.05, f"{rule} {dice:.3f} vs honest FedAvg {honest_dice:.3f}"
    log = (server.parent / "log.txt").read_text()  # the server's log: ws/server/log.txt
    for line in RULE_LOG_LINES[rule]:
        assert re.search(line, log), f"no line matching {line!r} in the server log"
