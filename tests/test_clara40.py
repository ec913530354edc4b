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

needs_reference = pytest.mark.skipif(
    not REFERENCE.is_dir(), reason="shared/reference is not checked out beside the repo"
)

CLARA40_MMAR = Path(__file__).parent / "clara40_mmar"


def train_config(**train: object) -> dict:
    """A minimal Clara 4.0 train config; ``train`` replaces or adds train-section items."""
    config = {
        "epochs": 1,
        "amp": False,
        "train": {
            "model": {
                "name": "UNet",
                "args": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [2]},
            },
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


@needs_reference
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

    assert translated["validate"]["evaluator"]["args"] == {
        "val_data_loader": "@dataloader",
        "network": "@model",
        "amp": "{amp}",
    }


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
        translate_clara40(
            train_config(metrics=[{"name": "Accuracy", "is_key_metric": "maybe"}]), "config/config_train.json"
        )

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


# -- the same rules for components nested in arguments, at any depth -------------------------------

NESTED_PATHS = {
    1: "train.trainer.args.iteration_update.args.{key}",
    2: "train.trainer.args.iteration_update.args.{key}[0]",
    3: "train.trainer.args.iteration_update.args.{key}[0].args.{key}[0]",
}


def nested(component: dict, depth: int, key: str = "transforms") -> tuple[dict, str]:
    """A Clara 4.0 train config whose trainer's ``iteration_update`` (a deepgrow Interaction) holds ``component``
    under ``key``, and the component's JSON path: at depth 1 as the argument, at depth 2 as an item of a list of
    components there, at depth 3 in such a list inside a component that is itself such an item."""
    value = {1: component, 2: [component], 3: [{"name": "Compose", "args": {key: [component]}}]}[depth]
    interaction = {"name": "Interaction", "args": {"deepgrow_probability": 0.5, "train": True, key: value}}
    trainer = {"name": "SupervisedTrainer", "args": {"max_epochs": "{epochs}", "iteration_update": interaction}}
    return train_config(trainer=trainer), NESTED_PATHS[depth].format(key=key)


def item_at(config: dict, path: str) -> object:
    """The item at a JSON path such as ``train.trainer.args.x[0].args.y``."""
    value: object = config
    for part in path.replace("[", ".[").split("."):
        value = value[int(part[1:-1])] if part.startswith("[") else value[part]  # type: ignore[index]
    return value


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_name_and_path_on_a_nested_component_keep_the_path(depth: int) -> None:
    guidance = {"name": "AddGuidanceSignald", "path": "monai.apps.deepgrow.transforms.AddGuidanceSignald"}
    config, path = nested(guidance, depth)

    translated, changes = translate_clara40(config)

    assert item_at(translated, path) == {"path": "monai.apps.deepgrow.transforms.AddGuidanceSignald"}
    assert [c.path for c in changes if "names the class" in c.what] == [f"{path}.name"]


def test_a_nested_component_with_name_and_path_is_built_from_its_path() -> None:
    from clara_fl.config.resolver import ConfigResolver

    flip = {"name": "RandFlipd", "path": "monai.transforms.RandFlipd", "args": {"keys": "image", "prob": 1.0}}
    compose = {"name": "Compose", "args": {"transforms": [{"name": "OneOf", "args": {"transforms": [flip]}}]}}
    translated, _ = translate_clara40(
        train_config(dataset={"name": "Dataset", "args": {"data": [], "transform": compose}})
    )

    dataset = ConfigResolver(translated).get("dataset", "train")

    assert type(dataset.transform.transforms[0].transforms[0]).__name__ == "RandFlipd"


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_custom_transforms_nested_in_arguments_run_in_the_compatibility_layer(depth: int) -> None:
    config, path = nested({"path": "my_code.AddGuidance#guidance", "args": {"keys": "image"}}, depth)

    translated, changes = translate_clara40(config)

    assert item_at(translated, path) == {
        "path": "clara_fl.components.legacy_transform.LegacyTransform#guidance",
        "args": {"transform": {"path": "my_code.AddGuidance", "args": {"keys": "image"}}, "to_numpy": False},
    }
    assert f"{path}: custom transform run as in MONAI 0.5 (*_meta_dict keys)" in [str(c) for c in changes]


def test_a_custom_transform_nested_in_a_pre_transform_before_to_tensor_gets_numpy_items() -> None:
    early = {"name": "OneOf", "args": {"transforms": [{"path": "my_code.Early"}]}}
    late = {"name": "OneOf", "args": {"transforms": [{"path": "my_code.Late"}]}}
    transforms = [early, {"name": "ToTensord", "args": {"keys": "image"}}, late]

    translated, _ = translate_clara40(train_config(pre_transforms=transforms))

    wrapped_early, _, wrapped_late = translated["train"]["pre_transforms"]
    assert wrapped_early["args"]["transforms"][0]["args"]["to_numpy"] is True
    assert wrapped_late["args"]["transforms"][0]["args"]["to_numpy"] is False


def test_custom_code_in_a_custom_component_arguments_is_not_wrapped() -> None:
    inner = {"path": "my_code.Inner", "args": {"keys": "image"}}
    config, path = nested({"path": "my_code.CustomCompose", "args": {"transforms": [inner]}}, 1)

    translated, _ = translate_clara40(config)

    assert item_at(translated, path)["args"]["transform"]["args"]["transforms"] == [inner]  # type: ignore[index]


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_batched_output_lambdas_nested_in_arguments_become_from_engine(depth: int) -> None:
    stats = {"name": "StatsHandler", "args": {"output_transform": "lambda x: x['loss']"}}
    config, path = nested(stats, depth, key="handlers")

    translated, _ = translate_clara40(config)

    output_transform = item_at(translated, f"{path}.args.output_transform")
    assert output_transform == "#monai.handlers.from_engine(['loss'], first=True)"


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_handlers_nested_in_arguments_get_their_implied_targets(depth: int) -> None:
    config, path = nested({"name": "ValidationHandler", "args": {"interval": 1}}, depth, key="handlers")

    translated, _ = translate_clara40(config)

    assert item_at(translated, f"{path}.args.validator") == "@evaluator"


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_custom_handlers_nested_in_arguments_see_batched_engine_output(depth: int) -> None:
    config, path = nested({"path": "my_code.Recorder"}, depth, key="handlers")

    translated, _ = translate_clara40(config)

    assert item_at(translated, path) == {
        "path": "clara_fl.components.legacy_handler.LegacyHandler#Recorder",
        "args": {"handler": {"path": "my_code.Recorder"}},
    }


# -- loading and running ---------------------------------------------------------------------------


@pytest.fixture
def clara40_mmar(tmp_path: Path, synthetic_data) -> Path:
    return copy_mmar(CLARA40_MMAR, tmp_path / "clara40", synthetic_data.root)


def test_each_translation_is_logged_once_with_its_json_path(
    clara40_mmar: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from clara_fl.config.clara40 import changes
    from clara_fl.config.mmar import load_config

    changes._logged.clear()  # once per process: another test may have read the same config first
    caplog.set_level(logging.INFO, logger="clara_fl.config.clara40")
    load_config(clara40_mmar, "config/config_train.json")
    load_config(clara40_mmar, "config/config_train.json")

    lines = [r.getMessage() for r in caplog.records if "train.optimizer.args.params" in r.getMessage()]
    assert lines == [
        "config/config_train.json: train.optimizer.args.params: added '#@model.parameters()' (implicit in Clara 4.0)"
    ]


def test_a_clara40_mmar_trains_and_validates_its_checkpoint(clara40_mmar: Path) -> None:
    from clara_fl.cli import main

    assert main(["train", "-m", str(clara40_mmar)]) == 0
    assert main(["validate", "-m", str(clara40_mmar)]) == 0

    assert (clara40_mmar / "models" / "model.pt").is_file()
    assert (clara40_mmar / "eval" / "val_mean_dice_raw.csv").is_file()


@needs_reference
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


# -- what MONAI renamed or removed ------------------------------------------------------------------


def _flat_validation(**items: object) -> dict:
    """A minimal Clara 4.1 validation config (explicit references) with ``items`` added."""
    config = {
        "pre_transforms": [{"name": "LoadImaged", "args": {"keys": "image"}}],
        "handlers": [],
        "evaluator": {"name": "SupervisedEvaluator", "args": {"val_data_loader": "@dataloader", "network": "@model"}},
    }
    config.update(items)
    return config


def test_transform_inverter_handler_becomes_invertd_in_post_transforms() -> None:
    from clara_fl.config.legacy import translate_legacy

    inverter = {
        "name": "TransformInverter",
        "args": {
            "transform": "@pre_transforms",
            "loader": "@dataloader",
            "output_keys": "pred",
            "batch_keys": "image",
            "nearest_interp": False,
        },
    }

    translated, changes = translate_legacy(_flat_validation(handlers=[inverter]))

    assert translated["handlers"] == []
    assert translated["post_transforms"] == [
        {
            "name": "Invertd",
            "args": {"keys": "pred", "orig_keys": "image", "transform": "@pre_transforms", "nearest_interp": False},
        }
    ]
    assert translated["evaluator"]["args"]["postprocessing"] == "@post_transforms"
    assert any(c.path == "handlers[0]" and "Invertd at post_transforms[0]" in c.what for c in changes)


def test_monai06_inverter_postfix_keeps_the_original_beside_the_inverse() -> None:
    from clara_fl.config.legacy import translate_legacy

    inverter = {
        "name": "TransformInverter",
        "args": {"transform": "@pre_transforms", "output_keys": ["pred"], "postfix": "inverted"},
    }

    translated, _ = translate_legacy(
        _flat_validation(handlers=[inverter], post_transforms=[{"name": "Activationsd", "args": {"keys": "pred"}}])
    )

    copy_items, invert = translated["post_transforms"][1:]
    assert copy_items == {"name": "CopyItemsd", "args": {"keys": ["pred"], "times": 1, "names": ["pred_inverted"]}}
    assert invert["args"]["keys"] == ["pred_inverted"]


def test_segmentation_saver_handler_becomes_save_imaged() -> None:
    from clara_fl.config.legacy import translate_legacy

    saver = {
        "name": "SegmentationSaver",
        "disabled": "{dont_save_segmentation}",
        "args": {
            "output_dir": "eval",
            "output_postfix": "seg",
            "batch_transform": "lambda x: x['image_meta_dict']",
            "output_transform": "lambda x: x['pred']",
        },
    }

    translated, _ = translate_legacy(_flat_validation(handlers=[saver]))

    assert translated["post_transforms"] == [
        {
            "name": "SaveImaged",
            "args": {"keys": "pred", "output_dir": "eval", "output_postfix": "seg"},
            "disabled": "{dont_save_segmentation}",
        }
    ]


def test_torchvision_fully_conv_model_maps_to_torchvision_fc_model_arguments() -> None:
    from monai.networks.nets import TorchVisionFCModel

    from clara_fl.config.compat import LEGACY_NAMES, translate_args

    args = translate_args(
        "TorchVisionFullyConvModel", TorchVisionFCModel, {"model_name": "resnet18", "n_classes": 1, "pool_size": [7, 7]}
    )

    assert LEGACY_NAMES["TorchVisionFullyConvModel"].replacement == "TorchVisionFCModel"
    assert LEGACY_NAMES["TorchVisionFullyConvModel"].defaults == {"use_conv": True}
    assert args == {"model_name": "resnet18", "num_classes": 1, "pool": ["avg", {"kernel_size": [7, 7], "stride": 1}]}


def test_persistent_dataset_without_cache_dir_gets_no_cache_as_before() -> None:
    from monai.data import PersistentDataset

    from clara_fl.config.compat import translate_args

    assert translate_args("PersistentDataset", PersistentDataset, {"transform": None}) == {
        "transform": None,
        "cache_dir": None,
    }


def test_deepgrow_batched_argument_is_dropped() -> None:
    from monai.apps.deepgrow.transforms import AddRandomGuidanced

    from clara_fl.config.compat import translate_args

    args = translate_args(
        "AddRandomGuidanced",
        AddRandomGuidanced,
        {"guidance": "guidance", "discrepancy": "discrepancy", "probability": "probability", "batched": True},
    )

    assert "batched" not in args


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("#monai.transforms.AsDiscrete(threshold_values=True)", "#monai.transforms.AsDiscrete(threshold=0.5)"),
        (
            "#monai.transforms.AsDiscrete(threshold_values=True, logit_thresh=0.3)",
            "#monai.transforms.AsDiscrete(threshold=0.3)",
        ),
        (
            "#monai.transforms.AsDiscrete(threshold_values=True, to_onehot=None)",
            "#monai.transforms.AsDiscrete(threshold=0.5, to_onehot=None)",
        ),
    ],
)
def test_threshold_values_inside_expressions_becomes_threshold(code: str, expected: str) -> None:
    from clara_fl.config.compat import translate_expression

    assert translate_expression(code) == expected


