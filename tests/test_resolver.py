"""Specification of building a Clara config's components (clara_fl.config.resolver.ConfigResolver).

Only tiny in-memory configs built from cheap components: nothing here trains.
"""

from __future__ import annotations

import json
import logging
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from clara_fl.config.errors import ConfigError
from clara_fl.config.mmar import load_config
from clara_fl.config.resolver import BuildContext, ConfigResolver, TrainConf
from clara_fl.config.variables import Variables
from clara_fl.workflows.runtime import with_runtime

TINY_UNET_ARGS = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [4, 8],
    "strides": [2],
    "num_res_units": 0,
}
LINEAR = {"name": "Linear", "args": {"in_features": 4, "out_features": 2}}


def build(config: dict[str, Any], **kwargs: Any) -> ConfigResolver:
    """Dry-run, then build ``config`` as the workflows do; returns the resolver holding the components."""
    kwargs["context"] = with_runtime(kwargs.get("context") or BuildContext())
    ConfigResolver(config, "config/config_train.json", dry_run=True, **kwargs).build_all()
    resolver = ConfigResolver(config, "config/config_train.json", **kwargs)
    resolver.build_all()
    return resolver


def error_of(config: dict[str, Any], **kwargs: Any) -> ConfigError:
    kwargs["context"] = with_runtime(kwargs.get("context") or BuildContext())
    with pytest.raises(ConfigError) as raised:
        ConfigResolver(config, "config/config_train.json", **kwargs).build_all()
    return raised.value


# -- short names and paths ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"name": "Accuracy"}, "ignite.metrics.Accuracy"),
        ({"name": "MeanDice", "args": {"include_background": False}}, "monai.handlers.MeanDice"),
        ({"name": "DiceLoss", "args": {"to_onehot_y": True, "softmax": True}}, "monai.losses.DiceLoss"),
        ({"name": "UNet", "args": TINY_UNET_ARGS}, "monai.networks.nets.UNet"),
        ({"name": "ScaleIntensityd", "args": {"keys": "image"}}, "monai.transforms.ScaleIntensityd"),
        ({"name": "StatsHandler", "args": {"output_transform": "lambda x: None"}}, "monai.handlers.StatsHandler"),
        ({"name": "SlidingWindowInferer", "args": {"roi_size": [16, 16, 16]}}, "monai.inferers.SlidingWindowInferer"),
        (LINEAR, "torch.nn.Linear"),
        ({"name": "Dataset", "args": {"data": [{"image": 1}]}}, "monai.data.Dataset"),
    ],
    ids=lambda v: v if isinstance(v, str) else v["name"],
)
def test_short_names_are_found_across_monai_torch_and_ignite(spec, expected):
    module_name, _, class_name = expected.rpartition(".")
    expected_class = getattr(__import__(module_name, fromlist=[class_name]), class_name)

    built = build({"component": spec}).get("component")

    assert type(built) is expected_class


def test_optimizer_and_scheduler_short_names_come_from_torch_optim():
    resolver = build(
        {
            "train": {
                "model": LINEAR,
                "optimizer": {"name": "Adam", "args": {"params": "#@model.parameters()", "lr": 0.01}},
                "lr_scheduler": {"name": "StepLR", "args": {"optimizer": "@optimizer", "step_size": 5, "gamma": 0.1}},
            }
        }
    )

    assert type(resolver.get("optimizer")) is torch.optim.Adam
    assert type(resolver.get("lr_scheduler")) is torch.optim.lr_scheduler.StepLR


def test_clara_checkpoint_saver_short_name_is_the_clara_component(tmp_path):
    from clara_fl.components import CheckpointSaver

    resolver = build(
        {
            "train": {
                "model": LINEAR,
                "saver": {
                    "name": "CheckpointSaver",
                    "args": {"save_dir": str(tmp_path), "save_dict": {"model": "@model"}},
                },
            }
        }
    )

    assert type(resolver.get("saver")) is CheckpointSaver


def test_path_gives_a_dotted_class_path():
    built = build({"net": {"path": "torch.nn.Linear", "args": {"in_features": 3, "out_features": 1}}}).get("net")

    assert type(built) is torch.nn.Linear


