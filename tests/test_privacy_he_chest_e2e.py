"""``--privacy`` and ``--he`` end to end on a second network: the chest X-ray MMAR (2D DenseNet), 3 rounds at 2
simulated sites. Each filter and HE leaves a global model that beats the untrained one at every site.

HE runs a narrow DenseNet (init_features 32, growth rate 16, 2 layers a block; 8 and 8 did not learn in 3
rounds): encrypting DenseNet121's 7 M weights (~1 ms a 1024-value ciphertext) would cost tens of seconds per round
on two shared cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clara_fl.cli import main
from tests.test_fl_algorithms_e2e_14a import CHEST, CLS_MMAR, SITES, chest_sites, untrained_metric
from tests.test_privacy_he_simulation import narrowed_mmar

pytestmark = pytest.mark.e2e
__all__ = ["chest_sites"]  # the module-scoped data fixture, shared with the algorithm tests

NARROW_DENSENET = {"init_features": 32, "growth_rate": 16, "block_config": [2, 2, 2, 2]}
# clara-fl's defaults: ExcludeVars has none, and must name what stays at the site
PRIVACY = {
    "percentile": "PercentilePrivacy",
    "svt": "SVTPrivacy",
    "exclude_vars": "ExcludeVars:exclude_vars=class_layers\\.",
}


def federate(tmp: Path, mmar: Path, sites: Path, options: list[str]) -> tuple[Path, dict]:
    """3 rounds x 2 local epochs of FedAvg with ``options`` at 2 sites; returns the job and the cross-site table."""
    _, metric, settings = CHEST
    job = tmp / "job"
    create = ["job", "create", "-m", str(mmar), "-o", str(job), "--min-clients", "2", "--num-rounds", "3"]
    assert main([*create, "--local-epochs", "2", *options, "--set", *settings]) == 0

    code = main(["simulate", str(job), "-w", str(tmp / "ws"), "-n", "2", "-t", "2", "--site-config", str(sites)])

    output = tmp / "ws" / "simulator_output.txt"
    assert code == 0, output.read_text()[-3000:] if output.is_file() else code
    [results] = list((tmp / "ws").rglob("cross_val_results.json"))
    return job, json.loads(results.read_text())


def assert_beats_untrained(job: Path, results: dict, sites: Path, workspace: Path, what: str) -> None:
    metric = CHEST[1]
    assert set(results) == set(SITES)
    for site in SITES:
        trained = results[site]["SRV_FL_global_model.pt"][metric]
        untrained = untrained_metric(job, sites, site, metric, workspace, "fedavg")
        print(f"{what} chest {site}: {metric} global {trained:.3f}, untrained {untrained:.3f}")
        assert trained > untrained, f"{what} at {site}: global model {trained:.3f} vs untrained {untrained:.3f}"


@pytest.mark.parametrize("privacy", sorted(PRIVACY))
def test_a_privacy_filtered_chest_job_beats_the_untrained_model_at_every_site(
    privacy: str, tmp_path: Path, chest_sites: Path
) -> None:
    job, results = federate(tmp_path, CLS_MMAR, chest_sites, ["--privacy", PRIVACY[privacy]])

    assert_beats_untrained(job, results, chest_sites, tmp_path / "ws", privacy)


def test_an_he_chest_job_beats_the_untrained_model_at_every_site(tmp_path: Path, chest_sites: Path) -> None:
    pytest.importorskip("tenseal")
    mmar = narrowed_mmar(CLS_MMAR, tmp_path / "chest_xray_cls", NARROW_DENSENET)

    job, results = federate(tmp_path, mmar, chest_sites, ["--he"])

    assert_beats_untrained(job, results, chest_sites, tmp_path / "ws", "he")