@needs_reference
def test_a_class_whose_package_is_missing_is_a_one_line_error_naming_it(tmp_path: Path) -> None:
    from clara_fl.cli import main

    mmar = tmp_path / "dp"
    shutil.copytree(REFERENCE / "DomainExamples" / "DigitalPathology" / "MMAR_DP" / "config", mmar / "config")
    shutil.copy(CLARA40_MMAR / "config" / "environment.json", mmar / "config")
    if _installed("torchvision"):
        pytest.skip("torchvision is installed here; the slide reader is checked instead by the next test")

    code, err = _run_cli(main, ["train", "-m", str(mmar)])

    assert code == 2
    assert err.strip().endswith(
        "train.model: TorchVisionFCModel needs the package torchvision, which is not installed here"
    )
    assert sorted(p.name for p in mmar.iterdir()) == ["config"]


def test_a_whole_slide_reader_that_is_not_installed_is_named() -> None:
    from clara_fl.config.compat import missing_requirement

    if _installed("cucim"):
        pytest.skip("cucim is installed here")

    error = missing_requirement("PatchWSIDataset", {"image_reader_name": "cuCIM"})

    assert error is not None and "cucim" in str(error)


def test_automl_search_annotations_are_ignored_outside_automl(caplog: pytest.LogCaptureFixture) -> None:
    from clara_fl.config.legacy import translate_legacy

    caplog.set_level(logging.INFO, logger="clara_fl.config.automl")
    model = {
        "name": "UNet",
        "args": {},
        "search": [{"args": ["channels"], "domain": "net", "type": "enum", "targets": [[[4, 8]]]}],
    }

    translated, _ = translate_legacy(train_config(model=model), "automl_search.json")

    assert "search" not in translated["train"]["model"]
    assert [r.getMessage() for r in caplog.records] == [
        "automl_search.json: AutoML 'search' annotations ignored outside AutoML (train.model.search)"
    ]


