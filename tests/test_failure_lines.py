"""A case that fails is one line naming the transform's config item and the case: no library traceback, no object
address, whether it fails while training (clara-fl train, an FL site) or while a dataset caches its cases.

The broken case is a NIfTI file cut off after 100 bytes, in a copy of the session's synthetic data.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from clara_fl.cli import main
from tests.conftest import REPO, SPLEEN_MMAR, copy_mmar, site_ctx, tiny_set

PLAIN_DATASET = {"transform": "@pre_transforms"}
# The spleen MMAR's train transforms up to its first random one, written inside the dataset's own config.
INLINE_TRANSFORM = {
    "name": "Compose",
    "args": {
        "transforms": [
            {"name": "LoadImaged", "args": {"keys": ["image", "label"]}},
            {"name": "EnsureChannelFirstd", "args": {"keys": ["image", "label"]}},
            {"name": "SpatialPadd", "args": {"keys": ["image", "label"], "spatial_size": "{roi_size}"}},
            {"name": "RandSpatialCropd", "args": {"keys": ["image", "label"], "roi_size": "{roi_size}"}},
        ]
    },
}
INLINE_LOAD = "train.dataset.args.transform.args.transforms[0] (LoadImaged)"


def data_with_a_cut_off_case(tmp_path: Path, synthetic_data: Any, datalist: str, key: str) -> tuple[Path, str]:
    """A copy of the synthetic data whose first ``key`` case of ``datalist`` is cut off; returns the copy and the
    case's file name."""
    data = tmp_path / "data"
    shutil.copytree(synthetic_data.root, data)
    image = data / json.loads((data / datalist).read_text())[key][0]["image"]
    image.write_bytes(image.read_bytes()[:100])
    return data, image.name


def use_datasets(mmar: Path, train: dict[str, Any], validate: dict[str, Any] | None = None) -> None:
    """Give the MMAR's train (and validate) dataset another class and arguments, keeping its datalist keys."""
    file = mmar / "config" / "config_train.json"
    config = json.loads(file.read_text())
    for section, dataset in (("train", train), ("validate", validate)):
        if dataset is not None:
            config[section]["dataset"].update(dataset)
    file.write_text(json.dumps(config))


