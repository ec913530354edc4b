"""``clara-fl evaluate`` end to end in FLARE's simulator: two models, an untrained one and a trained one, scored
on both sites' validation data with no training round.

The trained model is the global model of the shared 3-round FedAvg simulation (``fedavg_simulation``, which the
e2e run makes anyway); the untrained one is the MMAR's network as built. With ``--site-models`` each site also
submits its own model: the one that simulation left at the site, named by the site file's ``own_model``.
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from clara_fl.fl.jobs.results import find_cross_site_results, load_cross_site_results
from tests.conftest import SPLEEN_MMAR

pytestmark = pytest.mark.e2e

SITES = ["site-1", "site-2"]
MODELS = ["SRV_trained", "SRV_untrained"]
EVAL_SETTINGS = ["roi_size=[16,16,16]", "num_workers=0"]


def evaluation_models(fedavg_simulation: SimpleNamespace, folder: Path) -> list[str]:
    """``--model`` values: the FedAvg simulation's global model (a Clara checkpoint) and the untrained network."""
    from clara_fl.workflows.network import build_train_network

    trained = fedavg_simulation.workspace / "server" / "simulate_job" / "app_server" / "FL_global_model.pt"
    assert trained.is_file(), "the shared FedAvg simulation saved no global model"
    folder.mkdir(parents=True, exist_ok=True)
    untrained = folder / "untrained.pt"
    torch.save(build_train_network(str(SPLEEN_MMAR)).state_dict(), untrained)
    return [f"untrained={untrained}", f"trained={trained}"]


def assert_trained_wins_everywhere(
    results: dict[str, dict[str, dict[str, float]]], site_models: list[str] | None = None
) -> None:
    assert set(results) == set(SITES), results
    for site in SITES:
        assert sorted(results[site]) == sorted(MODELS + (site_models or [])), results[site]
        trained, untrained = (results[site][m]["val_mean_dice"] for m in MODELS)
        assert trained > untrained, f"{site}: trained {trained:.3f} vs untrained {untrained:.3f}"


def test_evaluate_in_the_simulator_scores_both_models_and_each_sites_own_at_both_sites_and_the_trained_one_wins(
    fedavg_simulation: SimpleNamespace, tmp_path: Path
) -> None:
    from clara_fl.cli import main

    models = evaluation_models(fedavg_simulation, tmp_path / "models")
    workspace = tmp_path / "ws"
    site_file = tmp_path / "clara_fl_site.json"
    own_model = fedavg_simulation.workspace / "{SITE_NAME}" / "simulate_job" / "app_{SITE_NAME}" / "models" / "model.pt"
    site_file.write_text(
        json.dumps({**json.loads(fedavg_simulation.site_file.read_text()), "own_model": str(own_model)})
    )
    printed = io.StringIO()

    with redirect_stdout(printed):
        code = main(
            ["evaluate", "-m", str(SPLEEN_MMAR), "--model", models[0], "--model", models[1], "-w", str(workspace)]
            + ["--site-models", "--site-config", str(site_file), "--set", *EVAL_SETTINGS]
        )

    assert code == 0, (workspace / "simulator_output.txt").read_text()[-3000:]
    results_file = find_cross_site_results(workspace)
    assert results_file is not None
    assert_trained_wins_everywhere(load_cross_site_results(results_file), site_models=SITES)
    table = printed.getvalue()
    assert "val_mean_dice (cross-site validation)" in table and "SRV_trained" in table and "SRV_untrained" in table
    assert all(f"\n{site} " in table for site in SITES)
    assert (workspace / "report" / "report.html").is_file()
    # no training ran: the sites' app folders hold no checkpoint and the server no global model
    assert not list(workspace.rglob("model.pt")) and not list(workspace.rglob("FL_global_model.pt"))
    events = (workspace / "server" / "simulate_job" / "app_server" / "server_events.jsonl").read_text()
    assert "round_started" not in [json.loads(line).get("kind") for line in events.splitlines()]