def test_automl_apply_alternatives_are_a_clear_error() -> None:
    from clara_fl.config.legacy import translate_legacy

    loss = {"name": "DiceLoss", "apply": ["DiceLoss", "FocalLoss"]}

    with pytest.raises(ConfigError) as info:
        translate_legacy(train_config(loss=loss), "config/config_train.json")

    assert str(info.value).startswith(
        "config/config_train.json: train.loss.apply: 'apply' (a choice between alternative components) "
        "is an AutoML-only"
    )


def test_variables_inside_a_disabled_component_are_not_required() -> None:
    from clara_fl.config.variables import Variables

    variables = Variables({"dont_save": True})
    config = {
        "handlers": [
            {"name": "SegmentationSaver", "disabled": "{dont_save}", "args": {"output_dir": "{UNDEFINED_DIR}"}}
        ]
    }

    substituted = variables.substitute(config)

    assert substituted["handlers"][0]["disabled"] is True


def test_variables_inside_an_enabled_component_are_still_required() -> None:
    from clara_fl.config.variables import Variables

    config = {"handlers": [{"name": "StatsHandler", "disabled": False, "args": {"tag_name": "{UNDEFINED}"}}]}

    with pytest.raises(ConfigError, match="undefined variable '{UNDEFINED}'"):
        Variables({}).substitute(config)


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _run_cli(main, argv: list[str]) -> tuple[int, str]:
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue()


