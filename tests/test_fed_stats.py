"""clara-fl stats, without FLARE running: a site's features, the privacy cleansers, the site file's tightening."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clara_fl.config.errors import ConfigError
from clara_fl.fl.stats.features import DatasetFeatures, histogram_quantiles, summarize_case
from clara_fl.fl.stats.privacy import CaseMinCountCleanser, StatsPrivacy, site_privacy

ROOT = Path(__file__).resolve().parents[1]


def _cube_case(inside: float, outside: float, spacing: tuple[float, float, float]) -> dict:
    """A 1x4x4x4 volume: a 2x2x2 labelled cube of ``inside``, ``outside`` elsewhere."""
    image = np.full((1, 4, 4, 4), outside, dtype=np.float32)
    label = np.zeros((1, 4, 4, 4), dtype=np.uint8)
    image[0, :2, :2, :2], label[0, :2, :2, :2] = inside, 1
    return {"image": image, "label": label, "affine": np.diag([*spacing, 1.0])}


def test_a_segmentation_case_gives_its_shape_spacing_label_fraction_and_intensities() -> None:
    case = _cube_case(100.0, -10.0, (0.8, 0.8, 2.5))

    summary = summarize_case(case["image"], case["label"], "segmentation", 2, case["affine"])

    assert summary.values == {
        "shape_0": 4.0,
        "shape_1": 4.0,
        "shape_2": 4.0,
        "spacing_0": pytest.approx(0.8),
        "spacing_1": pytest.approx(0.8),
        "spacing_2": pytest.approx(2.5),
        "label_fraction_1": 8 / 64,
        "label_present_1": 1.0,
    }
    inside, outside = summary.regions["intensity_in_label"], summary.regions["intensity_outside_label"]
    assert (inside.count, inside.total, inside.low, inside.high) == (8, 800.0, 100.0, 100.0)
    assert (outside.count, outside.total) == (56, -560.0)


def test_a_dataset_of_synthetic_volumes_gives_the_expected_counts_means_and_deviations() -> None:
    cases = [_cube_case(100.0, 0.0, (1.0, 1.0, 1.0)), _cube_case(200.0, 0.0, (1.0, 1.0, 3.0))]
    summaries = [summarize_case(c["image"], c["label"], "segmentation", 2, c["affine"]) for c in cases]

    dataset = DatasetFeatures(summaries)

    assert dataset.count("spacing_2") == 2 and dataset.mean("spacing_2") == 2.0
    assert dataset.stddev("spacing_2") == pytest.approx(np.std([1.0, 3.0], ddof=1))
    assert dataset.count("intensity_in_label") == 16 and dataset.mean("intensity_in_label") == 150.0
    assert dataset.stddev("intensity_in_label") == pytest.approx(np.std([100.0] * 8 + [200.0] * 8, ddof=1))
    assert dataset.case_count("intensity_in_label") == 2
    assert dataset.mean("load_failed") == 0.0


def test_a_case_that_failed_to_load_is_counted_in_load_failed_only() -> None:
    case = _cube_case(1.0, 0.0, (1.0, 1.0, 1.0))
    ok = summarize_case(case["image"], case["label"], "segmentation", 2, case["affine"])
    from clara_fl.fl.stats.features import CaseSummary

    dataset = DatasetFeatures([ok, CaseSummary()], failed=1)

    assert (dataset.count("load_failed"), dataset.sum("load_failed")) == (2, 1.0)
    assert dataset.count("spacing_0") == 1


def test_a_classification_case_gives_its_class_as_a_frequency_feature() -> None:
    image = np.zeros((1, 8, 8), dtype=np.float32)

    summary = summarize_case(image, [0.0, 1.0], "classification", 2)

    assert (summary.values["class_0"], summary.values["class_1"]) == (0.0, 1.0)
    assert summary.regions["intensity"].count == 64
    assert "label_fraction_1" not in summary.values


def test_quantiles_read_from_a_histogram_interpolate_inside_a_bin() -> None:
    bins = [(0.0, 10.0, 50.0), (10.0, 20.0, 50.0)]

    quantiles = histogram_quantiles(bins, (25, 50, 75))

    assert quantiles == {"p25": pytest.approx(5.0), "p50": pytest.approx(10.0), "p75": pytest.approx(15.0)}


class _Generator:
    """What CaseMinCountCleanser asks the site's ClaraStatistics."""

    def __init__(self, dataset: DatasetFeatures) -> None:
        self.dataset = dataset

    def case_count(self, dataset_name: str, feature_name: str) -> int:
        return self.dataset.case_count(feature_name)

    def bin_cases(self, dataset_name: str, feature_name: str) -> list[int]:
        return self.dataset.bin_cases[feature_name]