@pytest.fixture
def byoc_mmar(tmp_path, monkeypatch):
    """An MMAR whose custom/ folder holds a uniquely named BYOC module; sys.path and sys.modules are restored."""
    module = f"byoc_net_{uuid.uuid4().hex}"
    mmar = tmp_path / "mmar"
    (mmar / "config").mkdir(parents=True)
    (mmar / "custom").mkdir()
    (mmar / "custom" / f"{module}.py").write_text(
        "import torch\n\n\n"
        "class TinyNet(torch.nn.Module):\n"
        "    def __init__(self, width: int, scale: float = 1.0):\n"
        "        super().__init__()\n"
        "        self.layer = torch.nn.Linear(width, width)\n"
        "        self.scale = scale\n\n"
        "    def forward(self, x):\n"
        "        return self.layer(x) * self.scale\n"
    )
    (mmar / "config" / "environment.json").write_text(json.dumps({"WIDTH": 5}))
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield mmar, module
    sys.modules.pop(module, None)


def test_path_imports_a_byoc_class_from_the_mmar_custom_folder(byoc_mmar):
    mmar, module = byoc_mmar
    config = {"train": {"model": {"path": f"{module}.TinyNet", "args": {"width": "{WIDTH}", "scale": 2.0}}}}
    (mmar / "config" / "config_train.json").write_text(json.dumps(config))

    loaded = load_config(mmar, "config/config_train.json")
    model = build(loaded.config, context=BuildContext(mmar_root=loaded.mmar_root)).get("model", "train")

    assert type(model).__name__ == "TinyNet"
    assert type(model).__module__ == module
    assert model.layer.in_features == 5
    assert model.scale == 2.0


def test_byoc_path_with_a_misspelled_class_suggests_the_close_name(byoc_mmar):
    mmar, module = byoc_mmar
    config = {"train": {"model": {"path": f"{module}.TinyNett", "args": {"width": 5}}}}
    (mmar / "config" / "config_train.json").write_text(json.dumps(config))
    loaded = load_config(mmar, "config/config_train.json")

    error = error_of(loaded.config, dry_run=True)

    assert error.path == "train.model.path"
    assert "did you mean 'TinyNet'?" in str(error)


def test_path_to_a_missing_module_points_at_the_custom_folder():
    error = error_of({"train": {"model": {"path": "no_such_byoc_module_xyz.Net"}}}, dry_run=True)

    assert error.path == "train.model.path"
    assert "no_such_byoc_module_xyz" in str(error)
    assert "custom/" in str(error)


# -- references ------------------------------------------------------------------------------------


def test_a_reference_shares_one_instance_so_the_optimizer_holds_the_models_parameters():
    resolver = build(
        {
            "train": {
                "model": LINEAR,
                "optimizer": {"name": "SGD", "args": {"params": "#@model.parameters()", "lr": 0.1}},
                "lr_scheduler": {"name": "StepLR", "args": {"optimizer": "@optimizer", "step_size": 1}},
            }
        }
    )
    model = resolver.get("model", "train")
    optimizer = resolver.get("optimizer", "train")

    held = optimizer.param_groups[0]["params"]
    assert [id(p) for p in held] == [id(p) for p in model.parameters()]
    assert resolver.get("lr_scheduler", "train").optimizer is optimizer
    assert resolver.get("model", "train") is model


def tiny_train_and_validate() -> dict[str, Any]:
    """A train/validate config with distinct pre_transforms per section and an evaluator on an in-memory dataset."""
    return {
        "train": {
            "model": LINEAR,
            "pre_transforms": [{"name": "ScaleIntensityd", "args": {"keys": "image"}}],
            "dataset": {"name": "Dataset", "args": {"data": [{"image": [0.0, 1.0]}], "transform": "@pre_transforms"}},
            "handlers": [{"name": "ValidationHandler", "args": {"validator": "@evaluator", "interval": 1}}],
        },
        "validate": {
            "pre_transforms": [
                {"name": "NormalizeIntensityd", "args": {"keys": "image"}},
                {"name": "ScaleIntensityd", "args": {"keys": "image"}},
            ],
            "dataset": {"name": "Dataset", "args": {"data": [{"image": [0.0, 1.0]}], "transform": "@pre_transforms"}},
            "dataloader": {"name": "DataLoader", "args": {"dataset": "@dataset", "batch_size": 1, "num_workers": 0}},
            "evaluator": {
                "name": "SupervisedEvaluator",
                "args": {"device": "cpu", "val_data_loader": "@dataloader", "network": "@model"},
            },
        },
    }


