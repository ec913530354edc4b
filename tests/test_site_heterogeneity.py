"""Sites that differ: seeded per-site heterogeneity of the synthetic datasets (clara_fl.data.heterogeneity)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from clara_fl.data.heterogeneity import FACTORS, NEUTRAL, site_profiles
from clara_fl.data.synthetic import make_synthetic_dataset
from clara_fl.data.synthetic_classification import make_classification_dataset

SHAPE = (24, 24, 24)
# what the generators wrote before heterogeneity existed (seed 3): "none" must keep writing exactly this
SEGMENTATION_DIGEST = "c396220ebde10114d3b71bb4870a80c2816737d05a5aa080dffe194cbdd96f2c"
CLASSIFICATION_DIGEST = "a23636b7a163ffed71d752219af54adf511b244c6f02affaca33358a52132ede"


def _segmentation_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.nii.gz")):
        image = nib.load(str(path))
        digest.update(path.name.encode())
        digest.update(np.asarray(image.dataobj).tobytes())
        digest.update(image.affine.tobytes())
    for path in sorted(root.glob("*.json")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _classification_digest(root: Path) -> str:
    from PIL import Image

    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.png")):
        digest.update(path.name.encode())
        digest.update(np.asarray(Image.open(path)).tobytes())
    for path in sorted(root.glob("*.json")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _site_cases(root: Path, site: str, split: str) -> list[tuple[nib.Nifti1Image, np.ndarray, np.ndarray]]:
    datalist = json.loads((root / f"dataset_{site}.json").read_text())
    cases = []
    for item in datalist[split]:
        image = nib.load(str(root / item["image"]))
        cases.append((image, np.asarray(image.dataobj), np.asarray(nib.load(str(root / item["label"])).dataobj)))
    return cases


@pytest.fixture(scope="module")
def strong(tmp_path_factory: pytest.TempPathFactory):
    return make_synthetic_dataset(
        tmp_path_factory.mktemp("strong"), cases=16, sites=2, shape=SHAPE, test_cases=1, heterogeneity="strong"
    )


def test_none_writes_exactly_what_the_generators_wrote_before(tmp_path: Path) -> None:
    seg = make_synthetic_dataset(tmp_path / "seg", cases=6, sites=2, shape=(16, 16, 16), seed=3, heterogeneity="none")
    cls = make_classification_dataset(tmp_path / "cls", cases=12, sites=2, size=32, seed=3, heterogeneity="none")

    assert _segmentation_digest(seg.root) == SEGMENTATION_DIGEST
    assert _classification_digest(cls.root) == CLASSIFICATION_DIGEST
    assert seg.sites_json is None and not (seg.root / "sites.json").exists()
    assert cls.sites_json is None


def test_same_seed_gives_the_same_differing_sites_and_another_seed_does_not(tmp_path: Path) -> None:
    kwargs = dict(cases=6, sites=2, shape=(16, 16, 16), heterogeneity="strong")
    a = make_synthetic_dataset(tmp_path / "a", seed=5, **kwargs)
    b = make_synthetic_dataset(tmp_path / "b", seed=5, **kwargs)
    c = make_synthetic_dataset(tmp_path / "c", seed=6, **kwargs)

    assert _segmentation_digest(a.root) == _segmentation_digest(b.root)
    assert (a.root / "sites.json").read_text() == (b.root / "sites.json").read_text()
    assert _segmentation_digest(a.root) != _segmentation_digest(c.root)


def test_strong_sites_sit_at_opposite_ends_of_every_factor() -> None:
    first, second = site_profiles(2, "strong", seed=0, modality="ct")

    for name in ("intensity_scale", "intensity_offset", "noise_scale", "spacing_scale", "organ_scale"):
        low, high = sorted((getattr(first, name), getattr(second, name)))
        assert low < high, name
    assert sorted((first.intensity_scale, second.intensity_scale)) == [0.8, 1.2]
    assert sorted((first.label_frequency, second.label_frequency)) == [0.5, 1.0]


def test_only_the_chosen_factors_vary() -> None:
    profiles = site_profiles(3, "mild", seed=1, modality="xray", factors=["noise"])

    assert len({p.noise_scale for p in profiles}) == 3
    for profile in profiles:
        assert profile.intensity_scale == NEUTRAL.intensity_scale and profile.organ_scale == NEUTRAL.organ_scale


def test_sites_json_records_every_sites_profile_and_what_each_field_means(strong) -> None:
    content = json.loads(strong.sites_json.read_text())

    assert content["heterogeneity"] == "strong" and content["seed"] == 0
    assert content["factors"] == list(FACTORS) and set(content["meaning"]) == set(FACTORS)
    assert set(content["sites"]) == {"site-1", "site-2"}
    for name, site in content["sites"].items():
        image = nib.load(str(strong.root / json.loads(strong.site_datalists[name].read_text())["training"][0]["image"]))
        np.testing.assert_allclose(image.header.get_zooms(), site["spacing_mm"], rtol=1e-5)


def _organ_summary(root: Path, site: str) -> dict:
    cases = _site_cases(root, site, "validation") + _site_cases(root, site, "training")
    with_organ = [(image, array, label) for image, array, label in cases if label.any()]
    return {
        "zoom": {tuple(np.round(image.header.get_zooms(), 4)) for image, _, _ in cases},
        "organ_hu": np.mean([array[label > 0].mean() for _, array, label in with_organ]),
        "organ_voxels": np.mean([label.sum() for _, _, label in with_organ]),
    }


def test_sites_differ_in_spacing_and_organ_intensity_as_documented(strong) -> None:
    sites = json.loads(strong.sites_json.read_text())["sites"]
    summary = {name: _organ_summary(strong.root, name) for name in sites}
    brighter = max(sites, key=lambda s: sites[s]["intensity_scale"] * 100 + sites[s]["intensity_offset"])
    darker = ({"site-1", "site-2"} - {brighter}).pop()

    assert summary["site-1"]["zoom"] != summary["site-2"]["zoom"] and len(summary["site-1"]["zoom"]) == 1
    assert summary[brighter]["organ_hu"] > summary[darker]["organ_hu"] + 40


def test_organ_size_alone_changes_the_organs_extent(tmp_path: Path) -> None:
    data = make_synthetic_dataset(
        tmp_path / "organ", cases=12, sites=2, shape=SHAPE, heterogeneity="strong", factors=["organ_size"]
    )
    sites = json.loads(data.sites_json.read_text())["sites"]
    bigger = max(sites, key=lambda s: sites[s]["organ_scale"])
    smaller = ({"site-1", "site-2"} - {bigger}).pop()
    summary = {name: _organ_summary(data.root, name) for name in sites}

    assert summary[bigger]["organ_voxels"] > 2 * summary[smaller]["organ_voxels"]  # radii 1.3 vs 0.75
    assert summary[bigger]["zoom"] == summary[smaller]["zoom"], "spacing did not vary"


def test_label_frequency_leaves_the_organ_out_of_some_training_cases_only(strong) -> None:
    sites = json.loads(strong.sites_json.read_text())["sites"]
    rarer = min(sites, key=lambda s: sites[s]["label_frequency"])

    training = _site_cases(strong.root, rarer, "training")
    empty = sum(not label.any() for _, _, label in training)
    assert empty == round((1 - sites[rarer]["label_frequency"]) * len(training))
    assert empty == len(sites[rarer]["training_cases_without_organ"])
    for name in sites:
        assert all(label.any() for _, _, label in _site_cases(strong.root, name, "validation"))


def test_classification_sites_differ_in_brightness_and_positive_share(tmp_path: Path) -> None:
    from PIL import Image

    data = make_classification_dataset(tmp_path / "cls", cases=24, sites=2, size=32, heterogeneity="strong")
    sites = json.loads(data.sites_json.read_text())["sites"]
    lists = {name: json.loads(path.read_text()) for name, path in data.site_datalists.items()}
    brightness = {
        name: np.mean([np.asarray(Image.open(data.root / i["image"]), float).mean() for i in lists[name]["validation"]])
        for name in lists
    }
    positives = {name: sum(i["label"] == [0.0, 1.0] for i in lists[name]["training"]) for name in lists}
    brighter = max(sites, key=lambda s: sites[s]["intensity_scale"] * 0.5 + sites[s]["intensity_offset"])
    rarer = min(sites, key=lambda s: sites[s]["label_frequency"])
    other = ({"site-1", "site-2"} - {rarer}).pop()

    assert brightness[brighter] > brightness[({"site-1", "site-2"} - {brighter}).pop()] + 20
    assert positives[rarer] < positives[other]
    union = json.loads(data.dataset_json.read_text())["training"]
    assert sorted(i["image"] for i in union) == sorted(i["image"] for lst in lists.values() for i in lst["training"])


@pytest.mark.parametrize(
    "kwargs, match", [({"heterogeneity": "wild"}, "none, mild, strong"), ({"factors": ["hue"]}, "noise")]
)
def test_unknown_level_or_factor_is_refused_naming_the_valid_ones(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_synthetic_dataset(
            tmp_path / "bad", cases=6, sites=2, shape=(16, 16, 16), **{"heterogeneity": "mild", **kwargs}
        )
    assert not (tmp_path / "bad").exists()


def test_synth_command_writes_sites_json_for_strong_and_refuses_an_unknown_factor(tmp_path: Path, capsys) -> None:
    from clara_fl.cli import main

    code = main(
        ["synth", str(tmp_path / "d"), "--cases", "6", "--shape", "16", "16", "16", "--heterogeneity", "strong"]
    )

    assert code == 0 and (tmp_path / "d" / "sites.json").is_file()
    assert "sites.json" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:
        main(["synth", str(tmp_path / "e"), "--heterogeneity", "mild", "--vary", "hue"])
    assert refused.value.code == 2 and "valid: intensity" in capsys.readouterr().err
