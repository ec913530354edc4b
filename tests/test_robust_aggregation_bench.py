"""Figure 11 (bench/figures/fig11_robust.py) on canned per-arm Dice: its records and goals, and its bars."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.figures.fig11_robust import ARMS, HONEST, ArmResult, arm_bars, robust_records


def canned(means: dict[str, float]) -> list[ArmResult]:
    """Every arm, with its honest sites' Dice 0.01 either side of ``means[arm name]``."""
    return [
        ArmResult(arm, {"site-1": means[arm.name] - 0.01, "site-2": means[arm.name] + 0.01}, 60.0)
        for arm in ARMS
        if arm.name in means
    ]


GOOD = {
    "FedAvg, 2 honest sites": 0.50,
    "FedAvg, bad site": 0.02,
    "median, bad site": 0.51,
    "trimmed_mean:beta=0.34, bad site": 0.51,
    "krum:f=0, bad site": 0.47,
    "multikrum:f=0,m=2, bad site": 0.49,
}


def test_the_honest_reference_is_reported_and_every_other_arm_is_its_difference_from_it() -> None:
    records = robust_records(canned(GOOD), 3, 3, "clara_fedavg_cse")

    assert records[0].figure == "11 robust aggregation: honest reference"
    assert records[0].value == pytest.approx(0.50) and records[0].met is None
    differences = {r.figure.removeprefix("11 robust aggregation: "): r.value for r in records[1:]}
    assert differences == pytest.approx({name: mean - 0.50 for name, mean in GOOD.items() if name != HONEST.name})
    assert all(r.met for r in records[1:])


def test_a_rule_more_than_005_from_the_reference_misses_its_goal() -> None:
    records = robust_records(canned({**GOOD, "krum:f=0, bad site": 0.44}), 3, 3, "clara_fedavg_cse")

    missed = [r.figure for r in records if r.met is False]
    assert missed == ["11 robust aggregation: krum:f=0, bad site"]


def test_plain_fedavg_that_does_not_fall_well_below_the_reference_misses_its_goal() -> None:
    records = robust_records(canned({**GOOD, "FedAvg, bad site": 0.25}), 3, 3, "clara_fedavg_cse")

    missed = [r.figure for r in records if r.met is False]
    assert missed == ["11 robust aggregation: FedAvg, bad site"]


def test_the_records_need_the_honest_reference() -> None:
    without = {name: mean for name, mean in GOOD.items() if name != HONEST.name}

    with pytest.raises(ValueError, match="FedAvg, 2 honest sites"):
        robust_records(canned(without), 3, 3, "clara_fedavg_cse")


@pytest.mark.integration  # matplotlib's first import and render: seconds
def test_the_bars_are_a_png(tmp_path: Path) -> None:
    path = arm_bars(canned(GOOD), "figure 11", tmp_path / "bars.png")

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