def test_train_and_validate_share_one_namespace():
    resolver = build(tiny_train_and_validate())

    evaluator = resolver.get("evaluator", "validate")
    assert evaluator.network is resolver.get("model", "train")
    assert resolver.get("handlers", "train")[0].validator is evaluator


def test_a_sections_own_key_wins_over_the_other_sections_key():
    from monai.transforms import NormalizeIntensityd, ScaleIntensityd

    resolver = build(tiny_train_and_validate())

    train_transforms = resolver.get("dataset", "train").transform.transforms
    validate_transforms = resolver.get("dataset", "validate").transform.transforms
    assert [type(t) for t in train_transforms] == [ScaleIntensityd]
    assert [type(t) for t in validate_transforms] == [NormalizeIntensityd, ScaleIntensityd]


def test_unknown_reference_names_the_json_path_and_suggests_the_close_name():
    config = {
        "train": {"model": LINEAR, "optimizer": {"name": "SGD", "args": {"params": "#@modle.parameters()", "lr": 0.1}}}
    }

    error = error_of(config, dry_run=True)

    assert error.path == "train.optimizer.args.params"
    assert "unknown reference '@modle' (did you mean '@model'?)" in str(error)


def test_conf_is_the_whole_config_and_is_checkpointable(tmp_path):
    config = {"epochs": 2, "train": {"model": LINEAR, "saved": {"train_conf": "@conf"}}}

    conf = build(config).get("saved", "train")["train_conf"]

    assert isinstance(conf, TrainConf)
    assert conf.state_dict() == config
    assert conf["epochs"] == 2
    torch.save({"train_conf": conf.state_dict()}, tmp_path / "ckpt.pt")
    reloaded = torch.load(tmp_path / "ckpt.pt", weights_only=True)["train_conf"]
    assert reloaded == config
    restored = TrainConf({})
    restored.load_state_dict(reloaded)
    assert restored.state_dict() == config


def test_circular_references_are_reported_with_the_cycle():
    config = {
        "train": {
            "a": {"name": "Linear", "args": {"in_features": "@b", "out_features": 1}},
            "b": {"name": "Linear", "args": {"in_features": "@a", "out_features": 1}},
        }
    }

    for dry_run in (True, False):
        error = error_of(config, dry_run=dry_run)
        assert "circular reference: train.a -> train.b -> train.a" in str(error)


# -- code strings ----------------------------------------------------------------------------------


def test_hash_expressions_and_lambda_strings_evaluate():
    resolver = build(
        {
            "train": {
                "model": LINEAR,
                "sum": "#1 + 2",
                "tensor": "#torch.ones(3).sum().item()",
                "width": "#@model.out_features * 10",
                "double": "lambda x: x * 2",
                "loss_of": "#monai.handlers.from_engine(['loss'], first=True)",
            }
        }
    )

    assert resolver.get("sum") == 3
    assert resolver.get("tensor") == 3.0
    assert resolver.get("width") == 20
    assert resolver.get("double")(21) == 42
    assert resolver.get("loss_of")([{"loss": 0.5}, {"loss": 0.7}]) == 0.5


def test_an_invalid_expression_is_a_config_error_in_the_dry_run():
    error = error_of({"train": {"f": "lambda x: x +"}}, dry_run=True)

    assert error.path == "train.f"
    assert "invalid Python expression" in str(error)


# -- disabled and rank --------------------------------------------------------------------------


def handlers_config(first: Any = None, second: Any = None) -> dict[str, Any]:
    specs = []
    for name, marker in (("first", first), ("second", second)):
        spec: dict[str, Any] = {"name": "StatsHandler", "args": {"name": name, "output_transform": "lambda x: None"}}
        if marker is not None:
            spec.update(marker)
        specs.append(spec)
    return {"train": {"handlers": specs}}