def test_the_min_count_filter_removes_a_bin_held_by_fewer_cases_than_its_threshold() -> None:
    from nvflare.app_common.abstract.statistics_spec import Bin, Histogram, HistogramType

    # three cases: two put their labelled voxels into the low bin, one into the high bin
    cases = [_cube_case(v, 0.0, (1.0, 1.0, 1.0)) for v in (10.0, 12.0, 95.0)]
    dataset = DatasetFeatures([summarize_case(c["image"], c["label"], "segmentation", 2, c["affine"]) for c in cases])
    bins = dataset.histogram("intensity_in_label", 2, 0.0, 100.0)
    cleanser = CaseMinCountCleanser(min_count=2)
    cleanser._generator = _Generator(dataset)
    statistics = {
        "count": {"training": {"intensity_in_label": 24}},
        "failure_count": {"training": {"intensity_in_label": 0}},
        "histogram": {"training": {"intensity_in_label": Histogram(HistogramType.STANDARD, [Bin(*b) for b in bins])}},
    }

    cleansed, modified = cleanser.apply(statistics, "site-1")

    kept = cleansed["histogram"]["training"]["intensity_in_label"].bins
    assert modified and [b.sample_count for b in kept] == [16.0, 0.0]
    assert [b.sample_count for b in Histogram(HistogramType.STANDARD, [Bin(*b) for b in bins]).bins] == [16.0, 8.0]


def test_the_min_count_filter_removes_a_feature_held_by_fewer_cases_however_many_voxels() -> None:
    case = _cube_case(10.0, 0.0, (1.0, 1.0, 1.0))
    dataset = DatasetFeatures([summarize_case(case["image"], case["label"], "segmentation", 2, case["affine"])])
    cleanser = CaseMinCountCleanser(min_count=2)
    cleanser._generator = _Generator(dataset)
    statistics = {
        "count": {"training": {"intensity_in_label": 8}},
        "failure_count": {"training": {"intensity_in_label": 0}},
        "sum": {"training": {"intensity_in_label": 80.0}},
    }

    cleansed, _ = cleanser.apply(statistics, "site-1")

    assert "intensity_in_label" not in cleansed["sum"]["training"]


def test_the_site_file_tightens_the_jobs_privacy_settings() -> None:
    job = StatsPrivacy(min_count=5, min_noise_level=0.1, max_noise_level=0.3, max_bins_percent=10)
    site = {"statistics": {"min_count": 20, "min_noise_level": 0.2, "max_noise_level": 0.5, "max_bins_percent": 5}}

    assert site_privacy(job, site, "site.json") == StatsPrivacy(20, 0.2, 0.5, 5)


def test_the_site_file_cannot_loosen_the_jobs_privacy_settings() -> None:
    job = StatsPrivacy(min_count=5, min_noise_level=0.1, max_noise_level=0.3, max_bins_percent=10)
    site = {"statistics": {"min_count": 2, "min_noise_level": 0.0, "max_noise_level": 0.1, "max_bins_percent": 50}}

    assert site_privacy(job, site, "site.json") == job