def test_a_config_mixing_40_constructs_with_references_is_read_as_41_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = train_config(
        metrics=[{"name": "Accuracy"}], optimizer={"name": "Adam", "args": {"params": "#@model.parameters()"}}
    )

    translated, changes = translate_clara40(config, "mixed.json")

    assert translated == config and changes == []
    assert "mixed.json: train.metrics, train.trainer, validate.evaluator look like Clara 4.0" in caplog.text


# -- custom code written for MONAI 0.5-0.8 ---------------------------------------------------------


def test_custom_transforms_of_a_clara40_config_run_in_the_compatibility_layer() -> None:
    transforms = [
        {"path": "my_code.BeforeTensor", "args": {"keys": "image"}},
        {"name": "ToTensord", "args": {"keys": "image"}},
        {"path": "my_code.AfterTensor#late"},
        {"path": "monai.transforms.Identityd", "args": {"keys": "image"}},
    ]

    translated, _ = translate_clara40(train_config(pre_transforms=transforms))

    before, _, after, library = translated["train"]["pre_transforms"]
    assert before == {
        "path": "clara_fl.components.legacy_transform.LegacyTransform#BeforeTensor",
        "args": {"transform": {"path": "my_code.BeforeTensor", "args": {"keys": "image"}}, "to_numpy": True},
    }
    assert after["path"].endswith("LegacyTransform#late") and after["args"]["to_numpy"] is False
    assert library == transforms[3]