def handler_names(resolver: ConfigResolver) -> list[str]:
    return [h.logger.name for h in resolver.get("handlers", "train")]


@pytest.mark.parametrize(
    ("disabled", "kept"),
    [(True, ["second"]), (False, ["first", "second"]), ("true", ["second"]), ("False", ["first", "second"])],
)
def test_disabled_removes_an_item_from_its_list(disabled, kept):
    resolver = build(handlers_config(first={"disabled": disabled}))

    assert handler_names(resolver) == kept


@pytest.mark.parametrize(("flag", "kept"), [(True, ["second"]), (False, ["first", "second"])])
def test_disabled_through_a_variable_removes_an_item(flag, kept):
    config = Variables({"dont_load_ckpt_model": flag}).substitute(
        handlers_config(first={"disabled": "{dont_load_ckpt_model}"})
    )

    assert handler_names(build(config)) == kept


def test_a_disabled_component_outside_a_list_is_none():
    resolver = build({"train": {"loss": {"name": "DiceLoss", "disabled": True}}})

    assert resolver.get("loss", "train") is None


def test_disabled_that_is_not_a_boolean_is_a_config_error():
    error = error_of(handlers_config(second={"disabled": "maybe"}), dry_run=True)

    assert error.path == "train.handlers[1].disabled"


def test_rank_items_are_built_on_every_rank_but_kept_only_on_their_rank():
    config = handlers_config(first={"rank": 0})

    on_rank_1 = ConfigResolver(config, context=BuildContext(rank=1))
    built = on_rank_1.build_all()
    on_rank_0 = build(config, context=BuildContext(rank=0))

    assert handler_names(on_rank_1) == ["second"]
    assert built["train.handlers[0]"].logger.name == "first"  # constructed anyway (collectives in constructors)
    assert handler_names(on_rank_0) == ["first", "second"]


# -- metrics --------------------------------------------------------------------------------------


def test_log_label_keys_the_key_metric_and_additional_metrics():
    from ignite.metrics import Accuracy
    from monai.handlers import MeanDice

    resolver = build(
        {
            "train": {"key_metric": {"name": "Accuracy", "log_label": "train_acc"}},
            "validate": {
                "key_metric": {"name": "MeanDice", "log_label": "val_mean_dice", "args": {"include_background": False}},
                "additional_metrics": [
                    {"name": "Accuracy", "log_label": "val_acc"},
                    {"name": "MeanDice"},
                    {"name": "Accuracy", "log_label": "off", "disabled": True},
                ],
            },
        }
    )

    train_key = resolver.get("key_metric", "train")
    validate_key = resolver.get("key_metric", "validate")
    additional = resolver.get("additional_metrics", "validate")
    assert list(train_key) == ["train_acc"] and isinstance(train_key["train_acc"], Accuracy)
    assert list(validate_key) == ["val_mean_dice"] and isinstance(validate_key["val_mean_dice"], MeanDice)
    assert list(additional) == ["val_acc", "MeanDice"]
    assert isinstance(additional["val_acc"], Accuracy) and isinstance(additional["MeanDice"], MeanDice)


# -- ref -----------------------------------------------------------------------------------------


def ref_config(*validate_refs: str) -> dict[str, Any]:
    return {
        "train": {
            "pre_transforms": [
                {"name": "LoadImaged#loadImageExample", "args": {"keys": ["image"]}},
                {"name": "ScaleIntensityd#first_scale", "args": {"keys": "image", "minv": 0.0, "maxv": 1.0}},
                {"name": "ScaleIntensityd#second_scale", "args": {"keys": "image", "minv": -1.0, "maxv": 1.0}},
                {"name": "RandShiftIntensityd", "args": {"keys": "image", "offsets": 0.1, "prob": 0.5}},
            ],
            "post_transforms": [{"name": "Activationsd", "args": {"keys": "pred", "softmax": True}}],
        },
        "validate": {
            "pre_transforms": [{"ref": ref} for ref in validate_refs],
            "post_transforms": [{"ref": "Activationsd"}],
        },
    }


