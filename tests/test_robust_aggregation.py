"""Robust aggregation (``--aggregator``): the rules against hand-computed values, the option's refusals, and the two
FLARE adapters (the ScatterAndGather aggregator, the ModelController FedAvg's aggregator) without running FLARE."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from clara_fl.config.errors import UsageError
from clara_fl.fl.server.robust_rules import RobustRule, RuleError, parse_rule
from clara_fl.recipes.robust_aggregation import check_robust_aggregation
from tests.conftest import SPLEEN_MMAR
from tests.test_errors import run_cli


def updates(*rows: list[float]) -> list[dict[str, np.ndarray]]:
    """One update per row, its values in one variable ``w``."""
    return [{"w": np.asarray(row, dtype=np.float32)} for row in rows]


# --- the rules -----------------------------------------------------------------------------------------------------


def test_median_takes_the_middle_value_of_each_coordinate() -> None:
    result = parse_rule("median").combine(updates([1, 10], [2, -50], [100, 20]))

    np.testing.assert_allclose(result.params["w"], [2, 10])


def test_median_of_an_even_number_averages_the_middle_two() -> None:
    result = parse_rule("median").combine(updates([1], [2], [4], [100]))

    np.testing.assert_allclose(result.params["w"], [3])


def test_median_reports_the_share_of_each_sites_values_cut() -> None:
    result = parse_rule("median").combine(updates([1, 1], [2, 2], [-100, 100]))

    # the third update is the extreme of both coordinates; the others are the middle of one and cut in the other
    assert result.cut_share == (0.5, 0.5, 1.0)
    assert result.cut_per_end == 1


def test_trimmed_mean_cuts_floor_beta_n_values_at_each_end_then_averages() -> None:
    rows = [[1.0], [2.0], [3.0], [4.0], [1000.0]]  # beta 0.2 of 5: one cut at each end -> mean(2, 3, 4)

    result = parse_rule("trimmed_mean:beta=0.2").combine(updates(*rows))

    np.testing.assert_allclose(result.params["w"], [3.0])


def test_trimmed_mean_cutting_one_of_three_at_each_end_is_the_median() -> None:
    rows = updates([1, 10, 0], [2, -50, 0], [100, 20, 3])  # the e2e test's trimmed_mean:beta=0.34 at 3 sites

    trimmed = parse_rule("trimmed_mean:beta=0.34").combine(rows)

    np.testing.assert_array_equal(trimmed.params["w"], parse_rule("median").combine(rows).params["w"])
    assert trimmed.cut_per_end == 1


def test_trimmed_mean_that_cuts_nothing_is_the_plain_mean() -> None:
    result = parse_rule("trimmed_mean:beta=0.1").combine(updates([1], [2], [6]))

    np.testing.assert_allclose(result.params["w"], [3.0])
    assert result.cut_per_end == 0


def test_krum_selects_the_update_with_the_smallest_sum_of_squared_distances_to_its_nearest() -> None:
    # n=5, f=1: each score sums the n-f-2 = 2 smallest squared distances to the others
    rows = [[0.0], [1.0], [3.0], [4.0], [100.0]]

    result = parse_rule("krum:f=1").combine(updates(*rows))

    # scores: 0 -> 1+9=10, 1 -> 1+4=5, 3 -> 1+4=5, 4 -> 1+9=10, 100 -> 96^2+97^2
    assert result.scores == (10.0, 5.0, 5.0, 10.0, 96.0**2 + 97.0**2)
    assert result.selected == (1, 2)  # tied for the best score
    np.testing.assert_allclose(result.params["w"], [2.0])  # their unweighted mean


def test_krum_without_a_tie_keeps_the_one_best_scored_update() -> None:
    rows = [[0.0], [2.0], [2.5], [3.0], [100.0]]

    result = parse_rule("krum:f=1").combine(updates(*rows), weights=[1, 1, 9, 1, 1])

    # scores: 0 -> 4+6.25, 2 -> 0.25+1, 2.5 -> 0.25+0.25, 3 -> 0.25+1, 100 -> 97^2+97.5^2
    assert result.scores[:4] == (10.25, 1.25, 0.5, 1.25)
    assert result.selected == (2,)
    np.testing.assert_allclose(result.params["w"], [2.5])


def test_krum_measures_distance_over_all_variables_at_once() -> None:
    sites = [
        {"a": np.asarray([0.0]), "b": np.asarray([0.0])},
        {"a": np.asarray([0.1]), "b": np.asarray([0.0])},
        {"a": np.asarray([0.0]), "b": np.asarray([-30.0])},
    ]

    result = parse_rule("krum:f=0").combine(sites)

    assert result.scores == pytest.approx((0.01, 0.01, 900.0))
    assert result.selected == (0, 1)


def test_multikrum_averages_the_m_best_scored_weighted_by_their_weights() -> None:
    rows = [[0.0], [1.0], [3.0], [4.0], [100.0]]

    result = parse_rule("multikrum:f=1,m=2").combine(updates(*rows), weights=[1, 1, 3, 1, 1])

    assert result.selected == (1, 2)
    np.testing.assert_allclose(result.params["w"], [(1.0 * 1 + 3.0 * 3) / 4])


def test_multikrum_without_m_averages_n_minus_f() -> None:
    result = parse_rule("multikrum:f=1").combine(updates([0.0], [1.0], [3.0], [4.0], [100.0]))

    assert len(result.selected) == 4 and 4 not in result.selected


def test_the_result_keeps_each_variables_dtype() -> None:
    sites: list[dict[str, np.ndarray]] = [
        {"n": np.asarray(2, dtype=np.int64), "w": np.asarray([1.0], dtype=np.float32)} for _ in range(3)
    ]

    result = parse_rule("median").combine(sites)

    assert result.params["n"].dtype == np.int64 and result.params["w"].dtype == np.float32


@pytest.mark.parametrize(
    ("spec", "n", "message"),
    [
        ("krum:f=1", 4, r"krum:f=1 needs more than 2f\+2 = 4 updates \(n > 2f\+2\), got 4"),
        ("multikrum:f=0,m=3", 2, r"needs more than 2f\+2 = 2 updates"),
        ("multikrum:f=0,m=4", 3, "averages m = 4 updates, got only 3"),
        ("median", 0, "has no update to aggregate"),
    ],
)
def test_a_rule_refuses_a_number_of_updates_it_is_not_defined_for(spec: str, n: int, message: str) -> None:
    with pytest.raises(RuleError, match=message):
        parse_rule(spec).check(n)


def test_trimmed_mean_refuses_cutting_every_update() -> None:
    rule = RobustRule("trimmed_mean", beta=0.5)  # parse_rule refuses beta 0.5; the precondition holds regardless

    with pytest.raises(RuleError, match=r"would cut all 2 updates \(needs 2\*floor\(beta\*n\) < n\)"):
        rule.check(2)


def test_updates_with_different_shapes_are_refused() -> None:
    with pytest.raises(RuleError, match="shape"):
        parse_rule("median").combine([{"w": np.zeros(2)}, {"w": np.zeros(3)}, {"w": np.zeros(2)}])


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("median", "median"),
        ("trimmed_mean", "trimmed_mean:beta=0.1"),
        ("trimmed_mean:beta=0.25", "trimmed_mean:beta=0.25"),
        ("krum", "krum:f=1"),
        (" krum : f = 2 ", "krum:f=2"),
        ("multikrum:f=1,m=2", "multikrum:f=1,m=2"),
        ("multikrum:f=1", "multikrum:f=1"),
    ],
)
def test_a_rule_is_parsed_with_its_defaults_and_written_back_as_given(text: str, spec: str) -> None:
    assert parse_rule(text).spec == spec


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mean", "unknown aggregation rule 'mean' (valid: median, trimmed_mean:beta=0.1, krum:f=1"),
        ("median:beta=0.1", "median takes no parameters, not 'beta'"),
        ("krum:m=2", "krum takes f, not 'm'"),
        ("krum:f", "expected NAME=VALUE"),
        ("krum:f=-1", "f must be an integer >= 0, got '-1'"),
        ("multikrum:f=1,m=0", "m must be an integer >= 1, got '0'"),
        ("trimmed_mean:beta=0.5", "beta is the fraction cut at each end, a number > 0 and < 0.5, got '0.5'"),
        ("trimmed_mean:beta=x", "a number > 0 and < 0.5, got 'x'"),
    ],
)
def test_a_bad_rule_is_one_line_saying_what_is_expected(text: str, message: str) -> None:
    with pytest.raises(RuleError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        parse_rule(text)


# --- the option and its refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--aggregator", "bogus"], "--aggregator bogus: unknown aggregation rule 'bogus'"),
        (["--aggregator", "median", "--algorithm", "scaffold"], "scaffold's server step is not only an aggregation"),
        (["--aggregator", "krum:f=1", "--min-clients", "3"], "set --min-clients 5 or more"),
        (["--aggregator", "krum:f=1"], "a round may aggregate only --min-clients 2 sites"),
        (["--aggregator", "krum:f"], "--aggregator krum:f: krum: expected NAME=VALUE, got 'f'"),
        (["--aggregator", "multikrum:f=0,m=4", "--min-clients", "3"], "averages m = 4 updates, got only 3"),
        (["--aggregator", "median", "--he", "--min-clients", "3"], "cannot run with --he"),
    ],
)
def test_job_create_refuses_an_aggregator_that_does_not_apply_in_one_line_writing_nothing(
    capsys: pytest.CaptureFixture, tmp_path: Path, arguments: list[str], message: str
) -> None:
    output = tmp_path / "job"

    code, err = run_cli(capsys, "job", "create", "-m", str(SPLEEN_MMAR), "-o", str(output), *arguments)

    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not output.exists()


def test_an_aggregator_is_refused_with_he_because_the_server_cannot_see_the_values() -> None:
    with pytest.raises(UsageError, match="cannot run with --he: the server aggregates encrypted updates"):
        check_robust_aggregation("median", "fedavg", he=True)


def test_the_recipe_refuses_a_rule_its_rounds_sites_cannot_meet_in_one_line() -> None:
    from clara_fl.recipes import ClaraFedAvgRecipe

    with pytest.raises(
        UsageError, match="krum:f=1 needs more than 2f\\+2 = 4 updates .* set --min-clients 5 or more"
    ) as e:
        ClaraFedAvgRecipe(SPLEEN_MMAR, min_clients=3, aggregator="krum:f=1")

    assert "\n" not in str(e.value)


@pytest.mark.parametrize("algorithm", ["fedavg", "fedprox", "fedopt", "ditto", "fedbn"])
def test_every_algorithm_whose_server_step_is_an_aggregation_takes_an_aggregator(algorithm: str) -> None:
    assert check_robust_aggregation("median", algorithm, min_clients=3).name == "median"


def server_config(job: Path) -> dict:
    return json.loads((job / "app" / "config" / "config_fed_server.json").read_text())


def created_job(tmp_path: Path, template: str, aggregator: str, **values: object) -> Path:
    from clara_fl.recipes.job_folder import create_job, job_settings

    settings = job_settings(SPLEEN_MMAR, None, aggregator=aggregator)
    return create_job(SPLEEN_MMAR, tmp_path / "job", template, min_clients=3, settings=settings, **values)  # type: ignore[arg-type]


def test_the_scatter_and_gather_job_gets_the_robust_aggregator_for_what_the_sites_send(tmp_path: Path) -> None:
    job = created_job(tmp_path, "clara_fedavg_cse", "krum:f=0", algorithm="fedopt")

    aggregator = next(c for c in server_config(job)["components"] if c["id"] == "aggregator")

    assert aggregator["path"] == "clara_fl.fl.server.robust_aggregation.RobustAggregator"
    assert aggregator["args"] == {"rule": "krum:f=0", "expected_data_kind": "WEIGHT_DIFF"}


def test_the_model_controller_job_gives_fedavg_the_robust_aggregator(tmp_path: Path) -> None:
    job = created_job(tmp_path, "clara_fedavg_cse_mc", "median")

    fedavg = next(w for w in server_config(job)["workflows"] if w["id"] == "fedavg")

    assert fedavg["args"]["aggregator"] == {
        "path": "clara_fl.fl.server.robust_aggregation.RobustModelAggregator",
        "args": {"rule": "median"},
    }


@pytest.mark.parametrize("template", ["clara_fedavg_cse", "clara_fedavg_cse_mc"])
def test_job_create_and_the_recipe_write_the_same_robust_job(tmp_path: Path, template: str) -> None:
    from clara_fl.recipes import ClaraFedAvgRecipe
    from tests.test_recipes import assert_same_job

    recipe = ClaraFedAvgRecipe(SPLEEN_MMAR, name="job", template=template, min_clients=3, aggregator="median")
    recipe.export(str(tmp_path / "export"))

    rendered = created_job(tmp_path, template, "median")

    assert_same_job(rendered, tmp_path / "export" / "job")


# --- the adapters --------------------------------------------------------------------------------------------------


def site_result(site: str, w: list[float], round_number: int = 0, kind: str = "WEIGHT_DIFF", steps: int = 10):
    from nvflare.apis.dxo import DXO, MetaKey
    from nvflare.apis.fl_constant import ReservedKey
    from nvflare.app_common.app_constant import AppConstants

    dxo = DXO(data_kind=kind, data={"w": np.asarray(w, dtype=np.float32)})
    dxo.set_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND, steps)
    shareable = dxo.to_shareable()
    shareable.set_peer_props({ReservedKey.IDENTITY_NAME: site})
    shareable.add_cookie(AppConstants.CONTRIBUTION_ROUND, round_number)
    return shareable


def round_context(round_number: int = 0):
    from nvflare.apis.fl_context import FLContext
    from nvflare.app_common.app_constant import AppConstants

    fl_ctx = FLContext()
    fl_ctx.set_prop(AppConstants.CURRENT_ROUND, round_number, private=True, sticky=False)
    return fl_ctx


def test_the_scatter_and_gather_aggregator_applies_the_rule_and_names_the_sites_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from nvflare.apis.dxo import DataKind, from_shareable

    from clara_fl.fl.server.robust_aggregation import RobustAggregator

    aggregator, fl_ctx = RobustAggregator("krum:f=0"), round_context(3)
    sent = {"site-1": [1.0, 1.0], "site-2": [1.2, 0.9], "site-3": [-10.0, -10.0]}
    with caplog.at_level(logging.INFO):
        accepted = [aggregator.accept(site_result(s, w, 3), fl_ctx) for s, w in sent.items()]
        result = from_shareable(aggregator.aggregate(fl_ctx))

    assert accepted == [True, True, True]
    assert result.data_kind == DataKind.WEIGHT_DIFF
    np.testing.assert_allclose(result.data["w"], [1.1, 0.95])  # the two nearest tie with f = 0: their mean
    assert "round 3: krum:f=0 over 3 sites selected site-1, site-2 (tied for the best score: their mean)" in caplog.text
    assert "round 3: krum:f=0 left out site-3" in caplog.text


def test_the_scatter_and_gather_aggregator_refuses_another_round_another_kind_and_a_second_update() -> None:
    from clara_fl.fl.server.robust_aggregation import RobustAggregator

    aggregator, fl_ctx = RobustAggregator("median"), round_context(1)

    assert aggregator.accept(site_result("site-1", [1.0], round_number=0), fl_ctx) is False
    assert aggregator.accept(site_result("site-1", [1.0], 1, kind="WEIGHTS"), fl_ctx) is False
    assert aggregator.accept(site_result("site-1", [1.0], 1), fl_ctx) is True
    assert aggregator.accept(site_result("site-1", [2.0], 1), fl_ctx) is False


def test_an_update_shaped_unlike_the_others_is_refused_before_the_rule(caplog: pytest.LogCaptureFixture) -> None:
    from nvflare.apis.dxo import from_shareable

    from clara_fl.fl.server.robust_aggregation import RobustAggregator

    aggregator, fl_ctx = RobustAggregator("median"), round_context(0)
    for site, w in {"site-1": [1.0, 2.0], "site-2": [3.0], "site-3": [3.0, 4.0]}.items():
        aggregator.accept(site_result(site, w), fl_ctx)
    with caplog.at_level(logging.INFO):
        result = from_shareable(aggregator.aggregate(fl_ctx))

    np.testing.assert_allclose(result.data["w"], [2.0, 3.0])  # the median of two: their mean
    assert "refused the update from site-2: its variables or shapes differ" in caplog.text


def test_a_round_too_small_for_the_rule_leaves_the_global_model_unchanged(caplog: pytest.LogCaptureFixture) -> None:
    from nvflare.apis.dxo import DataKind, from_shareable

    from clara_fl.fl.server.robust_aggregation import RobustAggregator

    aggregator, fl_ctx = RobustAggregator("krum:f=1", expected_data_kind="WEIGHTS"), round_context(0)
    for site in ("site-1", "site-2", "site-3"):
        aggregator.accept(site_result(site, [5.0], kind="WEIGHTS"), fl_ctx)
    with caplog.at_level(logging.INFO):
        result = from_shareable(aggregator.aggregate(fl_ctx))

    assert result.data_kind == DataKind.WEIGHT_DIFF
    np.testing.assert_allclose(result.data["w"], [0.0])
    assert "the global model is left unchanged this round" in caplog.text


def test_the_model_controller_aggregator_applies_the_rule_to_fedavgs_results(caplog: pytest.LogCaptureFixture) -> None:
    from nvflare.apis.dxo import MetaKey
    from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

    from clara_fl.fl.server.robust_aggregation import RobustModelAggregator

    aggregator = RobustModelAggregator("trimmed_mean:beta=0.34")
    aggregator.reset_stats()
    for site, w in {"site-1": [1.0], "site-2": [2.0], "site-3": [-20.0]}.items():
        meta = {"client_name": site, MetaKey.NUM_STEPS_CURRENT_ROUND: 4}
        model = FLModel(params_type=ParamsType.DIFF, params={"w": np.asarray(w)}, current_round=2, meta=meta)
        aggregator.accept_model(model)
    with caplog.at_level(logging.INFO):
        result = aggregator.aggregate_model()

    assert result.params_type == ParamsType.DIFF
    np.testing.assert_allclose(result.params["w"], [1.0])
    assert "round 2: trimmed_mean:beta=0.34 (coordinate-wise trimmed mean) of 3 sites" in caplog.text
    assert "down-weighted (share of its values cut): site-2 100%, site-3 100%, site-1 0%" in caplog.text


def test_a_coordinate_no_site_changed_blames_no_site_in_the_median_cut_share() -> None:
    updates = [{"w": np.array([0.0, 0.0, 1.0])}, {"w": np.array([0.0, 0.0, 2.0])}, {"w": np.array([0.0, 0.0, -20.0])}]

    result = parse_rule("median").combine(updates)

    assert result.cut_share == pytest.approx((0.0, 1 / 3, 1 / 3))  # the tied zeros are nobody's outliers


def test_multikrum_keeps_the_same_sites_whichever_site_answered_first() -> None:
    from nvflare.apis.dxo import from_shareable

    from clara_fl.fl.server.robust_aggregation import RobustAggregator

    # site-1 and site-2 are each other's nearest, so their scores tie at the m = 1 boundary
    sent = {"site-1": [1.0, 1.0], "site-2": [1.2, 0.9], "site-3": [-10.0, -10.0]}
    results = []
    for order in (["site-1", "site-2", "site-3"], ["site-3", "site-2", "site-1"]):
        aggregator, fl_ctx = RobustAggregator("multikrum:f=0,m=1"), round_context(0)
        for site in order:
            aggregator.accept(site_result(site, sent[site]), fl_ctx)
        results.append(from_shareable(aggregator.aggregate(fl_ctx)).data["w"])

    np.testing.assert_array_equal(results[0], np.asarray(sent["site-1"], dtype=np.float32))
    np.testing.assert_array_equal(results[1], results[0])
