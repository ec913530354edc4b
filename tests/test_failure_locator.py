"""The failure locator of a workflow names the config items of its own build only, also from loader workers."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest

from clara_fl.config.context import BuildContext
from clara_fl.config.errors import FailureLocation, describe_failure
from clara_fl.config.resolver import ConfigResolver
from clara_fl.workflows.failures import FailureLocator, locate
from clara_fl.workflows.runtime import ClaraRuntime

LOAD = {"name": "LoadImaged", "args": {"keys": "image"}}


def built(file: str, config: dict[str, Any]) -> tuple[ConfigResolver, FailureLocator]:
    """A config built as a workflow builds it: the locator made first, given to the runtime."""
    runtime = ClaraRuntime()
    resolver = ConfigResolver(config, file=file, context=BuildContext(runtime=runtime))
    locator = FailureLocator(resolver)
    runtime.locator = locator
    resolver.build_all()
    return resolver, locator


def loading(case: Path, num_workers: int = 0, start_method: str | None = None) -> dict[str, Any]:
    """A train section whose data loader loads ``case`` through LoadImaged."""
    loader_args: dict[str, Any] = {"dataset": "@dataset", "batch_size": 1, "num_workers": num_workers}
    if start_method:
        loader_args["multiprocessing_context"] = start_method
    return {
        "train": {
            "pre_transforms": [LOAD],
            "dataset": {"name": "Dataset", "args": {"data": [{"image": str(case)}], "transform": "@pre_transforms"}},
            "dataloader": {"name": "DataLoader", "args": loader_args},
        }
    }


def load_first_batch(resolver: ConfigResolver, locator: FailureLocator) -> BaseException:
    with pytest.raises(Exception) as raised, locator.naming_failures():
        next(iter(resolver.get("dataloader", "train")))
    return raised.value


def test_two_workflows_in_one_process_do_not_see_each_others_components(tmp_path: Path) -> None:
    from monai.transforms import apply_transform

    first, first_locator = built("first/config_train.json", {"train": {"pre_transforms": [LOAD]}})
    _, second_locator = built("second/config_train.json", {"train": {"pre_transforms": [LOAD]}})
    with pytest.raises(Exception) as raised:
        apply_transform(first.get("pre_transforms", "train"), {"image": str(tmp_path / "case_001.nii.gz")})

    seen_by_second, seen_by_first = second_locator.locate(raised.value), first_locator.locate(raised.value)

    assert seen_by_second is None
    assert seen_by_first == FailureLocation(
        "first/config_train.json", "train.pre_transforms[0]", "LoadImaged", "case_001.nii.gz"
    )


def test_a_failure_leaving_a_workflow_carries_its_location_to_whoever_reports_it(tmp_path: Path) -> None:
    resolver, locator = built("config/config_train.json", loading(tmp_path / "case_002.nii.gz"))

    error = load_first_batch(resolver, locator)

    assert locate(error) == FailureLocation(
        "config/config_train.json", "train.pre_transforms[0]", "LoadImaged", "case_002.nii.gz"
    )


def test_a_failure_no_locator_marked_names_no_config_item(tmp_path: Path) -> None:
    from monai.transforms import apply_transform

    resolver, _ = built("config/config_train.json", {"train": {"pre_transforms": [LOAD]}})

    with pytest.raises(Exception) as raised:
        apply_transform(resolver.get("pre_transforms", "train"), {"image": str(tmp_path / "case_003.nii.gz")})

    assert locate(raised.value) is None
    assert "config/config_train.json" not in describe_failure(raised.value)


def test_a_data_loaders_dataset_carries_its_transforms_locations_through_pickling(tmp_path: Path) -> None:
    resolver, _ = built("config/config_train.json", loading(tmp_path / "case_004.nii.gz"))
    dataset = resolver.get("dataloader", "train").dataset

    copy = pickle.loads(pickle.dumps(dataset))

    assert copy.locations.item(copy.dataset.transform.transforms[0]) == (
        "config/config_train.json",
        "train.pre_transforms[0]",
        "LoadImaged",
    )


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_transform_failing_in_a_loader_worker_is_named_by_config_path_and_case(
    tmp_path: Path, start_method: str
) -> None:
    resolver, locator = built("config/config_train.json", loading(tmp_path / "case_005.nii.gz", 2, start_method))

    error = load_first_batch(resolver, locator)

    assert describe_failure(error).startswith(
        "config/config_train.json: train.pre_transforms[0] (LoadImaged) failed on case_005.nii.gz: "
    )
    assert " at 0x" not in describe_failure(error)


def test_a_dataset_carrying_its_locations_is_seeded_as_the_same_dataset_without_them() -> None:
    from monai.data import Dataset
    from monai.data.utils import set_rnd
    from monai.transforms import RandSpatialCropd

    from clara_fl.workflows.failures import CarriedLocations
    from clara_fl.workflows.runtime import LocatingDataset

    crop = RandSpatialCropd(keys="image", roi_size=(2, 2), random_size=False)
    plain = Dataset(data=[], transform=crop)
    seeded_plain = set_rnd(plain, seed=7), crop.R.get_state()[1][0]
    item = ("config/config_train.json", "train.pre_transforms[0]", "RandSpatialCropd")
    wrapped = LocatingDataset(Dataset(data=[], transform=crop), CarriedLocations([(crop, item)]))

    seeded_wrapped = set_rnd(wrapped, seed=7), crop.R.get_state()[1][0]

    assert seeded_wrapped == seeded_plain
