"""Specification of configuration errors as users see them through the ``clara-fl`` command.

Every broken config ends with exit code 2 and one informative line on stderr (the file, the JSON
path, what is wrong and, where there is one, the close name that was meant), no traceback, and
nothing written to the MMAR's models/ folder.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from clara_fl.cli import main
from clara_fl.config.errors import ConfigError
from tests.conftest import SPLEEN_MMAR, copy_mmar, tiny_set

TRAIN_CONFIG = "config/config_train.json"


def edit_train_config(mmar: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Load the MMAR's config_train.json, apply one change, write it back."""
    path = mmar / TRAIN_CONFIG
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config, indent=2))


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    """Run ``clara-fl`` in-process; returns the exit code and everything it printed."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def error_line(output: str, command: str = "train") -> str:
    lines = [line for line in output.splitlines() if line.startswith(f"clara-fl {command}: error: ")]
    assert len(lines) == 1, output
    return lines[0]


def assert_nothing_written(mmar: Path) -> None:
    models = mmar / "models"
    assert not models.exists() or not any(models.iterdir()), sorted(p.name for p in models.iterdir())


def train(capsys: pytest.CaptureFixture, mmar: Path, *extra_set: str) -> tuple[int, str]:
    return run_cli(capsys, "train", "-m", str(mmar), "--set", *tiny_set(), *extra_set)


def set_path(config: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node: Any = config
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def rename_key(config: dict[str, Any], dotted: str, new_key: str) -> None:
    *parents, last = dotted.split(".")
    node: Any = config
    for part in parents:
        node = node[part]
    node[new_key] = node.pop(last)


def alias_crop_transform(config: dict[str, Any]) -> None:
    config["train"]["pre_transforms"][3]["name"] = "CropForegroundd#cropForeground"
    config["validate"]["pre_transforms"][3] = {"ref": "cropForegound"}


BROKEN_CONFIGS = {
    "bad-reference": (
        lambda c: set_path(c, "train.optimizer.args.params", "#@modle.parameters()"),
        [
            "config/config_train.json: train.optimizer.args.params: ",
            "unknown reference '@modle'",
            "(did you mean '@model'?)",
        ],
    ),
    "bad-plain-reference": (
        lambda c: set_path(c, "validate.evaluator.args.network", "@modle"),
        [
            "config/config_train.json: validate.evaluator.args.network: ",
            "unknown reference '@modle'",
            "(did you mean '@model'?)",
        ],
    ),
    "unknown-name": (
        lambda c: set_path(c, "train.model.name", "UNett"),
        ["config/config_train.json: train.model.name: ", "unknown component name 'UNett'", "(did you mean 'UNet'?)"],
    ),
    "undefined-variable": (
        lambda c: set_path(c, "train.model.args.in_channels", "{INPUT_CHANNEL}"),
        [
            "config/config_train.json: train.model.args.in_channels: ",
            "undefined variable '{INPUT_CHANNEL}'",
            "(did you mean 'INPUT_CHANNELS'?)",
        ],
    ),
    "unexpected-argument": (
        lambda c: rename_key(c, "train.model.args.num_res_units", "num_res_unit"),
        [
            "config/config_train.json: train.model.args.num_res_unit: ",
            "unexpected argument 'num_res_unit' for UNet",
            "(did you mean 'num_res_units'?)",
        ],
    ),
    "bad-ref-alias": (
        alias_crop_transform,
        [
            "config/config_train.json: validate.pre_transforms[3]: ",
            "ref 'cropForegound' matches no transform name or alias",
            "(did you mean 'cropForeground'?)",
        ],
    ),
    "bad-ref-name": (
        lambda c: set_path(c, "validate.pre_transforms.3", {"ref": "CropForeground"}),
        [
            "config/config_train.json: validate.pre_transforms[3]: ",
            "ref 'CropForeground'",
            "(did you mean 'CropForegroundd'?)",
        ],
    ),
    "unknown-component-key": (
        lambda c: rename_key(c, "train.loss.args", "argz"),
        ["config/config_train.json: train.loss: ", "unexpected key 'argz' in a component", "(did you mean 'args'?)"],
    ),
    "disabled-not-a-bool": (
        lambda c: set_path(c, "train.handlers.1.disabled", "sometimes"),
        ["config/config_train.json: train.handlers[1].disabled: ", "'disabled' must be true or false"],
    ),
}


@pytest.mark.parametrize("case", list(BROKEN_CONFIGS))
def test_broken_train_config_is_one_line_error_with_exit_code_2(case, spleen_mmar, capsys):
    change, expected = BROKEN_CONFIGS[case]
    edit_train_config(spleen_mmar, change)

    code, output = train(capsys, spleen_mmar)

    assert code == 2
    line = error_line(output)
    for fragment in expected:
        assert fragment in line
    assert "Traceback" not in output
    assert_nothing_written(spleen_mmar)


def test_json_syntax_error_names_the_file_line_and_column(spleen_mmar, capsys):
    path = spleen_mmar / TRAIN_CONFIG
    text = path.read_text()
    broken = text.replace('"epochs": 1260,', '"epochs": 1260,,', 1)
    assert broken != text
    path.write_text(broken)
    offset = broken.index(",,") + 1  # the second comma is where a property name was expected
    line_no = broken.count("\n", 0, offset) + 1
    column = offset - broken.rfind("\n", 0, offset)

    code, output = train(capsys, spleen_mmar)

    assert code == 2
    line = error_line(output)
    assert "config/config_train.json" in line
    assert f"invalid JSON at line {line_no}, column {column}" in line
    assert "Traceback" not in output
    assert_nothing_written(spleen_mmar)


def test_missing_data_file_names_the_missing_file(tmp_path, synthetic_data, capsys):
    data = tmp_path / "data"
    shutil.copytree(synthetic_data.root, data)
    datalist = json.loads((data / "dataset.json").read_text())
    missing = data / datalist["training"][1]["image"]
    missing.unlink()
    mmar = copy_mmar(SPLEEN_MMAR, tmp_path / "spleen_ct_seg", data)

    code, output = train(capsys, mmar)

    assert code == 2
    line = error_line(output)
    assert "config/config_train.json: train.dataset.data_list_file_path: " in line
    assert f"image file not found: {missing}" in line
    assert "training[1].image" in line
    assert "Traceback" not in output
    assert_nothing_written(mmar)


def test_set_without_equals_is_a_command_line_error(spleen_mmar, capsys):
    code, output = run_cli(capsys, "train", "-m", str(spleen_mmar), "--set", "epochs")

    assert code == 2
    line = error_line(output)
    assert "--set epochs: expected NAME=VALUE" in line
    assert "Traceback" not in output
    assert_nothing_written(spleen_mmar)


def test_finetune_without_a_trained_checkpoint_names_the_missing_checkpoint(spleen_mmar, capsys):
    code, output = train(capsys, spleen_mmar, "dont_load_ckpt_model=False")

    assert code == 2
    line = error_line(output)
    assert "config/config_train.json: train.handlers[0].args.load_path: " in line
    assert f"checkpoint to load not found: {spleen_mmar / 'models' / 'model.pt'}" in line
    assert "dont_load_ckpt_model" in line
    assert "Traceback" not in output
    assert_nothing_written(spleen_mmar)


def test_validate_without_an_exported_model_names_the_missing_model_file(spleen_mmar, capsys):
    code, output = run_cli(capsys, "validate", "-m", str(spleen_mmar), "--set", *tiny_set())

    assert code == 2
    line = error_line(output, "validate")
    assert "config/config_validation.json: model[0].ts_path: " in line
    assert f"model file not found: {spleen_mmar / 'models' / 'model.ts'}" in line
    assert "Traceback" not in output
    assert not (spleen_mmar / "eval").exists()


def test_missing_mmar_folder_is_a_config_error(tmp_path, capsys):
    code, output = run_cli(capsys, "train", "-m", str(tmp_path / "no_such_mmar"))

    assert code == 2
    assert "MMAR folder not found" in error_line(output)
    assert "Traceback" not in output


def test_debug_re_raises_the_config_error(spleen_mmar, capsys):
    edit_train_config(spleen_mmar, lambda c: set_path(c, "train.model.name", "UNett"))

    with pytest.raises(ConfigError) as raised:
        main(["--debug", "train", "-m", str(spleen_mmar), "--set", *tiny_set()])

    assert raised.value.path == "train.model.name"
    assert "did you mean 'UNet'?" in str(raised.value)
    assert_nothing_written(spleen_mmar)
