"""A site's failure: the full line stays in the site's log; the server gets the stage, the error's kind and the
config item, never a case name, a data path or the exception's message, unless the site opts in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from clara_fl.config.errors import ConfigError
from clara_fl.config.resolver import ConfigResolver
from clara_fl.fl.site.failure_report import SiteFailure

ARCHIVE = "/data/ZZ-Hospital-Radiology-Archive"
CASE = "MRN-4471923-ACC-88120.nii.gz"
MMAR = "/workspace/site-3/job/app_site-3"


def identifiers_in(text: str) -> list[str]:
    return [s for s in ("ZZ-Hospital-Radiology-Archive", "MRN-4471923", "/data") if s in text]


def run_time_failure(transforms: list[dict[str, Any]], image: str) -> BaseException:
    """What running a config's pre_transforms on one data item raises, marked by the config's failure locator as a
    workflow marks the failures of its runs."""
    from monai.transforms import apply_transform

    from clara_fl.workflows.failures import FailureLocator

    resolver = ConfigResolver({"train": {"pre_transforms": transforms}}, file="config/config_train.json")
    locator = FailureLocator(resolver)
    with pytest.raises(Exception) as raised, locator.naming_failures():
        apply_transform(resolver.get("pre_transforms", "train"), {"image": image})
    return raised.value


def build_failure(transform: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as raised:
        ConfigResolver({"train": {"pre_transforms": [transform]}}, file="config/config_train.json").get(
            "pre_transforms", "train"
        )
    return raised.value


# -- what the server gets ------------------------------------------------------------------------


def test_a_config_error_naming_a_datalist_path_and_a_case_sends_neither() -> None:
    error = ConfigError(
        f"image file not found: {ARCHIVE}/imagesTr/{CASE} (datalist {ARCHIVE}/dataset.json: validation[2].image)",
        file="config/config_train.json",
        path="train.dataset.data_list_file_path",
    )

    failure = SiteFailure.from_exception("build", error, MMAR)

    assert failure.public_text() == (
        "cannot build this site's trainer: ConfigError at config/config_train.json: train.dataset.data_list_file_path"
    )


def test_a_component_that_failed_to_build_is_named_by_its_config_item_and_class() -> None:
    error = build_failure(
        {
            "name": "RandCropByPosNegLabeld",
            "args": {"keys": "image", "label_key": "label", "spatial_size": [16, 16, 16], "pos": -1},
        }
    )

    public = SiteFailure.from_exception("build", error, MMAR).public_text()

    assert public == (
        "cannot build this site's trainer: ConfigError at config/config_train.json: "
        "train.pre_transforms[0] (RandCropByPosNegLabeld)"
    )


def test_a_run_time_failure_names_the_config_item_and_class_but_never_the_case() -> None:
    error = run_time_failure([{"name": "LoadImaged", "args": {"keys": "image"}}], f"{ARCHIVE}/imagesTr/{CASE}")

    failure = SiteFailure.from_exception("train", error, MMAR)

    assert failure.public_text() == (
        "local training failed: FileNotFoundError at config/config_train.json: train.pre_transforms[0] (LoadImaged)"
    )


def test_the_site_log_line_keeps_the_case_and_the_cause() -> None:
    error = run_time_failure([{"name": "LoadImaged", "args": {"keys": "image"}}], f"{ARCHIVE}/imagesTr/{CASE}")

    local = SiteFailure.from_exception("train", error, MMAR).local_text()

    assert local.startswith(
        f"local training failed: config/config_train.json: train.pre_transforms[0] (LoadImaged) failed on {CASE}: "
    )


def test_a_case_that_fails_while_the_trainer_builds_is_named_only_in_the_site_log(
    tmp_path: Path, synthetic_data
) -> None:
    """A CacheDataset caches its cases while the trainer builds; a cut-off case fails there."""
    from clara_fl.config.mmar import load_config
    from clara_fl.workflows.train import TrainWorkflow
    from tests.conftest import SPLEEN_MMAR, TINY, copy_mmar

    case = tmp_path / "ZZ-Hospital-Radiology-Archive" / CASE
    case.parent.mkdir()
    datalist = json.loads((synthetic_data.root / "dataset.json").read_text())
    good = synthetic_data.root / datalist["validation"][0]["image"]
    case.write_bytes(good.read_bytes()[:100])
    datalist["validation"] = [{"image": str(case), "label": datalist["validation"][0]["label"]}]
    (tmp_path / "dataset.json").write_text(json.dumps(datalist))
    mmar = copy_mmar(SPLEEN_MMAR, tmp_path / "app", synthetic_data.root, DATASET_JSON=str(tmp_path / "dataset.json"))
    with pytest.raises(ConfigError) as raised:
        TrainWorkflow.build(load_config(mmar, "config/config_train.json", overrides=TINY))

    failure = SiteFailure.from_exception("build", raised.value, str(mmar))

    assert failure.public_text() == (
        "cannot build this site's trainer: ImageFileError at config/config_train.json: "
        "train.pre_transforms[0] (LoadImaged)"
    )
    assert CASE in failure.local_text() and str(case.parent) in failure.local_text()


def test_the_exception_message_never_reaches_the_public_text() -> None:
    error = OSError(f"[Errno 5] Input/output error: '{ARCHIVE}/imagesTr/{CASE}'")

    assert SiteFailure.from_exception("validate", error, MMAR).public_text() == "local validation failed: OSError"


def test_a_config_file_outside_the_mmar_is_dropped_with_its_json_path() -> None:
    error = ConfigError("a datalist must be a JSON object", file=f"{ARCHIVE}/dataset_site-3.json", path="validation[2]")

    failure = SiteFailure.from_exception("build", error, MMAR)

    assert (failure.config_file, failure.json_path) == (None, None)
    assert failure.public_text() == "cannot build this site's trainer: ConfigError"


def test_a_config_file_inside_the_mmar_is_named_relative_to_it() -> None:
    error = ConfigError("invalid JSON at line 3, column 1", file=f"{MMAR}/config/config_validation.json")

    assert SiteFailure.from_exception("build", error, MMAR).config_file == "config/config_validation.json"


@pytest.mark.parametrize(
    "file",
    [
        "../../../data/ZZ-Hospital-Radiology-Archive/dataset.json",  # climbs out of the MMAR
        f"{MMAR}/data/{CASE}",  # inside the MMAR, but no config file
        "$CLARA_FL_CODE_POLICY",  # not a file at all
        f"{ARCHIVE}/config_train.json",  # absolute, and the MMAR root unknown
    ],
)
def test_a_file_that_is_no_config_file_inside_the_mmar_is_dropped(file: str) -> None:
    mmar_root = None if file.startswith(ARCHIVE) else MMAR

    failure = SiteFailure.from_exception("build", ConfigError("bad", file=file, path="x"), mmar_root)

    assert failure.config_file is None and identifiers_in(failure.public_text()) == []


def test_a_json_path_or_class_name_with_characters_no_config_uses_is_dropped() -> None:
    error = ConfigError("bad", file="config/config_train.json", path=f"train.dataset[{ARCHIVE}/{CASE}]")
    error.component = f"{ARCHIVE}/x"

    failure = SiteFailure.from_exception("build", error, MMAR)

    assert (failure.json_path, failure.component) == (None, None)


def test_a_site_that_opts_in_appends_the_detail_on_one_line() -> None:
    failure = SiteFailure.from_exception("validate", OSError(f"cannot read\n{ARCHIVE}/{CASE}"), MMAR)

    assert failure.public_text(send_details=True) == (
        f"local validation failed: OSError; detail: OSError: cannot read {ARCHIVE}/{CASE}"
    )


def test_a_refusal_says_only_its_fixed_word() -> None:
    failure = SiteFailure.refusal("train", "non_finite_weights", "NaN/Inf in 3 tensors (e.g. model.0.conv.weight)")

    assert failure.public_text() == "local training failed: non_finite_weights"
    assert failure.local_text() == "local training failed: NaN/Inf in 3 tensors (e.g. model.0.conv.weight)"


@pytest.mark.parametrize("stage, kind", [("train", f"bad {ARCHIVE}"), (f"{ARCHIVE}/train", "bad_task_data")])
def test_a_refusal_whose_stage_or_kind_is_no_plain_word_is_refused(stage: str, kind: str) -> None:
    with pytest.raises(ValueError):
        SiteFailure.refusal(stage, kind, "detail")


def test_an_unknown_stage_reads_as_its_words() -> None:
    assert SiteFailure.refusal("load_weights", "model_mismatch", "").public_text() == (
        "load weights failed: model_mismatch"
    )


# -- across a process boundary -------------------------------------------------------------------


def test_a_record_survives_json() -> None:
    error = run_time_failure([{"name": "LoadImaged", "args": {"keys": "image"}}], f"{ARCHIVE}/imagesTr/{CASE}")
    failure = SiteFailure.from_exception("train", error, MMAR)

    assert SiteFailure.from_record(json.loads(json.dumps(failure.to_record()))) == failure


@pytest.mark.parametrize("part", ["stage", "kind", "config_file", "json_path", "component", "detail"])
def test_from_record_refuses_a_part_that_is_not_a_string(part: str) -> None:
    record = SiteFailure.refusal("train", "bad_task_data", "x").to_record()
    record[part] = ["config/config_train.json"]

    with pytest.raises(ValueError, match=part):
        SiteFailure.from_record(record)


def test_from_record_refuses_unknown_keys() -> None:
    record = {**SiteFailure.refusal("train", "bad_task_data", "x").to_record(), "case": CASE}

    with pytest.raises(ValueError, match="unknown keys: case"):
        SiteFailure.from_record(record)


def test_from_record_refuses_a_record_without_stage_kind_or_detail() -> None:
    with pytest.raises(ValueError, match="lacks: kind, detail"):
        SiteFailure.from_record({"stage": "train"})


def test_from_record_refuses_a_config_file_that_may_not_leave_the_site() -> None:
    record = {**SiteFailure.refusal("train", "bad_task_data", "x").to_record(), "config_file": f"{ARCHIVE}/a.json"}

    with pytest.raises(ValueError, match="config_file"):
        SiteFailure.from_record(record)


# -- the structured locator ----------------------------------------------------------------------


def test_the_locator_gives_the_parts_of_the_line_it_writes() -> None:
    from clara_fl.workflows.failures import locate, locate_failure, root_cause

    error = run_time_failure([{"name": "LoadImaged", "args": {"keys": "image"}}], f"{ARCHIVE}/imagesTr/{CASE}")

    location = locate(error)

    assert location is not None
    assert (location.file, location.json_path, location.component, location.case) == (
        "config/config_train.json",
        "train.pre_transforms[0]",
        "LoadImaged",
        CASE,
    )
    assert locate_failure(error) == location.describe(": ".join(root_cause(error)))
