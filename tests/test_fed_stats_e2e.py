"""clara-fl stats in FLARE's simulator: sites that differ show each difference, identical sites show none.

One simulation of four sites: site-1 and site-2 hold ``clara-fl synth --heterogeneity strong`` data, site-3 and
site-4 the same cases drawn identically (``--heterogeneity none``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from clara_fl.cli import main

ROOT = Path(__file__).resolve().parents[1]
SHAPE = ["24", "24", "24"]


def _four_sites(data: Path) -> Path:
    """Strong data for site-1/2 and identical data for site-3/4, behind one site file; returns the site file."""
    for level in ("strong", "none"):
        assert main(["synth", str(data / level), "--heterogeneity", level, "--shape", *SHAPE, "--cases", "12"]) == 0
    lists = data / "lists"
    lists.mkdir()
    for target, (level, source) in enumerate([("strong", 1), ("strong", 2), ("none", 1), ("none", 2)], start=1):
        datalist = json.loads((data / level / f"dataset_site-{source}.json").read_text())
        moved = {
            key: [{k: f"{level}/{v}" for k, v in item.items()} for item in items]
            for key, items in datalist.items()
            if key in ("training", "validation")
        }
        (lists / f"dataset_site-{target}.json").write_text(json.dumps(moved))
    site_file = data / "sites_file.json"
    environment = {"DATA_ROOT": str(data), "DATASET_JSON": str(lists / "dataset_{SITE_NAME}.json")}
    site_file.write_text(json.dumps({"environment": environment}))
    return site_file


def _means(summary: dict, site: str, dataset: str = "training") -> dict[str, float]:
    return {f: v["mean"] for f, v in summary["sites"][site][dataset].items() if "mean" in v}


def _stddev(summary: dict, site: str, feature: str) -> float:
    return float(summary["sites"][site]["training"][feature]["stddev"])


@pytest.mark.e2e
def test_stats_show_each_synthetic_site_difference_and_none_between_identical_sites(tmp_path: Path) -> None:
    from clara_fl.data.synthetic import _ORGAN_HU

    site_file = _four_sites(tmp_path / "data")
    workspace = tmp_path / "ws"
    started = time.monotonic()

    code = main(
        ["stats", "-m", str(ROOT / "mmars" / "spleen_ct_seg"), "-w", str(workspace), "-n", "4", "-t", "2"]
        + ["--site-config", str(site_file), "--min-count", "2", "--bins", "10", "--datalist-key", "training"]
    )

    print(f"clara-fl stats, 4 sites: {time.monotonic() - started:.1f} s")
    assert code == 0
    summary = json.loads((workspace / "clara_fl_stats.json").read_text())["summary"]
    profiles = json.loads((tmp_path / "data" / "strong" / "sites.json").read_text())["sites"]
    p1, p2 = profiles["site-1"], profiles["site-2"]
    m1, m2, m3, m4 = (_means(summary, f"site-{k}") for k in (1, 2, 3, 4))

    # spacing: exactly the spacing sites.json gives each site; identical sites share theirs
    for axis in range(3):
        assert m1[f"spacing_{axis}"] == pytest.approx(p1["spacing_mm"][axis], abs=1e-3)
        assert m2[f"spacing_{axis}"] == pytest.approx(p2["spacing_mm"][axis], abs=1e-3)
        assert m3[f"spacing_{axis}"] == m4[f"spacing_{axis}"]
    # label frequency: the share of training cases with the organ, as sites.json lists the cases without it
    for site, means in (("site-1", m1), ("site-2", m2)):
        cases = summary["sites"][site]["training"]["label_present_1"]["count"]
        without = len(profiles[site]["training_cases_without_organ"])
        assert means["label_present_1"] == pytest.approx(1 - without / cases, abs=1e-3)
    assert m3["label_present_1"] == m4["label_present_1"] == 1.0
    # intensity: the organ's HU moves with each site's scale and offset
    expected = [p["intensity_scale"] * _ORGAN_HU + p["intensity_offset"] for p in (p1, p2)]
    measured = m1["intensity_in_label"] - m2["intensity_in_label"]
    assert measured == pytest.approx(expected[0] - expected[1], rel=0.35)
    assert abs(m3["intensity_in_label"] - m4["intensity_in_label"]) < 0.1 * abs(measured)
    # noise: the noisier site's organ voxels spread more (the organ's blurred edge spreads them too, scaled by the
    # site's intensity scale, so only the direction is asserted); identical sites' spread alike
    noisier, quieter = ("site-1", "site-2") if p1["noise_scale"] > p2["noise_scale"] else ("site-2", "site-1")
    assert _stddev(summary, noisier, "intensity_in_label") > _stddev(summary, quieter, "intensity_in_label")
    ratio = _stddev(summary, "site-3", "intensity_in_label") / _stddev(summary, "site-4", "intensity_in_label")
    assert 1 / 1.15 < ratio < 1.15

    # organ size: the organ's share of the volume, among cases that have it, follows organ_scale / spacing_scale
    def organ_share(means: dict[str, float]) -> float:
        return means["label_fraction_1"] / means["label_present_1"]

    size = [min(max(p["organ_scale"] / p["spacing_scale"], 0.6), 1.45) for p in (p1, p2)]
    assert (organ_share(m1) > organ_share(m2)) == (size[0] > size[1])
    strong_ratio = max(organ_share(m1), organ_share(m2)) / min(organ_share(m1), organ_share(m2))
    same_ratio = max(organ_share(m3), organ_share(m4)) / min(organ_share(m3), organ_share(m4))
    assert same_ratio < strong_ratio and same_ratio < 1.3
    # nothing that names a case or a data folder reached the server
    leaked = [
        str(path.relative_to(workspace))
        for path in (workspace / "server").rglob("*")
        if path.is_file()
        and any(s in path.read_bytes() for s in (b"case_0", b"imagesTr", str(tmp_path / "data").encode()))
    ]
    assert leaked == []
