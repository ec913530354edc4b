"""Clara 4.0 and classification MMARs federated in FLARE's simulator: 2 sites, 1 round, a cross-site table.

Driven through the ``clara-fl job create`` and ``clara-fl simulate`` commands, as users run them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from clara_fl.cli import main
from tests.conftest import REPO

pytestmark = pytest.mark.e2e

CLARA40_MMAR = Path(__file__).parent / "clara40_mmar"
CLS_MMAR = REPO / "clara_fl" / "resources" / "mmars" / "chest_xray_cls"
# Clara 4.0's documented FL config pair (federated_learning_configuration_details), for the two simulated sites
CLARA_40_SERVER = {
    "format_version": 1,
    "servers": [{"min_num_clients": 2, "max_num_clients": 100, "wait_after_min_clients": 10, "num_rounds": 5}],
    "aggregator": {
        "name": "AccumulateWeightedAggregator",
        "args": {"exclude_vars": "dummy", "aggregation_weights": {"site-1": 1, "site-2": 1.5}},
    },
    "outbound_filters": [],
    "inbound_filters": [],
    "model_persistor": {"name": "PTFileModelPersistor", "args": {"exclude_vars": "dummy"}},
    "shareable_generator": {"name": "FullModelShareableGenerator"},
}
CLARA_40_CLIENT = {
    "format_version": 1,
    "servers": [{"name": "spleen_segmentation"}],
    "client": {"outbound_filters": [], "inbound_filters": []},
    "client_trainer": {
        "path": "medl.apps.fed_learn.trainers.client_trainer.ClientTrainer",
        "args": {"local_epochs": 2, "steps_aggregation": 0, "model_reader_writer": {"name": "PTModelReaderWriter"}},
    },
    "handlers": [],
    "cross_validate": True,
    "cross_site_validation": {
        "is_participating": True,
        "model_validator": {"path": "medl.apps.fed_learn.validators.client_validator.ClientValidator", "args": {}},
        "inbound_filters": [],
        "outbound_filters": [],
    },
}


@pytest.fixture(scope="module")
def cls_data(tmp_path_factory: pytest.TempPathFactory):
    from clara_fl.data.synthetic_classification import make_classification_dataset

    return make_classification_dataset(tmp_path_factory.mktemp("cls"), cases=12, sites=2, size=32)


def federate(tmp: Path, mmar: Path, data_root: Path, *settings: str) -> dict:
    """One FedAvg round of ``mmar`` at 2 simulated sites; returns cross_val_results.json."""
    site_file = tmp / "site.json"
    environment = {"DATA_ROOT": str(data_root), "DATASET_JSON": f"{data_root}/dataset_{{SITE_NAME}}.json"}
    site_file.write_text(json.dumps({"environment": environment}))
    job = ["job", "create", "-m", str(mmar), "-o", str(tmp / "job"), "--num-rounds", "1", "--local-epochs", "1"]
    assert main([*job, "--min-clients", "2", *(["--set", *settings] if settings else [])]) == 0

    code = main(
        ["simulate", str(tmp / "job"), "-w", str(tmp / "ws"), "-n", "2", "-t", "2", "--site-config", str(site_file)]
    )

    assert code == 0
    [results] = list((tmp / "ws").rglob("cross_val_results.json"))
    return json.loads(results.read_text())


def test_a_clara40_mmar_with_its_own_clara40_fl_configs_runs_federated_with_a_cross_site_table(
    tmp_path: Path, synthetic_data
) -> None:
    mmar = tmp_path / "clara40_mmar"
    shutil.copytree(CLARA40_MMAR, mmar, ignore=shutil.ignore_patterns("models", "eval", "__pycache__"))
    (mmar / "config" / "config_fed_server.json").write_text(json.dumps(CLARA_40_SERVER))
    (mmar / "config" / "config_fed_client.json").write_text(json.dumps(CLARA_40_CLIENT))

    results = federate(tmp_path, mmar, synthetic_data.root)

    server = json.loads((tmp_path / "job" / "app" / "config" / "config_fed_server.json").read_text())
    [aggregator] = [c for c in server["components"] if c["id"] == "aggregator"]
    assert aggregator["args"]["aggregation_weights"] == {"site-1": 1, "site-2": 1.5}
    assert set(results) == {"site-1", "site-2"}
    for site in results.values():
        assert {"SRV_FL_global_model.pt", "site-1", "site-2"} <= set(site)  # the global model and each site's
        assert all(set(metrics) == {"val_mean_dice"} for metrics in site.values())


def test_the_classification_mmar_runs_federated_with_a_cross_site_table(tmp_path: Path, cls_data) -> None:
    results = federate(tmp_path, CLS_MMAR, cls_data.root, "num_workers=0", "batch_size=4")

    assert set(results) == {"site-1", "site-2"}
    for site in results.values():
        assert {"SRV_FL_global_model.pt", "site-1", "site-2"} <= set(site)
        assert all(set(metrics) == {"val_auc", "val_accuracy"} for metrics in site.values())
