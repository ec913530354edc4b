"""At run time each privacy filter counts what it released, in the site's log and its privacy_releases.jsonl,
and ``clara-fl report`` shows the counts per round."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind, MetaKey
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.app_constant import AppConstants

from clara_fl.fl.jobs.privacy import PRIVACY_RELEASES_FILE
from clara_fl.fl.site.privacy_filters import ExcludeVars, PercentilePrivacy, SVTPrivacy, measure_release
from clara_fl.report.readers import read_privacy_releases


class Workspace:
    def __init__(self, app_dir: Path) -> None:
        self.app_dir = app_dir

    def get_app_dir(self, job_id: str) -> str:
        return str(self.app_dir)


class Engine:
    def __init__(self, app_dir: Path) -> None:
        self.workspace = Workspace(app_dir)

    def get_workspace(self) -> Workspace:
        return self.workspace


def site_context(app_dir: Path) -> FLContext:
    fl_ctx = FLContext()
    fl_ctx.set_prop(ReservedKey.ENGINE, Engine(app_dir), private=True, sticky=False)
    fl_ctx.set_prop(ReservedKey.RUN_NUM, "job-1", private=True, sticky=False)
    return fl_ctx


def update(seed: int = 0, shape: tuple[int, int] = (8, 4)) -> dict[str, np.ndarray]:
    """A round's weight difference: 10 steps of about 1e-4 each."""
    rng = np.random.default_rng(seed)
    return {"conv.weight": rng.normal(0, 1e-3, shape).astype(np.float32), "head.bias": rng.normal(0, 1e-3, 4)}


def filtered(filter_: Any, app_dir: Path, round_number: int = 3, shape: tuple[int, int] = (8, 4)) -> DXO:
    np.random.seed(0)  # FLARE's filters draw from numpy's global generator
    dxo = DXO(DataKind.WEIGHT_DIFF, data=update(shape=shape), meta={MetaKey.NUM_STEPS_CURRENT_ROUND: 10})
    shareable = dxo.to_shareable()
    shareable.set_header(AppConstants.CURRENT_ROUND, round_number)
    return filter_.process_dxo(dxo, shareable, site_context(app_dir)) or dxo


def test_the_round_comes_from_the_results_meta_where_the_learner_puts_it(tmp_path: Path) -> None:
    np.random.seed(0)
    meta = {MetaKey.NUM_STEPS_CURRENT_ROUND: 10, AppConstants.CURRENT_ROUND: 7}
    dxo = DXO(DataKind.WEIGHT_DIFF, data=update(), meta=meta)

    ExcludeVars(exclude_vars="head\\.").process_dxo(dxo, dxo.to_shareable(), site_context(tmp_path))

    assert [r["round"] for r in records(tmp_path)] == [7]


def records(app_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (app_dir / PRIVACY_RELEASES_FILE).read_text().splitlines()]


def test_an_update_sent_as_trained_is_all_released_with_its_whole_direction() -> None:
    trained = update()

    release = measure_release(trained, dict(trained), "None", 1)

    assert release.released == release.nonzero_before == 36 and release.direction_kept == pytest.approx(1.0)
    assert not release.almost_nothing


def test_an_update_whose_tensors_are_all_excluded_releases_nothing() -> None:
    release = measure_release(update(), {}, "ExcludeVars", 1)

    assert (release.released, release.tensors_released, release.direction_kept) == (0, 0, 0.0)
    assert release.almost_nothing


def test_noise_in_place_of_the_update_keeps_almost_none_of_its_direction() -> None:
    noise = {k: np.random.default_rng(7).normal(0, 1.0, v.shape) for k, v in update().items()}

    release = measure_release(update(), noise, "SVTPrivacy", 1)

    assert release.released == 36 and abs(release.direction_kept) < 0.5


def test_the_filter_filters_as_flares_and_records_the_round(tmp_path: Path) -> None:
    sent = filtered(ExcludeVars(exclude_vars="head\\."), tmp_path)

    [record] = records(tmp_path)
    assert list(sent.data) == ["conv.weight"]
    assert record["round"] == 3 and record["filter"] == "ExcludeVars"
    assert (record["released"], record["tensors_released"], record["tensors"]) == (32, 1, 2)
    assert not record["almost_nothing"]


def test_a_round_that_released_almost_nothing_is_a_warning_in_the_site_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    flare_svt = SVTPrivacy(fraction=0.1, epsilon=0.1, noise_var=0.1, gamma=1e-5, tau=1e-6)

    with caplog.at_level(logging.INFO):
        filtered(flare_svt, tmp_path, shape=(100, 100))

    [record] = records(tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert record["almost_nothing"]
    assert any("round 3" in w and "carries almost nothing to the global model" in w for w in warnings)


def test_a_round_that_released_enough_is_one_info_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        filtered(PercentilePrivacy(percentile=10, gamma=0.01), tmp_path)

    lines = [r.getMessage() for r in caplog.records if "privacy filter PercentilePrivacy, round 3" in r.getMessage()]
    assert len(lines) == 1 and "released" in lines[0]
    assert not any(r.levelno >= logging.WARNING for r in caplog.records)


def test_each_round_appends_one_record_that_the_report_reads(tmp_path: Path) -> None:
    for round_number in (0, 1):
        filtered(PercentilePrivacy(percentile=50, gamma=0.01), tmp_path, round_number)

    releases = read_privacy_releases(tmp_path, "site-1")

    assert [(r.site, r.round, r.filter) for r in releases] == [
        ("site-1", 0, "PercentilePrivacy"),
        ("site-1", 1, "PercentilePrivacy"),
    ]
    assert all(r.share is not None and 0.4 <= r.share <= 0.6 for r in releases)


def test_the_report_shows_the_released_counts_per_round_and_flags_rounds_that_released_almost_nothing(
    tmp_path: Path,
) -> None:
    workspace = tmp_path / "ws"
    (workspace / "server" / "simulate_job" / "cross_site_val").mkdir(parents=True)
    results = {"site-1": {"SRV_FL_global_model.pt": {"val_mean_dice": 0.8}}}
    (workspace / "server" / "simulate_job" / "cross_site_val" / "cross_val_results.json").write_text(
        json.dumps(results)
    )
    app = workspace / "site-1" / "simulate_job" / "app_site-1"
    app.mkdir(parents=True)
    rows = [
        {"round": 0, "filter": "SVTPrivacy", "released": 0, "nonzero_before": 100, "direction_kept": 0.0},
        {"round": 1, "filter": "SVTPrivacy", "released": 50, "nonzero_before": 100, "direction_kept": 0.4},
    ]
    flags = [True, False]
    (app / PRIVACY_RELEASES_FILE).write_text(
        "".join(json.dumps({**row, "almost_nothing": flag}) + "\n" for row, flag in zip(rows, flags, strict=True))
        + "{cut short\n"
    )

    from clara_fl.report.build import write_report

    page = write_report(workspace, tmp_path / "report").html.read_text()

    section = page[page.index('<section id="privacy">') :]
    section = section[: section.index("</section>")]
    assert section.count("<tr><td") == 2 and "released almost nothing" in section and "50.0 %" in section
