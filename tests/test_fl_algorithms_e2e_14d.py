"""FedOpt and Ditto end to end: 3 rounds on 2 simulated sites from the spleen MMAR and the chest X-ray MMAR.

Driven through ``clara-fl job create --algorithm`` and ``clara-fl simulate``, as users run them; each asserts
that the model the algorithm produces beats the untrained model at every site.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from clara_fl.cli import main
from tests.conftest import REPO, SPLEEN_MMAR

pytestmark = pytest.mark.e2e

SITES = ("site-1", "site-2")
CLS_MMAR = REPO / "clara_fl" / "resources" / "mmars" / "chest_xray_cls"
# as small as the other simulation tests: 32^3 volumes with 16^3 crops; 32^2 images, 7 validation images a site
SEG_SETTINGS = ["roi_size=[16,16,16]", "num_workers=0", "num_interval_per_valid=3", "learning_rate=0.001"]
CLS_SETTINGS = ["num_workers=0", "batch_size=4"]


@pytest.fixture(scope="module")
def seg_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from clara_fl.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("seg"), cases=12, sites=2, shape=(32, 32, 32)).root


@pytest.fixture(scope="module")
def cls_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from clara_fl.data.synthetic_classification import make_classification_dataset

    return make_classification_dataset(tmp_path_factory.mktemp("cls"), cases=40, sites=2, size=32).root


def federate(tmp: Path, mmar: Path, data_root: Path, settings: list[str], *algorithm: str) -> tuple[Path, Path, dict]:
    """3 rounds of 3 local epochs at 2 simulated sites; returns the job, the workspace and cross_val_results.json."""
    site_file = tmp / "site.json"
    environment = {"DATA_ROOT": str(data_root), "DATASET_JSON": f"{data_root}/dataset_{{SITE_NAME}}.json"}
    site_file.write_text(json.dumps({"environment": environment}))
    job, workspace = tmp / "job", tmp / "ws"
    create = ["job", "create", "-m", str(mmar), "-o", str(job), "--num-rounds", "3", "--local-epochs", "3"]
    assert main([*create, "--min-clients", "2", *algorithm, "--set", *settings]) == 0

    code = main(["simulate", str(job), "-w", str(workspace), "-n", "2", "-t", "2", "--site-config", str(site_file)])

    assert code == 0
    [results] = list(workspace.rglob("cross_val_results.json"))
    return job, workspace, json.loads(results.read_text())


def untrained_metrics(job: Path, data_root: Path, site: str) -> dict[str, Any]:
    """The cross-validation metrics of the server's initial model (built as ClaraModelPersistor builds it)."""
    from clara_fl.config.mmar import load_config
    from clara_fl.fl.site.weights import load_global_weights, network_weights
    from clara_fl.workflows.evaluate import EvaluateWorkflow
    from clara_fl.workflows.network import build_train_network

    app = str(job / "app")
    initial = network_weights(build_train_network(app, extra_environment={"SITE_NAME": "server"}))
    environment = {
        "DATA_ROOT": str(data_root),
        "DATASET_JSON": str(data_root / f"dataset_{site}.json"),
        "SITE_NAME": site,
    }
    loaded = load_config(
        app,
        "config/config_cross_validation.json",
        extra_environment=environment,
        overrides={"MMAR_EVAL_OUTPUT_PATH": str(job / "baseline" / site)},
    )
    workflow = EvaluateWorkflow.build(loaded)
    load_global_weights(workflow.network, initial)
    return workflow.run(progress=False)


def assert_beats_untrained(job: Path, data_root: Path, results: dict, owner_of: dict[str, str], metric: str) -> None:
    for site in SITES:
        untrained = untrained_metrics(job, data_root, site)[metric]
        trained = results[site][owner_of[site]][metric]
        assert trained > untrained, f"{site}: {owner_of[site]} {metric} {trained:.3f} vs untrained {untrained:.3f}"


FEDOPT = ["--algorithm", "fedopt", "--algorithm-arg", "optimizer=sgd", "--algorithm-arg", "momentum=0.6"]
GLOBAL = dict.fromkeys(SITES, "SRV_FL_global_model.pt")


def assert_server_ran_fedopt(workspace: Path) -> None:
    log = (workspace / "server" / "log.txt").read_text()
    assert "FedOpt (torch.optim.SGD, cpu) server model update round 2" in log
    # the networks' BatchNorm/InstanceNorm buffers are averaged, not dropped
    assert "fedavg layers: 0," not in log and "fedavg layers: " in log


def test_fedopt_on_the_spleen_mmar_beats_the_untrained_model_at_every_site(tmp_path: Path, seg_data: Path) -> None:
    job, workspace, results = federate(tmp_path, SPLEEN_MMAR, seg_data, SEG_SETTINGS, *FEDOPT)

    assert_server_ran_fedopt(workspace)
    assert_beats_untrained(job, seg_data, results, GLOBAL, "val_mean_dice")


def test_fedopt_on_the_chest_xray_mmar_beats_the_untrained_model_at_every_site(tmp_path: Path, cls_data: Path) -> None:
    job, workspace, results = federate(tmp_path, CLS_MMAR, cls_data, CLS_SETTINGS, *FEDOPT)

    assert_server_ran_fedopt(workspace)
    assert_beats_untrained(job, cls_data, results, GLOBAL, "val_auc")


DITTO = ["--algorithm", "ditto", "--algorithm-arg", "lambda=0.1", "--algorithm-arg", "personal_epochs=3"]
PERSONALIZED = {site: site for site in SITES}  # each site's own (personalized) model on its own data


def assert_sites_ran_ditto(workspace: Path, results: dict) -> None:
    for site in SITES:
        assert {"SRV_FL_global_model.pt", *SITES} <= set(results[site])
        app = workspace / site / "simulate_job" / f"app_{site}"
        assert (app / "models" / "personalized_model.pt").is_file()
        assert "submitting the ditto model" in (workspace / site / "log.txt").read_text()


def test_ditto_on_the_spleen_mmar_personalized_models_beat_the_untrained_model(tmp_path: Path, seg_data: Path) -> None:
    job, workspace, results = federate(tmp_path, SPLEEN_MMAR, seg_data, SEG_SETTINGS, *DITTO)

    assert_sites_ran_ditto(workspace, results)
    assert_beats_untrained(job, seg_data, results, PERSONALIZED, "val_mean_dice")


def test_ditto_on_the_chest_xray_mmar_personalized_models_beat_the_untrained_model(
    tmp_path: Path, cls_data: Path
) -> None:
    job, workspace, results = federate(tmp_path, CLS_MMAR, cls_data, CLS_SETTINGS, *DITTO)

    assert_sites_ran_ditto(workspace, results)
    assert_beats_untrained(job, cls_data, results, PERSONALIZED, "val_auc")