def test_ref_by_class_name_returns_the_same_instance_as_the_train_transform():
    resolver = build(ref_config("RandShiftIntensityd"))

    train_pre = resolver.get("pre_transforms", "train").transforms
    validate_pre = resolver.get("pre_transforms", "validate").transforms
    assert validate_pre[0] is train_pre[3]
    assert (
        resolver.get("post_transforms", "validate").transforms[0]
        is resolver.get("post_transforms", "train").transforms[0]
    )


def test_ref_by_alias_returns_the_aliased_train_transform():
    resolver = build(ref_config("loadImageExample", "second_scale", "first_scale"))

    train_pre = resolver.get("pre_transforms", "train").transforms
    validate_pre = resolver.get("pre_transforms", "validate").transforms
    assert validate_pre[0] is train_pre[0]
    assert validate_pre[1] is train_pre[2]
    assert validate_pre[2] is train_pre[1]
    assert validate_pre[1].scaler.minv == -1.0


def test_ref_that_matches_nothing_suggests_the_close_alias():
    error = error_of(ref_config("LoadImaged", "second_scal"), dry_run=True)

    assert error.path == "validate.pre_transforms[1]"
    assert "did you mean 'second_scale'?" in str(error)


# -- datasets --------------------------------------------------------------------------------------


@pytest.fixture
def datalist_mmar(tmp_path) -> Path:
    """An MMAR root with data/dataset.json listing two files by relative path."""
    data = tmp_path / "mmar" / "data"
    (data / "imagesTr").mkdir(parents=True)
    for name in ("a.nii.gz", "b.nii.gz"):
        (data / "imagesTr" / name).write_bytes(b"")
    (data / "dataset.json").write_text(
        json.dumps(
            {"training": [{"image": "imagesTr/a.nii.gz"}], "validation": [{"image": "imagesTr/b.nii.gz", "label": 1}]}
        )
    )
    return tmp_path / "mmar"


def test_dataset_keys_give_the_dataset_its_data_with_absolute_paths(datalist_mmar):
    config = {
        "validate": {
            "dataset": {
                "name": "Dataset",
                "data_list_file_path": "data/dataset.json",
                "data_file_base_dir": "data",
                "data_list_key": "validation",
                "args": {},
            }
        },
        "train": {},
    }

    dataset = build(config, context=BuildContext(mmar_root=str(datalist_mmar))).get("dataset", "validate")

    assert dataset.data == [{"image": str(datalist_mmar / "data" / "imagesTr" / "b.nii.gz"), "label": 1}]


def test_dataset_with_a_missing_data_file_names_the_file(datalist_mmar):
    (datalist_mmar / "data" / "imagesTr" / "a.nii.gz").unlink()
    config = {
        "train": {
            "dataset": {"name": "Dataset", "data_list_file_path": "data/dataset.json", "data_list_key": "training"}
        }
    }

    error = error_of(config, context=BuildContext(mmar_root=str(datalist_mmar)), dry_run=True)

    assert error.path == "train.dataset.data_list_file_path"
    assert "image file not found" in str(error)
    assert str(datalist_mmar / "data" / "imagesTr" / "a.nii.gz") in str(error)


# -- configs written for older MONAI -----------------------------------------------------------------


def test_unet_dimensions_becomes_spatial_dims():
    args = {k: v for k, v in TINY_UNET_ARGS.items() if k != "spatial_dims"}

    net = build({"train": {"model": {"name": "UNet", "args": {"dimensions": 3, **args}}}}).get("model")

    assert net.dimensions == 3
    assert net(torch.zeros(1, 1, 8, 8, 8)).shape == (1, 2, 8, 8, 8)


def test_asdiscreted_n_classes_with_to_onehot_true_one_hot_encodes_to_n_classes():
    transform = build({"t": {"name": "AsDiscreted", "args": {"keys": "label", "to_onehot": True, "n_classes": 3}}}).get(
        "t"
    )

    out = transform({"label": torch.tensor([[[0, 2]]])})["label"]

    assert out.shape == (3, 1, 2)
    assert out[:, 0, 1].tolist() == [0.0, 0.0, 1.0]


