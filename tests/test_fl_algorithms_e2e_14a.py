"""FedProx, FedBN and SCAFFOLD end to end: ``clara-fl job create --algorithm X`` then ``clara-fl simulate``,
3 rounds at 2 simulated sites, from the spleen MMAR (3D UNet) and the chest X-ray MMAR (2D DenseNet121).

Each time the global model, validated at every site in the cross-site table (FedBN: with that site's own norm
layers), beats the untrained model validated the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clara_fl.cli import main
from tests.conftest import REPO, SPLEEN_MMAR

pytestmark = pytest.mark.e2e

CLS_MMAR = REPO / "clara_fl" / "resources" / "mmars" / "chest_xray_cls"
SITES = ("site-1", "site-2")


def site_file(tmp: Path, data_root: Path) -> Path:
    path = tmp / "site.json"
    environment = {"DATA_ROOT": str(data_root), "DATASET_JSON": f"{data_root}/dataset_{{SITE_NAME}}.json"}
    path.write_text(json.dumps({"environment": environment}))
    return path


@pytest.fixture(scope="module")
def spleen_sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from clara_fl.data.synthetic import make_synthetic_dataset

    tmp = tmp_path_factory.mktemp("spleen")
    data = make_synthetic_dataset(tmp / "data", cases=12, sites=2, shape=(32, 32, 32))
    return site_file(tmp, data.root)


@pytest.fixture(scope="module")
def chest_sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from clara_fl.data.synthetic_classification import make_classification_dataset

    tmp = tmp_path_factory.mktemp("chest")
    data = make_classification_dataset(tmp / "data", cases=36, sites=2, size=32)
    return site_file(tmp, data.root)


# (MMAR, key metric, --set values small enough for 2 shared cores and large enough to learn)
SPLEEN = (SPLEEN_MMAR, "val_mean_dice", ["roi_size=[16,16,16]", "num_workers=0", "learning_rate=0.001"])
CHEST = (CLS_MMAR, "val_auc", ["num_workers=0", "batch_size=4", "learning_rate=0.001"])


def federate(tmp: Path, mmar: Path, sites: Path, algorithm: str, settings: list[str], epochs: int) -> tuple[Path, dict]:
    """3 rounds of ``algorithm`` at 2 sites; returns the job folder and the cross-site table."""
    job = tmp / "job"
    create = ["job", "create", "-m", str(mmar), "-o", str(job), "--algorithm", algorithm, "--min-clients", "2"]
    assert main([*create, "--num-rounds", "3", "--local-epochs", str(epochs), "--set", *settings]) == 0

    simulate = ["simulate", str(job), "-w", str(tmp / "ws"), "-n", "2", "-t", "2", "--site-config", str(sites)]
    code = main(simulate)

    output = tmp / "ws" / "simulator_output.txt"
    assert code == 0, output.read_text()[-3000:] if output.is_file() else code
    [results] = list((tmp / "ws").rglob("cross_val_results.json"))
    return job, json.loads(results.read_text())


def untrained_metric(job: Path, sites: Path, site: str, metric: str, workspace: Path, algorithm: str) -> float:
    """``metric`` of the server's initial model at ``site``, validated as the site's validator validates a model
    (FedBN: with the norm layers the site ended with)."""
    from clara_fl.config.mmar import load_config
    from clara_fl.fl.site.algorithms import local_algorithm
    from clara_fl.fl.site.context import read_site_file
    from clara_fl.fl.site.local_state import LOCAL_STATE_FILE
    from clara_fl.fl.site.weights import load_global_weights, network_weights
    from clara_fl.runtime.checkpoint import load_checkpoint, model_state
    from clara_fl.workflows.evaluate import EvaluateWorkflow
    from clara_fl.workflows.network import build_train_network

    app = str(job / "app")
    initial = network_weights(build_train_network(app, extra_environment={"SITE_NAME": "server"}))
    site_env = {**read_site_file(str(sites))["environment"], "SITE_NAME": site}
    loaded = load_config(
        app,
        "config/config_cross_validation.json",
        extra_environment=site_env,
        overrides={"MMAR_EVAL_OUTPUT_PATH": str(job / "baseline" / site)},
    )
    workflow = EvaluateWorkflow.build(loaded)
    site_algorithm = local_algorithm(algorithm)
    site_algorithm.setup_network(workflow.network)
    kept = set(initial) - set(site_algorithm.weights_to_load(initial))
    if kept:
        [state] = list(workspace.glob(f"{site}/simulate_job/app_{site}/models/{LOCAL_STATE_FILE}"))
        own = model_state(load_checkpoint(state), str(state))
        load_global_weights(workflow.network, {k: own[k] for k in kept})
    load_global_weights(workflow.network, {k: v for k, v in initial.items() if k not in kept})
    return workflow.run(progress=False)[metric]


@pytest.mark.parametrize("algorithm", ["fedprox", "fedbn", "scaffold"])
@pytest.mark.parametrize("mmar", ["spleen", "chest"])
def test_the_global_model_beats_the_untrained_model_at_every_site(
    algorithm: str, mmar: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    path, metric, settings = SPLEEN if mmar == "spleen" else CHEST
    sites = request.getfixturevalue(f"{mmar}_sites")
    job, results = federate(tmp_path, path, sites, algorithm, settings, epochs=3 if mmar == "spleen" else 2)

    assert set(results) == set(SITES)
    for site in SITES:
        trained = results[site]["SRV_FL_global_model.pt"][metric]
        untrained = untrained_metric(job, sites, site, metric, tmp_path / "ws", algorithm)
        print(f"{algorithm} {mmar} {site}: {metric} global {trained:.3f}, untrained {untrained:.3f}")
        assert trained > untrained, f"{algorithm} at {site}: global model {trained:.3f} vs untrained {untrained:.3f}"
