"""Clara 4.0 configs (implicit wiring) run unchanged: each construct, written from Clara 4.0's documented format."""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path

import pytest

from clara_fl.config.clara40 import is_clara40, translate_clara40
from clara_fl.config.errors import ConfigError
from tests.conftest import REFERENCE, copy_mmar

CLARA40_MMAR = Path(__file__).parent / "clara40_mmar"


def train_config(**train: object) -> dict:
    """A minimal Clara 4.0 train config; ``train`` replaces or adds train-section items."""
    config = {
        "epochs": 1,
        "amp": False,
        "train": {
            "model": {"name": "UNet", "args": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [2]}},
            "loss": {"name": "DiceLoss"},
            "optimizer": {"name": "Adam", "args": {"lr": 0.001}},
            "lr_scheduler": {"name": "StepLR", "args": {"step_size": 1}},
            "pre_transforms": [{"name": "LoadImaged", "args": {"keys": "image"}}],
            "dataset": {"name": "Dataset", "args": {"data": []}},
            "dataloader": {"name": "DataLoader", "args": {"batch_size": 1}},
            "inferer": {"name": "SimpleInferer"},
            "handlers": [],
            "trainer": {"name": "SupervisedTrainer", "args": {"max_epochs": "{epochs}"}},
        },
        "validate": {
            "dataloader": {"name": "DataLoader", "args": {"batch_size": 1, "dataset": []}},
            "evaluator": {"name": "SupervisedEvaluator"},
        },
    }
    config["train"].update(train)
    return config


# -- which configs are Clara 4.0 ------------------------------------------------------------------


def test_a_clara41_config_is_never_rewritten() -> None:
    config = json.loads((REFERENCE / "GettingStarted" / "config" / "config_train_Unet.json").read_text())

    translated, changes = translate_clara40(config)

    assert not is_clara40(config)
    assert translated == config and changes == []


def test_a_config_with_an_engine_and_no_references_is_clara40() -> None:
    assert is_clara40(train_config())


# -- implicit wiring -------------------------------------------------------------------------------


def test_optimizer_gets_the_model_parameters_and_the_scheduler_the_optimizer() -> None:
    translated, _ = translate_clara40(train_config())

    assert translated["train"]["optimizer"]["args"]["params"] == "#@model.parameters()"
    assert translated["train"]["lr_scheduler"]["args"]["optimizer"] == "@optimizer"


def test_dataset_gets_the_section_pre_transforms_and_the_dataloader_the_dataset() -> None:
    translated, _ = translate_clara40(train_config())

    assert translated["train"]["dataset"]["args"]["transform"] == "@pre_transforms"
    assert translated["train"]["dataloader"]["args"]["dataset"] == "@dataset"


def test_trainer_gets_every_component_of_its_section() -> None:
    translated, _ = translate_clara40(train_config(post_transforms=[], metrics=[{"name": "Accuracy"}]))

    assert translated["train"]["trainer"]["args"] == {
        "max_epochs": "{epochs}",
        "train_data_loader": "@dataloader",
        "network": "@model",
        "loss_function": "@loss",
        "optimizer": "@optimizer",
        "inferer": "@inferer",
        "postprocessing": "@post_transforms",
        "key_train_metric": "@key_metric",
        "train_handlers": "@handlers",
        "amp": "{amp}",
    }


def test_evaluator_uses_the_train_model_and_only_components_its_section_has() -> None:
    translated, _ = translate_clara40(train_config())

    assert translated["validate"]["evaluator"]["args"] == {"val_data_loader": "@dataloader", "network": "@model", "amp": "{amp}"}


def test_an_argument_the_config_gives_is_kept() -> None:
    config = train_config(optimizer={"name": "SGD", "args": {"lr": 0.1, "params": "#@model.parameters()"}})
    config["train"]["trainer"]["args"]["amp"] = True

    translated, changes = translate_clara40(config)

    assert translated["train"]["trainer"]["args"]["amp"] is True
    assert not any(c.path == "train.optimizer.args.params" for c in changes)


def test_the_original_config_is_not_changed() -> None:
    config = train_config()
    before = copy.deepcopy(config)

    translate_clara40(config)

    assert config == before


# -- metrics ---------------------------------------------------------------------------------------


def test_metrics_list_becomes_key_metric_and_additional_metrics() -> None:
    metrics = [
        {"name": "Accuracy", "log_label": "acc"},
        {"name": "MeanDice", "log_label": "dice", "is_key_metric": True},
    ]

    translated, _ = translate_clara40(train_config(metrics=metrics))

    train = translated["train"]
    assert "metrics" not in train
    assert train["key_metric"] == {"name": "MeanDice", "log_label": "dice"}
    assert train["additional_metrics"] == [{"name": "Accuracy", "log_label": "acc"}]
    assert train["trainer"]["args"]["additional_metrics"] == "@additional_metrics"


def test_without_is_key_metric_the_first_metric_is_the_key_metric() -> None:
    translated, changes = translate_clara40(train_config(metrics=[{"name": "Accuracy"}, {"name": "MeanDice"}]))

    assert translated["train"]["key_metric"] == {"name": "Accuracy"}
    assert any("none has is_key_metric" in c.what for c in changes)


def test_is_key_metric_that_is_not_a_boolean_is_a_one_line_error_with_its_path() -> None:
    with pytest.raises(ConfigError) as info:
        translate_clara40(train_config(metrics=[{"name": "Accuracy", "is_key_metric": "maybe"}]), "config/config_train.json")

    assert str(info.value).startswith("config/config_train.json: train.metrics[0].is_key_metric: ")


# -- handlers --------------------------------------------------------------------------------------


