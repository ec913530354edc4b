"""Models trained from Clara 4.0 configs export and validate from their checkpoints.

Clara 4.0's ``save_dict`` lists never held ``train_conf``: a checkpoint without it gets its network from the
MMAR's own train config, and a 4.0 training in clara-fl saves ``train_conf`` as Clara 4.1 does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from clara_fl.cli import main
from clara_fl.config.clara40 import translate_clara40
from clara_fl.config.errors import ConfigError
from tests.conftest import copy_mmar
from tests.test_clara40 import CLARA40_MMAR, train_config


@pytest.fixture(scope="module")
def trained_clara40(tmp_path_factory: pytest.TempPathFactory, synthetic_data) -> Path:
    """The Clara 4.0 test MMAR trained for one tiny epoch (read-only for tests)."""
    mmar = copy_mmar(CLARA40_MMAR, tmp_path_factory.mktemp("trained40") / "clara40", synthetic_data.root)
    assert main(["train", "-m", str(mmar)]) == 0
    return mmar


@pytest.fixture
def clara40_checkpoint_without_train_conf(trained_clara40: Path, tmp_path: Path) -> Path:
    """A copy of the trained MMAR whose models/model.pt is as Clara 4.0 saved it: weights, no train_conf."""
    mmar = tmp_path / "clara40"
    shutil.copytree(trained_clara40, mmar)
    checkpoint = torch.load(mmar / "models" / "model.pt", weights_only=True)
    torch.save({"model": checkpoint["model"]}, mmar / "models" / "model.pt")
    return mmar


def test_a_clara40_train_config_saver_also_saves_the_config() -> None:
    handlers = [{"name": "CheckpointSaver", "args": {"save_dir": "models", "save_dict": ["model", "optimizer"]}}]

    translated, _ = translate_clara40(train_config(handlers=handlers))

    save_dict = translated["train"]["handlers"][0]["args"]["save_dict"]
    assert save_dict == {"model": "@model", "optimizer": "@optimizer", "train_conf": "@conf"}


def test_a_fresh_clara40_training_saves_train_conf_with_the_network(trained_clara40: Path) -> None:
    final = torch.load(trained_clara40 / "models" / "final_model.pt", weights_only=True)

    assert final["train_conf"]["train"]["model"]["name"] == "UNet"


def test_a_clara40_checkpoint_without_train_conf_exports_from_the_mmar_train_config(
    clara40_checkpoint_without_train_conf: Path,
) -> None:
    from clara_fl.config.resolver import BuildContext
    from clara_fl.runtime.checkpoint import load_checkpoint_model

    mmar = clara40_checkpoint_without_train_conf

    code = main(["export", "-m", str(mmar), "--input_shape", "[1, 1, 16, 16, 16]"])

    assert code == 0
    scripted = torch.jit.load(str(mmar / "models" / "model.ts"))
    network = load_checkpoint_model(str(mmar / "models" / "model.pt"), BuildContext(mmar_root=str(mmar)))
    example = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.allclose(scripted(example), network(example), atol=1e-5)


def test_a_clara40_checkpoint_without_train_conf_validates_from_its_ckpt_path(
    clara40_checkpoint_without_train_conf: Path, capsys: pytest.CaptureFixture
) -> None:
    mmar = clara40_checkpoint_without_train_conf
    config = json.loads((mmar / "config" / "config_validation.json").read_text())
    config["model"] = [
        {"ts_path": "{MMAR_TORCHSCRIPT}", "disabled": "{dont_load_ts_model}"},
        {"ckpt_path": "{MMAR_CKPT}", "disabled": "{dont_load_ckpt_model}"},
    ]
    config["handlers"] = [h for h in config["handlers"] if h["name"] != "CheckpointLoader"]
    (mmar / "config" / "config_validation_ckpt.json").write_text(json.dumps(config))

    code = main(["validate", "-m", str(mmar), "-c", "config/config_validation_ckpt.json"])

    assert code == 0
    assert "val_mean_dice:" in capsys.readouterr().out


def test_a_checkpoint_without_train_conf_outside_an_mmar_is_a_located_error(tmp_path: Path) -> None:
    from clara_fl.config.resolver import BuildContext
    from clara_fl.runtime.checkpoint import load_checkpoint_model

    path = tmp_path / "model.pt"
    torch.save({"model": {"weight": torch.zeros(1)}}, path)

    with pytest.raises(ConfigError) as error:
        load_checkpoint_model(str(path), BuildContext(mmar_root=str(tmp_path)))

    assert str(error.value).startswith(f"{path}: checkpoint has no 'train_conf'")
    assert "the MMAR has no config/config_train.json" in str(error.value)
