"""End to end in FLARE's simulator: ``--privacy`` filters and ``--he`` jobs from the spleen MMAR, 3 rounds, 2 sites.

The HE jobs use the spleen MMAR with a narrower UNet (channels 4..64, ~0.3 M weights instead of 4.8 M), so that
both the plain and the encrypted job fit the e2e budget on two shared cores.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from clara_fl.apps.simulate import run_simulator
from clara_fl.fl.he_packing import PACKED_PREFIX
from clara_fl.fl.jobs.privacy import parse_privacy_option
from clara_fl.fl.jobs.results import find_cross_site_results, load_cross_site_results
from clara_fl.recipes.app_configs import FedAvgSettings
from clara_fl.recipes.job_folder import create_job
from tests.conftest import SPLEEN_MMAR

pytestmark = pytest.mark.e2e
pytest.importorskip("tenseal")

SITES = ["site-1", "site-2"]
JOB_SETTINGS = {"roi_size": [16, 16, 16], "num_workers": 0, "num_interval_per_valid": 3, "learning_rate": 0.001}
NARROW_CHANNELS = [4, 8, 16, 32, 64]
PROBE = Path(__file__).with_name("aggregator_probe.py")
HE_TEMPLATE = "clara_fedavg_cse"
# a global model "clearly" better than the untrained one: Dice up by at least this much at every site
CLEAR_MARGIN = 0.1


@pytest.fixture(scope="module")
def fl_data(tmp_path_factory: pytest.TempPathFactory):
    from clara_fl.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("fl_data"), cases=12, sites=2, shape=(32, 32, 32), seed=0)


@pytest.fixture(scope="module")
def site_file(fl_data, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sites") / "clara_fl_site.json"
    environment = {"DATA_ROOT": str(fl_data.root), "DATASET_JSON": str(fl_data.root / "dataset_{SITE_NAME}.json")}
    path.write_text(json.dumps({"environment": environment}))
    return path


def narrowed_mmar(source: Path, destination: Path, model_args: dict) -> Path:
    """A copy of the MMAR ``source`` at ``destination`` whose network (train and cross-validation configs) takes
    ``model_args`` on top of its own: the same layers, fewer channels."""
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns("models", "eval", "__pycache__"))
    for name, keys in (("config_train.json", ("train", "model")), ("config_cross_validation.json", ("model",))):
        path = destination / "config" / name
        config = json.loads(path.read_text())
        model = config
        for key in keys:
            model = model[key]
        model["args"].update(model_args)
        path.write_text(json.dumps(config, indent=2))
    return destination


def make_narrow_spleen(destination: Path) -> Path:
    """The spleen MMAR with a narrower UNet (same layers, fewer channels) at ``destination``."""
    return narrowed_mmar(SPLEEN_MMAR, destination, {"channels": NARROW_CHANNELS})


@pytest.fixture(scope="module")
def narrow_spleen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_narrow_spleen(tmp_path_factory.mktemp("mmar") / "spleen_ct_seg")


def simulate(
    tmp: Path, site_file: Path, mmar: Path, settings: FedAvgSettings, template: str | None = HE_TEMPLATE
) -> tuple[Path, dict, list[dict]]:
    """Run the job with the probe as the server's aggregator; returns the workspace, the cross-site results and
    what the aggregator accepted. The probe replaces the ScatterAndGather template's aggregator component (the
    ModelController template has none), so the template is that one unless the job chooses it itself (None)."""
    job = create_job(
        mmar,
        tmp / "job",
        template,
        num_rounds=3,
        local_epochs=3,
        min_clients=2,
        overrides=JOB_SETTINGS,
        settings=settings,
    )
    record = tmp / "accepted.jsonl"
    install_probe(job, record)
    workspace = tmp / "ws"
    with open(tmp / "simulator.log", "w") as log:
        code = run_simulator(str(job), str(workspace), 2, 2, str(site_file), stdout=log)
    assert code == 0, (tmp / "simulator.log").read_text()[-3000:]
    results = find_cross_site_results(workspace)
    assert results is not None, (tmp / "simulator.log").read_text()[-3000:]
    accepted = [json.loads(line) for line in record.read_text().splitlines()]
    return workspace, load_cross_site_results(results), accepted


def install_probe(job: Path, record: Path) -> None:
    """The job's aggregator becomes the probe subclass of the same FLARE class (BYOC, in the app's custom/)."""
    (job / "app" / "custom").mkdir(exist_ok=True)
    shutil.copy(PROBE, job / "app" / "custom" / PROBE.name)
    server_config = job / "app" / "config" / "config_fed_server.json"
    server = json.loads(server_config.read_text())
    aggregator = next(c for c in server["components"] if c["id"] == "aggregator")
    probes = {
        "clara_fl.fl.server.he.HEInTimeAccumulateWeightedAggregator": "RecordingPackedHEAggregator",
        "nvflare.app_opt.he.intime_accumulate_model_aggregator.HEInTimeAccumulateWeightedAggregator": (
            "RecordingHEAggregator"
        ),
    }
    aggregator["path"] = f"aggregator_probe.{probes.get(aggregator['path'], 'RecordingAggregator')}"
    aggregator["args"]["record_file"] = str(record)
    server_config.write_text(json.dumps(server, indent=2))


def global_dice(results: dict) -> dict[str, float]:
    return {site: results[site]["SRV_FL_global_model.pt"]["val_mean_dice"] for site in SITES}


def assert_beats_untrained(tmp: Path, site_file: Path, results: dict, margin: float = 0.0) -> None:
    """The global model's Dice at every site is above the untrained model's (by ``margin``), validated the same
    way."""
    from tests.test_fl_algorithms_e2e_14a import untrained_metric

    for site, trained in global_dice(results).items():
        untrained = untrained_metric(tmp / "job", site_file, site, "val_mean_dice", tmp / "ws", "fedavg")
        print(f"{site}: global model Dice {trained:.3f}, untrained {untrained:.3f}")
        assert trained > untrained + margin, f"{site}: global model {trained:.3f} vs untrained {untrained:.3f}"


def assert_releases_recorded(workspace: Path, filter_name: str) -> list[dict]:
    """Every site recorded what its filter released in each of the 3 rounds, and the report reads it."""
    from clara_fl.fl.jobs.privacy import PRIVACY_RELEASES_FILE
    from clara_fl.report.collect import collect

    records = []
    for site in SITES:
        [path] = list(workspace.glob(f"{site}/*/app_{site}/{PRIVACY_RELEASES_FILE}"))
        site_records = [json.loads(line) for line in path.read_text().splitlines()]
        assert [r["round"] for r in site_records] == [0, 1, 2] and {r["filter"] for r in site_records} == {filter_name}
        records += site_records
    assert len(collect(workspace).privacy) == len(records) == 3 * len(SITES)
    return records


# At clara-fl's defaults (the filter named, nothing else), each filter still lets the global model learn.
# Without a filter about 78 % of an update is exactly zero here: the 16^3 crops reach the UNet's deepest (and
# largest) layers at 1x1x1, where batch norm of one value passes no gradient.
def test_a_percentile_privacy_job_at_the_defaults_clips_the_changes_and_learns(tmp_path: Path, site_file: Path) -> None:
    privacy = parse_privacy_option("PercentilePrivacy")

    workspace, results, accepted = simulate(tmp_path, site_file, SPLEEN_MMAR, FedAvgSettings(result_filters=[privacy]))

    assert set(results) == set(SITES) and len(accepted) == 6, "3 rounds, 2 sites, then cross-site evaluation"
    releases = assert_releases_recorded(workspace, "PercentilePrivacy")
    assert all(not r["almost_nothing"] and r["direction_kept"] < 1.0 for r in releases)
    assert_beats_untrained(tmp_path, site_file, results, CLEAR_MARGIN)


def test_an_svt_privacy_job_at_the_defaults_sends_most_changes_clipped_and_noisy_and_learns(
    tmp_path: Path, site_file: Path
) -> None:
    privacy = parse_privacy_option("SVTPrivacy")

    workspace, results, accepted = simulate(tmp_path, site_file, SPLEEN_MMAR, FedAvgSettings(result_filters=[privacy]))

    assert set(results) == set(SITES) and len(accepted) == 6
    assert all(update["zero_fraction"] >= 0.09 for update in accepted), "at most 90 % of each update is released"
    assert all(not r["almost_nothing"] for r in assert_releases_recorded(workspace, "SVTPrivacy"))
    assert_beats_untrained(tmp_path, site_file, results, CLEAR_MARGIN)


def test_an_exclude_vars_job_never_sends_the_excluded_layers_and_learns(tmp_path: Path, site_file: Path) -> None:
    privacy = parse_privacy_option("ExcludeVars:exclude_vars=model\\.0\\.")

    workspace, results, accepted = simulate(tmp_path, site_file, SPLEEN_MMAR, FedAvgSettings(result_filters=[privacy]))

    assert set(results) == set(SITES) and len(accepted) == 6
    for update in accepted:
        assert update["keys"] and not [k for k in update["keys"] if k.startswith("model.0.")]
    assert all(r["tensors_released"] < r["tensors"] for r in assert_releases_recorded(workspace, "ExcludeVars"))
    assert_beats_untrained(tmp_path, site_file, results, CLEAR_MARGIN)


def test_an_he_job_aggregates_only_encrypted_updates_and_learns_as_the_plain_job_does(
    tmp_path: Path, site_file: Path, narrow_spleen: Path
) -> None:
    # the plain job on the template HE runs on (ScatterAndGather), so that both have the same aggregator
    _, plain, plain_accepted = simulate(tmp_path / "plain", site_file, narrow_spleen, FedAvgSettings(), HE_TEMPLATE)

    _, encrypted, accepted = simulate(tmp_path / "he", site_file, narrow_spleen, FedAvgSettings(he=True), None)

    # each update: the network's float tensors packed into few context-free ciphertexts; in the clear only the
    # integer step counters of its batch norms, which count the steps each site reports anyway
    weights = plain_accepted[0]["values"]
    counters = [k for k in plain_accepted[0]["keys"] if k.endswith("num_batches_tracked")]
    assert len(accepted) == 6 and all(update["kinds"] == ["bytes", "ndarray"] for update in accepted)
    for update in accepted:
        packed = [k for k in update["keys"] if k.startswith(PACKED_PREFIX)]
        assert sorted(set(update["keys"]) - set(packed)) == sorted(counters)
        assert len(packed) == -(-(weights - len(counters)) // 1024) and update["values"] == len(counters)
        # seeded symmetric ciphertexts of one 36-bit prime: under 3x the float32 bytes (issue 26's goal)
        assert update["serialized_bytes"] < 3 * 4 * weights
    assert not any(update["decryptable"] for update in accepted), "the server holds no secret key"
    assert all("CKKSVector" not in update["kinds"] for update in plain_accepted), "the plain job's updates are numpy"
    assert set(encrypted) == set(SITES)
    for site in SITES:
        # cross-site evaluation ran on every (encrypted) model, the sites' own included
        assert set(encrypted[site]) == {"SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt", *SITES}
        assert global_dice(encrypted)[site] == pytest.approx(global_dice(plain)[site], abs=0.1)
    assert_beats_untrained(tmp_path / "he", site_file, encrypted)
