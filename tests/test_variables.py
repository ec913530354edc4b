"""Specification of Clara variables: ``{X}`` placeholders, their sources and their precedence.

Clara Train 4.1: global variables are defined in the config, "can be overwritten through the
environment.json or even command line" (``--set K=V``, highest priority). A string that is
exactly ``"{X}"`` becomes X's typed value; ``{X}`` inside a longer string is text.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from clara_fl.config.errors import ConfigError, UsageError
from clara_fl.config.mmar import load_config
from clara_fl.config.variables import Variables, parse_cli_value, parse_set_args

CONFIG = "config/config_train.json"


def make_mmar(root: Path, config: dict[str, Any], environment: dict[str, Any] | None = None) -> Path:
    """A minimal MMAR folder: config/config_train.json and config/environment.json."""
    (root / "config").mkdir(parents=True, exist_ok=True)
    (root / "config" / "config_train.json").write_text(json.dumps(config, indent=2))
    (root / "config" / "environment.json").write_text(json.dumps(environment or {}, indent=2))
    return root


# -- whole placeholders and interpolation -----------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [3, 0.25, True, False, [16, 16, 16], {"random_seed": 0, "nested": [1, 2]}],
    ids=["int", "float", "bool-true", "bool-false", "list", "dict"],
)
def test_whole_placeholder_keeps_the_variable_type(value):
    variables = Variables({"X": value})

    result = variables.substitute("{X}")

    assert result == value
    assert type(result) is type(value)


def test_whole_placeholder_gives_a_copy_so_components_cannot_change_the_variable():
    variables = Variables({"ROI": [16, 16, 16]})

    first = variables.substitute("{ROI}")
    first.append(99)

    assert variables.substitute("{ROI}") == [16, 16, 16]


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("run_{EPOCHS}_epochs", "run_3_epochs"),
        ("lr={LR}", "lr=0.5"),
        ("amp is {AMP}", "amp is True"),
        ("roi {ROI}", "roi [16, 16, 16]"),
        ("{NAME}/{NAME}.json", "spleen/spleen.json"),
    ],
)
def test_placeholder_inside_a_longer_string_is_text(template, expected):
    variables = Variables({"EPOCHS": 3, "LR": 0.5, "AMP": True, "ROI": [16, 16, 16], "NAME": "spleen"})

    assert variables.substitute(template) == expected


def test_substitution_walks_nested_lists_and_dicts_without_changing_the_input():
    config = {"train": {"model": {"args": {"in_channels": "{IN}", "channels": ["{C}", 32]}}}}
    before = json.loads(json.dumps(config))

    result = Variables({"IN": 1, "C": 16}).substitute(config)

    assert result == {"train": {"model": {"args": {"in_channels": 1, "channels": [16, 32]}}}}
    assert config == before


def test_dotted_placeholder_reads_a_key_of_a_dict_variable():
    variables = Variables({"determinism": {"random_seed": 7}})

    assert variables.substitute("{determinism.random_seed}") == 7


# -- precedence: config globals < environment.json < --set ---------------------------------------


@pytest.mark.parametrize(
    ("environment", "overrides", "expected"),
    [
        ({}, {}, 10),
        ({"epochs": 5}, {}, 5),
        ({"epochs": 5}, {"epochs": 2}, 2),
        ({}, {"epochs": 2}, 2),
    ],
    ids=["config-global", "environment-beats-config", "set-beats-environment", "set-beats-config"],
)
def test_variable_precedence_is_config_then_environment_then_command_line(tmp_path, environment, overrides, expected):
    mmar = make_mmar(tmp_path / "mmar", {"epochs": 10, "train": {"trainer": {"max_epochs": "{epochs}"}}}, environment)

    loaded = load_config(mmar, CONFIG, overrides=overrides)

    assert loaded.config["train"]["trainer"]["max_epochs"] == expected
    assert loaded.variables["epochs"] == expected


def test_command_line_value_parsed_from_text_keeps_its_type_in_the_config(tmp_path):
    mmar = make_mmar(
        tmp_path / "mmar", {"amp": True, "roi_size": [96, 96, 96], "train": {"a": "{amp}", "r": "{roi_size}"}}
    )

    loaded = load_config(mmar, CONFIG, overrides=parse_set_args(["amp=False", "roi_size=[16,16,16]"]))

    assert loaded.config["train"] == {"a": False, "r": [16, 16, 16]}


# -- --set values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3", 3),
        ("-2", -2),
        ("2e-4", 2e-4),
        ("0.5", 0.5),
        ("true", True),
        ("True", True),
        ("TRUE", True),
        ("false", False),
        ("False", False),
        ("yes", True),
        ("YES", True),
        ("no", False),
        ("No", False),
        ("on", True),
        ("On", True),
        ("off", False),
        ("OFF", False),
        ("[16, 16, 16]", [16, 16, 16]),
        ('{"random_seed": 1}', {"random_seed": 1}),
        ("models/model.pt", "models/model.pt"),
        ("validation", "validation"),
        ("[not json", "[not json"),
    ],
)
def test_parse_cli_value_gives_int_float_bool_json_or_text(text, expected):
    result = parse_cli_value(text)

    assert result == expected
    assert type(result) is type(expected)


def test_set_arguments_become_typed_values_and_multi_gpu_true_is_a_bool():
    values = parse_set_args(["multi_gpu=True", "epochs=2", "learning_rate=1e-3", "DATA_ROOT=/data/a=b"])

    assert values == {"multi_gpu": True, "epochs": 2, "learning_rate": 1e-3, "DATA_ROOT": "/data/a=b"}
    assert values["multi_gpu"] is True


@pytest.mark.parametrize("item", ["epochs", "=3"])
def test_set_argument_without_name_and_equals_is_a_usage_error(item):
    with pytest.raises(UsageError, match="NAME=VALUE"):
        parse_set_args([item])


# -- paths relative to the MMAR ------------------------------------------------------------------


def test_mmar_paths_and_relative_data_root_resolve_against_the_mmar_root(tmp_path):
    mmar = make_mmar(
        tmp_path / "mmar",
        {"train": {}},
        {
            "MMAR_CKPT_DIR": "models",
            "MMAR_CKPT": "models/model.pt",
            "MMAR_EVAL_OUTPUT_PATH": "eval",
            "DATA_ROOT": "../data",
        },
    )

    variables = load_config(mmar, CONFIG).variables

    root = str(mmar.resolve())
    assert variables["MMAR_ROOT"] == root
    assert variables["MMAR_CKPT_DIR"] == os.path.join(root, "models")
    assert variables["MMAR_CKPT"] == os.path.join(root, "models", "model.pt")
    assert variables["MMAR_EVAL_OUTPUT_PATH"] == os.path.join(root, "eval")
    assert variables["DATA_ROOT"] == str((tmp_path / "data").resolve())


def test_absolute_mmar_paths_and_data_root_stay_as_given(tmp_path):
    data = str(tmp_path / "elsewhere" / "data")
    ckpt = str(tmp_path / "elsewhere" / "ckpt")
    mmar = make_mmar(tmp_path / "mmar", {"train": {}}, {"MMAR_CKPT_DIR": ckpt, "DATA_ROOT": data})

    variables = load_config(mmar, CONFIG).variables

    assert variables["MMAR_CKPT_DIR"] == ckpt
    assert variables["DATA_ROOT"] == data


def test_other_relative_variables_are_left_alone(tmp_path):
    mmar = make_mmar(
        tmp_path / "mmar", {"train": {}}, {"TRAIN_DATALIST_KEY": "training", "PROCESSING_TASK": "segmentation"}
    )

    variables = load_config(mmar, CONFIG).variables

    assert variables["TRAIN_DATALIST_KEY"] == "training"
    assert variables["PROCESSING_TASK"] == "segmentation"


def test_a_variable_may_refer_to_another_variable(tmp_path):
    data = str(tmp_path / "data")
    mmar = make_mmar(
        tmp_path / "mmar",
        {"train": {"dataset": {"data_list_file_path": "{DATASET_JSON}"}}},
        {"DATA_ROOT": data, "DATASET_JSON": "{DATA_ROOT}/dataset.json"},
    )

    loaded = load_config(mmar, CONFIG)

    assert loaded.variables["DATASET_JSON"] == f"{data}/dataset.json"
    assert loaded.config["train"]["dataset"]["data_list_file_path"] == f"{data}/dataset.json"


def test_a_variable_referring_to_another_sees_that_variables_overridden_value(tmp_path):
    mmar = make_mmar(
        tmp_path / "mmar",
        {"train": {"p": "{DATASET_JSON}"}},
        {"DATA_ROOT": "/env/data", "DATASET_JSON": "{DATA_ROOT}/dataset.json"},
    )

    loaded = load_config(mmar, CONFIG, overrides={"DATA_ROOT": "/cli/data"})

    assert loaded.config["train"]["p"] == "/cli/data/dataset.json"


def test_a_variable_built_from_a_relative_mmar_path_points_inside_the_mmar(tmp_path):
    mmar = make_mmar(
        tmp_path / "mmar",
        {"train": {"saver": {"output_dir": "{PRED_DIR}"}, "dataset": {"data_list_file_path": "{DATASET_JSON}"}}},
        {
            "MMAR_EVAL_OUTPUT_PATH": "eval",
            "PRED_DIR": "{MMAR_EVAL_OUTPUT_PATH}/predictions",
            "DATA_ROOT": "data",
            "DATASET_JSON": "{DATA_ROOT}/dataset.json",
        },
    )

    loaded = load_config(mmar, CONFIG)

    root = str(mmar.resolve())
    # "{MMAR_EVAL_OUTPUT_PATH}" alone is <root>/eval, so "{MMAR_EVAL_OUTPUT_PATH}/predictions" must be under it too.
    assert loaded.config["train"]["saver"]["output_dir"] == os.path.join(root, "eval") + "/predictions"
    assert loaded.variables["DATASET_JSON"] == os.path.join(root, "data") + "/dataset.json"


# -- errors --------------------------------------------------------------------------------------


def test_undefined_variable_is_a_config_error_naming_file_json_path_and_close_name(tmp_path):
    mmar = make_mmar(
        tmp_path / "mmar",
        {"train": {"model": {"name": "UNet", "args": {"in_channels": "{INPUT_CHANNEL}"}}}},
        {"INPUT_CHANNELS": 1},
    )

    with pytest.raises(ConfigError) as raised:
        load_config(mmar, CONFIG)

    error = raised.value
    assert error.file == "config/config_train.json"
    assert error.path == "train.model.args.in_channels"
    assert "undefined variable '{INPUT_CHANNEL}'" in str(error)
    assert "did you mean 'INPUT_CHANNELS'?" in str(error)
    assert str(error).startswith("config/config_train.json: train.model.args.in_channels: ")


def test_undefined_variable_inside_a_list_names_the_list_index(tmp_path):
    mmar = make_mmar(
        tmp_path / "mmar", {"train": {"handlers": [{"name": "A"}, {"name": "B", "args": {"x": "a {NOPE} b"}}]}}
    )

    with pytest.raises(ConfigError) as raised:
        load_config(mmar, CONFIG)

    assert raised.value.path == "train.handlers[1].args.x"


def test_undefined_variable_used_in_environment_json_names_the_variable_and_close_name(tmp_path):
    mmar = make_mmar(
        tmp_path / "mmar", {"train": {}}, {"DATA_ROOT": "/data", "DATASET_JSON": "{DATA_RUT}/dataset.json"}
    )

    with pytest.raises(ConfigError) as raised:
        load_config(mmar, CONFIG)

    assert raised.value.path == "DATASET_JSON"
    assert raised.value.file.endswith("environment.json")
    assert "did you mean 'DATA_ROOT'?" in str(raised.value)


def test_variables_that_refer_to_each_other_in_a_cycle_are_a_config_error(tmp_path):
    mmar = make_mmar(tmp_path / "mmar", {"train": {}}, {"A": "{B}/x", "B": "{A}/y"})

    with pytest.raises(ConfigError, match="refers to itself"):
        load_config(mmar, CONFIG)


# -- code strings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    [
        "lambda x: {x}",
        "lambda x: {'pred': {x}}",
        "#[{n} for n in range(3)]",
        "  lambda: {unknown_name}",
    ],
)
def test_code_strings_keep_braces_that_are_not_variables(code):
    assert Variables({"epochs": 3}).substitute(code) == code


def test_code_strings_still_receive_known_variables():
    variables = Variables({"learning_rate": 0.5, "keys": ["pred", "label"]})

    assert variables.substitute("#{learning_rate} * 10") == "#0.5 * 10"
    assert (
        variables.substitute("lambda x: [x[k] for k in {keys}] + [{x}]")
        == 'lambda x: [x[k] for k in ["pred", "label"]] + [{x}]'
    )


def test_the_same_unknown_brace_outside_code_is_an_undefined_variable():
    with pytest.raises(ConfigError, match="undefined variable '{x}'"):
        Variables({"epochs": 3}).substitute("value {x}")


# -- the saved config ----------------------------------------------------------------------------


def test_saved_config_globals_are_the_effective_overridden_values(tmp_path):
    mmar = make_mmar(
        tmp_path / "mmar",
        {
            "epochs": 1260,
            "learning_rate": 2e-4,
            "amp": True,
            "roi_size": [96, 96, 96],
            "dont_load_ckpt_model": True,
            "determinism": {"random_seed": 0},
            "train": {"trainer": {"max_epochs": "{epochs}"}},
        },
        {"learning_rate": 1e-3},
    )

    loaded = load_config(mmar, CONFIG, overrides=parse_set_args(["epochs=2", "amp=False", "roi_size=[16,16,16]"]))

    assert loaded.config["epochs"] == 2
    assert loaded.config["learning_rate"] == 1e-3
    assert loaded.config["amp"] is False
    assert loaded.config["roi_size"] == [16, 16, 16]
    assert loaded.config["dont_load_ckpt_model"] is True
    assert loaded.config["determinism"] == {"random_seed": 0}
    assert loaded.config["train"]["trainer"]["max_epochs"] == 2


def test_set_with_a_dotted_name_changes_one_key_of_a_dict_global(tmp_path):
    mmar = make_mmar(
        tmp_path / "mmar", {"determinism": {"random_seed": 0}, "train": {"seed": "{determinism.random_seed}"}}, {}
    )

    loaded = load_config(mmar, CONFIG, overrides={"determinism.random_seed": 3})

    assert loaded.config["train"]["seed"] == 3
    assert loaded.config["determinism"] == {"random_seed": 3}


def test_a_dotted_name_in_environment_json_changes_one_key_of_a_dict_global(tmp_path):
    # clara-fl job create --set determinism.random_seed=3 writes it into the job's environment.json
    mmar = make_mmar(
        tmp_path / "mmar",
        {"determinism": {"random_seed": 0}, "train": {"seed": "{determinism.random_seed}"}},
        {"determinism.random_seed": 3},
    )

    loaded = load_config(mmar, CONFIG)

    assert loaded.config["train"]["seed"] == 3
    assert loaded.variables.get("determinism.random_seed") == 3