def test_legacy_transform_hands_numpy_and_meta_dicts_and_returns_metatensors() -> None:
    import numpy as np
    import torch
    from monai.data import MetaTensor

    from clara_fl.components.legacy_transform import LegacyTransform

    seen = {}

    def old_style(data: dict) -> dict:
        seen["types"] = type(data["image"]), data["image_meta_dict"]["filename_or_obj"]
        data["image_meta_dict"]["spacing_checked"] = True
        return {**data, "image": data["image"] * 2}

    item = {"image": MetaTensor(torch.ones(1, 2, 2), meta={"filename_or_obj": "case_1.nii.gz"})}

    out = LegacyTransform(old_style, to_numpy=True)(item)

    assert seen["types"] == (np.ndarray, "case_1.nii.gz")
    assert isinstance(out["image"], MetaTensor) and float(out["image"].sum()) == 8.0
    assert out["image"].meta["filename_or_obj"] == "case_1.nii.gz" and out["image"].meta["spacing_checked"] is True
    assert "image_meta_dict" not in out


def test_names_monai_removed_are_added_back_only_where_missing() -> None:
    import monai.metrics
    import monai.transforms

    from clara_fl.components.legacy_monai import install_legacy_names

    ensure_typed = monai.transforms.EnsureTyped
    install_legacy_names()

    from monai.metrics import compute_meandice

    assert compute_meandice is monai.metrics.compute_dice
    assert monai.transforms.EnsureTyped is ensure_typed
    assert monai.transforms.AddChanneld(keys="image")({"image": torch_ones()})["image"].shape == (1, 2, 2)


def torch_ones():
    import torch

    return torch.ones(2, 2)


