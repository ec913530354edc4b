# Copyright (c) clara-fl contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Specification of the synthetic MSD-style spleen dataset (clara_fl.data.synthetic)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from clara_fl.data.synthetic import SyntheticDataset, make_synthetic_dataset

SHAPE = (32, 32, 32)
A_MIN, A_MAX = -57.0, 164.0  # Clara spleen ScaleIntensityRange window


def _load(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


def _items(datalist: dict) -> list[tuple[str, str]]:
    return [(d["image"], d["label"]) for d in datalist["training"] + datalist["validation"]]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> SyntheticDataset:
    """Eight labelled cases over two sites plus two test cases, 32^3."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), cases=8, sites=2, shape=SHAPE, test_cases=2)


def test_returns_paths_of_what_it_wrote(dataset):
    assert dataset.root.is_dir()
    assert dataset.dataset_json == dataset.root / "dataset.json"
    assert dataset.num_cases == 8
    assert set(dataset.site_datalists) == {"site-1", "site-2"}
    for name, path in dataset.site_datalists.items():
        assert path == dataset.root / f"dataset_{name}.json"
        assert path.is_file()
    with pytest.raises(dataclasses.FrozenInstanceError):
        dataset.num_cases = 3  # type: ignore[misc]


def test_dataset_json_is_msd_style_with_relative_paths_to_existing_files(dataset):
    content = json.loads(dataset.dataset_json.read_text())
    assert content["name"] == "SyntheticSpleen"
    assert content["modality"] == {"0": "CT"}
    assert content["labels"] == {"0": "background", "1": "spleen"}
    assert content["numTraining"] == 8 and content["numTest"] == 2
    # val_fraction=0.25 of 8 cases -> 2 validation cases
    assert len(content["training"]) == 6 and len(content["validation"]) == 2
    assert len(content["test"]) == 2
    for image, label in _items(content):
        assert image.startswith("imagesTr/") and label.startswith("labelsTr/")
        assert not Path(image).is_absolute()
        assert (dataset.root / image).is_file() and (dataset.root / label).is_file()
    for image in content["test"]:
        assert image.startswith("imagesTs/") and (dataset.root / image).is_file()
    assert len(set(_items(content))) == 8, "every labelled case is listed exactly once"
    assert sorted(p.name for p in (dataset.root / "imagesTr").iterdir()) == [f"case_{i:03d}.nii.gz" for i in range(8)]


def test_site_datalists_partition_training_and_validation(dataset):
    full = json.loads(dataset.dataset_json.read_text())
    sites = {name: json.loads(path.read_text()) for name, path in dataset.site_datalists.items()}
    for key in ("training", "validation"):
        per_site = [[(d["image"], d["label"]) for d in site[key]] for site in sites.values()]
        assert all(len(items) >= 1 for items in per_site), f"every site needs a {key} case"
        flat = [item for items in per_site for item in items]
        assert len(flat) == len(set(flat)), f"{key} partitions must be disjoint"
        assert sorted(flat) == sorted((d["image"], d["label"]) for d in full[key]), f"{key} partitions must cover all"
    for site in sites.values():
        assert site["test"] == full["test"]
        for image, label in _items(site):  # works with data_file_base_dir=root
            assert (dataset.root / image).is_file() and (dataset.root / label).is_file()


def test_same_seed_gives_identical_arrays_and_different_seed_does_not(tmp_path):
    kwargs = dict(cases=2, sites=1, shape=SHAPE, test_cases=1)
    a = make_synthetic_dataset(tmp_path / "a", seed=7, **kwargs)
    b = make_synthetic_dataset(tmp_path / "b", seed=7, **kwargs)
    c = make_synthetic_dataset(tmp_path / "c", seed=8, **kwargs)
    files = ["imagesTr/case_000.nii.gz", "labelsTr/case_000.nii.gz", "imagesTr/case_001.nii.gz"]
    files.append("imagesTs/case_100.nii.gz")
    for rel in files:
        np.testing.assert_array_equal(_load(a.root / rel), _load(b.root / rel))
        assert not np.array_equal(_load(a.root / rel), _load(c.root / rel)), rel
    assert a.dataset_json.read_text() == b.dataset_json.read_text()


def test_image_is_ct_in_hounsfield_units_with_a_bright_labelled_organ(dataset):
    for i in range(dataset.num_cases):
        image = _load(dataset.root / f"imagesTr/case_{i:03d}.nii.gz")
        label = _load(dataset.root / f"labelsTr/case_{i:03d}.nii.gz")
        assert image.dtype == np.int16 and image.shape == SHAPE
        assert label.dtype == np.uint8 and label.shape == SHAPE
        assert -1030 <= image.min() <= -990, "air outside the body is about -1000 HU"
        assert set(np.unique(label)) == {0, 1}, "label is binary and non-empty"
        organ = label == 1
        body_background = (image > -500) & ~organ & (image < 300)
        organ_mean, background_mean = image[organ].mean(), image[body_background].mean()
        assert A_MIN < organ_mean < A_MAX, "organ lies inside the spleen intensity window"
        assert background_mean < A_MIN, "body fat lies below the window"
        assert organ_mean > background_mean + 100
        assert not label[image > 300].any(), "bright bone-like distractors are not labelled"
        assert (image > A_MAX).any(), "at least one distractor above the window"


def test_test_images_have_no_labels(dataset):
    assert not any((dataset.root / "labelsTr").glob("case_1*.nii.gz"))
    assert not (dataset.root / "labelsTs").exists()
    assert _load(dataset.root / "imagesTs/case_100.nii.gz").shape == SHAPE


def test_affine_has_clara_spleen_like_spacing(dataset):
    img = nib.load(str(dataset.root / "imagesTr/case_000.nii.gz"))
    np.testing.assert_allclose(img.header.get_zooms(), (1.5, 1.5, 2.0))
    np.testing.assert_allclose(np.diag(img.affine)[:3], (1.5, 1.5, 2.0))
    assert np.count_nonzero(img.affine[:3, :3] - np.diag(np.diag(img.affine)[:3])) == 0, "diagonal affine"
    np.testing.assert_allclose(nib.load(str(dataset.root / "labelsTr/case_000.nii.gz")).affine, img.affine)


def test_loads_with_the_clara_spleen_monai_preprocessing(dataset):
    from monai.data import load_decathlon_datalist
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ScaleIntensityRanged

    transform = Compose(
        [
            LoadImaged(keys=["image", "label"]),
            EnsureChannelFirstd(keys=["image", "label"]),
            ScaleIntensityRanged(keys="image", a_min=A_MIN, a_max=A_MAX, b_min=0.0, b_max=1.0, clip=True),
        ]
    )
    datalist = load_decathlon_datalist(
        str(dataset.site_datalists["site-1"]),
        is_segmentation=True,
        data_list_key="training",
        base_dir=str(dataset.root),
    )
    data = transform(datalist[0])
    image, label = data["image"], data["label"]
    assert tuple(image.shape) == (1, *SHAPE) and tuple(label.shape) == (1, *SHAPE)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    organ = label > 0
    assert float(image[organ].mean()) > 0.4, "organ stays bright after windowing"
    np.testing.assert_allclose(image.pixdim[:3], (1.5, 1.5, 2.0))


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(cases=0), "cases"),
        (dict(sites=0), "sites"),
        (dict(shape=(8, 32, 32)), "shape"),
        (dict(shape=(32, 32)), "shape"),
        (dict(val_fraction=0.0), "val_fraction"),
        (dict(val_fraction=1.0), "val_fraction"),
        (dict(test_cases=-1), "test_cases"),
        (dict(cases=3, sites=2), "cases"),  # 2 training + 1 validation case cannot cover 2 sites
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(tmp_path, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        make_synthetic_dataset(tmp_path / "bad", **{"shape": SHAPE, **kwargs})


def test_too_few_cases_message_says_how_many_are_needed(tmp_path):
    # 3 sites, val_fraction 0.25: validation needs >= 3 cases -> round(0.25 * cases) >= 3 -> cases >= 10
    with pytest.raises(ValueError, match=r"cases >= 10"):
        make_synthetic_dataset(tmp_path / "bad", cases=6, sites=3, shape=SHAPE)
    assert make_synthetic_dataset(tmp_path / "ok", cases=10, sites=3, shape=SHAPE, test_cases=0).num_cases == 10