def test_handlers_get_their_implied_targets() -> None:
    handlers = [{"name": "ValidationHandler", "args": {"interval": 1}}, {"name": "LrScheduleHandler"}]

    translated, _ = translate_clara40(train_config(handlers=handlers))

    validation, scheduler = translated["train"]["handlers"]
    assert validation["args"]["validator"] == "@evaluator"
    assert scheduler["args"]["lr_scheduler"] == "@lr_scheduler"


def test_save_dict_and_load_dict_lists_become_dicts_of_references() -> None:
    handlers = [
        {"name": "CheckpointLoader", "args": {"load_path": "m.pt", "load_dict": ["model"]}},
        {"name": "CheckpointSaver", "args": {"save_dir": "models", "save_dict": ["model", "optimizer", "train_conf"]}},
    ]

    translated, _ = translate_clara40(train_config(handlers=handlers))

    loader, saver = translated["train"]["handlers"]
    assert loader["args"]["load_dict"] == {"model": "@model"}
    assert saver["args"]["save_dict"] == {"model": "@model", "optimizer": "@optimizer", "train_conf": "@conf"}


# -- code strings and component keys ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("lambda x: x['loss']", "#monai.handlers.from_engine(['loss'], first=True)"),
        ("lambda x: (x['pred'], x['label'])", "#monai.handlers.from_engine(['pred', 'label'])"),
        ('lambda out: [out["pred"], out["label"]]', "#monai.handlers.from_engine(['pred', 'label'])"),
    ],
)
def test_batched_output_lambdas_become_from_engine(code: str, expected: str) -> None:
    handlers = [{"name": "StatsHandler", "args": {"output_transform": code}}]

    translated, _ = translate_clara40(train_config(handlers=handlers))

    assert translated["train"]["handlers"][0]["args"]["output_transform"] == expected


def test_a_lambda_of_another_form_is_left_as_written() -> None:
    handlers = [{"name": "StatsHandler", "args": {"output_transform": "lambda x: None"}}]

    translated, _ = translate_clara40(train_config(handlers=handlers))

    assert translated["train"]["handlers"][0]["args"]["output_transform"] == "lambda x: None"


def test_translated_output_transforms_run_under_the_restricted_code_policy() -> None:
    from clara_fl.config.expressions import evaluator_for

    handlers = [{"name": "StatsHandler", "args": {"output_transform": "lambda x: x['loss']"}}]
    translated, _ = translate_clara40(train_config(handlers=handlers))
    code = translated["train"]["handlers"][0]["args"]["output_transform"]

    function = evaluator_for("restricted").evaluate(code, lambda name: None)

    assert function([{"loss": 0.5}, {"loss": 0.5}]) == 0.5


def test_name_and_path_on_one_component_keep_the_path() -> None:
    translated, changes = translate_clara40(train_config(loss={"name": "DiceLoss", "path": "monai.losses.DiceLoss"}))

    assert translated["train"]["loss"] == {"path": "monai.losses.DiceLoss"}
    assert [c.path for c in changes if "names the class" in c.what] == ["train.loss.name"]


# -- loading and running ---------------------------------------------------------------------------


@pytest.fixture
def clara40_mmar(tmp_path: Path, synthetic_data) -> Path:
    return copy_mmar(CLARA40_MMAR, tmp_path / "clara40", synthetic_data.root)


def test_each_translation_is_logged_once_with_its_json_path(clara40_mmar: Path, caplog: pytest.LogCaptureFixture) -> None:
    from clara_fl.config.mmar import load_config

    caplog.set_level(logging.INFO, logger="clara_fl.config.clara40")
    load_config(clara40_mmar, "config/config_train.json")
    load_config(clara40_mmar, "config/config_train.json")

    lines = [r.getMessage() for r in caplog.records if "train.optimizer.args.params" in r.getMessage()]
    assert lines == ["config/config_train.json: train.optimizer.args.params: added '#@model.parameters()' (implicit in Clara 4.0)"]


def test_a_clara40_mmar_trains_and_validates_its_checkpoint(clara40_mmar: Path) -> None:
    from clara_fl.cli import main

    assert main(["train", "-m", str(clara40_mmar)]) == 0
    assert main(["validate", "-m", str(clara40_mmar)]) == 0

    assert (clara40_mmar / "models" / "model.pt").is_file()
    assert (clara40_mmar / "eval" / "val_mean_dice_raw.csv").is_file()


def test_the_reference_clara40_fl_config_passes_the_restricted_checks(tmp_path: Path, synthetic_data) -> None:
    from clara_fl.config.mmar import load_config
    from clara_fl.workflows.build import check_config

    mmar = tmp_path / "adminMMAR"
    shutil.copytree(REFERENCE / "FL" / "adminMMAR" / "config", mmar / "config")
    shutil.copy(CLARA40_MMAR / "config" / "environment.json", mmar / "config")
    copy_mmar(mmar, tmp_path / "admin", synthetic_data.root)
    loaded = load_config(tmp_path / "admin", "config/config_train.json")
    context = _restricted_context(tmp_path / "admin", synthetic_data.root)

    check_config(loaded, context)

    assert loaded.config["train"]["trainer"]["args"]["network"] == "@model"


def _restricted_context(mmar: Path, data_root: Path):
    from clara_fl.config.expressions import evaluator_for
    from clara_fl.config.resolver import BuildContext
    from clara_fl.config.restrictions import Restrictions
    from clara_fl.workflows.runtime import ClaraRuntime

    context = BuildContext()
    context.runtime = ClaraRuntime()
    context.mmar_root = str(mmar)
    context.evaluator = evaluator_for("restricted")
    context.restrictions = Restrictions(str(mmar), [str(data_root)], context.runtime.search_modules)
    return context