def run_clara_fl(*argv: str) -> subprocess.CompletedProcess[str]:
    """``python -m clara_fl ARGV`` in a process of its own: what users see on its stdout and stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "clara_fl", *argv], capture_output=True, text=True, env=env, cwd=REPO, timeout=300
    )


def lines_naming(text: str, case: str) -> list[str]:
    return [line for line in text.splitlines() if case in line]


@pytest.fixture
def validation_case_breaks_in_training(tmp_path: Path, synthetic_data: Any) -> tuple[Path, str]:
    """The spleen MMAR with plain datasets (cases load while the engines run) and a cut-off validation case: MONAI's
    StatsHandler, first in the validate handlers, logs that failure with its traceback."""
    data, case = data_with_a_cut_off_case(tmp_path, synthetic_data, "dataset.json", "validation")
    mmar = copy_mmar(SPLEEN_MMAR, tmp_path / "mmar", data)
    use_datasets(mmar, {"name": "Dataset", "args": PLAIN_DATASET}, {"name": "Dataset", "args": PLAIN_DATASET})
    return mmar, case


# -- clara-fl train ----------------------------------------------------------------------------------


def test_a_case_failing_in_training_is_one_line_with_no_traceback_without_debug(
    validation_case_breaks_in_training: tuple[Path, str],
) -> None:
    mmar, case = validation_case_breaks_in_training

    run = run_clara_fl("train", "-m", str(mmar), "--set", *tiny_set())

    assert run.returncode == 1, run.stderr[-3000:]
    output = run.stdout + run.stderr
    assert lines_naming(output, case) == [
        f"clara-fl train: error: config/config_train.json: train.pre_transforms[0] (LoadImaged) failed on {case}: "
        f'ImageFileError: Cannot work out file type of "{mmar.parent / "data" / "imagesTr" / case}" '
        "(run with --debug for the traceback)"
    ]
    assert "Traceback" not in output
    assert " at 0x" not in output


def test_with_debug_the_libraries_and_clara_fl_show_their_tracebacks(
    validation_case_breaks_in_training: tuple[Path, str],
) -> None:
    mmar, case = validation_case_breaks_in_training

    run = run_clara_fl("--debug", "train", "-m", str(mmar), "--set", *tiny_set())

    assert run.returncode == 1
    assert "Traceback (most recent call last)" in run.stdout  # MONAI's StatsHandler logs the exception
    assert "Traceback (most recent call last)" in run.stderr  # clara-fl re-raises it
    assert "ImageFileError: Cannot work out file type of" in run.stderr and case in run.stderr


# -- datasets that transform their cases up front ----------------------------------------------------


def test_a_case_failing_while_a_cache_dataset_caches_in_threads_names_the_transform_and_the_case(
    tmp_path: Path, synthetic_data: Any
) -> None:
    data, case = data_with_a_cut_off_case(tmp_path, synthetic_data, "dataset.json", "training")
    mmar = copy_mmar(SPLEEN_MMAR, tmp_path / "mmar", data)  # CacheDataset, cached by num_workers threads

    run = run_clara_fl("train", "-m", str(mmar), "--set", *tiny_set(num_workers=2))

    assert run.returncode == 2, run.stderr[-3000:]  # the process ends with the error, not under a cache thread
    assert lines_naming(run.stdout + run.stderr, case) == [
        "clara-fl train: error: config/config_train.json: train.dataset: building CacheDataset failed: "
        f"train.pre_transforms[0] (LoadImaged) failed on {case}: "
        f'ImageFileError: Cannot work out file type of "{data / "imagesTr" / case}"'
    ]
    assert " at 0x" not in run.stderr and "terminate called" not in run.stderr


@pytest.mark.parametrize(
    "dataset, expected",
    [
        (
            {
                "name": "SmartCacheDataset",
                "args": {"transform": INLINE_TRANSFORM, "replace_rate": 0.5, "cache_num": 4, "shuffle": False},
            },
            f"train.dataset: building SmartCacheDataset failed: {INLINE_LOAD} failed on ",
        ),
        (
            {
                "name": "PersistentDataset",
                "args": {"transform": INLINE_TRANSFORM, "cache_dir": "{MMAR_CKPT_DIR}/cache"},
            },
            f"{INLINE_LOAD} failed on ",
        ),
    ],
    ids=["SmartCacheDataset", "PersistentDataset"],
)
def test_a_case_failing_while_a_dataset_caches_names_the_transform_inside_the_dataset_config_and_the_case(
    tmp_path: Path, synthetic_data: Any, capsys: pytest.CaptureFixture, dataset: dict[str, Any], expected: str
) -> None:
    data, case = data_with_a_cut_off_case(tmp_path, synthetic_data, "dataset.json", "training")
    mmar = copy_mmar(SPLEEN_MMAR, tmp_path / "mmar", data)
    use_datasets(mmar, dataset)

    main(["train", "-m", str(mmar), "--set", *tiny_set()])

    captured = capsys.readouterr()
    [line] = lines_naming(captured.err, case)
    assert line.startswith(f"clara-fl train: error: config/config_train.json: {expected}{case}: ImageFileError: ")
    assert " at 0x" not in line


# -- an FL site -------------------------------------------------------------------------------------


def test_a_case_failing_in_a_sites_training_is_one_line_in_the_sites_log(
    tmp_path: Path, synthetic_data: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from nvflare.apis.dxo import DXO, DataKind
    from nvflare.apis.fl_constant import ReturnCode
    from nvflare.apis.signal import Signal

    from clara_fl.fl.site.learner import ClaraLearner

    data, case = data_with_a_cut_off_case(tmp_path, synthetic_data, "dataset_site-1.json", "validation")
    workspace = tmp_path / "site-1"
    app = copy_mmar(SPLEEN_MMAR, workspace / "job" / "app_site-1", data, DATASET_JSON="{DATA_ROOT}/dataset_site-1.json")
    use_datasets(app, {"name": "Dataset", "args": PLAIN_DATASET}, {"name": "Dataset", "args": PLAIN_DATASET})
    (workspace / "local").mkdir(parents=True)
    (workspace / "local" / "clara_fl_site.json").write_text(json.dumps({"environment": {"DATA_ROOT": str(data)}}))
    learner = ClaraLearner(overrides={"roi_size": [16, 16, 16], "num_workers": 0, "num_interval_per_valid": 1})
    stats_logger = logging.getLogger("monai.handlers.StatsHandler")  # MONAI's: it does not propagate to the root
    stats_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO):
            learner.initialize({}, site_ctx(app, workspace))
            task = DXO(data_kind=DataKind.WEIGHTS, data={}).to_shareable()
            reply = learner.train(task, site_ctx(app, workspace), Signal())
    finally:
        stats_logger.removeHandler(caplog.handler)
        learner.finalize(site_ctx(app, workspace))

    assert reply.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
    [line] = lines_naming(caplog.text, case)
    assert (
        f"local training failed: config/config_train.json: train.pre_transforms[0] (LoadImaged) failed on {case}: "
        "ImageFileError: "
    ) in line
    assert "Traceback" not in caplog.text
    assert " at 0x" not in caplog.text


# -- the libraries' logging ----------------------------------------------------------------------------


def log_an_exception(logger: logging.Logger) -> None:
    try:
        raise ValueError("unexpected voxel spacing")
    except ValueError:
        logger.exception("Exception: unexpected voxel spacing")


def test_a_librarys_report_of_an_exception_is_a_debug_record_without_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from clara_fl.runtime.library_logs import quiet_library_exceptions

    quiet_library_exceptions(debug=False)
    logger = logging.getLogger("monai.handlers.test_failure_lines")

    with caplog.at_level(logging.INFO):
        log_an_exception(logger)
    with caplog.at_level(logging.DEBUG, logger=logger.name):
        log_an_exception(logger)

    [record] = caplog.records
    assert (record.levelname, record.exc_info, record.getMessage()) == (
        "DEBUG",
        None,
        "Exception: unexpected voxel spacing",
    )


def test_clara_fls_own_reports_keep_their_level_and_traceback(caplog: pytest.LogCaptureFixture) -> None:
    from clara_fl.runtime.library_logs import quiet_library_exceptions

    quiet_library_exceptions(debug=False)

    with caplog.at_level(logging.INFO):
        log_an_exception(logging.getLogger("clara_fl.fl.site"))

    [record] = caplog.records
    assert record.levelname == "ERROR" and record.exc_info is not None
