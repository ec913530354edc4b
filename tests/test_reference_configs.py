"""Real Clara 4.1 configs from NVIDIA's clara-train-examples run unchanged.

Only environment.json (where the data is) and ``--set epochs=1`` differ from what users have; they run
under the restricted policy (``--safe``), as a site that did not write them runs them.
The configs crop 96^3 after resampling to 1 mm, so the synthetic volumes here are larger than elsewhere.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from clara_fl.cli import main
from tests.conftest import REFERENCE

GETTING_STARTED = REFERENCE / "GettingStarted" / "config"
BYOC = Path(__file__).parent / "reference_byoc"

pytestmark = pytest.mark.skipif(
    not GETTING_STARTED.is_dir(), reason="shared/reference is not checked out beside the repo"
)


@pytest.fixture(scope="module")
def reference_mmar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from clara_fl.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("reference")
    # one training case (a batch of 4 random 96^3 crops), one validation case, one test case
    data = make_synthetic_dataset(root / "data", cases=2, sites=1, shape=(100, 100, 52), val_fraction=0.5, test_cases=1)
    mmar = root / "mmar"
    shutil.copytree(GETTING_STARTED, mmar / "config")
    shutil.copytree(BYOC, mmar / "custom")
    env = json.loads((mmar / "config" / "environment.json").read_text())
    env.update(DATA_ROOT=str(data.root), DATASET_JSON=str(data.dataset_json))
    (mmar / "config" / "environment.json").write_text(json.dumps(env, indent=2))
    return mmar


def test_unet_config_trains_exports_validates_and_infers(reference_mmar: Path, capfd: pytest.CaptureFixture) -> None:
    mmar = str(reference_mmar)
    assert main(["train", "-m", mmar, "-c", "config/config_train_Unet.json", "--safe", "--set", "epochs=1"]) == 0
    checkpoint = torch.load(reference_mmar / "models" / "model.pt", weights_only=True)
    # The 4.0-era "dimensions" was translated, and the checkpoint remembers the config it came from.
    assert checkpoint["train_conf"]["train"]["model"]["name"] == "UNet"

    assert main(["export", "-m", mmar, "--input_shape", "[1, 1, 96, 96, 96]"]) == 0
    assert (reference_mmar / "models" / "model.ts").is_file()

    capfd.readouterr()
    assert main(["validate", "-m", mmar, "-c", "config/config_validation.json", "--safe"]) == 0
    printed = capfd.readouterr().out  # printed by the confined process --safe runs the command in
    assert "val_mean_dice:" in printed and "val_acc:" in printed
    assert (reference_mmar / "eval" / "metrics.csv").is_file()
    assert (reference_mmar / "eval" / "val_mean_dice_raw.csv").read_text().count(".nii.gz") == 1

    assert main(["infer", "-m", mmar, "-c", "config/config_inference.json", "--safe"]) == 0
    assert list((reference_mmar / "eval").glob("case_100/*.nii.gz"))


def test_byoc_config_uses_the_mmar_custom_network_and_loss(reference_mmar: Path, capfd: pytest.CaptureFixture) -> None:
    assert (
        main(
            ["train", "-m", str(reference_mmar), "-c", "config/trn_BYOC_Arch_loss.json", "--safe", "--set", "epochs=1"]
        )
        == 0
    )
    assert "MyDiceLoss: first call" in capfd.readouterr().out  # the --safe run's confined process used it
    checkpoint = torch.load(reference_mmar / "models" / "model.pt", weights_only=True)
    assert checkpoint["train_conf"]["train"]["model"]["path"] == "myNetworkArch.MyBasicUNet"
    assert any(k.startswith("conv_0.") for k in checkpoint["model"])  # BasicUNet's layer names
