"""Figure 8's evidence for the fair defaults: each site's best model, the sites' kept models, more sites and seeds,
the per-site bars (no run: arms given)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from bench.figures.fig8_algorithms import (
    ALGORITHMS,
    Arm,
    Group,
    algorithm_records,
    kept_arm,
    kept_dice,
    main,
    per_site_bars,
    read_summaries,
    site_best_record,
    write_summary,
)
from bench.harness.settings import QUICK

SITES3 = ("site-1", "site-2", "site-3")


def arms(values: Mapping[str, tuple[float, ...]], sites: tuple[str, ...] = SITES3) -> dict[str, Arm]:
    return {name: Arm(name, dict(zip(sites, v, strict=True))) for name, v in values.items()}


DIFFERING = {
    "centralized": (0.80, 0.78, 0.79),
    "site-1 alone": (0.75, 0.40, 0.30),
    "site-2 alone": (0.35, 0.70, 0.30),
    "site-3 alone": (0.30, 0.30, 0.72),
    "fedavg": (0.70, 0.66, 0.60),
    "ditto": (0.76, 0.74, 0.76),
    kept_arm("ditto"): (0.77, 0.75, 0.76),
}


def test_each_sites_best_model_must_beat_that_site_alone_and_fedavg_at_every_site() -> None:
    record = site_best_record(arms(DIFFERING), SITES3)

    assert record.met is True and record.samples == [pytest.approx(0.02), pytest.approx(0.05), pytest.approx(0.04)]
    assert "site-1: ditto, kept" in record.baseline


def test_one_site_doing_better_alone_misses_the_goal() -> None:
    record = site_best_record(arms({**DIFFERING, "site-1 alone": (0.80, 0.40, 0.30)}), SITES3)

    assert record.met is False and record.value == pytest.approx(-0.03)


def test_a_site_alones_best_model_by_validation_is_the_bar_when_it_beats_its_final_model() -> None:
    record = site_best_record(arms({**DIFFERING, "site-1 alone, best": (0.78, 0.40, 0.30)}), SITES3)

    assert record.met is False and record.samples[0] == pytest.approx(-0.01)


def test_the_model_a_site_kept_in_any_algorithms_run_is_a_candidate_for_its_best() -> None:
    record = site_best_record(arms({**DIFFERING, kept_arm("fedopt"): (0.85, 0.10, 0.10)}), SITES3)

    assert record.samples[0] == pytest.approx(0.10)
    assert "site-1: fedopt, kept" in record.baseline


def test_a_group_run_on_the_differing_sites_only_has_no_identical_sites_goal() -> None:
    records = algorithm_records({"differing": list(arms(DIFFERING).values())}, QUICK, SITES3)

    figures = [r.figure for r in records]
    assert "8 identical sites: FedAvg" not in figures
    assert "8 differing sites: each site's best model vs alone and FedAvg" in figures
    assert records[0].note == "- | 0.790/0.780"  # centralized's row shows the data set it did not run as "-"


def test_a_group_of_three_sites_names_its_records_and_compares_every_site() -> None:
    identical = list(arms({n: (0.8, 0.8, 0.8) for n in ("centralized", *ALGORITHMS)}).values())
    differing = list(arms(DIFFERING).values())

    records = {r.figure: r for r in algorithm_records({"identical": identical, "differing": differing}, QUICK,
                                                       SITES3, Group(1, 3).tag)}  # fmt: skip

    alone = records["8 differing sites: best vs each site alone [3 sites, seed 1]"]
    assert len(alone.samples) == 3 and alone.met is True
    assert records["8 differing sites: each site's best model vs alone and FedAvg [3 sites, seed 1]"].met is True


def test_the_kept_models_score_is_each_sites_last_kept_score(tmp_path: Path) -> None:
    from clara_fl.runtime import events as ev

    for site, scores in (("site-1", (0.3, 0.6)), ("site-2", (0.5, 0.4))):
        (tmp_path / site / "app").mkdir(parents=True)
        log = ev.event_log(str(tmp_path / site / "app"), ev.SITE_EVENTS_FILE)
        for number, score in enumerate(scores):
            log.write(ev.SITE_MODEL_KEPT, number, site, {"metric": "val_mean_dice", "kept_score": score})

    assert kept_dice(tmp_path) == {"site-1": 0.6, "site-2": 0.4}


def test_the_per_site_bars_are_one_picture_per_number_of_sites_and_dataset(tmp_path: Path) -> None:
    group = {"identical": [Arm("fedavg", {"site-1": 0.5, "site-2": 0.6})], "differing": [Arm("fedavg", {})]}

    written = per_site_bars({Group(0, 2): group, Group(1, 2): group}, tmp_path)

    assert [p.name for p in written] == ["figure-8-2-sites-identical.png", "figure-8-2-sites-differing.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)


def test_the_groups_of_separate_runs_merge_into_one_summary_and_its_bars(tmp_path: Path) -> None:
    def run(seed: int, dice: float) -> Path:
        folder = tmp_path / f"run-{seed}"
        folder.mkdir()
        group = {"identical": [Arm("fedavg", {"site-1": dice, "site-2": dice})], "differing": [Arm("fedavg", {})]}
        return write_summary({Group(seed, 2): group}, folder)

    first, second = run(0, 0.5), run(1, 0.7)

    main(["--merge", str(first), str(second), "--out", str(tmp_path / "merged")])

    merged = read_summaries([tmp_path / "merged" / "arms.json"])
    assert list(merged) == [Group(0, 2), Group(1, 2)]
    assert merged[Group(1, 2)]["identical"][0].per_site == {"site-1": 0.7, "site-2": 0.7}
    assert (tmp_path / "merged" / "figure-8-2-sites-identical.png").is_file()


def test_a_later_run_of_one_data_set_replaces_that_data_set_of_its_group_only(tmp_path: Path) -> None:
    both = {"identical": [Arm("fedavg", {"site-1": 0.5})], "differing": [Arm("fedavg", {"site-1": 0.3})]}
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first = write_summary({Group(0, 2): both}, tmp_path / "a")
    later = write_summary({Group(0, 2): {"differing": [Arm("fedavg", {"site-1": 0.4})]}}, tmp_path / "b")

    merged = read_summaries([first, later])[Group(0, 2)]

    assert merged["identical"][0].per_site == {"site-1": 0.5}
    assert merged["differing"][0].per_site == {"site-1": 0.4}


def test_a_summary_group_not_named_by_sites_and_seed_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "arms.json"
    path.write_text('{"two sites": {}}')

    with pytest.raises(ValueError, match="expected 'N sites, seed S'"):
        read_summaries([path])