@pytest.mark.parametrize(
    ("given", "key"),
    [
        ({"min_count": 0}, "statistics.min_count"),
        ({"min_count": "ten"}, "statistics.min_count"),
        ({"max_noise_level": 1.5}, "statistics.max_noise_level"),
        ({"max_bins_percent": 0}, "statistics.max_bins_percent"),
        ({"min_cases": 3}, "statistics.min_cases"),
    ],
)
def test_a_bad_site_file_privacy_value_is_one_line_naming_the_key(given: dict, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        site_privacy(StatsPrivacy(), {"statistics": given}, "local/clara_fl_site.json")

    message = str(caught.value)
    assert "\n" not in message and "local/clara_fl_site.json" in message and key in message


@pytest.mark.integration  # the first import of monai.transforms
def test_the_loader_is_cut_before_the_first_random_intensity_or_crop_transform() -> None:
    from monai.transforms import EnsureChannelFirstd, LoadImaged, Orientationd, RandFlipd, ScaleIntensityRanged

    from clara_fl.fl.stats.loading import cut_loading_transforms

    keys = ["image"]
    load, channel, orient = LoadImaged(keys), EnsureChannelFirstd(keys), Orientationd(keys, axcodes="RAS")
    scale = ScaleIntensityRanged(keys, a_min=0, a_max=1, b_min=0, b_max=1)

    assert cut_loading_transforms([load, channel, orient, scale, RandFlipd(keys)]) == [load, channel, orient]
    assert cut_loading_transforms([load, RandFlipd(keys), orient]) == [load]


def test_the_summary_compares_the_sites_means() -> None:
    from clara_fl.fl.stats.summary import summarize

    flare = {
        "spacing_0": {
            "count": {"site-1": {"training": 4}, "site-2": {"training": 4}, "Global": {"training": 8}},
            "mean": {"site-1": {"training": 1.0}, "site-2": {"training": 2.0}, "Global": {"training": 1.5}},
            "stddev": {"site-1": {"training": 0.0}, "site-2": {"training": 0.0}, "Global": {"training": 0.5}},
        }
    }

    summary = summarize(flare)

    assert summary["sites"]["site-2"]["training"]["spacing_0"] == {"count": 4, "mean": 2.0, "stddev": 0.0}
    (row,) = summary["differences"]
    assert (row["feature"], row["spread"], row["relative_spread"]) == ("spacing_0", 1.0, pytest.approx(1 / 1.5))
    assert json.loads(json.dumps(summary)) == summary


@pytest.mark.integration
@pytest.mark.parametrize("mmar", ["spleen_ct_seg", "chest_xray_cls", "clara40"])
def test_a_site_reads_its_cases_through_the_mmars_loader_under_the_restricted_policy(
    mmar: str, tmp_path: Path, synthetic_data
) -> None:
    from clara_fl.fl.stats.loading import StatsSettings, site_case_summaries

    if mmar == "chest_xray_cls":
        from clara_fl.data.synthetic_classification import make_classification_dataset

        data = make_classification_dataset(tmp_path / "xray", cases=12, sites=2, size=32, seed=0)
        root, datalist, app = data.root, data.dataset_json, ROOT / "mmars" / "chest_xray_cls"
    else:
        root, datalist = synthetic_data.root, synthetic_data.dataset_json
        app = ROOT / "tests" / "clara40_mmar" if mmar == "clara40" else ROOT / "mmars" / "spleen_ct_seg"
    settings = StatsSettings(
        app_dir=str(app),
        site_values={"DATA_ROOT": str(root), "DATASET_JSON": str(datalist)},
        data_roots=[str(root)],
    )

    found = site_case_summaries(settings, lambda: False)

    cases, failed = found["training"] if "training" in found else next(iter(found.values()))
    assert failed == 0 and cases
    values = cases[0].values
    if mmar == "chest_xray_cls":
        assert values["class_0"] + values["class_1"] == 1.0 and "intensity" in cases[0].regions
    else:
        assert values["spacing_0"] > 0 and "intensity_in_label" in cases[0].regions
