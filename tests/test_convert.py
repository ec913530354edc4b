"""``clara-fl convert``: an MMAR's Clara 4.0 configs written out as explicit Clara 4.1 on today's MONAI names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clara_fl.cli import main
from clara_fl.config.clara40 import is_clara40
from clara_fl.config.compat import LEGACY_NAMES
from tests.conftest import copy_mmar

CLARA40_MMAR = Path(__file__).parent / "clara40_mmar"


@pytest.fixture
def clara40_mmar(tmp_path: Path, synthetic_data) -> Path:
    return copy_mmar(CLARA40_MMAR, tmp_path / "clara40", synthetic_data.root)


def _names(value: object) -> list[str]:
    if isinstance(value, dict):
        own = [str(value["name"]).split("#")[0]] if "name" in value else []
        return own + [n for item in value.values() for n in _names(item)]
    if isinstance(value, list):
        return [n for item in value for n in _names(item)]
    return []


def test_convert_writes_explicit_clara41_configs_on_todays_names(clara40_mmar: Path, tmp_path: Path) -> None:
    assert main(["convert", "-m", str(clara40_mmar), "-o", str(tmp_path / "out")]) == 0

    for name in ("config_train.json", "config_validation.json"):
        converted = json.loads((tmp_path / "out" / "config" / name).read_text())
        assert not is_clara40(converted)
        assert not set(_names(converted)) & set(LEGACY_NAMES)
        assert "lambda x: x[" not in json.dumps(converted)


def test_convert_prints_every_change_with_its_json_path(
    clara40_mmar: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    main(["convert", "-m", str(clara40_mmar), "-o", str(tmp_path / "out")])

    out = capsys.readouterr().out
    assert "  train.optimizer.args.params: added '#@model.parameters()' (implicit in Clara 4.0)" in out
    assert "  train.pre_transforms[1].name: 'AddChanneld' -> 'EnsureChannelFirstd#AddChanneld'" in out
    assert "  validate.metrics[0]: -> validate.key_metric (is_key_metric)" in out
    assert "  handlers[0].args.load_dict: ['model'] -> {'model': '@model'}" in out


def test_convert_leaves_the_original_mmar_unchanged(clara40_mmar: Path, tmp_path: Path) -> None:
    before = (clara40_mmar / "config" / "config_train.json").read_text()

    main(["convert", "-m", str(clara40_mmar), "-o", str(tmp_path / "out")])

    assert (clara40_mmar / "config" / "config_train.json").read_text() == before


def test_convert_refuses_an_existing_output_folder_and_writes_nothing(
    clara40_mmar: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    out.mkdir()

    assert main(["convert", "-m", str(clara40_mmar), "-o", str(out)]) == 2

    assert f"-o {out}: the folder already exists" in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_an_untranslatable_config_fails_before_anything_is_written(
    clara40_mmar: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config_file = clara40_mmar / "config" / "config_train.json"
    config = json.loads(config_file.read_text())
    config["train"]["loss"]["apply"] = ["DiceLoss", "FocalLoss"]
    config_file.write_text(json.dumps(config))

    assert main(["convert", "-m", str(clara40_mmar), "-o", str(tmp_path / "out")]) == 2

    assert "AutoML-only" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_converted_mmar_trains_to_the_same_weights_as_the_original(clara40_mmar: Path, tmp_path: Path) -> None:
    import torch

    converted = tmp_path / "converted"
    assert main(["convert", "-m", str(clara40_mmar), "-o", str(converted)]) == 0

    assert main(["train", "-m", str(clara40_mmar)]) == 0
    assert main(["train", "-m", str(converted)]) == 0

    original = torch.load(clara40_mmar / "models" / "final_model.pt", weights_only=False)["model"]
    rewritten = torch.load(converted / "models" / "final_model.pt", weights_only=False)["model"]
    assert original.keys() == rewritten.keys()
    assert all(torch.equal(original[k], rewritten[k]) for k in original)


def test_a_converted_mmar_keeps_the_compatibility_layer_for_its_clara40_custom_code(
    clara40_mmar: Path, tmp_path: Path
) -> None:
    from clara_fl.config.mmar import load_config

    main(["convert", "-m", str(clara40_mmar), "-o", str(tmp_path / "out")])

    assert load_config(tmp_path / "out", "config/config_train.json").clara40
