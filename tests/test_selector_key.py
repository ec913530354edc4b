"""Best-model selection cannot silently never fire: ``clara-fl job create`` refuses a job whose server model
selector keys on a metric the sites do not return (FLARE's IntimeModelSelector would only warn every round)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from clara_fl.config.errors import ConfigError
from clara_fl.recipes.app_configs import FedAvgSettings, build_job, returned_metrics
from tests.conftest import SPLEEN_MMAR

CLARA40_MMAR = Path(__file__).resolve().parent / "clara40_mmar"


def spleen_copy(tmp_path: Path) -> Path:
    mmar = tmp_path / "mmar"
    shutil.copytree(SPLEEN_MMAR, mmar)
    return mmar


def edit_train_config(mmar: Path, edit: Any) -> None:
    path = mmar / "config" / "config_train.json"
    config = json.loads(path.read_text())
    edit(config["validate"])
    path.write_text(json.dumps(config))


def selector_key(server: dict[str, Any]) -> str:
    return next(c for c in server["components"] if c["id"] == "model_selector")["args"]["key_metric"]


def test_the_sites_return_the_validate_key_metric_and_additional_metrics_by_log_label(tmp_path: Path) -> None:
    mmar = spleen_copy(tmp_path)
    edit_train_config(
        mmar,
        lambda v: v.__setitem__(
            "additional_metrics", [{"name": "Accuracy", "log_label": "val_acc"}, {"name": "ConfusionMatrix"}]
        ),
    )

    assert returned_metrics(mmar) == ["val_mean_dice", "val_acc", "ConfusionMatrix"]


def test_a_clara_40_metrics_list_is_read_with_its_is_key_metric_first() -> None:
    assert returned_metrics(CLARA40_MMAR) == ["val_mean_dice", "val_acc"]


def test_the_selector_keys_on_the_mmars_validation_key_metric(tmp_path: Path) -> None:
    mmar = spleen_copy(tmp_path)
    edit_train_config(mmar, lambda v: v["key_metric"].__setitem__("log_label", "val_dice"))

    configs = build_job(mmar, FedAvgSettings())

    assert selector_key(configs.server.to_config()) == "val_dice"


def test_a_template_selector_key_the_sites_do_not_return_is_refused_naming_key_and_metrics(tmp_path: Path) -> None:
    mmar = spleen_copy(tmp_path)
    # no key metric of its own: the template's val_mean_dice stays, but the sites only return val_acc
    only_accuracy = {"key_metric": None, "additional_metrics": [{"name": "Accuracy", "log_label": "val_acc"}]}
    edit_train_config(mmar, lambda v: v.update(only_accuracy))

    with pytest.raises(ConfigError) as caught:
        build_job(mmar, FedAvgSettings())

    message = str(caught.value)
    assert "config_fed_server.conf" in message and ".args.key_metric" in message
    assert "'val_mean_dice' is not a metric the sites return (val_acc)" in message
    assert "\n" not in message


def test_a_selector_key_from_the_mmars_fl_server_config_is_taken_and_checked(tmp_path: Path) -> None:
    from clara_fl.recipes.clara_configs import read_fl_configs

    mmar = spleen_copy(tmp_path)
    selector = {"name": "IntimeModelSelectionHandler", "args": {"key_metric": "val_hausdorff"}}
    server = {"servers": [{"num_rounds": 2}], "handlers": [selector]}
    (mmar / "config" / "config_fed_server.json").write_text(json.dumps(server))

    settings = read_fl_configs(mmar).settings
    with pytest.raises(ConfigError) as caught:
        build_job(mmar, settings)

    assert settings.model_selector_key == "val_hausdorff"
    assert str(caught.value).startswith(f"{mmar / 'config' / 'config_fed_server.json'}: handlers[0].args.key_metric: ")
    assert "'val_hausdorff' is not a metric the sites return (val_mean_dice, val_acc)" in str(caught.value)


def test_a_selector_key_from_an_nvflare_2_server_config_that_the_sites_return_is_used(tmp_path: Path) -> None:
    from clara_fl.recipes.clara_configs import read_fl_configs

    mmar = spleen_copy(tmp_path)
    server = {
        "format_version": 2,
        "workflows": [{"id": "sag", "name": "ScatterAndGather", "args": {"num_rounds": 2}}],
        "components": [{"id": "model_selector", "name": "IntimeModelSelector", "args": {"key_metric": "val_acc"}}],
    }
    (mmar / "config" / "config_fed_server.json").write_text(json.dumps(server))

    configs = build_job(mmar, read_fl_configs(mmar).settings)

    assert selector_key(configs.server.to_config()) == "val_acc"


def test_job_create_refuses_the_job_with_one_line_and_exit_code_2_writing_nothing(tmp_path: Path) -> None:
    from clara_fl.cli import main

    mmar = spleen_copy(tmp_path)
    only_accuracy = {"key_metric": None, "additional_metrics": [{"name": "Accuracy", "log_label": "val_acc"}]}
    edit_train_config(mmar, lambda v: v.update(only_accuracy))
    err = io.StringIO()

    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["job", "create", "-m", str(mmar), "-o", str(tmp_path / "job")])

    assert code == 2
    assert len(err.getvalue().strip().splitlines()) == 1
    assert "key metric 'val_mean_dice' is not a metric the sites return (val_acc)" in err.getvalue()
    assert not (tmp_path / "job").exists()