def test_a_clara40_mmar_with_custom_code_passes_the_restricted_checks(
    clara40_mmar: Path, synthetic_data, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from clara_fl.config.mmar import load_config
    from clara_fl.workflows.build import check_config

    # An earlier test imported this module from another copy of the MMAR, which the policy rightly refuses.
    monkeypatch.delitem(sys.modules, "legacy_transforms", raising=False)

    loaded = load_config(clara40_mmar, "config/config_train.json")

    check_config(loaded, _restricted_context(clara40_mmar, synthetic_data.root))

    assert loaded.config["train"]["pre_transforms"][3]["path"].endswith("LegacyTransform#ClipIntensityd")


def _with_legacy_handler_and_loss(mmar: Path) -> None:
    path = mmar / "config" / "config_train.json"
    config = json.loads(path.read_text())
    config["train"]["loss"] = {
        "path": "legacy_components.ConfiguredLoss",
        "args": {"base": {"name": "DiceLoss", "args": {"to_onehot_y": True, "softmax": True}}},
    }
    config["train"]["handlers"].append(
        {"path": "legacy_components.BatchRecorder", "args": {"output_file": "{MMAR_CKPT_DIR}/batches.json"}}
    )
    path.write_text(json.dumps(config))


def test_a_clara40_custom_handler_sees_batched_engine_output_as_monai_05_gave_it(clara40_mmar: Path) -> None:
    from clara_fl.cli import main

    _with_legacy_handler_and_loss(clara40_mmar)

    assert main(["train", "-m", str(clara40_mmar), "--safe"]) == 0

    seen = json.loads((clara40_mmar / "models" / "batches.json").read_text())
    assert seen and all(entry["batch"] == 2 for entry in seen[:-1])  # the config's batch_size; the last may be short
    assert all(isinstance(entry["loss"], float) for entry in seen)


def test_a_clara40_custom_component_gets_its_nested_component_config_as_a_plain_dict(clara40_mmar: Path) -> None:
    from clara_fl.config.mmar import load_config
    from clara_fl.workflows.train import TrainWorkflow

    _with_legacy_handler_and_loss(clara40_mmar)

    workflow = TrainWorkflow.build(load_config(clara40_mmar, "config/config_train.json"))

    loss = workflow.resolver.get("loss", "train")
    assert type(loss).__name__ == "ConfiguredLoss" and type(loss.base).__name__ == "DiceLoss"


def test_a_clara40_custom_component_gets_a_list_of_nested_component_configs_as_plain_dicts(
    clara40_mmar: Path,
) -> None:
    from clara_fl.config.context import BuildContext
    from clara_fl.config.mmar import load_config
    from clara_fl.config.resolver import ConfigResolver
    from clara_fl.workflows.runtime import with_runtime

    path = clara40_mmar / "config" / "config_train.json"
    config = json.loads(path.read_text())
    dice = {"name": "DiceLoss", "args": {"to_onehot_y": True, "softmax": True}}
    config["train"]["loss"] = {"path": "legacy_components.SummedLoss", "args": {"losses": [dice, {"name": "DiceLoss"}]}}
    path.write_text(json.dumps(config))
    loaded = load_config(clara40_mmar, "config/config_train.json")

    context = with_runtime(BuildContext(mmar_root=str(clara40_mmar), clara40=loaded.clara40))
    loss = ConfigResolver(loaded.config, context=context).get("loss", "train")

    assert [type(part).__name__ for part in loss.losses] == ["DiceLoss", "DiceLoss"]


def test_a_clara41_config_builds_nested_component_configs_for_custom_components_as_before(
    tmp_path: Path, synthetic_data
) -> None:
    from clara_fl.config.context import BuildContext
    from clara_fl.config.mmar import load_config
    from clara_fl.config.resolver import ConfigResolver
    from clara_fl.workflows.runtime import with_runtime

    mmar = copy_mmar(CLARA40_MMAR, tmp_path / "m41", synthetic_data.root)
    config = {
        "train": {
            "loss": {"path": "legacy_components.ConfiguredLoss", "args": {"base": "@inner"}},
            "inner": {"name": "DiceLoss"},
        }
    }
    loaded = load_config(mmar, "config/config_train.json", config=config)

    context = with_runtime(BuildContext(mmar_root=str(mmar)))
    with pytest.raises(ConfigError, match="expected the nested component config as a dict, got DiceLoss"):
        ConfigResolver(loaded.config, context=context).get("loss", "train")
