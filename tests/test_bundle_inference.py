"""An MMAR without config_inference.json: its bundle's inference.json is derived from the validation config."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from clara_fl.bundle.inference import derive_inference_config
from clara_fl.config.errors import ConfigError

VARIABLES = {"INFER_DATALIST_KEY": "test", "MMAR_EVAL_OUTPUT_PATH": "eval", "PROCESSING_TASK": "segmentation"}


def validation_config(**items: Any) -> dict[str, Any]:
    """A Clara 4.1 validation config (spleen-like); ``items`` replace or add root items."""
    config: dict[str, Any] = {
        "roi_size": [16, 16, 16],
        "model": [{"ckpt_path": "{MMAR_CKPT}"}],
        "pre_transforms": [
            {"name": "LoadImaged", "args": {"keys": ["image", "label"]}},
            {"name": "EnsureChannelFirstd", "args": {"keys": ["image", "label"]}},
            {
                "name": "Spacingd",
                "args": {"keys": ["image", "label"], "pixdim": [1, 1, 1], "mode": ["bilinear", "nearest"]},
            },
        ],
        "dataset": {
            "name": "Dataset",
            "data_list_file_path": "{DATASET_JSON}",
            "data_list_key": "{VAL_DATALIST_KEY}",
            "args": {"transform": "@pre_transforms"},
        },
        "dataloader": {"name": "DataLoader", "args": {"dataset": "@dataset", "batch_size": 1}},
        "inferer": {"name": "SlidingWindowInferer", "args": {"roi_size": "{roi_size}", "sw_batch_size": 1}},
        "handlers": [
            {"name": "StatsHandler", "args": {"output_transform": "lambda x: None"}},
            {"name": "MetricsSaver", "args": {"save_dir": "{MMAR_EVAL_OUTPUT_PATH}", "metrics": ["val_mean_dice"]}},
        ],
        "post_transforms": [
            {"name": "Activationsd", "args": {"keys": "pred", "softmax": True}},
            {"name": "AsDiscreted", "args": {"keys": ["pred", "label"], "argmax": [True, False], "to_onehot": 2}},
        ],
        "key_metric": {"name": "MeanDice", "log_label": "val_mean_dice", "args": {"include_background": False}},
        "additional_metrics": [{"name": "Accuracy", "log_label": "val_acc"}],
        "evaluator": {
            "name": "SupervisedEvaluator",
            "args": {
                "val_data_loader": "@dataloader",
                "network": "@model",
                "inferer": "@inferer",
                "postprocessing": "@post_transforms",
                "key_val_metric": "@key_metric",
                "additional_metrics": "@additional_metrics",
                "val_handlers": "@handlers",
            },
        },
    }
    config.update(items)
    return config


def derive(config: dict[str, Any], **variables: Any) -> dict[str, Any]:
    return derive_inference_config(config, "config/config_validation.json", {**VARIABLES, **variables}, frozenset())


def test_metrics_and_the_handlers_that_need_them_are_left_out() -> None:
    derived = derive(validation_config())

    assert "key_metric" not in derived and "additional_metrics" not in derived
    assert [h["name"] for h in derived["handlers"]] == ["StatsHandler"]
    assert {"key_val_metric", "additional_metrics"}.isdisjoint(derived["evaluator"]["args"])


def test_no_label_is_loaded_and_other_transforms_skip_the_missing_label() -> None:
    derived = derive(validation_config())

    loader, channel_first, spacing = derived["pre_transforms"]
    assert loader["args"]["keys"] == ["image"]
    assert channel_first["args"]["allow_missing_keys"] is True
    assert spacing["args"]["allow_missing_keys"] is True and spacing["args"]["mode"] == ["bilinear", "nearest"]


def test_the_inference_datalist_is_read() -> None:
    derived = derive(validation_config())

    assert derived["dataset"]["data_list_key"] == "{INFER_DATALIST_KEY}"


def test_without_an_inference_datalist_variable_the_msd_test_list_is_read() -> None:
    variables = {k: v for k, v in VARIABLES.items() if k != "INFER_DATALIST_KEY"}

    derived = derive_inference_config(validation_config(), "config/config_validation.json", variables, frozenset())

    assert derived["dataset"]["data_list_key"] == "test"


def test_the_post_transforms_start_by_deleting_the_label_the_engine_outputs_as_none() -> None:
    derived = derive(validation_config())

    assert derived["post_transforms"][0] == {"name": "DeleteItemsd", "args": {"keys": ["label"]}}


def test_a_mask_saver_is_added_after_the_post_transforms_which_keep_argmax_but_not_one_hot() -> None:
    derived = derive(validation_config())

    discretize, saver = derived["post_transforms"][2:]
    assert discretize["args"] == {"keys": ["pred", "label"], "argmax": [True, False], "allow_missing_keys": True}
    assert saver == {
        "name": "SaveImaged",
        "args": {"keys": "pred", "output_dir": "{MMAR_EVAL_OUTPUT_PATH}", "output_postfix": "seg", "resample": False},
    }


def test_a_disabled_saver_of_the_validation_config_is_enabled_instead_of_adding_one() -> None:
    config = validation_config()
    config["post_transforms"].append({"name": "SaveImaged", "disabled": True, "args": {"keys": "pred"}})

    derived = derive(config)

    assert derived["post_transforms"][-1] == {"name": "SaveImaged", "args": {"keys": "pred"}}
    assert [t["name"] for t in derived["post_transforms"]].count("SaveImaged") == 1


def test_a_classification_task_gets_a_classification_saver_handler() -> None:
    derived = derive(validation_config(), PROCESSING_TASK="classification")

    assert derived["handlers"][-1]["name"] == "ClassificationSaver"
    assert all(t["name"] != "SaveImaged" for t in derived["post_transforms"])


def test_a_transform_that_needs_the_label_beyond_its_keys_is_a_located_error() -> None:
    config = validation_config()
    config["pre_transforms"].append({"name": "CropForegroundd", "args": {"keys": "image", "source_key": "label"}})

    with pytest.raises(ConfigError) as error:
        derive(config)

    assert str(error.value).startswith("config/config_validation.json: pre_transforms[3].args.source_key: ")


def test_the_validation_config_is_not_changed() -> None:
    config = validation_config()
    before = copy.deepcopy(config)

    derive(config)

    assert config == before