def test_asdiscreted_threshold_values_true_thresholds_at_the_old_default_one_half():
    transform = build({"t": {"name": "AsDiscreteD", "args": {"keys": "pred", "threshold_values": True}}}).get("t")

    out = transform({"pred": torch.tensor([[0.2, 0.7]])})["pred"]

    assert out.tolist() == [[0.0, 1.0]]


def test_addchanneld_adds_a_leading_channel():
    transform = build({"t": {"name": "AddChanneld", "args": {"keys": "image"}}}).get("t")

    assert transform({"image": np.zeros((4, 5))})["image"].shape == (1, 4, 5)


def test_aschannelfirstd_moves_the_last_axis_first():
    transform = build({"t": {"name": "AsChannelFirstd", "args": {"keys": "image"}}}).get("t")

    assert transform({"image": np.zeros((4, 5, 3))})["image"].shape == (3, 4, 5)


def test_from_engine_of_a_meta_dict_key_returns_the_metatensor_meta():
    from monai.data import MetaTensor

    batch_transform = build({"t": "#monai.handlers.from_engine(['image_meta_dict'])"}).get("t")
    items = [
        {"image": MetaTensor(torch.zeros(1, 2, 2), meta={"filename_or_obj": "case_006.nii.gz"})},
        {"image": MetaTensor(torch.zeros(1, 2, 2), meta={"filename_or_obj": "case_007.nii.gz"})},
    ]

    metas = batch_transform(items)

    assert [m["filename_or_obj"] for m in metas] == ["case_006.nii.gz", "case_007.nii.gz"]


def test_cuda_device_falls_back_to_cpu_with_one_warning_when_cuda_is_unavailable(caplog):
    config = {
        "train": {
            "a": {"name": "Linear", "args": {"in_features": 2, "out_features": 1, "device": "cuda"}},
            "b": {"name": "Linear", "args": {"in_features": 2, "out_features": 1, "device": "cuda:0"}},
        }
    }
    caplog.set_level(logging.WARNING, logger="clara_fl.config.resolver")

    resolver = build(config, context=BuildContext(cuda_available=False))

    assert resolver.get("a").weight.device.type == "cpu"
    assert resolver.get("b").weight.device.type == "cpu"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "CUDA is not available" in r.getMessage()]
    assert len(warnings) == 1
    assert "train.a" in warnings[0].getMessage()


# -- dry run ---------------------------------------------------------------------------------------


def test_dry_run_builds_nothing():
    config = {
        "train": {
            "model": {"name": "Linear", "args": {"in_features": -1, "out_features": 2}},  # fails when constructed
            "optimizer": {"name": "SGD", "args": {"params": "#@model.parameters()", "lr": 0.1}},
        }
    }

    planned = ConfigResolver(config, "config/config_train.json", dry_run=True).build_all()

    assert {"train.model", "train.optimizer"} <= set(planned)
    assert not any(isinstance(v, (torch.nn.Module, torch.optim.Optimizer)) for v in planned.values())
    error = error_of(config)
    assert error.path == "train.model"
    assert "building Linear failed" in str(error)


def test_dry_run_still_reports_an_unknown_name():
    error = error_of({"train": {"model": {"name": "UNett", "args": TINY_UNET_ARGS}}}, dry_run=True)

    assert error.path == "train.model.name"
    assert "unknown component name 'UNett' (did you mean 'UNet'?)" in str(error)


def test_dry_run_reports_an_unexpected_argument_with_the_close_name():
    args = {**TINY_UNET_ARGS, "num_res_unit": 2}
    del args["num_res_units"]

    error = error_of({"train": {"model": {"name": "UNet", "args": args}}}, dry_run=True)

    assert error.path == "train.model.args.num_res_unit"
    assert "did you mean 'num_res_units'?" in str(error)


def test_a_component_that_fails_keeps_the_library_error_as_its_cause():
    config = {"train": {"model": {"name": "Linear", "args": {"in_features": -1, "out_features": 2}}}}

    error = error_of(config)

    assert error.path == "train.model" and "building Linear failed" in error.message
    assert error.__cause__ is not None and type(error.__cause__).__name__ in error.message  # --debug shows its frames
