"""A component that fails while running is named by its config file, JSON path and class, and the data item."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from clara_fl.cli import main
from clara_fl.config.errors import describe_failure
from tests.conftest import copy_mmar

CLARA40_MMAR = Path(__file__).parent / "clara40_mmar"
# Written for MONAI 0.5, as Clara 4.0 BYOC code was: numpy images, metadata in image_meta_dict.
FAILING_TRANSFORM = """
import numpy as np


class FailOnCase:
    def __init__(self, keys, case):
        self.keys, self.case = keys, case

    def __call__(self, data):
        assert isinstance(data["image"], np.ndarray)
        if self.case in str(data["image_meta_dict"]["filename_or_obj"]):
            raise ValueError("unexpected voxel spacing")
        return data
"""


@pytest.fixture
def mmar(tmp_path: Path, synthetic_data) -> Path:
    root = copy_mmar(CLARA40_MMAR, tmp_path / "mmar", synthetic_data.root)
    (root / "custom").mkdir(exist_ok=True)
    (root / "custom" / "failing_case.py").write_text(FAILING_TRANSFORM)
    return root


def _edit(mmar: Path, change) -> None:
    file = mmar / "config" / "config_train.json"
    config = json.loads(file.read_text())
    change(config["train"])
    file.write_text(json.dumps(config))


def _train(mmar: Path) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["--log-level", "ERROR", "train", "-m", str(mmar)])
    return code, [line for line in err.getvalue().splitlines() if line.startswith("clara-fl train: error:")][-1]


def _first_case(mmar: Path) -> str:
    datalist = json.loads(
        Path(json.loads((mmar / "config" / "environment.json").read_text())["DATASET_JSON"]).read_text()
    )
    return Path(sorted(item["image"] for item in datalist["training"])[0]).name


def test_a_transform_failing_on_a_case_names_its_config_path_class_and_case(mmar: Path) -> None:
    case = _first_case(mmar)
    _edit(
        mmar,
        lambda train: train["pre_transforms"].insert(
            3, {"path": "failing_case.FailOnCase", "args": {"keys": "image", "case": case}}
        ),
    )

    code, line = _train(mmar)

    assert code == 1
    assert line.startswith(
        f"clara-fl train: error: config/config_train.json: train.pre_transforms[3] (FailOnCase) failed on {case}: "
        "ValueError: unexpected voxel spacing"
    )


def test_a_transform_failing_in_a_loader_worker_names_its_config_path_class_and_case(mmar: Path) -> None:
    case = _first_case(mmar)

    def change(train: dict) -> None:
        train["pre_transforms"].insert(3, {"path": "failing_case.FailOnCase", "args": {"keys": "image", "case": case}})
        train["dataloader"]["args"]["num_workers"] = 1

    _edit(mmar, change)

    code, line = _train(mmar)

    assert code == 1
    assert f"config/config_train.json: train.pre_transforms[3] (FailOnCase) failed on {case}: " in line
    assert line.endswith("ValueError: unexpected voxel spacing (run with --debug for the traceback)")


def test_a_handler_failing_names_its_config_path_and_class(mmar: Path) -> None:
    _edit(mmar, lambda train: train["handlers"][4]["args"].update(output_transform="lambda x: x['no_such_key']"))

    code, line = _train(mmar)

    assert code == 1
    assert "config/config_train.json: train.handlers[4] (StatsHandler) failed: KeyError: 'no_such_key'" in line


def test_a_metric_failing_names_its_config_path_and_class(mmar: Path) -> None:
    _edit(
        mmar, lambda train: train["metrics"][0]["args"].update(output_transform="lambda x: (x['pred'], x['no_label'])")
    )

    code, line = _train(mmar)

    assert code == 1
    assert "config/config_train.json: train.key_metric (Accuracy) failed: KeyError: 'no_label'" in line


def test_a_failure_outside_any_config_component_is_described_as_before() -> None:
    try:
        raise RuntimeError("outer") from ValueError("inner")
    except RuntimeError as e:
        assert describe_failure(e) == "RuntimeError: outer <- ValueError: inner"
