"""What a newcomer trips over (issue 18): where the weights are when no validation ran, commands that
check their own input before FLARE sees it, and a best global model that is the best of them all."""

from __future__ import annotations

from pathlib import Path

from tests.test_fl_simulation import SITES, fl_data, simulate, site_file  # noqa: F401  (fixtures)


# -- the best global model -------------------------------------------------------------------------


def test_the_best_global_model_scores_at_least_the_last_global_model(tmp_path: Path, site_file: Path) -> None:
    _, workspace, results = simulate(tmp_path, site_file, "clara_fedavg_cse", rounds=3, local_epochs=1)

    mean = lambda owner: sum(results[site][owner]["val_mean_dice"] for site in SITES) / len(SITES)  # noqa: E731
    assert mean("SRV_best_FL_global_model.pt") >= mean("SRV_FL_global_model.pt"), results
