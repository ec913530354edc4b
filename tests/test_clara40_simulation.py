"""Clara 4.0 and classification MMARs federated in FLARE's simulator: 2 sites, 1 round, a cross-site table.

Driven through the ``clara-fl job create`` and ``clara-fl simulate`` commands, as users run them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clara_fl.cli import main
from tests.conftest import REPO

pytestmark = pytest.mark.e2e

CLARA40_MMAR = Path(__file__).parent / "clara40_mmar"
CLS_MMAR = REPO / "clara_fl" / "resources" / "mmars" / "chest_xray_cls"


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


def test_a_clara40_mmar_runs_federated_with_a_cross_site_table(tmp_path: Path, synthetic_data) -> None:
    results = federate(tmp_path, CLARA40_MMAR, synthetic_data.root)

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
